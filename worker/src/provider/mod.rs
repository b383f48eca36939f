//! Model providers behind one interface, looked up by an agent's `provider` text.
//!
//! A provider takes a [`ModelRequest`], streams text pieces into an [`OutputSink`] as it
//! generates them, and returns the whole answer with its usage. Besides the offline
//! [`echo::EchoProvider`], the vendor adapters (`anthropic`, `openai` for OpenAI and every
//! OpenAI-compatible server, `gemini`) share one HTTP engine (`http`): server-sent events,
//! error classification, retries with backoff, timeouts, cancellation. Each adapter only
//! says how a request is written and how the vendor's events and errors read. Credentials
//! and base URLs come from the worker's configuration ([`ProviderSettings`]), never from a
//! task; [`prices`] turns token counts into micro-dollars.

mod anthropic;
pub mod echo;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod gemini;
mod http;
mod openai;
pub mod prices;
mod retry;
mod settings;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use agentplane_core::columns::Provider;
pub use agentplane_core::generation::{DEFAULT_MAX_OUTPUT_TOKENS, Generation};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use error::{ProviderError, Rejection, Unavailability};
pub use retry::RetryPolicy;
pub use settings::{Endpoint, HttpSettings, ProviderSettings, SettingsError, default_base_url};

/// Who wrote a message of the conversation sent to a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatRole {
    /// The caller.
    User,
    /// The model (few-shot history or earlier turns).
    Assistant,
    /// The caller's outputs of the tools the previous assistant message called.
    Tool,
}

/// A tool the model may call (an agent's declared tool).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// Its name, unique within the request.
    pub name: String,
    /// What it does, for the model (may be empty).
    pub description: String,
    /// JSON Schema of its arguments: always an object schema (`{"type": "object", ...}`).
    pub parameters: serde_json::Value,
}

/// A model's call of a tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The call's id: the vendor's, or one the adapter makes up (unique within the task:
    /// derived from the request id and the call's index) when the vendor gives none.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments as JSON text, as the model wrote them.
    pub arguments: String,
}

/// The caller's output of one tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    /// The id of the call it answers.
    pub call_id: String,
    /// The called tool's name (Gemini matches outputs to calls by name).
    pub name: String,
    /// The output text.
    pub output: String,
    /// The tool failed (Anthropic's `is_error`; others see only the text).
    pub is_error: bool,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Its author.
    pub role: ChatRole,
    /// Its text (may be empty for an assistant message that only calls tools, and is empty
    /// for a tool message).
    pub content: String,
    /// For an assistant message: the tools it called, in order.
    pub tool_calls: Vec<ToolCall>,
    /// For a tool message: the outputs, one per call of the previous assistant message, in
    /// the calls' order.
    pub tool_outputs: Vec<ToolOutput>,
}

impl ChatMessage {
    /// A message of plain text.
    pub fn text(role: ChatRole, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_outputs: Vec::new(),
        }
    }
}

/// One call to a model.
#[derive(Debug, Clone)]
pub struct ModelRequest {
    /// Idempotency id sent to the provider, derived from (task, step).
    pub request_id: String,
    /// The provider's model name.
    pub model: String,
    /// Instructions framing the conversation, if any.
    pub system: Option<String>,
    /// The conversation, oldest first.
    pub messages: Vec<ChatMessage>,
    /// Sampling parameters.
    pub generation: Generation,
    /// The tools the model may call; empty for none.
    pub tools: Vec<ToolSpec>,
    /// When the attempt's time runs out: no retry is started that could not finish before
    /// it. `None` means no deadline beyond the provider's own timeouts.
    pub deadline: Option<Instant>,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model finished, or hit a stop sequence.
    Stop,
    /// The output token limit was reached.
    MaxTokens,
    /// The model called tools (`ModelResponse::tool_calls`) and waits for their outputs.
    ToolCalls,
}

impl FinishReason {
    /// The wire name reported to the control plane.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::MaxTokens => "max_tokens",
            Self::ToolCalls => "tool_calls",
        }
    }
}

/// What a call consumed and cost. Token counts are normalised across vendors: `input_tokens`
/// counts the whole prompt, cached parts included, and `output_tokens` every generated token,
/// reasoning included; the cached and reasoning counts are parts of those totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelUsage {
    /// Prompt tokens, including those read from or written to the prompt cache.
    pub input_tokens: i64,
    /// Generated tokens, including reasoning tokens.
    pub output_tokens: i64,
    /// Prompt tokens read from the vendor's prompt cache (billed at the cache-read price).
    pub cache_read_input_tokens: i64,
    /// Prompt tokens written to the vendor's prompt cache (billed at the cache-write price).
    pub cache_write_input_tokens: i64,
    /// Generated tokens spent on reasoning that is not part of the answer.
    pub reasoning_tokens: i64,
    /// Cost in micro-dollars (0 when `unpriced`).
    pub cost_micros: i64,
    /// The price table has no price for this model, so `cost_micros` is 0 rather than a
    /// guess.
    pub unpriced: bool,
}

