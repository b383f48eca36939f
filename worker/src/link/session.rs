//! Opening one `WorkerService.Session` stream: hello out, welcome back.

use std::time::Duration;

use agentplane_proto::v1::worker_service_client::WorkerServiceClient;
use agentplane_proto::v1::{
    SessionRequest, SessionResponse, WorkerHello, session_request, session_response,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
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

/// An open stream, after the welcome.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) requests: mpsc::UnboundedSender<SessionRequest>,
    pub(crate) responses: Streaming<SessionResponse>,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) lease_duration: Duration,
}

/// Opens a stream: sends the hello and waits for the welcome.
pub(crate) async fn open(settings: &SessionSettings) -> Result<Session, SessionError> {
    let (requests, outgoing) = mpsc::unbounded_channel();
    let hello = SessionRequest {
        kind: Some(session_request::Kind::Hello(WorkerHello {
            worker_id: settings.worker_id.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capacity: i32::try_from(settings.capacity).unwrap_or(i32::MAX),
        })),
    };
    // The receiver is alive, so this cannot fail.
    let _ = requests.send(hello);

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
    let response = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        client.session(UnboundedReceiverStream::new(outgoing)),
    )
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
        responses,
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
