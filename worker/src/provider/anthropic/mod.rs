//! Anthropic's Messages API: `POST /v1/messages` with `stream: true`.
//!
//! Request: the system prompt is the top-level `system`, the conversation is `messages`
//! (`user`/`assistant`), `max_tokens` is required. Tools are `tools: [{name, description,
//! input_schema}]`; an assistant turn's calls are `tool_use` content blocks (`id`, `name`,
//! `input` object) and their outputs go back in the next `user` turn as `tool_result` blocks
//! (`tool_use_id`, `content`, `is_error`). Stream: `message_start` (id, model, input usage),
//! `content_block_start` (a `text` block, or a `tool_use` block with its id and name) /
//! `content_block_delta` (`text_delta`, or `input_json_delta` fragments of the tool input's
//! JSON, by block index) / `content_block_stop`, `message_delta` (stop reason, `tool_use`
//! when the model called tools; cumulative usage), `message_stop` (the terminal event),
//! `ping`, and `error`, which can arrive inside a 200 stream (e.g. `overloaded_error`) and is
//! a failure, never an answer. Errors: `{"type":"error","error":{"type","message"}}`.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sse_stream::Sse;

use super::http::{
    Decoded, Finished, StreamDecoder, WireFormat, WireRequest, arguments_object, arguments_text,
    by_status, event_json, raw_body_message, secret_header,
};
use super::settings::Endpoint;
use super::{
    ChatMessage, ChatRole, FinishReason, ModelRequest, ModelUsage, ProviderError, Rejection,
    ToolCall, Unavailability,
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
            body: body(request)?,
        })
    }

    fn decoder(&self, _request_id: &str) -> Box<dyn StreamDecoder> {
        // Anthropic names every tool_use block.
        Box::new(Decoder::default())
    }

    fn error(&self, status: StatusCode, body: &[u8]) -> ProviderError {
        match serde_json::from_slice::<ErrorEnvelope>(body) {
            Ok(envelope) => classify(Some(status), &envelope.error),
            Err(_) => by_status(status, raw_body_message(status, body)),
        }
    }
}

/// One message of the conversation: plain text as a string, tool calls and outputs as
/// content blocks.
fn message(message: &ChatMessage) -> Result<Value, ProviderError> {
    Ok(match message.role {
        ChatRole::User => json!({ "role": "user", "content": message.content }),
        ChatRole::Assistant if message.tool_calls.is_empty() => {
            json!({ "role": "assistant", "content": message.content })
        }
        ChatRole::Assistant => {
            let mut blocks = Vec::with_capacity(message.tool_calls.len() + 1);
            if !message.content.is_empty() {
                blocks.push(json!({ "type": "text", "text": message.content }));
            }
            for call in &message.tool_calls {
                blocks.push(json!({
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": arguments_object(call)?,
                }));
            }
            json!({ "role": "assistant", "content": blocks })
        }
        // The outputs answer the previous assistant turn from a user turn; tool_result blocks
        // come first in it.
        ChatRole::Tool => {
            let mut blocks: Vec<Value> = message
                .tool_outputs
                .iter()
                .map(|output| {
                    let mut block = json!({
                        "type": "tool_result",
                        "tool_use_id": output.call_id,
                        "content": output.output,
                    });
                    if output.is_error {
                        block["is_error"] = json!(true);
                    }
                    block
                })
                .collect();
            if !message.content.is_empty() {
                blocks.push(json!({ "type": "text", "text": message.content }));
            }
            json!({ "role": "user", "content": blocks })
        }
    })
}

/// The JSON body of a request.
fn body(request: &ModelRequest) -> Result<Value, ProviderError> {
    let messages = request
        .messages
        .iter()
        .map(message)
        .collect::<Result<Vec<Value>, ProviderError>>()?;
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
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                let mut spec = json!({ "name": tool.name, "input_schema": tool.parameters });
                if !tool.description.is_empty() {
                    spec["description"] = json!(tool.description);
                }
                spec
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    Ok(Value::Object(body))
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
    /// The tool_use blocks, in order, by content block index.
    tool_uses: Vec<ToolUse>,
}

/// A tool_use block being streamed.
#[derive(Debug)]
struct ToolUse {
    index: Option<u64>,
    id: String,
    name: String,
    /// The input as the block started (`{}` when streamed in deltas), serialized.
    initial_input: String,
    /// The concatenated `input_json_delta` fragments.
    partial_json: String,
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
        #[serde(default)]
        index: Option<u64>,
        content_block: ContentBlock,
    },
    ContentBlockDelta {
        #[serde(default)]
        index: Option<u64>,
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

/// A content block at its start, or a delta of one: text counts toward the answer (thinking
/// and signature deltas do not); a `tool_use` block and its `input_json_delta` fragments
/// make a tool call.
#[derive(Debug, Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    partial_json: Option<String>,
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
                index,
                content_block: block,
            } if block.kind == "tool_use" => {
                let initial_input = match block.input {
                    Some(Value::Object(input)) if !input.is_empty() => {
                        Value::Object(input).to_string()
                    }
                    _ => String::new(),
                };
                self.tool_uses.push(ToolUse {
                    index,
                    id: block.id.unwrap_or_default(),
                    name: block.name.unwrap_or_default(),
                    initial_input,
                    partial_json: String::new(),
                });
                Ok(Decoded::default())
            }
            Event::ContentBlockDelta { index, delta } if delta.kind == "input_json_delta" => {
                let tool_use = self
                    .tool_uses
                    .iter_mut()
                    .rev()
                    .find(|tool_use| tool_use.index == index)
                    .ok_or_else(|| {
                        ProviderError::unavailable(
                            Unavailability::MalformedStream,
                            format!("an input_json_delta of the anthropic stream names no tool_use block (index {index:?})"),
                        )
                    })?;
                tool_use
                    .partial_json
                    .push_str(delta.partial_json.as_deref().unwrap_or_default());
                Ok(Decoded::default())
            }
            Event::ContentBlockStart {
                content_block: block,
                ..
            }
            | Event::ContentBlockDelta { delta: block, .. } => Ok(Decoded {
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
            Some("tool_use") => FinishReason::ToolCalls,
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
        let tool_calls = self
            .tool_uses
            .into_iter()
            .map(|tool_use| ToolCall {
                id: tool_use.id,
                name: tool_use.name,
                arguments: arguments_text(if tool_use.partial_json.is_empty() {
                    tool_use.initial_input
                } else {
                    tool_use.partial_json
                }),
            })
            .collect();
        Ok(Finished {
            finish_reason,
            model: self.model,
            usage: self.usage.normalised(),
            usage_reported: self.usage_reported,
            response_id: self.id,
            tool_calls,
        })
    }

    fn usage(&self) -> Option<ModelUsage> {
        self.usage_reported.then(|| self.usage.normalised())
    }
}

#[cfg(test)]
mod tests;
