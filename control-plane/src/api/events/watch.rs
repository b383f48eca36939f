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
/// How soon a watch looks again while events are held back behind an older transaction
/// still in flight (whose end sends no notification): first after this, then twice as
/// long each time they are still held back, up to [`HELD_BACK_POLL_MAX`].
const HELD_BACK_POLL_MIN: Duration = Duration::from_millis(20);
/// The longest wait between reads while events are held back.
const HELD_BACK_POLL_MAX: Duration = Duration::from_secs(1);

/// Streams the workspace's events after `after` to `sender` until the client leaves or
/// the server shuts down: replays in batches, then waits for news about the workspace.
/// Every transaction that appends events notifies the workspace's topic, and the fan-out
/// tells a subscription to resync whenever a notification may have been lost, so a watch at
/// the head with nothing held back waits without reading: an idle watcher costs no queries.
pub(super) async fn follow(
    state: State,
    request: EventWatch,
    mut after: Option<EventPosition>,
    mut notices: Subscription,
    sender: mpsc::Sender<Result<pb::WatchEventsResponse, Status>>,
) {
    let EventWatch { tenant, filter, .. } = request;
    let mut held_back_poll = HELD_BACK_POLL_MIN;
    loop {
        // Replay (or catch up) until a short page says we are at the head.
        let held_back = loop {
            let read = async {
                let mut tx = state.store.tenant_unchecked(tenant).await?;
                tx.list_events(&filter, after, WATCH_BATCH).await
            };
            let page = match read.await {
                Ok(page) => page,
                Err(error) => {
                    let _ = sender.send(Err(ApiError::from(error).into())).await;
                    return;
                }
            };
            let full = page.rows.len() as i64 == WATCH_BATCH;
            if !page.rows.is_empty() {
                // The log moves: the next wait for held-back events starts short again.
                held_back_poll = HELD_BACK_POLL_MIN;
            }
            for row in page.rows {
                after = Some(row.position());
                let message = pb::WatchEventsResponse {
                    event: Some(convert::event(&row)),
                };
                if sender.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            // Held-back events only matter at the head: a full page reads on at once.
            if !full {
                break page.held_back;
            }
        };
        // Wait for news about this workspace (the subscription gets no other), and while
        // events are held back, no longer than the poll.
        let poll = held_back.then(|| {
            let poll = held_back_poll;
            held_back_poll = (held_back_poll * 2).min(HELD_BACK_POLL_MAX);
            poll
        });
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            () = sender.closed() => return,
            _ = notices.recv() => {}
            () = tokio::time::sleep(poll.unwrap_or_default()), if poll.is_some() => {}
        }
    }
}
