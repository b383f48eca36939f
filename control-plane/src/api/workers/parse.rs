//! Parsing of the worker channel: each protobuf message becomes a validated
//! [`Report`](crate::domain::worker::Report) (or [`Hello`]) here, once, with every field
//! violation collected.

use agentplane_core::limits;
use agentplane_core::text::{truncate_bytes, without_nul};
use agentplane_core::tools::{self, ToolCallRecord};
use agentplane_proto::v1 as pb;
use pb::session_request::Kind as In;

use crate::api::convert;
use crate::domain::validate::Violations;
use crate::domain::worker::{Hello, Lease, ModelCallRecord, Report, ResultOutcome, StepRecord};
use crate::error::ApiError;
use crate::ids::WorkerId;

impl TryFrom<pb::WorkerHello> for Hello {
    type Error = ApiError;

    fn try_from(hello: pb::WorkerHello) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let worker: Option<WorkerId> = v.id("hello.worker_id", &hello.worker_id);
        if worker.is_some_and(|id| id.0.is_nil()) {
            v.add("hello.worker_id", "must not be the nil UUID");
        }
        v.text("hello.version", &hello.version, 1, 64);
        let max = limits::MAX_WORKER_CAPACITY;
        if !u32::try_from(hello.capacity).is_ok_and(|c| (1..=max).contains(&c)) {
            v.add("hello.capacity", format!("must be 1 to {max}"));
        }
        v.finish()?;
        match worker {
            Some(worker) => Ok(Hello {
                worker,
                version: hello.version,
                capacity: hello.capacity,
            }),
            None => Err(ApiError::invalid("hello.worker_id", "is required")),
        }
    }
}

impl TryFrom<pb::SessionRequest> for Report {
    type Error = ApiError;

    fn try_from(message: pb::SessionRequest) -> Result<Self, ApiError> {
        match message.kind {
            Some(In::Hello(_)) => Err(ApiError::invalid("hello", "may only be sent once")),
            Some(In::Heartbeat(heartbeat)) => heartbeat_report(&heartbeat),
            Some(In::Output(output)) => output_report(output),
            Some(In::Event(event)) => event_report(event),
            Some(In::Result(result)) => result_report(result),
            Some(In::Release(release)) => {
                let mut v = Violations::new();
                let lease = lease(&mut v, "release.lease", release.lease.as_ref());
                v.finish()?;
                Ok(Report::Release(required(lease, "release.lease")?))
            }
            Some(In::Step(step)) => step_report(step),
            Some(In::Usage(usage)) => usage_report(usage),
            None => Err(ApiError::invalid("kind", "is required")),
        }
    }
}

fn heartbeat_report(heartbeat: &pb::WorkerHeartbeat) -> Result<Report, ApiError> {
    let max = limits::MAX_HEARTBEAT_LEASES;
    if heartbeat.leases.len() > max {
        return Err(ApiError::invalid(
            "heartbeat.leases",
            format!("at most {max} leases"),
        ));
    }
    let mut v = Violations::new();
    let leases: Vec<Option<Lease>> = heartbeat
        .leases
        .iter()
        .enumerate()
        .map(|(i, l)| lease(&mut v, &format!("heartbeat.leases[{i}]"), Some(l)))
        .collect();
    v.finish()?;
    Ok(Report::Heartbeat(leases.into_iter().flatten().collect()))
}

fn output_report(output: pb::WorkerOutput) -> Result<Report, ApiError> {
    let mut v = Violations::new();
    let lease = lease(&mut v, "output.lease", output.lease.as_ref());
    if !(0..=limits::MAX_DELTA_INDEX).contains(&output.index) {
        v.add(
            "output.index",
            format!("must be 0 to {}", limits::MAX_DELTA_INDEX),
        );
    }
    if output.reset {
        if !output.text.is_empty() {
            v.add("output.text", "must be empty in a reset");
        }
        v.finish()?;
        return Ok(Report::OutputReset {
            lease: required(lease, "output.lease")?,
            index: output.index,
        });
    }
    // Sizes are checked on the text as stored: NUL (1 byte) becomes U+FFFD (3 bytes).
    let text = without_nul(&output.text).into_owned();
    if text.len() > limits::MAX_DELTA_BYTES {
        v.add("output.text", "must be at most 64 KiB");
    }
    v.finish()?;
    Ok(Report::Output {
        lease: required(lease, "output.lease")?,
        index: output.index,
        text,
    })
}

