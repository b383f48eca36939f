//! The built-in offline provider: answers deterministically from the input, token by token,
//! with realistic usage counts. It needs no network and no API key, so demos and tests run
//! anywhere.
//!
//! It calls tools on request, so the tool round trip can be shown and tested offline: when
//! the agent has tools and the last message is a user message `/tool <name> <arguments
//! JSON>` naming one of them, echo answers with that call (no text). When the last message
//! carries tool outputs, it answers `<name> returned: <output>`, a line per output.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{
    ChatRole, FinishReason, ModelFuture, ModelProvider, ModelRequest, ModelResponse, ModelUsage,
    OutputSink, ProviderError, ToolCall, made_up_tool_call_id,
};

/// Tokens of framing counted per prompt message, on top of its text.
const MESSAGE_OVERHEAD_TOKENS: i64 = 4;
/// What a user message starts with to make echo call a tool.
const TOOL_COMMAND: &str = "/tool ";

/// Repeats the last user message back, one word-ish piece at a time.
#[derive(Debug, Clone)]
pub struct EchoProvider {
    token_delay: Duration,
}

impl EchoProvider {
    /// An echo provider that pauses `token_delay` between two pieces.
    pub fn new(token_delay: Duration) -> Self {
        Self { token_delay }
    }

    async fn run(
        &self,
        request: ModelRequest,
        sink: OutputSink,
        cancel: CancellationToken,
    ) -> Result<ModelResponse, ProviderError> {
        let plan = EchoPlan::new(&request);
        let input_tokens = estimate_input_tokens(&request);
        for (position, piece) in plan.pieces.iter().enumerate() {
            if position > 0 && !self.token_delay.is_zero() {
                tokio::select! {
                    () = cancel.cancelled() => return Err(ProviderError::Canceled { spent: None }),
                    () = tokio::time::sleep(self.token_delay) => {}
                }
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(ProviderError::Canceled { spent: None }),
                sent = sink.send(piece.clone()) => sent.map_err(|_| ProviderError::Canceled { spent: None })?,
            }
        }
        Ok(plan.into_response(request.model, input_tokens))
    }
}

impl ModelProvider for EchoProvider {
    fn generate(
        &self,
        request: ModelRequest,
        sink: OutputSink,
        cancel: CancellationToken,
    ) -> ModelFuture<'_> {
        Box::pin(self.run(request, sink, cancel))
    }
}

/// What the echo provider will emit for a request, worked out before the first piece.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EchoPlan {
    pieces: Vec<String>,
    finish_reason: FinishReason,
    tool_calls: Vec<ToolCall>,
}

impl EchoPlan {
    fn new(request: &ModelRequest) -> Self {
        if let Some(call) = tool_call(request) {
            return Self {
                pieces: Vec::new(),
                finish_reason: FinishReason::ToolCalls,
                tool_calls: vec![call],
            };
        }
        let answer = answer(request);
        let answer = cut_at_stop_sequence(&answer, &request.generation.stop_sequences);
        let mut pieces: Vec<String> = split_pieces(answer).map(str::to_owned).collect();
        let limit =
            usize::try_from(request.generation.effective_max_output_tokens()).unwrap_or(usize::MAX);
        let finish_reason = if pieces.len() > limit {
            pieces.truncate(limit);
            FinishReason::MaxTokens
        } else {
            FinishReason::Stop
        };
        Self {
            pieces,
            finish_reason,
            tool_calls: Vec::new(),
        }
    }

    fn into_response(self, model: String, input_tokens: i64) -> ModelResponse {
        // A call costs a token for its name and one per word-ish piece of its arguments.
        let call_tokens = self
            .tool_calls
            .iter()
            .map(|call| 1 + split_pieces(&call.arguments).count())
            .sum::<usize>();
        let output_tokens =
            i64::try_from(self.pieces.len().saturating_add(call_tokens)).unwrap_or(i64::MAX);
        ModelResponse {
            text: self.pieces.concat(),
            finish_reason: self.finish_reason,
            tool_calls: self.tool_calls,
            model,
            usage: ModelUsage {
                input_tokens,
                output_tokens,
                ..ModelUsage::default()
            },
            vendor_request_id: None,
        }
    }
}

