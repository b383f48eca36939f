//! Live fan-out between replicas: one Postgres LISTEN connection per control-plane process,
//! re-broadcast in process to every watcher and worker session.

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::ids::{TaskId, TenantId, WorkerId};
use crate::spawn::spawn_named;
use agentplane_core::notify::{Notification, channel};

/// How long after a listener reconnect streams are told to re-read once more.
const RESYNC_AFTER_RECONNECT: std::time::Duration = std::time::Duration::from_secs(2);

/// Notices the broadcast ring keeps: the only buffer of notices, shared by every stream of
/// the process. A receiver that falls further behind (its stream waits on a slow client)
/// gets `Lagged` on its next receive and re-reads from the database instead, so a slow
/// client costs a re-read, never memory.
///
/// The ring is long, so that a busy process does not wrap it in milliseconds (a worker
/// session that lags misses cancellations until its next heartbeat, and every lagging
/// watcher re-reads the database at once), and its slots are small: a notice keeps a delta's
/// text only up to [`MAX_RING_TEXT_BYTES`]; a watcher reads a longer delta from the table.
///
/// Memory bound: a slot holds at most [`MAX_RING_TEXT_BYTES`] of text plus the `Notice`
/// itself, so in total at most 16,384 × ~330 B ≈ 5.2 MiB per process (checked below against
/// [`MAX_BUFFERED_BYTES`]), however many streams subscribe or stall. Per stream, a receiver
/// holds only a clone of the notice it is handling; what a stream queues for its client is
/// bounded in `api` (`STREAM_BUFFER`).
const CAPACITY: usize = 16 * 1024;

/// Longest delta text a notice keeps in the ring.
const MAX_RING_TEXT_BYTES: usize = 256;

/// The most the ring may hold for stalled receivers.
const MAX_BUFFERED_BYTES: usize = 8 * 1024 * 1024;

const _: () = assert!(
    CAPACITY * (MAX_RING_TEXT_BYTES + std::mem::size_of::<Notice>()) <= MAX_BUFFERED_BYTES,
    "the fan-out ring would exceed its memory bound"
);

/// Something that happened in the database that a live stream may care about.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// A task changed status.
    TaskState {
        /// Workspace.
        tenant: TenantId,
        /// Task.
        task: TaskId,
    },
    /// A delta of a running attempt was stored.
    TaskOutput {
        /// Workspace.
        tenant: TenantId,
        /// Task.
        task: TaskId,
        /// Attempt.
        attempt: i32,
        /// Delta index.
        index: i64,
        /// The text, when it fit in the notification.
        text: Option<String>,
    },
    /// A worker must stop an attempt.
    TaskCancel {
        /// Workspace.
        tenant: TenantId,
        /// Task.
        task: TaskId,
        /// Attempt.
        attempt: i32,
        /// Worker holding it.
        worker: WorkerId,
    },
    /// Events were appended for a workspace.
    Events {
        /// Workspace.
        tenant: TenantId,
    },
    /// The listener lost its connection: notifications may be missing, so every stream
    /// re-reads what it shows from the database.
    Resync,
}

/// The notice for a notification this process listens for; `None` for a malformed one.
fn parse(channel_name: &str, payload: &str) -> Option<Notice> {
    Some(match Notification::decode(channel_name, payload)? {
        Notification::TaskState { tenant, task } => Notice::TaskState { tenant, task },
        Notification::TaskOutput {
            tenant,
            task,
            attempt,
            index,
            text,
        } => Notice::TaskOutput {
            tenant,
            task,
            attempt,
            index,
            text: text.filter(|text| text.len() <= MAX_RING_TEXT_BYTES),
        },
        Notification::TaskCancel {
            tenant,
            task,
            attempt,
            worker,
        } => Notice::TaskCancel {
            tenant,
            task,
            attempt,
            worker,
        },
        Notification::Events { tenant } => Notice::Events { tenant },
        // Not listened for here: workers act on it.
        Notification::TaskReady => return None,
    })
}

/// The process-wide broadcaster of [`Notice`]s.
#[derive(Clone, Debug)]
pub struct Fanout {
    sender: broadcast::Sender<Notice>,
}

impl Fanout {
    /// Starts listening; stops when `shutdown` is cancelled.
    pub async fn start(pool: &PgPool, shutdown: CancellationToken) -> Result<Self, sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener
            .listen_all([
                channel::TASK_STATE,
                channel::TASK_OUTPUT,
                channel::TASK_CANCEL,
                channel::EVENTS,
            ])
            .await?;
        let (sender, _) = broadcast::channel(CAPACITY);
        let fanout = Self {
            sender: sender.clone(),
        };
        spawn_named("fanout", async move {
            // After a reconnect, LISTEN is re-issued on the next receive; whatever was
            // notified before that is lost, so streams re-read once more a moment later.
            let mut resync_at: Option<tokio::time::Instant> = None;
            loop {
                let later = resync_at.unwrap_or_else(tokio::time::Instant::now);
                let received = tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep_until(later), if resync_at.is_some() => {
                        resync_at = None;
                        let _ = sender.send(Notice::Resync);
                        continue;
                    }
                    received = listener.try_recv() => received,
                };
                match received {
                    Ok(Some(notification)) => {
                        match parse(notification.channel(), notification.payload()) {
                            Some(notice) => {
                                let _ = sender.send(notice);
                            }
                            None => tracing::warn!(
                                channel = notification.channel(),
                                "ignoring malformed notification"
                            ),
                        }
                    }
                    Ok(None) => {
                        tracing::warn!("notification listener reconnecting");
                        let _ = sender.send(Notice::Resync);
                        resync_at = Some(tokio::time::Instant::now() + RESYNC_AFTER_RECONNECT);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "notification listener failed; retrying");
                        let _ = sender.send(Notice::Resync);
                        resync_at = Some(tokio::time::Instant::now() + RESYNC_AFTER_RECONNECT);
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(fanout)
    }

    /// A receiver of every notice from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.sender.subscribe()
    }

    /// For metrics: notices the slowest subscriber has yet to read (at most the ring's
    /// capacity, past which it lags and re-reads), and how many subscribers there are.
    pub fn lag(&self) -> (usize, usize) {
        (self.sender.len(), self.sender.receiver_count())
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn parses_each_channel_and_rejects_garbage() {
        let t = Uuid::now_v7();
        let k = Uuid::now_v7();
        assert_eq!(
            parse(
                channel::TASK_OUTPUT,
                &format!(r#"{{"t":"{t}","k":"{k}","a":1,"i":3,"x":"hi"}}"#)
            ),
            Some(Notice::TaskOutput {
                tenant: TenantId(t),
                task: TaskId(k),
                attempt: 1,
                index: 3,
                text: Some("hi".into())
            })
        );
        assert_eq!(
            parse(channel::EVENTS, &format!(r#"{{"t":"{t}"}}"#)),
            Some(Notice::Events {
                tenant: TenantId(t)
            })
        );
        assert_eq!(
            parse(channel::TASK_STATE, &format!(r#"{{"t":"{t}"}}"#)),
            None
        );
        assert_eq!(parse(channel::EVENTS, "not json"), None);
    }
}
