//! Each vendor's wire format as its API reference documents it, from the server's side: the
//! streamed answer (events, usage, terminal event), an error inside a 200 stream, error
//! bodies, and how its requests carry the key and the conversation.

use agentplane_worker::provider::prices::PriceTable;
use agentplane_worker::provider::{
    Endpoint, HttpSettings, ModelUsage, Provider, ProviderSettings, RetryPolicy,
};
use secrecy::SecretString;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

use super::fake::Recorded;

/// The model every conformance test asks for; priced by [`test_prices`].
pub(crate) const MODEL: &str = "test-model";

/// What a fake answer consumed, in the vendors' common terms.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Consumed {
    /// The whole prompt, cached parts included.
    pub(crate) input: i64,
    pub(crate) cache_read: i64,
    pub(crate) cache_write: i64,
    /// Every generated token, reasoning included.
    pub(crate) output: i64,
    pub(crate) reasoning: i64,
}

pub(crate) const CONSUMED: Consumed = Consumed {
    input: 100,
    cache_read: 40,
    cache_write: 10,
    output: 12,
    reasoning: 3,
};

/// A vendor under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vendor {
    Anthropic,
    OpenAi,
    OpenAiCompatible,
    Gemini,
}

impl Vendor {
    pub(crate) fn provider(self) -> Provider {
        match self {
            Vendor::Anthropic => Provider::Anthropic,
            Vendor::OpenAi => Provider::OpenAi,
            Vendor::OpenAiCompatible => Provider::OpenAiCompatible,
            Vendor::Gemini => Provider::Gemini,
        }
    }

    /// Worker settings pointing this vendor at the fake at `url`, with test timeouts.
    pub(crate) fn settings(self, url: &str, key: &str) -> ProviderSettings {
        let endpoint = |base_url: String| {
            Some(Endpoint {
                base_url,
                api_key: Some(SecretString::from(key.to_owned())),
            })
        };
        let mut settings = ProviderSettings {
            http: HttpSettings {
                connect_timeout: Duration::from_secs(5),
                request_timeout: Duration::from_secs(30),
                stall_timeout: Duration::from_secs(10),
                retry: RetryPolicy {
                    max_retries: 2,
                    initial_backoff: Duration::from_millis(10),
                    max_backoff: Duration::from_millis(50),
                    max_retry_after: Duration::from_secs(5),
                },
            },
            prices: Arc::new(test_prices()),
            ..ProviderSettings::default()
        };
        match self {
            Vendor::Anthropic => settings.anthropic = endpoint(url.to_owned()),
            Vendor::OpenAi => settings.openai = endpoint(format!("{url}/v1")),
            Vendor::OpenAiCompatible => settings.openai_compatible = endpoint(format!("{url}/v1")),
            Vendor::Gemini => settings.gemini = endpoint(url.to_owned()),
        }
        settings
    }

    /// The path the adapter must post to.
    pub(crate) fn path(self) -> String {
        match self {
            Vendor::Anthropic => "/v1/messages".to_owned(),
            Vendor::OpenAi | Vendor::OpenAiCompatible => "/v1/chat/completions".to_owned(),
            Vendor::Gemini => format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"),
        }
    }

