//! The claim loop: while the control-plane stream is up and capacity is free, claim tasks
//! and start an attempt for each. It wakes on `agentplane_task_ready` notifications and
//! also polls with backoff, so a lost notification costs latency, never a task.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use agentplane_telemetry::propagation;
use chrono::Utc;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::backoff::{Backoff, jittered};
use crate::lease::{Attempt, LeaseKey};
use crate::link::Outbound;
use crate::metrics::METRICS;
use agentplane_core::notify::channel;

use crate::queue::{self, ClaimRequest, ClaimedTask, WorkerLabels};
use crate::runner::{self, RunContext};
use crate::spawn::spawn_named;
use agentplane_core::ids::TenantId;

/// How long a busy worker waits for more of its slots to free before it claims, when
/// fewer than half are free. A claim is a transaction of about ten statements whatever its
/// size, so claiming one task per freed slot multiplied the database's work per task; an
/// idle worker (half or more of its slots free) claims at once.
const CLAIM_GATHER: Duration = Duration::from_millis(5);
/// First pause of the idle poll backoff.
const POLL_INTERVAL_MIN: Duration = Duration::from_millis(50);
/// Rounds of workspaces a claim loop goes through at once when each took nothing but left
/// workspaces unvisited, before it waits like an idle loop.
const MAX_EMPTY_ROUNDS: u32 = 8;
const LISTEN_RETRY_MIN: Duration = Duration::from_millis(500);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(30);

/// Everything the claim loop works with.
pub(crate) struct Claimer {
    pub(crate) pool: PgPool,
    pub(crate) worker_id: Uuid,
    /// One permit per task that may run at once.
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) capacity: u32,
    /// The labels this worker advertises.
    pub(crate) labels: WorkerLabels,
    pub(crate) poll_interval_max: Duration,
    pub(crate) wake: Arc<Notify>,
    /// Parent of every attempt's token: canceling it stops attempts for shutdown.
    pub(crate) attempts_shutdown: CancellationToken,
    pub(crate) context: Arc<RunContext>,
    pub(crate) stop: CancellationToken,
}

impl Claimer {
    /// Runs until `stop` fires. A claim in flight is finished (and its tasks started) first.
    pub(crate) async fn run(self) {
        let mut link = self.context.link.clone();
        let mut idle = Backoff::new(POLL_INTERVAL_MIN, self.poll_interval_max);
        // Where the next claim's round of workspaces starts: after the one the last ended
        // with, so that workspaces take turns across claims too.
        let mut resume_after: Option<TenantId> = None;
        // Rounds in a row that took nothing but left workspaces unvisited.
        let mut empty_rounds = 0;
        // Whether the last claim took tasks: only then is a backlog likely, and worth a
        // moment's wait for more slots to free (never after a wake-up, a poll or an empty
        // round, where a new task would only wait longer).
        let mut backlog = false;
        loop {
            let lease_duration = tokio::select! {
                up = link.wait_until_up() => match up {
                    Ok(lease_duration) => lease_duration,
                    Err(_) => return,
                },
                () = self.stop.cancelled() => return,
            };
            let permits = tokio::select! {
                permits = self.free_slots(std::mem::take(&mut backlog)) => permits,
                () = self.stop.cancelled() => return,
            };
            let Some(permits) = permits else { return };
            let wanted = u32::try_from(permits.len()).unwrap_or(u32::MAX);
            let claimed_at = Instant::now();
            let request = ClaimRequest {
                worker_id: self.worker_id,
                max: wanted,
                lease: lease_duration,
                labels: self.labels.clone(),
                resume_after,
            };
            let claimed = queue::claim(&self.pool, &request).await;
            record_claim(&claimed, claimed_at);
            match claimed {
                Ok(claim) if !claim.tasks.is_empty() => {
                    tracing::debug!(claimed = claim.tasks.len(), wanted, "claimed tasks");
                    resume_after = claim.resume_after;
                    empty_rounds = 0;
                    self.start_attempts(claim.tasks, permits, claimed_at).await;
                    idle.reset();
                    backlog = true;
                    // Capacity may still be free: try again at once.
                    continue;
                }
                Ok(claim) => {
                    resume_after = claim.resume_after;
                    if claim.more_workspaces && empty_rounds < MAX_EMPTY_ROUNDS {
                        // The round ended before the workspaces did: go on with the rest,
                        // a bounded number of times (their tasks may all be scheduled for
                        // later, or of agents at their limit).
                        empty_rounds += 1;
                        continue;
                    }
                    empty_rounds = 0;
                }
                Err(error) => tracing::warn!(%error, "claiming tasks failed"),
            }
            drop(permits);
            tokio::select! {
                () = self.wake.notified() => idle.reset(),
                () = tokio::time::sleep(idle.next_delay()) => {}
                () = self.stop.cancelled() => return,
            }
        }
    }

