//! Group commit for CreateTask: concurrent calls share transactions and commits.
//!
//! Each call hands its validated, authorised task to one committer per process and waits
//! for its answer. The committer takes whatever queued up while its previous commit was in
//! flight (up to [`MAX_GROUP`]), and writes each workspace's share with the batched insert
//! of BatchCreateTasks (`store/task_batch.rs`): one transaction per workspace (row-level
//! security binds one tenant per transaction), a fixed number of statements and one NOTIFY
//! statement whatever the group's size. No call is answered before the commit holding its
//! task is durable. A lone call waits for nothing: the committer is idle, so it takes it at
//! once.
//!
//! A group keeps every call's own semantics: its actor on the `task.created` event, its
//! traceparent on the task, its request id (a second call with a request id already in the
//! group waits for the group and then answers with the task it created, as a retry would).
//! If the group's transaction fails (a missing agent, a request id committed concurrently
//! by another replica, a deleted workspace), it is split in halves and each tried again,
//! down to single calls in their own transactions, so one bad call answers with its own
//! error and fails none of its neighbours. A group whose outcome is unknown (its COMMIT
//! failed, or no transaction could start) is not retried: its calls answer UNAVAILABLE.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::future::join_all;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::domain::task::NewTask;
use crate::error::ApiError;
use crate::ids::TenantId;
use crate::spawn::spawn_named;
use crate::store::{Store, StoreError, StoreResult, TaskRow};

/// Calls one group takes at most (BatchCreateTasks' limit).
const MAX_GROUP: usize = 1000;
/// Input text one group takes at most (about BatchCreateTasks' request limit), so a group of
/// large inputs stays a modest statement.
const MAX_GROUP_BYTES: usize = 4 * 1024 * 1024;
/// Groups (of different workspaces) being written at once, below the pool's size.
const MAX_GROUPS_IN_FLIGHT: usize = 8;
/// Calls waiting for the committer before callers wait to queue.
const QUEUE: usize = 4 * MAX_GROUP;

/// One CreateTask call waiting for its commit.
struct Pending {
    task: NewTask,
    actor: String,
    answer: oneshot::Sender<StoreResult<TaskRow>>,
}

/// The handle CreateTask calls queue their tasks through.
#[derive(Clone, Debug)]
pub struct TaskCreator {
    queue: mpsc::Sender<Pending>,
}

impl TaskCreator {
    /// Starts the committer; it stops when the last handle is dropped.
    pub fn start(store: Store) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE);
        spawn_named("create_task_commits", commit_groups(store, pending));
        Self { queue }
    }

    /// Creates the task (or finds the one its request id created), answering once the
    /// commit that holds it is durable.
    pub(super) async fn create(&self, task: NewTask, actor: String) -> Result<TaskRow, ApiError> {
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            task,
            actor,
            answer,
        };
        self.queue
            .send(pending)
            .await
            .map_err(|_| ApiError::Unavailable)?;
        match answered.await {
            Ok(result) => Ok(result?),
            Err(_) => Err(ApiError::Unavailable),
        }
    }
}

/// Commits groups of whatever queued up meanwhile until every handle is gone.
///
/// Each workspace has its own pipeline: at most one group of it in flight, while its next
/// calls gather; a slow workspace (a transaction waiting on a lock) delays only its own
/// calls. At most [`MAX_GROUPS_IN_FLIGHT`] groups run at once, whatever the workspaces.
async fn commit_groups(store: Store, mut queue: mpsc::Receiver<Pending>) {
    let mut taken = Vec::with_capacity(MAX_GROUP);
    // Calls waiting per workspace, and the workspaces with a group in flight.
    let mut waiting: HashMap<TenantId, Vec<Pending>> = HashMap::new();
    let mut in_flight: HashSet<TenantId> = HashSet::new();
    let (done_tx, mut done) = mpsc::unbounded_channel::<TenantId>();
    let permits = Arc::new(Semaphore::new(MAX_GROUPS_IN_FLIGHT));
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            received = queue.recv_many(&mut taken, MAX_GROUP), if open => {
                if received == 0 {
                    open = false;
                }
                for pending in taken.drain(..) {
                    // A caller that has gone (its deadline passed) is not served: as before
                    // groups, its task is not created.
                    if pending.answer.is_closed() {
                        continue;
                    }
                    let calls = waiting.entry(pending.task.tenant).or_default();
                    if calls.len() >= QUEUE {
                        // This workspace's writes are stuck (a lock, a slow statement): its
                        // calls are refused rather than held without bound.
                        let busy = sqlx::Error::Protocol(
                            "too many CreateTask calls of this workspace are waiting".to_owned(),
                        );
                        let _ = pending.answer.send(Err(StoreError::Unavailable(busy)));
                        continue;
                    }
                    calls.push(pending);
                }
            }
            Some(tenant) = done.recv() => {
                in_flight.remove(&tenant);
            }
        }
        // Start a group for every workspace with calls waiting and none in flight.
        let ready: Vec<TenantId> = waiting
            .keys()
            .filter(|tenant| !in_flight.contains(*tenant))
            .copied()
            .collect();
        for tenant in ready {
            let Some(mut calls) = waiting.remove(&tenant) else {
                continue;
            };
            let rest = split_group(&mut calls);
            if !rest.is_empty() {
                waiting.insert(tenant, rest);
            }
            in_flight.insert(tenant);
            let (store, done_tx, permits) = (store.clone(), done_tx.clone(), Arc::clone(&permits));
            spawn_named("create_task_group", async move {
                // The semaphore is never closed.
                let _permit = permits.acquire_owned().await;
                commit_group(&store, tenant, calls).await;
                let _ = done_tx.send(tenant);
            });
        }
    }
}

