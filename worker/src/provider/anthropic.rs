//! Anthropic's Messages API: `POST /v1/messages` with `stream: true`.
//!
//! Request: the system prompt is the top-level `system`, the conversation is `messages`
//! (`user`/`assistant`), `max_tokens` is required. Stream: `message_start` (id, model, input
//! usage), `content_block_start`/`content_block_delta` (`text_delta`)/`content_block_stop`,
//! `message_delta` (stop reason, cumulative usage), `message_stop` (the terminal event),
//! `ping`, and `error`, which can arrive inside a 200 stream (e.g. `overloaded_error`) and is
//! a failure, never an answer. Errors: `{"type":"error","error":{"type","message"}}`.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sse_stream::Sse;

use super::http::{
    Decoded, Finished, StreamDecoder, WireFormat, WireRequest, by_status, event_json,
    raw_body_message, secret_header,
};
use super::settings::Endpoint;
use super::{
    ChatRole, FinishReason, ModelRequest, ModelUsage, ProviderError, Rejection, Unavailability,
};

/// The API version this adapter speaks.
const API_VERSION: &str = "2023-06-01";

/// Anthropic's wire format.
#[derive(Debug, Clone, Copy)]
pub(super) struct Anthropic;

impl WireFormat for Anthropic {
    fn request(
        &self,
        request: &ModelRequest,
        endpoint: &Endpoint,
    ) -> Result<WireRequest, ProviderError> {
        let mut headers = HeaderMap::new();
        if let Some(key) = &endpoint.api_key {
            headers.insert("x-api-key", secret_header(key.expose_secret())?);
        }
        headers.insert(
            "anthropic-version",
            reqwest::header::HeaderValue::from_static(API_VERSION),
        );
        Ok(WireRequest {
            path: "/v1/messages".to_owned(),
            headers,
            body: body(request),
        })
    }

    fn decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(Decoder::default())
    }

    fn error(&self, status: StatusCode, body: &[u8]) -> ProviderError {
        match serde_json::from_slice::<ErrorEnvelope>(body) {
            Ok(envelope) => classify(Some(status), &envelope.error),
            Err(_) => by_status(status, raw_body_message(status, body)),
        }
    }
}

/// The JSON body of a request.
fn body(request: &ModelRequest) -> Value {
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|message| {
            let role = match message.role {
                ChatRole::User | ChatRole::Tool => "user",
                ChatRole::Assistant => "assistant",
            };
            json!({ "role": role, "content": message.content })
        })
        .collect();
    let generation = &request.generation;
    let mut body = Map::new();
    body.insert("model".into(), json!(request.model));
    body.insert(
        "max_tokens".into(),
        json!(generation.effective_max_output_tokens()),
    );
    body.insert("stream".into(), json!(true));
    if let Some(system) = &request.system {
        body.insert("system".into(), json!(system));
    }
    body.insert("messages".into(), Value::Array(messages));
    if let Some(temperature) = generation.temperature {
        body.insert("temperature".into(), json!(temperature));
    }
    if let Some(top_p) = generation.top_p {
        body.insert("top_p".into(), json!(top_p));
    }
    if !generation.stop_sequences.is_empty() {
        body.insert("stop_sequences".into(), json!(generation.stop_sequences));
    }
    Value::Object(body)
}

#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

/// The error an Anthropic error object means (from a response body or an `error` event).
fn classify(status: Option<StatusCode>, error: &ErrorBody) -> ProviderError {
    let message = format!("{}: {}", error.kind, error.message);
    let rejected = |reason| ProviderError::rejected(reason, message.clone());
    let unavailable = |reason| ProviderError::unavailable(reason, message.clone());
    match error.kind.as_str() {
        "invalid_request_error" if error.message.contains("prompt is too long") => {
            rejected(Rejection::ContextTooLong)
        }
        "invalid_request_error" | "request_too_large" => rejected(Rejection::InvalidRequest),
        "authentication_error" => rejected(Rejection::Authentication),
        "permission_error" | "billing_error" => rejected(Rejection::PermissionDenied),
        "not_found_error" => rejected(Rejection::NotFound),
        "rate_limit_error" => unavailable(Unavailability::RateLimited),
        "overloaded_error" => unavailable(Unavailability::Overloaded),
        "api_error" => unavailable(Unavailability::ServerError),
        "timeout_error" => unavailable(Unavailability::Timeout),
        _ => match status {
            Some(status) => by_status(status, message),
            // An unknown error inside a stream: the vendor failed mid-answer.
            None => unavailable(Unavailability::ServerError),
        },
    }
}

