//! Building and running the server: migrations, pool, listener, services, health,
//! reflection, and an ordered, bounded shutdown.

mod message_limit;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentplane_proto::v1::agent_service_server::AgentServiceServer;
use agentplane_proto::v1::api_key_service_server::ApiKeyServiceServer;
use agentplane_proto::v1::event_service_server::EventServiceServer;
use agentplane_proto::v1::identity_service_server::IdentityServiceServer;
use agentplane_proto::v1::member_service_server::MemberServiceServer;
use agentplane_proto::v1::task_service_server::TaskServiceServer;
use agentplane_proto::v1::worker_credential_service_server::WorkerCredentialServiceServer;
use agentplane_proto::v1::worker_service_server::WorkerServiceServer;
use agentplane_proto::v1::workspace_service_server::WorkspaceServiceServer;
use anyhow::Context as _;
use secrecy::SecretString;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::{
    AgentApi, ApiKeyApi, AppState, EventApi, IdentityApi, MemberApi, StreamSlots, TaskApi,
    TaskCreator, WorkerApi, WorkerCredentialApi, WorkspaceApi,
};
use crate::auth::jwt::JwtVerifier;
use crate::auth::key_cache::ApiKeyCache;
use crate::auth::last_used::LastUsed;
use crate::auth::revocations::Revocations;
use crate::auth::{AuthLayer, Authenticator};
use crate::config::{Config, database_summary};
use crate::fanout::Fanout;
use crate::metrics::METRICS;
use crate::spawn::spawn_named;
use crate::store::{self, PoolConfig, Store};
use agentplane_telemetry::grpc::GrpcTelemetryLayer;
use agentplane_telemetry::metrics::MetricsServer;
use message_limit::MessageLimitLayer;

/// Largest request message accepted, in bytes.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// How long shutdown waits, after the grace period, for pooled connections still in use by
/// calls that outlived it. Idle connections close at once; the rest end with the process.
const POOL_CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often health re-probes the database.
const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// A health service that is SERVING while the process serves at all, whatever the database
/// says: the liveness probe's target, so a database outage makes replicas unready rather than
/// restarting them.
pub const LIVENESS_SERVICE: &str = "liveness";
/// Services whose health is reported (besides the server as a whole, "").
const SERVICES: &[&str] = &[
    "agentplane.v1.WorkspaceService",
    "agentplane.v1.AgentService",
    "agentplane.v1.TaskService",
    "agentplane.v1.EventService",
    "agentplane.v1.WorkerService",
    "agentplane.v1.ApiKeyService",
    "agentplane.v1.IdentityService",
    "agentplane.v1.WorkerCredentialService",
    "agentplane.v1.MemberService",
];

/// Applies pending migrations with an owner connection (under sqlx's advisory lock, so
/// replicas starting together take turns).
pub async fn migrate(url: &SecretString) -> anyhow::Result<()> {
    let config = PoolConfig {
        max_connections: 2,
        acquire_timeout: Duration::from_secs(30),
        application_name: "agentplane-migrate".to_owned(),
        // A migration may rightly run for long (building an index on a big table).
        statement_timeout: None,
        idle_in_transaction_timeout: None,
    };
    let pool = store::connect(url, &config)
        .await
        .with_context(|| format!("connecting to migrate {}", database_summary(url)))?;
    store::MIGRATOR
        .run(&pool)
        .await
        .context("applying migrations")?;
    pool.close().await;
    Ok(())
}

/// A built server, bound and connected, not yet serving.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    metrics: Option<MetricsServer>,
    pool: PgPool,
    state: Arc<AppState>,
    health: HealthReporter,
    stop: CancellationToken,
    shutdown_grace: Duration,
    config: Config,
}

