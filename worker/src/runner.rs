//! Running one attempt: build the model request from the claimed task, call the provider
//! under the agent's timeout, stream its output to the link, and report how it ended.

use std::sync::Arc;
use std::time::Duration;

use agentplane_proto::v1::{ModelCall, Usage, WorkerFailure, WorkerSuccess, worker_result};
use prost_types::value::Kind;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;

use crate::coalesce::{Coalescer, MAX_OUTPUT_CHUNK_BYTES};
use crate::lease::{Attempt, StopReason};
use crate::link::{Ending, LinkHandle, Outbound};
use crate::provider::{
    ChatMessage, ChatRole, GenerationParams, ModelRequest, ModelResponse, ProviderError, Providers,
    provider_request_id,
};
use crate::queue::ClaimedTask;

/// At most one output message per window (pieces arriving meanwhile travel together).
const COALESCE_WINDOW: Duration = Duration::from_millis(20);
/// Provider pieces buffered before the provider waits for the link.
const PIECE_BUFFER: usize = 256;
/// Largest `WorkerSuccess.output` the control plane accepts.
const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// Largest `WorkerFailure.message` the control plane accepts.
const MAX_FAILURE_MESSAGE_BYTES: usize = 4096;

/// What every attempt needs from the worker.
#[derive(Debug, Clone)]
pub(crate) struct RunContext {
    pub(crate) link: LinkHandle,
    pub(crate) providers: Providers,
}

/// How `execute` ended.
enum Outcome {
    /// Report this to the control plane.
    Reported(worker_result::Outcome),
    /// The attempt was stopped from outside before it ended.
    Stopped,
}

/// Runs a claimed attempt to its end, reports the ending to the link, then frees the
/// capacity slot held by `permit`.
pub(crate) async fn run_attempt(
    context: Arc<RunContext>,
    task: ClaimedTask,
    attempt: Arc<Attempt>,
    permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let outcome = execute(&context, &task, &attempt).await;
    let ending = match (outcome, attempt.stop_reason()) {
        (_, Some(StopReason::Revoked | StopReason::LeaseExpired)) => Ending::Abandon,
        (Outcome::Reported(outcome), _) => Ending::Result(outcome),
        (Outcome::Stopped, _) => Ending::Release,
    };
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match &ending {
        Ending::Result(worker_result::Outcome::Success(success)) => tracing::info!(
            elapsed_ms,
            finish_reason = %success.finish_reason,
            "attempt succeeded"
        ),
        Ending::Result(worker_result::Outcome::Failure(failure)) => tracing::info!(
            elapsed_ms,
            code = %failure.code,
            retryable = failure.retryable,
            message = %failure.message,
            "attempt failed"
        ),
        Ending::Release => tracing::info!(elapsed_ms, "attempt stopped for shutdown; releasing"),
        Ending::Abandon => tracing::info!(elapsed_ms, "attempt abandoned"),
    }
    if context
        .link
        .send(Outbound::Finish { attempt, ending })
        .await
        .is_err()
    {
        tracing::warn!("link stopped before the attempt's ending could be reported");
    }
    drop(permit);
}

async fn execute(context: &RunContext, task: &ClaimedTask, attempt: &Arc<Attempt>) -> Outcome {
    let Some(provider) = context.providers.get(&task.agent.provider) else {
        return failure(
            "unsupported_provider",
            format!("this worker has no provider {:?}", task.agent.provider),
            false,
        );
    };
    let request = match build_request(task) {
        Ok(request) => request,
        Err(reported) => return reported,
    };
    let step = 0;
    let request_id = request.request_id.clone();
    let event = Outbound::Event {
        attempt: Arc::clone(attempt),
        action: "task.model_call_started",
        data: struct_of([
            ("step", Kind::NumberValue(f64::from(step))),
            ("provider", Kind::StringValue(task.agent.provider.clone())),
            ("model", Kind::StringValue(request.model.clone())),
            ("provider_request_id", Kind::StringValue(request_id.clone())),
        ]),
    };
    let _ = context.link.send(event).await;

    let (sink, pieces) = mpsc::channel(PIECE_BUFFER);
    let call_cancel = attempt.cancellation().child_token();
    let _stop_call_on_exit = call_cancel.clone().drop_guard();
    let call = provider.generate(request, sink, call_cancel);
    let forward = forward_output(pieces, &context.link, attempt);
    let work = async {
        let (result, ()) = tokio::join!(call, forward);
        result
    };
    let timeout = task.agent.task_timeout;
    let result = tokio::select! {
        biased;
        () = attempt.cancellation().cancelled() => return Outcome::Stopped,
        result = tokio::time::timeout(timeout, work) => result,
    };
    match result {
        Err(_elapsed) => failure(
            "timeout",
            format!(
                "the attempt ran longer than the agent's task timeout of {}",
                describe(timeout)
            ),
            true,
        ),
        Ok(Ok(response)) => success(response, step, request_id),
        Ok(Err(ProviderError::Canceled)) if attempt.cancellation().is_cancelled() => {
            Outcome::Stopped
        }
        Ok(Err(error)) => failure("provider_error", error.to_string(), error.is_retryable()),
    }
}

