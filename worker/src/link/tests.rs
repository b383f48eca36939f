//! Tests of the link serving one stream whose two ends are held by the test: what it sends,
//! in which order, how far it reads ahead, and when it resets its reconnect backoff.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentplane_proto::v1::{
    CancelAttempt, HeartbeatAck, SessionRequest, SessionResponse, WorkerFailure, session_request,
    session_response, worker_result,
};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;
use uuid::Uuid;

use super::session::{DATA_QUEUE, Requests, Session};
use super::*;
use crate::backoff::Backoff;
use crate::lease::LeaseKey;

/// The far end of a stream served by a link.
struct Harness {
    handle: LinkHandle,
    outgoing: Pin<Box<dyn Stream<Item = SessionRequest> + Send>>,
    responses: Option<mpsc::UnboundedSender<Result<SessionResponse, tonic::Status>>>,
    stop: CancellationToken,
    served: JoinHandle<(SessionEnd, Backoff)>,
}

impl Harness {
    /// Serves a fresh stream with heartbeats every `heartbeat_interval`, starting from
    /// `backoff`.
    fn start(heartbeat_interval: Duration, backoff: Backoff) -> Self {
        let settings = SessionSettings {
            worker_id: Uuid::now_v7(),
            capacity: 4,
            authorization: MetadataValue::from_static("Bearer test"),
            channel: Endpoint::from_static("http://127.0.0.1:9").connect_lazy(),
        };
        let stop = CancellationToken::new();
        let (handle, mut link) = Link::new(settings, stop.clone());
        let (requests, outgoing) = Requests::new();
        let (responses, responses_rx) = mpsc::unbounded_channel();
        let session = Session {
            requests,
            responses: Box::pin(UnboundedReceiverStream::new(responses_rx)),
            heartbeat_interval,
            lease_duration: Duration::from_secs(30),
        };
        let served = spawn_named("serve", async move {
            let mut backoff = backoff;
            let mut lapse_check = tokio::time::interval(LAPSE_CHECK_INTERVAL);
            let end = link.serve(session, &mut lapse_check, &mut backoff).await;
            (end, backoff)
        });
        Self {
            handle,
            outgoing: Box::pin(outgoing),
            responses: Some(responses),
            stop,
            served,
        }
    }

    /// The next message the link hands the transport.
    async fn next(&mut self) -> session_request::Kind {
        tokio::time::timeout(Duration::from_secs(5), self.outgoing.next())
            .await
            .expect("the link sent nothing within 5s")
            .and_then(|message| message.kind)
            .expect("a message")
    }

    fn respond(&self, kind: session_response::Kind) {
        let responses = self.responses.as_ref().expect("the stream is open");
        let _ = responses.send(Ok(SessionResponse { kind: Some(kind) }));
    }

    /// Ends the response stream and waits for `serve` to return.
    async fn hang_up(mut self) -> (SessionEnd, Backoff) {
        self.responses = None;
        tokio::time::timeout(Duration::from_secs(5), self.served)
            .await
            .expect("serve returns once the stream ends")
            .expect("serve does not panic")
    }
}

fn attempt(shutdown: &CancellationToken) -> Arc<Attempt> {
    let lease = LeaseKey {
        tenant_id: agentplane_core::ids::TenantId::generate(),
        task_id: agentplane_core::ids::TaskId::generate(),
        attempt: 1,
    };
    Arc::new(Attempt::new(lease, Instant::now(), shutdown))
}

/// A backoff that has already grown to 400 ms.
fn grown_backoff() -> Backoff {
    let mut backoff = Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX);
    for _ in 0..3 {
        backoff.next_delay();
    }
    backoff
}

