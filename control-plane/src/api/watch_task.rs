//! The live half of WatchTask: follows one task after its snapshot was sent.
//!
//! It receives only the notifications about its task (`fanout::Topic::Task`) and reads the
//! database only when one cannot be applied directly: a status change, a delta too large
//! for its notification, a gap, or a [`Delivery::Resync`] (the listener reconnected, or this
//! stream fell behind its queue). An idle watcher costs no queries.
//!
//! Deltas are published as the control plane receives them and stored in batches shortly
//! after (see `api/workers/output.rs`), so a watcher can be ahead of the table: a delta
//! past the next expected index means the ones between are not stored yet. The watcher
//! then re-reads once and, if that does not close the gap, waits for the notification that
//! says they were stored (a delta notification without text) before reading again.
//!
//! A reset withdraws the attempt's output so far (a model call failed after streaming and a
//! fallback answers): the watcher sends an `OutputReset`, forgets what it sent, and the next
//! delta has the reset's index. Resets are notified when published and again when stored,
//! and the table keeps the latest as a marker row; a watcher applies each reset once, by
//! its index, whichever way it learns of it first. One that missed a reset may have sent
//! deltas that followed it as if they continued the withdrawn text: the reset reaches it
//! later (from the store, or the table on a re-read), and it sends them again after it, so
//! the text a client assembles by the rule still ends as the answer.

use agentplane_proto::v1 as pb;
use pb::watch_task_response::Kind;
use tokio::sync::mpsc;
use tonic::Status;

use super::{State, convert};
use crate::domain::task::TaskStatus;
use crate::error::ApiError;
use crate::fanout::{Delivery, Subscription};
use crate::ids::{TaskId, TenantId};
use crate::store::{OutputChunk, StoreResult, TaskSnapshotRow};
use agentplane_core::notify::Notification;

type Sender = mpsc::Sender<Result<pb::WatchTaskResponse, Status>>;

/// Why output is withdrawn, as `OutputReset.reason` says it. Workers reset only before a
/// fallback's answer; the worker channel carries no reason.
const RESET_REASON: &str = "provider_fallback";

/// Follows a task for one WatchTask stream.
pub(super) struct TaskWatcher {
    state: State,
    tenant: TenantId,
    task: TaskId,
    attempt: i32,
    status: TaskStatus,
    next_index: i64,
    /// Index of the latest reset of the current attempt applied (0 if none).
    reset_index: i64,
    /// Output of the current attempt sent since its latest reset.
    sent: String,
    /// A delta arrived past a gap and a re-read did not close it: wait for the deltas in
    /// between to be stored rather than re-reading on every later delta.
    awaiting_store: bool,
    sender: Sender,
}

/// Whether the stream goes on.
enum Flow {
    Continue,
    Stop,
}

impl TaskWatcher {
    /// A watcher that continues after `snapshot`.
    pub(super) fn new(
        state: State,
        tenant: TenantId,
        task: TaskId,
        snapshot: &TaskSnapshotRow,
        sender: Sender,
    ) -> Self {
        let next_index = snapshot
            .chunks
            .last()
            .map_or(0, |c| c.seq.saturating_add(1));
        Self {
            state,
            tenant,
            task,
            attempt: snapshot.task.attempt,
            status: snapshot.task.status,
            next_index,
            reset_index: snapshot
                .chunks
                .first()
                .filter(|c| c.reset)
                .map_or(0, |c| c.seq.saturating_add(1)),
            sent: snapshot.chunks.iter().map(|c| c.content.as_str()).collect(),
            awaiting_store: false,
            sender,
        }
    }

    /// Index of the next delta the client expects.
    pub(super) fn next_index(&self) -> i64 {
        self.next_index
    }

    /// Streams until the task ends, the client leaves, or the server shuts down.
    pub(super) async fn run(mut self, mut notices: Subscription) {
        let shutdown = self.state.shutdown.clone();
        loop {
            let flow = tokio::select! {
                () = shutdown.cancelled() => Flow::Stop,
                () = self.sender.closed() => Flow::Stop,
                delivery = notices.recv() => match delivery {
                    Delivery::Notice(notification) => self.apply(notification).await,
                    Delivery::Resync => self.sync().await,
                },
            };
            if let Flow::Stop = flow {
                break;
            }
        }
    }

