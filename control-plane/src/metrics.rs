//! The control plane's Prometheus metrics (served by `startup` on `--metrics-addr`):
//!
//! - gRPC calls, latency and live streams: `agentplane_grpc_server_*`
//!   ([`agentplane_telemetry::grpc`]);
//! - the queue, by priority band (`high`, `normal`, `low`; never by workspace):
//!   `agentplane_queue_ready_tasks`, `agentplane_queue_scheduled_tasks`,
//!   `agentplane_queue_running_tasks`, `agentplane_queue_oldest_ready_age_seconds`, read from
//!   the database at each scrape (every replica reports the same totals: aggregate with
//!   `max`);
//! - the fan-out: `agentplane_fanout_backlog_notices` (notices queued for live streams, in
//!   total), `agentplane_fanout_subscribers`, and `agentplane_fanout_lag_seconds` (from a
//!   notification's sending to its stream taking it), and
//!   `agentplane_fanout_listener_restarts_total{reason="failed|silent|reconnected"}`;
//! - the database pool: `agentplane_db_pool_connections{state="idle|in_use"}`,
//!   `agentplane_db_pool_max_connections` (saturation is in-use over max);
//! - retention: `agentplane_retention_deleted_rows_total{table="tasks|task_messages|
//!   task_output_chunks"}`, rows of finished history this process deleted.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use agentplane_telemetry::grpc::GrpcMetrics;
use agentplane_telemetry::metrics::{BeforeScrape, register};
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use prost::Message as _;
use sqlx::PgPool;

use crate::fanout::Fanout;
use crate::store::{PRIORITY_BANDS, QueueBand, Store};

/// Longest a scrape waits for the queue totals.
pub const QUEUE_STATS_TIMEOUT: Duration = Duration::from_secs(3);

/// The control plane's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Everything below, for the scrape endpoint.
    pub registry: Registry,
    /// gRPC server metrics (the tower layer records them).
    pub grpc: Arc<GrpcMetrics>,
    queue_ready: IntGaugeVec,
    queue_scheduled: IntGaugeVec,
    queue_running: IntGaugeVec,
    queue_oldest_age: GaugeVec,
    pool_connections: IntGaugeVec,
    pool_max: IntGauge,
    fanout_backlog: IntGauge,
    fanout_subscribers: IntGauge,
    /// Rows the retention loop deleted, by table.
    pub retention_deleted: IntCounterVec,
    fanout_lag: Histogram,
    fanout_listener_restarts: IntCounterVec,
}

