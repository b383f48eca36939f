//! What the link remembers about each lease it holds: the output sent so far while the
//! attempt runs (replayed after a reconnect, where repeated indexes are ignored; a reset
//! replaces the output it withdraws, which is then not replayed), the ending
//! until it is acknowledged (the output is dropped then: the result carries the whole
//! answer), and when the lease runs out if it is not renewed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentplane_proto::v1::{
    LeaseRef, SessionRequest, WorkerOutput, WorkerRelease, WorkerResult, WorkerStep,
    session_request, worker_result,
};

use crate::lease::{Attempt, LeaseKey, StopReason};

/// How an attempt ended, as its runner reports it.
#[derive(Debug, Clone)]
pub(crate) enum Ending {
    /// It produced an answer or failed: report it.
    Result(worker_result::Outcome),
    /// It was stopped by shutdown: give the task back.
    Release,
    /// The control plane no longer wants to hear about it: send nothing.
    Abandon,
}

/// One lease held.
#[derive(Debug)]
struct Entry {
    attempt: Arc<Attempt>,
    /// Output sent while the attempt runs, from its latest reset on; cleared when it ends.
    outputs: Vec<SessionRequest>,
    /// Completed model calls (steps), kept with the ending: a result that waits for tool
    /// outputs needs its step recorded first, so a resend carries both, step first.
    steps: Vec<SessionRequest>,
    /// The result or release, kept until acknowledged; `None` while the attempt runs.
    ending: Option<SessionRequest>,
    /// Where the ending stands among the usage reports (see `Ledger::usage`).
    ending_seq: u64,
    /// When the lease lapses unless renewed.
    deadline: Instant,
}

/// Most usage reports kept for resending; past it the oldest is dropped (and logged).
const MAX_PENDING_USAGE: usize = 10_000;

/// Every lease the worker holds: running attempts and endings awaiting their ack; and the
/// usage reports not yet known to be recorded.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    entries: HashMap<LeaseKey, Entry>,
    /// Usage reports with their place in the order of reports. The control plane records a
    /// worker's reports in order, so once an ending sent after a usage report is
    /// acknowledged, that report is recorded too; until then it is resent after every
    /// reconnect (recording it is idempotent by call id).
    usage: Vec<(u64, SessionRequest)>,
    /// The next place in that order.
    seq: u64,
}

impl Ledger {
    /// Starts tracking a freshly claimed attempt whose lease lasts `lease_duration`.
    pub(crate) fn register(&mut self, attempt: Arc<Attempt>, lease_duration: Duration) {
        let deadline = attempt.claimed_at + lease_duration;
        self.entries.insert(
            attempt.lease,
            Entry {
                attempt,
                outputs: Vec::new(),
                steps: Vec::new(),
                ending: None,
                ending_seq: 0,
                deadline,
            },
        );
    }

    /// Records a piece of output; returns the message to send, or `None` if the attempt is
    /// no longer wanted or has already ended.
    pub(crate) fn output(
        &mut self,
        lease: LeaseKey,
        index: i64,
        text: String,
    ) -> Option<SessionRequest> {
        let entry = self.running_entry(lease)?;
        let message = SessionRequest {
            kind: Some(session_request::Kind::Output(WorkerOutput {
                lease: Some(lease.to_proto()),
                index,
                text,
                reset: false,
            })),
        };
        entry.outputs.push(message.clone());
        Some(message)
    }

    /// Records a completed model call of a running attempt; returns the message to send,
    /// or `None` if the attempt is no longer wanted or has already ended.
    pub(crate) fn step(&mut self, lease: LeaseKey, step: WorkerStep) -> Option<SessionRequest> {
        let entry = self.running_entry(lease)?;
        let message = SessionRequest {
            kind: Some(session_request::Kind::Step(step)),
        };
        entry.steps.push(message.clone());
        Some(message)
    }

    /// Records a reset: the attempt's output before `index` is withdrawn, and its next
    /// output has `index`. The output it withdraws is forgotten (a replay sends the reset
    /// and what follows; the control plane accepts a reset past deltas it never got).
    /// Returns the message to send, or `None` if the attempt is no longer wanted or has
    /// already ended.
    pub(crate) fn reset(&mut self, lease: LeaseKey, index: i64) -> Option<SessionRequest> {
        let entry = self.running_entry(lease)?;
        let message = SessionRequest {
            kind: Some(session_request::Kind::Output(WorkerOutput {
                lease: Some(lease.to_proto()),
                index,
                text: String::new(),
                reset: true,
            })),
        };
        entry.outputs.clear();
        entry.outputs.push(message.clone());
        Some(message)
    }

    /// Whether messages about `lease` should still be sent.
    pub(crate) fn is_wanted(&self, lease: LeaseKey) -> bool {
        self.entries
            .get(&lease)
            .is_some_and(|entry| !entry.attempt.is_abandoned())
    }

