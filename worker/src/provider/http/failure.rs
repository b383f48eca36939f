//! What a failed request or a broken stream means, as a [`ProviderError`] the retry logic
//! can classify, and reading an error body within bounds.

use tokio_util::sync::CancellationToken;

use super::{BodyError, Clock, MAX_STREAM_BYTES};
use crate::provider::{ProviderError, Rejection, Unavailability};

/// The error of a request that got no response.
pub(super) fn transport_error(error: &reqwest::Error) -> ProviderError {
    let reason = if error.is_timeout() {
        Unavailability::Timeout
    } else {
        Unavailability::Network
    };
    ProviderError::unavailable(reason, describe_chain(error))
}

/// The error of a stream that could not be read or decoded.
pub(in crate::provider) fn stream_error(error: &sse_stream::Error) -> ProviderError {
    match error {
        sse_stream::Error::Body(inner) => match inner.downcast_ref::<BodyError>() {
            Some(BodyError::TooLarge) => ProviderError::rejected(
                Rejection::OutputTooLarge,
                format!("the response stream passed {MAX_STREAM_BYTES} bytes"),
            ),
            Some(BodyError::Http(error)) => ProviderError::unavailable(
                Unavailability::Network,
                format!("the stream broke: {}", describe_chain(error)),
            ),
            None => ProviderError::unavailable(Unavailability::Network, inner.to_string()),
        },
        other => ProviderError::unavailable(
            Unavailability::MalformedStream,
            format!("the stream is not valid server-sent events: {other}"),
        ),
    }
}

/// An error and its causes, `: `-separated (reqwest's own message is terse).
fn describe_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads at most `limit` bytes of an error body (the rest is dropped with the connection).
pub(super) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
    clock: &Clock,
    cancel: &CancellationToken,
) -> Result<Vec<u8>, ProviderError> {
    let mut body = Vec::new();
    while body.len() < limit {
        let chunk = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(ProviderError::Canceled { spent: None }),
            chunk = tokio::time::timeout_at(clock.next_wait(), response.chunk()) => chunk,
        };
        match chunk {
            // An error body cut short still says what the status says.
            Err(_) | Ok(Err(_)) | Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => {
                let room = limit - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
        }
    }
    Ok(body)
}
