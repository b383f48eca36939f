//! Google's Gemini API: `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`, the key
//! in the `x-goog-api-key` header (never in the URL, where proxies and logs would keep it).
//!
//! Request: `contents` of `user`/`model` turns made of `parts`, the system prompt as
//! `systemInstruction`, sampling in `generationConfig`. Tools are `tools:
//! [{functionDeclarations: [{name, description, parametersJsonSchema}]}]` (the JSON Schema
//! field; `parameters` takes only an OpenAPI subset). A model turn's calls are `functionCall`
//! parts (`name`, `args` object, optional `id`); the outputs go back in the next turn, role
//! `user`, as `functionResponse` parts (`id`, `name`, `response: {"output": …}` or
//! `{"error": …}`). Stream: each event is a whole `GenerateContentResponse` (candidates with
//! text and `functionCall` parts, each call whole in one part, `usageMetadata`,
//! `modelVersion`, `responseId`); the last one carries `finishReason` (`STOP` after calls
//! too) and the stream then ends (there is no `[DONE]`). A blocked prompt answers
//! `promptFeedback.blockReason`. Errors: Google's
//! `{"error":{"code","message","status","details"}}`, with `RetryInfo.retryDelay` on 429.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sse_stream::Sse;

use super::http::{
    Decoded, Finished, StreamDecoder, WireFormat, WireRequest, arguments_object, by_status,
    event_json, raw_body_message, secret_header,
};
use super::retry::google_duration;
use super::settings::Endpoint;
use super::{
    ChatMessage, ChatRole, FinishReason, ModelRequest, ModelUsage, ProviderError, Rejection,
    ToolCall, Unavailability, made_up_tool_call_id,
};

/// Google's documented stand-in for a thought signature, for function calls replayed without
/// the signature the model gave them (`ToolCall` keeps none): Gemini 3 models refuse a
/// history whose function calls lack one. <https://ai.google.dev/gemini-api/docs/thought-signatures>
const SKIP_THOUGHT_SIGNATURE: &str = "skip_thought_signature_validator";

/// Gemini's wire format.
#[derive(Debug, Clone, Copy)]
pub(super) struct Gemini;

impl WireFormat for Gemini {
    fn request(
        &self,
        request: &ModelRequest,
        endpoint: &Endpoint,
    ) -> Result<WireRequest, ProviderError> {
        let model = request
            .model
            .strip_prefix("models/")
            .unwrap_or(&request.model);
        let path_safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if model.is_empty() || !model.chars().all(path_safe) {
            return Err(ProviderError::rejected(
                Rejection::InvalidRequest,
                format!("{model:?} is not a gemini model name (letters, digits, '.', '-', '_')"),
            ));
        }
        let mut headers = HeaderMap::new();
        if let Some(key) = &endpoint.api_key {
            headers.insert("x-goog-api-key", secret_header(key.expose_secret())?);
        }
        Ok(WireRequest {
            path: format!("/v1beta/models/{model}:streamGenerateContent?alt=sse"),
            headers,
            body: body(request, model)?,
        })
    }

    fn decoder(&self, request_id: &str) -> Box<dyn StreamDecoder> {
        Box::new(Decoder {
            request_id: request_id.to_owned(),
            ..Decoder::default()
        })
    }

    fn error(&self, status: StatusCode, body: &[u8]) -> ProviderError {
        // Usually an object; the JSON-array form of streaming answers wraps it in a list.
        let value: Option<Value> = serde_json::from_slice(body).ok();
        let error = value
            .as_ref()
            .map(|v| v.as_array().and_then(|a| a.first()).unwrap_or(v))
            .and_then(|v| v.get("error"))
            .and_then(|e| serde_json::from_value::<ErrorBody>(e.clone()).ok());
        match error {
            Some(error) => classify(Some(status), &error),
            None => by_status(status, raw_body_message(status, body)),
        }
    }
}

/// Whether `model` checks thought signatures on replayed function calls: every model after
/// the 1.x and 2.x families (an alias such as `gemini-flash-latest` may be one).
fn wants_thought_signatures(model: &str) -> bool {
    !["gemini-1.", "gemini-2.", "gemma-"]
        .iter()
        .any(|family| model.starts_with(family))
}

/// One turn of the conversation.
fn content(message: &ChatMessage, signed: bool) -> Result<Value, ProviderError> {
    Ok(match message.role {
        ChatRole::User => json!({ "role": "user", "parts": [{ "text": message.content }] }),
        ChatRole::Assistant if message.tool_calls.is_empty() => {
            json!({ "role": "model", "parts": [{ "text": message.content }] })
        }
        ChatRole::Assistant => {
            let mut parts = Vec::with_capacity(message.tool_calls.len() + 1);
            if !message.content.is_empty() {
                parts.push(json!({ "text": message.content }));
            }
            for (position, call) in message.tool_calls.iter().enumerate() {
                let mut part = json!({ "functionCall": {
                    "id": call.id,
                    "name": call.name,
                    "args": arguments_object(call)?,
                }});
                // The model signs the first call of a turn (of parallel calls).
                if signed && position == 0 {
                    part["thoughtSignature"] = json!(SKIP_THOUGHT_SIGNATURE);
                }
                parts.push(part);
            }
            json!({ "role": "model", "parts": parts })
        }
        ChatRole::Tool => {
            let mut parts: Vec<Value> = message
                .tool_outputs
                .iter()
                .map(|output| {
                    let key = if output.is_error { "error" } else { "output" };
                    json!({ "functionResponse": {
                        "id": output.call_id,
                        "name": output.name,
                        "response": { key: output.output },
                    }})
                })
                .collect();
            if !message.content.is_empty() {
                parts.push(json!({ "text": message.content }));
            }
            json!({ "role": "user", "parts": parts })
        }
    })
}

