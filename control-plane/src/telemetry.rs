//! Logging and tracing setup: see [`agentplane_telemetry`], shared with the worker.

pub use agentplane_telemetry::LogFormat;
use agentplane_telemetry::{Telemetry, TelemetryOptions, TracesConfig};

/// Installs logs (an `EnvFilter` from `RUST_LOG`, default `info`; text or JSON) and, when the
/// `OTEL_*` variables ask for it, OpenTelemetry export. Flush with [`Telemetry::shutdown`].
pub fn init(format: LogFormat) -> Telemetry {
    agentplane_telemetry::init(TelemetryOptions {
        service_name: "agentplane-control-plane",
        log_format: format,
        log_filter: None,
        traces: TracesConfig::FromEnv,
    })
}
