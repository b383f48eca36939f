//! Starting a worker and stopping it in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use crate::claimer::{self, Claimer};
use crate::config::WorkerConfig;
use crate::link::{self, LinkHandle, Outbound, SessionSettings};
use crate::metrics::METRICS;
use crate::provider::Providers;
use crate::runner::RunContext;
use crate::spawn::spawn_named;
use agentplane_telemetry::metrics::MetricsServer;

/// How often each worker looks for expired leases.
const REAP_INTERVAL: Duration = Duration::from_secs(5);
/// Longest wait for a pooled database connection.
const DB_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the grace period, how long released attempts get to stop.
const RELEASE_WAIT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the control plane to acknowledge the last endings.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the claim, listen and reap loops to stop (a claim in flight
/// finishes first); stragglers are aborted.
const LOOP_STOP_WAIT: Duration = Duration::from_secs(10);

/// Entry point: [`Worker::start`].
#[derive(Debug)]
pub struct Worker;

impl Worker {
    /// Validates `config`, connects the database pool, opens the control-plane stream (the
    /// hello must be welcomed), and starts the claim, listen, reap and link loops in the
    /// background. Fails if the database or the control plane cannot be reached, or the
    /// control plane refuses the worker token.
    pub async fn start(config: WorkerConfig) -> anyhow::Result<WorkerHandle> {
        config.validate()?;
        let config = crate::identity::resolve(config).await?;
        let pool = connect_pool(&config).await?;
        let root = CancellationToken::new();
        let session = SessionSettings {
            worker_id: config.worker_id,
            capacity: config.capacity,
            authorization: config.authorization_value()?,
            channel: SessionSettings::channel(&config.control_plane_url)
                .context("building the control-plane channel")?,
        };
        let link_stop = root.child_token();
        let (link, link_task, first_session) = link::start(session, link_stop.clone());
        let connected = match first_session.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(anyhow::Error::new(error)),
            Err(_) => Err(anyhow::anyhow!(
                "the control-plane link stopped while connecting"
            )),
        };
        if let Err(error) = connected {
            root.cancel();
            let _ = link_task.await;
            pool.close().await;
            return Err(error.context(format!(
                "connecting to the control plane at {}",
                config.control_plane_url
            )));
        }

        let providers = Providers::from_settings(config.echo_token_delay, &config.providers)
            .context("configuring the model providers")?;
        let slots = Arc::new(Semaphore::new(
            usize::try_from(config.capacity).unwrap_or(usize::MAX),
        ));
        let metrics_addr = match config.metrics_addr {
            Some(addr) => {
                let server = MetricsServer::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics endpoint {addr}"))?;
                let bound = server.local_addr();
                let pool_max = pool.options().get_max_connections();
                tracing::info!(addr = %bound, "serving metrics");
                spawn_named(
                    "metrics",
                    server.serve(
                        METRICS.registry.clone(),
                        METRICS.before_scrape(pool.clone(), pool_max),
                        root.child_token(),
                    ),
                );
                Some(bound)
            }
            None => None,
        };
        let claim_stop = root.child_token();
        let attempts_shutdown = root.child_token();
        let wake = Arc::new(Notify::new());
        let claimer = Claimer {
            pool: pool.clone(),
            worker_id: config.worker_id,
            slots: Arc::clone(&slots),
            capacity: config.capacity,
            labels: config.labels.clone(),
            poll_interval_max: config.poll_interval_max,
            wake: Arc::clone(&wake),
            attempts_shutdown: attempts_shutdown.clone(),
            context: Arc::new(RunContext {
                link: link.clone(),
                providers: providers.clone(),
            }),
            stop: claim_stop.clone(),
        };
        let loops = vec![
            spawn_named(
                "task-ready-listener",
                claimer::listen_for_ready_tasks(pool.clone(), wake, claim_stop.clone()),
            ),
            spawn_named(
                "lease-reaper",
                claimer::reap_expired_leases(pool.clone(), REAP_INTERVAL, claim_stop.clone()),
            ),
            spawn_named("claim-loop", claimer.run()),
        ];
        tracing::info!(
            worker_id = %config.worker_id,
            capacity = config.capacity,
            labels = %config.labels,
            control_plane = %config.control_plane_url,
            database = %config.database_summary(),
            providers = ?providers,
            prices = config.providers.prices.len(),
            prices_checked = config.providers.prices.checked().unwrap_or("unknown"),
            "worker started"
        );
        Ok(WorkerHandle {
            worker_id: config.worker_id,
            metrics_addr,
            capacity: config.capacity,
            shutdown_grace: config.shutdown_grace,
            pool,
            slots,
            link,
            claim_stop,
            attempts_shutdown,
            link_stop,
            loops,
            link_task,
            _stop_on_drop: root.drop_guard(),
        })
    }
}

