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
mod tests {
    use agentplane_proto::v1::WorkerFailure;
    use tokio_util::sync::CancellationToken;

    use super::*;

    const LEASE: Duration = Duration::from_secs(30);

    fn attempt(shutdown: &CancellationToken) -> Arc<Attempt> {
        let lease = LeaseKey {
            tenant_id: agentplane_core::ids::TenantId::generate(),
            task_id: agentplane_core::ids::TaskId::generate(),
            attempt: 1,
        };
        Arc::new(Attempt::new(lease, Instant::now(), shutdown))
    }

    fn failure() -> Ending {
        Ending::Result(worker_result::Outcome::Failure(WorkerFailure {
            code: "timeout".to_owned(),
            message: "too slow".to_owned(),
            retryable: true,
        }))
    }

    fn kinds(messages: &[SessionRequest]) -> Vec<&'static str> {
        messages
            .iter()
            .map(|message| match &message.kind {
                Some(session_request::Kind::Output(output)) if output.reset => "reset",
                Some(session_request::Kind::Output(_)) => "output",
                Some(session_request::Kind::Result(_)) => "result",
                Some(session_request::Kind::Release(_)) => "release",
                Some(session_request::Kind::Step(_)) => "step",
                Some(session_request::Kind::Usage(_)) => "usage",
                _ => "other",
            })
            .collect()
    }

    fn usage_report() -> SessionRequest {
        SessionRequest {
            kind: Some(session_request::Kind::Usage(
                agentplane_proto::v1::WorkerUsage {
                    lease: None,
                    calls: Vec::new(),
                },
            )),
        }
    }

    #[test]
    fn steps_ride_with_their_ending_and_usage_until_a_later_ending_is_acknowledged() {
        let shutdown = CancellationToken::new();
        let mut ledger = Ledger::default();
        let first = attempt(&shutdown);
        let second = attempt(&shutdown);
        let (one, two) = (first.lease, second.lease);
        ledger.register(first, LEASE);
        ledger.register(second, LEASE);
        ledger.usage(usage_report());
        assert!(ledger.step(one, WorkerStep::default()).is_some());
        assert!(ledger.finish(one, failure()).is_some());
        ledger.usage(usage_report());
        assert_eq!(
            kinds(&ledger.replay())
                .into_iter()
                .filter(|k| *k != "output")
                .collect::<Vec<_>>(),
            ["usage", "usage", "step", "result"],
            "usage first, then each attempt's step before its ending"
        );
        // The ending of `one` was sent after the first usage report, not the second.
        assert!(ledger.acknowledge(one));
        assert_eq!(kinds(&ledger.replay()), ["usage"]);
        assert!(ledger.finish(two, failure()).is_some());
        assert!(ledger.acknowledge(two));
        assert!(
            ledger.replay().is_empty(),
            "recorded once a later ending is acked"
        );
        // A step of an attempt no longer held is refused (the link meters its call).
        assert!(ledger.step(two, WorkerStep::default()).is_none());
    }

    #[test]
    fn keeps_output_and_ending_for_replay_until_acknowledged() {
        let shutdown = CancellationToken::new();
        let mut ledger = Ledger::default();
        let running = attempt(&shutdown);
        let lease = running.lease;
        ledger.register(running, LEASE);
        assert!(ledger.output(lease, 0, "a".to_owned()).is_some());
        assert!(ledger.output(lease, 1, "b".to_owned()).is_some());
        assert_eq!(kinds(&ledger.replay()), ["output", "output"]);
        assert_eq!(ledger.held_leases().len(), 1);

        assert!(ledger.finish(lease, failure()).is_some());
        assert_eq!(
            kinds(&ledger.replay()),
            ["result"],
            "the ending supersedes the output"
        );
        assert_eq!(ledger.held_leases().len(), 1, "renewed until acked");

        assert!(ledger.acknowledge(lease));
        assert!(ledger.is_empty());
        assert!(ledger.replay().is_empty());
    }

    #[test]
    fn a_reset_replaces_the_output_it_withdraws_in_the_replay() {
        let shutdown = CancellationToken::new();
        let mut ledger = Ledger::default();
        let running = attempt(&shutdown);
        let lease = running.lease;
        ledger.register(running, LEASE);
        for index in 0..3 {
            ledger.output(lease, index, "withdrawn".to_owned());
        }
        let sent = ledger
            .reset(lease, 3)
            .expect("a running attempt's reset is sent");
        let Some(session_request::Kind::Output(reset)) = sent.kind else {
            panic!("a reset travels as output");
        };
        assert!(reset.reset && reset.text.is_empty() && reset.index == 3);
        ledger.output(lease, 3, "kept".to_owned());
        assert_eq!(kinds(&ledger.replay()), ["reset", "output"]);

        assert!(ledger.finish(lease, failure()).is_some());
        assert!(
            ledger.reset(lease, 4).is_none(),
            "nothing follows the ending"
        );
        assert_eq!(kinds(&ledger.replay()), ["result"]);
    }

    #[test]
    fn a_release_also_drops_the_output() {
        let shutdown = CancellationToken::new();
        let mut ledger = Ledger::default();
        let running = attempt(&shutdown);
        let lease = running.lease;
        ledger.register(running, LEASE);
        ledger.output(lease, 0, "a".repeat(1000));
        assert!(ledger.finish(lease, Ending::Release).is_some());
        assert_eq!(kinds(&ledger.replay()), ["release"]);
        assert!(
            ledger.output(lease, 1, "late".to_owned()).is_none(),
            "nothing follows the ending"
        );
    }

    #[test]
    fn an_ack_before_the_ending_is_ignored() {
        let shutdown = CancellationToken::new();
        let mut ledger = Ledger::default();
        let running = attempt(&shutdown);
        let lease = running.lease;
        ledger.register(running, LEASE);
        assert!(!ledger.acknowledge(lease));
        assert!(!ledger.is_empty());
    }

    #[test]
    fn revoking_stops_the_attempt_and_drops_what_it_sends_later() {
        let shutdown = CancellationToken::new();
        let mut ledger = Ledger::default();
        let running = attempt(&shutdown);
        let lease = running.lease;
        ledger.register(Arc::clone(&running), LEASE);
        ledger.output(lease, 0, "a".to_owned());
        assert!(ledger.revoke(lease, StopReason::Revoked));
        assert!(running.cancellation().is_cancelled());
        assert!(ledger.held_leases().is_empty());
        assert!(ledger.replay().is_empty());
        assert!(ledger.output(lease, 1, "b".to_owned()).is_none());
        assert!(ledger.finish(lease, failure()).is_none());
        assert!(ledger.is_empty(), "the runner's ending clears the entry");
    }

    #[test]
    fn revoking_a_finished_attempt_forgets_its_ending() {
        let shutdown = CancellationToken::new();
        let mut ledger = Ledger::default();
        let finished = attempt(&shutdown);
        let lease = finished.lease;
        ledger.register(finished, LEASE);
        ledger.finish(lease, Ending::Release);
        assert!(ledger.revoke(lease, StopReason::Revoked));
        assert!(ledger.is_empty());
    }

    #[test]
    fn abandoning_removes_the_entry() {
        let shutdown = CancellationToken::new();
        let mut ledger = Ledger::default();
        let running = attempt(&shutdown);
        let lease = running.lease;
        ledger.register(running, LEASE);
        assert!(ledger.finish(lease, Ending::Abandon).is_none());
        assert!(ledger.is_empty());
    }

    #[test]
    fn lapsed_running_leases_are_stopped_but_endings_are_kept() {
        let shutdown = CancellationToken::new();
        let mut ledger = Ledger::default();
        let running = attempt(&shutdown);
        let finished = attempt(&shutdown);
        ledger.register(Arc::clone(&running), LEASE);
        ledger.register(Arc::clone(&finished), LEASE);
        ledger.finish(finished.lease, failure());

        assert!(ledger.stop_lapsed(Instant::now()).is_empty());
        let later = Instant::now() + LEASE + Duration::from_secs(1);
        ledger.renew(running.lease, Instant::now() + LEASE / 2);
        assert_eq!(ledger.stop_lapsed(later), [running.lease]);
        assert_eq!(running.stop_reason(), Some(StopReason::LeaseExpired));
        assert_eq!(kinds(&ledger.replay()), ["result"]);
    }

    #[test]
    fn renewal_extends_the_deadline() {
        let shutdown = CancellationToken::new();
        let mut ledger = Ledger::default();
        let running = attempt(&shutdown);
        ledger.register(Arc::clone(&running), LEASE);
        let much_later = Instant::now() + LEASE * 3;
        ledger.renew(running.lease, much_later + LEASE);
        assert!(ledger.stop_lapsed(much_later).is_empty());
    }
}
