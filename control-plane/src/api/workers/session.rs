//! One worker's open session, in three lanes so that leases never wait behind data:
//!
//! - the reader takes each message off the stream, parses it, and hands heartbeats to the
//!   heartbeat lane and everything else to the data lane; it also relays cancellations;
//! - the heartbeat lane renews leases as soon as a heartbeat arrives, however deep the
//!   data backlog;
//! - the data lane records reports in batches: whatever queued up while the previous batch
//!   was written goes into one transaction per workspace, with the results of the batch
//!   written by a fixed number of set-based statements (`store/results.rs`). Acks are sent
//!   after the commit. Output deltas are published at once and stored in batches at most
//!   every 100 ms (`output.rs`), or with the next batch that sends acks, so an ack still
//!   means everything the worker sent before it is recorded.

use std::collections::{BTreeMap, HashSet};

use agentplane_proto::v1 as pb;
use pb::session_response::Kind as Out;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::output::LiveOutput;
use super::parse::lease_ref;
use crate::api::State;
use crate::domain::worker::{Lease, Report, ResultOutcome};
use crate::error::ApiError;
use crate::fanout::{Delivery, Subscription};
use crate::ids::{TaskId, TenantId, WorkerId};
use crate::spawn::spawn_named;
use crate::store::{AttemptEvent, LeaseCheck, StoreError};
use agentplane_core::notify::Notification;

pub(super) type Sender = mpsc::Sender<Result<pb::SessionResponse, Status>>;

/// Reports the data lane takes in one batch at most.
const MAX_BATCH: usize = 512;
/// Reports queued for the data lane before the reader waits (and the worker with it).
const DATA_QUEUE: usize = 4096;
/// Heartbeats queued for the heartbeat lane; a worker sends one every third of a lease.
const HEARTBEAT_QUEUE: usize = 4;

/// Why a report could not be recorded.
enum Failure {
    /// What recording it ran into.
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
#[derive(Clone)]
pub(super) struct Session {
    pub(super) state: State,
    pub(super) worker: WorkerId,
    pub(super) actor: String,
    pub(super) sender: Sender,
}

impl Session {
    /// Runs the session until the worker leaves, a lane fails, or the server shuts down.
    pub(super) async fn run(
        self,
        mut inbound: Streaming<pb::SessionRequest>,
        mut notices: Subscription,
    ) {
        let ended = self.state.shutdown.child_token();
        let (heartbeats, heartbeat_queue) = mpsc::channel(HEARTBEAT_QUEUE);
        let (data, data_queue) = mpsc::channel(DATA_QUEUE);
        spawn_named(
            "worker_heartbeats",
            self.clone()
                .lane(ended.clone(), heartbeat_lane(self.clone(), heartbeat_queue)),
        );
        spawn_named(
            "worker_reports",
            self.clone()
                .lane(ended.clone(), data_lane(self.clone(), data_queue)),
        );
        loop {
            tokio::select! {
                () = ended.cancelled() => break,
                message = inbound.message() => match message {
                    Ok(Some(message)) => match Report::try_from(message) {
                        Ok(Report::Heartbeat(leases)) => {
                            if heartbeats.send(leases).await.is_err() {
                                break;
                            }
                        }
                        Ok(report) => {
                            if data.send(report).await.is_err() {
                                break;
                            }
                        }
                        // One malformed message is dropped; ending the session would only
                        // make the worker reconnect and send it again.
                        Err(error) => {
                            let status = Status::from(error);
                            tracing::warn!(worker_id = %self.worker, %status, "dropping an invalid message from a worker");
                        }
                    },
                    Ok(None) => break,
                    Err(status) => {
                        tracing::info!(worker_id = %self.worker, %status, "worker stream broke");
                        break;
                    }
                },
                delivery = notices.recv() => match delivery {
                    Delivery::Notice(Notification::TaskCancel { tenant, task, attempt, worker }) if worker == self.worker => {
                        let cancel = pb::CancelAttempt {
                            lease: Some(lease_ref(Lease { tenant, task, attempt })),
                            reason: "canceled".to_owned(),
                        };
                        if self.send(Out::Cancel(cancel)).await.is_err() {
                            break;
                        }
                    }
                    // A missed cancel is caught by the next heartbeat, which reports the lease lost.
                    Delivery::Notice(_) | Delivery::Resync => {}
                },
            }
        }
        // The lanes finish what they hold, then stop as their queues close.
        drop((heartbeats, data));
        tracing::info!(worker_id = %self.worker, "worker disconnected");
    }

