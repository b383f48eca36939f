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
        body(&request).expect("valid"),
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

#[test]
fn tool_use_blocks_gather_their_input_json_deltas_by_index() {
    let mut decoder = Box::new(Decoder::default());
    let mut text = String::new();
    for data in [
        r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-x","usage":{"input_tokens":30,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Checking."}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{}}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"city\": \"Pa"}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"ris\"}"}}"#,
        r#"{"type":"content_block_stop","index":1}"#,
        r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_2","name":"now","input":{}}}"#,
        r#"{"type":"content_block_stop","index":2}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":40}}"#,
    ] {
        let decoded = decoder.event(&sse(data)).expect("valid");
        text.push_str(decoded.text.as_deref().unwrap_or_default());
    }
    assert_eq!(text, "Checking.");
    assert_eq!(decoder.usage().map(|u| u.output_tokens), Some(40));
    decoder
        .event(&sse(r#"{"type":"message_stop"}"#))
        .expect("valid");
    let finished = decoder.finish().expect("complete");
    assert_eq!(finished.finish_reason, FinishReason::ToolCalls);
    let calls: Vec<(&str, &str, &str)> = finished
        .tool_calls
        .iter()
        .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("toolu_1", "get_weather", r#"{"city": "Paris"}"#),
            ("toolu_2", "now", "{}")
        ]
    );
}

#[test]
fn usage_is_known_from_message_start_and_a_stray_delta_is_malformed() {
    let mut decoder = Decoder::default();
    assert_eq!(decoder.usage(), None);
    decoder
        .event(&sse(r#"{"type":"message_start","message":{"usage":{"input_tokens":7,"cache_read_input_tokens":3,"output_tokens":1}}}"#))
        .expect("valid");
    let usage = decoder.usage().expect("reported");
    assert_eq!((usage.input_tokens, usage.output_tokens), (10, 1));
    let stray = decoder
        .event(&sse(r#"{"type":"content_block_delta","index":4,"delta":{"type":"input_json_delta","partial_json":"{"}}"#))
        .expect_err("no such block");
    assert_eq!(stray.code(), "provider_malformed_stream");
}

#[test]
fn history_arguments_that_are_not_an_object_are_refused() {
    let mut request = ModelRequest {
        request_id: "t-1-0".to_owned(),
        model: "claude-sonnet-4-5".to_owned(),
        system: None,
        messages: vec![ChatMessage {
            role: ChatRole::Assistant,
            content: String::new(),
            tool_calls: vec![ToolCall {
                id: "toolu_1".to_owned(),
                name: "add".to_owned(),
                arguments: "[1, 2]".to_owned(),
            }],
            tool_outputs: Vec::new(),
        }],
        tools: Vec::new(),
        generation: Generation::default(),
        deadline: None,
    };
    let error = body(&request).expect_err("not an object");
    assert_eq!(error.code(), "provider_invalid_request");
    request.messages[0].tool_calls[0].arguments = String::new();
    let sent = body(&request).expect("no arguments is the empty object");
    assert_eq!(sent["messages"][0]["content"][0]["input"], json!({}));
}
