use super::*;
use crate::provider::{ChatMessage, Generation};

fn sse(data: &str) -> Sse {
    Sse {
        data: Some(data.to_owned()),
        ..Sse::default()
    }
}

fn request(model: &str) -> ModelRequest {
    ModelRequest {
        request_id: "t-1-0".to_owned(),
        model: model.to_owned(),
        system: Some("Be brief.".to_owned()),
        messages: vec![
            ChatMessage::text(ChatRole::User, "hi".to_owned()),
            ChatMessage::text(ChatRole::Assistant, "hello".to_owned()),
        ],
        tools: Vec::new(),
        generation: Generation {
            temperature: Some(0.2),
            top_p: None,
            max_output_tokens: Some(64),
            stop_sequences: vec!["END".to_owned()],
        },
        deadline: None,
    }
}

#[test]
fn requests_use_contents_system_instruction_and_a_keyless_url() {
    let endpoint = Endpoint {
        base_url: "https://example.test".to_owned(),
        api_key: Some(secrecy::SecretString::from("AIza-secret")),
    };
    let wire = Gemini
        .request(&request("gemini-2.5-flash"), &endpoint)
        .expect("valid");
    assert_eq!(
        wire.path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert!(!wire.path.contains("AIza"));
    assert!(
        wire.headers
            .get("x-goog-api-key")
            .is_some_and(|v| v.is_sensitive())
    );
    assert_eq!(
        wire.body,
        json!({
            "contents": [
                {"role": "user", "parts": [{"text": "hi"}]},
                {"role": "model", "parts": [{"text": "hello"}]}
            ],
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "generationConfig": {
                "maxOutputTokens": 64,
                "temperature": 0.2,
                "stopSequences": ["END"]
            }
        })
    );
    let bad = Gemini.request(&request("../v1/files?x"), &endpoint);
    assert!(matches!(bad, Err(ProviderError::Rejected { .. })));
}

#[test]
fn thoughts_are_output_but_not_text_and_cached_content_is_input() {
    let mut decoder = Box::new(Decoder::default());
    let first = decoder
        .event(&sse(r#"{"candidates":[{"content":{"parts":[{"text":"plan","thought":true},{"text":"Hel"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":40,"candidatesTokenCount":1,"totalTokenCount":41}}"#))
        .expect("valid");
    assert_eq!(first.text.as_deref(), Some("Hel"));
    decoder
        .event(&sse(r#"{"candidates":[{"content":{"parts":[{"text":"lo"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":40,"candidatesTokenCount":2,"cachedContentTokenCount":16,"thoughtsTokenCount":5,"totalTokenCount":47},"modelVersion":"gemini-2.5-flash","responseId":"resp-1"}"#))
        .expect("valid");
    let finished = decoder.finish().expect("complete");
    assert_eq!(finished.finish_reason, FinishReason::Stop);
    assert_eq!(finished.response_id.as_deref(), Some("resp-1"));
    assert_eq!(
        (
            finished.usage.input_tokens,
            finished.usage.cache_read_input_tokens,
            finished.usage.output_tokens,
            finished.usage.reasoning_tokens,
        ),
        (40, 16, 7, 5)
    );
}

#[test]
fn errors_read_googles_shape_with_retry_info() {
    let limited = Gemini.error(
        StatusCode::TOO_MANY_REQUESTS,
        br#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"7s"}]}}"#,
    );
    assert_eq!(limited.code(), "provider_rate_limited");
    assert_eq!(
        limited.retry_after(),
        Some(std::time::Duration::from_secs(7))
    );
    let bad_key = Gemini.error(
        StatusCode::BAD_REQUEST,
        br#"[{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}]"#,
    );
    assert_eq!(bad_key.code(), "provider_authentication_failed");
    let blocked = {
        let mut decoder = Box::new(Decoder::default());
        decoder
            .event(&sse(r#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":5}}"#))
            .expect("valid");
        decoder.finish().expect_err("blocked")
    };
    assert_eq!(blocked.code(), "provider_content_refused");
    let truncated = Box::new(Decoder::default())
        .finish()
        .expect_err("no finish");
    assert_eq!(truncated.code(), "provider_stream_truncated");
}

#[test]
fn function_calls_without_ids_get_ids_from_the_request_and_stop_means_calls() {
    let mut decoder = Box::new(Decoder {
        request_id: "t-9-2".to_owned(),
        ..Decoder::default()
    });
    decoder
        .event(&sse(r#"{"candidates":[{"content":{"parts":[{"text":"Looking."},{"functionCall":{"name":"get_weather","args":{"city":"Paris"}}}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":12}}"#))
        .expect("valid");
    assert_eq!(decoder.usage().map(|u| u.input_tokens), Some(12));
    decoder
        .event(&sse(r#"{"candidates":[{"content":{"parts":[{"functionCall":{"id":"fc-7","name":"now"}}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":9}}"#))
        .expect("valid");
    let finished = decoder.finish().expect("complete");
    // The engine turns STOP with calls into tool_calls.
    assert_eq!(finished.finish_reason, FinishReason::Stop);
    let calls: Vec<(String, &str, &str)> = finished
        .tool_calls
        .iter()
        .map(|c| (c.id.clone(), c.name.as_str(), c.arguments.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            (
                crate::provider::made_up_tool_call_id("t-9-2", 0),
                "get_weather",
                r#"{"city":"Paris"}"#
            ),
            ("fc-7".to_owned(), "now", "{}"),
        ]
    );
}

#[test]
fn a_malformed_function_call_is_retryable_and_signatures_go_to_newer_models() {
    let mut decoder = Box::new(Decoder::default());
    decoder
        .event(&sse(
            r#"{"candidates":[{"finishReason":"MALFORMED_FUNCTION_CALL","index":0}]}"#,
        ))
        .expect("valid");
    let error = decoder.finish().expect_err("malformed");
    assert!(error.is_retryable(), "{error}");
    assert!(!wants_thought_signatures("gemini-2.5-flash"));
    assert!(!wants_thought_signatures("gemini-1.5-pro"));
    assert!(wants_thought_signatures("gemini-3-pro-preview"));
    assert!(wants_thought_signatures("gemini-flash-latest"));
}
