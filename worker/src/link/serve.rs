//! Serving one open stream: replay what the ledger holds, then forward the inbox, answer the
//! control plane, and heartbeat, until the stream breaks or the link is stopped.
//!
//! Messages other than heartbeats go through a bounded queue in order (so each attempt's
//! output precedes its ending). When that queue is full they wait in `backlog`, and the
//! inbox is not read until the backlog is gone: the pressure reaches the runners, which wait
//! on [`super::LinkHandle::send`]. Heartbeats skip the queue, and responses are read all
//! along, so leases are renewed and cancellations obeyed however deep the backlog.

use std::collections::VecDeque;
use std::time::Instant;

use agentplane_proto::v1::{
    SessionRequest, SessionResponse, WorkerHeartbeat, session_request, session_response,
};
use tokio::sync::mpsc::error::TrySendError;
use tokio_stream::StreamExt;

use super::session::{Requests, Session, SessionError};
use super::{Link, LinkState, SessionEnd};
use crate::backoff::Backoff;
use crate::lease::{LeaseKey, StopReason};

/// What one stream keeps while it is served.
struct Served {
    requests: Requests,
    /// Messages the data queue had no room for yet, oldest first.
    backlog: VecDeque<SessionRequest>,
    /// When each unanswered heartbeat was queued, oldest first.
    beats_in_flight: VecDeque<Instant>,
    /// Whether the stream has proven healthy (a heartbeat answered, or one heartbeat interval
    /// survived); the reconnect backoff is reset then.
    proven: bool,
}

impl Served {
    /// Queues `message` behind the backlog and moves as much as fits into the data queue.
    /// Returns false if the stream is gone.
    fn send(&mut self, message: Option<SessionRequest>) -> bool {
        self.backlog.extend(message);
        self.flush()
    }

    /// Moves backlog into the data queue while it has room. Returns false if the stream is
    /// gone.
    fn flush(&mut self) -> bool {
        while let Some(message) = self.backlog.pop_front() {
            match self.requests.data().try_send(message) {
                Ok(()) => {}
                Err(TrySendError::Full(message)) => {
                    self.backlog.push_front(message);
                    return true;
                }
                Err(TrySendError::Closed(_)) => return false,
            }
        }
        true
    }

    /// The stream proved healthy: start the reconnect backoff over (once).
    fn prove(&mut self, backoff: &mut Backoff) {
        if !self.proven {
            self.proven = true;
            backoff.reset();
        }
    }
}

impl Link {
    /// Serves one open stream until it breaks or the link is stopped. Resets `backoff` once
    /// the stream has proven healthy.
    pub(super) async fn serve(
        &mut self,
        session: Session,
        lapse_check: &mut tokio::time::Interval,
        backoff: &mut Backoff,
    ) -> SessionEnd {
        let Session {
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
        let mut served = Served {
            requests,
            backlog: self.ledger.replay().into(),
            beats_in_flight: VecDeque::new(),
            proven: false,
        };
        if !served.flush() || !self.send_heartbeat(&mut served) {
            return SessionEnd::Broken(SessionError::Closed);
        }
        self.state.send_replace(LinkState::Up { lease_duration });

        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + heartbeat_interval,
            heartbeat_interval,
        );
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Waits for room in the data queue (a separate handle, so that the permit it gives
        // does not borrow `served`).
        let room = served.requests.clone();
        loop {
            let sent = tokio::select! {
                () = self.stop.cancelled() => return SessionEnd::Stopped,
                response = responses.next() => match response {
                    Some(Ok(response)) => {
                        if matches!(response.kind, Some(session_response::Kind::HeartbeatAck(_))) {
                            served.prove(backoff);
                        }
                        self.handle_response(response, &mut served.beats_in_flight);
                        true
                    }
                    Some(Err(status)) => return SessionEnd::Broken(SessionError::Status(status)),
                    None => return SessionEnd::Broken(SessionError::Closed),
                },
                _ = heartbeat.tick() => {
                    // One heartbeat interval survived.
                    served.prove(backoff);
                    self.send_heartbeat(&mut served)
                }
                _ = lapse_check.tick() => {
                    self.stop_lapsed();
                    true
                }
                permit = room.data().reserve(), if !served.backlog.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(message) = served.backlog.pop_front() {
                            permit.send(message);
                        }
                        served.flush()
                    }
                    Err(_) => false,
                },
                message = self.inbox.recv(), if self.inbox_open && served.backlog.is_empty() => {
                    let outgoing = self.absorb(message);
                    served.send(outgoing)
                }
            };
            if !sent {
                return SessionEnd::Broken(SessionError::Closed);
            }
        }
    }

    /// Applies one message from the control plane.
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

    /// Queues one heartbeat (several if over the per-message limit) ahead of every other
    /// message. If earlier beats are still waiting for the transport, this one is skipped:
    /// they carry the same news. Returns false if the stream is gone.
    fn send_heartbeat(&self, served: &mut Served) -> bool {
        let leases = self.ledger.held_leases();
        let mut chunks: Vec<Vec<_>> = leases
            .chunks(agentplane_core::limits::MAX_HEARTBEAT_LEASES)
            .map(<[_]>::to_vec)
            .collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        for leases in chunks {
            let beat = SessionRequest {
                kind: Some(session_request::Kind::Heartbeat(WorkerHeartbeat { leases })),
            };
            match served.requests.beats().try_send(beat) {
                Ok(()) => served.beats_in_flight.push_back(Instant::now()),
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(
                        "earlier heartbeats are still waiting for the transport; skipping one"
                    );
                    return true;
                }
                Err(TrySendError::Closed(_)) => return false,
            }
        }
        true
    }
}