    /// Waits for one free slot, then takes every other free one; with `gather` (the last
    /// claim took tasks), if that is less than half the capacity, it waits up to
    /// [`CLAIM_GATHER`] for more to free. `None` if the semaphore was closed.
    async fn free_slots(&self, gather: bool) -> Option<Vec<OwnedSemaphorePermit>> {
        let first = Arc::clone(&self.slots).acquire_owned().await.ok()?;
        let mut permits = vec![first];
        let capacity = usize::try_from(self.capacity).unwrap_or(usize::MAX);
        let enough = capacity.div_ceil(2);
        let deadline = tokio::time::Instant::now() + CLAIM_GATHER;
        loop {
            while permits.len() < capacity {
                match Arc::clone(&self.slots).try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            if !gather || permits.len() >= enough {
                break;
            }
            match tokio::time::timeout_at(deadline, Arc::clone(&self.slots).acquire_owned()).await {
                Ok(Ok(permit)) => permits.push(permit),
                // Closed, or time is up: claim with what is free.
                Ok(Err(_)) | Err(_) => break,
            }
        }
        Some(permits)
    }

    async fn start_attempts(
        &self,
        tasks: Vec<ClaimedTask>,
        mut permits: Vec<OwnedSemaphorePermit>,
        claimed_at: Instant,
    ) {
        for task in tasks {
            let Some(permit) = permits.pop() else {
                // claim_tasks never returns more than asked; the lease lapses if it did.
                tracing::error!(task_id = %task.task_id, "claimed more tasks than free slots");
                continue;
            };
            let lease = LeaseKey {
                tenant_id: task.tenant_id,
                task_id: task.task_id,
                attempt: task.attempt,
            };
            let attempt =
                Arc::new(Attempt::new(lease, claimed_at, &self.attempts_shutdown).holding(permit));
            if self
                .context
                .link
                .send(Outbound::Register(Arc::clone(&attempt)))
                .await
                .is_err()
            {
                tracing::warn!(%lease, "link stopped; leaving the task to lease expiry");
                continue;
            }
            let span = tracing::info_span!(
                "attempt",
                tenant_id = %task.tenant_id,
                task_id = %task.task_id,
                agent_id = %task.agent_id,
                attempt = task.attempt,
                trace_id = tracing::field::Empty,
            );
            continue_trace(&span, &task);
            tracing::info!(parent: &span, provider = %task.agent.provider, model = %task.agent.model, "attempt started");
            let run = runner::run_attempt(Arc::clone(&self.context), task, attempt);
            spawn_named("attempt", run.instrument(span));
        }
    }
}

/// Records a claim's latency and batch size.
fn record_claim(claimed: &Result<queue::Claim, sqlx::Error>, started: Instant) {
    METRICS
        .claim_duration
        .observe(started.elapsed().as_secs_f64());
    match claimed {
        Ok(claim) => METRICS.claim_batch_size.observe(claim.tasks.len() as f64),
        Err(_) => METRICS.claim_errors.inc(),
    }
}

/// Continues the trace of the call that created `task` (across the claim, which happened in
/// PostgreSQL): the attempt's span becomes a child of that call's span, and the task's wait
/// in the queue, from due to claimed, is exported as a finished span beside it. Every attempt
/// of a task, retries included, belongs to the one trace, and a retry's span links to the
/// attempt before it.
fn continue_trace(span: &tracing::Span, task: &ClaimedTask) {
    let waited = (Utc::now() - task.run_at).to_std().unwrap_or_default();
    METRICS.queue_wait.observe(waited.as_secs_f64());
    let parent = propagation::context_from_traceparent(task.traceparent.as_deref());
    let now = SystemTime::now();
    propagation::record_finished_span(
        "queue wait",
        &parent,
        now.checked_sub(waited).unwrap_or(now),
        now,
        vec![
            propagation::Attribute::new("agentplane.task_id", task.task_id.to_string()),
            propagation::Attribute::new("agentplane.attempt", i64::from(task.attempt)),
        ],
    );
    propagation::adopt_attempt(span, parent, task.task_id.0, task.attempt);
}

/// Listens on `agentplane_task_ready` and wakes the claim loop; reconnects with backoff.
/// While it is down the claim loop still polls.
pub(crate) async fn listen_for_ready_tasks(
    pool: PgPool,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(LISTEN_RETRY_MIN, LISTEN_RETRY_MAX);
    loop {
        let error = tokio::select! {
            error = listen(&pool, &wake, &mut backoff) => error,
            () = stop.cancelled() => return,
        };
        tracing::warn!(%error, "task-ready listener failed; polling until it is back");
        tokio::select! {
            () = tokio::time::sleep(jittered(backoff.next_delay())) => {}
            () = stop.cancelled() => return,
        }
    }
}

async fn listen(pool: &PgPool, wake: &Notify, backoff: &mut Backoff) -> sqlx::Error {
    let mut listener = match PgListener::connect_with(pool).await {
        Ok(listener) => listener,
        Err(error) => return error,
    };
    if let Err(error) = listener.listen(channel::TASK_READY).await {
        return error;
    }
    backoff.reset();
    // Anything announced before LISTEN took effect was missed: look once.
    wake.notify_one();
    loop {
        match listener.recv().await {
            Ok(_) => wake.notify_one(),
            Err(error) => return error,
        }
    }
}

/// Reaps expired leases every `interval` until `stop` fires.
pub(crate) async fn reap_expired_leases(pool: PgPool, interval: Duration, stop: CancellationToken) {
    const BATCH: i64 = 100;
    loop {
        tokio::select! {
            () = tokio::time::sleep(jittered(interval)) => {}
            () = stop.cancelled() => return,
        }
        loop {
            match queue::reap_expired_leases(&pool, BATCH).await {
                Ok(reaped) if reaped >= u64::try_from(BATCH).unwrap_or(u64::MAX) => {
                    METRICS.lease_expiries.inc_by(reaped);
                    if stop.is_cancelled() {
                        return;
                    }
                }
                Ok(reaped) => {
                    METRICS.lease_expiries.inc_by(reaped);
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "reaping expired leases failed");
                    break;
                }
            }
        }
    }
}
