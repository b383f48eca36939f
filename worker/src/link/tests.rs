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
    served: JoinHandle<(SessionEnd, Backoff, Link)>,
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
        let (handle, link) = Link::new(settings, stop.clone());
        Self::serve(handle, link, stop, heartbeat_interval, backoff)
    }

    /// Serves a fresh stream with `link`, as after a reconnect.
    fn serve(
        handle: LinkHandle,
        mut link: Link,
        stop: CancellationToken,
        heartbeat_interval: Duration,
        backoff: Backoff,
    ) -> Self {
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
            (end, backoff, link)
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
    async fn hang_up(self) -> (SessionEnd, Backoff) {
        let (end, backoff, _) = self.hang_up_keeping_the_link().await;
        (end, backoff)
    }

    async fn hang_up_keeping_the_link(mut self) -> (SessionEnd, Backoff, Link) {
        self.responses = None;
        tokio::time::timeout(Duration::from_secs(5), self.served)
            .await
            .expect("serve returns once the stream ends")
            .expect("serve does not panic")
    }

    /// Breaks the stream and serves a new one with the same link, as a reconnect does.
    async fn reconnect(self, heartbeat_interval: Duration) -> Self {
        let (handle, stop) = (self.handle.clone(), self.stop.clone());
        let (_, backoff, link) = self.hang_up_keeping_the_link().await;
        Self::serve(handle, link, stop, heartbeat_interval, backoff)
    }

    /// The next message other than a heartbeat.
    async fn next_data(&mut self) -> session_request::Kind {
        loop {
            match self.next().await {
                session_request::Kind::Heartbeat(_) => {}
                other => return other,
            }
        }
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
    let (end, _, _) = tokio::time::timeout(Duration::from_secs(5), far.served)
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

#[tokio::test]
async fn a_reset_is_replayed_after_a_reconnect_in_place_of_the_output_it_withdrew() {
    let interval = Duration::from_secs(60);
    let mut far = Harness::start(interval, Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX));
    let shutdown = CancellationToken::new();
    let running = attempt(&shutdown);
    let handle = far.handle.clone();
    handle
        .send(Outbound::Register(Arc::clone(&running)))
        .await
        .expect("link running");
    let output = |index: i64, text: &str| Outbound::Output {
        attempt: Arc::clone(&running),
        index,
        text: text.to_owned(),
    };
    for message in [
        output(0, "with"),
        output(1, "drawn"),
        Outbound::OutputReset {
            attempt: Arc::clone(&running),
            index: 2,
        },
        output(2, "kept"),
    ] {
        handle.send(message).await.expect("link running");
    }
    let described = |kind: session_request::Kind| match kind {
        session_request::Kind::Output(output) if output.reset => {
            assert!(output.text.is_empty());
            format!("reset {}", output.index)
        }
        session_request::Kind::Output(output) => format!("{} {}", output.index, output.text),
        other => panic!("unexpected message {other:?}"),
    };
    let mut first = Vec::new();
    for _ in 0..4 {
        first.push(described(far.next_data().await));
    }
    assert_eq!(first, ["0 with", "1 drawn", "reset 2", "2 kept"]);

    // The stream breaks: the next one carries the reset, then what followed it, in order.
    let mut far = far.reconnect(interval).await;
    let mut replayed = vec![described(far.next_data().await)];
    handle.send(output(3, "more")).await.expect("link running");
    replayed.push(described(far.next_data().await));
    replayed.push(described(far.next_data().await));
    assert_eq!(replayed, ["reset 2", "2 kept", "3 more"]);
    far.stop.cancel();
}