/// The JSON body of a request for `model` (its name without `models/`).
fn body(request: &ModelRequest, model: &str) -> Result<Value, ProviderError> {
    let signed = wants_thought_signatures(model);
    let contents = request
        .messages
        .iter()
        .map(|message| content(message, signed))
        .collect::<Result<Vec<Value>, ProviderError>>()?;
    let generation = &request.generation;
    let mut config = Map::new();
    config.insert(
        "maxOutputTokens".into(),
        json!(generation.effective_max_output_tokens()),
    );
    if let Some(temperature) = generation.temperature {
        config.insert("temperature".into(), json!(temperature));
    }
    if let Some(top_p) = generation.top_p {
        config.insert("topP".into(), json!(top_p));
    }
    if !generation.stop_sequences.is_empty() {
        config.insert("stopSequences".into(), json!(generation.stop_sequences));
    }
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if let Some(system) = &request.system {
        body.insert(
            "systemInstruction".into(),
            json!({ "parts": [{ "text": system }] }),
        );
    }
    body.insert("generationConfig".into(), Value::Object(config));
    if !request.tools.is_empty() {
        let declarations: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                let mut declaration =
                    json!({ "name": tool.name, "parametersJsonSchema": tool.parameters });
                if !tool.description.is_empty() {
                    declaration["description"] = json!(tool.description);
                }
                declaration
            })
            .collect();
        body.insert(
            "tools".into(),
            json!([{ "functionDeclarations": declarations }]),
        );
    }
    Ok(Value::Object(body))
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Value>,
}

impl ErrorBody {
    /// The `reason` of a `google.rpc.ErrorInfo` detail, e.g. `API_KEY_INVALID`.
    fn reason(&self) -> Option<&str> {
        self.details
            .iter()
            .find_map(|detail| detail.get("reason").and_then(Value::as_str))
    }

    /// The `retryDelay` of a `google.rpc.RetryInfo` detail.
    fn retry_delay(&self) -> Option<std::time::Duration> {
        self.details
            .iter()
            .find_map(|detail| detail.get("retryDelay").and_then(Value::as_str))
            .and_then(google_duration)
    }
}

/// The error a Google error object means (from a response body or a stream event).
fn classify(status: Option<StatusCode>, error: &ErrorBody) -> ProviderError {
    let message = format!("{}: {}", error.status, error.message);
    let rejected = |reason| ProviderError::rejected(reason, message.clone());
    let unavailable = |reason| ProviderError::Unavailable {
        reason,
        message: message.clone(),
        retry_after: error.retry_delay(),
        spent: None,
    };
    if error.reason() == Some("API_KEY_INVALID") {
        return rejected(Rejection::Authentication);
    }
    let lowercase = error.message.to_ascii_lowercase();
    match error.status.as_str() {
        "INVALID_ARGUMENT"
            if lowercase.contains("token count") || lowercase.contains("exceeds the maximum") =>
        {
            rejected(Rejection::ContextTooLong)
        }
        "INVALID_ARGUMENT" | "OUT_OF_RANGE" => rejected(Rejection::InvalidRequest),
        "UNAUTHENTICATED" => rejected(Rejection::Authentication),
        // FAILED_PRECONDITION: billing or region, which waiting does not fix.
        "PERMISSION_DENIED" | "FAILED_PRECONDITION" => rejected(Rejection::PermissionDenied),
        "NOT_FOUND" => rejected(Rejection::NotFound),
        "RESOURCE_EXHAUSTED" => unavailable(Unavailability::RateLimited),
        "UNAVAILABLE" => unavailable(Unavailability::Overloaded),
        "INTERNAL" | "UNKNOWN" | "ABORTED" => unavailable(Unavailability::ServerError),
        "DEADLINE_EXCEEDED" => unavailable(Unavailability::Timeout),
        _ => match status {
            Some(status) => by_status(status, message),
            None => unavailable(Unavailability::ServerError),
        },
    }
}

