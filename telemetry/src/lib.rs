//! Telemetry both agentplane binaries share, in one place (CONVENTIONS 22):
//!
//! - [`init`]: the global `tracing` subscriber: an `EnvFilter` (`RUST_LOG`, default `info`),
//!   text or JSON lines, and OpenTelemetry export over OTLP/gRPC when the standard `OTEL_*`
//!   variables ask for it (off, and free, otherwise).
//! - [`propagation`]: W3C trace context in and out of gRPC metadata and the task row.
//! - [`grpc`]: a tower layer for a tonic server: a span per call, parented on the caller's
//!   `traceparent`, and request, latency and in-flight metrics by method and code.
//! - [`metrics`]: a Prometheus text endpoint on its own port, and bounded label values.

pub mod attempt_ids;
pub mod grpc;
mod init;
pub mod metrics;
pub mod propagation;

pub use init::{LogFormat, Telemetry, TelemetryOptions, TracesConfig, init};
