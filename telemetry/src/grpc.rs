//! A tower layer for a tonic server: one span per call, parented on the caller's W3C
//! `traceparent`, and Prometheus metrics by method and status code.
//!
//! The span is named after the method (`otel.name`) and carries `rpc.method`, the caller's
//! `x-request-id` if any, `trace_id` when exported, and empty `workspace_id` and `task_id`
//! fields that handlers fill in, so every log line of the call has them. The metrics:
//!
//! - `agentplane_grpc_server_requests_total{method,code}`: calls by final status;
//! - `agentplane_grpc_server_request_duration_seconds{method,code}`: from the request to
//!   the end of the response (for a stream, its whole life);
//! - `agentplane_grpc_server_in_flight{method}`: calls under way; for the streaming methods
//!   this is the number of live streams.
//!
//! The code comes from the response headers (tonic's trailers-only answers: every error
//! before the first message) or else from the trailers; a response dropped before its
//! trailers (the client went away) counts as `Cancelled`. Methods outside the list given to
//! [`GrpcMetrics::new`] are labelled `unknown`, so a client cannot mint series.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::Frame;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use tower::{Layer, Service};
use tracing::Instrument as _;

use crate::metrics::{LATENCY_BUCKETS, register};
use crate::propagation::{adopt, context_from_headers};

/// The method label of calls to paths not in the known list.
const UNKNOWN_METHOD: &str = "unknown";

/// gRPC server metrics, registered once per process.
#[derive(Debug)]
pub struct GrpcMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGaugeVec,
    known: HashSet<String>,
}

impl GrpcMetrics {
    /// Registers the metrics in `registry`; `known_methods` are full paths
    /// (`/agentplane.v1.TaskService/CreateTask`).
    pub fn new(registry: &Registry, known_methods: impl IntoIterator<Item = String>) -> Self {
        let requests = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "agentplane_grpc_server_requests_total",
                    "gRPC calls handled, by method and final status code",
                ),
                &["method", "code"],
            )
            .expect("valid metric"),
        );
        let duration = register(
            registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "agentplane_grpc_server_request_duration_seconds",
                    "gRPC call duration, from the request to the end of the response",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["method", "code"],
            )
            .expect("valid metric"),
        );
        let in_flight = register(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    "agentplane_grpc_server_in_flight",
                    "gRPC calls under way (for streaming methods: live streams)",
                ),
                &["method"],
            )
            .expect("valid metric"),
        );
        Self {
            requests,
            duration,
            in_flight,
            known: known_methods.into_iter().collect(),
        }
    }

    fn method_label(&self, path: &str) -> String {
        if self.known.contains(path) {
            path.trim_start_matches('/').to_owned()
        } else {
            UNKNOWN_METHOD.to_owned()
        }
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct GrpcTelemetryLayer {
    metrics: Arc<GrpcMetrics>,
}

impl GrpcTelemetryLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<GrpcMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for GrpcTelemetryLayer {
    type Service = GrpcTelemetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTelemetryService {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// See [`GrpcTelemetryLayer`].
#[derive(Clone, Debug)]
pub struct GrpcTelemetryService<S> {
    inner: S,
    metrics: Arc<GrpcMetrics>,
}

impl<S, B> Service<http::Request<B>> for GrpcTelemetryService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = self.metrics.method_label(request.uri().path());
        let request_id = request
            .headers()
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .filter(|value| value.len() <= 128)
            .unwrap_or_default()
            .to_owned();
        let span = tracing::info_span!(
            "grpc",
            otel.name = %method,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            request_id = %request_id,
            workspace_id = tracing::field::Empty,
            task_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        adopt(&span, context_from_headers(request.headers()));
        let mut call = Call::start(Arc::clone(&self.metrics), method, span.clone());
        let response = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(
            async move {
                match response.await {
                    Ok(response) => {
                        let headers_code = tonic::Status::from_header_map(response.headers())
                            .map(|status| status.code());
                        let (parts, body) = response.into_parts();
                        if let Some(code) = headers_code {
                            call.finish(code);
                        }
                        let body = tonic::body::Body::new(ObservedBody {
                            inner: body,
                            call: Some(call),
                        });
                        Ok(http::Response::from_parts(parts, body))
                    }
                    Err(error) => {
                        call.finish(tonic::Code::Internal);
                        Err(error)
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// One call's measurements; recorded once, when its status is known or it is dropped.
struct Call {
    metrics: Arc<GrpcMetrics>,
    method: String,
    started: Instant,
    span: tracing::Span,
    done: bool,
}

impl Call {
    fn start(metrics: Arc<GrpcMetrics>, method: String, span: tracing::Span) -> Self {
        metrics.in_flight.with_label_values(&[&method]).inc();
        Self {
            metrics,
            method,
            started: Instant::now(),
            span,
            done: false,
        }
    }

    fn finish(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let code_label = format!("{code:?}");
        let labels = [self.method.as_str(), code_label.as_str()];
        self.metrics.requests.with_label_values(&labels).inc();
        self.metrics
            .duration
            .with_label_values(&labels)
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics
            .in_flight
            .with_label_values(&[&self.method])
            .dec();
        self.span.record("rpc.grpc.status_code", i32::from(code));
        // The access log: at DEBUG, since at full speed it is a line per call.
        tracing::debug!(
            parent: &self.span,
            code = ?code,
            elapsed_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            "call finished"
        );
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

/// The response body, watched for the trailers that carry the final status.
struct ObservedBody {
    inner: tonic::body::Body,
    call: Option<Call>,
}

impl http_body::Body for ObservedBody {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let entered = self.call.as_ref().map(|call| call.span.clone());
        let _entered = entered.as_ref().map(tracing::Span::enter);
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = tonic::Status::from_header_map(trailers)
                        .map_or(tonic::Code::Ok, |status| status.code());
                    if let Some(mut call) = self.call.take() {
                        call.finish(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut call) = self.call.take() {
                    call.finish(tonic::Code::Internal);
                }
            }
            Poll::Ready(None) => {
                if let Some(mut call) = self.call.take() {
                    call.finish(tonic::Code::Ok);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
