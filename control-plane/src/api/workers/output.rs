//! A worker session's live output: each delta is published the moment it arrives, so a
//! watcher on any replica sees it within milliseconds, and stored with the others that
//! arrived within [`STORE_INTERVAL`], so a streaming attempt costs a batched write per
//! interval instead of a transaction per delta.
//!
//! Publishing keeps the fencing of storing: an attempt's deltas are published only after a
//! store found the worker holding it (so a worker cannot show text in an attempt it does
//! not hold), and only if each extends what was published of its attempt by the rule of
//! the store ([`OutputChain`]: no gap, within the cap). The first deltas of an attempt are
//! therefore stored early, [`FIRST_STORE_DELAY`] after they arrive, and watchers read them
//! when that store's notification reaches them; from then on deltas are published as they
//! arrive. Nothing is acknowledged to the worker before it is stored: a batch that sends
//! answers first stores every pending delta (see `session.rs`).
//!
//! A reset (the attempt's output so far is withdrawn; the next delta has its index) takes
//! the same path as a delta, in order with the deltas around it: published at once when it
//! moves the published output on, and stored with the batch, where the store withdraws the
//! rows and tells watchers again (for those that missed it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use agentplane_core::limits::MAX_WORKER_CAPACITY;
use agentplane_core::notify::Notification;
use tokio::time::Instant;

use crate::domain::output::{DeltaStep, OutputChain};
use crate::domain::worker::Lease;
use crate::ids::{TaskId, TenantId};
use crate::store::PendingDelta;

/// How long a delta waits to be stored with others, at most.
pub(super) const STORE_INTERVAL: Duration = Duration::from_millis(100);
/// How long the first deltas of an attempt this session has not stored yet wait: until
/// they are stored, they are not published.
pub(super) const FIRST_STORE_DELAY: Duration = Duration::from_millis(10);
/// Pending text past which deltas are stored at once.
const MAX_PENDING_BYTES: usize = 4 * 1024 * 1024;
/// Attempts whose published output a session tracks; past this it forgets them all (they
/// are published again once the store says where they stand).
const MAX_TRACKED_ATTEMPTS: usize = 2 * MAX_WORKER_CAPACITY as usize;

/// Deltas waiting to be stored, and how far each attempt's output was published.
#[derive(Debug, Default)]
pub(super) struct LiveOutput {
    pending: BTreeMap<TenantId, Vec<PendingDelta>>,
    pending_bytes: usize,
    due: Option<Instant>,
    published: HashMap<Lease, OutputChain>,
    /// Attempts the store found the worker not holding: not published any more.
    refused: HashSet<Lease>,
}

impl LiveOutput {
    /// Takes a delta arriving at `now`: it waits to be stored. Returns the notification to
    /// publish at once, if any.
    pub(super) fn receive(
        &mut self,
        lease: Lease,
        index: i64,
        text: String,
        now: Instant,
    ) -> Option<Notification> {
        let publish = self
            .extends_published(lease, index, text.len())
            .then(|| Notification::TaskOutput {
                tenant: lease.tenant,
                task: lease.task,
                attempt: lease.attempt,
                index,
                text: Some(text.clone()),
            })
            // Too long for a payload: watchers read it once it is stored.
            .filter(Notification::fits_in_payload);
        self.wait(
            PendingDelta {
                lease,
                index,
                text,
                reset: false,
            },
            now,
        );
        publish
    }

    /// Takes a reset arriving at `now` (the attempt's output before `index` is withdrawn):
    /// it waits to be stored, in order with the deltas around it. Returns the notification
    /// to publish at once, if any: published like a delta, when it moves on what was
    /// published of its attempt.
    pub(super) fn receive_reset(
        &mut self,
        lease: Lease,
        index: i64,
        now: Instant,
    ) -> Option<Notification> {
        let publish = self
            .published
            .get_mut(&lease)
            .is_some_and(|chain| chain.reset(index))
            .then_some(Notification::TaskOutputReset {
                tenant: lease.tenant,
                task: lease.task,
                attempt: lease.attempt,
                index,
            });
        self.wait(
            PendingDelta {
                lease,
                index,
                text: String::new(),
                reset: true,
            },
            now,
        );
        publish
    }

