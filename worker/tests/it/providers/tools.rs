//! The tool part of the conformance suite, which every vendor adapter passes against its
//! fake: streamed tool calls (after text, and two at once), a history of calls and outputs
//! encoded in the vendor's format, and the spend of a call that failed after the vendor had
//! reported usage.

use agentplane_worker::provider::{
    ChatRole, FinishReason, ModelRequest, ModelUsage, ProviderError, Rejection, ToolCall,
    made_up_tool_call_id, spend_of,
};
use serde_json::Value;

use super::conformance::{PIECES, REQUEST_ID, harness, harness_with, request, status, stream};
use super::fake::{split, whole};
use super::tool_wire::{FakeCall, REPORTED, history, tools};
use super::vendors::Vendor;

const WEATHER: FakeCall = FakeCall {
    id: "toolu_01A09q90qw90lq917835lq9",
    name: "get_weather",
    fragments: &[r#"{"ci"#, r#"ty": "Pa"#, r#"ris", "unit": "°C"}"#],
};

const ADD: FakeCall = FakeCall {
    id: "call_Add2x2",
    name: "add",
    fragments: &[r#"{"a": "#, r#"2, "#, r#""b": 2}"#],
};

fn ask_with_tools() -> ModelRequest {
    let mut request = request(&[(ChatRole::User, "Weather in Paris, and 2+2?")]);
    request.tools = tools();
    request
}

/// The call the adapter must report for `call`, the `position`th of its answer.
fn expected(vendor: Vendor, call: FakeCall, position: usize) -> ToolCall {
    let id = if vendor.names_calls() {
        call.id.to_owned()
    } else {
        made_up_tool_call_id(REQUEST_ID, position)
    };
    ToolCall {
        id,
        name: call.name.to_owned(),
        arguments: call.arguments(),
    }
}

/// The calls are the expected ones; arguments as the model wrote them where the vendor
/// streams text (Gemini sends an object, which reads back as the same JSON).
fn assert_calls(vendor: Vendor, got: &[ToolCall], want: &[ToolCall]) {
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (got, want) in got.iter().zip(want) {
        assert_eq!((&got.id, &got.name), (&want.id, &want.name));
        if vendor == Vendor::Gemini {
            let parse = |text: &str| serde_json::from_str::<Value>(text).unwrap();
            assert_eq!(parse(&got.arguments), parse(&want.arguments));
        } else {
            assert_eq!(got.arguments, want.arguments);
        }
    }
}

pub(super) async fn streams_text_then_a_tool_call(vendor: Vendor) {
    let frames = vendor.tool_answer(&["Let me ", "lö", "ok."], &[WEATHER]);
    let h = harness(vendor, vec![stream(vendor, split(&frames, 7))]).await;
    let (streamed, result) = h.call(ask_with_tools()).await;
    let response = result.expect("an answer");
    assert_eq!(
        streamed, "Let me löok.",
        "the text before the call is streamed"
    );
    assert_eq!(response.text, streamed);
    assert_eq!(response.finish_reason, FinishReason::ToolCalls);
    assert_calls(
        vendor,
        &response.tool_calls,
        &[expected(vendor, WEATHER, 0)],
    );
    assert_eq!(response.usage, vendor.expected_usage());
    let sent = &h.fake.requests()[0];
    assert_eq!(vendor.sent_tools(&sent.body), vendor.expected_tools());
}

pub(super) async fn streams_two_parallel_tool_calls(vendor: Vendor) {
    let frames = vendor.tool_answer(&[], &[WEATHER, ADD]);
    let h = harness(vendor, vec![stream(vendor, split(&frames, 11))]).await;
    let (streamed, result) = h.call(ask_with_tools()).await;
    let response = result.expect("an answer");
    assert_eq!(streamed, "");
    assert_eq!(response.text, "");
    assert_eq!(response.finish_reason, FinishReason::ToolCalls);
    assert_calls(
        vendor,
        &response.tool_calls,
        &[expected(vendor, WEATHER, 0), expected(vendor, ADD, 1)],
    );
    let ids: Vec<&str> = response.tool_calls.iter().map(|c| c.id.as_str()).collect();
    assert_ne!(ids[0], ids[1], "every call has its own id");
}

pub(super) async fn sends_tool_calls_and_outputs_in_the_history(vendor: Vendor) {
    let h = harness(
        vendor,
        vec![stream(
            vendor,
            whole(&vendor.answer(&["Sunny; ", "the adder failed."])),
        )],
    )
    .await;
    let mut request = ask_with_tools();
    request.messages = history();
    let (_, result) = h.call(request).await;
    let response = result.expect("an answer");
    assert_eq!(response.finish_reason, FinishReason::Stop);
    assert!(response.tool_calls.is_empty());
    let sent = &h.fake.requests()[0];
    assert_eq!(
        vendor.sent_history(&sent.body),
        vendor.expected_history(),
        "{}",
        sent.body
    );
    assert_eq!(vendor.sent_tools(&sent.body), vendor.expected_tools());

    // Without tools the request has no tools field at all.
    let (_, result) = h.call(request_without_tools()).await;
    result.expect("an answer");
    let sent = &h.fake.requests()[1];
    assert!(sent.body.get("tools").is_none(), "{}", sent.body);
}

fn request_without_tools() -> ModelRequest {
    request(&[(ChatRole::User, "Say hello.")])
}

pub(super) async fn arguments_that_are_not_an_object_go_back_as_the_vendor_allows(vendor: Vendor) {
    let h = harness(vendor, vec![stream(vendor, whole(&vendor.answer(PIECES)))]).await;
    let mut request = ask_with_tools();
    request.messages = history();
    request.messages[1].tool_calls[1].arguments = "[2, 2]".to_owned();
    let (_, result) = h.call(request).await;
    match vendor {
        // The arguments travel as an object: a list cannot, so the call fails for good
        // before anything is sent.
        Vendor::Anthropic | Vendor::Gemini => {
            let error = result.expect_err("refused");
            assert!(
                matches!(
                    error,
                    ProviderError::Rejected {
                        reason: Rejection::InvalidRequest,
                        ..
                    }
                ),
                "{error}"
            );
            assert!(!error.is_retryable());
            assert_eq!(h.fake.request_count(), 0);
        }
        // The arguments travel as the text the model wrote.
        Vendor::OpenAi | Vendor::OpenAiCompatible => {
            result.expect("an answer");
            let sent = &h.fake.requests()[0];
            assert_eq!(
                sent.body["messages"][2]["tool_calls"][1]["function"]["arguments"],
                "[2, 2]"
            );
        }
    }
}

pub(super) async fn a_failed_call_after_usage_exposes_its_spend(vendor: Vendor) {
    let times = |n: i64| ModelUsage {
        input_tokens: REPORTED.input_tokens * n,
        output_tokens: REPORTED.output_tokens * n,
        cost_micros: REPORTED.cost_micros * n,
        ..REPORTED
    };

    // No retries: the failure carries what the try consumed, priced.
    let h = harness_with(
        vendor,
        vec![stream(vendor, whole(&vendor.usage_then_failure()))],
        |settings| settings.http.retry.max_retries = 0,
    )
    .await;
    let result = h.call(ask_with_tools()).await.1;
    let error = result.as_ref().expect_err("the stream failed");
    assert!(error.is_retryable(), "{error}");
    assert_eq!(error.spent(), Some(REPORTED));
    assert_eq!(spend_of(&result), Some(REPORTED));

    // Every try is retried and fails: the spend of all three adds up.
    let h = harness(
        vendor,
        vec![stream(vendor, whole(&vendor.usage_then_failure()))],
    )
    .await;
    let result = h.call(ask_with_tools()).await.1;
    assert_eq!(h.fake.request_count(), 3);
    assert_eq!(spend_of(&result), Some(times(3)));

    // A retry succeeds: its usage includes the failed try's.
    let h = harness(
        vendor,
        vec![
            stream(vendor, whole(&vendor.usage_then_failure())),
            stream(vendor, whole(&vendor.answer(PIECES))),
        ],
    )
    .await;
    let result = h.call(ask_with_tools()).await.1;
    let response = result.as_ref().expect("the retry answers");
    assert_eq!(response.usage, vendor.expected_usage().plus(&REPORTED));
    assert_eq!(spend_of(&result), Some(response.usage));

    // A refused request consumed nothing.
    let h = harness(vendor, vec![status(vendor, 400, vec![], "bad tools")]).await;
    let result = h.call(ask_with_tools()).await.1;
    assert_eq!(spend_of(&result), None);
}

/// Every tool scenario, as one test per vendor.
macro_rules! tool_conformance {
    ($($vendor:ident => $kind:expr),+ $(,)?) => {$(
        mod $vendor {
            use super::*;

            #[tokio::test]
            async fn streams_text_then_a_tool_call() {
                super::streams_text_then_a_tool_call($kind).await;
            }

            #[tokio::test]
            async fn streams_two_parallel_tool_calls() {
                super::streams_two_parallel_tool_calls($kind).await;
            }

            #[tokio::test]
            async fn sends_tool_calls_and_outputs_in_the_history() {
                super::sends_tool_calls_and_outputs_in_the_history($kind).await;
            }

            #[tokio::test]
            async fn arguments_that_are_not_an_object_go_back_as_the_vendor_allows() {
                super::arguments_that_are_not_an_object_go_back_as_the_vendor_allows($kind).await;
            }

            #[tokio::test]
            async fn a_failed_call_after_usage_exposes_its_spend() {
                super::a_failed_call_after_usage_exposes_its_spend($kind).await;
            }
        }
    )+};
}

tool_conformance!(
    anthropic => Vendor::Anthropic,
    openai => Vendor::OpenAi,
    openai_compatible => Vendor::OpenAiCompatible,
    gemini => Vendor::Gemini,
);