/// What a stream said so far.
#[derive(Debug, Default)]
struct Decoder {
    id: Option<String>,
    model: Option<String>,
    usage: Usage,
    usage_reported: bool,
    stop_reason: Option<String>,
    stopped: bool,
}

/// Anthropic's usage object; `message_delta` repeats it cumulatively, so later values win.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct Usage {
    #[serde(default)]
    input_tokens: Option<i64>,
    #[serde(default)]
    output_tokens: Option<i64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<i64>,
    #[serde(default)]
    cache_read_input_tokens: Option<i64>,
}

impl Usage {
    fn update(&mut self, newer: &Usage) {
        self.input_tokens = newer.input_tokens.or(self.input_tokens);
        self.output_tokens = newer.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = newer
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = newer
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    /// Normalised: Anthropic's `input_tokens` excludes the cached parts, ours includes them.
    fn normalised(&self) -> ModelUsage {
        let uncached = self.input_tokens.unwrap_or(0).max(0);
        let write = self.cache_creation_input_tokens.unwrap_or(0).max(0);
        let read = self.cache_read_input_tokens.unwrap_or(0).max(0);
        ModelUsage {
            input_tokens: uncached.saturating_add(write).saturating_add(read),
            output_tokens: self.output_tokens.unwrap_or(0).max(0),
            cache_read_input_tokens: read,
            cache_write_input_tokens: write,
            ..ModelUsage::default()
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: MessageStart,
    },
    ContentBlockStart {
        content_block: ContentBlock,
    },
    ContentBlockDelta {
        delta: ContentBlock,
    },
    MessageDelta {
        delta: MessageDelta,
        #[serde(default)]
        usage: Option<Usage>,
    },
    MessageStop,
    Error {
        error: ErrorBody,
    },
    /// `ping`, `content_block_stop`, and event types added later.
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct MessageStart {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
}

/// A content block at its start, or a delta of one: only text counts toward the answer
/// (thinking and signature deltas do not).
#[derive(Debug, Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MessageDelta {
    #[serde(default)]
    stop_reason: Option<String>,
}

impl StreamDecoder for Decoder {
    fn event(&mut self, event: &Sse) -> Result<Decoded, ProviderError> {
        let data = event.data.as_deref().unwrap_or_default();
        match event_json::<Event>("anthropic", data)? {
            Event::MessageStart { message } => {
                self.id = message.id;
                self.model = message.model;
                if let Some(usage) = message.usage {
                    self.usage.update(&usage);
                    self.usage_reported = true;
                }
                Ok(Decoded::default())
            }
            Event::ContentBlockStart {
                content_block: block,
            }
            | Event::ContentBlockDelta { delta: block } => Ok(Decoded {
                text: matches!(block.kind.as_str(), "text" | "text_delta")
                    .then_some(block.text)
                    .flatten()
                    .filter(|text| !text.is_empty()),
                done: false,
            }),
            Event::MessageDelta { delta, usage } => {
                if delta.stop_reason.is_some() {
                    self.stop_reason = delta.stop_reason;
                }
                if let Some(usage) = usage {
                    self.usage.update(&usage);
                    self.usage_reported = true;
                }
                Ok(Decoded::default())
            }
            Event::MessageStop => {
                self.stopped = true;
                Ok(Decoded {
                    text: None,
                    done: true,
                })
            }
            Event::Error { error } => Err(classify(None, &error)),
            Event::Other => Ok(Decoded::default()),
        }
    }

    fn finish(self: Box<Self>) -> Result<Finished, ProviderError> {
        if !self.stopped {
            return Err(ProviderError::unavailable(
                Unavailability::Truncated,
                "the anthropic stream ended before message_stop",
            ));
        }
        let finish_reason = match self.stop_reason.as_deref() {
            Some("end_turn" | "stop_sequence") => FinishReason::Stop,
            Some("max_tokens" | "model_context_window_exceeded") => FinishReason::MaxTokens,
            Some("refusal") => {
                return Err(ProviderError::rejected(
                    Rejection::ContentRefused,
                    "the model refused to answer (stop_reason refusal)",
                ));
            }
            other => {
                return Err(ProviderError::rejected(
                    Rejection::UnexpectedResponse,
                    format!("unsupported stop_reason {other:?}"),
                ));
            }
        };
        Ok(Finished {
            finish_reason,
            model: self.model,
            usage: self.usage.normalised(),
            usage_reported: self.usage_reported,
            response_id: self.id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{ChatMessage, Generation};

    fn sse(data: &str) -> Sse {
        Sse {
            data: Some(data.to_owned()),
            ..Sse::default()
        }
    }

    #[test]
    fn the_system_prompt_is_top_level_and_generation_maps_to_its_fields() {
        let request = ModelRequest {
            request_id: "t-1-0".to_owned(),
            model: "claude-sonnet-4-5".to_owned(),
            system: Some("Be brief.".to_owned()),
            messages: vec![
                ChatMessage::text(ChatRole::User, "hi".to_owned()),
                ChatMessage::text(ChatRole::Assistant, "hello".to_owned()),
            ],
            tools: Vec::new(),
            generation: Generation {
                temperature: Some(0.5),
                top_p: None,
                max_output_tokens: Some(100),
                stop_sequences: vec!["END".to_owned()],
            },
            deadline: None,
        };
        assert_eq!(
            body(&request),
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 100,
                "stream": true,
                "system": "Be brief.",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"}
                ],
                "temperature": 0.5,
                "stop_sequences": ["END"]
            })
        );
    }

    #[test]
    fn an_error_event_inside_the_stream_is_a_retryable_failure() {
        let mut decoder = Decoder::default();
        let error = decoder
            .event(&sse(
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ))
            .expect_err("an error event");
        assert_eq!(error.code(), "provider_overloaded");
        assert!(error.is_retryable());
    }

    #[test]
    fn usage_counts_cached_tokens_into_the_prompt_and_later_values_win() {
        let mut decoder = Box::new(Decoder::default());
        for data in [
            r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-x","usage":{"input_tokens":10,"cache_creation_input_tokens":20,"cache_read_input_tokens":30,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":7}}"#,
        ] {
            let decoded = decoder.event(&sse(data)).expect("valid");
            assert_eq!(decoded.text, None);
        }
        assert!(
            decoder
                .event(&sse(r#"{"type":"message_stop"}"#))
                .expect("valid")
                .done
        );
        let finished = decoder.finish().expect("complete");
        assert_eq!(finished.finish_reason, FinishReason::MaxTokens);
        assert_eq!(finished.response_id.as_deref(), Some("msg_1"));
        assert_eq!(
            (
                finished.usage.input_tokens,
                finished.usage.cache_write_input_tokens,
                finished.usage.cache_read_input_tokens,
                finished.usage.output_tokens,
            ),
            (60, 20, 30, 7)
        );
    }

    #[test]
    fn refusals_and_prompts_too_long_are_permanent() {
        let mut decoder = Box::new(Decoder::default());
        decoder
            .event(&sse(
                r#"{"type":"message_delta","delta":{"stop_reason":"refusal"}}"#,
            ))
            .expect("valid");
        decoder
            .event(&sse(r#"{"type":"message_stop"}"#))
            .expect("valid");
        assert_eq!(
            decoder.finish().expect_err("refused").code(),
            "provider_content_refused"
        );
        let body = br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 300000 tokens > 200000 maximum"}}"#;
        let error = Anthropic.error(StatusCode::BAD_REQUEST, body);
        assert_eq!(error.code(), "provider_context_too_long");
    }
}