/// Cuts `calls` to one group's worth (at most [`MAX_GROUP`] calls and about
/// [`MAX_GROUP_BYTES`] of input) and returns the rest, in order.
fn split_group(calls: &mut Vec<Pending>) -> Vec<Pending> {
    let mut bytes = 0usize;
    let mut keep = 0usize;
    for pending in calls.iter() {
        let size: usize = pending.task.input.iter().map(|m| m.content.len()).sum();
        if keep > 0 && (keep >= MAX_GROUP || bytes.saturating_add(size) > MAX_GROUP_BYTES) {
            break;
        }
        bytes = bytes.saturating_add(size);
        keep += 1;
    }
    calls.split_off(keep)
}

/// Commits one workspace's calls together, splitting the group where that fails.
async fn commit_group(store: &Store, tenant: TenantId, group: Vec<Pending>) {
    // A request id seen twice in one group: the later call waits and then finds the task.
    let mut request_ids = HashSet::new();
    let (together, later): (Vec<Pending>, Vec<Pending>) = group.into_iter().partition(|p| {
        p.task
            .request_id
            .as_deref()
            .is_none_or(|id| request_ids.insert(id.to_owned()))
    });
    // A group whose transaction fails is split in halves and each tried again, down to
    // single calls in their own transactions: one bad call costs its group about twice the
    // logarithm of its size in transactions, and answers with its own error.
    let mut groups = vec![together];
    while let Some(mut group) = groups.pop() {
        if group.len() <= 1 {
            answer_alone(store, group).await;
            continue;
        }
        let items: Vec<(&NewTask, &str)> =
            group.iter().map(|p| (&p.task, p.actor.as_str())).collect();
        match create_together(store, tenant, &items).await {
            Ok(rows) => {
                for (pending, row) in group.into_iter().zip(rows) {
                    // The caller may have gone; its task stays created, as a retry would find.
                    let _ = pending.answer.send(Ok(row));
                }
            }
            Err(GroupError::Statement(error)) => {
                tracing::debug!(%error, tenant_id = %tenant, calls = group.len(), "group commit failed; splitting the group");
                let second = group.split_off(group.len() / 2);
                groups.push(second);
                groups.push(group);
            }
            Err(GroupError::Unsettled(error)) => {
                // No transaction, or a COMMIT whose outcome is unknown: trying again could
                // create tasks twice (calls without a request id), so every call gets the
                // error and its client decides.
                tracing::warn!(%error, tenant_id = %tenant, calls = group.len(), "group commit could not be settled");
                for pending in group {
                    let unsettled = sqlx::Error::Protocol(format!(
                        "creating the task could not be settled ({error}); \
                         retry with a request_id to be sure it is created once"
                    ));
                    let _ = pending.answer.send(Err(StoreError::Unavailable(unsettled)));
                }
            }
        }
    }
    answer_alone(store, later).await;
}

/// Why a group's transaction failed.
#[derive(Debug)]
enum GroupError {
    /// A statement failed and the transaction rolled back: nothing was created, so the calls
    /// can be tried one by one.
    Statement(StoreError),
    /// The transaction could not start, or its COMMIT failed: the outcome is unknown.
    Unsettled(StoreError),
}

async fn create_together(
    store: &Store,
    tenant: TenantId,
    items: &[(&NewTask, &str)],
) -> Result<Vec<TaskRow>, GroupError> {
    let mut tx = store.tenant(tenant).await.map_err(|error| match error {
        // A deleted workspace or the like: each call gets its own answer.
        StoreError::NotFound(_) => GroupError::Statement(error),
        error => GroupError::Unsettled(error),
    })?;
    let rows = tx
        .create_tasks(items)
        .await
        .map_err(GroupError::Statement)?;
    // Its last statement, so that a failure there is not taken for a failed COMMIT.
    tx.plan_key_checks().await.map_err(GroupError::Statement)?;
    tx.commit().await.map_err(GroupError::Unsettled)?;
    Ok(rows)
}

/// Answers each call from its own transaction, concurrently.
async fn answer_alone(store: &Store, calls: Vec<Pending>) {
    join_all(calls.into_iter().map(|pending| async move {
        let result = create_one(store, &pending.task, &pending.actor).await;
        let _ = pending.answer.send(result);
    }))
    .await;
}

/// One call in its own transaction, as CreateTask did before groups.
async fn create_one(store: &Store, new: &NewTask, actor: &str) -> StoreResult<TaskRow> {
    let mut tx = store.tenant(new.tenant).await?;
    match tx.create_task(new, actor).await {
        Ok((task, created)) => {
            if created {
                tx.commit().await?;
            }
            Ok(task)
        }
        // A concurrent call with the same request id committed first: answer with its task.
        Err(StoreError::AlreadyExists(_)) if new.request_id.is_some() => {
            drop(tx);
            let mut tx = store.tenant(new.tenant).await?;
            let request_id = new.request_id.as_deref().unwrap_or_default();
            tx.task_by_request_id(request_id)
                .await?
                .ok_or(StoreError::NotFound("task"))
        }
        Err(error) => Err(error),
    }
}
