//! The answer to a request message over the size limit.
//!
//! tonic enforces `max_decoding_message_size` while decoding and answers OUT_OF_RANGE with
//! a bare message, before any handler runs. The API's convention for a limit is
//! RESOURCE_EXHAUSTED with `google.rpc.ErrorInfo` ([`ApiError::MessageTooLarge`]), so this
//! layer rewrites that answer. It goes by the status code alone: no handler answers
//! OUT_OF_RANGE (`ApiError` has no such kind), so every OUT_OF_RANGE in response headers is
//! tonic's decoding limit, whatever tonic's message says.
//!
//! tonic answers a unary or server-streaming request before its handler runs, with the
//! status in the response headers, which is what this layer rewrites. A message over the
//! limit in the middle of a client stream reaches the handler as an error instead.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::error::ApiError;

/// Tower layer that turns tonic's over-the-limit OUT_OF_RANGE into RESOURCE_EXHAUSTED with
/// an ErrorInfo naming the limit.
#[derive(Clone, Copy, Debug)]
pub(super) struct MessageLimitLayer {
    limit_bytes: usize,
}

impl MessageLimitLayer {
    /// A layer for services decoding at most `limit_bytes` per request message.
    pub(super) fn new(limit_bytes: usize) -> Self {
        Self { limit_bytes }
    }
}

impl<S> Layer<S> for MessageLimitLayer {
    type Service = MessageLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageLimitService {
            inner,
            limit_bytes: self.limit_bytes,
        }
    }
}

/// See [`MessageLimitLayer`].
#[derive(Clone, Debug)]
pub(super) struct MessageLimitService<S> {
    inner: S,
    limit_bytes: usize,
}

impl<S, B> Service<http::Request<B>> for MessageLimitService<S>
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
        let limit_bytes = self.limit_bytes;
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let status = tonic::Status::from_header_map(response.headers());
            if status.is_some_and(|s| s.code() == tonic::Code::OutOfRange) {
                let status = tonic::Status::from(ApiError::MessageTooLarge { limit_bytes });
                let headers = response.headers_mut();
                headers.remove("grpc-message");
                headers.remove("grpc-status-details-bin");
                if status.add_header(headers).is_err() {
                    // Our own status always fits in headers; keep tonic's answer if it did not.
                    tracing::warn!("could not rewrite an over-the-limit answer");
                }
                response.extensions_mut().insert(status);
            }
            Ok(response)
        })
    }
}
