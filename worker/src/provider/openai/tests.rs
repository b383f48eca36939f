use super::*;
use crate::provider::{ChatMessage, Generation, made_up_tool_call_id};

fn sse(data: &str) -> Sse {
    Sse {
        data: Some(data.to_owned()),
        ..Sse::default()
    }
}

fn request() -> ModelRequest {
    ModelRequest {
        request_id: "t-1-0".to_owned(),
        model: "gpt-4o-mini".to_owned(),
        system: Some("Be brief.".to_owned()),
        messages: vec![ChatMessage::text(ChatRole::User, "hi".to_owned())],
        tools: Vec::new(),
        generation: Generation {
            temperature: None,
            top_p: Some(0.9),
            max_output_tokens: None,
            stop_sequences: vec![],
        },
        deadline: None,
    }
}

#[test]
fn the_system_prompt_leads_and_the_token_limit_field_depends_on_the_server() {
    let official = OpenAi::official().body(&request());
    assert_eq!(
        official,
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"}
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_completion_tokens": 4096,
            "top_p": 0.9
        })
    );
    let compatible = OpenAi::compatible().body(&request());
    assert_eq!(compatible["max_tokens"], json!(4096));
    assert!(compatible.get("max_completion_tokens").is_none());
}

#[test]
fn usage_comes_from_the_last_chunk_with_cached_and_reasoning_tokens() {
    let mut decoder = Box::new(Decoder::default());
    let first = decoder
        .event(&sse(r#"{"id":"chatcmpl-1","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}],"usage":null}"#))
        .expect("valid");
    assert_eq!(first.text.as_deref(), Some("Hi"));
    decoder
        .event(&sse(
            r#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#,
        ))
        .expect("valid");
    decoder
        .event(&sse(r#"{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":50,"completion_tokens":9,"total_tokens":59,"prompt_tokens_details":{"cached_tokens":32},"completion_tokens_details":{"reasoning_tokens":4}}}"#))
        .expect("valid");
    assert!(decoder.event(&sse("[DONE]")).expect("valid").done);
    let finished = decoder.finish().expect("complete");
    assert_eq!(finished.finish_reason, FinishReason::MaxTokens);
    assert_eq!(finished.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    assert_eq!(
        (
            finished.usage.input_tokens,
            finished.usage.cache_read_input_tokens,
            finished.usage.output_tokens,
            finished.usage.reasoning_tokens,
        ),
        (50, 32, 9, 4)
    );
}

#[test]
fn errors_read_every_shape_and_quota_is_permanent() {
    let wire = OpenAi::official();
    let quota = wire.error(
        StatusCode::TOO_MANY_REQUESTS,
        br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
    );
    assert!(!quota.is_retryable());
    let limited = wire.error(
        StatusCode::TOO_MANY_REQUESTS,
        br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
    );
    assert_eq!(limited.code(), "provider_rate_limited");
    let long = wire.error(
        StatusCode::BAD_REQUEST,
        br#"{"error":{"message":"This model's maximum context length is 128000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
    );
    assert_eq!(long.code(), "provider_context_too_long");
    let detail = wire.error(
        StatusCode::NOT_FOUND,
        br#"{"detail":"model llama3 not found"}"#,
    );
    assert_eq!(detail.code(), "provider_model_not_found");
    assert!(detail.to_string().contains("llama3 not found"));
    let mut decoder = Decoder::default();
    let in_stream = decoder
        .event(&sse(
            r#"{"error":{"message":"The server had an error","type":"server_error"}}"#,
        ))
        .expect_err("an error chunk");
    assert!(in_stream.is_retryable());
}

#[test]
fn a_stream_without_done_is_truncated_and_content_filter_is_refused() {
    let mut decoder = Box::new(Decoder::default());
    decoder
        .event(&sse(
            r#"{"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}"#,
        ))
        .expect("valid");
    assert_eq!(
        decoder.finish().expect_err("no [DONE]").code(),
        "provider_stream_truncated"
    );
    let mut decoder = Box::new(Decoder::default());
    decoder
        .event(&sse(
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"content_filter"}]}"#,
        ))
        .expect("valid");
    decoder.event(&sse("[DONE]")).expect("valid");
    assert_eq!(
        decoder.finish().expect_err("filtered").code(),
        "provider_content_refused"
    );
}

#[test]
fn calls_without_index_or_id_from_compatible_servers_are_kept_apart_and_named() {
    // Some compatible servers send each call whole, without index or id, and finish "stop"
    // (the engine turns a "stop" with calls into tool_calls), and repeat the name.
    let mut decoder = Box::new(Decoder {
        request_id: "t-1-3".to_owned(),
        ..Decoder::default()
    });
    for data in [
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"function":{"name":"add","arguments":"{\"a\":1}"}},{"function":{"name":"add","arguments":"{\"a\":2}"}}]}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":2,"id":"call_x","function":{"name":"lookup","arguments":"{\"q\":"}}]}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":2,"function":{"name":"lookup","arguments":"\"x\"}"}}]}}]}"#,
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":6}}"#,
    ] {
        decoder.event(&sse(data)).expect("valid");
    }
    assert_eq!(decoder.usage().map(|u| u.output_tokens), Some(6));
    decoder.event(&sse("[DONE]")).expect("valid");
    let finished = decoder.finish().expect("complete");
    assert_eq!(finished.finish_reason, FinishReason::Stop);
    let calls: Vec<(String, &str, &str)> = finished
        .tool_calls
        .iter()
        .map(|c| (c.id.clone(), c.name.as_str(), c.arguments.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            (made_up_tool_call_id("t-1-3", 0), "add", r#"{"a":1}"#),
            (made_up_tool_call_id("t-1-3", 1), "add", r#"{"a":2}"#),
            ("call_x".to_owned(), "lookup", r#"{"q":"x"}"#),
        ]
    );
}

#[test]
fn a_call_without_arguments_reads_as_the_empty_object() {
    let mut decoder = Box::new(Decoder::default());
    decoder
        .event(&sse(r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"now","arguments":""}}]},"finish_reason":"tool_calls"}]}"#))
        .expect("valid");
    decoder.event(&sse("[DONE]")).expect("valid");
    let finished = decoder.finish().expect("complete");
    assert_eq!(finished.finish_reason, FinishReason::ToolCalls);
    assert_eq!(finished.tool_calls[0].arguments, "{}");
}
