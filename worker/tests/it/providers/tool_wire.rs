//! Each vendor's tool wire format as its API reference documents it, from the server's side:
//! streamed tool calls (Anthropic `tool_use` blocks with `input_json_delta` fragments, OpenAI
//! `delta.tool_calls` fragments interleaved by index, Gemini `functionCall` parts), a stream
//! that reports usage and then fails, and how a request must carry declared tools and a
//! history of tool calls and outputs.
//!
//! Anthropic: <https://docs.claude.com/en/docs/build-with-claude/streaming> and
//! <https://docs.claude.com/en/docs/agents-and-tools/tool-use/implement-tool-use>. OpenAI:
//! <https://platform.openai.com/docs/api-reference/chat/create> and
//! <https://platform.openai.com/docs/guides/function-calling>. Gemini:
//! <https://ai.google.dev/gemini-api/docs/function-calling> and
//! <https://ai.google.dev/api/caching#FunctionDeclaration>.

use agentplane_worker::provider::{
    ChatMessage, ChatRole, ModelUsage, ToolCall, ToolOutput, ToolSpec,
};
use serde_json::{Value, json};

use super::vendors::{CONSUMED, Vendor};

/// A call the fake model makes: its vendor id (when the vendor gives one), name, and the
/// argument JSON in the fragments it is streamed in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FakeCall {
    pub(crate) id: &'static str,
    pub(crate) name: &'static str,
    pub(crate) fragments: &'static [&'static str],
}

impl FakeCall {
    /// The whole argument JSON.
    pub(crate) fn arguments(&self) -> String {
        self.fragments.concat()
    }
}

/// What the usage-then-failure streams report before failing.
pub(crate) const REPORTED: ModelUsage = ModelUsage {
    input_tokens: 100,
    output_tokens: 1,
    cache_read_input_tokens: 0,
    cache_write_input_tokens: 0,
    reasoning_tokens: 0,
    // 100 input tokens at $1/M and 1 output token at $2/M.
    cost_micros: 102,
    unpriced: false,
};

/// The tools every tool test declares.
pub(crate) fn tools() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "get_weather".to_owned(),
            description: "The weather in a city".to_owned(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"], "additionalProperties": false}),
        },
        ToolSpec {
            name: "add".to_owned(),
            description: String::new(),
            parameters: json!({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}),
        },
    ]
}