#[tokio::test]
async fn a_stalled_stream_stops_the_inbox_but_not_heartbeats_or_cancels() {
    let mut far = Harness::start(Duration::from_millis(50), grown_backoff());
    let shutdown = CancellationToken::new();
    let flooding = attempt(&shutdown);
    let canceled = attempt(&shutdown);
    for registered in [&flooding, &canceled] {
        far.handle
            .send(Outbound::Register(Arc::clone(registered)))
            .await
            .expect("link running");
    }

    // Nobody reads the stream: the link takes only what fits, then the inbox stays full.
    let mut sent = 0i64;
    let mut full_in_a_row = 0;
    while full_in_a_row < 3 {
        let output = Outbound::Output {
            attempt: Arc::clone(&flooding),
            index: sent,
            text: "x".to_owned(),
        };
        if far.handle.inbox.try_send(output).is_ok() {
            sent += 1;
            full_in_a_row = 0;
        } else {
            full_in_a_row += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            sent < 20_000,
            "the link kept reading a stream nobody takes from"
        );
    }
    let bound = INBOX_CAPACITY + DATA_QUEUE + 1;
    assert!(
        usize::try_from(sent).is_ok_and(|sent| sent <= bound),
        "{sent} > {bound}"
    );

    // Heartbeats jump the backlog: the one queued at connect, then the next tick's.
    assert!(matches!(
        far.next().await,
        session_request::Kind::Heartbeat(_)
    ));
    tokio::time::sleep(Duration::from_millis(80)).await;
    let session_request::Kind::Heartbeat(beat) = far.next().await else {
        panic!("a heartbeat waited behind the output backlog");
    };
    assert_eq!(beat.leases.len(), 2);

    // Responses are still read.
    far.respond(session_response::Kind::Cancel(CancelAttempt {
        lease: Some(canceled.lease.to_proto()),
        reason: "canceled".to_owned(),
    }));
    tokio::time::timeout(Duration::from_secs(1), canceled.cancellation().cancelled())
        .await
        .expect("a cancel is obeyed despite the backlog");

    // Every output, in order, then the ending.
    let handle = far.handle.clone();
    let finished = Arc::clone(&flooding);
    spawn_named("finish", async move {
        let ending = Ending::Result(worker_result::Outcome::Failure(WorkerFailure {
            code: "provider_error".to_owned(),
            message: "boom".to_owned(),
            retryable: true,
        }));
        let _ = handle
            .send(Outbound::Finish {
                attempt: finished,
                ending,
            })
            .await;
    });
    let mut indexes = Vec::new();
    loop {
        match far.next().await {
            session_request::Kind::Output(output) => indexes.push(output.index),
            session_request::Kind::Result(_) => break,
            session_request::Kind::Heartbeat(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
    assert_eq!(indexes, (0..sent).collect::<Vec<_>>());
    // Stopped while the stream is still open.
    far.stop.cancel();
    let (end, _) = tokio::time::timeout(Duration::from_secs(5), far.served)
        .await
        .expect("serve returns once stopped")
        .expect("serve does not panic");
    assert!(matches!(end, SessionEnd::Stopped));
}

#[tokio::test]
async fn a_stream_ending_right_after_the_welcome_keeps_the_backoff() {
    let far = Harness::start(Duration::from_secs(60), grown_backoff());
    let (end, mut backoff) = far.hang_up().await;
    assert!(matches!(end, SessionEnd::Broken(SessionError::Closed)));
    assert_eq!(backoff.next_delay(), Duration::from_millis(800));
}

#[tokio::test]
async fn an_answered_heartbeat_resets_the_backoff() {
    let mut far = Harness::start(Duration::from_secs(60), grown_backoff());
    assert!(matches!(
        far.next().await,
        session_request::Kind::Heartbeat(_)
    ));
    far.respond(session_response::Kind::HeartbeatAck(HeartbeatAck::default()));
    let (_, mut backoff) = far.hang_up().await;
    assert_eq!(backoff.next_delay(), RECONNECT_INITIAL);
}

#[tokio::test]
async fn a_stream_lasting_a_heartbeat_interval_resets_the_backoff() {
    let far = Harness::start(Duration::from_millis(30), grown_backoff());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, mut backoff) = far.hang_up().await;
    assert_eq!(backoff.next_delay(), RECONNECT_INITIAL);
}
