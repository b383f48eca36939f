use tokio::sync::mpsc;

use super::*;
use crate::provider::{ChatMessage, Generation, ToolOutput, ToolSpec};

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
    assert!(matches!(result, Err(ProviderError::Canceled { .. })));
}

fn with_tools(mut request: ModelRequest) -> ModelRequest {
    request.tools = ["lookup", "add"]
        .map(|name| ToolSpec {
            name: name.to_owned(),
            description: String::new(),
            parameters: serde_json::json!({"type": "object"}),
        })
        .to_vec();
    request
}

#[tokio::test]
async fn a_tool_command_calls_the_declared_tool_without_text() {
    let request = with_tools(request(
        &[(ChatRole::User, "/tool lookup {\"q\": \"rust sse\"}")],
        Generation::default(),
    ));
    let (pieces, response) = generate(request.clone()).await;
    assert!(pieces.is_empty(), "no text is streamed: {pieces:?}");
    assert_eq!(response.text, "");
    assert_eq!(response.finish_reason, FinishReason::ToolCalls);
    assert_eq!(
        response.tool_calls,
        [ToolCall {
            id: made_up_tool_call_id("task-1-0", 0),
            name: "lookup".to_owned(),
            arguments: "{\"q\": \"rust sse\"}".to_owned(),
        }]
    );
    assert!(response.usage.output_tokens > 0);
    let (_, again) = generate(request).await;
    assert_eq!(again, response, "deterministic, ids included");

    let (_, bare) = generate(with_tools(request_of(&[(ChatRole::User, "/tool add")]))).await;
    assert_eq!(bare.tool_calls[0].arguments, "{}");
}

fn request_of(messages: &[(ChatRole, &str)]) -> ModelRequest {
    request(messages, Generation::default())
}

#[tokio::test]
async fn a_tool_command_is_echoed_when_it_cannot_be_a_call() {
    for (tools, text) in [
        (false, "/tool lookup {}"),
        (true, "/tool unknown {}"),
        (true, "/tool lookup {not json"),
    ] {
        let mut request = request_of(&[(ChatRole::User, text)]);
        if tools {
            request = with_tools(request);
        }
        let (_, response) = generate(request).await;
        assert_eq!(response.finish_reason, FinishReason::Stop, "{text}");
        assert!(response.tool_calls.is_empty());
        assert_eq!(response.text, format!("You said: {text}"));
    }
    // Only the last message counts.
    let request = with_tools(request_of(&[
        (ChatRole::User, "/tool lookup {}"),
        (ChatRole::Assistant, "ok"),
    ]));
    let (_, response) = generate(request).await;
    assert_eq!(response.finish_reason, FinishReason::Stop);
}

#[tokio::test]
async fn tool_outputs_are_answered_line_by_line_token_by_token() {
    let mut request = with_tools(request_of(&[(ChatRole::User, "/tool lookup {}")]));
    let call = |id: &str, name: &str| ToolCall {
        id: id.to_owned(),
        name: name.to_owned(),
        arguments: "{}".to_owned(),
    };
    request.messages.push(ChatMessage {
        role: ChatRole::Assistant,
        content: String::new(),
        tool_calls: vec![call("c1", "lookup"), call("c2", "add")],
        tool_outputs: Vec::new(),
    });
    let output = |call_id: &str, name: &str, text: &str| ToolOutput {
        call_id: call_id.to_owned(),
        name: name.to_owned(),
        output: text.to_owned(),
        is_error: false,
    };
    request.messages.push(ChatMessage {
        role: ChatRole::Tool,
        content: String::new(),
        tool_calls: Vec::new(),
        tool_outputs: vec![output("c1", "lookup", "two hits"), output("c2", "add", "5")],
    });
    let (pieces, response) = generate(request).await;
    assert_eq!(response.text, "lookup returned: two hits\nadd returned: 5");
    assert_eq!(pieces.concat(), response.text);
    assert_eq!(pieces.len(), 7, "{pieces:?}");
    assert_eq!(response.finish_reason, FinishReason::Stop);
    assert!(response.tool_calls.is_empty());
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
