//! The link to the control plane: one background task that owns the `Session` stream,
//! reconnects it with backoff when it breaks, heartbeats every lease held, and re-sends
//! output and endings after a reconnect until each ending is acknowledged.
//!
//! Runners and the claim loop talk to it through [`LinkHandle`]; the link always keeps
//! reading that queue (also while disconnected), so producers never wait on the network.

mod ledger;
mod session;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentplane_proto::v1::{
    SessionRequest, SessionResponse, WorkerEvent, WorkerHeartbeat, session_request,
    session_response,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

pub(crate) use ledger::Ending;
use ledger::Ledger;
pub(crate) use session::{SessionError, SessionSettings};

use crate::backoff::{Backoff, jittered};
use crate::lease::{Attempt, LeaseKey, StopReason};
use crate::spawn::spawn_named;

/// Requests queued towards the link before producers wait.
const INBOX_CAPACITY: usize = 1024;
/// How often lapsed leases are looked for.
const LAPSE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Most leases in one heartbeat (the control plane's limit).
const MAX_LEASES_PER_HEARTBEAT: usize = 10_000;
const RECONNECT_INITIAL: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Whether the stream is up, and the lease length it grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// No stream: do not claim.
    Down,
    /// Streaming; claims last `lease_duration`.
    Up { lease_duration: Duration },
}

/// What the rest of the worker tells the link.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A claimed attempt is about to run: heartbeat its lease.
    Register(Arc<Attempt>),
    /// A piece of its output.
    Output {
        attempt: Arc<Attempt>,
        index: i64,
        text: String,
    },
    /// A progress event (sent once if connected, never replayed).
    Event {
        attempt: Arc<Attempt>,
        action: &'static str,
        data: prost_types::Struct,
    },
    /// The attempt ended; its capacity slot is free.
    Finish {
        attempt: Arc<Attempt>,
        ending: Ending,
    },
    /// Answer on the sender once every ending sent so far has been acknowledged.
    Drain(oneshot::Sender<()>),
}

/// The way into the link.
#[derive(Debug, Clone)]
pub(crate) struct LinkHandle {
    inbox: mpsc::Sender<Outbound>,
    state: watch::Receiver<LinkState>,
}

impl LinkHandle {
    /// Queues a message; fails only once the link has stopped.
    pub(crate) async fn send(&self, message: Outbound) -> Result<(), LinkStopped> {
        self.inbox.send(message).await.map_err(|_| LinkStopped)
    }

    /// Waits until the stream is up and returns the lease length it grants.
    pub(crate) async fn wait_until_up(&mut self) -> Result<Duration, LinkStopped> {
        let state = self
            .state
            .wait_for(|state| matches!(state, LinkState::Up { .. }))
            .await
            .map_err(|_| LinkStopped)?;
        match *state {
            LinkState::Up { lease_duration } => Ok(lease_duration),
            LinkState::Down => Err(LinkStopped),
        }
    }
}

/// The link task has ended.
#[derive(Debug, thiserror::Error)]
#[error("the control-plane link has stopped")]
pub(crate) struct LinkStopped;

/// Starts the link. It opens the first stream at once; the returned receiver says whether
/// that worked (if not, the link task has ended). Later breaks are retried with backoff.
pub(crate) fn start(
    settings: SessionSettings,
    stop: CancellationToken,
) -> (
    LinkHandle,
    JoinHandle<()>,
    oneshot::Receiver<Result<(), SessionError>>,
) {
    let (inbox_tx, inbox) = mpsc::channel(INBOX_CAPACITY);
    let (state_tx, state) = watch::channel(LinkState::Down);
    let (first_tx, first_rx) = oneshot::channel();
    let link = Link {
        settings,
        inbox,
        inbox_open: true,
        ledger: Ledger::default(),
        state: state_tx,
        lease_duration: Duration::ZERO,
        drains: Vec::new(),
        stop,
    };
    let task = spawn_named("control-plane-link", link.run(first_tx));
    (
        LinkHandle {
            inbox: inbox_tx,
            state,
        },
        task,
        first_rx,
    )
}

