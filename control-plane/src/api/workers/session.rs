//! One worker's open session: reads its reports in order, records each through the store,
//! and relays cancellations from the fan-out.

use std::collections::{BTreeMap, HashSet};

use agentplane_proto::v1 as pb;
use pb::session_response::Kind as Out;
use tokio::sync::{broadcast, mpsc};
use tonic::{Status, Streaming};

use super::parse::lease_ref;
use crate::api::State;
use crate::domain::worker::{Lease, Report, ResultOutcome};
use crate::error::ApiError;
use crate::fanout::Notice;
use crate::ids::{TaskId, TenantId, WorkerId};
use crate::store::{LeaseCheck, NewEvent, StoreError};

pub(super) type Sender = mpsc::Sender<Result<pb::SessionResponse, Status>>;

/// Why a message could not be handled.
enum Failure {
    /// The message, or what recording it ran into.
    Api(ApiError),
    /// The worker's side of the stream went away.
    Gone,
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Failure::Api(error)
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Failure::Api(error.into())
    }
}

/// One worker's open session.
pub(super) struct Session {
    pub(super) state: State,
    pub(super) worker: WorkerId,
    pub(super) actor: String,
    pub(super) sender: Sender,
}

impl Session {
    pub(super) async fn run(
        self,
        mut inbound: Streaming<pb::SessionRequest>,
        mut notices: broadcast::Receiver<Notice>,
    ) {
        let shutdown = self.state.shutdown.clone();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                message = inbound.message() => match message {
                    Ok(Some(message)) => match self.handle(message).await {
                        Ok(()) => {}
                        // One malformed message is dropped; ending the session would only
                        // make the worker reconnect and send it again.
                        Err(Failure::Api(error @ ApiError::InvalidArgument(_))) => {
                            let status = Status::from(error);
                            tracing::warn!(worker_id = %self.worker, %status, "dropping an invalid message from a worker");
                        }
                        Err(Failure::Api(error)) => {
                            let status = Status::from(error);
                            tracing::warn!(worker_id = %self.worker, %status, "ending worker session");
                            let _ = self.sender.send(Err(status)).await;
                            break;
                        }
                        Err(Failure::Gone) => break,
                    },
                    Ok(None) => break,
                    Err(status) => {
                        tracing::info!(worker_id = %self.worker, %status, "worker stream broke");
                        break;
                    }
                },
                notice = notices.recv() => match notice {
                    Ok(Notice::TaskCancel { tenant, task, attempt, worker }) if worker == self.worker => {
                        let cancel = pb::CancelAttempt {
                            lease: Some(lease_ref(Lease { tenant, task, attempt })),
                            reason: "canceled".to_owned(),
                        };
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

    async fn send(&self, kind: Out) -> Result<(), Failure> {
        self.sender
            .send(Ok(pb::SessionResponse { kind: Some(kind) }))
            .await
            .map_err(|_| Failure::Gone)
    }

    /// Parses and records one message.
    async fn handle(&self, message: pb::SessionRequest) -> Result<(), Failure> {
        match Report::try_from(message)? {
            Report::Heartbeat(leases) => self.heartbeat(leases).await,
            Report::Output { lease, index, text } => {
                let mut tx = self.state.store.tenant_unchecked(lease.tenant).await?;
                // Output for an attempt this worker no longer holds is dropped; the heartbeat
                // or a cancel tells the worker to stop.
                tx.append_output(self.worker, lease, index, &text).await?;
                tx.commit().await?;
                Ok(())
            }
            Report::Event {
                lease,
                action,
                data,
            } => {
                let mut tx = self.state.store.tenant_unchecked(lease.tenant).await?;
                if tx.holds_attempt(self.worker, lease).await? {
                    let event = NewEvent {
                        actor: &self.actor,
                        action: &action,
                        resource_type: "task",
                        resource_id: lease.task.0,
                        request_id: None,
                        data,
                    };
                    tx.append_event(event).await?;
                    tx.commit().await?;
                }
                Ok(())
            }
            Report::Result { lease, outcome } => self.result(lease, &outcome).await,
            Report::MalformedResult { lease, reason } => {
                self.ack(lease, LeaseCheck::Rejected(reason)).await
            }
            Report::Release(lease) => {
                let mut tx = self.state.store.tenant_unchecked(lease.tenant).await?;
                let check = tx.release_attempt(self.worker, lease, &self.actor).await?;
                tx.commit().await?;
                self.ack(lease, check).await
            }
        }
    }

    async fn heartbeat(&self, leases: Vec<Lease>) -> Result<(), Failure> {
        let mut by_tenant: BTreeMap<TenantId, Vec<(TaskId, i32)>> = BTreeMap::new();
        for lease in &leases {
            by_tenant
                .entry(lease.tenant)
                .or_default()
                .push((lease.task, lease.attempt));
        }
        let mut renewed = HashSet::with_capacity(leases.len());
        for (tenant, held) in by_tenant {
            let mut tx = self.state.store.tenant_unchecked(tenant).await?;
            let now_renewed = tx
                .renew_leases(self.worker, &held, self.state.lease_duration)
                .await?;
            tx.commit().await?;
            renewed.extend(now_renewed.into_iter().map(|(task, attempt)| Lease {
                tenant,
                task,
                attempt,
            }));
        }
        let (kept, lost): (Vec<Lease>, Vec<Lease>) = leases
            .into_iter()
            .partition(|lease| renewed.contains(lease));
        let ack = pb::HeartbeatAck {
            renewed: kept.into_iter().map(lease_ref).collect(),
            lost: lost.into_iter().map(lease_ref).collect(),
        };
        self.state.store.touch_worker(self.worker).await?;
        self.send(Out::HeartbeatAck(ack)).await
    }

    async fn result(&self, lease: Lease, outcome: &ResultOutcome) -> Result<(), Failure> {
        let mut tx = self.state.store.tenant_unchecked(lease.tenant).await?;
        let check = tx
            .record_result(self.worker, lease, outcome, &self.actor)
            .await?;
        tx.commit().await?;
        self.ack(lease, check).await
    }

    async fn ack(&self, lease: Lease, check: LeaseCheck) -> Result<(), Failure> {
        let (accepted, reason) = match check {
            LeaseCheck::Accepted | LeaseCheck::AlreadyRecorded => (true, String::new()),
            LeaseCheck::Rejected(reason) => (false, reason),
        };
        if !accepted {
            tracing::info!(worker_id = %self.worker, task_id = %lease.task, attempt = lease.attempt, reason, "result not recorded");
        }
        let ack = pb::ResultAck {
            lease: Some(lease_ref(lease)),
            accepted,
            reason,
        };
        self.send(Out::ResultAck(ack)).await
    }
}