    /// Queues `delta` to be stored: soon if its attempt was never stored by this session.
    fn wait(&mut self, delta: PendingDelta, now: Instant) {
        let lease = delta.lease;
        let known = self.published.contains_key(&lease);
        self.pending_bytes += delta.text.len();
        self.pending.entry(lease.tenant).or_default().push(delta);
        let due = now
            + if known || self.refused.contains(&lease) {
                STORE_INTERVAL
            } else {
                FIRST_STORE_DELAY
            };
        self.due = Some(self.due.map_or(due, |earlier| earlier.min(due)));
    }

    fn extends_published(&mut self, lease: Lease, index: i64, len: usize) -> bool {
        // Only attempts a store found the worker holding, from where the store left them.
        self.published
            .get_mut(&lease)
            .is_some_and(|chain| matches!(chain.step(index, len), DeltaStep::Append { .. }))
    }

    /// Forgets an attempt that ended or was given back: its live output goes with it, so
    /// its pending deltas are not stored.
    pub(super) fn forget(&mut self, lease: Lease) {
        self.published.remove(&lease);
        self.refused.remove(&lease);
        if let Some(deltas) = self.pending.get_mut(&lease.tenant) {
            let mut dropped = 0;
            deltas.retain(|delta| {
                let keep = delta.lease != lease;
                if !keep {
                    dropped += delta.text.len();
                }
                keep
            });
            self.pending_bytes -= dropped;
            if deltas.is_empty() {
                self.pending.remove(&lease.tenant);
            }
        }
        if self.pending.is_empty() {
            self.due = None;
        }
    }

    /// When the pending deltas are due to be stored, if any are waiting.
    pub(super) fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Whether so much text is pending that it should be stored now.
    pub(super) fn over_budget(&self) -> bool {
        self.pending_bytes > MAX_PENDING_BYTES
    }

    /// Workspaces with deltas waiting.
    pub(super) fn pending_tenants(&self) -> Vec<TenantId> {
        self.pending.keys().copied().collect()
    }

    /// Takes one workspace's pending deltas, to store them.
    pub(super) fn take(&mut self, tenant: TenantId) -> Vec<PendingDelta> {
        let deltas = self.pending.remove(&tenant).unwrap_or_default();
        self.pending_bytes -= deltas.iter().map(|d| d.text.len()).sum::<usize>();
        if self.pending.is_empty() {
            self.due = None;
        }
        deltas
    }