/// Turns the claimed transcript and agent settings into the model request.
fn build_request(task: &ClaimedTask) -> Result<ModelRequest, Outcome> {
    let generation = GenerationParams::from_json(&task.agent.generation).map_err(|error| {
        failure(
            "invalid_agent",
            format!("the agent's generation settings are invalid: {error}"),
            false,
        )
    })?;
    let mut system = Vec::new();
    let mut messages = Vec::with_capacity(task.messages.len());
    for message in &task.messages {
        let role = match message.role.as_str() {
            "system" => {
                system.push(message.content.as_str());
                continue;
            }
            "user" => ChatRole::User,
            "assistant" => ChatRole::Assistant,
            other => {
                return Err(failure(
                    "invalid_task",
                    format!("the transcript has a message with unknown role {other:?}"),
                    false,
                ));
            }
        };
        messages.push(ChatMessage {
            role,
            content: message.content.clone(),
        });
    }
    let system = system.join("\n\n");
    Ok(ModelRequest {
        request_id: provider_request_id(task.task_id, task.attempt, 0),
        model: task.agent.model.clone(),
        system: (!system.is_empty()).then_some(system),
        messages,
        generation,
    })
}

/// Sends provider pieces to the link as numbered output, coalesced by [`Coalescer`].
/// Returns when the provider drops its sink.
async fn forward_output(
    mut pieces: mpsc::Receiver<String>,
    link: &LinkHandle,
    attempt: &Arc<Attempt>,
) {
    let mut coalescer = Coalescer::new(COALESCE_WINDOW, MAX_OUTPUT_CHUNK_BYTES);
    let mut next_index = 0i64;
    loop {
        let (ready, done) = tokio::select! {
            piece = pieces.recv() => match piece {
                Some(piece) => (coalescer.push(&piece, Instant::now()), false),
                None => (coalescer.take_rest(Instant::now()).into_iter().collect(), true),
            },
            () = sleep_until(coalescer.flush_at()) => {
                (coalescer.take_due(Instant::now()).into_iter().collect(), false)
            }
        };
        for text in ready {
            let output = Outbound::Output {
                attempt: Arc::clone(attempt),
                index: next_index,
                text,
            };
            next_index += 1;
            // A stopped link is noticed when the ending is reported.
            let _ = link.send(output).await;
        }
        if done {
            return;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn success(response: ModelResponse, step: i32, provider_request_id: String) -> Outcome {
    if response.text.len() > MAX_OUTPUT_BYTES {
        return failure(
            "output_too_large",
            format!(
                "the answer is {} bytes, over the {MAX_OUTPUT_BYTES}-byte limit",
                response.text.len()
            ),
            false,
        );
    }
    Outcome::Reported(worker_result::Outcome::Success(WorkerSuccess {
        output: response.text,
        finish_reason: response.finish_reason.as_str().to_owned(),
        calls: vec![ModelCall {
            step,
            provider_request_id,
            model: response.model,
            usage: Some(Usage {
                input_tokens: response.usage.input_tokens,
                output_tokens: response.usage.output_tokens,
                cost_micros: response.usage.cost_micros,
            }),
        }],
    }))
}

fn failure(code: &str, message: String, retryable: bool) -> Outcome {
    Outcome::Reported(worker_result::Outcome::Failure(WorkerFailure {
        code: code.to_owned(),
        message: truncate(message, MAX_FAILURE_MESSAGE_BYTES),
        retryable,
    }))
}

/// `text` cut to at most `max_bytes`, on a character boundary.
fn truncate(mut text: String, max_bytes: usize) -> String {
    if text.len() > max_bytes {
        let mut cut = max_bytes;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

fn describe(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

fn struct_of<const N: usize>(fields: [(&str, Kind); N]) -> prost_types::Struct {
    prost_types::Struct {
        fields: fields
            .into_iter()
            .map(|(name, kind)| (name.to_owned(), prost_types::Value { kind: Some(kind) }))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{AgentSettings, TranscriptMessage};

    fn task(messages: &[(&str, &str)], generation: serde_json::Value) -> ClaimedTask {
        ClaimedTask {
            tenant_id: uuid::Uuid::now_v7(),
            task_id: uuid::Uuid::now_v7(),
            agent_id: uuid::Uuid::now_v7(),
            attempt: 2,
            agent: AgentSettings {
                provider: "echo".to_owned(),
                model: "echo-large".to_owned(),
                generation,
                task_timeout: Duration::from_secs(60),
            },
            messages: messages
                .iter()
                .map(|(role, content)| TranscriptMessage {
                    role: (*role).to_owned(),
                    content: (*content).to_owned(),
                })
                .collect(),
        }
    }

    fn reported_failure(outcome: Outcome) -> WorkerFailure {
        match outcome {
            Outcome::Reported(worker_result::Outcome::Failure(failure)) => failure,
            _ => panic!("expected a failure"),
        }
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
        let Ok(request) = build_request(&task) else {
            panic!("valid task")
        };
        assert_eq!(request.system.as_deref(), Some("Be brief."));
        assert_eq!(request.messages.len(), 3);
        assert_eq!(request.messages[1].role, ChatRole::Assistant);
        assert_eq!(request.model, "echo-large");
        assert_eq!(request.generation.max_output_tokens, Some(5));
        assert_eq!(request.request_id, format!("{}-2-0", task.task_id));
    }

    #[test]
    fn unknown_roles_and_bad_generation_fail_without_retry() {
        let Err(outcome) = build_request(&task(&[("tool", "x")], serde_json::json!({}))) else {
            panic!("must fail")
        };
        let failure = reported_failure(outcome);
        assert_eq!(failure.code, "invalid_task");
        assert!(!failure.retryable);

        let bad = serde_json::json!({"temperature": "hot"});
        let Err(outcome) = build_request(&task(&[("user", "x")], bad)) else {
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
}
