//! Tests of the runner: request building, outcomes, and whole attempts against scripted
//! providers.

use super::*;
use crate::provider::{ChatRole, ModelRequest};
use crate::queue::{AgentSettings, TranscriptMessage};
use agentplane_core::limits::MAX_OUTPUT_BYTES;

fn task(messages: &[(&str, &str)], generation: serde_json::Value) -> ClaimedTask {
    ClaimedTask {
        tenant_id: agentplane_core::ids::TenantId::generate(),
        task_id: agentplane_core::ids::TaskId::generate(),
        agent_id: agentplane_core::ids::AgentId::generate(),
        attempt: 2,
        agent: AgentSettings {
            provider: "echo".to_owned(),
            model: "echo-large".to_owned(),
            generation,
            task_timeout: Duration::from_secs(60),
            tools: serde_json::json!([]),
            max_steps: 16,
            fallbacks: serde_json::json!([]),
        },
        messages: messages
            .iter()
            .enumerate()
            .map(|(position, (role, content))| TranscriptMessage {
                position: i32::try_from(position).expect("small"),
                role: (*role).to_owned(),
                content: (*content).to_owned(),
                step: None,
                tool_calls: None,
                tool_call_id: None,
                is_error: false,
                finish_reason: None,
            })
            .collect(),
        run_at: chrono::Utc::now(),
        traceparent: None,
    }
}

fn reported_failure(outcome: Outcome) -> WorkerFailure {
    match outcome {
        Outcome::Reported(worker_result::Outcome::Failure(failure)) => failure,
        _ => panic!("expected a failure"),
    }
}

fn next_step(task: &ClaimedTask) -> transcript::NextStep {
    match transcript::plan(task) {
        Ok(Plan::Call(next)) => next,
        Ok(Plan::Replay(outcome)) => panic!("expected a call, got a replay of {outcome:?}"),
        Err(_) => panic!("expected a call, got a failure"),
    }
}

/// Marks transcript message `index` as model step `step`, with these tool calls.
fn recorded_step(task: &mut ClaimedTask, index: usize, step: i32, calls: serde_json::Value) {
    let message = &mut task.messages[index];
    message.step = Some(step);
    message.tool_calls = (calls != serde_json::json!([])).then_some(calls);
}

#[test]
fn builds_the_request_from_the_transcript() {
    let task = task(
        &[
            ("system", "Be brief."),
            ("user", "hi"),
            ("assistant", "hello"),
            ("user", "again"),
        ],
        serde_json::json!({"max_output_tokens": 5}),
    );
    let next = next_step(&task);
    let request = &next.request;
    assert_eq!(request.system.as_deref(), Some("Be brief."));
    assert_eq!(request.messages.len(), 3);
    assert_eq!(request.messages[1].role, ChatRole::Assistant);
    assert_eq!(request.model, "echo-large");
    assert_eq!(request.generation.max_output_tokens, Some(5));
    // The few-shot assistant message is input, not a step: this is step 0, after it.
    assert_eq!(next.step, 0);
    assert_eq!(next.position, 4);
    assert_eq!(request.request_id, format!("{}-0", task.task_id));
    assert_eq!(next.choices, [(Provider::Echo, "echo-large".to_owned())]);
}