    /// Records how an attempt ended and forgets its output (the ending supersedes it);
    /// returns the message to send, if any.
    pub(crate) fn finish(&mut self, lease: LeaseKey, ending: Ending) -> Option<SessionRequest> {
        let message = match ending {
            Ending::Abandon => None,
            Ending::Release => Some(session_request::Kind::Release(WorkerRelease {
                lease: Some(lease.to_proto()),
            })),
            Ending::Result(outcome) => Some(session_request::Kind::Result(WorkerResult {
                lease: Some(lease.to_proto()),
                outcome: Some(outcome),
            })),
        };
        let Some(kind) = message else {
            self.entries.remove(&lease);
            return None;
        };
        let seq = self.seq;
        self.seq += 1;
        let Some(entry) = self.live_entry(lease) else {
            self.entries.remove(&lease);
            return None;
        };
        let message = SessionRequest { kind: Some(kind) };
        entry.outputs = Vec::new();
        entry.ending = Some(message.clone());
        entry.ending_seq = seq;
        Some(message)
    }

    /// The control plane acknowledged the ending of `lease`: forget it. Returns whether an
    /// ending was waiting for that ack.
    pub(crate) fn acknowledge(&mut self, lease: LeaseKey) -> bool {
        let ended = self
            .entries
            .get(&lease)
            .filter(|entry| entry.ending.is_some())
            .map(|entry| entry.ending_seq);
        if let Some(ending_seq) = ended {
            self.entries.remove(&lease);
            self.usage.retain(|(seq, _)| *seq > ending_seq);
        }
        ended.is_some()
    }

    /// Keeps a usage report (model calls that consumed tokens) until an ending sent after it
    /// is acknowledged; returns the message to send. Kept whatever became of the attempt:
    /// spend is metered even for an attempt no longer held.
    pub(crate) fn usage(&mut self, message: SessionRequest) -> SessionRequest {
        if self.usage.len() >= MAX_PENDING_USAGE {
            self.usage.remove(0);
            tracing::warn!("too many usage reports wait to be resent; dropped the oldest");
        }
        self.usage.push((self.seq, message.clone()));
        self.seq += 1;
        message
    }

    /// Stops an attempt the control plane canceled or declared lost, and drops everything
    /// queued for it. Returns whether the lease was held.
    pub(crate) fn revoke(&mut self, lease: LeaseKey, reason: StopReason) -> bool {
        let Some(entry) = self.entries.get_mut(&lease) else {
            return false;
        };
        entry.attempt.stop(reason);
        entry.outputs.clear();
        if entry.ending.take().is_some() {
            // The runner is done and will send nothing more.
            self.entries.remove(&lease);
        }
        true
    }

    /// The lease was extended until `deadline`.
    pub(crate) fn renew(&mut self, lease: LeaseKey, deadline: Instant) {
        if let Some(entry) = self.entries.get_mut(&lease) {
            entry.deadline = entry.deadline.max(deadline);
        }
    }

    /// Stops running attempts whose lease lapsed before `now` (another worker may hold the
    /// task by now) and returns them. Endings already produced are kept for the control
    /// plane to judge.
    pub(crate) fn stop_lapsed(&mut self, now: Instant) -> Vec<LeaseKey> {
        let lapsed: Vec<LeaseKey> = self
            .entries
            .values()
            .filter(|entry| {
                entry.ending.is_none() && !entry.attempt.is_abandoned() && entry.deadline < now
            })
            .map(|entry| entry.attempt.lease)
            .collect();
        for lease in &lapsed {
            self.revoke(*lease, StopReason::LeaseExpired);
        }
        lapsed
    }

    /// Every lease to renew: running attempts and endings not yet acknowledged.
    pub(crate) fn held_leases(&self) -> Vec<LeaseRef> {
        let mut leases: Vec<LeaseKey> = self
            .entries
            .values()
            .filter(|entry| !entry.attempt.is_abandoned())
            .map(|entry| entry.attempt.lease)
            .collect();
        leases.sort_unstable();
        leases.into_iter().map(LeaseKey::to_proto).collect()
    }

    /// What to send again on a new stream: each attempt's output, then its ending.
    pub(crate) fn replay(&self) -> Vec<SessionRequest> {
        let usage = self.usage.iter().map(|(_, message)| message.clone());
        usage
            .chain(
                self.entries
                    .values()
                    .filter(|entry| !entry.attempt.is_abandoned())
                    .flat_map(|entry| {
                        entry
                            .steps
                            .iter()
                            .chain(&entry.outputs)
                            .chain(entry.ending.iter())
                            .cloned()
                    }),
            )
            .collect()
    }

    /// Whether nothing is held any more.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn live_entry(&mut self, lease: LeaseKey) -> Option<&mut Entry> {
        self.entries
            .get_mut(&lease)
            .filter(|entry| !entry.attempt.is_abandoned())
    }

    /// The entry of an attempt still wanted whose ending is not recorded yet.
    fn running_entry(&mut self, lease: LeaseKey) -> Option<&mut Entry> {
        self.live_entry(lease)
            .filter(|entry| entry.ending.is_none())
    }
}

#[cfg(test)]
mod tests;