fn event_report(event: pb::WorkerEvent) -> Result<Report, ApiError> {
    let mut v = Violations::new();
    let lease = lease(&mut v, "event.lease", event.lease.as_ref());
    let valid_action = event.action.strip_prefix("task.").is_some_and(|rest| {
        (1..=60).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')
    });
    if !valid_action {
        v.add("event.action", "must be \"task.\" and 1 to 60 of [a-z_.]");
    }
    let mut data = event
        .data
        .as_ref()
        .map(convert::struct_to_json)
        .unwrap_or_else(|| serde_json::json!({}));
    let encoded = data.to_string();
    if encoded.contains("\\u0000") {
        v.add("event.data", "must not contain NUL characters");
    }
    if encoded.len() > limits::MAX_EVENT_DATA_BYTES {
        v.add("event.data", "must be at most 16 KiB as JSON");
    }
    v.finish()?;
    let lease = required(lease, "event.lease")?;
    if let Some(map) = data.as_object_mut() {
        map.insert("attempt".to_owned(), lease.attempt.into());
    }
    Ok(Report::Event {
        lease,
        action: event.action,
        data,
    })
}

fn result_report(result: pb::WorkerResult) -> Result<Report, ApiError> {
    let mut v = Violations::new();
    let lease = lease(&mut v, "result.lease", result.lease.as_ref());
    v.finish()?;
    let lease = required(lease, "result.lease")?;
    Ok(match result_outcome(result.outcome) {
        Ok(outcome) => Report::Result { lease, outcome },
        Err(error) => Report::MalformedResult {
            lease,
            reason: format!("invalid result: {error}"),
        },
    })
}

fn result_outcome(outcome: Option<pb::worker_result::Outcome>) -> Result<ResultOutcome, String> {
    match outcome {
        Some(pb::worker_result::Outcome::Success(success)) => success_outcome(&success),
        Some(pb::worker_result::Outcome::Failure(failure)) => {
            let code_chars = failure.code.chars().count();
            if !(1..=limits::MAX_CODE_CHARS).contains(&code_chars) {
                return Err(format!(
                    "result.failure.code must be 1 to {} characters",
                    limits::MAX_CODE_CHARS
                ));
            }
            Ok(ResultOutcome::Failure {
                code: without_nul(&failure.code).into_owned(),
                message: without_nul(truncate_bytes(
                    &failure.message,
                    limits::MAX_FAILURE_MESSAGE_BYTES,
                ))
                .into_owned(),
                retryable: failure.retryable,
            })
        }
        Some(pb::worker_result::Outcome::RequiresAction(action)) => {
            if action.position < 1 {
                return Err("result.requires_action.position must be at least 1".to_owned());
            }
            Ok(ResultOutcome::RequiresAction {
                position: action.position,
            })
        }
        None => Err("result.outcome is required".to_owned()),
    }
}

