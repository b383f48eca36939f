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
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use sse_stream::SseByteStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::prices::PriceTable;
use super::retry::retry_after;
use super::settings::{Endpoint, HttpSettings, ProviderSettings, SettingsError};
use super::{
    ModelFuture, ModelProvider, ModelRequest, ModelResponse, ModelUsage, OutputSink, Provider,
    ProviderError, Rejection, Unavailability,
};
use agentplane_core::limits::MAX_OUTPUT_BYTES;

mod answer;
mod failure;
mod scrub;
mod wire;

pub(super) use failure::stream_error;
use failure::{read_capped, transport_error};
use scrub::scrub_error;

pub(super) use wire::{
    Decoded, Finished, StreamDecoder, WireFormat, WireRequest, arguments_object, arguments_text,
    by_status, event_json, plain_header, raw_body_message, secret_header,
};

/// Largest response stream read (SSE framing costs far more bytes than the answer's text,
/// whose own limit is `MAX_OUTPUT_BYTES`).
pub(super) const MAX_STREAM_BYTES: usize = 64 * 1024 * 1024;
/// Largest error body read.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Longest vendor request id kept.
const MAX_REQUEST_ID_CHARS: usize = 200;

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
        // W3C trace context of the provider-call span, when traces are exported: a vendor or
        // gateway that traces (a self-hosted OpenAI-compatible server, a proxy) joins the
        // task's trace. It carries only random ids.
        if let Some(traceparent) =
            agentplane_telemetry::propagation::traceparent_of(&tracing::Span::current())
            && let Ok(value) = HeaderValue::from_str(&traceparent)
        {
            headers.insert("traceparent", value);
        }
        let body = Bytes::from(serde_json::to_vec(&wire.body).map_err(|error| {
            ProviderError::rejected(Rejection::InvalidRequest, error.to_string())
        })?);
        let mut retry = 0u32;
        // What failed tries that were retried had consumed: added to the final outcome's.
        let mut earlier_spend: Option<ModelUsage> = None;
        let with_earlier = |error: ProviderError, earlier: Option<ModelUsage>| match earlier {
            Some(usage) => error.with_spend(usage),
            None => error,
        };
        loop {
            let failure = match self
                .try_once(&url, &headers, body.clone(), request, sink, cancel)
                .await
            {
                Ok(mut response) => {
                    if let Some(earlier) = earlier_spend {
                        response.usage = earlier.plus(&response.usage);
                    }
                    return Ok(response);
                }
                Err(failure) => failure,
            };
            // Scrubbed before anything logs it.
            let error = scrub_error(failure.error, self.endpoint.api_key.as_ref());
            if error.is_canceled() {
                return Err(with_earlier(error, earlier_spend));
            }
            if !error.is_retryable() {
                return Err(with_earlier(error, earlier_spend));
            }
            if failure.streamed {
                tracing::warn!(
                    code = error.code(),
                    "model call failed after streaming output; the attempt fails"
                );
                return Err(with_earlier(error, earlier_spend));
            }
            retry = retry.saturating_add(1);
            let random = crate::backoff::random_u64();
            let Some(delay) = self.http.retry.delay(retry, error.retry_after(), random) else {
                return Err(with_earlier(error, earlier_spend));
            };
            if request
                .deadline
                .is_some_and(|deadline| Instant::now() + delay >= deadline)
            {
                return Err(with_earlier(error, earlier_spend));
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
            earlier_spend = match (earlier_spend, error.spent()) {
                (Some(earlier), Some(spent)) => Some(earlier.plus(&spent)),
                (earlier, spent) => earlier.or(spent),
            };
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    return Err(ProviderError::Canceled { spent: earlier_spend });
                }
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One HTTP request and its stream. A try that fails after the vendor reported usage
    /// carries that usage, priced, in its error's `spent`.
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
            () = cancel.cancelled() => return Err(ProviderError::Canceled { spent: None }.into()),
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

        let mut decoder = self.wire.decoder(&request.request_id);
        let mut text = String::new();
        let read = self
            .read_stream(response, &clock, decoder.as_mut(), &mut text, sink, cancel)
            .await;
        let outcome = match read {
            Ok(()) => {
                let reported = decoder.usage();
                decoder.finish().map_err(|error| (error, reported))
            }
            Err(error) => Err((error, decoder.usage())),
        };
        let finished = match outcome {
            Ok(finished) => finished,
            Err((error, reported)) => {
                let error = match reported.map(|usage| self.priced(request, None, usage)) {
                    Some(usage) => error.with_spend(usage),
                    None => error,
                };
                return Err(TryFailure {
                    error,
                    streamed: !text.is_empty(),
                });
            }
        };
        self.response(request, text, finished, vendor_request_id)
    }

    /// Reads the stream's events into `decoder`, sending text pieces to `sink` (and
    /// appending them to `text`), until the terminal event or the end of the body.
    async fn read_stream(
        &self,
        response: reqwest::Response,
        clock: &Clock,
        decoder: &mut dyn StreamDecoder,
        text: &mut String,
        sink: &OutputSink,
        cancel: &CancellationToken,
    ) -> Result<(), ProviderError> {
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
        loop {
            let next = tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(ProviderError::Canceled { spent: None }),
                next = tokio::time::timeout_at(clock.next_wait(), events.next()) => next,
            };
            let event = match next {
                Err(_) => return Err(clock.elapsed("streaming")),
                Ok(None) => return Ok(()),
                Ok(Some(Err(error))) => return Err(stream_error(&error)),
                Ok(Some(Ok(event))) => event,
            };
            if event.data.is_none() {
                continue; // a block of only an id or a retry hint
            }
            let decoded = decoder.event(&event)?;
            if let Some(piece) = decoded.text.filter(|piece| !piece.is_empty()) {
                if text.len().saturating_add(piece.len()) > MAX_OUTPUT_BYTES {
                    return Err(ProviderError::rejected(
                        Rejection::OutputTooLarge,
                        format!("the answer passed {MAX_OUTPUT_BYTES} bytes"),
                    ));
                }
                text.push_str(&piece);
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return Err(ProviderError::Canceled { spent: None }),
                    sent = sink.send(piece) => if sent.is_err() {
                        return Err(ProviderError::Canceled { spent: None });
                    },
                }
            }
            if decoded.done {
                return Ok(());
            }
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

/// `id` if it is a plausible request id: visible ASCII, at most 200 characters.
fn clean_request_id(id: &str) -> Option<String> {
    let id = id.trim();
    (!id.is_empty() && id.len() <= MAX_REQUEST_ID_CHARS && id.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| id.to_owned())
}

#[cfg(test)]
mod tests;
