//! Tests of the parent module.

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
