//! WorkerService: the session each worker holds open with a control plane. `parse` turns
//! its messages into domain values, `session` records them.

mod output;
mod parse;
mod session;

use std::time::Duration;

use agentplane_proto::v1 as pb;
use pb::session_request::Kind as In;
use pb::session_response::Kind as Out;
use pb::worker_service_server::WorkerService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{ResponseStream, STREAM_BUFFER, State};
use crate::auth::{Principal, caller};
use crate::domain::worker::Hello;
use crate::error::ApiError;
use crate::fanout::Topic;
use crate::spawn::spawn_named;
use session::Session;

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Handlers of WorkerService.
#[derive(Clone, Debug)]
pub struct WorkerApi {
    state: State,
}

impl WorkerApi {
    /// Handlers over shared state.
    pub fn new(state: State) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    type SessionStream = ResponseStream<pb::SessionResponse>;

    async fn session(
        &self,
        request: Request<Streaming<pb::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let slot = self.state.streams.open()?;
        // The worker id comes from the credential; the hello must agree with it.
        let Principal::Worker { id: credential } = caller(&request)?.principal else {
            return Err(ApiError::PermissionDenied.into());
        };
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| ApiError::DeadlineExceeded("no hello within 10 seconds"))??;
        let Some(pb::SessionRequest {
            kind: Some(In::Hello(hello)),
        }) = first
        else {
            return Err(ApiError::invalid("hello", "the first message must be a hello").into());
        };
        let hello = Hello::try_from(hello)?;
        if hello.worker != credential {
            return Err(ApiError::PermissionDenied.into());
        }
        self.state
            .store
            .upsert_worker(hello.worker, &hello.version, hello.capacity)
            .await?;
        tracing::info!(worker_id = %hello.worker, version = hello.version, capacity = hello.capacity, "worker connected");

        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let welcome = Out::Welcome(pb::WorkerWelcome {
            heartbeat_interval: Some(duration(self.state.heartbeat_interval)),
            lease_duration: Some(duration(self.state.lease_duration)),
        });
        let _ = sender
            .send(Ok(pb::SessionResponse {
                kind: Some(welcome),
            }))
            .await;
        let session = Session {
            state: self.state.clone(),
            worker: hello.worker,
            actor: format!("worker:{}", hello.worker),
            sender,
        };
        let notices = self.state.fanout.subscribe(Topic::Worker(hello.worker));
        let revocations = self.state.revocations.clone();
        spawn_named("worker_session", async move {
            let worker = session.worker;
            let sender = session.sender.clone();
            tokio::select! {
                () = session.run(inbound, notices) => {}
                // A revoked worker is cut off: what it sends from now on is not recorded,
                // and the leases it holds run out.
                () = revocations.revoked(worker) => {
                    tracing::warn!(worker_id = %worker, "worker credential revoked; session closed");
                    let _ = sender.send(Err(ApiError::Unauthenticated("invalid credentials").into())).await;
                }
            }
            drop(slot);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