async fn connect_pool(config: &WorkerConfig) -> anyhow::Result<PgPool> {
    let max_connections = config.capacity.min(8) + 2;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(DB_ACQUIRE_TIMEOUT)
        .connect_with(config.database_options()?)
        .await
        .with_context(|| format!("connecting to postgres at {}", config.database_summary()))
}

/// A running worker. Dropping it stops every loop abruptly; call
/// [`WorkerHandle::shutdown`] to stop in order.
#[derive(Debug)]
pub struct WorkerHandle {
    worker_id: Uuid,
    metrics_addr: Option<SocketAddr>,
    capacity: u32,
    shutdown_grace: Duration,
    pool: PgPool,
    slots: Arc<Semaphore>,
    link: LinkHandle,
    claim_stop: CancellationToken,
    attempts_shutdown: CancellationToken,
    link_stop: CancellationToken,
    loops: Vec<JoinHandle<()>>,
    link_task: JoinHandle<()>,
    _stop_on_drop: DropGuard,
}

impl WorkerHandle {
    /// The worker's id, as written into the tasks it claims.
    pub fn worker_id(&self) -> Uuid {
        self.worker_id
    }

    /// The bound Prometheus endpoint address, if one is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Stops in order: no more claims; running attempts get `shutdown_grace` to finish, then
    /// the rest are stopped and released; waits (bounded) for the control plane to
    /// acknowledge every result and release; closes the stream and the pool.
    pub async fn shutdown(self) {
        tracing::info!(worker_id = %self.worker_id, "worker shutting down");
        self.claim_stop.cancel();
        stop_loops(self.loops, LOOP_STOP_WAIT).await;

        let all_slots = self.capacity;
        let finished =
            tokio::time::timeout(self.shutdown_grace, self.slots.acquire_many(all_slots))
                .await
                .is_ok();
        if !finished {
            let running = usize::try_from(self.capacity)
                .unwrap_or(usize::MAX)
                .saturating_sub(self.slots.available_permits());
            tracing::info!(running, "grace period over; releasing running tasks");
            self.attempts_shutdown.cancel();
            if tokio::time::timeout(RELEASE_WAIT, self.slots.acquire_many(all_slots))
                .await
                .is_err()
            {
                tracing::warn!("some attempts did not stop in time");
            }
        }

        let (drained_tx, drained) = oneshot::channel();
        if self.link.send(Outbound::Drain(drained_tx)).await.is_ok() {
            match tokio::time::timeout(ACK_WAIT, drained).await {
                Ok(Ok(())) => {}
                _ => tracing::warn!(
                    "control plane did not acknowledge every ending; their leases will expire"
                ),
            }
        }
        self.link_stop.cancel();
        let _ = self.link_task.await;
        // Connections still busy are dropped rather than waited for without end.
        if tokio::time::timeout(POOL_CLOSE_WAIT, self.pool.close())
            .await
            .is_err()
        {
            tracing::warn!(wait = ?POOL_CLOSE_WAIT, "database pool did not close in time");
        }
        tracing::info!(worker_id = %self.worker_id, "worker stopped");
    }
}

/// How long shutdown waits for the database pool's connections to be returned.
const POOL_CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Waits up to `wait` for `loops` to end (their stop token already fired), then aborts the
/// ones still running. An aborted claim rolls back; tasks it had already claimed are
/// reaped when their leases expire.
async fn stop_loops(mut loops: Vec<JoinHandle<()>>, wait: Duration) {
    let joined = tokio::time::timeout(wait, futures::future::join_all(loops.iter_mut())).await;
    if joined.is_err() {
        let stuck = loops.iter().filter(|task| !task.is_finished()).count();
        tracing::warn!(
            stuck,
            ?wait,
            "background loops did not stop in time; aborting them"
        );
        for task in &loops {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stopping_loops_is_bounded_and_aborts_stragglers() {
        let quick = spawn_named("quick", async {});
        let stuck = spawn_named("stuck", std::future::pending::<()>());
        let stuck_abort = stuck.abort_handle();
        let started = tokio::time::Instant::now();
        stop_loops(vec![quick, stuck], Duration::from_millis(50)).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(stuck_abort.is_finished(), "the stuck loop was aborted");
    }
}
