//! The HTTP engine every vendor adapter shares: send one streaming request, read its
//! server-sent events incrementally (`sse-stream`), classify failures, retry with backoff,
//! enforce the request, stall and deadline timeouts, stop at once on cancellation, and price
//! the answer. A [`WireFormat`] says how one vendor writes a request and reads its events and
//! errors; it never sees the network.
//!
//! A retry happens inside the attempt only while no text has reached the sink: once a piece
//! was streamed to watchers, a retried call would repeat it, so the attempt fails (retryable)
//! and the queue runs a fresh attempt, whose output is kept apart.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use sse_stream::{Sse, SseByteStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::prices::{PriceTable, cost_micros};
use super::retry::retry_after;
use super::settings::{Endpoint, HttpSettings, ProviderSettings, SettingsError};
use super::{
    FinishReason, ModelFuture, ModelProvider, ModelRequest, ModelResponse, ModelUsage, OutputSink,
    Provider, ProviderError, Rejection, Unavailability,
};
use agentplane_core::limits::MAX_OUTPUT_BYTES;

/// Largest response stream read (SSE framing costs far more bytes than the answer's text,
/// whose own limit is `MAX_OUTPUT_BYTES`).
pub(super) const MAX_STREAM_BYTES: usize = 64 * 1024 * 1024;
/// Largest error body read.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Longest vendor message kept in an error.
const MAX_MESSAGE_CHARS: usize = 1000;
/// Longest vendor request id kept.
const MAX_REQUEST_ID_CHARS: usize = 200;

/// One vendor request, before the engine adds content type, accept and idempotency headers.
#[derive(Debug)]
pub(super) struct WireRequest {
    /// Appended to the endpoint's base URL (starts with `/`).
    pub(super) path: String,
    /// Authentication and vendor headers (secrets marked sensitive).
    pub(super) headers: HeaderMap,
    /// The JSON body.
    pub(super) body: serde_json::Value,
}

/// What one event of the stream meant.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Decoded {
    /// Answer text the event added.
    pub(super) text: Option<String>,
    /// The event was the stream's terminal event: stop reading.
    pub(super) done: bool,
}

/// What a complete stream said beyond its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Finished {
    /// Why generation stopped.
    pub(super) finish_reason: FinishReason,
    /// The model that answered, as the vendor names it.
    pub(super) model: Option<String>,
    /// Token counts (the engine adds the cost).
    pub(super) usage: ModelUsage,
    /// The stream carried usage; without it the call is recorded unpriced.
    pub(super) usage_reported: bool,
    /// The vendor's id of the response, from the body.
    pub(super) response_id: Option<String>,
}

/// Reads one response stream, event by event.
pub(super) trait StreamDecoder: Send {
    /// Decodes one event; an `Err` ends the call (an error event, an undecodable event).
    fn event(&mut self, event: &Sse) -> Result<Decoded, ProviderError>;
    /// Called once the stream ended (after its terminal event, or at end of body): the
    /// result, or why the stream is incomplete.
    fn finish(self: Box<Self>) -> Result<Finished, ProviderError>;
}

/// How one vendor's API is written and read.
pub(super) trait WireFormat: Send + Sync + std::fmt::Debug + 'static {
    /// The request for `request`, authenticated with `endpoint`'s key.
    fn request(
        &self,
        request: &ModelRequest,
        endpoint: &Endpoint,
    ) -> Result<WireRequest, ProviderError>;
    /// A decoder for one response stream.
    fn decoder(&self) -> Box<dyn StreamDecoder>;
    /// The error an unsuccessful response means, from its status and body (the vendor's JSON
    /// error shape); the engine adds `retry-after` from the headers when the body has none.
    fn error(&self, status: StatusCode, body: &[u8]) -> ProviderError;
}

/// A vendor adapter: the engine around a [`WireFormat`].
#[derive(Debug)]
pub(super) struct HttpProvider<W> {
    provider: Provider,
    wire: W,
    endpoint: Endpoint,
    client: reqwest::Client,
    http: HttpSettings,
    prices: Arc<PriceTable>,
}

/// A provider and its implementation, ready to register.
type Registration = (Provider, Arc<dyn ModelProvider>);

