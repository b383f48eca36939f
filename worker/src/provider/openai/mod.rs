//! OpenAI's Chat Completions API, `POST {base}/chat/completions` with `stream: true` and
//! `stream_options.include_usage`, spoken by OpenAI itself and by the OpenAI-compatible
//! servers (vLLM, Ollama, llama.cpp, Together, Groq, OpenRouter).
//!
//! Request: the system prompt is the first message (`role: system`). OpenAI takes
//! `max_completion_tokens` (its reasoning models refuse `max_tokens`); compatible servers
//! take `max_tokens`, the field they all implement. Tools are `tools: [{type: "function",
//! function: {name, description, parameters}}]`; an assistant message carries its calls in
//! `tool_calls: [{id, type: "function", function: {name, arguments}}]` (`arguments` a JSON
//! string), and each output is a `role: tool` message with the `tool_call_id` it answers.
//! Stream: `chat.completion.chunk` objects whose `choices[0].delta.content` carries text,
//! `delta.tool_calls` fragments of the calls (by `index`: the first fragment has the id and
//! name, later ones pieces of `arguments`; several calls may interleave) and
//! `finish_reason` the stop (`tool_calls` after calls), then one chunk with empty `choices`
//! and the `usage`, then `data: [DONE]` (the terminal event). Errors:
//! `{"error":{"message","type","param","code"}}`, also inside a stream; compatible servers
//! vary (a bare string, `detail`), which is read as well as it can be.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sse_stream::Sse;

use super::http::{
    Decoded, Finished, StreamDecoder, WireFormat, WireRequest, by_status, event_json, plain_header,
    raw_body_message, secret_header,
};
use super::settings::Endpoint;
use super::{
    ChatMessage, ChatRole, FinishReason, ModelRequest, ModelUsage, ProviderError, Rejection,
    Unavailability,
};

mod calls;

/// OpenAI's wire format, for OpenAI or for a compatible server.
#[derive(Debug, Clone, Copy)]
pub(super) struct OpenAi {
    /// Talking to a compatible server rather than OpenAI.
    compatible: bool,
}

impl OpenAi {
    /// For api.openai.com.
    pub(super) fn official() -> Self {
        Self { compatible: false }
    }

    /// For an OpenAI-compatible server.
    pub(super) fn compatible() -> Self {
        Self { compatible: true }
    }

    fn vendor(self) -> &'static str {
        if self.compatible {
            "openai-compatible"
        } else {
            "openai"
        }
    }

    /// The JSON body of a request.
    fn body(self, request: &ModelRequest) -> Value {
        let system = request
            .system
            .iter()
            .map(|system| json!({ "role": "system", "content": system }));
        let conversation = request.messages.iter().flat_map(messages);
        let generation = &request.generation;
        let mut body = Map::new();
        body.insert("model".into(), json!(request.model));
        body.insert(
            "messages".into(),
            Value::Array(system.chain(conversation).collect()),
        );
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({ "include_usage": true }));
        let max_tokens_field = if self.compatible {
            "max_tokens"
        } else {
            "max_completion_tokens"
        };
        body.insert(
            max_tokens_field.into(),
            json!(generation.effective_max_output_tokens()),
        );
        if let Some(temperature) = generation.temperature {
            body.insert("temperature".into(), json!(temperature));
        }
        if let Some(top_p) = generation.top_p {
            body.insert("top_p".into(), json!(top_p));
        }
        if !generation.stop_sequences.is_empty() {
            body.insert("stop".into(), json!(generation.stop_sequences));
        }
        if !request.tools.is_empty() {
            let tools: Vec<Value> = request
                .tools
                .iter()
                .map(|tool| {
                    let mut function = json!({ "name": tool.name, "parameters": tool.parameters });
                    if !tool.description.is_empty() {
                        function["description"] = json!(tool.description);
                    }
                    json!({ "type": "function", "function": function })
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
        }
        Value::Object(body)
    }
}

