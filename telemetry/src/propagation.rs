//! W3C trace context (`traceparent`) across process boundaries: from a client's gRPC
//! metadata into the control plane's request span, from there into the task row, and from the
//! claimed row into the worker's attempt span. With export off, every function here is a
//! no-op that returns nothing, so the `traceparent` stored with a task is `None`.

use std::collections::HashMap;

use std::time::SystemTime;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::trace::{Span as _, SpanContext, TraceState, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::attempt_ids::{attempt_span_id, with_span_id};

/// The `traceparent` header/metadata key.
pub const TRACEPARENT: &str = "traceparent";
/// Longest `traceparent` accepted from outside (version 00 is 55 characters; later versions
/// may append fields).
pub const MAX_TRACEPARENT_LEN: usize = 256;

pub use opentelemetry::KeyValue as Attribute;

/// The `traceparent` of `span`, if it is being exported.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut MapCarrier(&mut carrier));
    carrier.remove(TRACEPARENT)
}

/// The trace id of `span` as 32 hex digits, if it is being exported (for log lines).
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The remote context a `traceparent` names; an empty context if it is absent or malformed.
pub fn context_from_traceparent(traceparent: Option<&str>) -> Context {
    let Some(value) = traceparent.filter(|value| value.len() <= MAX_TRACEPARENT_LEN) else {
        return Context::new();
    };
    let mut carrier = HashMap::from([(TRACEPARENT.to_owned(), value.to_owned())]);
    TraceContextPropagator::new().extract(&MapCarrier(&mut carrier))
}

/// The remote context in HTTP/2 headers (gRPC metadata): `traceparent` and `tracestate`.
pub fn context_from_headers(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderCarrier(headers))
}

/// Makes `span` a child of `parent` when `parent` carries a valid remote span; also records
/// the span's trace id in its `trace_id` field, if it has one.
pub fn adopt(span: &tracing::Span, parent: Context) {
    if parent.span().span_context().is_valid() {
        // Fails only when the span is disabled or already started a trace of its own.
        let _ = span.set_parent(parent);
    }
    if let Some(trace_id) = trace_id_of(span) {
        span.record("trace_id", trace_id.as_str());
    }
}

/// Makes `span` attempt `attempt` of `task`: a child of `parent` (the call that created the
/// task) like [`adopt`], with the span id [`attempt_span_id`] gives it, and, for a retry, a
/// link to the attempt before it, whose id is known the same way. So every attempt of a task
/// is in the one trace, and a retry points at the attempt it follows.
pub fn adopt_attempt(span: &tracing::Span, parent: Context, task: uuid::Uuid, attempt: i32) {
    let parent_span = parent.span().span_context().clone();
    if !parent_span.is_valid() {
        adopt(span, parent);
        return;
    }
    if attempt > 1 {
        span.add_link(SpanContext::new(
            parent_span.trace_id(),
            attempt_span_id(task, attempt - 1),
            parent_span.trace_flags(),
            true,
            TraceState::default(),
        ));
    }
    with_span_id(attempt_span_id(task, attempt), || {
        adopt(span, parent);
        // Build the span now, while its id is set.
        let _ = span.context();
    });
}

/// Exports a span that has already ended, under `parent`: for intervals that began before
/// this process knew of them, such as a task's wait in the queue (it starts when the task
/// became due, on another machine, and ends at the claim). A no-op unless `parent` is a
/// valid remote span and export is on.
pub fn record_finished_span(
    name: &'static str,
    parent: &Context,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
) {
    if !parent.span().span_context().is_valid() {
        return;
    }
    let tracer = opentelemetry::global::tracer("agentplane");
    let mut span = tracer
        .span_builder(name)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&tracer, parent);
    span.end_with_timestamp(end);
}

/// Adds the current span's trace context to outgoing gRPC metadata (clients of the API).
pub fn inject_into_metadata(span: &tracing::Span, metadata: &mut tonic::metadata::MetadataMap) {
    if let Some(traceparent) = traceparent_of(span)
        && let Ok(value) = traceparent.parse()
    {
        metadata.insert(TRACEPARENT, value);
    }
}

struct MapCarrier<'a>(&'a mut HashMap<String, String>);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl Extractor for MapCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct HeaderCarrier<'a>(&'a http::HeaderMap);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .and_then(|value| value.to_str().ok())
            .filter(|value| value.len() <= MAX_TRACEPARENT_LEN)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_or_oversized_traceparent_gives_an_empty_context() {
        for value in ["", "garbage", &"0".repeat(MAX_TRACEPARENT_LEN + 1)] {
            let context = context_from_traceparent(Some(value));
            assert!(!context.span().span_context().is_valid(), "{value:?}");
        }
    }

    #[test]
    fn valid_traceparent_names_its_remote_span() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = context_from_traceparent(Some(value));
        let span_context = context.span().span_context().clone();
        assert!(span_context.is_remote());
        assert_eq!(
            span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span_context.span_id().to_string(), "00f067aa0ba902b7");
    }
}