/// The tool call a `/tool <name> <arguments>` last message asks for, when the agent has a
/// tool of that name and the arguments are JSON (none means `{}`).
fn tool_call(request: &ModelRequest) -> Option<ToolCall> {
    let last = request.messages.last()?;
    if last.role != ChatRole::User {
        return None;
    }
    let command = last.content.trim_start().strip_prefix(TOOL_COMMAND)?.trim();
    let (name, arguments) = command
        .split_once(char::is_whitespace)
        .map_or((command, ""), |(name, arguments)| (name, arguments.trim()));
    let arguments = if arguments.is_empty() {
        "{}"
    } else {
        arguments
    };
    let declared = request.tools.iter().any(|tool| tool.name == name);
    let json = serde_json::from_str::<serde::de::IgnoredAny>(arguments).is_ok();
    (declared && json).then(|| ToolCall {
        id: made_up_tool_call_id(&request.request_id, 0),
        name: name.to_owned(),
        arguments: arguments.to_owned(),
    })
}

/// The full answer before limits: what the tools returned when the last message carries
/// their outputs, else the last user message, repeated back.
fn answer(request: &ModelRequest) -> String {
    if let Some(last) = request
        .messages
        .last()
        .filter(|message| message.role == ChatRole::Tool)
    {
        return last
            .tool_outputs
            .iter()
            .map(|output| format!("{} returned: {}", output.name, output.output))
            .collect::<Vec<_>>()
            .join("\n");
    }
    let last_user_message = request
        .messages
        .iter()
        .rev()
        .find(|message| message.role == ChatRole::User)
        .map(|message| message.content.trim())
        .filter(|content| !content.is_empty());
    match last_user_message {
        Some(content) => format!("You said: {content}"),
        None => "You said nothing.".to_owned(),
    }
}

/// `text` up to (not including) the earliest stop sequence found in it.
fn cut_at_stop_sequence<'a>(text: &'a str, stop_sequences: &[String]) -> &'a str {
    let cut = stop_sequences
        .iter()
        .filter(|sequence| !sequence.is_empty())
        .filter_map(|sequence| text.find(sequence.as_str()))
        .min();
    match cut {
        Some(end) => &text[..end],
        None => text,
    }
}

/// Splits text into word-ish tokens, each carrying the whitespace before it, so the pieces
/// concatenate back to the text exactly.
fn split_pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let word_start = rest
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(rest.len());
        let word_end = rest[word_start..]
            .find(char::is_whitespace)
            .map_or(rest.len(), |offset| word_start + offset);
        let (piece, tail) = rest.split_at(word_end);
        rest = tail;
        Some(piece)
    })
}

/// Prompt tokens: about one per four characters, rounded up, plus framing per message.
fn estimate_input_tokens(request: &ModelRequest) -> i64 {
    let system = request.system.as_deref().filter(|text| !text.is_empty());
    system
        .into_iter()
        .chain(request.messages.iter().flat_map(|message| {
            // A message's text, and the arguments and outputs of tools it carries.
            std::iter::once(message.content.as_str())
                .chain(
                    message
                        .tool_calls
                        .iter()
                        .map(|call| call.arguments.as_str()),
                )
                .chain(
                    message
                        .tool_outputs
                        .iter()
                        .map(|output| output.output.as_str()),
                )
        }))
        .map(|text| {
            let tokens = text.chars().count().div_ceil(4);
            i64::try_from(tokens)
                .unwrap_or(i64::MAX)
                .saturating_add(MESSAGE_OVERHEAD_TOKENS)
        })
        .fold(0i64, i64::saturating_add)
}

#[cfg(test)]
mod tests;