/// The messages one of the conversation becomes: a tool message becomes one `role: tool`
/// message per output (and a user message for any text beside them).
fn messages(message: &ChatMessage) -> Vec<Value> {
    match message.role {
        ChatRole::User => vec![json!({ "role": "user", "content": message.content })],
        ChatRole::Assistant if message.tool_calls.is_empty() => {
            vec![json!({ "role": "assistant", "content": message.content })]
        }
        ChatRole::Assistant => {
            let calls: Vec<Value> = message
                .tool_calls
                .iter()
                .map(|call| {
                    json!({
                        "id": call.id,
                        "type": "function",
                        "function": { "name": call.name, "arguments": call.arguments },
                    })
                })
                .collect();
            // An assistant message that only calls tools has no content (null).
            let content = (!message.content.is_empty()).then_some(message.content.as_str());
            vec![json!({ "role": "assistant", "content": content, "tool_calls": calls })]
        }
        ChatRole::Tool => {
            let mut out: Vec<Value> = message
                .tool_outputs
                .iter()
                .map(|output| {
                    json!({
                        "role": "tool",
                        "tool_call_id": output.call_id,
                        "content": output.output,
                    })
                })
                .collect();
            if !message.content.is_empty() {
                out.push(json!({ "role": "user", "content": message.content }));
            }
            out
        }
    }
}

impl WireFormat for OpenAi {
    fn request(
        &self,
        request: &ModelRequest,
        endpoint: &Endpoint,
    ) -> Result<WireRequest, ProviderError> {
        let mut headers = HeaderMap::new();
        if let Some(key) = &endpoint.api_key {
            let bearer = format!("Bearer {}", key.expose_secret());
            headers.insert(reqwest::header::AUTHORIZATION, secret_header(&bearer)?);
        }
        // OpenAI's client request id, shown with the request in its logs and support tools;
        // compatible servers ignore it.
        headers.insert("x-client-request-id", plain_header(&request.request_id)?);
        Ok(WireRequest {
            path: "/chat/completions".to_owned(),
            headers,
            body: self.body(request),
        })
    }

    fn decoder(&self, request_id: &str) -> Box<dyn StreamDecoder> {
        Box::new(Decoder {
            vendor: self.vendor(),
            request_id: request_id.to_owned(),
            ..Decoder::default()
        })
    }

    fn error(&self, status: StatusCode, body: &[u8]) -> ProviderError {
        match serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|value| ErrorInfo::from_value(&value))
        {
            Some(info) => info.classify(Some(status)),
            None => by_status(status, raw_body_message(status, body)),
        }
    }
}

/// What an error body or an error chunk says.
#[derive(Debug, Default)]
struct ErrorInfo {
    message: String,
    kind: String,
    code: String,
}

impl ErrorInfo {
    /// `{"error": {...}}`, `{"error": "text"}`, `{"detail": "text"}` or `{"message": "text"}`.
    fn from_value(value: &Value) -> Option<Self> {
        let text = |v: Option<&Value>| match v {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        match value.get("error") {
            Some(Value::Object(error)) => Some(Self {
                message: text(error.get("message")),
                kind: text(error.get("type")),
                code: text(error.get("code")),
            }),
            Some(Value::String(message)) => Some(Self {
                message: message.clone(),
                ..Self::default()
            }),
            _ => ["detail", "message"]
                .iter()
                .find_map(|field| value.get(*field).and_then(Value::as_str))
                .map(|message| Self {
                    message: message.to_owned(),
                    ..Self::default()
                }),
        }
    }

    fn classify(&self, status: Option<StatusCode>) -> ProviderError {
        let label = [self.kind.as_str(), self.code.as_str()]
            .iter()
            .filter(|part| !part.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("/");
        let message = if label.is_empty() {
            self.message.clone()
        } else {
            format!("{label}: {}", self.message)
        };
        let rejected = |reason| ProviderError::rejected(reason, message.clone());
        let unavailable = |reason| ProviderError::unavailable(reason, message.clone());
        let lowercase = self.message.to_ascii_lowercase();
        match self.code.as_str() {
            "context_length_exceeded" => return rejected(Rejection::ContextTooLong),
            // A 429 that no wait cures: the account is out of credit.
            "insufficient_quota" => return rejected(Rejection::PermissionDenied),
            "invalid_api_key" => return rejected(Rejection::Authentication),
            "model_not_found" => return rejected(Rejection::NotFound),
            "content_policy_violation" | "content_filter" => {
                return rejected(Rejection::ContentRefused);
            }
            "rate_limit_exceeded" => return unavailable(Unavailability::RateLimited),
            _ => {}
        }
        if lowercase.contains("maximum context length") || lowercase.contains("context length") {
            return rejected(Rejection::ContextTooLong);
        }
        match (status, self.kind.as_str()) {
            (Some(status), _) => by_status(status, message),
            (None, "invalid_request_error") => rejected(Rejection::InvalidRequest),
            // An error inside a stream: the server failed mid-answer.
            (None, _) => unavailable(Unavailability::ServerError),
        }
    }
}

/// What a stream said so far.
#[derive(Debug, Default)]
struct Decoder {
    vendor: &'static str,
    /// For the ids of calls a compatible server gives none.
    request_id: String,
    /// The tool calls being assembled from their fragments.
    tool_calls: calls::Calls,
    id: Option<String>,
    model: Option<String>,
    finish_reason: Option<String>,
    refusal: String,
    usage: Option<Usage>,
    done: bool,
}

#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

/// Text and tool call fragments (`reasoning_content` from vLLM or DeepSeek is not the
/// answer).
#[derive(Debug, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<calls::CallDelta>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: i64,
    #[serde(default)]
    completion_tokens: i64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<i64>,
}

impl Usage {
    /// `prompt_tokens` already includes the cached ones, `completion_tokens` the reasoning.
    fn normalised(&self) -> ModelUsage {
        ModelUsage {
            input_tokens: self.prompt_tokens.max(0),
            output_tokens: self.completion_tokens.max(0),
            cache_read_input_tokens: self
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0)
                .max(0),
            reasoning_tokens: self
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0)
                .max(0),
            ..ModelUsage::default()
        }
    }
}

