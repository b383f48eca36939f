//! `agentplane-worker`: parse settings, start logging, run the worker until SIGINT/SIGTERM,
//! then shut down in order. A second signal exits at once.

use std::process::ExitCode;
use std::time::Duration;

use agentplane_worker::queue::WorkerLabels;
use agentplane_worker::{Worker, WorkerConfig};
use std::net::SocketAddr;

use agentplane_telemetry::{LogFormat, TelemetryOptions, TracesConfig};
use clap::Parser;
use secrecy::SecretString;
use uuid::Uuid;

/// Claims agentplane tasks from Postgres, runs them against model providers, and streams
/// the results to the control plane.
#[derive(Debug, Parser)]
#[command(name = "agentplane-worker", version)]
struct Args {
    /// Ignored: a worker's id is the one in its credential (AGENTPLANE_WORKER_TOKEN), or the
    /// one it is issued when it enrols. Kept so existing deployments still start.
    #[arg(long, env = "AGENTPLANE_WORKER_ID")]
    worker_id: Option<Uuid>,

    /// The control plane's gRPC URL.
    #[arg(
        long,
        env = "AGENTPLANE_CONTROL_PLANE_URL",
        default_value = agentplane_worker::DEFAULT_CONTROL_PLANE_URL
    )]
    control_plane_url: String,

    /// Postgres DSN of a login role that is a member of agentplane_worker.
    #[arg(long, env = "AGENTPLANE_WORKER_DATABASE_URL", hide_env_values = true)]
    database_url: SecretString,

    /// This worker's credential (`wkr_…`, from CreateWorkerCredential), or the fleet's
    /// enrolment token, which the worker exchanges for a credential of its own at start.
    #[arg(long, env = "AGENTPLANE_WORKER_TOKEN", hide_env_values = true)]
    worker_token: SecretString,

    /// Most tasks run at once (1 to 10000).
    #[arg(long, env = "AGENTPLANE_WORKER_CAPACITY", default_value_t = agentplane_worker::DEFAULT_CAPACITY)]
    capacity: u32,

    /// Longest pause between two polls of an idle queue, in milliseconds.
    #[arg(
        long,
        env = "AGENTPLANE_WORKER_POLL_INTERVAL_MAX_MS",
        default_value_t = 2000
    )]
    poll_interval_max_ms: u64,

    /// Seconds running tasks get to finish on shutdown before they are given back.
    #[arg(
        long,
        env = "AGENTPLANE_WORKER_SHUTDOWN_GRACE_SECONDS",
        default_value_t = 30
    )]
    shutdown_grace_seconds: u64,

    /// Pause between two tokens of the echo provider, in milliseconds.
    #[arg(
        long,
        env = "AGENTPLANE_WORKER_ECHO_TOKEN_DELAY_MS",
        default_value_t = 20
    )]
    echo_token_delay_ms: u64,

    /// Address of the Prometheus endpoint (`GET /metrics`); unset serves none.
    #[arg(long, env = "AGENTPLANE_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,

    /// Labels this worker advertises, `key=value,key=value` (region, provider access,
    /// hardware): it claims only the tasks of agents whose required labels it has, all with
    /// equal values. Unset: no labels, so only agents that require none.
    #[arg(long, env = "AGENTPLANE_WORKER_LABELS", default_value = "", value_parser = WorkerLabels::parse)]
    labels: WorkerLabels,

    /// Log line format.
    #[arg(long, env = "AGENTPLANE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

impl Args {
    fn into_config(self) -> WorkerConfig {
        WorkerConfig {
            worker_id: self.worker_id.unwrap_or_else(Uuid::now_v7),
            control_plane_url: self.control_plane_url,
            database_url: self.database_url,
            worker_token: self.worker_token,
            capacity: self.capacity,
            poll_interval_max: Duration::from_millis(self.poll_interval_max_ms),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_seconds),
            echo_token_delay: Duration::from_millis(self.echo_token_delay_ms),
            metrics_addr: self.metrics_addr,
            labels: self.labels,
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM.
async fn stop_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = terminate.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let telemetry = agentplane_telemetry::init(TelemetryOptions {
        service_name: "agentplane-worker",
        log_format: args.log_format,
        log_filter: None,
        traces: TracesConfig::FromEnv,
    });
    let config = args.into_config();
    if let Err(error) = config.validate() {
        tracing::error!(%error, "invalid configuration");
        return ExitCode::from(2);
    }
    let handle = match Worker::start(config).await {
        Ok(handle) => handle,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "worker failed to start");
            telemetry.shutdown();
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = stop_signal().await {
        tracing::error!(%error, "cannot listen for signals; shutting down");
    }
    tracing::info!("stop signal received; shutting down (send another to exit at once)");
    tokio::select! {
        () = handle.shutdown() => {
            // Last step of shutdown: export the spans still buffered.
            telemetry.shutdown();
            ExitCode::SUCCESS
        }
        _ = stop_signal() => {
            tracing::warn!("second stop signal; exiting at once");
            // Leaving main would wait for the runtime to wind down; the point is not to.
            std::process::exit(130)
        }
    }
}
