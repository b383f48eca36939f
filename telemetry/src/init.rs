//! The global subscriber: logs, and OpenTelemetry export when configured.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::attempt_ids::AttemptIdGenerator;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the fields of every enclosing span (request id,
    /// workspace, task, attempt, trace id).
    Json,
}

/// Where spans go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TracesConfig {
    /// Read the standard `OTEL_*` variables: export when `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, unless `OTEL_SDK_DISABLED=true` or
    /// `OTEL_TRACES_EXPORTER=none`.
    #[default]
    FromEnv,
    /// Export to this OTLP/gRPC endpoint (tests).
    Endpoint(String),
    /// No export.
    Off,
}

/// What [`init`] sets up.
#[derive(Clone, Debug)]
pub struct TelemetryOptions {
    /// `service.name` when `OTEL_SERVICE_NAME` is unset, e.g. `agentplane-worker`.
    pub service_name: &'static str,
    /// Log line format.
    pub log_format: LogFormat,
    /// Log filter directives; `None` reads `RUST_LOG` (default `info`).
    pub log_filter: Option<String>,
    /// Span export.
    pub traces: TracesConfig,
}

/// The installed telemetry; [`Telemetry::shutdown`] flushes spans still buffered.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports every finished span now (tests; shutdown).
    pub fn force_flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(error) = provider.force_flush()
        {
            tracing::warn!(%error, "flushing spans failed");
        }
    }

    /// Flushes and stops export; the last step of an orderly shutdown.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            tracing::warn!(%error, "stopping span export failed");
        }
    }
}

/// Installs the global subscriber (a second call leaves the first in place and exports
/// nothing) and, when traces are exported, the global tracer provider and the W3C trace
/// context propagator. Must run inside a tokio runtime when exporting (the OTLP client
/// spawns its connection there).
pub fn init(options: TelemetryOptions) -> Telemetry {
    let filter = || match &options.log_filter {
        Some(directives) => EnvFilter::new(directives),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let fmt = match options.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    }
    .with_filter(filter());

    let provider = match tracer_provider(&options) {
        Ok(provider) => provider,
        Err(error) => {
            // Logging is not up yet.
            eprintln!("OpenTelemetry export is configured but cannot start: {error}");
            None
        }
    };
    let otel = provider.as_ref().map(|provider| {
        // Spans follow RUST_LOG too, so `info` exports the spans agentplane makes and not
        // the transport's debug spans.
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("agentplane"))
            .with_filter(span_filter(&options))
    });
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    if !installed {
        return Telemetry { provider: None };
    }
    if let Some(provider) = &provider {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    Telemetry { provider }
}

fn span_filter(options: &TelemetryOptions) -> EnvFilter {
    match std::env::var("RUST_LOG") {
        Ok(directives) if options.log_filter.is_none() => EnvFilter::new(directives),
        _ => EnvFilter::new("info"),
    }
}

fn tracer_provider(
    options: &TelemetryOptions,
) -> Result<Option<SdkTracerProvider>, opentelemetry_otlp::ExporterBuildError> {
    let endpoint = match &options.traces {
        TracesConfig::Off => return Ok(None),
        TracesConfig::FromEnv if !exporting_from_env() => return Ok(None),
        TracesConfig::FromEnv => None,
        TracesConfig::Endpoint(endpoint) => Some(endpoint.clone()),
    };
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    let exporter = builder.build()?;
    // Resource::builder() reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the
    // binary's name stands in for an unset service name.
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(options.service_name);
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_id_generator(AttemptIdGenerator::default())
            .with_resource(resource.build())
            .build(),
    ))
}

/// The standard variables' verdict: an endpoint is set and export is not switched off.
fn exporting_from_env() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let no_exporter =
        std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim().eq_ignore_ascii_case("none"));
    (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && !disabled
        && !no_exporter
}