    /// Runs one lane; a failure ends the whole session (the worker reconnects and resends
    /// every ending not yet acknowledged).
    async fn lane(self, ended: CancellationToken, lane: impl Future<Output = Result<(), Failure>>) {
        match lane.await {
            Ok(()) | Err(Failure::Gone) => {}
            Err(Failure::Api(error)) => {
                let status = Status::from(error);
                tracing::warn!(worker_id = %self.worker, %status, "ending worker session");
                let _ = self.sender.send(Err(status)).await;
            }
        }
        ended.cancel();
    }

    async fn send(&self, kind: Out) -> Result<(), Failure> {
        self.sender
            .send(Ok(pb::SessionResponse { kind: Some(kind) }))
            .await
            .map_err(|_| Failure::Gone)
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
        for (tenant, mut held) in by_tenant {
            // In id order, like every statement that locks several tasks, so a renewal
            // cannot deadlock with a batch of reports or output of the same worker.
            held.sort_unstable();
            let mut tx = self.state.store.tenant_for_reports(tenant).await?;
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

    /// Records one batch of reports: output deltas are published now and join the pending
    /// ones; the other reports go into one transaction per workspace, in the order they
    /// arrived, results together at the end; then the acks. A batch that sends acks stores
    /// every pending delta first (each workspace's in its transaction), so an ack means
    /// everything the worker sent before it is recorded.
    async fn record_batch(
        &self,
        batch: Vec<Report>,
        output: &mut LiveOutput,
    ) -> Result<(), Failure> {
        let now = tokio::time::Instant::now();
        let mut by_tenant: BTreeMap<TenantId, Vec<Report>> = BTreeMap::new();
        let mut publish = Vec::new();
        let mut answers = false;
        for report in batch {
            match report {
                Report::Output { lease, index, text } => {
                    publish.extend(output.receive(lease, index, text, now));
                }
                Report::OutputReset { lease, index } => {
                    publish.extend(output.receive_reset(lease, index, now));
                }
                Report::Heartbeat(_) => {}
                report => {
                    let Some(lease) = report.lease() else {
                        continue;
                    };
                    match report {
                        // The attempt ends or goes back to the queue: its live output is
                        // dropped with it.
                        Report::Result { .. } | Report::Release(_) => {
                            answers = true;
                            output.forget(lease);
                        }
                        Report::MalformedResult { .. } => answers = true,
                        _ => {}
                    }
                    by_tenant.entry(lease.tenant).or_default().push(report);
                }
            }
        }
        // A failed publish costs watchers latency (they read the deltas once stored), not
        // output: it does not end the session.
        if let Err(error) = self.state.store.publish(&publish).await {
            tracing::warn!(%error, worker_id = %self.worker, "publishing output failed; watchers will read it once stored");
        }
        if answers || output.over_budget() {
            for tenant in output.pending_tenants() {
                by_tenant.entry(tenant).or_default();
            }
        }
        let mut acks = Vec::new();
        for (tenant, reports) in by_tenant {
            let mut tx = self.state.store.tenant_for_reports(tenant).await?;
            tx.check_keys_at_commit().await?;
            let deltas = output.take(tenant);
            let tasks: Vec<TaskId> = reports
                .iter()
                .filter_map(Report::lease)
                .chain(deltas.iter().map(|d| d.lease))
                .map(|l| l.task)
                .collect();
            tx.lock_tasks_in_order(&tasks).await?;
            // Output for an attempt this worker no longer holds is dropped; the heartbeat or
            // a cancel tells the worker to stop.
            let chains = tx.append_outputs(self.worker, &deltas).await?;
            let mut results: Vec<(Lease, ResultOutcome)> = Vec::new();
            let mut steps = Vec::new();
            let mut usage = Vec::new();
            for report in &reports {
                match report {
                    Report::Step { lease, step } => {
                        steps.push((*lease, &**step));
                        usage.push((*lease, &step.call));
                    }
                    Report::Usage { lease, calls } => {
                        usage.extend(calls.iter().map(|call| (*lease, call)));
                    }
                    _ => {}
                }
            }
            // Every call's usage (the steps' and the failed calls') in one statement, then
            // the steps, before the results: a result that waits for tool outputs needs its
            // step recorded.
            tx.record_usage(self.worker, &usage).await?;
            let stored_steps = tx.record_steps(self.worker, &steps).await?;
            // Events are appended together (one statement), before any later release, so
            // they keep their order relative to it.
            let mut events: Vec<AttemptEvent> = Vec::new();
            for report in reports {
                match report {
                    Report::Event {
                        lease,
                        action,
                        data,
                    } => events.push(AttemptEvent {
                        lease,
                        action,
                        data,
                    }),
                    Report::Result { lease, outcome } => results.push((lease, outcome)),
                    Report::MalformedResult { lease, reason } => {
                        acks.push((lease, LeaseCheck::Rejected(reason)));
                    }
                    Report::Release(lease) => {
                        tx.append_attempt_events(
                            self.worker,
                            &self.actor,
                            &std::mem::take(&mut events),
                        )
                        .await?;
                        let check = tx.release_attempt(self.worker, lease, &self.actor).await?;
                        acks.push((lease, check));
                    }
                    Report::Heartbeat(_)
                    | Report::Output { .. }
                    | Report::OutputReset { .. }
                    | Report::Step { .. }
                    | Report::Usage { .. } => {}
                }
            }
            tx.append_attempt_events(self.worker, &self.actor, &events)
                .await?;
            let checks = tx
                .record_results(self.worker, &results, &stored_steps, &self.actor)
                .await?;
            tx.commit().await?;
            output.stored(&deltas, &chains);
            acks.extend(results.into_iter().map(|(lease, _)| lease).zip(checks));
        }
        for (lease, check) in acks {
            self.ack(lease, check).await?;
        }
        Ok(())
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

/// Renews leases as heartbeats arrive.
async fn heartbeat_lane(
    session: Session,
    mut queue: mpsc::Receiver<Vec<Lease>>,
) -> Result<(), Failure> {
    while let Some(leases) = queue.recv().await {
        session.heartbeat(leases).await?;
    }
    Ok(())
}

impl Session {
    /// Stores every pending output delta: one transaction per workspace.
    async fn store_output(&self, output: &mut LiveOutput) -> Result<(), Failure> {
        for tenant in output.pending_tenants() {
            let deltas = output.take(tenant);
            let mut tx = self.state.store.tenant_for_reports(tenant).await?;
            tx.check_keys_at_commit().await?;
            let chains = tx.append_outputs(self.worker, &deltas).await?;
            tx.commit().await?;
            output.stored(&deltas, &chains);
        }
        Ok(())
    }
}

/// Records reports in batches of whatever queued up meanwhile, and stores pending output
/// when it is due.
async fn data_lane(session: Session, mut queue: mpsc::Receiver<Report>) -> Result<(), Failure> {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut output = LiveOutput::default();
    loop {
        let due = output.due();
        tokio::select! {
            received = queue.recv_many(&mut batch, MAX_BATCH) => {
                if received == 0 {
                    break;
                }
                session.record_batch(std::mem::take(&mut batch), &mut output).await?;
            }
            () = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                session.store_output(&mut output).await?;
            }
        }
    }
    // The worker left or the server is stopping: store what it sent.
    session.store_output(&mut output).await
}