/// The process's metrics (one registry, however many servers a test starts).
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let grpc = Arc::new(GrpcMetrics::new(&registry, known_methods()));
        let band = |name: &str, help: &str| {
            register(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), &["priority"]).expect("valid metric"),
            )
        };
        let queue_ready = band(
            "agentplane_queue_ready_tasks",
            "Pending tasks that are due, by priority band",
        );
        let queue_scheduled = band(
            "agentplane_queue_scheduled_tasks",
            "Pending tasks scheduled for later, by priority band",
        );
        let queue_running = band(
            "agentplane_queue_running_tasks",
            "Running tasks, by priority band",
        );
        let queue_oldest_age = register(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "agentplane_queue_oldest_ready_age_seconds",
                    "How long the oldest due pending task has waited, by priority band",
                ),
                &["priority"],
            )
            .expect("valid metric"),
        );
        let pool_connections = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "agentplane_db_pool_connections",
                    "Database connections of the pool, by state (idle, in_use)",
                ),
                &["state"],
            )
            .expect("valid metric"),
        );
        let pool_max = register(
            &registry,
            IntGauge::new(
                "agentplane_db_pool_max_connections",
                "The pool's connection limit",
            )
            .expect("valid metric"),
        );
        let fanout_backlog = register(
            &registry,
            IntGauge::new(
                "agentplane_fanout_backlog_notices",
                "Notices queued for live streams, all together (16,384 at most; a stream \
                 whose queue overflows re-reads from the database)",
            )
            .expect("valid metric"),
        );
        let fanout_subscribers = register(
            &registry,
            IntGauge::new(
                "agentplane_fanout_subscribers",
                "Live streams and worker sessions receiving fan-out notices",
            )
            .expect("valid metric"),
        );
        let retention_deleted = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "agentplane_retention_deleted_rows_total",
                    "Rows of finished tasks deleted by retention, by table \
                     (tasks, task_messages, task_output_chunks)",
                ),
                &["table"],
            )
            .expect("valid metric"),
        );
        let fanout_lag = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "agentplane_fanout_lag_seconds",
                    "From a notification being sent (by any replica or worker, by its clock) \
                     to a live stream of this process taking it",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )
            .expect("valid metric"),
        );
        let fanout_listener_restarts = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "agentplane_fanout_listener_restarts_total",
                    "Times the notification listener was rebuilt, by reason (failed: an \
                     error; silent: it did not hear its own probe; reconnected: sqlx \
                     reconnected it after the connection closed)",
                ),
                &["reason"],
            )
            .expect("valid metric"),
        );
        Self {
            retention_deleted,
            fanout_listener_restarts,
            registry,
            grpc,
            fanout_backlog,
            fanout_subscribers,
            fanout_lag,
            queue_ready,
            queue_scheduled,
            queue_running,
            queue_oldest_age,
            pool_connections,
            pool_max,
        }
    }

    /// Records how long a notification took from its sender to a stream; a send time
    /// ahead of this clock (skew between machines) counts as no lag.
    pub fn observe_fanout_lag(&self, sent_at: std::time::SystemTime) {
        let lag = std::time::SystemTime::now()
            .duration_since(sent_at)
            .unwrap_or_default();
        self.fanout_lag.observe(lag.as_secs_f64());
    }

    /// Counts a rebuild of the notification listener.
    pub fn fanout_listener_restart(&self, reason: &'static str) {
        self.fanout_listener_restarts
            .with_label_values(&[reason])
            .inc();
    }

    /// Brings the gauges up to date before each scrape: the pool's statistics, and the
    /// queue totals (one query, given at most [`QUEUE_STATS_TIMEOUT`]; on failure the last
    /// values stay).
    pub fn before_scrape(
        &'static self,
        store: Store,
        fanout: Fanout,
        pool: PgPool,
        max_connections: u32,
    ) -> BeforeScrape {
        Arc::new(move || {
            let (backlog, subscribers) = fanout.lag();
            self.fanout_backlog
                .set(i64::try_from(backlog).unwrap_or(i64::MAX));
            self.fanout_subscribers
                .set(i64::try_from(subscribers).unwrap_or(i64::MAX));
            let size = i64::from(pool.size());
            let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
            self.pool_connections.with_label_values(&["idle"]).set(idle);
            self.pool_connections
                .with_label_values(&["in_use"])
                .set(size.saturating_sub(idle));
            self.pool_max.set(i64::from(max_connections));
            let store = store.clone();
            Box::pin(async move {
                match tokio::time::timeout(QUEUE_STATS_TIMEOUT, store.queue_stats()).await {
                    Ok(Ok(bands)) => self.set_queue(&bands),
                    Ok(Err(error)) => tracing::warn!(%error, "reading queue statistics failed"),
                    Err(_) => tracing::warn!("reading queue statistics timed out"),
                }
            })
        })
    }

    fn set_queue(&self, bands: &[QueueBand]) {
        for name in PRIORITY_BANDS {
            let band = bands.iter().find(|band| band.priority_band == name);
            let labels = [name];
            self.queue_ready
                .with_label_values(&labels)
                .set(band.map_or(0, |b| b.ready));
            self.queue_scheduled
                .with_label_values(&labels)
                .set(band.map_or(0, |b| b.scheduled));
            self.queue_running
                .with_label_values(&labels)
                .set(band.map_or(0, |b| b.running));
            self.queue_oldest_age
                .with_label_values(&labels)
                .set(band.map_or(0.0, |b| b.oldest_ready_age_seconds));
        }
    }
}

/// Every method path the server answers, from the descriptor sets it serves, so the gRPC
/// metrics label any other path `unknown`.
fn known_methods() -> HashSet<String> {
    let mut methods = HashSet::new();
    for set in [
        agentplane_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                for method in service.method {
                    methods.insert(format!(
                        "/{package}.{service_name}/{}",
                        method.name.unwrap_or_default()
                    ));
                }
            }
        }
    }
    for reflection in ["v1", "v1alpha"] {
        methods.insert(format!(
            "/grpc.reflection.{reflection}.ServerReflection/ServerReflectionInfo"
        ));
    }
    methods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_cover_the_api_health_and_reflection() {
        let methods = known_methods();
        for path in [
            "/agentplane.v1.TaskService/CreateTask",
            "/agentplane.v1.WorkerService/Session",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(methods.contains(path), "{path}");
        }
    }
}
