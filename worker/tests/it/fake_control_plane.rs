//! A scriptable stand-in for the control plane's `WorkerService`, on port 0. It checks the
//! bearer token, welcomes each stream, answers heartbeats (renewing every lease except those
//! marked lost), and hands everything else to the test, which acknowledges results itself.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentplane_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use agentplane_proto::v1::{
    HeartbeatAck, LeaseRef, ResultAck, SessionRequest, SessionResponse, WorkerWelcome,
    session_request, session_response,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

/// A worker credential (`wkr_<worker id>_<random>`): the worker takes its id from it and
/// skips enrolment, which this fake does not serve.
pub(crate) const TOKEN: &str =
    "wkr_0190a5b0c0d07a008000000000000001_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

type Responses = mpsc::UnboundedSender<Result<SessionResponse, Status>>;

#[derive(Default)]
struct Shared {
    /// The stream currently open, to answer on.
    current: Option<Responses>,
    /// Task ids whose leases heartbeats report as lost.
    lost: HashSet<String>,
    /// Whether new streams end right after the welcome.
    hang_up: bool,
    sessions: usize,
}

/// What the test sees: every non-heartbeat message, tagged with the stream it came on.
pub(crate) struct FakeControlPlane {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    received: mpsc::UnboundedReceiver<(usize, SessionRequest)>,
}

struct Service {
    shared: Arc<Mutex<Shared>>,
    received: mpsc::UnboundedSender<(usize, SessionRequest)>,
    heartbeat_interval: Duration,
    lease_duration: Duration,
    /// When set, renewed leases are also extended in the database (as the schema owner),
    /// as the real control plane's heartbeat lane does.
    renew_in: Option<sqlx::PgPool>,
}

#[tonic::async_trait]
impl WorkerService for Service {
    type SessionStream = UnboundedReceiverStream<Result<SessionResponse, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let authorized = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            == Some(&format!("Bearer {TOKEN}"));
        if !authorized {
            return Err(Status::unauthenticated("bad worker token"));
        }
        let mut requests = request.into_inner();
        let hello = requests.next().await;
        if !matches!(
            hello,
            Some(Ok(SessionRequest {
                kind: Some(session_request::Kind::Hello(_))
            }))
        ) {
            return Err(Status::invalid_argument("first message must be a hello"));
        }
        let (responses, stream) = mpsc::unbounded_channel();
        let _ = responses.send(Ok(SessionResponse {
            kind: Some(session_response::Kind::Welcome(WorkerWelcome {
                heartbeat_interval: Some(self.heartbeat_interval.try_into().expect("duration")),
                lease_duration: Some(self.lease_duration.try_into().expect("duration")),
            })),
        }));
        let session = {
            let mut shared = self.shared.lock().expect("lock");
            shared.sessions += 1;
            if shared.hang_up {
                // Dropping the sender ends the response stream after the welcome.
                drop(responses);
                return Ok(Response::new(UnboundedReceiverStream::new(stream)));
            }
            shared.current = Some(responses.clone());
            shared.sessions
        };
        let shared = Arc::clone(&self.shared);
        let received = self.received.clone();
        let renew_in = self.renew_in.clone();
        let lease_duration = self.lease_duration;
        tokio::spawn(async move {
            while let Some(Ok(message)) = requests.next().await {
                if let Some(session_request::Kind::Heartbeat(beat)) = &message.kind {
                    let lost: HashSet<String> = shared.lock().expect("lock").lost.clone();
                    let (lost, renewed): (Vec<LeaseRef>, Vec<LeaseRef>) = beat
                        .leases
                        .iter()
                        .cloned()
                        .partition(|lease| lost.contains(&lease.task_id));
                    if let Some(pool) = &renew_in {
                        for lease in &renewed {
                            sqlx::query(
                                "UPDATE tasks SET lease_expires_at = now() + make_interval(secs => $3) \
                                 WHERE id = $1::uuid AND attempt = $2 AND status = 'running'",
                            )
                            .bind(&lease.task_id)
                            .bind(lease.attempt)
                            .bind(lease_duration.as_secs_f64())
                            .execute(pool)
                            .await
                            .expect("renewing a lease");
                        }
                    }
                    let _ = responses.send(Ok(SessionResponse {
                        kind: Some(session_response::Kind::HeartbeatAck(HeartbeatAck {
                            renewed,
                            lost,
                        })),
                    }));
                    continue;
                }
                let _ = received.send((session, message));
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(stream)))
    }
}

