//! gRPC handlers: each turns a protobuf request into a validated domain value (the
//! `parse` module of its service), calls the store in one tenant transaction, and turns
//! the result back into protobuf. Protobuf types stop here.

mod agents;
mod convert;
mod events;
mod mask;
mod paging;
mod tasks;
mod watch_task;
mod workers;
mod workspaces;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use agents::AgentApi;
pub use events::EventApi;
pub use tasks::TaskApi;
pub use workers::WorkerApi;
pub use workspaces::WorkspaceApi;

use crate::fanout::Fanout;
use crate::ids::TenantId;
use crate::store::{Store, TenantTx};

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Database access.
    pub store: Store,
    /// Live notifications.
    pub fanout: Fanout,
    /// Lease length given to workers.
    pub lease_duration: Duration,
    /// Heartbeat interval told to workers.
    pub heartbeat_interval: Duration,
    /// Cancelled when the server shuts down: streams end.
    pub shutdown: CancellationToken,
}

impl AppState {
    /// A transaction scoped to a live workspace (NOT_FOUND otherwise).
    ///
    /// Only `events.rs` still calls this, until the rewrite of that file on another branch
    /// lands; every other handler calls `store.tenant(..).await?`, whose `StoreError`
    /// converts to a `Status` by itself. Delete this then.
    async fn tenant(&self, tenant: TenantId) -> Result<TenantTx, tonic::Status> {
        Ok(self.store.tenant(tenant).await?)
    }
}

/// Shared state handle.
pub type State = Arc<AppState>;

/// The stream type of server-streaming methods.
pub type ResponseStream<T> =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

/// Depth of the per-stream send buffer.
const STREAM_BUFFER: usize = 256;
