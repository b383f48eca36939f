//! The live half of WatchEvents: replay from the cursor, then tail the log.

use std::time::Duration;

use agentplane_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;

use crate::api::{State, convert};
use crate::domain::event::{EventPosition, EventWatch};
use crate::error::ApiError;
use crate::fanout::Subscription;

/// Events read per query while replaying; a watch holds one batch while its client reads
/// it, so this bounds the stream's memory (see `STREAM_BUFFER`).
const WATCH_BATCH: i64 = 100;
/// How often a quiet watch re-reads anyway (covers lost notifications and events held back
/// while an older transaction was still running).
const WATCH_POLL: Duration = Duration::from_secs(1);

/// Streams the workspace's events after `after` to `sender` until the client leaves or
/// the server shuts down: replays in batches, then waits for news about the workspace.
pub(super) async fn follow(
    state: State,
    request: EventWatch,
    mut after: Option<EventPosition>,
    mut notices: Subscription,
    sender: mpsc::Sender<Result<pb::WatchEventsResponse, Status>>,
) {
    let EventWatch { tenant, filter, .. } = request;
    loop {
        // Replay (or catch up) until a short page says we are at the head.
        loop {
            let read = async {
                let mut tx = state.store.tenant_unchecked(tenant).await?;
                tx.list_events(&filter, after, WATCH_BATCH).await
            };
            let rows = match read.await {
                Ok(rows) => rows,
                Err(error) => {
                    let _ = sender.send(Err(ApiError::from(error).into())).await;
                    return;
                }
            };
            let full = rows.len() as i64 == WATCH_BATCH;
            for row in rows {
                after = Some(row.position());
                let message = pb::WatchEventsResponse {
                    event: Some(convert::event(&row)),
                };
                if sender.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            if !full {
                break;
            }
        }
        // Wait for news about this workspace (the subscription gets no other), or re-read
        // at the deadline anyway.
        let deadline = tokio::time::Instant::now() + WATCH_POLL;
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            () = sender.closed() => return,
            _ = tokio::time::timeout_at(deadline, notices.recv()) => {}
        }
    }
}