fn success_outcome(success: &pb::WorkerSuccess) -> Result<ResultOutcome, String> {
    let mut problems = Vec::new();
    // Model text may hold NUL; it is replaced rather than refused, as in deltas, and the
    // size is checked on the text as stored (U+FFFD takes 3 bytes where NUL took 1).
    let output = without_nul(&success.output).into_owned();
    if output.len() > limits::MAX_OUTPUT_BYTES {
        problems.push("result.success.output must be at most 1 MiB".to_owned());
    }
    if success.finish_reason.chars().count() > limits::MAX_CODE_CHARS {
        problems.push(format!(
            "result.success.finish_reason must be at most {} characters",
            limits::MAX_CODE_CHARS
        ));
    }
    if success.calls.len() > limits::MAX_MODEL_CALLS {
        problems.push(format!(
            "result.success.calls: at most {} calls",
            limits::MAX_MODEL_CALLS
        ));
    }
    let calls = success
        .calls
        .iter()
        .enumerate()
        .take(limits::MAX_MODEL_CALLS)
        .map(|(i, call)| model_call(&format!("result.success.calls[{i}]"), call, &mut problems))
        .collect();
    if success.position < 0 {
        problems.push("result.success.position must not be negative".to_owned());
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(ResultOutcome::Success {
        output,
        finish_reason: without_nul(&success.finish_reason).into_owned(),
        calls,
        position: success.position,
    })
}

/// Parses one reported model call, recording what is wrong with it in `problems`.
fn model_call(field: &str, call: &pb::ModelCall, problems: &mut Vec<String>) -> ModelCallRecord {
    let max_chars = limits::MAX_MODEL_CALL_FIELD_CHARS;
    let fits = |text: &str| (1..=max_chars).contains(&text.chars().count()) && !text.contains('\0');
    let optional_fits = |text: &str| text.is_empty() || fits(text);
    let usage = call.usage.unwrap_or_default();
    if !fits(&call.provider_request_id) || !fits(&call.model) {
        problems.push(format!(
            "{field}: provider_request_id and model must be 1 to {max_chars} characters \
             without NUL"
        ));
    }
    if !optional_fits(&call.provider)
        || !optional_fits(&call.outcome)
        || !optional_fits(&call.vendor_request_id)
    {
        problems.push(format!(
            "{field}: provider, outcome and vendor_request_id must be at most {max_chars} \
             characters without NUL"
        ));
    }
    let counts = [
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_input_tokens,
        usage.cache_write_input_tokens,
        usage.reasoning_tokens,
    ];
    if call.step < 0
        || counts.iter().any(|n| !(0..=MAX_CALL_TOKENS).contains(n))
        || !(0..=MAX_CALL_COST_MICROS).contains(&usage.cost_micros)
        || call.latency_ms < 0
        || call.first_token_ms < 0
    {
        problems.push(format!(
            "{field}: step, usage and timings must not be negative, token counts at most \
             {MAX_CALL_TOKENS} and the cost at most {MAX_CALL_COST_MICROS} micro-dollars"
        ));
    }
    let id = if call.id.is_empty() {
        uuid::Uuid::now_v7()
    } else if let Ok(id) = uuid::Uuid::try_parse(&call.id) {
        id
    } else {
        problems.push(format!("{field}.id must be a UUID"));
        uuid::Uuid::nil()
    };
    let positive = |ms: i64| (ms > 0).then_some(ms);
    ModelCallRecord {
        id,
        step: call.step,
        provider_request_id: call.provider_request_id.clone(),
        provider: call.provider.clone(),
        model: call.model.clone(),
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cache_read_input_tokens: usage.cache_read_input_tokens,
        cache_write_input_tokens: usage.cache_write_input_tokens,
        reasoning_tokens: usage.reasoning_tokens,
        cost_micros: usage.cost_micros,
        unpriced: call.unpriced,
        vendor_request_id: (!call.vendor_request_id.is_empty())
            .then(|| call.vendor_request_id.clone()),
        latency_ms: positive(call.latency_ms),
        first_token_ms: positive(call.first_token_ms),
        outcome: if call.outcome.is_empty() {
            "ok".to_owned()
        } else {
            call.outcome.clone()
        },
    }
}

/// Most tokens of any kind one call may report (a million times the largest context
/// window): more is a broken worker or server, and would only overflow sums.
const MAX_CALL_TOKENS: i64 = 1_000_000_000_000;
/// Most one call may cost, in micro-dollars ($1 billion).
const MAX_CALL_COST_MICROS: i64 = 1_000_000_000_000_000;

/// A reported step, or what is wrong with it. The lease must parse; a step whose content is
/// refused is still metered (its call was paid for) when the call itself parses.
fn step_report(step: pb::WorkerStep) -> Result<Report, ApiError> {
    let mut v = Violations::new();
    let lease = lease(&mut v, "step.lease", step.lease.as_ref());
    let mut problems = Vec::new();
    let text = without_nul(&step.text).into_owned();
    if text.len() > limits::MAX_OUTPUT_BYTES {
        problems.push("step.text must be at most 1 MiB".to_owned());
    }
    if step.step < 0 || step.position < 1 {
        problems
            .push("step.step must not be negative and step.position must be at least 1".to_owned());
    }
    if step.finish_reason.chars().count() > limits::MAX_CODE_CHARS {
        problems.push(format!(
            "step.finish_reason must be at most {} characters",
            limits::MAX_CODE_CHARS
        ));
    }
    if step.tool_calls.len() > tools::MAX_TOOL_CALLS {
        problems.push(format!(
            "step.tool_calls: at most {}",
            tools::MAX_TOOL_CALLS
        ));
    }
    let mut tool_calls = Vec::with_capacity(step.tool_calls.len().min(tools::MAX_TOOL_CALLS));
    let mut ids = std::collections::HashSet::new();
    for (i, call) in step
        .tool_calls
        .iter()
        .take(tools::MAX_TOOL_CALLS)
        .enumerate()
    {
        if !tools::is_storable_tool_call_id(&call.id) || !ids.insert(call.id.as_str()) {
            problems.push(format!(
                "step.tool_calls[{i}].id must be 1 to {} characters without NUL, unique in the step",
                tools::MAX_TOOL_CALL_ID_CHARS
            ));
        }
        if !tools::is_valid_tool_name(&call.name) {
            problems.push(format!(
                "step.tool_calls[{i}].name is not a valid tool name"
            ));
        }
        if call.arguments.len() > tools::MAX_TOOL_ARGUMENTS_BYTES {
            problems.push(format!(
                "step.tool_calls[{i}].arguments must be at most {} bytes",
                tools::MAX_TOOL_ARGUMENTS_BYTES
            ));
        }
        tool_calls.push(ToolCallRecord {
            id: call.id.clone(),
            name: call.name.clone(),
            arguments: without_nul(&call.arguments).into_owned(),
        });
    }
    let call = match &step.call {
        Some(call) => model_call("step.call", call, &mut problems),
        None => {
            problems.push("step.call is required".to_owned());
            model_call("step.call", &pb::ModelCall::default(), &mut Vec::new())
        }
    };
    v.finish()?;
    let lease = required(lease, "step.lease")?;
    if !problems.is_empty() {
        let mut call_problems = Vec::new();
        if let Some(wire) = &step.call {
            let call = model_call("step.call", wire, &mut call_problems);
            if call_problems.is_empty() {
                tracing::warn!(
                    problems = %problems.join("; "),
                    "refusing a worker's step; metering its call only"
                );
                return Ok(Report::Usage {
                    lease,
                    calls: vec![call],
                });
            }
        }
        return Err(ApiError::invalid("step", problems.join("; ")));
    }
    Ok(Report::Step {
        lease,
        step: Box::new(StepRecord {
            step: step.step,
            position: step.position,
            text,
            tool_calls,
            finish_reason: without_nul(&step.finish_reason).into_owned(),
            call,
        }),
    })
}

/// Reported usage of failed calls.
fn usage_report(usage: pb::WorkerUsage) -> Result<Report, ApiError> {
    let mut v = Violations::new();
    let lease = lease(&mut v, "usage.lease", usage.lease.as_ref());
    let max = 100;
    if usage.calls.len() > max {
        v.add("usage.calls", format!("at most {max} calls"));
    }
    v.finish()?;
    let lease = required(lease, "usage.lease")?;
    let mut problems = Vec::new();
    let calls = usage
        .calls
        .iter()
        .enumerate()
        .map(|(i, call)| model_call(&format!("usage.calls[{i}]"), call, &mut problems))
        .collect();
    if !problems.is_empty() {
        return Err(ApiError::invalid("usage", problems.join("; ")));
    }
    Ok(Report::Usage { lease, calls })
}

/// Parses a lease reference, recording what is wrong with it.
fn lease(v: &mut Violations, field: &str, lease: Option<&pb::LeaseRef>) -> Option<Lease> {
    let Some(lease) = lease else {
        v.add(field, "is required");
        return None;
    };
    let tenant = v.id(&format!("{field}.workspace_id"), &lease.workspace_id);
    let task = v.id(&format!("{field}.task_id"), &lease.task_id);
    if lease.attempt < 1 {
        v.add(&format!("{field}.attempt"), "must be at least 1");
    }
    Some(Lease {
        tenant: tenant?,
        task: task?,
        attempt: lease.attempt,
    })
}

/// The lease once the violations are known to be empty.
fn required(lease: Option<Lease>, field: &str) -> Result<Lease, ApiError> {
    lease.ok_or_else(|| ApiError::invalid(field, "is required"))
}

/// The protobuf form of a lease.
pub(super) fn lease_ref(lease: Lease) -> pb::LeaseRef {
    pb::LeaseRef {
        workspace_id: lease.tenant.to_string(),
        task_id: lease.task.to_string(),
        attempt: lease.attempt,
    }
}

#[cfg(test)]
mod tests;
