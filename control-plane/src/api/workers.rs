//! WorkerService: the session each worker holds open with a control plane.

use std::collections::BTreeMap;
use std::time::Duration;

use agentplane_proto::v1 as pb;
use pb::session_request::Kind as In;
use pb::session_response::Kind as Out;
use pb::worker_service_server::WorkerService;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{ResponseStream, STREAM_BUFFER, State, convert};
use crate::domain::task::{self as rules, truncate_bytes};
use crate::domain::validate::Violations;
use crate::error::ApiError;
use crate::fanout::Notice;
use crate::ids::{TaskId, TenantId, WorkerId};
use crate::spawn::spawn_named;
use crate::store::{LeaseCheck, ModelCallRecord, ResultOutcome};

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most leases in one heartbeat.
const MAX_HEARTBEAT_LEASES: usize = 10_000;
/// Largest event payload, as JSON bytes.
const MAX_EVENT_DATA_BYTES: usize = 16 * 1024;

/// Handlers of WorkerService.
#[derive(Clone, Debug)]
pub struct WorkerApi {
    state: State,
}

impl WorkerApi {
    /// Handlers over shared state.
    pub fn new(state: State) -> Self {
        Self { state }
    }
}

type Sender = mpsc::Sender<Result<pb::SessionResponse, Status>>;

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    type SessionStream = ResponseStream<pb::SessionResponse>;

    async fn session(
        &self,
        request: Request<Streaming<pb::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 seconds"))??;
        let Some(pb::SessionRequest {
            kind: Some(In::Hello(hello)),
        }) = first
        else {
            return Err(ApiError::invalid("hello", "the first message must be a hello").into());
        };
        let mut v = Violations::new();
        let worker: Option<WorkerId> = v.id("hello.worker_id", &hello.worker_id);
        v.text("hello.version", &hello.version, 1, 64);
        if !(1..=10_000).contains(&hello.capacity) {
            v.add("hello.capacity", "must be 1 to 10000");
        }
        v.finish()?;
        let Some(worker) = worker else {
            return Err(ApiError::invalid("hello.worker_id", "is required").into());
        };
        self.state
            .store
            .upsert_worker(worker, &hello.version, hello.capacity)
            .await?;
        tracing::info!(worker_id = %worker, version = hello.version, capacity = hello.capacity, "worker connected");

        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let welcome = Out::Welcome(pb::WorkerWelcome {
            heartbeat_interval: Some(duration(self.state.heartbeat_interval)),
            lease_duration: Some(duration(self.state.lease_duration)),
        });
        let _ = sender
            .send(Ok(pb::SessionResponse {
                kind: Some(welcome),
            }))
            .await;
        let session = Session {
            state: self.state.clone(),
            worker,
            actor: format!("worker:{worker}"),
            sender,
        };
        let notices = self.state.fanout.subscribe();
        spawn_named("worker_session", session.run(inbound, notices));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// One worker's open session.
struct Session {
    state: State,
    worker: WorkerId,
    actor: String,
    sender: Sender,
}

impl Session {
    async fn run(
        self,
        mut inbound: Streaming<pb::SessionRequest>,
        mut notices: broadcast::Receiver<Notice>,
    ) {
        let shutdown = self.state.shutdown.clone();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        match self.handle(message).await {
                            Ok(()) => {}
                            // One malformed message is dropped; ending the session would only
                            // make the worker reconnect and send it again.
                            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                                tracing::warn!(worker_id = %self.worker, %status, "dropping an invalid message from a worker");
                            }
                            Err(status) => {
                                tracing::warn!(worker_id = %self.worker, %status, "ending worker session");
                                let _ = self.sender.send(Err(status)).await;
                                break;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::info!(worker_id = %self.worker, %status, "worker stream broke");
                        break;
                    }
                },
                notice = notices.recv() => match notice {
                    Ok(Notice::TaskCancel { tenant, task, attempt, worker }) if worker == self.worker => {
                        let cancel = pb::CancelAttempt { lease: Some(lease_ref(tenant, task, attempt)), reason: "canceled".to_owned() };
                        if self.send(Out::Cancel(cancel)).await.is_err() {
                            break;
                        }
                    }
                    // A missed cancel is caught by the next heartbeat, which reports the lease lost.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        tracing::info!(worker_id = %self.worker, "worker disconnected");
    }

    async fn send(&self, kind: Out) -> Result<(), Status> {
        self.sender
            .send(Ok(pb::SessionResponse { kind: Some(kind) }))
            .await
            .map_err(|_| Status::cancelled("worker went away"))
    }

    async fn handle(&self, message: pb::SessionRequest) -> Result<(), Status> {
        match message.kind {
            Some(In::Hello(_)) => Err(ApiError::invalid("hello", "may only be sent once").into()),
            Some(In::Heartbeat(heartbeat)) => self.heartbeat(heartbeat).await,
            Some(In::Output(output)) => self.output(output).await,
            Some(In::Event(event)) => self.event(event).await,
            Some(In::Result(result)) => self.result(result).await,
            Some(In::Release(release)) => self.release(release).await,
            None => Err(ApiError::invalid("kind", "is required").into()),
        }
    }

    async fn heartbeat(&self, heartbeat: pb::WorkerHeartbeat) -> Result<(), Status> {
        if heartbeat.leases.len() > MAX_HEARTBEAT_LEASES {
            return Err(ApiError::invalid("heartbeat.leases", "at most 10000 leases").into());
        }
        let mut by_tenant: BTreeMap<TenantId, Vec<(TaskId, i32)>> = BTreeMap::new();
        for lease in &heartbeat.leases {
            let (tenant, task, attempt) = parse_lease(Some(lease), "heartbeat.leases")?;
            by_tenant.entry(tenant).or_default().push((task, attempt));
        }
        let mut ack = pb::HeartbeatAck::default();
        for (tenant, leases) in by_tenant {
            let mut tx = self.state.store.tenant_unchecked(tenant).await?;
            let renewed = tx
                .renew_leases(self.worker, &leases, self.state.lease_duration)
                .await?;
            tx.commit().await?;
            for (task, attempt) in leases {
                let lease = lease_ref(tenant, task, attempt);
                if renewed.contains(&(task, attempt)) {
                    ack.renewed.push(lease);
                } else {
                    ack.lost.push(lease);
                }
            }
        }
        self.state.store.touch_worker(self.worker).await?;
        self.send(Out::HeartbeatAck(ack)).await
    }

    async fn output(&self, output: pb::WorkerOutput) -> Result<(), Status> {
        let (tenant, task, attempt) = parse_lease(output.lease.as_ref(), "output.lease")?;
        if output.index < 0 {
            return Err(ApiError::invalid("output.index", "must not be negative").into());
        }
        if output.text.len() > rules::MAX_DELTA_BYTES {
            return Err(ApiError::invalid("output.text", "must be at most 64 KiB").into());
        }
        let mut tx = self.state.store.tenant_unchecked(tenant).await?;
        // Output for an attempt this worker no longer holds is dropped; the heartbeat or a
        // cancel tells the worker to stop.
        tx.append_output(
            self.worker,
            task,
            attempt,
            output.index,
            &without_nul(&output.text),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn event(&self, event: pb::WorkerEvent) -> Result<(), Status> {
        let (tenant, task, attempt) = parse_lease(event.lease.as_ref(), "event.lease")?;
        let valid_action = event.action.strip_prefix("task.").is_some_and(|rest| {
            (1..=60).contains(&rest.len())
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')
        });
        if !valid_action {
            return Err(ApiError::invalid(
                "event.action",
                "must be \"task.\" and 1 to 60 of [a-z_.]",
            )
            .into());
        }
        let mut data = event
            .data
            .as_ref()
            .map(convert::struct_to_json)
            .unwrap_or_else(|| serde_json::json!({}));
        let encoded = data.to_string();
        if encoded.contains("\\u0000") {
            return Err(ApiError::invalid("event.data", "must not contain NUL characters").into());
        }
        if encoded.len() > MAX_EVENT_DATA_BYTES {
            return Err(ApiError::invalid("event.data", "must be at most 16 KiB as JSON").into());
        }
        if let Some(map) = data.as_object_mut() {
            map.insert("attempt".to_owned(), attempt.into());
        }
        let mut tx = self.state.store.tenant_unchecked(tenant).await?;
        if tx.holds_attempt(self.worker, task, attempt).await? {
            tx.append_event(crate::store::NewEvent {
                actor: &self.actor,
                action: &event.action,
                resource_type: "task",
                resource_id: task.0,
                request_id: None,
                data,
            })
            .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    async fn result(&self, result: pb::WorkerResult) -> Result<(), Status> {
        let (tenant, task, attempt) = parse_lease(result.lease.as_ref(), "result.lease")?;
        let outcome = match result_outcome(result.outcome) {
            Ok(outcome) => outcome,
            // Acknowledge a malformed result as not recorded, so the worker stops resending
            // it; the lease runs out and the task is retried.
            Err(status) => {
                let check = LeaseCheck::Rejected(format!("invalid result: {}", status.message()));
                return self.ack(tenant, task, attempt, check).await;
            }
        };
        let mut tx = self.state.store.tenant_unchecked(tenant).await?;
        let check = tx
            .record_result(self.worker, task, attempt, &outcome, &self.actor)
            .await?;
        tx.commit().await?;
        self.ack(tenant, task, attempt, check).await
    }

    async fn release(&self, release: pb::WorkerRelease) -> Result<(), Status> {
        let (tenant, task, attempt) = parse_lease(release.lease.as_ref(), "release.lease")?;
        let mut tx = self.state.store.tenant_unchecked(tenant).await?;
        let check = tx
            .release_attempt(self.worker, task, attempt, &self.actor)
            .await?;
        tx.commit().await?;
        self.ack(tenant, task, attempt, check).await
    }

    async fn ack(
        &self,
        tenant: TenantId,
        task: TaskId,
        attempt: i32,
        check: LeaseCheck,
    ) -> Result<(), Status> {
        let (accepted, reason) = match check {
            LeaseCheck::Accepted | LeaseCheck::AlreadyRecorded => (true, String::new()),
            LeaseCheck::Rejected(reason) => (false, reason),
        };
        if !accepted {
            tracing::info!(worker_id = %self.worker, task_id = %task, attempt, reason, "result not recorded");
        }
        let ack = pb::ResultAck {
            lease: Some(lease_ref(tenant, task, attempt)),
            accepted,
            reason,
        };
        self.send(Out::ResultAck(ack)).await
    }
}

fn result_outcome(outcome: Option<pb::worker_result::Outcome>) -> Result<ResultOutcome, Status> {
    match outcome {
        Some(pb::worker_result::Outcome::Success(success)) => success_outcome(success),
        Some(pb::worker_result::Outcome::Failure(failure)) => {
            let mut v = Violations::new();
            v.text("result.failure.code", &failure.code, 1, 64);
            v.finish()?;
            Ok(ResultOutcome::Failure {
                code: failure.code,
                message: without_nul(truncate_bytes(
                    &failure.message,
                    rules::MAX_FAILURE_MESSAGE_BYTES,
                )),
                retryable: failure.retryable,
            })
        }
        None => Err(ApiError::invalid("result.outcome", "is required").into()),
    }
}

fn success_outcome(success: pb::WorkerSuccess) -> Result<ResultOutcome, Status> {
    let mut v = Violations::new();
    // Model text may hold NUL; it is replaced below rather than refused, as deltas are.
    if success.output.len() > rules::MAX_OUTPUT_BYTES {
        v.add("result.success.output", "must be at most 1 MiB");
    }
    if success.finish_reason.chars().count() > 64 {
        v.add(
            "result.success.finish_reason",
            "must be at most 64 characters",
        );
    }
    if success.calls.len() > rules::MAX_MODEL_CALLS {
        v.add("result.success.calls", "at most 1000 calls");
    }
    let mut calls = Vec::with_capacity(success.calls.len().min(rules::MAX_MODEL_CALLS));
    for (i, call) in success
        .calls
        .iter()
        .enumerate()
        .take(rules::MAX_MODEL_CALLS)
    {
        v.text(
            &format!("result.success.calls[{i}].provider_request_id"),
            &call.provider_request_id,
            1,
            200,
        );
        v.text(
            &format!("result.success.calls[{i}].model"),
            &call.model,
            1,
            200,
        );
        let usage = call.usage.unwrap_or_default();
        if call.step < 0
            || usage.input_tokens < 0
            || usage.output_tokens < 0
            || usage.cost_micros < 0
        {
            v.add(
                &format!("result.success.calls[{i}]"),
                "step and usage must not be negative",
            );
        }
        calls.push(ModelCallRecord {
            step: call.step,
            provider_request_id: call.provider_request_id.clone(),
            model: call.model.clone(),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cost_micros: usage.cost_micros,
        });
    }
    v.finish()?;
    Ok(ResultOutcome::Success {
        output: without_nul(&success.output),
        finish_reason: without_nul(&success.finish_reason),
        calls,
    })
}

fn parse_lease(
    lease: Option<&pb::LeaseRef>,
    field: &str,
) -> Result<(TenantId, TaskId, i32), Status> {
    let Some(lease) = lease else {
        return Err(ApiError::invalid(field, "is required").into());
    };
    let mut v = Violations::new();
    let tenant: Option<TenantId> = v.id(&format!("{field}.workspace_id"), &lease.workspace_id);
    let task: Option<TaskId> = v.id(&format!("{field}.task_id"), &lease.task_id);
    if lease.attempt < 1 {
        v.add(&format!("{field}.attempt"), "must be at least 1");
    }
    v.finish()?;
    match (tenant, task) {
        (Some(tenant), Some(task)) => Ok((tenant, task, lease.attempt)),
        _ => Err(ApiError::invalid(field, "is required").into()),
    }
}

fn lease_ref(tenant: TenantId, task: TaskId, attempt: i32) -> pb::LeaseRef {
    pb::LeaseRef {
        workspace_id: tenant.to_string(),
        task_id: task.to_string(),
        attempt,
    }
}

/// Model output may contain NUL, which PostgreSQL text cannot hold: it becomes U+FFFD.
fn without_nul(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}
