//! One step's model call: the agent's provider and model, then its fallbacks in order while
//! calls fail in ways another provider may not (rate limits, overload, outages). Every call
//! that consumed tokens is reported for metering; the call that answers is reported as the
//! step, before the attempt's result, so that a later attempt replays it instead of paying
//! for it again.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use agentplane_core::columns::Provider;
use agentplane_core::limits::MAX_MODEL_CALL_FIELD_CHARS;
use agentplane_core::limits::MAX_OUTPUT_BYTES;
use agentplane_core::text::without_nul;
use agentplane_core::tools::{MAX_TOOL_ARGUMENTS_BYTES, MAX_TOOL_CALLS, is_storable_tool_call_id};
use agentplane_proto::v1::{
    ModelCall, ToolCall as WireToolCall, Usage, WorkerRequiresAction, WorkerStep, WorkerSuccess,
    worker_result,
};
use prost_types::value::Kind;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::output::{OutputCursor, OutputTooLarge, forward_output_from, withdraw_output};
use super::transcript::NextStep;
use super::{
    Outcome, PIECE_BUFFER, RunContext, configuration_hint, failure, observe_call, struct_of,
};
use crate::lease::Attempt;
use crate::link::Outbound;
use crate::provider::{
    ModelResponse, ModelUsage, ProviderError, ToolCall, made_up_tool_call_id, spend_of,
};

/// How one call ended.
enum Called {
    /// The model answered.
    Answered(ModelResponse),
    /// The call failed.
    Failed(ProviderError),
    /// The answer passed the output limit while streaming.
    TooLarge(OutputTooLarge),
}

/// Runs the step's call, falling back as the agent allows, and reports how it ended.
pub(super) async fn call_step(
    context: &RunContext,
    attempt: &Arc<Attempt>,
    next: NextStep,
) -> Outcome {
    let NextStep {
        step,
        position,
        mut request,
        choices,
        tool_names,
        used_call_ids,
    } = next;
    let request_id = request.request_id.clone();
    // One numbering of output deltas for the whole attempt, across fallbacks.
    let mut cursor = OutputCursor::default();
    for (index, (provider_name, model)) in choices.iter().enumerate() {
        let fallback = choices.get(index + 1);
        let Some(provider) = context.providers.get(*provider_name) else {
            // Retryable: in a fleet where only some workers hold this vendor's key, the
            // next attempt may land on one that does (route with worker labels to make
            // sure, e.g. AGENTPLANE_WORKER_LABELS=provider-anthropic=yes and the agent's
            // required_worker_labels). With none, the task fails after max_attempts.
            let message = format!(
                "this worker has no credentials for provider {:?} ({})",
                provider_name.as_str(),
                configuration_hint(*provider_name)
            );
            if let Some(to) = fallback {
                fall_back(
                    context,
                    attempt,
                    (*provider_name, model),
                    to,
                    "provider_not_configured",
                )
                .await;
                continue;
            }
            return failure("provider_not_configured", message, true);
        };
        request.model.clone_from(model);
        let started_event = Outbound::Event {
            attempt: Arc::clone(attempt),
            action: "task.model_call_started",
            data: struct_of([
                ("step", Kind::NumberValue(f64::from(step))),
                (
                    "provider",
                    Kind::StringValue(provider_name.as_str().to_owned()),
                ),
                ("model", Kind::StringValue(model.clone())),
                ("provider_request_id", Kind::StringValue(request_id.clone())),
            ]),
        };
        let _ = context.link.send(started_event).await;

        let (sink, pieces) = mpsc::channel(PIECE_BUFFER);
        let call_cancel = attempt.cancellation().child_token();
        let _stop_call_on_exit = call_cancel.clone().drop_guard();
        let first_piece = OnceLock::new();
        let started = Instant::now();
        let call = observe_call(
            provider.generate(request.clone(), sink, call_cancel.clone()),
            provider_name.as_str(),
            model,
            &request_id,
            &first_piece,
        );
        let forward = forward_output_from(
            pieces,
            &context.link,
            attempt,
            &call_cancel,
            &first_piece,
            &mut cursor,
        );
        let (result, forwarded) = tokio::join!(call, forward);
        let timing = Timing {
            latency_ms: millis(started.elapsed()),
            first_token_ms: first_piece
                .get()
                .map_or(0, |first| millis(first.saturating_duration_since(started))),
        };
        let record = CallRecord {
            step,
            request_id: &request_id,
            provider: *provider_name,
            model,
            timing,
        };
        let called = match (result, forwarded) {
            (result, Err(too_large)) => {
                // Stopped at the output cap: the call still cost what the vendor said.
                if let Some(spent) = spend_of(&result) {
                    let call = record.call(&spent, None, "output_too_large");
                    report_usage(context, attempt, call).await;
                }
                Called::TooLarge(too_large)
            }
            (Ok(response), Ok(())) => Called::Answered(response),
            (Err(error), Ok(())) => Called::Failed(error),
        };
        match called {
            Called::Answered(response) => {
                let known = Known {
                    tool_names: &tool_names,
                    used_call_ids: &used_call_ids,
                };
                return answered(context, attempt, record, position, known, response).await;
            }
            Called::TooLarge(OutputTooLarge { streamed }) => {
                return failure(
                    "output_too_large",
                    format!(
                        "the answer passed the {MAX_OUTPUT_BYTES}-byte limit while streaming \
                         ({streamed} bytes received)"
                    ),
                    false,
                );
            }
            Called::Failed(error) => {
                // Spend is a fact whatever became of the call: canceled, failed, fenced.
                if let Some(spent) = error.spent() {
                    let call = record.call(&spent, None, error.code());
                    report_usage(context, attempt, call).await;
                }
                if error.is_canceled() && attempt.cancellation().is_cancelled() {
                    return Outcome::Stopped;
                }
                if let Some(to) = fallback.filter(|_| error.is_retryable()) {
                    // What the failed call streamed is withdrawn first (an OutputReset for
                    // watchers), so that the deltas still add up to the answer.
                    withdraw_output(&context.link, attempt, &mut cursor).await;
                    fall_back(context, attempt, (*provider_name, model), to, error.code()).await;
                    continue;
                }
                return failure(error.code(), error.to_string(), error.is_retryable());
            }
        }
    }
    // Unreachable: the last choice always returns.
    failure(
        "provider_error",
        "no provider was left to try".to_owned(),
        true,
    )
}

