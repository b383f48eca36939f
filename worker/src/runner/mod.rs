//! Running one attempt: build the model request from the claimed task, call the provider
//! under the agent's timeout, stream its output to the link, and report how it ended.

mod call;
mod output;
#[cfg(test)]
mod tests;
mod transcript;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agentplane_proto::v1::{WorkerFailure, worker_result};
use prost_types::value::Kind;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::lease::{Attempt, StopReason};
use crate::link::{Ending, LinkHandle, Outbound};
use crate::metrics::METRICS;
use crate::provider::{ModelResponse, ProviderError, Providers};
use crate::queue::ClaimedTask;
use agentplane_core::columns::Provider;
use agentplane_core::limits::MAX_FAILURE_MESSAGE_BYTES;
use agentplane_core::text::{truncate_owned, without_nul};
use transcript::Plan;

/// Provider pieces buffered before the provider waits for the link.
const PIECE_BUFFER: usize = 256;

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

/// Reports an attempt abandoned if its runner stops (a panic, or its task dropped) before
/// handing its ending to the link: the link then stops renewing the lease, and the task is
/// reaped once it expires instead of being held forever.
struct EndingGuard {
    link: LinkHandle,
    /// The attempt, until its ending has been handed over.
    attempt: Option<Arc<Attempt>>,
}

impl EndingGuard {
    /// The ending was handed over (or the link is gone): nothing to do on drop.
    fn disarm(&mut self) {
        self.attempt = None;
    }
}

impl Drop for EndingGuard {
    fn drop(&mut self) {
        if let Some(attempt) = self.attempt.take() {
            tracing::error!(
                lease = %attempt.lease,
                "attempt stopped without reporting an ending; abandoning its lease"
            );
            self.link.send_now(Outbound::Finish {
                attempt,
                ending: Ending::Abandon,
            });
        }
    }
}

/// Runs a claimed attempt to its end and reports the ending to the link. If it panics or
/// is dropped first, the attempt is reported abandoned (see [`EndingGuard`]). The capacity
/// slot the attempt holds is freed once the link lets go of it too: when the control plane
/// has recorded the ending, not when it was handed over.
pub(crate) async fn run_attempt(
    context: Arc<RunContext>,
    task: ClaimedTask,
    attempt: Arc<Attempt>,
) {
    let mut guard = EndingGuard {
        link: context.link.clone(),
        attempt: Some(Arc::clone(&attempt)),
    };
    let started = Instant::now();
    METRICS.attempts_in_flight.inc();
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
        Ending::Result(worker_result::Outcome::RequiresAction(action)) => tracing::info!(
            elapsed_ms,
            position = action.position,
            "attempt waits for tool outputs"
        ),
        Ending::Release => tracing::info!(elapsed_ms, "attempt stopped for shutdown; releasing"),
        Ending::Abandon => tracing::info!(elapsed_ms, "attempt abandoned"),
    }
    let outcome = outcome_label(&ending);
    METRICS.attempts_in_flight.dec();
    METRICS.attempts.with_label_values(&[outcome]).inc();
    METRICS
        .attempt_duration
        .with_label_values(&[outcome])
        .observe(started.elapsed().as_secs_f64());
    let reported = context
        .link
        .send(Outbound::Finish { attempt, ending })
        .instrument(tracing::info_span!("report result", outcome))
        .await;
    guard.disarm();
    if reported.is_err() {
        tracing::warn!("link stopped before the attempt's ending could be reported");
    }
}

async fn execute(context: &RunContext, task: &ClaimedTask, attempt: &Arc<Attempt>) -> Outcome {
    let next = match transcript::plan(task) {
        Ok(Plan::Call(next)) => next,
        Ok(Plan::Replay(outcome)) => {
            tracing::info!("the step this attempt would run is recorded; reporting it again");
            return Outcome::Reported(outcome);
        }
        Err(failed) => return failed,
    };
    // A cancellation reaches the call through its token (a child of the attempt's), so the
    // step ends on its own, promptly, and can still report what the call had consumed.
    let timeout = task.agent.task_timeout;
    match tokio::time::timeout(timeout, call::call_step(context, attempt, next)).await {
        Ok(outcome) => outcome,
        Err(_elapsed) if attempt.cancellation().is_cancelled() => Outcome::Stopped,
        Err(_elapsed) => failure(
            "timeout",
            format!(
                "the attempt ran longer than the agent's task timeout of {}",
                describe(timeout)
            ),
            true,
        ),
    }
}

