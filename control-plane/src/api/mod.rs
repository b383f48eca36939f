//! gRPC handlers: each turns a protobuf request into a validated domain value (the
//! `parse` module of its service), calls the store in one tenant transaction, and turns
//! the result back into protobuf. Protobuf types stop here.

mod agents;
mod api_keys;
mod convert;
mod events;
mod mask;
mod members;
mod paging;
mod tasks;
mod watch_task;
mod worker_credentials;
mod workers;
mod workspaces;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use agents::AgentApi;
pub use api_keys::{ApiKeyApi, IdentityApi};
pub use events::EventApi;
pub use members::MemberApi;
pub use tasks::{TaskApi, TaskCreator};
pub use worker_credentials::WorkerCredentialApi;
pub use workers::WorkerApi;
pub use workspaces::WorkspaceApi;

use crate::error::ApiError;
use crate::fanout::Fanout;
use crate::store::Store;

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Database access.
    pub store: Store,
    /// Live notifications.
    pub fanout: Fanout,
    /// CreateTask's group commit.
    pub task_creator: TaskCreator,
    /// Lease length given to workers.
    pub lease_duration: Duration,
    /// Heartbeat interval told to workers.
    pub heartbeat_interval: Duration,
    /// Cancelled when the server shuts down: streams end.
    pub shutdown: CancellationToken,
    /// Open streams (WatchTask, WatchEvents, worker sessions), capped per process.
    pub streams: StreamSlots,
    /// Revoked worker credentials: a revoked worker's session ends.
    pub revocations: crate::auth::revocations::Revocations,
    /// API keys read recently, shared with the authenticator; RevokeApiKey forgets its key.
    pub api_keys: crate::auth::key_cache::ApiKeyCache,
}

/// The stream cap (`--max-streams`): with the per-stream bound below, it bounds what streams
/// hold in total. A slot is taken when a stream opens and given back when its task ends; a
/// stream past the cap is refused with RESOURCE_EXHAUSTED (QuotaFailure and RetryInfo), so a
/// client retries later or elsewhere.
#[derive(Clone, Debug)]
pub struct StreamSlots {
    slots: Arc<tokio::sync::Semaphore>,
    limit: usize,
}

impl StreamSlots {
    /// Room for `limit` streams.
    pub fn new(limit: usize) -> Self {
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
        }
    }

    /// A slot for one more stream, held until the permit drops.
    pub(crate) fn open(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyStreams { limit: self.limit })
    }
}

/// Shared state handle.
pub type State = Arc<AppState>;

/// The stream type of server-streaming methods.
pub type ResponseStream<T> =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

/// Messages a server stream queues for its client before the task producing them waits.
///
/// Kept short on purpose: a client that cannot keep up stalls its producer, which then
/// overflows its fan-out queue (see `fanout/inbox.rs`) and re-reads from the database when it
/// can send again (WatchTask sends what the client has not seen, WatchEvents reads on from
/// its last position), so nothing piles up in memory for a slow client.
///
/// Memory bound per stream, worst case (typical messages are a few hundred bytes):
/// - WatchTask: 16 deltas of at most 64 KiB (`MAX_DELTA_BYTES`), 1 MiB; besides the queue,
///   the watcher keeps the output it has sent of the current attempt and may hold one
///   re-read of it, and a snapshot or final message carries the answer: each at most the
///   1 MiB answer (`MAX_OUTPUT_BYTES`). About 4 MiB in all.
/// - WatchEvents: 16 queued events plus one read batch (`WATCH_BATCH`, 100) in hand, each at
///   most about 17 KiB (16 KiB of data, `MAX_EVENT_DATA_BYTES`, plus short fields): about
///   2 MiB.
/// - WorkerService.Session: 16 acknowledgements or cancels.
///
/// On top of that, HTTP/2 buffers what flow control lets through (a stream window, 64 KiB
/// by default, and hyper's send buffer, 400 KiB). The number of streams is not capped here.
const STREAM_BUFFER: usize = 16;