/// Milliseconds of a duration, saturating.
fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// When a call's answer came.
#[derive(Clone, Copy)]
struct Timing {
    latency_ms: i64,
    first_token_ms: i64,
}

/// What identifies a call in its usage record.
struct CallRecord<'a> {
    step: i32,
    request_id: &'a str,
    provider: Provider,
    model: &'a str,
    timing: Timing,
}

impl CallRecord<'_> {
    /// The usage record of the call: `answered_by` is the model the vendor named, if it
    /// answered.
    fn call(&self, usage: &ModelUsage, answered_by: Option<&str>, outcome: &str) -> ModelCall {
        ModelCall {
            step: self.step,
            provider_request_id: self.request_id.to_owned(),
            model: answered_by
                .filter(|m| !m.is_empty())
                .unwrap_or(self.model)
                .to_owned(),
            usage: Some(Usage {
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                cost_micros: usage.cost_micros,
                cache_read_input_tokens: usage.cache_read_input_tokens,
                cache_write_input_tokens: usage.cache_write_input_tokens,
                reasoning_tokens: usage.reasoning_tokens,
            }),
            id: uuid::Uuid::now_v7().to_string(),
            provider: self.provider.as_str().to_owned(),
            vendor_request_id: String::new(),
            latency_ms: self.timing.latency_ms,
            first_token_ms: self.timing.first_token_ms,
            outcome: outcome.to_owned(),
            unpriced: usage.unpriced,
        }
    }
}

/// Reports a call that consumed tokens but produced no step, for metering.
async fn report_usage(context: &RunContext, attempt: &Arc<Attempt>, call: ModelCall) {
    let usage = Outbound::Usage {
        attempt: Arc::clone(attempt),
        calls: vec![call],
    };
    // A stopped link is noticed when the ending is reported.
    let _ = context.link.send(usage).await;
}

/// Records a switch to the next (provider, model) as an event.
async fn fall_back(
    context: &RunContext,
    attempt: &Arc<Attempt>,
    from: (Provider, &String),
    to: &(Provider, String),
    code: &str,
) {
    tracing::warn!(
        from_provider = from.0.as_str(),
        from_model = %from.1,
        to_provider = to.0.as_str(),
        to_model = %to.1,
        code,
        "falling back to the next provider"
    );
    let event = Outbound::Event {
        attempt: Arc::clone(attempt),
        action: "task.provider_fallback",
        data: struct_of([
            (
                "from_provider",
                Kind::StringValue(from.0.as_str().to_owned()),
            ),
            ("from_model", Kind::StringValue(from.1.clone())),
            ("to_provider", Kind::StringValue(to.0.as_str().to_owned())),
            ("to_model", Kind::StringValue(to.1.clone())),
            ("code", Kind::StringValue(code.to_owned())),
        ]),
    };
    let _ = context.link.send(event).await;
}

/// What the step's tool calls are checked against.
struct Known<'a> {
    /// The agent's tools.
    tool_names: &'a [String],
    /// Call ids earlier steps used.
    used_call_ids: &'a [String],
}

/// Gives every call of a step an id that is storable and unique within the task: a vendor's
/// id that is missing, too long, or already used (some OpenAI-compatible servers number
/// their calls from `call_0` in every response) is replaced by one derived from the request
/// id and the call's index, the same on every attempt.
fn settle_call_ids(calls: &mut [ToolCall], request_id: &str, used: &[String]) {
    let mut seen: HashSet<String> = used.iter().cloned().collect();
    for (index, call) in calls.iter_mut().enumerate() {
        if !is_storable_tool_call_id(&call.id) || seen.contains(&call.id) {
            call.id = made_up_tool_call_id(request_id, index);
        }
        seen.insert(call.id.clone());
    }
}