/// The vendor adapters `settings` configures, ready to register.
pub(super) fn vendors(settings: &ProviderSettings) -> Result<Vec<Registration>, SettingsError> {
    settings.validate()?;
    // rustls needs a process-wide crypto provider; ring is the one built in. Err means one
    // is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .connect_timeout(settings.http.connect_timeout)
        // A redirect could carry the API key to another host; vendors do not redirect.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("agentplane-worker/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| SettingsError::Client(error.to_string()))?;
    let mut vendors: Vec<Registration> = Vec::new();
    for (provider, endpoint) in settings.endpoints() {
        let adapter: Arc<dyn ModelProvider> = match provider {
            Provider::Anthropic => Arc::new(HttpProvider::new(
                provider,
                super::anthropic::Anthropic,
                endpoint,
                &client,
                settings,
            )),
            Provider::OpenAi => Arc::new(HttpProvider::new(
                provider,
                super::openai::OpenAi::official(),
                endpoint,
                &client,
                settings,
            )),
            Provider::OpenAiCompatible => Arc::new(HttpProvider::new(
                provider,
                super::openai::OpenAi::compatible(),
                endpoint,
                &client,
                settings,
            )),
            Provider::Gemini => Arc::new(HttpProvider::new(
                provider,
                super::gemini::Gemini,
                endpoint,
                &client,
                settings,
            )),
            Provider::Echo => continue,
        };
        vendors.push((provider, adapter));
    }
    Ok(vendors)
}

/// A header value holding a secret: never printed by `Debug`.
pub(super) fn secret_header(value: &str) -> Result<HeaderValue, ProviderError> {
    let mut header = HeaderValue::from_str(value).map_err(|_| {
        ProviderError::rejected(
            Rejection::InvalidRequest,
            "the api key cannot travel in a header",
        )
    })?;
    header.set_sensitive(true);
    Ok(header)
}

/// A header value from our own text (request ids).
pub(super) fn plain_header(value: &str) -> Result<HeaderValue, ProviderError> {
    HeaderValue::from_str(value).map_err(|_| {
        ProviderError::rejected(
            Rejection::InvalidRequest,
            format!("{value:?} cannot travel in a header"),
        )
    })
}

/// The error a response status means when the body says nothing more specific.
pub(super) fn by_status(status: StatusCode, message: String) -> ProviderError {
    let rejected = |reason| ProviderError::rejected(reason, message.clone());
    let unavailable = |reason| ProviderError::unavailable(reason, message.clone());
    match status.as_u16() {
        401 => rejected(Rejection::Authentication),
        402 | 403 => rejected(Rejection::PermissionDenied),
        404 => rejected(Rejection::NotFound),
        408 => unavailable(Unavailability::Timeout),
        409 => unavailable(Unavailability::ServerError),
        429 => unavailable(Unavailability::RateLimited),
        503 | 529 => unavailable(Unavailability::Overloaded),
        504 => unavailable(Unavailability::Timeout),
        500..=599 => unavailable(Unavailability::ServerError),
        300..=399 => rejected(Rejection::UnexpectedResponse),
        _ => rejected(Rejection::InvalidRequest),
    }
}

/// A short description of an undecodable error body, for the message.
pub(super) fn raw_body_message(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        format!("http {status}")
    } else {
        format!("http {status}: {text}")
    }
}

/// A JSON body of an event, or a malformed-stream error naming the vendor.
pub(super) fn event_json<T: serde::de::DeserializeOwned>(
    vendor: &str,
    data: &str,
) -> Result<T, ProviderError> {
    serde_json::from_str(data).map_err(|error| {
        ProviderError::unavailable(
            Unavailability::MalformedStream,
            format!("an event of the {vendor} stream is not valid: {error}"),
        )
    })
}

/// The body stream could not be read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("{0}")]
    Http(#[source] reqwest::Error),
    #[error("the response passed {MAX_STREAM_BYTES} bytes")]
    TooLarge,
}

/// How one try ended badly, and whether answer text had reached the sink by then.
struct TryFailure {
    error: ProviderError,
    streamed: bool,
}

impl From<ProviderError> for TryFailure {
    fn from(error: ProviderError) -> Self {
        Self {
            error,
            streamed: false,
        }
    }
}

impl<W: WireFormat> HttpProvider<W> {
    fn new(
        provider: Provider,
        wire: W,
        endpoint: &Endpoint,
        client: &reqwest::Client,
        settings: &ProviderSettings,
    ) -> Self {
        Self {
            provider,
            wire,
            endpoint: endpoint.clone(),
            client: client.clone(),
            http: settings.http.clone(),
            prices: Arc::clone(&settings.prices),
        }
    }

