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
//! error and fails none of its neighbours.

use std::collections::{BTreeMap, HashSet};

use futures::future::join_all;
use tokio::sync::{mpsc, oneshot};

use crate::domain::task::NewTask;
use crate::error::ApiError;
use crate::ids::TenantId;
use crate::spawn::spawn_named;
use crate::store::{Store, StoreError, StoreResult, TaskRow};

/// Calls one group takes at most (BatchCreateTasks' limit).
const MAX_GROUP: usize = 1000;
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
async fn commit_groups(store: Store, mut queue: mpsc::Receiver<Pending>) {
    let mut taken = Vec::with_capacity(MAX_GROUP);
    while queue.recv_many(&mut taken, MAX_GROUP).await > 0 {
        let mut by_tenant: BTreeMap<TenantId, Vec<Pending>> = BTreeMap::new();
        for pending in taken.drain(..) {
            by_tenant
                .entry(pending.task.tenant)
                .or_default()
                .push(pending);
        }
        join_all(
            by_tenant
                .into_iter()
                .map(|(tenant, group)| commit_group(&store, tenant, group)),
        )
        .await;
    }
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
            Err(error) => {
                tracing::debug!(%error, tenant_id = %tenant, calls = group.len(), "group commit failed; splitting the group");
                let second = group.split_off(group.len() / 2);
                groups.push(second);
                groups.push(group);
            }
        }
    }
    answer_alone(store, later).await;
}

async fn create_together(
    store: &Store,
    tenant: TenantId,
    items: &[(&NewTask, &str)],
) -> StoreResult<Vec<TaskRow>> {
    let mut tx = store.tenant(tenant).await?;
    let rows = tx.create_tasks(items).await?;
    tx.commit().await?;
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