impl Application {
    /// Migrates (if configured), connects, and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        if let Some(url) = &config.migrate_database_url {
            migrate(url).await?;
        }
        let pool = store::connect(&config.database_url, &config.pool)
            .await
            .with_context(|| {
                format!(
                    "connecting to the database {}",
                    database_summary(&config.database_url)
                )
            })?;
        store::check_row_security(&pool)
            .await
            .map_err(|problem| anyhow::anyhow!(problem))?;
        let streams = CancellationToken::new();
        let fanout = Fanout::start(&pool, config.listener_probe_interval, streams.clone())
            .await
            .context("listening for notifications")?;
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("binding {}", config.listen_addr))?;
        let local_addr = listener.local_addr()?;
        let metrics = match config.metrics_addr {
            Some(addr) => Some(
                MetricsServer::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics endpoint {addr}"))?,
            ),
            None => None,
        };
        let health = HealthReporter::new();
        let store = Store::new(pool.clone());
        let state = Arc::new(AppState {
            task_creator: TaskCreator::start(store.clone()),
            store,
            fanout,
            lease_duration: config.lease_duration,
            heartbeat_interval: config.heartbeat_interval,
            shutdown: streams,
            streams: StreamSlots::new(config.max_streams),
            revocations: Revocations::default(),
            api_keys: ApiKeyCache::default(),
        });
        Ok(Self {
            listener,
            local_addr,
            metrics,
            pool,
            state,
            health,
            stop: CancellationToken::new(),
            shutdown_grace: config.shutdown_grace,
            config,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound Prometheus endpoint address, if one is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }

    /// Cancelling this token shuts the server down gracefully.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Serves until the stop token is cancelled, then drains and closes.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            listener,
            local_addr,
            metrics,
            pool,
            state,
            health,
            stop,
            shutdown_grace,
            config,
        } = self;
        health
            .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
            .await;
        spawn_named(
            "health_probe",
            probe_health(state.store.clone(), health.clone(), stop.clone()),
        );
        spawn_named(
            "worker_revocations",
            state
                .revocations
                .clone()
                .run(state.store.clone(), stop.clone()),
        );
        if let Some(retention) = config.task_retention {
            spawn_named(
                "task_retention",
                crate::retention::run(
                    state.store.clone(),
                    retention,
                    config.task_retention_interval,
                    stop.clone(),
                ),
            );
        }
        let last_used = LastUsed::default();
        spawn_named(
            "api_key_last_used",
            last_used.clone().run(state.store.clone(), stop.clone()),
        );
        let mut authenticator = Authenticator::new(
            config.credentials.clone(),
            state.store.clone(),
            last_used.clone(),
        )
        .with_key_cache(state.api_keys.clone());
        if let Some(jwt) = &config.jwt {
            authenticator = authenticator.with_jwt(JwtVerifier::new(jwt)?);
        }
        if let Some(metrics) = metrics {
            tracing::info!(addr = %metrics.local_addr(), "serving metrics");
            let before = METRICS.before_scrape(
                state.store.clone(),
                state.fanout.clone(),
                pool.clone(),
                config.pool.max_connections,
            );
            spawn_named(
                "metrics",
                metrics.serve(METRICS.registry.clone(), before, stop.clone()),
            );
        }

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(agentplane_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so grpcurl can decode BadRequest, ErrorInfo, ...
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(agentplane_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so grpcurl can decode BadRequest, ErrorInfo, ...
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            // Outermost: the call's span and metrics cover authentication and limits too.
            .layer(GrpcTelemetryLayer::new(Arc::clone(&METRICS.grpc)))
            .layer(AuthLayer::new(authenticator))
            .layer(MessageLimitLayer::new(MAX_MESSAGE_BYTES))
            .add_service(tonic_health::pb::health_server::HealthServer::new(
                tonic_health::server::HealthService::from_health_reporter(health.clone()),
            ))
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                WorkspaceServiceServer::new(WorkspaceApi::new(state.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                AgentServiceServer::new(AgentApi::new(state.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                TaskServiceServer::new(TaskApi::new(state.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                EventServiceServer::new(EventApi::new(state.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                WorkerServiceServer::new(WorkerApi::new(state.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                ApiKeyServiceServer::new(ApiKeyApi::new(state.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                IdentityServiceServer::new(IdentityApi::new(state.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                WorkerCredentialServiceServer::new(WorkerCredentialApi::new(state.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                MemberServiceServer::new(MemberApi::new(state.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            );

        tracing::info!(%local_addr, "serving gRPC");
        let streams = state.shutdown.clone();
        let signal = {
            let stop = stop.clone();
            let health = health.clone();
            async move {
                stop.cancelled().await;
                tracing::info!("shutting down: draining");
                set_all(&health, ServingStatus::NotServing).await;
                // Long-lived streams end now so connections can close.
                streams.cancel();
            }
        };
        let serve = router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal);
        tokio::pin!(serve);
        let served = tokio::select! {
            result = &mut serve => result.map_err(anyhow::Error::from),
            () = async { stop.cancelled().await; tokio::time::sleep(shutdown_grace).await } => {
                tracing::warn!("grace period over; closing remaining connections");
                Ok(())
            }
        };
        state.shutdown.cancel();
        // Key uses noted since the last flush are written while the pool is still open.
        last_used.flush(&state.store).await;
        if tokio::time::timeout(POOL_CLOSE_TIMEOUT, pool.close())
            .await
            .is_err()
        {
            tracing::warn!(
                in_use = pool.size(),
                timeout_seconds = POOL_CLOSE_TIMEOUT.as_secs(),
                "database connections still in use after the grace period; not waiting for them"
            );
        }
        tracing::info!("stopped");
        served
    }
}

async fn set_all(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for service in SERVICES {
        health.set_service_status(*service, status).await;
    }
}

/// Keeps health in step with the database: NOT_SERVING until (and whenever) a probe fails.
async fn probe_health(store: Store, health: HealthReporter, stop: CancellationToken) {
    set_all(&health, ServingStatus::NotServing).await;
    let mut serving = false;
    loop {
        let ok = store.probe().await;
        if ok != serving && !stop.is_cancelled() {
            serving = ok;
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            if !ok {
                tracing::warn!("database probe failed; reporting NOT_SERVING");
            }
            set_all(&health, status).await;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(HEALTH_PROBE_INTERVAL) => {}
        }
    }
}