#[test]
fn recorded_steps_and_tool_outputs_become_the_conversation() {
    let mut task = task(
        &[
            ("user", "weather in Paris and Rome?"),
            ("assistant", "Let me look."),
            ("tool", "18C"),
            ("tool", "24C"),
        ],
        serde_json::json!({}),
    );
    recorded_step(
        &mut task,
        1,
        0,
        serde_json::json!([
            {"id": "c1", "name": "weather", "arguments": "{\"city\":\"Paris\"}"},
            {"id": "c2", "name": "weather", "arguments": "{\"city\":\"Rome\"}"},
        ]),
    );
    task.messages[2].tool_call_id = Some("c1".to_owned());
    task.messages[3].tool_call_id = Some("c2".to_owned());
    task.messages[3].is_error = true;
    task.agent.tools = serde_json::json!([{"name": "weather"}]);
    task.agent.fallbacks = serde_json::json!([
        {"provider": "anthropic", "model": "claude-haiku-4-5"},
        {"provider": "nonesuch", "model": "x"},
    ]);
    let next = next_step(&task);
    assert_eq!(next.step, 1, "one model call is recorded");
    assert_eq!(next.position, 4);
    assert_eq!(next.request.request_id, format!("{}-1", task.task_id));
    let messages = &next.request.messages;
    assert_eq!(
        messages.len(),
        3,
        "the two outputs travel in one tool message"
    );
    assert_eq!(messages[1].tool_calls.len(), 2);
    assert_eq!(messages[1].tool_calls[1].arguments, "{\"city\":\"Rome\"}");
    assert_eq!(messages[2].role, ChatRole::Tool);
    let outputs = &messages[2].tool_outputs;
    assert_eq!(
        outputs
            .iter()
            .map(|o| (
                o.call_id.as_str(),
                o.name.as_str(),
                o.output.as_str(),
                o.is_error
            ))
            .collect::<Vec<_>>(),
        [
            ("c1", "weather", "18C", false),
            ("c2", "weather", "24C", true)
        ]
    );
    assert_eq!(next.request.tools.len(), 1);
    assert_eq!(
        next.request.tools[0].parameters,
        agentplane_core::tools::empty_object_schema()
    );
    assert_eq!(
        next.choices,
        [
            (Provider::Echo, "echo-large".to_owned()),
            (Provider::Anthropic, "claude-haiku-4-5".to_owned()),
        ],
        "an unknown fallback provider is skipped"
    );
}

#[test]
fn a_recorded_last_step_is_replayed_instead_of_called_again() {
    let mut answered = task(
        &[("user", "hi"), ("assistant", "hello")],
        serde_json::json!({}),
    );
    recorded_step(&mut answered, 1, 0, serde_json::json!([]));
    match transcript::plan(&answered) {
        Ok(Plan::Replay(worker_result::Outcome::Success(success))) => {
            assert_eq!(success.output, "hello");
            assert_eq!(success.position, 1);
            assert_eq!(
                success.finish_reason, "stop",
                "recorded before reasons were kept"
            );
        }
        other => panic!("expected the answer replayed, got {:?}", other.is_ok()),
    }
    answered.messages[1].finish_reason = Some("max_tokens".to_owned());
    match transcript::plan(&answered) {
        Ok(Plan::Replay(worker_result::Outcome::Success(success))) => {
            assert_eq!(success.finish_reason, "max_tokens", "the recorded reason");
        }
        other => panic!("expected the answer replayed, got {:?}", other.is_ok()),
    }
    let mut waiting = task(&[("user", "hi"), ("assistant", "")], serde_json::json!({}));
    recorded_step(
        &mut waiting,
        1,
        0,
        serde_json::json!([{"id": "c1", "name": "now", "arguments": "{}"}]),
    );
    match transcript::plan(&waiting) {
        Ok(Plan::Replay(worker_result::Outcome::RequiresAction(action))) => {
            assert_eq!(action.position, 1);
        }
        other => panic!("expected the wait replayed, got {:?}", other.is_ok()),
    }
}

#[test]
fn a_task_out_of_steps_fails_without_retry() {
    let mut task = task(
        &[("user", "go"), ("assistant", ""), ("tool", "done")],
        serde_json::json!({}),
    );
    recorded_step(
        &mut task,
        1,
        0,
        serde_json::json!([{"id": "c1", "name": "run", "arguments": "{}"}]),
    );
    task.messages[2].tool_call_id = Some("c1".to_owned());
    task.agent.max_steps = 1;
    let Err(outcome) = transcript::plan(&task) else {
        panic!("must fail")
    };
    let failure = reported_failure(outcome);
    assert_eq!(failure.code, "max_steps_exceeded");
    assert!(!failure.retryable);
}

