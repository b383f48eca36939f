//! The built-in offline provider: answers deterministically from the input, token by token,
//! with realistic usage counts. It needs no network and no API key, so demos and tests run
//! anywhere.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{
    ChatRole, FinishReason, ModelFuture, ModelProvider, ModelRequest, ModelResponse, ModelUsage,
    OutputSink, ProviderError,
};

/// Tokens of framing counted per prompt message, on top of its text.
const MESSAGE_OVERHEAD_TOKENS: i64 = 4;

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
                    () = cancel.cancelled() => return Err(ProviderError::Canceled),
                    () = tokio::time::sleep(self.token_delay) => {}
                }
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(ProviderError::Canceled),
                sent = sink.send(piece.clone()) => sent.map_err(|_| ProviderError::Canceled)?,
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
}

impl EchoPlan {
    fn new(request: &ModelRequest) -> Self {
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
        }
    }

    fn into_response(self, model: String, input_tokens: i64) -> ModelResponse {
        let output_tokens = i64::try_from(self.pieces.len()).unwrap_or(i64::MAX);
        ModelResponse {
            text: self.pieces.concat(),
            finish_reason: self.finish_reason,
            tool_calls: Vec::new(),
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

/// The full answer before limits: the last user message, repeated back.
fn answer(request: &ModelRequest) -> String {
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
        .chain(
            request
                .messages
                .iter()
                .map(|message| message.content.as_str()),
        )
        .map(|text| {
            let tokens = text.chars().count().div_ceil(4);
            i64::try_from(tokens)
                .unwrap_or(i64::MAX)
                .saturating_add(MESSAGE_OVERHEAD_TOKENS)
        })
        .fold(0i64, i64::saturating_add)
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::provider::{ChatMessage, Generation};

    fn request(messages: &[(ChatRole, &str)], generation: Generation) -> ModelRequest {
        ModelRequest {
            request_id: "task-1-0".to_owned(),
            model: "echo-1".to_owned(),
            system: Some("Be brief.".to_owned()),
            messages: messages
                .iter()
                .map(|(role, content)| ChatMessage::text(*role, (*content).to_owned()))
                .collect(),
            tools: Vec::new(),
            generation,
            deadline: None,
        }
    }

    async fn generate(request: ModelRequest) -> (Vec<String>, ModelResponse) {
        let (sink, mut pieces) = mpsc::channel(1024);
        let provider = EchoProvider::new(Duration::ZERO);
        let response = provider
            .generate(request, sink, CancellationToken::new())
            .await
            .expect("echo answers");
        let mut received = Vec::new();
        while let Some(piece) = pieces.recv().await {
            received.push(piece);
        }
        (received, response)
    }

    #[tokio::test]
    async fn echoes_the_last_user_message_piece_by_piece() {
        let request = request(
            &[
                (ChatRole::User, "first"),
                (ChatRole::Assistant, "ok"),
                (ChatRole::User, "  hello   big\nworld "),
            ],
            Generation::default(),
        );
        let (pieces, response) = generate(request).await;
        assert_eq!(
            pieces,
            ["You", " said:", " hello", "   big", "\nworld"],
            "whitespace stays with the following word"
        );
        assert_eq!(response.text, "You said: hello   big\nworld");
        assert_eq!(response.finish_reason, FinishReason::Stop);
        assert_eq!(response.model, "echo-1");
    }

    #[tokio::test]
    async fn is_deterministic() {
        let make = || {
            request(
                &[(ChatRole::User, "the same input twice")],
                Generation::default(),
            )
        };
        let (first_pieces, first) = generate(make()).await;
        let (second_pieces, second) = generate(make()).await;
        assert_eq!(first_pieces, second_pieces);
        assert_eq!(first, second);
    }

    #[tokio::test]
    async fn counts_usage_from_prompt_and_emitted_pieces() {
        // system "Be brief." = 9 chars -> 3 + 4; "abcdefgh" = 8 chars -> 2 + 4;
        // "hi" = 2 chars -> 1 + 4.
        let request = request(
            &[(ChatRole::Assistant, "abcdefgh"), (ChatRole::User, "hi")],
            Generation::default(),
        );
        let (pieces, response) = generate(request).await;
        assert_eq!(response.usage.input_tokens, 7 + 6 + 5);
        assert_eq!(response.usage.output_tokens, 3);
        assert_eq!(pieces.len(), 3);
        assert_eq!(response.usage.cost_micros, 0);
    }

    #[tokio::test]
    async fn truncates_at_max_output_tokens() {
        let generation = Generation {
            max_output_tokens: Some(3),
            ..Generation::default()
        };
        let request = request(&[(ChatRole::User, "one two three four")], generation);
        let (pieces, response) = generate(request).await;
        assert_eq!(pieces, ["You", " said:", " one"]);
        assert_eq!(response.text, "You said: one");
        assert_eq!(response.finish_reason, FinishReason::MaxTokens);
        assert_eq!(response.usage.output_tokens, 3);
    }

    #[tokio::test]
    async fn exactly_max_output_tokens_finishes_with_stop() {
        let generation = Generation {
            max_output_tokens: Some(3),
            ..Generation::default()
        };
        let request = request(&[(ChatRole::User, "one")], generation);
        let (_, response) = generate(request).await;
        assert_eq!(response.finish_reason, FinishReason::Stop);
    }

    #[tokio::test]
    async fn cuts_at_the_earliest_stop_sequence() {
        let generation = Generation {
            stop_sequences: vec!["\n\n".to_owned(), "STOP".to_owned(), String::new()],
            ..Generation::default()
        };
        let request = request(
            &[(ChatRole::User, "keep this STOP not this\n\nnor this")],
            generation,
        );
        let (pieces, response) = generate(request).await;
        assert_eq!(response.text, "You said: keep this ");
        assert_eq!(pieces.concat(), response.text);
        assert_eq!(response.finish_reason, FinishReason::Stop);
        assert_eq!(response.usage.output_tokens, 5);
    }

    #[tokio::test]
    async fn answers_without_a_user_message() {
        let request = request(&[(ChatRole::User, "   ")], Generation::default());
        let (_, response) = generate(request).await;
        assert_eq!(response.text, "You said nothing.");
    }

    #[tokio::test]
    async fn stops_when_canceled() {
        let (sink, mut pieces) = mpsc::channel(1024);
        let provider = EchoProvider::new(Duration::from_secs(60));
        let cancel = CancellationToken::new();
        let request = request(&[(ChatRole::User, "a b c")], Generation::default());
        let call = provider.generate(request, sink, cancel.clone());
        let canceler = async {
            assert_eq!(pieces.recv().await.as_deref(), Some("You"));
            cancel.cancel();
        };
        let (result, ()) = tokio::join!(call, canceler);
        assert!(matches!(result, Err(ProviderError::Canceled)));
    }

    #[test]
    fn splitting_keeps_every_character() {
        for text in [
            "",
            " ",
            "a",
            " lead",
            "trail ",
            "a  b\t\nc",
            "ünïcödé wörds",
        ] {
            assert_eq!(split_pieces(text).collect::<String>(), text);
        }
        assert_eq!(split_pieces("trail ").collect::<Vec<_>>(), ["trail", " "]);
    }
}