impl FakeControlPlane {
    /// Serves on 127.0.0.1:0 until the test's runtime ends.
    pub(crate) async fn start(heartbeat_interval: Duration, lease_duration: Duration) -> Self {
        Self::serve(heartbeat_interval, lease_duration, None).await
    }

    /// Like [`FakeControlPlane::start`], and each renewed lease is also extended in the
    /// database through `owner`, so the worker's own lease reaper sees what a real control
    /// plane would leave: a lease lapses only if the worker stops heartbeating it.
    pub(crate) async fn start_renewing(
        heartbeat_interval: Duration,
        lease_duration: Duration,
        owner: sqlx::PgPool,
    ) -> Self {
        Self::serve(heartbeat_interval, lease_duration, Some(owner)).await
    }

    async fn serve(
        heartbeat_interval: Duration,
        lease_duration: Duration,
        renew_in: Option<sqlx::PgPool>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (received_tx, received) = mpsc::unbounded_channel();
        let service = Service {
            shared: Arc::clone(&shared),
            received: received_tx,
            heartbeat_interval,
            lease_duration,
            renew_in,
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(WorkerServiceServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Self {
            addr,
            shared,
            received,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next message the worker sent (heartbeats excepted), within 10 s.
    pub(crate) async fn next(&mut self) -> (usize, session_request::Kind) {
        let (session, message) =
            tokio::time::timeout(Duration::from_secs(10), self.received.recv())
                .await
                .expect("the worker sent nothing within 10s")
                .expect("the fake control plane stopped");
        (session, message.kind.expect("a message kind"))
    }

    /// Whatever the worker sends within `wait`.
    pub(crate) async fn drain_for(
        &mut self,
        wait: Duration,
    ) -> Vec<(usize, session_request::Kind)> {
        let mut messages = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some((session, message))) =
            tokio::time::timeout_at(deadline, self.received.recv()).await
        {
            if let Some(kind) = message.kind {
                messages.push((session, kind));
            }
        }
        messages
    }

    /// Acknowledges a result or release on the current stream.
    pub(crate) fn ack(&self, lease: LeaseRef) {
        self.respond(session_response::Kind::ResultAck(ResultAck {
            lease: Some(lease),
            accepted: true,
            reason: String::new(),
        }));
    }

    /// Refuses a result on the current stream, as the control plane does with a result for
    /// an attempt that is no longer current.
    pub(crate) fn decline(&self, lease: LeaseRef, reason: &str) {
        self.respond(session_response::Kind::ResultAck(ResultAck {
            lease: Some(lease),
            accepted: false,
            reason: reason.to_owned(),
        }));
    }

    /// From now on, heartbeats report this task's lease as lost.
    pub(crate) fn lose(&self, task_id: &str) {
        self.shared
            .lock()
            .expect("lock")
            .lost
            .insert(task_id.to_owned());
    }

    /// Ends the current stream with an error status, as a crashing replica would.
    pub(crate) fn break_stream(&self) {
        let current = self.shared.lock().expect("lock").current.take();
        if let Some(current) = current {
            let _ = current.send(Err(Status::unavailable("replica going away")));
        }
    }

    /// From now on, streams end right after the welcome (or not, with `false`).
    pub(crate) fn hang_up_after_welcome(&self, hang_up: bool) {
        self.shared.lock().expect("lock").hang_up = hang_up;
    }

    pub(crate) fn sessions(&self) -> usize {
        self.shared.lock().expect("lock").sessions
    }

    fn respond(&self, kind: session_response::Kind) {
        let shared = self.shared.lock().expect("lock");
        let current = shared.current.as_ref().expect("an open stream");
        let _ = current.send(Ok(SessionResponse { kind: Some(kind) }));
    }
}