/// A finished call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelResponse {
    /// The whole answer (the concatenation of every piece sent to the sink).
    pub text: String,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// The tools the model called, in order (empty unless `finish_reason` is `ToolCalls`).
    pub tool_calls: Vec<ToolCall>,
    /// The model that answered, as the provider names it.
    pub model: String,
    /// What the call consumed: this answer's usage plus that of any earlier tries of the
    /// call that failed after the vendor had reported usage (an overload inside a 200
    /// stream, a broken stream) and that the engine retried before this answer. A vendor
    /// bills those tries too, and they share this call's request id.
    pub usage: ModelUsage,
    /// The vendor's id of the call (from the `request-id`/`x-request-id` response header,
    /// else the id in the response body), for support tickets; `None` for echo.
    pub vendor_request_id: Option<String>,
}

impl ModelUsage {
    /// The usage of two calls (or tries) together: every count and the cost added
    /// (saturating), unpriced if either is.
    pub fn plus(&self, other: &ModelUsage) -> ModelUsage {
        ModelUsage {
            input_tokens: self.input_tokens.saturating_add(other.input_tokens),
            output_tokens: self.output_tokens.saturating_add(other.output_tokens),
            cache_read_input_tokens: self
                .cache_read_input_tokens
                .saturating_add(other.cache_read_input_tokens),
            cache_write_input_tokens: self
                .cache_write_input_tokens
                .saturating_add(other.cache_write_input_tokens),
            reasoning_tokens: self.reasoning_tokens.saturating_add(other.reasoning_tokens),
            cost_micros: self.cost_micros.saturating_add(other.cost_micros),
            unpriced: self.unpriced || other.unpriced,
        }
    }
}

/// Everything a [`ModelProvider::generate`] call consumed, successful or not, priced: an
/// answer's `usage` (which includes failed tries the engine retried before it), or a
/// failure's [`ProviderError::spent`] (`None` when the vendor reported nothing). The one
/// place to learn what to meter for a call.
pub fn spend_of(result: &Result<ModelResponse, ProviderError>) -> Option<ModelUsage> {
    match result {
        Ok(response) => Some(response.usage),
        Err(error) => error.spent(),
    }
}

/// The id of a tool call whose vendor gave none (Gemini may not; some OpenAI-compatible
/// servers do not): `call_<16 hex digits>_<index>`, the digits a hash of the request id
/// (`{task}-{step}`), so that it is the same on every attempt and fallback of the step,
/// differs between steps and between calls of one answer, and stays within OpenAI's
/// 40-character limit on tool call ids when the history is replayed there.
pub fn made_up_tool_call_id(request_id: &str, index: usize) -> String {
    // FNV-1a, 64 bits: stable across builds and platforms (std's hasher is not).
    let hash = request_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("call_{hash:016x}_{index}")
}

/// Where a provider sends text pieces as they are generated.
pub type OutputSink = mpsc::Sender<String>;

/// The future a provider call returns.
pub type ModelFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ModelResponse, ProviderError>> + Send + 'a>>;

/// A model provider. Implementations must stop promptly once `cancel` fires, and send every
/// piece of the answer, in order, to `sink` (the concatenation equals `ModelResponse::text`).
pub trait ModelProvider: Send + Sync {
    /// Runs one call.
    fn generate(
        &self,
        request: ModelRequest,
        sink: OutputSink,
        cancel: CancellationToken,
    ) -> ModelFuture<'_>;
}

/// The providers this worker can run, by the agent's provider.
#[derive(Clone, Default)]
pub struct Providers {
    by_name: HashMap<Provider, Arc<dyn ModelProvider>>,
}

impl Providers {
    /// The providers built into this binary: `echo` only.
    pub fn builtin(echo_token_delay: Duration) -> Self {
        let mut providers = Self::default();
        providers.register(
            Provider::Echo,
            Arc::new(echo::EchoProvider::new(echo_token_delay)),
        );
        providers
    }

    /// `echo` plus every vendor `settings` configures (a vendor whose API key is not set is
    /// not registered, so its tasks fail with `provider_not_configured`).
    pub fn from_settings(
        echo_token_delay: Duration,
        settings: &ProviderSettings,
    ) -> Result<Self, SettingsError> {
        let mut providers = Self::builtin(echo_token_delay);
        for (name, provider) in http::vendors(settings)? {
            providers.register(name, provider);
        }
        Ok(providers)
    }