    async fn run(
        &self,
        request: ModelRequest,
        sink: OutputSink,
        cancel: CancellationToken,
    ) -> Result<ModelResponse, ProviderError> {
        let result = self.run_with_retries(&request, &sink, &cancel).await;
        result.map_err(|error| scrub_error(error, self.endpoint.api_key.as_ref()))
    }

    async fn run_with_retries(
        &self,
        request: &ModelRequest,
        sink: &OutputSink,
        cancel: &CancellationToken,
    ) -> Result<ModelResponse, ProviderError> {
        let wire = self.wire.request(request, &self.endpoint)?;
        let url = format!(
            "{}{}",
            self.endpoint.base_url.trim_end_matches('/'),
            wire.path
        );
        let mut headers = wire.headers;
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        headers.insert("idempotency-key", plain_header(&request.request_id)?);
        let body = Bytes::from(serde_json::to_vec(&wire.body).map_err(|error| {
            ProviderError::rejected(Rejection::InvalidRequest, error.to_string())
        })?);
        let mut retry = 0u32;
        loop {
            let failure = match self
                .try_once(&url, &headers, body.clone(), request, sink, cancel)
                .await
            {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            // Scrubbed before anything logs it.
            let error = scrub_error(failure.error, self.endpoint.api_key.as_ref());
            if !error.is_retryable() || matches!(error, ProviderError::Canceled) {
                return Err(error);
            }
            if failure.streamed {
                tracing::warn!(
                    code = error.code(),
                    "model call failed after streaming output; the attempt fails"
                );
                return Err(error);
            }
            retry = retry.saturating_add(1);
            let random = crate::backoff::random_u64();
            let Some(delay) = self.http.retry.delay(retry, error.retry_after(), random) else {
                return Err(error);
            };
            if request
                .deadline
                .is_some_and(|deadline| Instant::now() + delay >= deadline)
            {
                return Err(error);
            }
            crate::metrics::METRICS
                .provider_retries
                .with_label_values(&[self.provider.as_str(), error.code()])
                .inc();
            tracing::warn!(
                provider = %self.provider,
                code = error.code(),
                retry,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                %error,
                "model call failed; retrying"
            );
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(ProviderError::Canceled),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One HTTP request and its stream.
    async fn try_once(
        &self,
        url: &str,
        headers: &HeaderMap,
        body: Bytes,
        request: &ModelRequest,
        sink: &OutputSink,
        cancel: &CancellationToken,
    ) -> Result<ModelResponse, TryFailure> {
        let started = Instant::now();
        let try_deadline = match request.deadline {
            Some(deadline) => deadline.min(started + self.http.request_timeout),
            None => started + self.http.request_timeout,
        };
        let clock = Clock {
            stall: self.http.stall_timeout,
            request_timeout: self.http.request_timeout,
            try_deadline,
        };
        let send = self
            .client
            .post(url)
            .headers(headers.clone())
            .body(body)
            .send();
        let response = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(ProviderError::Canceled.into()),
            sent = tokio::time::timeout_at(clock.next_wait(), send) => match sent {
                Err(_) => return Err(clock.elapsed("waiting for the response").into()),
                Ok(Err(error)) => return Err(transport_error(&error).into()),
                Ok(Ok(response)) => response,
            },
        };
        let status = response.status();
        let vendor_request_id = ["request-id", "x-request-id"]
            .iter()
            .find_map(|name| response.headers().get(*name))
            .and_then(|value| value.to_str().ok())
            .and_then(clean_request_id);
        if !status.is_success() {
            let wait = retry_after(response.headers(), chrono::Utc::now());
            let body = read_capped(response, MAX_ERROR_BODY_BYTES, &clock, cancel).await?;
            let mut error = self.wire.error(status, &body);
            if let ProviderError::Unavailable { retry_after, .. } = &mut error {
                *retry_after = retry_after.or(wait);
            }
            tracing::debug!(
                provider = %self.provider,
                %status,
                vendor_request_id = vendor_request_id.as_deref().unwrap_or(""),
                "vendor refused the call"
            );
            return Err(error.into());
        }

        let mut received = 0usize;
        let bytes = futures::stream::try_unfold(response, move |mut response| async move {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    received = received.saturating_add(chunk.len());
                    if received > MAX_STREAM_BYTES {
                        return Err(BodyError::TooLarge);
                    }
                    Ok(Some((chunk, response)))
                }
                Ok(None) => Ok(None),
                Err(error) => Err(BodyError::Http(error)),
            }
        });
        let mut events = std::pin::pin!(SseByteStream::new(bytes));
        let mut decoder = self.wire.decoder();
        let mut text = String::new();
        let streamed = |error: ProviderError, text: &String| TryFailure {
            error,
            streamed: !text.is_empty(),
        };
        loop {
            let next = tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(streamed(ProviderError::Canceled, &text)),
                next = tokio::time::timeout_at(clock.next_wait(), events.next()) => next,
            };
            let event = match next {
                Err(_) => return Err(streamed(clock.elapsed("streaming"), &text)),
                Ok(None) => break,
                Ok(Some(Err(error))) => return Err(streamed(stream_error(&error), &text)),
                Ok(Some(Ok(event))) => event,
            };
            if event.data.is_none() {
                continue; // a block of only an id or a retry hint
            }
            let decoded = decoder
                .event(&event)
                .map_err(|error| streamed(error, &text))?;
            if let Some(piece) = decoded.text.filter(|piece| !piece.is_empty()) {
                if text.len().saturating_add(piece.len()) > MAX_OUTPUT_BYTES {
                    let error = ProviderError::rejected(
                        Rejection::OutputTooLarge,
                        format!("the answer passed {MAX_OUTPUT_BYTES} bytes"),
                    );
                    return Err(streamed(error, &text));
                }
                text.push_str(&piece);
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return Err(streamed(ProviderError::Canceled, &text)),
                    sent = sink.send(piece) => if sent.is_err() {
                        return Err(streamed(ProviderError::Canceled, &text));
                    },
                }
            }
            if decoded.done {
                break;
            }
        }
        let finished = decoder.finish().map_err(|error| streamed(error, &text))?;
        Ok(self.response(request, text, finished, vendor_request_id))
    }

    /// The finished call, priced.
    fn response(
        &self,
        request: &ModelRequest,
        text: String,
        finished: Finished,
        vendor_request_id: Option<String>,
    ) -> ModelResponse {
        let model = finished.model.unwrap_or_else(|| request.model.clone());
        let mut usage = finished.usage;
        if !finished.usage_reported {
            tracing::warn!(
                provider = %self.provider,
                model = %request.model,
                "the stream carried no usage; the call is recorded with no tokens and no cost"
            );
            usage.unpriced = true;
            return ModelResponse {
                text,
                finish_reason: finished.finish_reason,
                model,
                usage,
                vendor_request_id: vendor_request_id
                    .or_else(|| finished.response_id.as_deref().and_then(clean_request_id)),
            };
        }
        let price = self
            .prices
            .get(self.provider, &request.model)
            .or_else(|| self.prices.get(self.provider, &model));
        match price.map(|price| cost_micros(price, &usage)) {
            Some(Some(cost)) => usage.cost_micros = cost,
            Some(None) => {
                tracing::warn!(provider = %self.provider, model = %request.model, "model call cost overflowed; recorded as 0");
                usage.unpriced = true;
            }
            None => {
                tracing::warn!(
                    provider = %self.provider,
                    model = %request.model,
                    "no price for this model; its cost is recorded as 0 (set AGENTPLANE_PRICES_FILE)"
                );
                usage.unpriced = true;
            }
        }
        ModelResponse {
            text,
            finish_reason: finished.finish_reason,
            model,
            usage,
            vendor_request_id: vendor_request_id
                .or_else(|| finished.response_id.as_deref().and_then(clean_request_id)),
        }
    }
}