#[test]
fn unknown_roles_bad_settings_and_stray_tool_outputs_fail_without_retry() {
    let Err(outcome) = transcript::plan(&task(&[("robot", "x")], serde_json::json!({}))) else {
        panic!("must fail")
    };
    let failure = reported_failure(outcome);
    assert_eq!(failure.code, "invalid_task");
    assert!(!failure.retryable);

    let mut stray = task(&[("user", "x"), ("tool", "y")], serde_json::json!({}));
    stray.messages[1].tool_call_id = Some("c9".to_owned());
    let Err(outcome) = transcript::plan(&stray) else {
        panic!("must fail")
    };
    assert_eq!(reported_failure(outcome).code, "invalid_task");

    let bad = serde_json::json!({"temperature": "hot"});
    let Err(outcome) = transcript::plan(&task(&[("user", "x")], bad)) else {
        panic!("must fail")
    };
    assert_eq!(reported_failure(outcome).code, "invalid_agent");

    let mut bad_tools = task(&[("user", "x")], serde_json::json!({}));
    bad_tools.agent.tools = serde_json::json!({"not": "a list"});
    let Err(outcome) = transcript::plan(&bad_tools) else {
        panic!("must fail")
    };
    assert_eq!(reported_failure(outcome).code, "invalid_agent");
}

#[test]
fn failure_messages_are_truncated_on_char_boundaries() {
    let long = "é".repeat(MAX_FAILURE_MESSAGE_BYTES);
    let failure = reported_failure(failure("provider_error", long, true));
    assert!(failure.message.len() <= MAX_FAILURE_MESSAGE_BYTES);
    assert!(failure.message.chars().all(|c| c == 'é'));
}

#[test]
fn timeouts_are_described_readably() {
    assert_eq!(describe(Duration::from_secs(600)), "600s");
    assert_eq!(describe(Duration::from_millis(1500)), "1500ms");
}

#[test]
fn nul_is_replaced_in_failure_messages() {
    let failed = reported_failure(failure("provider_error", "bad\0byte".to_owned(), true));
    assert_eq!(failed.message, "bad\u{FFFD}byte");
}

mod attempts;

#[tokio::test]
async fn a_finished_call_counts_its_tokens_and_cost_per_provider_and_model() {
    let provider = "metrics-test-provider";
    let tokens = |kind: &str| {
        METRICS
            .provider_tokens
            .with_label_values(&[provider, "metrics-test-model", kind])
            .get()
    };
    let response = ModelResponse {
        text: "hi".to_owned(),
        finish_reason: crate::provider::FinishReason::Stop,
        tool_calls: Vec::new(),
        model: "metrics-test-model-2026".to_owned(),
        usage: crate::provider::ModelUsage {
            input_tokens: 100,
            output_tokens: 12,
            cache_read_input_tokens: 40,
            cache_write_input_tokens: 10,
            reasoning_tokens: 3,
            cost_micros: 91,
            unpriced: true,
        },
        vendor_request_id: Some("req_1".to_owned()),
    };
    let first_piece = OnceLock::new();
    let result = observe_call(
        async { Ok(response) },
        provider,
        "metrics-test-model",
        "task-1-0",
        &first_piece,
    )
    .await;
    assert!(result.is_ok());
    assert_eq!(
        [
            tokens("input"),
            tokens("output"),
            tokens("cache_read"),
            tokens("cache_write"),
            tokens("reasoning")
        ],
        [100, 12, 40, 10, 3]
    );
    let labels = [provider, "metrics-test-model"];
    assert_eq!(
        METRICS
            .provider_cost_micros
            .with_label_values(&labels)
            .get(),
        91
    );
    assert_eq!(
        METRICS
            .provider_unpriced_calls
            .with_label_values(&labels)
            .get(),
        1
    );
}