/// The model answered: report the step, then end the attempt with the answer, or waiting
/// for the outputs of the tools it called.
async fn answered(
    context: &RunContext,
    attempt: &Arc<Attempt>,
    record: CallRecord<'_>,
    position: i32,
    known: Known<'_>,
    mut response: ModelResponse,
) -> Outcome {
    settle_call_ids(
        &mut response.tool_calls,
        record.request_id,
        known.used_call_ids,
    );
    // The model the vendor names is stored with the usage; one too long to store (a local
    // server's file path) gives way to the model asked for.
    let answered_by = (response.model.chars().count() <= MAX_MODEL_CALL_FIELD_CHARS
        && !response.model.contains('\0'))
    .then_some(response.model.as_str());
    let mut call = record.call(&response.usage, answered_by, "ok");
    // Kept only if storable, like the model's name.
    call.vendor_request_id = response
        .vendor_request_id
        .clone()
        .filter(|id| id.chars().count() <= MAX_MODEL_CALL_FIELD_CHARS && !id.contains('\0'))
        .unwrap_or_default();
    let text = without_nul(&response.text).into_owned();
    // A step that cannot be stored is not reported: the call is metered and the attempt
    // fails.
    let refused = if text.len() > MAX_OUTPUT_BYTES {
        Some(failure(
            "output_too_large",
            format!(
                "the answer is {} bytes, over the {MAX_OUTPUT_BYTES}-byte limit",
                text.len()
            ),
            false,
        ))
    } else if response.tool_calls.len() > MAX_TOOL_CALLS {
        Some(failure(
            "too_many_tool_calls",
            format!(
                "the model called {} tools at once; at most {MAX_TOOL_CALLS} are allowed",
                response.tool_calls.len()
            ),
            true,
        ))
    } else if let Some(large) = response
        .tool_calls
        .iter()
        .find(|call| call.arguments.len() > MAX_TOOL_ARGUMENTS_BYTES)
    {
        Some(failure(
            "tool_call_too_large",
            format!(
                "the model called {:?} with {} bytes of arguments; at most \
                 {MAX_TOOL_ARGUMENTS_BYTES} are allowed",
                large.name,
                large.arguments.len()
            ),
            false,
        ))
    } else {
        response
            .tool_calls
            .iter()
            .find(|call| !known.tool_names.contains(&call.name))
            .map(|unknown| {
                failure(
                    "unknown_tool",
                    format!(
                        "the model called {:?}, which the agent does not declare",
                        unknown.name
                    ),
                    true,
                )
            })
    };
    if let Some(refused) = refused {
        call.outcome = "refused".to_owned();
        report_usage(context, attempt, call).await;
        return refused;
    }
    let waits = !response.tool_calls.is_empty();
    let finish_reason = if waits {
        "tool_calls".to_owned()
    } else {
        response.finish_reason.as_str().to_owned()
    };
    let step = WorkerStep {
        lease: Some(attempt.lease.to_proto()),
        step: record.step,
        position,
        text: text.clone(),
        tool_calls: response
            .tool_calls
            .iter()
            .map(|call| WireToolCall {
                id: call.id.clone(),
                name: call.name.clone(),
                arguments: without_nul(&call.arguments).into_owned(),
            })
            .collect(),
        finish_reason: finish_reason.clone(),
        call: Some(call),
    };
    let _ = context
        .link
        .send(Outbound::Step {
            attempt: Arc::clone(attempt),
            step: Box::new(step),
        })
        .await;
    Outcome::Reported(if waits {
        worker_result::Outcome::RequiresAction(WorkerRequiresAction { position })
    } else {
        worker_result::Outcome::Success(WorkerSuccess {
            output: text,
            finish_reason,
            calls: Vec::new(),
            position,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentplane_core::tools::MAX_TOOL_CALL_ID_CHARS;

    fn call(id: &str) -> ToolCall {
        ToolCall {
            id: id.to_owned(),
            name: "run".to_owned(),
            arguments: "{}".to_owned(),
        }
    }

    #[test]
    fn call_ids_are_made_storable_and_unique_within_the_task() {
        let mut calls = vec![
            call("call_0"),
            call("call_0"),
            call(""),
            call(&"x".repeat(MAX_TOOL_CALL_ID_CHARS + 1)),
            call("fresh"),
            call("bad\0id"),
        ];
        settle_call_ids(&mut calls, "task-3", &["call_0".to_owned()]);
        let ids: Vec<&str> = calls.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids[4], "fresh", "a good vendor id is kept");
        let unique: HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
        assert!(
            !unique.contains("call_0"),
            "an id an earlier step used is replaced"
        );
        assert!(
            ids.iter().all(|id| !id.is_empty()
                && id.len() <= MAX_TOOL_CALL_ID_CHARS
                && !id.contains('\0'))
        );
        // The same on every attempt.
        let mut again = vec![call("call_0")];
        settle_call_ids(&mut again, "task-3", &["call_0".to_owned()]);
        assert_eq!(again[0].id, ids[0]);
    }
}
