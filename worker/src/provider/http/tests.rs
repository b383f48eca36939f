//! Tests of the engine's pure parts and of every decoder against arbitrary input.

use proptest::prelude::*;

use reqwest::StatusCode;

use super::scrub::{MAX_MESSAGE_CHARS, scrub};
use super::*;
use crate::provider::FinishReason;
use crate::provider::fuzzing::{Vendor, decode};
use secrecy::SecretString;

const OPENAI_STREAM: &str = "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hé\"},\"finish_reason\":null}]}\r\n\r\n: ping\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"llo ✓\"},\"finish_reason\":\"stop\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";

proptest! {
    /// Bytes from the network never panic a decoder, however they are cut.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        chunk in 1usize..64,
    ) {
        for vendor in Vendor::ALL {
            let _ = decode(vendor, &bytes, &[chunk]);
        }
    }

    /// Event-shaped noise (valid SSE, arbitrary JSON-ish data) never panics either.
    #[test]
    fn arbitrary_events_never_panic(
        datas in proptest::collection::vec("[ -~]{0,80}", 0..12),
        chunk in 1usize..64,
    ) {
        let text: String = datas.iter().map(|d| format!("event: x\ndata: {d}\n\n")).collect();
        for vendor in Vendor::ALL {
            let _ = decode(vendor, text.as_bytes(), &[chunk]);
        }
    }

    /// However a stream is cut (inside lines, inside UTF-8 characters), it decodes alike.
    #[test]
    fn splitting_a_stream_anywhere_changes_nothing(chunk in 1usize..200) {
        let decoding = decode(Vendor::OpenAi, OPENAI_STREAM.as_bytes(), &[chunk]);
        prop_assert_eq!(&decoding.text, "Héllo ✓");
        prop_assert_eq!(decoding.usage.map(|u| u.input_tokens), Some(3));
        let answer = decoding.outcome.expect("a complete stream");
        prop_assert_eq!(answer.finish_reason, FinishReason::Stop);
    }
}

#[test]
fn statuses_map_to_the_documented_kinds() {
    let code = |status: u16| {
        by_status(
            StatusCode::from_u16(status).expect("a status"),
            String::new(),
        )
        .code()
    };
    assert_eq!(code(400), "provider_invalid_request");
    assert_eq!(code(401), "provider_authentication_failed");
    assert_eq!(code(403), "provider_permission_denied");
    assert_eq!(code(404), "provider_model_not_found");
    assert_eq!(code(408), "provider_timeout");
    assert_eq!(code(429), "provider_rate_limited");
    assert_eq!(code(500), "provider_server_error");
    assert_eq!(code(503), "provider_overloaded");
    assert_eq!(code(529), "provider_overloaded");
    assert_eq!(code(302), "provider_unexpected_response");
    for retryable in [408, 409, 429, 500, 502, 503, 504, 529] {
        let status = StatusCode::from_u16(retryable).expect("a status");
        assert!(
            by_status(status, String::new()).is_retryable(),
            "{retryable}"
        );
    }
    for permanent in [400, 401, 403, 404, 413, 422] {
        let status = StatusCode::from_u16(permanent).expect("a status");
        assert!(
            !by_status(status, String::new()).is_retryable(),
            "{permanent}"
        );
    }
}

#[test]
fn scrubbing_removes_keys_and_their_masked_forms() {
    let key = SecretString::from("sk-proj-abcdefgh12345678ZYXWVUTS");
    let message = "Incorrect API key provided: sk-proj-****VUTS and sk-proj-abcdefgh12345678ZYXWVUTS, also sk-proj-a…ZYXWVUTS";
    let clean = scrub(message, Some(&key));
    assert!(!clean.contains("abcdefgh12345678"), "{clean}");
    assert!(!clean.contains("ZYXWVUTS"), "{clean}");
    assert!(clean.starts_with("Incorrect API key provided"));
    let long = "x".repeat(5000);
    assert!(scrub(&long, None).chars().count() <= MAX_MESSAGE_CHARS + 1);
}

#[test]
fn request_ids_are_kept_only_when_plausible() {
    assert_eq!(clean_request_id(" req_123 ").as_deref(), Some("req_123"));
    assert_eq!(clean_request_id("two words"), None);
    assert_eq!(clean_request_id(&"x".repeat(201)), None);
    assert_eq!(clean_request_id(""), None);
}

#[test]
fn finish_reasons_are_reconciled_with_the_tool_calls() {
    use super::answer::settle;
    use crate::provider::ToolCall;
    let call = ToolCall {
        id: "c1".to_owned(),
        name: "add".to_owned(),
        arguments: "{}".to_owned(),
    };
    let calls = || vec![call.clone()];
    // Calls after "stop" are calls (Gemini, some compatible servers).
    assert_eq!(
        settle(FinishReason::Stop, calls()).expect("valid"),
        (FinishReason::ToolCalls, calls())
    );
    assert_eq!(
        settle(FinishReason::ToolCalls, calls()).expect("valid"),
        (FinishReason::ToolCalls, calls())
    );
    // Calls cut by the token limit are dropped.
    assert_eq!(
        settle(FinishReason::MaxTokens, calls()).expect("valid"),
        (FinishReason::MaxTokens, vec![])
    );
    assert_eq!(
        settle(FinishReason::Stop, vec![]).expect("valid"),
        (FinishReason::Stop, vec![])
    );
    let none = settle(FinishReason::ToolCalls, vec![]).expect_err("no call");
    assert_eq!(none.code(), "provider_unexpected_response");
}

#[test]
fn tool_call_streams_decode_alike_however_they_are_cut() {
    // An OpenAI stream with two calls whose fragments interleave, cut everywhere.
    let stream = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"On it\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"type\":\"function\",\"function\":{\"name\":\"add\",\"arguments\":\"{\\\"a\\\":\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\\\"Zürich\\\"}\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"arguments\":\"1}\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4}}\n\n",
        "data: [DONE]\n\n",
    );
    let whole = decode(Vendor::OpenAi, stream.as_bytes(), &[]);
    let answer = whole.outcome.clone().expect("complete");
    assert_eq!(whole.text, "On it");
    assert_eq!(answer.finish_reason, FinishReason::ToolCalls);
    let calls: Vec<(&str, &str, &str)> = answer
        .tool_calls
        .iter()
        .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("call_a", "get_weather", "{\"city\":\"Zürich\"}"),
            ("call_b", "add", "{\"a\":1}")
        ]
    );
    for chunk in 1..40 {
        assert_eq!(decode(Vendor::OpenAi, stream.as_bytes(), &[chunk]), whole);
    }
}