/// A conversation in which the model called both tools and the caller answered.
pub(crate) fn history() -> Vec<ChatMessage> {
    let call = |id: &str, name: &str, arguments: &str| ToolCall {
        id: id.to_owned(),
        name: name.to_owned(),
        arguments: arguments.to_owned(),
    };
    let output = |call_id: &str, name: &str, text: &str, is_error| ToolOutput {
        call_id: call_id.to_owned(),
        name: name.to_owned(),
        output: text.to_owned(),
        is_error,
    };
    vec![
        ChatMessage::text(ChatRole::User, "Weather in Paris, and 2+2?"),
        ChatMessage {
            role: ChatRole::Assistant,
            content: "Let me check.".to_owned(),
            tool_calls: vec![
                call("call_w1", "get_weather", r#"{"city": "Paris"}"#),
                call("call_a2", "add", r#"{"a": 2, "b": 2}"#),
            ],
            tool_outputs: Vec::new(),
        },
        ChatMessage {
            role: ChatRole::Tool,
            content: String::new(),
            tool_calls: Vec::new(),
            tool_outputs: vec![
                output("call_w1", "get_weather", "sunny, 21 °C", false),
                output("call_a2", "add", "adder is down", true),
            ],
        },
    ]
}

impl Vendor {
    /// Whether the vendor names its tool calls (Gemini may not).
    pub(crate) fn names_calls(self) -> bool {
        !matches!(self, Vendor::Gemini)
    }

    /// Complete SSE frames of an answer that streams `pieces` of text, then calls `calls`.
    pub(crate) fn tool_answer(self, pieces: &[&str], calls: &[FakeCall]) -> Vec<String> {
        let c = CONSUMED;
        match self {
            Vendor::Anthropic => {
                let mut frames = vec![self.answer(&[])[0].clone()];
                let mut index = 0;
                if !pieces.is_empty() {
                    frames.push(anthropic_event(
                        "content_block_start",
                        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                    ));
                    for piece in pieces {
                        frames.push(anthropic_event(
                            "content_block_delta",
                            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
                        ));
                    }
                    frames.push(anthropic_event(
                        "content_block_stop",
                        json!({"type": "content_block_stop", "index": 0}),
                    ));
                    index = 1;
                }
                for call in calls {
                    frames.push(anthropic_event(
                        "content_block_start",
                        json!({"type": "content_block_start", "index": index, "content_block":
                               {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}}),
                    ));
                    // The first delta is empty, as Anthropic's own examples show.
                    for fragment in std::iter::once(&"").chain(call.fragments) {
                        frames.push(anthropic_event(
                            "content_block_delta",
                            json!({"type": "content_block_delta", "index": index, "delta":
                                   {"type": "input_json_delta", "partial_json": fragment}}),
                        ));
                    }
                    frames.push(anthropic_event(
                        "content_block_stop",
                        json!({"type": "content_block_stop", "index": index}),
                    ));
                    index += 1;
                }
                frames.push(anthropic_event(
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                           "usage": {"output_tokens": c.output}}),
                ));
                frames.push(anthropic_event(
                    "message_stop",
                    json!({"type": "message_stop"}),
                ));
                frames
            }
            Vendor::OpenAi | Vendor::OpenAiCompatible => {
                let mut frames = self.answer(pieces);
                let tail = frames.split_off(frames.len() - 3); // finish, usage, [DONE]
                let chunk = |delta: Value, finish: Value| {
                    data(
                        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                                "model": "test-model-2026", "choices": [{"index": 0, "delta": delta,
                                "logprobs": null, "finish_reason": finish}], "usage": null}),
                    )
                };
                for (index, call) in calls.iter().enumerate() {
                    frames.push(chunk(
                        json!({"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                              "function": {"name": call.name, "arguments": ""}}]}),
                        Value::Null,
                    ));
                }
                // The calls' argument fragments interleave, each naming its call by index.
                let rounds = calls.iter().map(|c| c.fragments.len()).max().unwrap_or(0);
                for round in 0..rounds {
                    for (index, call) in calls.iter().enumerate() {
                        if let Some(fragment) = call.fragments.get(round) {
                            frames.push(chunk(
                                json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}),
                                Value::Null,
                            ));
                        }
                    }
                }
                frames.push(chunk(json!({}), json!("tool_calls")));
                frames.extend(tail.into_iter().skip(1));
                frames
            }
            Vendor::Gemini => {
                let mut frames = Vec::new();
                let usage = json!({"promptTokenCount": c.input, "totalTokenCount": c.input});
                for piece in pieces {
                    frames.push(data(json!({"candidates": [{"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0}],
                        "usageMetadata": usage, "modelVersion": "test-model-2026", "responseId": "resp-fake"})));
                }
                // Each call whole in its own part; the last chunk says STOP, as after text.
                let last = calls.len().saturating_sub(1);
                for (i, call) in calls.iter().enumerate() {
                    let args: Value = serde_json::from_str(&call.arguments()).unwrap();
                    let mut candidate = json!({"content": {"parts": [{"functionCall": {"name": call.name, "args": args}}],
                                               "role": "model"}, "index": 0});
                    let mut usage = usage.clone();
                    if i == last {
                        candidate["finishReason"] = json!("STOP");
                        usage = json!({"promptTokenCount": c.input,
                            "candidatesTokenCount": c.output - c.reasoning,
                            "cachedContentTokenCount": c.cache_read,
                            "thoughtsTokenCount": c.reasoning,
                            "totalTokenCount": c.input + c.output});
                    }
                    frames.push(data(
                        json!({"candidates": [candidate], "usageMetadata": usage,
                        "modelVersion": "test-model-2026", "responseId": "resp-fake"}),
                    ));
                }
                frames
            }
        }
    }

    /// A stream that reports [`REPORTED`] usage and then fails (an error event inside the
    /// 200 response), before any text.
    pub(crate) fn usage_then_failure(self) -> Vec<String> {
        let r = REPORTED;
        match self {
            Vendor::Anthropic => vec![
                anthropic_event(
                    "message_start",
                    json!({"type": "message_start", "message": {
                        "id": "msg_fake", "type": "message", "role": "assistant", "content": [],
                        "model": "test-model-2026", "stop_reason": null, "stop_sequence": null,
                        "usage": {"input_tokens": r.input_tokens, "output_tokens": r.output_tokens}}}),
                ),
                anthropic_event("ping", json!({"type": "ping"})),
                anthropic_event(
                    "error",
                    json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
                ),
            ],
            // vLLM's continuous usage stats put usage in every chunk; then the server fails.
            Vendor::OpenAi | Vendor::OpenAiCompatible => vec![
                data(
                    json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                    "model": "test-model-2026", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                    "finish_reason": null}],
                    "usage": {"prompt_tokens": r.input_tokens, "completion_tokens": r.output_tokens,
                              "total_tokens": r.input_tokens + r.output_tokens}}),
                ),
                data(
                    json!({"error": {"message": "The server had an error while processing your request",
                                      "type": "server_error", "param": null, "code": null}}),
                ),
            ],
            Vendor::Gemini => vec![
                data(
                    json!({"candidates": [{"content": {"parts": [{"text": ""}], "role": "model"}, "index": 0}],
                    "usageMetadata": {"promptTokenCount": r.input_tokens, "candidatesTokenCount": r.output_tokens,
                                      "totalTokenCount": r.input_tokens + r.output_tokens},
                    "modelVersion": "test-model-2026", "responseId": "resp-fake"}),
                ),
                data(
                    json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.",
                                      "status": "UNAVAILABLE"}}),
                ),
            ],
        }
    }

    /// The request's declared tools as the vendor documents them.
    pub(crate) fn expected_tools(self) -> Value {
        let weather = json!({"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"], "additionalProperties": false});
        let add = json!({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}});
        match self {
            Vendor::Anthropic => json!([
                {"name": "get_weather", "description": "The weather in a city", "input_schema": weather},
                {"name": "add", "input_schema": add}
            ]),
            Vendor::OpenAi | Vendor::OpenAiCompatible => json!([
                {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city", "parameters": weather}},
                {"type": "function", "function": {"name": "add", "parameters": add}}
            ]),
            Vendor::Gemini => json!([{"functionDeclarations": [
                {"name": "get_weather", "description": "The weather in a city", "parametersJsonSchema": weather},
                {"name": "add", "parametersJsonSchema": add}
            ]}]),
        }
    }

    /// The request's tools, as sent.
    pub(crate) fn sent_tools(self, body: &Value) -> Value {
        body.get("tools").cloned().unwrap_or(Value::Null)
    }

    /// [`history`] as the vendor documents it (after the system prompt, for OpenAI).
    pub(crate) fn expected_history(self) -> Value {
        match self {
            Vendor::Anthropic => json!([
                {"role": "user", "content": "Weather in Paris, and 2+2?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "call_w1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_a2", "name": "add", "input": {"a": 2, "b": 2}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_w1", "content": "sunny, 21 °C"},
                    {"type": "tool_result", "tool_use_id": "call_a2", "content": "adder is down", "is_error": true}
                ]}
            ]),
            Vendor::OpenAi | Vendor::OpenAiCompatible => json!([
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris, and 2+2?"},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [
                    {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                    {"id": "call_a2", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 2}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_w1", "content": "sunny, 21 °C"},
                {"role": "tool", "tool_call_id": "call_a2", "content": "adder is down"}
            ]),
            // Outputs go back from the user; an error output under the "error" key.
            Vendor::Gemini => json!([
                {"role": "user", "parts": [{"text": "Weather in Paris, and 2+2?"}]},
                {"role": "model", "parts": [
                    {"text": "Let me check."},
                    {"functionCall": {"id": "call_w1", "name": "get_weather", "args": {"city": "Paris"}},
                     "thoughtSignature": "skip_thought_signature_validator"},
                    {"functionCall": {"id": "call_a2", "name": "add", "args": {"a": 2, "b": 2}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"id": "call_w1", "name": "get_weather", "response": {"output": "sunny, 21 °C"}}},
                    {"functionResponse": {"id": "call_a2", "name": "add", "response": {"error": "adder is down"}}}
                ]}
            ]),
        }
    }

    /// The request's conversation, as sent.
    pub(crate) fn sent_history(self, body: &Value) -> Value {
        match self {
            Vendor::Anthropic | Vendor::OpenAi | Vendor::OpenAiCompatible => {
                body["messages"].clone()
            }
            Vendor::Gemini => body["contents"].clone(),
        }
    }
}

fn anthropic_event(name: &str, payload: Value) -> String {
    format!("event: {name}\ndata: {payload}\n\n")
}

fn data(payload: Value) -> String {
    format!("data: {payload}\n\n")
}
