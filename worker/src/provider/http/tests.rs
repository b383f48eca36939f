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