    /// The API key as the request carried it.
    pub(crate) fn sent_key(self, request: &Recorded) -> Option<String> {
        match self {
            Vendor::Anthropic => request.header("x-api-key").map(str::to_owned),
            Vendor::OpenAi | Vendor::OpenAiCompatible => request
                .header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned),
            Vendor::Gemini => request.header("x-goog-api-key").map(str::to_owned),
        }
    }

    /// The header this vendor puts its request id in, if any.
    pub(crate) fn request_id_header(self) -> Option<&'static str> {
        match self {
            Vendor::Anthropic => Some("request-id"),
            Vendor::OpenAi | Vendor::OpenAiCompatible => Some("x-request-id"),
            Vendor::Gemini => None,
        }
    }

    /// The conversation of a request body as (role, text), the system prompt first.
    pub(crate) fn conversation(self, body: &Value) -> Vec<(String, String)> {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        match self {
            Vendor::Anthropic => {
                let mut turns = Vec::new();
                if let Some(system) = body.get("system") {
                    turns.push(("system".to_owned(), text(system)));
                }
                for m in body["messages"].as_array().unwrap() {
                    turns.push((text(&m["role"]), text(&m["content"])));
                }
                turns
            }
            Vendor::OpenAi | Vendor::OpenAiCompatible => body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| (text(&m["role"]), text(&m["content"])))
                .collect(),
            Vendor::Gemini => {
                let mut turns = Vec::new();
                if let Some(system) = body.get("systemInstruction") {
                    turns.push(("system".to_owned(), text(&system["parts"][0]["text"])));
                }
                for c in body["contents"].as_array().unwrap() {
                    let role = match c["role"].as_str() {
                        Some("model") => "assistant".to_owned(),
                        other => other.unwrap_or_default().to_owned(),
                    };
                    turns.push((role, text(&c["parts"][0]["text"])));
                }
                turns
            }
        }
    }

    /// The usage the adapter must report for [`CONSUMED`] (what the vendor can tell).
    pub(crate) fn expected_usage(self) -> ModelUsage {
        let c = CONSUMED;
        match self {
            // Anthropic reports cache writes but no reasoning count.
            Vendor::Anthropic => ModelUsage {
                input_tokens: c.input,
                output_tokens: c.output,
                cache_read_input_tokens: c.cache_read,
                cache_write_input_tokens: c.cache_write,
                reasoning_tokens: 0,
                cost_micros: 91,
                unpriced: false,
            },
            // The others report reasoning but bill no per-call cache write.
            Vendor::OpenAi | Vendor::OpenAiCompatible | Vendor::Gemini => ModelUsage {
                input_tokens: c.input,
                output_tokens: c.output,
                cache_read_input_tokens: c.cache_read,
                cache_write_input_tokens: 0,
                reasoning_tokens: c.reasoning,
                cost_micros: 88,
                unpriced: false,
            },
        }
    }

    /// Complete SSE frames of an answer made of `pieces`, ending in the terminal event.
    pub(crate) fn answer(self, pieces: &[&str]) -> Vec<String> {
        let c = CONSUMED;
        match self {
            Vendor::Anthropic => {
                let mut frames = vec![
                    anthropic_event(
                        "message_start",
                        json!({"type": "message_start", "message": {
                            "id": "msg_fake", "type": "message", "role": "assistant", "content": [],
                            "model": "test-model-2026", "stop_reason": null, "stop_sequence": null,
                            "usage": {"input_tokens": c.input - c.cache_read - c.cache_write,
                                      "cache_creation_input_tokens": c.cache_write,
                                      "cache_read_input_tokens": c.cache_read, "output_tokens": 1}}}),
                    ),
                    anthropic_event(
                        "content_block_start",
                        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                    ),
                    anthropic_event("ping", json!({"type": "ping"})),
                ];
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
                frames.push(anthropic_event(
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                           "usage": {"output_tokens": c.output}}),
                ));
                frames.push(anthropic_event(
                    "message_stop",
                    json!({"type": "message_stop"}),
                ));
                frames
            }
            Vendor::OpenAi | Vendor::OpenAiCompatible => {
                let chunk = |delta: Value, finish: Value| {
                    data(
                        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                                "model": "test-model-2026", "choices": [{"index": 0, "delta": delta,
                                "logprobs": null, "finish_reason": finish}], "usage": null}),
                    )
                };
                let mut frames = vec![chunk(
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                )];
                for piece in pieces {
                    frames.push(chunk(json!({"content": piece}), Value::Null));
                }
                frames.push(chunk(json!({}), json!("stop")));
                frames.push(data(json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                    "created": 1, "model": "test-model-2026", "choices": [],
                    "usage": {"prompt_tokens": c.input, "completion_tokens": c.output,
                              "total_tokens": c.input + c.output,
                              "prompt_tokens_details": {"cached_tokens": c.cache_read, "audio_tokens": 0},
                              "completion_tokens_details": {"reasoning_tokens": c.reasoning, "audio_tokens": 0}}})));
                frames.push("data: [DONE]\n\n".to_owned());
                frames
            }
            Vendor::Gemini => {
                let mut frames = Vec::new();
                let last = pieces.len().saturating_sub(1);
                for (i, piece) in pieces.iter().enumerate() {
                    let mut candidate = json!({"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0});
                    let mut usage =
                        json!({"promptTokenCount": c.input, "totalTokenCount": c.input});
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

    /// The frames of an answer cut before its terminal event (and the usage that precedes it).
    pub(crate) fn truncated(self, pieces: &[&str]) -> Vec<String> {
        let mut frames = self.answer(pieces);
        match self {
            // Drop message_delta and message_stop.
            Vendor::Anthropic => frames.truncate(frames.len() - 2),
            // Drop the usage chunk and [DONE]: the stream ends after finish_reason.
            Vendor::OpenAi | Vendor::OpenAiCompatible => frames.truncate(frames.len() - 2),
            // Drop the last chunk, the one with finishReason.
            Vendor::Gemini => frames.truncate(frames.len() - 1),
        }
        frames
    }

    /// A stream that starts and then reports an overload inside the 200 response.
    pub(crate) fn overloaded_in_stream(self) -> Vec<String> {
        match self {
            Vendor::Anthropic => vec![
                self.answer(&[])[0].clone(),
                anthropic_event(
                    "error",
                    json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
                ),
            ],
            Vendor::OpenAi | Vendor::OpenAiCompatible => vec![data(
                json!({"error": {"message": "The server is overloaded, please retry", "type": "server_error",
                                 "param": null, "code": null}}),
            )],
            Vendor::Gemini => vec![data(
                json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.",
                                 "status": "UNAVAILABLE"}}),
            )],
        }
    }

    /// The vendor's error body for `status`, saying `message`.
    pub(crate) fn error_body(self, status: u16, message: &str) -> String {
        match self {
            Vendor::Anthropic => {
                let kind = match status {
                    401 => "authentication_error",
                    429 => "rate_limit_error",
                    529 => "overloaded_error",
                    400 => "invalid_request_error",
                    _ => "api_error",
                };
                json!({"type": "error", "error": {"type": kind, "message": message}}).to_string()
            }
            Vendor::OpenAi => {
                let (kind, code) = match status {
                    401 => ("invalid_request_error", json!("invalid_api_key")),
                    429 => ("requests", json!("rate_limit_exceeded")),
                    400 => ("invalid_request_error", Value::Null),
                    _ => ("server_error", Value::Null),
                };
                json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
                    .to_string()
            }
            // vLLM's error object, which is not OpenAI's envelope.
            Vendor::OpenAiCompatible => json!({"object": "error", "message": message,
                "type": "BadRequestError", "param": null, "code": status})
            .to_string(),
            Vendor::Gemini => {
                let status_name = match status {
                    401 => "UNAUTHENTICATED",
                    429 => "RESOURCE_EXHAUSTED",
                    400 => "INVALID_ARGUMENT",
                    503 => "UNAVAILABLE",
                    _ => "INTERNAL",
                };
                json!({"error": {"code": status, "message": message, "status": status_name}})
                    .to_string()
            }
        }
    }
}

/// Prices of [`MODEL`] on every vendor: $1 in, $2 out, $0.10 cache read, $1.25 cache write
/// per million tokens (so 1 µ$ per uncached input token).
pub(crate) fn test_prices() -> PriceTable {
    let mut table = PriceTable::builtin();
    let price = json!({"input": 1_000_000, "output": 2_000_000, "cache_read": 100_000, "cache_write": 1_250_000});
    table
        .merge_json(
            &json!({"prices": {
                "anthropic": {MODEL: price}, "openai": {MODEL: price},
                "openai_compatible": {MODEL: price}, "gemini": {MODEL: price}}})
            .to_string(),
        )
        .unwrap();
    table
}

fn anthropic_event(name: &str, payload: Value) -> String {
    format!("event: {name}\ndata: {payload}\n\n")
}

fn data(payload: Value) -> String {
    format!("data: {payload}\n\n")
}
