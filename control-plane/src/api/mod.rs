//! gRPC handlers: each turns a protobuf request into validated domain values, calls the
//! store, and turns the result back into protobuf. Protobuf types stop here.

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

use crate::error::ApiError;
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
    pub async fn tenant(&self, tenant: TenantId) -> Result<TenantTx, tonic::Status> {
        self.store
            .tenant(tenant)
            .await
            .map_err(|e| ApiError::from(e).into())
    }
}

/// Shared state handle.
pub type State = Arc<AppState>;

/// The stream type of server-streaming methods.
pub type ResponseStream<T> =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

/// Depth of the per-stream send buffer.
const STREAM_BUFFER: usize = 256;