impl StreamDecoder for Decoder {
    fn event(&mut self, event: &Sse) -> Result<Decoded, ProviderError> {
        let data = event.data.as_deref().unwrap_or_default();
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(Decoded {
                text: None,
                done: true,
            });
        }
        let value: Value = event_json(self.vendor, data)?;
        if let Some(info) = value
            .get("error")
            .and_then(|_| ErrorInfo::from_value(&value))
        {
            return Err(info.classify(None));
        }
        let chunk: Chunk = serde_json::from_value(value).map_err(|error| {
            ProviderError::unavailable(
                Unavailability::MalformedStream,
                format!(
                    "a chunk of the {} stream is not valid: {error}",
                    self.vendor
                ),
            )
        })?;
        if chunk.id.is_some() {
            self.id = chunk.id;
        }
        if chunk.model.is_some() {
            self.model = chunk.model;
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        let mut text = None;
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(delta) = choice.delta {
                if let Some(refusal) = delta.refusal {
                    self.refusal.push_str(&refusal);
                }
                for call in delta.tool_calls.into_iter().flatten() {
                    self.tool_calls.add(call);
                }
                text = delta.content;
            }
            if choice.finish_reason.is_some() {
                self.finish_reason = choice.finish_reason;
            }
        }
        Ok(Decoded { text, done: false })
    }

    fn finish(self: Box<Self>) -> Result<Finished, ProviderError> {
        if !self.done {
            return Err(ProviderError::unavailable(
                Unavailability::Truncated,
                format!("the {} stream ended before [DONE]", self.vendor),
            ));
        }
        if !self.refusal.is_empty() {
            return Err(ProviderError::rejected(
                Rejection::ContentRefused,
                format!("the model refused: {}", self.refusal),
            ));
        }
        let finish_reason = match self.finish_reason.as_deref() {
            Some("stop") => FinishReason::Stop,
            Some("length") => FinishReason::MaxTokens,
            // `function_call`: the deprecated functions API's name, which some compatible
            // servers still send.
            Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
            Some("content_filter") => {
                return Err(ProviderError::rejected(
                    Rejection::ContentRefused,
                    "the answer was stopped by the content filter",
                ));
            }
            other => {
                return Err(ProviderError::rejected(
                    Rejection::UnexpectedResponse,
                    format!("unsupported finish_reason {other:?}"),
                ));
            }
        };
        let tool_calls = self.tool_calls.finish(&self.request_id);
        Ok(Finished {
            finish_reason,
            model: self.model,
            usage: self.usage.map(|u| u.normalised()).unwrap_or_default(),
            usage_reported: self.usage.is_some(),
            response_id: self.id,
            tool_calls,
        })
    }

    fn usage(&self) -> Option<ModelUsage> {
        self.usage.map(|usage| usage.normalised())
    }
}

#[cfg(test)]
mod tests;
