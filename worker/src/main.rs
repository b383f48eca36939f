//! `agentplane-worker`: parse settings, start logging, run the worker until SIGINT/SIGTERM,
//! then shut down in order. A second signal exits at once.

use std::process::ExitCode;
use std::time::Duration;

use agentplane_worker::provider::prices::PriceTable;
use agentplane_worker::provider::{
    Endpoint, HttpSettings, Provider, ProviderSettings, RetryPolicy, default_base_url,
};
use agentplane_worker::queue::WorkerLabels;
use agentplane_worker::{Worker, WorkerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

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

    #[command(flatten)]
    providers: ProviderArgs,
}

/// The model vendors: a vendor whose key is not set is not offered by this worker, and its
/// tasks fail with `provider_not_configured`.
#[derive(Debug, clap::Args)]
struct ProviderArgs {
    /// Anthropic API key; set to run agents with provider anthropic.
    #[arg(long, env = "ANTHROPIC_API_KEY", hide_env_values = true)]
    anthropic_api_key: Option<SecretString>,

    /// Anthropic API base URL (default https://api.anthropic.com).
    #[arg(long, env = "AGENTPLANE_ANTHROPIC_BASE_URL")]
    anthropic_base_url: Option<String>,

    /// OpenAI API key; set to run agents with provider openai.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    openai_api_key: Option<SecretString>,

    /// OpenAI API base URL, including the version (default https://api.openai.com/v1).
    #[arg(long, env = "AGENTPLANE_OPENAI_BASE_URL")]
    openai_base_url: Option<String>,

    /// Gemini API key; set to run agents with provider gemini.
    #[arg(long, env = "GEMINI_API_KEY", hide_env_values = true)]
    gemini_api_key: Option<SecretString>,

    /// Gemini API base URL (default https://generativelanguage.googleapis.com).
    #[arg(long, env = "AGENTPLANE_GEMINI_BASE_URL")]
    gemini_base_url: Option<String>,

    /// Base URL of an OpenAI-compatible server, including its version path (e.g.
    /// http://127.0.0.1:11434/v1 for Ollama, http://127.0.0.1:8000/v1 for vLLM); set to run
    /// agents with provider openai_compatible.
    #[arg(long, env = "AGENTPLANE_OPENAI_COMPATIBLE_BASE_URL")]
    openai_compatible_base_url: Option<String>,

    /// API key of the OpenAI-compatible server, if it needs one.
    #[arg(
        long,
        env = "AGENTPLANE_OPENAI_COMPATIBLE_API_KEY",
        hide_env_values = true
    )]
    openai_compatible_api_key: Option<SecretString>,

    /// JSON file of model prices overriding and adding to the shipped ones (see the README).
    #[arg(long, env = "AGENTPLANE_PRICES_FILE")]
    prices_file: Option<PathBuf>,

    /// Limit of one model request, from sending it to the end of its stream, in seconds.
    #[arg(
        long,
        env = "AGENTPLANE_PROVIDER_REQUEST_TIMEOUT_SECONDS",
        default_value_t = 600
    )]
    provider_request_timeout_seconds: u64,

    /// Longest silence from a model vendor (before its response, or between two chunks of
    /// its stream) before the call is given up as stalled, in seconds. Reasoning models may
    /// send nothing for minutes while they think.
    #[arg(
        long,
        env = "AGENTPLANE_PROVIDER_STALL_TIMEOUT_SECONDS",
        default_value_t = 300
    )]
    provider_stall_timeout_seconds: u64,

    /// Retries of a failed model call within one attempt (overload, rate limit, 5xx,
    /// network), with exponential backoff and full jitter.
    #[arg(long, env = "AGENTPLANE_PROVIDER_MAX_RETRIES", default_value_t = 4)]
    provider_max_retries: u32,
}

impl ProviderArgs {
    fn into_settings(self) -> Result<ProviderSettings, String> {
        let vendor = |provider: Provider, key: Option<SecretString>, url: Option<String>| {
            key.map(|key| Endpoint {
                base_url: url
                    .or_else(|| default_base_url(provider).map(str::to_owned))
                    .unwrap_or_default(),
                api_key: Some(key),
            })
        };
        let prices = match &self.prices_file {
            Some(path) => PriceTable::builtin_with_file(path).map_err(|error| error.to_string())?,
            None => PriceTable::builtin(),
        };
        Ok(ProviderSettings {
            anthropic: vendor(
                Provider::Anthropic,
                self.anthropic_api_key,
                self.anthropic_base_url,
            ),
            openai: vendor(Provider::OpenAi, self.openai_api_key, self.openai_base_url),
            gemini: vendor(Provider::Gemini, self.gemini_api_key, self.gemini_base_url),
            openai_compatible: self.openai_compatible_base_url.map(|base_url| Endpoint {
                base_url,
                api_key: self.openai_compatible_api_key,
            }),
            http: HttpSettings {
                request_timeout: Duration::from_secs(self.provider_request_timeout_seconds),
                stall_timeout: Duration::from_secs(self.provider_stall_timeout_seconds),
                retry: RetryPolicy {
                    max_retries: self.provider_max_retries,
                    ..RetryPolicy::default()
                },
                ..HttpSettings::default()
            },
            prices: Arc::new(prices),
        })
    }
}

impl Args {
    fn into_config(self) -> Result<WorkerConfig, String> {
        Ok(WorkerConfig {
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
            providers: self.providers.into_settings()?,
        })
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
    let config = match args.into_config() {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "invalid configuration");
            return ExitCode::from(2);
        }
    };
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