/// What a stream said so far.
#[derive(Debug, Default)]
struct Decoder {
    /// For the ids of calls Gemini gives none.
    request_id: String,
    id: Option<String>,
    model: Option<String>,
    finish_reason: Option<String>,
    block_reason: Option<String>,
    usage: Option<UsageMetadata>,
    tool_calls: Vec<ToolCall>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Chunk {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    response_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

/// A text part (thought summaries, `thought: true`, are not the answer) or a function call.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thought: bool,
    #[serde(default)]
    function_call: Option<FunctionCall>,
}

#[derive(Debug, Deserialize)]
struct FunctionCall {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: i64,
    #[serde(default)]
    candidates_token_count: i64,
    #[serde(default)]
    cached_content_token_count: i64,
    #[serde(default)]
    thoughts_token_count: i64,
}

impl UsageMetadata {
    /// `promptTokenCount` includes the cached content; thoughts are billed as output but
    /// counted apart from `candidatesTokenCount`.
    fn normalised(&self) -> ModelUsage {
        let thoughts = self.thoughts_token_count.max(0);
        ModelUsage {
            input_tokens: self.prompt_token_count.max(0),
            output_tokens: self.candidates_token_count.max(0).saturating_add(thoughts),
            cache_read_input_tokens: self.cached_content_token_count.max(0),
            reasoning_tokens: thoughts,
            ..ModelUsage::default()
        }
    }
}

impl StreamDecoder for Decoder {
    fn event(&mut self, event: &Sse) -> Result<Decoded, ProviderError> {
        let data = event.data.as_deref().unwrap_or_default();
        let value: Value = event_json("gemini", data)?;
        if let Some(error) = value.get("error") {
            let error: ErrorBody = serde_json::from_value(error.clone()).unwrap_or(ErrorBody {
                message: error.to_string(),
                status: String::new(),
                details: Vec::new(),
            });
            return Err(classify(None, &error));
        }
        let chunk: Chunk = serde_json::from_value(value).map_err(|error| {
            ProviderError::unavailable(
                Unavailability::MalformedStream,
                format!("an event of the gemini stream is not valid: {error}"),
            )
        })?;
        if chunk.response_id.is_some() {
            self.id = chunk.response_id;
        }
        if chunk.model_version.is_some() {
            self.model = chunk.model_version;
        }
        if chunk.usage_metadata.is_some() {
            self.usage = chunk.usage_metadata;
        }
        if let Some(reason) = chunk.prompt_feedback.and_then(|f| f.block_reason) {
            self.block_reason = Some(reason);
        }
        let mut text = String::new();
        for candidate in chunk.candidates.into_iter().filter(|c| c.index == 0) {
            let parts = candidate.content.map(|c| c.parts).unwrap_or_default();
            for part in parts.into_iter().filter(|part| !part.thought) {
                text.push_str(part.text.as_deref().unwrap_or_default());
                if let Some(call) = part.function_call {
                    let position = self.tool_calls.len();
                    self.tool_calls.push(ToolCall {
                        id: call
                            .id
                            .filter(|id| !id.is_empty())
                            .unwrap_or_else(|| made_up_tool_call_id(&self.request_id, position)),
                        name: call.name,
                        arguments: match call.args {
                            Some(args @ Value::Object(_)) => args.to_string(),
                            _ => "{}".to_owned(),
                        },
                    });
                }
            }
            if candidate.finish_reason.is_some() {
                self.finish_reason = candidate.finish_reason;
            }
        }
        Ok(Decoded {
            text: (!text.is_empty()).then_some(text),
            done: false,
        })
    }

    fn finish(self: Box<Self>) -> Result<Finished, ProviderError> {
        if let Some(reason) = self.block_reason {
            return Err(ProviderError::rejected(
                Rejection::ContentRefused,
                format!("the prompt was blocked ({reason})"),
            ));
        }
        let finish_reason = match self.finish_reason.as_deref() {
            None => {
                return Err(ProviderError::unavailable(
                    Unavailability::Truncated,
                    "the gemini stream ended before a finishReason",
                ));
            }
            // Also after function calls, which the engine sees.
            Some("STOP") => FinishReason::Stop,
            Some("MAX_TOKENS") => FinishReason::MaxTokens,
            // The model wrote a call that does not parse; another sample may not.
            Some("MALFORMED_FUNCTION_CALL") => {
                return Err(ProviderError::unavailable(
                    Unavailability::ServerError,
                    "the model wrote a malformed function call (finishReason MALFORMED_FUNCTION_CALL)",
                ));
            }
            Some(
                reason @ ("SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII"
                | "LANGUAGE" | "IMAGE_SAFETY"),
            ) => {
                return Err(ProviderError::rejected(
                    Rejection::ContentRefused,
                    format!("the answer was stopped (finishReason {reason})"),
                ));
            }
            Some(other) => {
                return Err(ProviderError::rejected(
                    Rejection::UnexpectedResponse,
                    format!("unsupported finishReason {other:?}"),
                ));
            }
        };
        Ok(Finished {
            finish_reason,
            model: self.model,
            usage: self.usage.map(|u| u.normalised()).unwrap_or_default(),
            usage_reported: self.usage.is_some(),
            response_id: self.id,
            tool_calls: self.tool_calls,
        })
    }

    fn usage(&self) -> Option<ModelUsage> {
        self.usage.map(|usage| usage.normalised())
    }
}

#[cfg(test)]
mod tests;