    /// Learns where the store left the attempts of `deltas`: from now on publishing
    /// continues from there, and stops for an attempt the worker does not hold.
    pub(super) fn stored(
        &mut self,
        deltas: &[PendingDelta],
        chains: &HashMap<(TaskId, i32), OutputChain>,
    ) {
        for delta in deltas {
            match chains.get(&(delta.lease.task, delta.lease.attempt)) {
                Some(chain) => {
                    if self.published.len() >= MAX_TRACKED_ATTEMPTS {
                        self.published.clear();
                    }
                    self.published.insert(delta.lease, *chain);
                }
                None => {
                    self.published.remove(&delta.lease);
                    if self.refused.len() >= MAX_TRACKED_ATTEMPTS {
                        self.refused.clear();
                    }
                    self.refused.insert(delta.lease);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn lease() -> Lease {
        Lease {
            tenant: TenantId(Uuid::now_v7()),
            task: TaskId(Uuid::now_v7()),
            attempt: 1,
        }
    }

    fn published_index(notification: Option<Notification>) -> Option<i64> {
        match notification {
            Some(Notification::TaskOutput {
                index,
                text: Some(_),
                ..
            }) => Some(index),
            _ => None,
        }
    }

    /// Stores what is pending as if the worker held every attempt, each from scratch.
    fn store_all_held(output: &mut LiveOutput) {
        for tenant in output.pending_tenants() {
            let deltas = output.take(tenant);
            let mut chains = HashMap::new();
            for delta in &deltas {
                let chain: &mut OutputChain = chains
                    .entry((delta.lease.task, delta.lease.attempt))
                    .or_default();
                if delta.reset {
                    chain.reset(delta.index);
                } else {
                    chain.step(delta.index, delta.text.len());
                }
            }
            output.stored(&deltas, &chains);
        }
    }

    #[test]
    fn an_attempt_is_published_only_after_a_store_found_it_held() {
        let mut output = LiveOutput::default();
        let now = Instant::now();
        let l = lease();
        assert_eq!(published_index(output.receive(l, 0, "a".into(), now)), None);
        assert_eq!(output.due(), Some(now + FIRST_STORE_DELAY));
        store_all_held(&mut output);
        assert_eq!(output.due(), None);
        let later = now + Duration::from_millis(30);
        assert_eq!(
            published_index(output.receive(l, 1, "b".into(), later)),
            Some(1)
        );
        assert_eq!(
            published_index(output.receive(l, 2, "c".into(), later)),
            Some(2)
        );
        assert_eq!(output.due(), Some(later + STORE_INTERVAL));
        assert_eq!(output.take(l.tenant).len(), 2);
        assert!(!output.over_budget());
    }

    #[test]
    fn a_gap_or_a_repeat_is_not_published_but_still_goes_to_the_store() {
        let mut output = LiveOutput::default();
        let now = Instant::now();
        let l = lease();
        output.receive(l, 0, "a".into(), now);
        store_all_held(&mut output);
        assert_eq!(published_index(output.receive(l, 0, "a".into(), now)), None);
        assert_eq!(published_index(output.receive(l, 2, "c".into(), now)), None);
        assert_eq!(
            published_index(output.receive(l, 1, "b".into(), now)),
            Some(1)
        );
        assert_eq!(output.take(l.tenant).len(), 3);
    }

    #[test]
    fn a_reset_is_published_in_order_and_only_once() {
        let mut output = LiveOutput::default();
        let now = Instant::now();
        let l = lease();
        output.receive(l, 0, "a".into(), now);
        store_all_held(&mut output);
        assert_eq!(
            published_index(output.receive(l, 1, "b".into(), now)),
            Some(1)
        );
        let reset = output.receive_reset(l, 2, now);
        assert!(
            matches!(reset, Some(Notification::TaskOutputReset { index: 2, .. })),
            "{reset:?}"
        );
        assert_eq!(output.receive_reset(l, 2, now), None, "a repeat");
        assert_eq!(output.receive_reset(l, 1, now), None, "a stale one");
        assert_eq!(
            published_index(output.receive(l, 1, "late".into(), now)),
            None,
            "withdrawn"
        );
        assert_eq!(
            published_index(output.receive(l, 2, "c".into(), now)),
            Some(2)
        );
        let pending = output.take(l.tenant);
        let order: Vec<(i64, bool)> = pending.iter().map(|d| (d.index, d.reset)).collect();
        assert_eq!(
            order,
            [
                (1, false),
                (2, true),
                (2, true),
                (1, true),
                (1, false),
                (2, false)
            ],
            "the store judges them again, in arrival order"
        );
    }

    #[test]
    fn a_reset_of_an_attempt_not_stored_yet_waits_for_the_store() {
        let mut output = LiveOutput::default();
        let now = Instant::now();
        let l = lease();
        assert_eq!(output.receive_reset(l, 3, now), None);
        assert_eq!(output.due(), Some(now + FIRST_STORE_DELAY));
    }

    #[test]
    fn an_attempt_the_worker_does_not_hold_is_never_published() {
        let mut output = LiveOutput::default();
        let now = Instant::now();
        let l = lease();
        output.receive(l, 0, "a".into(), now);
        let stored = output.take(l.tenant);
        output.stored(&stored, &HashMap::new());
        assert_eq!(published_index(output.receive(l, 1, "b".into(), now)), None);
        // And it waits the full interval: nothing is to be learned early.
        assert_eq!(output.due(), Some(now + STORE_INTERVAL));
    }

    #[test]
    fn an_ended_attempt_drops_its_pending_deltas() {
        let mut output = LiveOutput::default();
        let now = Instant::now();
        let (ended, other) = (lease(), lease());
        output.receive(ended, 0, "a".into(), now);
        output.forget(ended);
        assert_eq!(output.due(), None);
        assert!(output.pending_tenants().is_empty());
        output.receive(other, 0, "b".into(), now);
        assert_eq!(output.pending_tenants(), vec![other.tenant]);
    }
}