    /// Adds (or replaces) the implementation of `name`.
    pub fn register(&mut self, name: Provider, provider: Arc<dyn ModelProvider>) {
        self.by_name.insert(name, provider);
    }

    /// The implementation of `name`, if this worker has one.
    pub fn get(&self, name: Provider) -> Option<Arc<dyn ModelProvider>> {
        self.by_name.get(&name).cloned()
    }
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.by_name.keys().map(|p| p.as_str()).collect();
        names.sort_unstable();
        formatter.debug_set().entries(names).finish()
    }
}

/// The idempotency id of step `step` of a task: the same for every attempt and fallback of
/// the step, so that a vendor or gateway that honours idempotency keys answers a repeated
/// step from its cache instead of charging for it again.
pub fn provider_request_id(task_id: agentplane_core::ids::TaskId, step: i32) -> String {
    format!("{task_id}-{step}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_request_ids_are_deterministic_per_task_and_step() {
        let task = agentplane_core::ids::TaskId(uuid::Uuid::from_u128(
            0x0192_0000_0000_7000_8000_0000_0000_0001,
        ));
        assert_eq!(
            provider_request_id(task, 2),
            "01920000-0000-7000-8000-000000000001-2"
        );
        assert_ne!(provider_request_id(task, 2), provider_request_id(task, 3));
    }

    #[test]
    fn made_up_tool_call_ids_are_deterministic_distinct_and_short() {
        let request_id = "01920000-0000-7000-8000-000000000001-12";
        let id = made_up_tool_call_id(request_id, 3);
        assert_eq!(id, made_up_tool_call_id(request_id, 3));
        assert!(id.starts_with("call_") && id.ends_with("_3"), "{id}");
        assert_ne!(id, made_up_tool_call_id(request_id, 4));
        assert_ne!(
            id,
            made_up_tool_call_id("01920000-0000-7000-8000-000000000001-13", 3)
        );
        assert!(made_up_tool_call_id(request_id, 999_999).len() <= 40);
    }

    #[test]
    fn the_spend_of_a_call_adds_up_its_tries() {
        let usage = |input_tokens, cost_micros| ModelUsage {
            input_tokens,
            cost_micros,
            ..ModelUsage::default()
        };
        let answer = ModelResponse {
            text: String::new(),
            finish_reason: FinishReason::Stop,
            tool_calls: Vec::new(),
            model: "m".to_owned(),
            usage: usage(3, 30),
            vendor_request_id: None,
        };
        assert_eq!(spend_of(&Ok(answer)), Some(usage(3, 30)));
        let failure = ProviderError::unavailable(Unavailability::Overloaded, "busy")
            .with_spend(usage(5, 50))
            .with_spend(ModelUsage {
                unpriced: true,
                ..usage(4, 0)
            });
        assert_eq!(
            spend_of(&Err(failure)),
            Some(ModelUsage {
                unpriced: true,
                ..usage(9, 50)
            })
        );
        assert_eq!(
            spend_of(&Err(
                ProviderError::Canceled { spent: None }.with_spend(usage(1, 1))
            )),
            Some(usage(1, 1)),
            "a canceled call is metered too"
        );
        assert_eq!(
            spend_of(&Err(ProviderError::rejected(Rejection::NotFound, "no"))),
            None
        );
    }

    #[test]
    fn only_the_configured_vendors_are_registered() {
        let settings = ProviderSettings {
            gemini: Endpoint::public(Provider::Gemini, secrecy::SecretString::from("AIza-key")),
            openai_compatible: Some(Endpoint {
                base_url: "http://127.0.0.1:11434/v1".to_owned(),
                api_key: None,
            }),
            ..ProviderSettings::default()
        };
        let providers = Providers::from_settings(Duration::ZERO, &settings).expect("valid");
        let registered: Vec<Provider> = Provider::ALL
            .iter()
            .copied()
            .filter(|p| providers.get(*p).is_some())
            .collect();
        assert_eq!(
            registered,
            [Provider::Echo, Provider::Gemini, Provider::OpenAiCompatible]
        );
        let keyless_vendor = ProviderSettings {
            anthropic: Some(Endpoint {
                base_url: "https://api.anthropic.com".to_owned(),
                api_key: None,
            }),
            ..ProviderSettings::default()
        };
        assert!(Providers::from_settings(Duration::ZERO, &keyless_vendor).is_err());
    }

    #[test]
    fn builtin_providers_include_echo() {
        let providers = Providers::builtin(Duration::ZERO);
        assert!(providers.get(Provider::Echo).is_some());
        assert!(Providers::default().get(Provider::Echo).is_none());
    }
}
