//! The live half of WatchTask: follows one task after its snapshot was sent.
//!
//! Notifications are only hints. Whenever one cannot be applied directly (a gap, a delta
//! too large for the notification, a lagging receiver, a listener reconnect, or simply a
//! quiet period), the watcher re-reads the task and its stored output from the database, so
//! a lost notification costs latency, never output.

use std::time::Duration;

use agentplane_proto::v1 as pb;
use pb::watch_task_response::Kind;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use super::{State, convert};
use crate::domain::task::TaskStatus;
use crate::error::ApiError;
use crate::fanout::Notice;
use crate::ids::{TaskId, TenantId};
use crate::store::{OutputChunk, StoreResult, TaskSnapshotRow};

/// How long a watcher waits without notifications before it re-reads anyway.
const RESYNC_INTERVAL: Duration = Duration::from_secs(5);

type Sender = mpsc::Sender<Result<pb::WatchTaskResponse, Status>>;

/// Follows a task for one WatchTask stream.
pub(super) struct TaskWatcher {
    state: State,
    tenant: TenantId,
    task: TaskId,
    attempt: i32,
    status: TaskStatus,
    next_index: i64,
    /// Output of the current attempt sent so far.
    sent: String,
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
            sent: snapshot.chunks.iter().map(|c| c.content.as_str()).collect(),
            sender,
        }
    }

    /// Index of the next delta the client expects.
    pub(super) fn next_index(&self) -> i64 {
        self.next_index
    }

    /// Streams until the task ends, the client leaves, or the server shuts down.
    pub(super) async fn run(mut self, mut notices: broadcast::Receiver<Notice>) {
        let shutdown = self.state.shutdown.clone();
        // Re-read on a fixed schedule, however many unrelated notices arrive in between.
        let mut deadline = tokio::time::Instant::now() + RESYNC_INTERVAL;
        loop {
            let flow = tokio::select! {
                () = shutdown.cancelled() => Flow::Stop,
                () = self.sender.closed() => Flow::Stop,
                received = tokio::time::timeout_at(deadline, notices.recv()) => {
                    match received {
                        Ok(Ok(notice)) => self.apply(notice).await,
                        Ok(Err(broadcast::error::RecvError::Closed)) => Flow::Stop,
                        // Lagged, or the deadline passed: re-read.
                        Ok(Err(broadcast::error::RecvError::Lagged(_))) | Err(_) => {
                            deadline = tokio::time::Instant::now() + RESYNC_INTERVAL;
                            self.sync().await
                        }
                    }
                }
            };
            if let Flow::Stop = flow {
                break;
            }
        }
    }

    async fn apply(&mut self, notice: Notice) -> Flow {
        match notice {
            Notice::TaskOutput {
                tenant,
                task,
                attempt,
                index,
                text,
            } if tenant == self.tenant && task == self.task => {
                match text {
                    Some(text) if attempt == self.attempt && index == self.next_index => {
                        let chunk = OutputChunk {
                            attempt,
                            seq: index,
                            content: text,
                        };
                        self.send_chunks(vec![chunk]).await
                    }
                    // A repeat of something already sent.
                    _ if attempt == self.attempt && index < self.next_index => Flow::Continue,
                    _ => self.sync().await,
                }
            }
            Notice::TaskState { tenant, task } if tenant == self.tenant && task == self.task => {
                self.sync().await
            }
            Notice::Resync => self.sync().await,
            _ => Flow::Continue,
        }
    }

    /// Re-reads the task and sends whatever the client has not seen.
    async fn sync(&mut self) -> Flow {
        match self.read().await {
            Ok((task, chunks)) => {
                let status = task.status;
                let changed = task.attempt != self.attempt || status != self.status;
                if task.attempt != self.attempt {
                    self.attempt = task.attempt;
                    self.next_index = 0;
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
                    .filter(|c| c.attempt == self.attempt && c.seq >= self.next_index)
                    .collect();
                if let Flow::Stop = self.send_chunks(chunks).await {
                    return Flow::Stop;
                }
                if status.is_terminal() {
                    // Live output is dropped when a task ends; deltas this watcher had not
                    // read by then arrive as one, so the deltas still add up to the answer.
                    if let Some(rest) = task
                        .output
                        .as_deref()
                        .filter(|_| status == TaskStatus::Succeeded)
                        .and_then(|output| output.strip_prefix(self.sent.as_str()))
                        .filter(|rest| !rest.is_empty())
                    {
                        let chunk = OutputChunk {
                            attempt: self.attempt,
                            seq: self.next_index,
                            content: rest.to_owned(),
                        };
                        if let Flow::Stop = self.send_chunks(vec![chunk]).await {
                            return Flow::Stop;
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

    async fn send_chunks(&mut self, chunks: Vec<OutputChunk>) -> Flow {
        for chunk in chunks {
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
