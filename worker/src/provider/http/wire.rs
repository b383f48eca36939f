//! What a vendor adapter provides to the engine: how a request is written
//! ([`WireFormat::request`]), how its stream's events read ([`StreamDecoder`]) and how its
//! error bodies read ([`WireFormat::error`]), plus the helpers the adapters share.

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use sse_stream::Sse;

use crate::provider::settings::Endpoint;
use crate::provider::{
    FinishReason, ModelRequest, ModelUsage, ProviderError, Rejection, ToolCall, Unavailability,
};

/// One vendor request, before the engine adds content type, accept and idempotency headers.
#[derive(Debug)]
pub(in crate::provider) struct WireRequest {
    /// Appended to the endpoint's base URL (starts with `/`).
    pub(in crate::provider) path: String,
    /// Authentication and vendor headers (secrets marked sensitive).
    pub(in crate::provider) headers: HeaderMap,
    /// The JSON body.
    pub(in crate::provider) body: serde_json::Value,
}

/// What one event of the stream meant.
#[derive(Debug, Default, PartialEq, Eq)]
pub(in crate::provider) struct Decoded {
    /// Answer text the event added.
    pub(in crate::provider) text: Option<String>,
    /// The event was the stream's terminal event: stop reading.
    pub(in crate::provider) done: bool,
}

/// What a complete stream said beyond its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::provider) struct Finished {
    /// Why generation stopped.
    pub(in crate::provider) finish_reason: FinishReason,
    /// The model that answered, as the vendor names it.
    pub(in crate::provider) model: Option<String>,
    /// Token counts (the engine adds the cost).
    pub(in crate::provider) usage: ModelUsage,
    /// The stream carried usage; without it the call is recorded unpriced.
    pub(in crate::provider) usage_reported: bool,
    /// The vendor's id of the response, from the body.
    pub(in crate::provider) response_id: Option<String>,
    /// The tools the model called, in order (then `finish_reason` is `ToolCalls`).
    pub(in crate::provider) tool_calls: Vec<ToolCall>,
}

/// Reads one response stream, event by event.
pub(in crate::provider) trait StreamDecoder: Send {
    /// Decodes one event; an `Err` ends the call (an error event, an undecodable event).
    fn event(&mut self, event: &Sse) -> Result<Decoded, ProviderError>;
    /// Called once the stream ended (after its terminal event, or at end of body): the
    /// result, or why the stream is incomplete.
    fn finish(self: Box<Self>) -> Result<Finished, ProviderError>;
    /// The token counts the stream reported so far, if it reported any: what a call that
    /// fails now has consumed (the engine prices it).
    fn usage(&self) -> Option<ModelUsage>;
}

/// How one vendor's API is written and read.
pub(in crate::provider) trait WireFormat:
    Send + Sync + std::fmt::Debug + 'static
{
    /// The request for `request`, authenticated with `endpoint`'s key.
    fn request(
        &self,
        request: &ModelRequest,
        endpoint: &Endpoint,
    ) -> Result<WireRequest, ProviderError>;
    /// A decoder for one response stream of the request whose id is `request_id` (from
    /// which it makes up the ids of tool calls the vendor gives none).
    fn decoder(&self, request_id: &str) -> Box<dyn StreamDecoder>;
    /// The error an unsuccessful response means, from its status and body (the vendor's JSON
    /// error shape); the engine adds `retry-after` from the headers when the body has none.
    fn error(&self, status: StatusCode, body: &[u8]) -> ProviderError;
}

/// A header value holding a secret: never printed by `Debug`.
pub(in crate::provider) fn secret_header(value: &str) -> Result<HeaderValue, ProviderError> {
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
pub(in crate::provider) fn plain_header(value: &str) -> Result<HeaderValue, ProviderError> {
    HeaderValue::from_str(value).map_err(|_| {
        ProviderError::rejected(
            Rejection::InvalidRequest,
            format!("{value:?} cannot travel in a header"),
        )
    })
}

/// The error a response status means when the body says nothing more specific.
pub(in crate::provider) fn by_status(status: StatusCode, message: String) -> ProviderError {
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
pub(in crate::provider) fn raw_body_message(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        format!("http {status}")
    } else {
        format!("http {status}: {text}")
    }
}

/// A JSON body of an event, or a malformed-stream error naming the vendor.
pub(in crate::provider) fn event_json<T: serde::de::DeserializeOwned>(
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

/// A tool call's arguments as the JSON object a vendor wants in the history (Anthropic's
/// `input`, Gemini's `args`); empty text is no arguments. Arguments that are not a JSON
/// object cannot be sent back, so the request is refused for good.
pub(in crate::provider) fn arguments_object(
    call: &ToolCall,
) -> Result<serde_json::Map<String, serde_json::Value>, ProviderError> {
    if call.arguments.trim().is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_str(&call.arguments) {
        Ok(serde_json::Value::Object(arguments)) => Ok(arguments),
        _ => Err(ProviderError::rejected(
            Rejection::InvalidRequest,
            format!(
                "the arguments of tool call {:?} ({}) are not a json object",
                call.id, call.name
            ),
        )),
    }
}

/// Arguments text as a decoder reports it: as the model wrote it, except that no text at all
/// (a call without arguments) reads as the empty object.
pub(in crate::provider) fn arguments_text(streamed: String) -> String {
    if streamed.trim().is_empty() {
        "{}".to_owned()
    } else {
        streamed
    }
}