/// The metric label of how an attempt ended.
fn outcome_label(ending: &Ending) -> &'static str {
    match ending {
        Ending::Result(worker_result::Outcome::Success(_)) => "succeeded",
        Ending::Result(worker_result::Outcome::Failure(failure)) if failure.retryable => {
            "retryable_failure"
        }
        Ending::Result(worker_result::Outcome::Failure(_)) => "failed",
        Ending::Result(worker_result::Outcome::RequiresAction(_)) => "requires_action",
        Ending::Release => "released",
        Ending::Abandon => "abandoned",
    }
}

/// Runs a model call inside its own span (a child of the attempt's) and records its
/// duration and time to first token (`first_piece` is set by the output forwarder). The
/// span is where the provider's HTTP request will carry the trace on to the vendor.
async fn observe_call<F>(
    call: F,
    provider: &str,
    model: &str,
    provider_request_id: &str,
    first_piece: &OnceLock<Instant>,
) -> Result<ModelResponse, ProviderError>
where
    F: Future<Output = Result<ModelResponse, ProviderError>>,
{
    let span = tracing::info_span!(
        "provider call",
        otel.name = %format_args!("{provider} {model}"),
        otel.kind = "client",
        gen_ai.system = %provider,
        gen_ai.request.model = %model,
        provider_request_id = %provider_request_id,
    );
    let model = METRICS.models.get(model);
    let started = Instant::now();
    let result = call.instrument(span.clone()).await;
    if let Ok(response) = &result {
        let usage = &response.usage;
        let count = |kind: &str, tokens: i64| {
            METRICS
                .provider_tokens
                .with_label_values(&[provider, model.as_str(), kind])
                .inc_by(u64::try_from(tokens).unwrap_or(0));
        };
        count("input", usage.input_tokens);
        count("output", usage.output_tokens);
        count("cache_read", usage.cache_read_input_tokens);
        count("cache_write", usage.cache_write_input_tokens);
        count("reasoning", usage.reasoning_tokens);
        METRICS
            .provider_cost_micros
            .with_label_values(&[provider, model.as_str()])
            .inc_by(u64::try_from(usage.cost_micros).unwrap_or(0));
        if usage.unpriced {
            METRICS
                .provider_unpriced_calls
                .with_label_values(&[provider, model.as_str()])
                .inc();
        }
        span.in_scope(|| {
            tracing::info!(
                vendor_request_id = response.vendor_request_id.as_deref().unwrap_or(""),
                answered_by = %response.model,
                input_tokens = usage.input_tokens,
                cache_read_input_tokens = usage.cache_read_input_tokens,
                cache_write_input_tokens = usage.cache_write_input_tokens,
                output_tokens = usage.output_tokens,
                reasoning_tokens = usage.reasoning_tokens,
                cost_micros = usage.cost_micros,
                unpriced = usage.unpriced,
                "model call finished"
            );
        });
    }
    let labels = [
        provider,
        model.as_str(),
        if result.is_ok() { "ok" } else { "error" },
    ];
    METRICS
        .provider_call_duration
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    if let Some(first) = first_piece.get() {
        METRICS
            .provider_first_token
            .with_label_values(&[provider, model.as_str()])
            .observe(first.saturating_duration_since(started).as_secs_f64());
    }
    result
}

/// What an operator sets so that workers run `provider`.
fn configuration_hint(provider: Provider) -> &'static str {
    match provider {
        Provider::Echo => "echo is built in",
        Provider::Anthropic => "set ANTHROPIC_API_KEY on the worker",
        Provider::OpenAi => "set OPENAI_API_KEY on the worker",
        Provider::Gemini => "set GEMINI_API_KEY on the worker",
        Provider::OpenAiCompatible => "set AGENTPLANE_OPENAI_COMPATIBLE_BASE_URL on the worker",
    }
}

/// A failed outcome; the message is made storable (no NUL) and cut to the wire limit.
fn failure(code: &str, message: String, retryable: bool) -> Outcome {
    Outcome::Reported(worker_result::Outcome::Failure(WorkerFailure {
        code: code.to_owned(),
        message: truncate_owned(
            without_nul(&message).into_owned(),
            MAX_FAILURE_MESSAGE_BYTES,
        ),
        retryable,
    }))
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