impl<W: WireFormat> ModelProvider for HttpProvider<W> {
    fn generate(
        &self,
        request: ModelRequest,
        sink: OutputSink,
        cancel: CancellationToken,
    ) -> ModelFuture<'_> {
        Box::pin(self.run(request, sink, cancel))
    }
}

/// The timeouts of one try.
struct Clock {
    stall: Duration,
    request_timeout: Duration,
    try_deadline: Instant,
}

impl Clock {
    /// When the current wait for the network must end.
    fn next_wait(&self) -> Instant {
        (Instant::now() + self.stall).min(self.try_deadline)
    }

    /// The error of a wait that ran out while `doing`.
    fn elapsed(&self, doing: &str) -> ProviderError {
        if Instant::now() >= self.try_deadline {
            ProviderError::unavailable(
                Unavailability::Timeout,
                format!(
                    "the call ran out of time while {doing} (request timeout {}s, or the \
                     attempt's deadline)",
                    self.request_timeout.as_secs()
                ),
            )
        } else {
            ProviderError::unavailable(
                Unavailability::Stalled,
                format!(
                    "nothing was received for {}s while {doing}",
                    self.stall.as_secs_f32()
                ),
            )
        }
    }
}

/// Reads at most `limit` bytes of an error body (the rest is dropped with the connection).
async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
    clock: &Clock,
    cancel: &CancellationToken,
) -> Result<Vec<u8>, ProviderError> {
    let mut body = Vec::new();
    while body.len() < limit {
        let chunk = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(ProviderError::Canceled),
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

/// The error of a request that got no response.
fn transport_error(error: &reqwest::Error) -> ProviderError {
    let reason = if error.is_timeout() {
        Unavailability::Timeout
    } else {
        Unavailability::Network
    };
    ProviderError::unavailable(reason, describe_chain(error))
}

/// The error of a stream that could not be read or decoded.
fn stream_error(error: &sse_stream::Error) -> ProviderError {
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

/// `id` if it is a plausible request id: visible ASCII, at most 200 characters.
fn clean_request_id(id: &str) -> Option<String> {
    let id = id.trim();
    (!id.is_empty() && id.len() <= MAX_REQUEST_ID_CHARS && id.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| id.to_owned())
}

/// `error` with the API key cut out of its message and the message cut to a readable length;
/// an authentication failure keeps none of the vendor's words (vendors quote masked keys).
fn scrub_error(error: ProviderError, key: Option<&SecretString>) -> ProviderError {
    let clean = |message: String| scrub(&message, key);
    match error {
        ProviderError::Canceled => ProviderError::Canceled,
        // Vendors quote (masked) keys in these: say only what happened.
        ProviderError::Rejected {
            reason: Rejection::Authentication,
            ..
        } => ProviderError::rejected(
            Rejection::Authentication,
            "the vendor refused the api key configured on this worker",
        ),
        ProviderError::Rejected { reason, message } => ProviderError::Rejected {
            reason,
            message: clean(message),
        },
        ProviderError::Unavailable {
            reason,
            message,
            retry_after,
        } => ProviderError::Unavailable {
            reason,
            message: clean(message),
            retry_after,
        },
    }
}

/// `message` without `key` (nor any run of its 8+ leading or trailing characters, as in a
/// masked key such as `sk-proj-****abcd`), at most [`MAX_MESSAGE_CHARS`] characters.
pub(super) fn scrub(message: &str, key: Option<&SecretString>) -> String {
    let mut text = message.to_owned();
    if let Some(key) = key
        .map(ExposeSecret::expose_secret)
        .filter(|k| !k.is_empty())
    {
        text = text.replace(key, "[redacted]");
        let chars: Vec<char> = key.chars().collect();
        if chars.len() >= 16 {
            let head: String = chars[..8].iter().collect();
            let tail: String = chars[chars.len() - 8..].iter().collect();
            text = text
                .replace(&head, "[redacted]")
                .replace(&tail, "[redacted]");
        }
    }
    if text.chars().count() > MAX_MESSAGE_CHARS {
        text = text.chars().take(MAX_MESSAGE_CHARS).collect::<String>() + "…";
    }
    text
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures::FutureExt as _;
    use proptest::prelude::*;

    use super::*;

    /// Every vendor's decoder.
    fn decoders() -> Vec<Box<dyn StreamDecoder>> {
        vec![
            super::super::anthropic::Anthropic.decoder(),
            super::super::openai::OpenAi::official().decoder(),
            super::super::gemini::Gemini.decoder(),
        ]
    }

    /// Feeds `bytes`, cut into `chunk`-byte pieces, through the SSE parser and `decoder` as
    /// the engine does; the text it produced and how it ended.
    fn decode(
        bytes: &[u8],
        chunk: usize,
        mut decoder: Box<dyn StreamDecoder>,
    ) -> (String, Result<Finished, ProviderError>) {
        let chunks: Vec<Result<Bytes, Infallible>> = bytes
            .chunks(chunk.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let mut events = std::pin::pin!(SseByteStream::new(futures::stream::iter(chunks)));
        let mut text = String::new();
        loop {
            let next = events
                .next()
                .now_or_never()
                .expect("an in-memory stream is ready");
            let event = match next {
                None => break,
                Some(Err(error)) => return (text, Err(stream_error(&error))),
                Some(Ok(event)) => event,
            };
            if event.data.is_none() {
                continue;
            }
            match decoder.event(&event) {
                Err(error) => return (text, Err(error)),
                Ok(decoded) => {
                    text.push_str(decoded.text.as_deref().unwrap_or_default());
                    if decoded.done {
                        break;
                    }
                }
            }
        }
        (text, decoder.finish())
    }

    const OPENAI_STREAM: &str = "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hé\"},\"finish_reason\":null}]}\r\n\r\n: ping\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"llo ✓\"},\"finish_reason\":\"stop\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";

    proptest! {
        /// Bytes from the network never panic a decoder, however they are cut.
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            chunk in 1usize..64,
        ) {
            for decoder in decoders() {
                let _ = decode(&bytes, chunk, decoder);
            }
        }

        /// Event-shaped noise (valid SSE, arbitrary JSON-ish data) never panics either.
        #[test]
        fn arbitrary_events_never_panic(
            datas in proptest::collection::vec("[ -~]{0,80}", 0..12),
            chunk in 1usize..64,
        ) {
            let text: String = datas.iter().map(|d| format!("event: x\ndata: {d}\n\n")).collect();
            for decoder in decoders() {
                let _ = decode(text.as_bytes(), chunk, decoder);
            }
        }

        /// However a stream is cut (inside lines, inside UTF-8 characters), it decodes alike.
        #[test]
        fn splitting_a_stream_anywhere_changes_nothing(chunk in 1usize..200) {
            let (text, finished) =
                decode(OPENAI_STREAM.as_bytes(), chunk, super::super::openai::OpenAi::official().decoder());
            prop_assert_eq!(text, "Héllo ✓");
            let finished = finished.expect("a complete stream");
            prop_assert_eq!(finished.usage.input_tokens, 3);
            prop_assert_eq!(finished.finish_reason, FinishReason::Stop);
        }
    }

    #[test]
    fn statuses_map_to_the_documented_kinds() {
        let code = |status: u16| {
            by_status(
                StatusCode::from_u16(status).expect("a status"),
                String::new(),
            )
            .code()
        };
        assert_eq!(code(400), "provider_invalid_request");
        assert_eq!(code(401), "provider_authentication_failed");
        assert_eq!(code(403), "provider_permission_denied");
        assert_eq!(code(404), "provider_model_not_found");
        assert_eq!(code(408), "provider_timeout");
        assert_eq!(code(429), "provider_rate_limited");
        assert_eq!(code(500), "provider_server_error");
        assert_eq!(code(503), "provider_overloaded");
        assert_eq!(code(529), "provider_overloaded");
        assert_eq!(code(302), "provider_unexpected_response");
        for retryable in [408, 409, 429, 500, 502, 503, 504, 529] {
            let status = StatusCode::from_u16(retryable).expect("a status");
            assert!(
                by_status(status, String::new()).is_retryable(),
                "{retryable}"
            );
        }
        for permanent in [400, 401, 403, 404, 413, 422] {
            let status = StatusCode::from_u16(permanent).expect("a status");
            assert!(
                !by_status(status, String::new()).is_retryable(),
                "{permanent}"
            );
        }
    }

    #[test]
    fn scrubbing_removes_keys_and_their_masked_forms() {
        let key = SecretString::from("sk-proj-abcdefgh12345678ZYXWVUTS");
        let message = "Incorrect API key provided: sk-proj-****VUTS and sk-proj-abcdefgh12345678ZYXWVUTS, also sk-proj-a…ZYXWVUTS";
        let clean = scrub(message, Some(&key));
        assert!(!clean.contains("abcdefgh12345678"), "{clean}");
        assert!(!clean.contains("ZYXWVUTS"), "{clean}");
        assert!(clean.starts_with("Incorrect API key provided"));
        let long = "x".repeat(5000);
        assert!(scrub(&long, None).chars().count() <= MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn request_ids_are_kept_only_when_plausible() {
        assert_eq!(clean_request_id(" req_123 ").as_deref(), Some("req_123"));
        assert_eq!(clean_request_id("two words"), None);
        assert_eq!(clean_request_id(&"x".repeat(201)), None);
        assert_eq!(clean_request_id(""), None);
    }
}
