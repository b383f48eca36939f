//! The link to the control plane: one background task that owns the `Session` stream,
//! reconnects it with backoff when it breaks, heartbeats every lease held, and re-sends
//! output and endings after a reconnect until each ending is acknowledged.
//!
//! Runners and the claim loop talk to it through [`LinkHandle`], a bounded queue. While
//! disconnected the link keeps reading that queue (what must be resent is in the ledger);
//! while connected it reads it only as fast as the stream takes messages, so a slow control
//! plane slows the runners down instead of growing a backlog without bound. Heartbeats do
//! not wait behind that backlog.

mod ledger;
mod serve;
mod session;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentplane_proto::v1::{
    ModelCall, SessionRequest, WorkerEvent, WorkerStep, WorkerUsage, session_request,
};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) use ledger::Ending;
use ledger::Ledger;
pub(crate) use session::{SessionError, SessionSettings};

use crate::backoff::{Backoff, jittered};
use crate::lease::Attempt;
use crate::spawn::spawn_named;

/// Requests queued towards the link before producers wait.
const INBOX_CAPACITY: usize = 1024;
/// How often lapsed leases are looked for.
const LAPSE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// First pause before reconnecting; it doubles while streams keep failing.
const RECONNECT_INITIAL: Duration = Duration::from_millis(100);
/// Longest pause before reconnecting.
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
    /// Its output so far is withdrawn (a model call failed after streaming; a fallback
    /// answers instead): the next `Output` has `index`. Sent in order with the output, and
    /// replayed after a reconnect in place of the output it withdraws.
    OutputReset { attempt: Arc<Attempt>, index: i64 },
    /// A progress event (sent once if connected, never replayed).
    Event {
        attempt: Arc<Attempt>,
        action: &'static str,
        data: prost_types::Struct,
    },
    /// A completed model call (a step), sent before the attempt's ending and again with it
    /// after a reconnect.
    Step {
        attempt: Arc<Attempt>,
        step: Box<WorkerStep>,
    },
    /// Model calls that failed after consuming tokens: sent even for an attempt no longer
    /// held (its spend is metered all the same), and resent after reconnects until an ending
    /// sent after it is acknowledged.
    Usage {
        attempt: Arc<Attempt>,
        calls: Vec<ModelCall>,
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
    /// Queues a message, waiting while the queue is full; fails only once the link has
    /// stopped.
    pub(crate) async fn send(&self, message: Outbound) -> Result<(), LinkStopped> {
        self.inbox.send(message).await.map_err(|_| LinkStopped)
    }

    /// Queues a message without waiting, for callers that cannot wait (drop guards). When
    /// the queue is full a background task delivers it; it is lost only if the link has
    /// stopped or no runtime is running.
    pub(crate) fn send_now(&self, message: Outbound) {
        match self.inbox.try_send(message) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(message)) => {
                if tokio::runtime::Handle::try_current().is_err() {
                    tracing::warn!("no runtime to deliver a message to the link; dropped");
                    return;
                }
                let inbox = self.inbox.clone();
                spawn_named("link-deliver", async move {
                    let _ = inbox.send(message).await;
                });
            }
        }
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

    /// A handle whose messages land in the returned receiver, for runner tests.
    #[cfg(test)]
    pub(crate) fn for_tests(capacity: usize) -> (Self, mpsc::Receiver<Outbound>) {
        let (inbox, receiver) = mpsc::channel(capacity);
        let (_, state) = watch::channel(LinkState::Down);
        (Self { inbox, state }, receiver)
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
    let (handle, link) = Link::new(settings, stop);
    let (first_tx, first_rx) = oneshot::channel();
    let task = spawn_named("control-plane-link", link.run(first_tx));
    (handle, task, first_rx)
}

/// The link task's state.
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
    /// A link that has not connected yet, and the handle into it.
    fn new(settings: SessionSettings, stop: CancellationToken) -> (LinkHandle, Self) {
        let (inbox_tx, inbox) = mpsc::channel(INBOX_CAPACITY);
        let (state_tx, state) = watch::channel(LinkState::Down);
        let link = Self {
            settings,
            inbox,
            inbox_open: true,
            ledger: Ledger::default(),
            state: state_tx,
            lease_duration: Duration::ZERO,
            drains: Vec::new(),
            stop,
        };
        let handle = LinkHandle {
            inbox: inbox_tx,
            state,
        };
        (handle, link)
    }

    /// Connects, serves and reconnects until stopped; `first` hears how the first attempt
    /// to connect went (if it failed, the link ends).
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
                            // Disconnected: the ledger keeps what must be resent.
                            let _ = self.absorb(message);
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
                    // `serve` starts the backoff over once the stream proves healthy, so a
                    // control plane that hangs up right after the welcome is not hammered.
                    let end = self.serve(session, &mut lapse_check, &mut backoff).await;
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
                        let _ = self.absorb(message);
                    }
                    _ = lapse_check.tick() => self.stop_lapsed(),
                    () = self.stop.cancelled() => return,
                }
            }
        }
    }

    /// Handles a message from the rest of the worker; returns what to send on the stream,
    /// if anything (while disconnected the caller drops it: the ledger keeps what matters).
    fn absorb(&mut self, message: Option<Outbound>) -> Option<SessionRequest> {
        let Some(message) = message else {
            self.inbox_open = false;
            return None;
        };
        match message {
            Outbound::Register(attempt) => {
                self.ledger.register(attempt, self.lease_duration);
                None
            }
            Outbound::Output {
                attempt,
                index,
                text,
            } => self.ledger.output(attempt.lease, index, text),
            Outbound::OutputReset { attempt, index } => self.ledger.reset(attempt.lease, index),
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
            Outbound::Step { attempt, step } => {
                let call = step.call.clone();
                match self.ledger.step(attempt.lease, *step) {
                    Some(message) => Some(message),
                    // The attempt is no longer held (revoked, lapsed, ended): its step does
                    // not count, but its call was paid for.
                    None => call.map(|call| self.usage_report(&attempt, vec![call])),
                }
            }
            Outbound::Usage { attempt, calls } => Some(self.usage_report(&attempt, calls)),
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
        }
    }

    /// A usage report, kept in the ledger until it is known to be recorded.
    fn usage_report(&mut self, attempt: &Attempt, calls: Vec<ModelCall>) -> SessionRequest {
        self.ledger.usage(SessionRequest {
            kind: Some(session_request::Kind::Usage(WorkerUsage {
                lease: Some(attempt.lease.to_proto()),
                calls,
            })),
        })
    }

    /// Stops the attempts whose lease ran out without renewal.
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