    /// Applies a notification about this task (the subscription routes no other).
    async fn apply(&mut self, notification: Notification) -> Flow {
        match notification {
            Notification::TaskOutput {
                attempt,
                index,
                text,
                ..
            } => {
                if attempt < self.attempt || (attempt == self.attempt && index < self.next_index) {
                    // An earlier attempt's, a repeat, or news that deltas already sent were
                    // stored.
                    return Flow::Continue;
                }
                match text {
                    Some(text) if attempt == self.attempt && index == self.next_index => {
                        let chunk = OutputChunk {
                            attempt,
                            seq: index,
                            content: text,
                            reset: false,
                        };
                        self.send_chunks(vec![chunk]).await
                    }
                    // Past a gap: the deltas between are on their way to the table.
                    Some(_) if attempt == self.attempt => {
                        if self.awaiting_store {
                            return Flow::Continue;
                        }
                        let flow = self.sync().await;
                        self.awaiting_store = true;
                        flow
                    }
                    // Stored (or too long to carry), or a newer attempt: read it.
                    _ => self.sync().await,
                }
            }
            Notification::TaskOutputReset { attempt, index, .. } => {
                if attempt == self.attempt {
                    if index > self.reset_index {
                        return self.withdraw(index).await;
                    }
                    // Applied already (published, then stored).
                    return Flow::Continue;
                }
                if attempt > self.attempt {
                    return self.sync().await;
                }
                Flow::Continue
            }
            Notification::TaskState { .. } => self.sync().await,
            _ => Flow::Continue,
        }
    }

    /// Re-reads the task and sends whatever the client has not seen.
    async fn sync(&mut self) -> Flow {
        self.awaiting_store = false;
        match self.read().await {
            Ok((task, chunks)) => {
                let status = task.status;
                let changed = task.attempt != self.attempt || status != self.status;
                if task.attempt != self.attempt {
                    self.attempt = task.attempt;
                    self.next_index = 0;
                    self.reset_index = 0;
                    self.sent.clear();
                }
                self.status = status;
                if changed
                    && !status.is_terminal()
                    && let Flow::Stop = self.send(Kind::Task(convert::task(&task))).await
                {
                    return Flow::Stop;
                }
                let chunks = chunks
                    .into_iter()
                    .filter(|c| c.attempt == self.attempt)
                    .collect();
                if let Flow::Stop = self.send_chunks(chunks).await {
                    return Flow::Stop;
                }
                if status.is_terminal() {
                    // Live output is dropped when a task ends; deltas this watcher had not
                    // read by then arrive as one, so the deltas still add up to the answer.
                    if let Some(output) = task
                        .output
                        .as_deref()
                        .filter(|_| status == TaskStatus::Succeeded)
                    {
                        // What was sent is not where the answer starts: it was withdrawn by a
                        // reset this watcher never learned of (the attempt ended first).
                        let missed_reset = !output.starts_with(self.sent.as_str());
                        if missed_reset && let Flow::Stop = self.withdraw(self.next_index).await {
                            return Flow::Stop;
                        }
                        if let Some(rest) = output
                            .strip_prefix(self.sent.as_str())
                            .filter(|rest| !rest.is_empty())
                        {
                            let chunk = OutputChunk {
                                attempt: self.attempt,
                                seq: self.next_index,
                                content: rest.to_owned(),
                                reset: false,
                            };
                            if let Flow::Stop = self.send_chunks(vec![chunk]).await {
                                return Flow::Stop;
                            }
                        }
                    }
                    let _ = self.send(Kind::Task(convert::task(&task))).await;
                    return Flow::Stop;
                }
                Flow::Continue
            }
            Err(error) => {
                let error = ApiError::from(error);
                let _ = self.sender.send(Err(error.into())).await;
                Flow::Stop
            }
        }
    }

    async fn read(&self) -> StoreResult<(crate::store::TaskRow, Vec<OutputChunk>)> {
        let mut tx = self.state.store.tenant_unchecked(self.tenant).await?;
        let task = tx.get_task(self.task).await?;
        let after = if task.attempt == self.attempt {
            self.next_index - 1
        } else {
            -1
        };
        let chunks = tx.output_after(self.task, task.attempt, after).await?;
        Ok((task, chunks))
    }

    /// Sends stored rows the client has not seen: deltas past its index, and the reset
    /// marker if it is newer than the latest reset applied.
    async fn send_chunks(&mut self, chunks: Vec<OutputChunk>) -> Flow {
        for chunk in chunks {
            if chunk.reset {
                let index = chunk.seq.saturating_add(1);
                if index > self.reset_index
                    && let Flow::Stop = self.withdraw(index).await
                {
                    return Flow::Stop;
                }
                continue;
            }
            if chunk.seq < self.next_index {
                continue;
            }
            self.next_index = chunk.seq.saturating_add(1);
            self.sent.push_str(&chunk.content);
            let delta = pb::OutputDelta {
                attempt: chunk.attempt,
                index: chunk.seq,
                text: chunk.content,
            };
            if let Flow::Stop = self.send(Kind::Delta(delta)).await {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// Tells the client the attempt's output so far is withdrawn; its next delta has
    /// `index`.
    async fn withdraw(&mut self, index: i64) -> Flow {
        self.reset_index = index;
        self.next_index = index;
        self.sent.clear();
        self.awaiting_store = false;
        let reset = pb::OutputReset {
            attempt: self.attempt,
            index,
            reason: RESET_REASON.to_owned(),
        };
        self.send(Kind::Reset(reset)).await
    }

    async fn send(&self, kind: Kind) -> Flow {
        match self
            .sender
            .send(Ok(pb::WatchTaskResponse { kind: Some(kind) }))
            .await
        {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }
}
