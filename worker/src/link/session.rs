//! Opening one `WorkerService.Session` stream: hello out, welcome back.
//!
//! What the worker sends travels through two bounded queues merged into the request stream:
//! heartbeats, always taken first, and everything else in order. The transport takes from
//! them only as fast as HTTP/2 flow control (that is, the control plane) allows, so a slow
//! control plane fills the data queue, the link stops reading its inbox, and runners wait;
//! heartbeats still go out ahead of the backlog.

use std::pin::Pin;
use std::time::Duration;

use agentplane_proto::v1::worker_service_client::WorkerServiceClient;
use agentplane_proto::v1::{
    SessionRequest, SessionResponse, WorkerHello, session_request, session_response,
};
use futures::Stream;
use futures::stream::{PollNext, select_with_strategy};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

/// Longest wait for the stream to open and for the welcome.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat period used if the welcome leaves it out.
const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// Lease length used if the welcome leaves it out.
const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(30);
/// Shortest heartbeat period accepted, so a bad welcome cannot make the worker spin.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);
/// Messages other than heartbeats waiting for the transport; when full, the link stops
/// reading its inbox until the transport takes some.
pub(crate) const DATA_QUEUE: usize = 64;
/// Heartbeats waiting for the transport; a beat that finds the queue full is skipped.
const BEAT_QUEUE: usize = 4;

/// Why a stream could not be opened or broke.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The control plane answered with an error status (bad token, unavailable, …).
    #[error("control plane refused the stream ({:?}): {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// No answer in time.
    #[error("control plane did not answer within {0:?}")]
    Timeout(Duration),
    /// The control plane said something out of order.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The stream ended.
    #[error("control plane closed the stream")]
    Closed,
}

impl From<tonic::Status> for SessionError {
    fn from(status: tonic::Status) -> Self {
        Self::Status(status)
    }
}

/// Who this worker is, and where and how it connects.
#[derive(Debug, Clone)]
pub(crate) struct SessionSettings {
    pub(crate) worker_id: Uuid,
    pub(crate) capacity: u32,
    pub(crate) authorization: MetadataValue<Ascii>,
    pub(crate) channel: Channel,
}

impl SessionSettings {
    /// A lazily connecting channel to `url` (reconnects by itself underneath the streams).
    pub(crate) fn channel(url: &str) -> Result<Channel, tonic::transport::Error> {
        Ok(Endpoint::from_shared(url.to_owned())?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .http2_keep_alive_interval(Duration::from_secs(15))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect_lazy())
    }
}

/// The control plane's messages on one stream.
pub(crate) type Responses =
    Pin<Box<dyn Stream<Item = Result<SessionResponse, tonic::Status>> + Send>>;

/// An open stream, after the welcome.
pub(crate) struct Session {
    pub(crate) requests: Requests,
    pub(crate) responses: Responses,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) lease_duration: Duration,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Session")
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("lease_duration", &self.lease_duration)
            .finish_non_exhaustive()
    }
}

/// The sending side of one stream: a bounded queue for heartbeats, which the transport
/// always takes first, and a bounded queue for everything else, kept in order.
#[derive(Debug, Clone)]
pub(crate) struct Requests {
    beats: mpsc::Sender<SessionRequest>,
    data: mpsc::Sender<SessionRequest>,
}

impl Requests {
    /// The two queues and the request stream that merges them, heartbeats first.
    pub(crate) fn new() -> (Self, impl Stream<Item = SessionRequest> + Send + 'static) {
        let (beats, beat_rx) = mpsc::channel(BEAT_QUEUE);
        let (data, data_rx) = mpsc::channel(DATA_QUEUE);
        let merged = select_with_strategy(
            ReceiverStream::new(beat_rx),
            ReceiverStream::new(data_rx),
            |(): &mut ()| PollNext::Left,
        );
        (Self { beats, data }, merged)
    }

    /// The heartbeat queue, which the transport empties first.
    pub(crate) fn beats(&self) -> &mpsc::Sender<SessionRequest> {
        &self.beats
    }

    /// The queue of every other message, kept in order.
    pub(crate) fn data(&self) -> &mpsc::Sender<SessionRequest> {
        &self.data
    }
}

/// Opens a stream: sends the hello and waits for the welcome.
pub(crate) async fn open(settings: &SessionSettings) -> Result<Session, SessionError> {
    let (requests, outgoing) = Requests::new();
    let hello = SessionRequest {
        kind: Some(session_request::Kind::Hello(WorkerHello {
            worker_id: settings.worker_id.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capacity: i32::try_from(settings.capacity).unwrap_or(i32::MAX),
        })),
    };
    // The queue is empty and its receiver alive, so this cannot fail.
    let _ = requests.data().try_send(hello);

    let authorization = settings.authorization.clone();
    let mut client = WorkerServiceClient::with_interceptor(
        settings.channel.clone(),
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
            Ok(request)
        },
    );
    let response = tokio::time::timeout(HANDSHAKE_TIMEOUT, client.session(outgoing))
        .await
        .map_err(|_| SessionError::Timeout(HANDSHAKE_TIMEOUT))??;
    let mut responses = response.into_inner();
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, responses.message())
        .await
        .map_err(|_| SessionError::Timeout(HANDSHAKE_TIMEOUT))??
        .ok_or(SessionError::Closed)?;
    let Some(session_response::Kind::Welcome(welcome)) = first.kind else {
        return Err(SessionError::Protocol(
            "the first message was not a welcome",
        ));
    };
    let heartbeat_interval = duration_or(welcome.heartbeat_interval, DEFAULT_HEARTBEAT_INTERVAL)
        .max(MIN_HEARTBEAT_INTERVAL);
    let lease_duration = duration_or(welcome.lease_duration, DEFAULT_LEASE_DURATION);
    if lease_duration <= heartbeat_interval {
        tracing::warn!(
            ?heartbeat_interval,
            ?lease_duration,
            "leases last no longer than the heartbeat interval; they may lapse between beats"
        );
    }
    Ok(Session {
        requests,
        responses: Box::pin(responses),
        heartbeat_interval,
        lease_duration,
    })
}

/// A positive protobuf duration, or `default` when it is missing, zero, negative or absurd.
fn duration_or(value: Option<prost_types::Duration>, default: Duration) -> Duration {
    value
        .and_then(|duration| Duration::try_from(duration).ok())
        .filter(|duration| !duration.is_zero() && *duration <= Duration::from_secs(86_400))
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welcome_durations_fall_back_to_defaults_when_unusable() {
        let default = Duration::from_secs(7);
        let proto = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
        assert_eq!(duration_or(None, default), default);
        assert_eq!(duration_or(proto(0, 0), default), default);
        assert_eq!(duration_or(proto(-5, 0), default), default);
        assert_eq!(duration_or(proto(10_000_000, 0), default), default);
        assert_eq!(
            duration_or(proto(2, 500_000_000), default),
            Duration::from_millis(2500)
        );
    }
}
