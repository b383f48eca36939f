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