struct Link {
    settings: SessionSettings,
    inbox: mpsc::Receiver<Outbound>,
    inbox_open: bool,
    ledger: Ledger,
    state: watch::Sender<LinkState>,
    /// Lease length of the current (or last) stream.
    lease_duration: Duration,
    drains: Vec<oneshot::Sender<()>>,
    stop: CancellationToken,
}

/// How a served stream ended.
enum SessionEnd {
    Stopped,
    Broken(SessionError),
}

impl Link {
    async fn run(mut self, first: oneshot::Sender<Result<(), SessionError>>) {
        let mut first = Some(first);
        let mut backoff = Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX);
        let mut lapse_check = tokio::time::interval(LAPSE_CHECK_INTERVAL);
        loop {
            let opened = {
                let settings = self.settings.clone();
                let open = session::open(&settings);
                tokio::pin!(open);
                loop {
                    tokio::select! {
                        opened = &mut open => break Some(opened),
                        message = self.inbox.recv(), if self.inbox_open => {
                            self.absorb(message, None);
                        }
                        _ = lapse_check.tick() => self.stop_lapsed(),
                        () = self.stop.cancelled() => break None,
                    }
                }
            };
            let Some(opened) = opened else { break };
            match opened {
                Ok(session) => {
                    if let Some(first) = first.take() {
                        let _ = first.send(Ok(()));
                    }
                    backoff.reset();
                    let end = self.serve(session, &mut lapse_check).await;
                    self.state.send_replace(LinkState::Down);
                    match end {
                        SessionEnd::Stopped => break,
                        SessionEnd::Broken(error) => {
                            tracing::warn!(%error, "control plane stream broke; reconnecting");
                        }
                    }
                }
                Err(error) => {
                    if let Some(first) = first.take() {
                        let _ = first.send(Err(error));
                        return;
                    }
                    tracing::warn!(%error, "could not reach the control plane; retrying");
                }
            }
            let pause = tokio::time::sleep(jittered(backoff.next_delay()));
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    () = &mut pause => break,
                    message = self.inbox.recv(), if self.inbox_open => {
                        self.absorb(message, None);
                    }
                    _ = lapse_check.tick() => self.stop_lapsed(),
                    () = self.stop.cancelled() => return,
                }
            }
        }
    }

    /// Serves one open stream until it breaks or the link is stopped.
    async fn serve(
        &mut self,
        session: session::Session,
        lapse_check: &mut tokio::time::Interval,
    ) -> SessionEnd {
        let session::Session {
            requests,
            mut responses,
            heartbeat_interval,
            lease_duration,
        } = session;
        self.lease_duration = lease_duration;
        tracing::info!(
            ?heartbeat_interval,
            ?lease_duration,
            "connected to the control plane"
        );
        let mut beats_in_flight = VecDeque::new();
        let mut sent = true;
        for message in self.ledger.replay() {
            sent &= requests.send(message).is_ok();
        }
        sent &= self.send_heartbeat(&requests, &mut beats_in_flight);
        if !sent {
            return SessionEnd::Broken(SessionError::Closed);
        }
        self.state.send_replace(LinkState::Up { lease_duration });

        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + heartbeat_interval,
            heartbeat_interval,
        );
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let sent = tokio::select! {
                () = self.stop.cancelled() => return SessionEnd::Stopped,
                message = self.inbox.recv(), if self.inbox_open => {
                    self.absorb(message, Some(&requests))
                }
                response = responses.next() => match response {
                    Some(Ok(response)) => {
                        self.handle_response(response, &mut beats_in_flight);
                        true
                    }
                    Some(Err(status)) => return SessionEnd::Broken(SessionError::Status(status)),
                    None => return SessionEnd::Broken(SessionError::Closed),
                },
                _ = heartbeat.tick() => self.send_heartbeat(&requests, &mut beats_in_flight),
                _ = lapse_check.tick() => {
                    self.stop_lapsed();
                    true
                }
            };
            if !sent {
                return SessionEnd::Broken(SessionError::Closed);
            }
        }
    }

    /// Handles a message from the rest of the worker; sends it on `requests` when
    /// connected. Returns false if the stream refused it.
    fn absorb(
        &mut self,
        message: Option<Outbound>,
        requests: Option<&mpsc::UnboundedSender<SessionRequest>>,
    ) -> bool {
        let Some(message) = message else {
            self.inbox_open = false;
            return true;
        };
        let outgoing = match message {
            Outbound::Register(attempt) => {
                self.ledger.register(attempt, self.lease_duration);
                None
            }
            Outbound::Output {
                attempt,
                index,
                text,
            } => self.ledger.output(attempt.lease, index, text),
            Outbound::Event {
                attempt,
                action,
                data,
            } => self
                .ledger
                .is_wanted(attempt.lease)
                .then(|| SessionRequest {
                    kind: Some(session_request::Kind::Event(WorkerEvent {
                        lease: Some(attempt.lease.to_proto()),
                        action: action.to_owned(),
                        data: Some(data),
                    })),
                }),
            Outbound::Finish { attempt, ending } => {
                let outgoing = self.ledger.finish(attempt.lease, ending);
                self.settle_drains();
                outgoing
            }
            Outbound::Drain(waiter) => {
                self.drains.push(waiter);
                self.settle_drains();
                None
            }
        };
        match (outgoing, requests) {
            (Some(outgoing), Some(requests)) => requests.send(outgoing).is_ok(),
            _ => true,
        }
    }

    fn handle_response(
        &mut self,
        response: SessionResponse,
        beats_in_flight: &mut VecDeque<Instant>,
    ) {
        match response.kind {
            Some(session_response::Kind::HeartbeatAck(ack)) => {
                let sent_at = beats_in_flight.pop_front().unwrap_or_else(Instant::now);
                let deadline = sent_at + self.lease_duration;
                for lease in ack.renewed.iter().filter_map(LeaseKey::from_proto) {
                    self.ledger.renew(lease, deadline);
                }
                for lease in ack.lost.iter().filter_map(LeaseKey::from_proto) {
                    if self.ledger.revoke(lease, StopReason::Revoked) {
                        tracing::info!(%lease, "lease lost; stopping the attempt");
                    }
                }
                self.settle_drains();
            }
            Some(session_response::Kind::ResultAck(ack)) => {
                let Some(lease) = ack.lease.as_ref().and_then(LeaseKey::from_proto) else {
                    tracing::warn!("result ack without a valid lease");
                    return;
                };
                if !self.ledger.acknowledge(lease) {
                    return;
                }
                if ack.accepted {
                    tracing::debug!(%lease, "result acknowledged");
                } else {
                    tracing::warn!(%lease, reason = %ack.reason, "control plane declined the result");
                }
                self.settle_drains();
            }
            Some(session_response::Kind::Cancel(cancel)) => {
                let Some(lease) = cancel.lease.as_ref().and_then(LeaseKey::from_proto) else {
                    tracing::warn!("cancel without a valid lease");
                    return;
                };
                if self.ledger.revoke(lease, StopReason::Revoked) {
                    tracing::info!(%lease, reason = %cancel.reason, "attempt canceled by the control plane");
                }
                self.settle_drains();
            }
            Some(session_response::Kind::Welcome(_)) => {
                tracing::warn!("unexpected second welcome; ignored");
            }
            None => tracing::warn!("empty message from the control plane; ignored"),
        }
    }

    /// Sends one heartbeat (several if over the per-message limit). Returns false if the
    /// stream refused it.
    fn send_heartbeat(
        &self,
        requests: &mpsc::UnboundedSender<SessionRequest>,
        beats_in_flight: &mut VecDeque<Instant>,
    ) -> bool {
        let leases = self.ledger.held_leases();
        let mut chunks: Vec<Vec<_>> = leases
            .chunks(MAX_LEASES_PER_HEARTBEAT)
            .map(<[_]>::to_vec)
            .collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        for leases in chunks {
            let beat = SessionRequest {
                kind: Some(session_request::Kind::Heartbeat(WorkerHeartbeat { leases })),
            };
            if requests.send(beat).is_err() {
                return false;
            }
            beats_in_flight.push_back(Instant::now());
        }
        true
    }

    fn stop_lapsed(&mut self) {
        for lease in self.ledger.stop_lapsed(Instant::now()) {
            tracing::warn!(%lease, "lease lapsed without renewal; stopping the attempt");
        }
        self.settle_drains();
    }

    /// Wakes drain waiters once nothing is left to acknowledge.
    fn settle_drains(&mut self) {
        if self.ledger.is_empty() {
            for waiter in self.drains.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}
