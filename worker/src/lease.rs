//! Leases: which attempt of which task a worker holds, and the handle that stops it.

use std::sync::OnceLock;
use std::time::Instant;

use agentplane_core::ids::{TaskId, TenantId};
use agentplane_proto::v1::LeaseRef;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

/// One attempt of one task: the identity a lease is held under. The attempt number fences
/// out a worker that lost its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct LeaseKey {
    pub(crate) tenant_id: TenantId,
    pub(crate) task_id: TaskId,
    pub(crate) attempt: i32,
}

impl LeaseKey {
    pub(crate) fn to_proto(self) -> LeaseRef {
        LeaseRef {
            workspace_id: self.tenant_id.to_string(),
            task_id: self.task_id.to_string(),
            attempt: self.attempt,
        }
    }

    /// Reads a lease named by the control plane; `None` if its ids are not UUIDs.
    pub(crate) fn from_proto(lease: &LeaseRef) -> Option<Self> {
        Some(Self {
            tenant_id: TenantId(lease.workspace_id.parse().ok()?),
            task_id: TaskId(lease.task_id.parse().ok()?),
            attempt: lease.attempt,
        })
    }
}

impl std::fmt::Display for LeaseKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "{}/{}#{}",
            self.tenant_id, self.task_id, self.attempt
        )
    }
}

/// Why an attempt was stopped before it ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// The control plane canceled the attempt or said the lease is lost: send nothing more.
    Revoked,
    /// The lease could not be renewed in time, so another worker may own the task now:
    /// send nothing more.
    LeaseExpired,
    /// This worker is shutting down: give the task back with a release.
    Shutdown,
}

/// A running attempt, shared by its runner and the control-plane link.
#[derive(Debug)]
pub(crate) struct Attempt {
    pub(crate) lease: LeaseKey,
    /// When the claim transaction started: the lease cannot have been granted earlier.
    pub(crate) claimed_at: Instant,
    cancel: CancellationToken,
    stop_reason: OnceLock<StopReason>,
    /// The worker's capacity slot this attempt occupies. It is given back when the last
    /// holder lets go of the attempt: the link keeps it until the control plane has
    /// acknowledged the ending, so a worker whose results are not yet recorded does not
    /// claim more work than its capacity.
    slot: Option<OwnedSemaphorePermit>,
}

impl Attempt {
    /// An attempt whose token is a child of `shutdown`, so canceling `shutdown` stops it with
    /// [`StopReason::Shutdown`] unless another reason came first.
    pub(crate) fn new(lease: LeaseKey, claimed_at: Instant, shutdown: &CancellationToken) -> Self {
        Self {
            lease,
            claimed_at,
            cancel: shutdown.child_token(),
            stop_reason: OnceLock::new(),
            slot: None,
        }
    }

    /// The attempt occupying `slot` until it is dropped.
    pub(crate) fn holding(mut self, slot: OwnedSemaphorePermit) -> Self {
        self.slot = Some(slot);
        self
    }

    /// Stops the attempt; the first reason given is the one that sticks.
    pub(crate) fn stop(&self, reason: StopReason) {
        let _ = self.stop_reason.set(reason);
        self.cancel.cancel();
    }

    /// Fires when the attempt must stop.
    pub(crate) fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Why the attempt was stopped; `Shutdown` if it was canceled through the shutdown token.
    pub(crate) fn stop_reason(&self) -> Option<StopReason> {
        if let Some(reason) = self.stop_reason.get() {
            return Some(*reason);
        }
        self.cancel.is_cancelled().then_some(StopReason::Shutdown)
    }

    /// Whether the control plane no longer wants to hear about this attempt.
    pub(crate) fn is_abandoned(&self) -> bool {
        matches!(
            self.stop_reason.get(),
            Some(StopReason::Revoked | StopReason::LeaseExpired)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> LeaseKey {
        LeaseKey {
            tenant_id: TenantId::generate(),
            task_id: TaskId::generate(),
            attempt: 3,
        }
    }

    #[test]
    fn lease_round_trips_through_proto() {
        let key = lease();
        assert_eq!(LeaseKey::from_proto(&key.to_proto()), Some(key));
        let mut bad = key.to_proto();
        bad.task_id = "not-a-uuid".to_owned();
        assert_eq!(LeaseKey::from_proto(&bad), None);
    }

    #[test]
    fn first_stop_reason_wins_and_shutdown_is_inferred() {
        let shutdown = CancellationToken::new();
        let revoked = Attempt::new(lease(), Instant::now(), &shutdown);
        revoked.stop(StopReason::Revoked);
        revoked.stop(StopReason::Shutdown);
        assert_eq!(revoked.stop_reason(), Some(StopReason::Revoked));
        assert!(revoked.is_abandoned());

        let running = Attempt::new(lease(), Instant::now(), &shutdown);
        assert_eq!(running.stop_reason(), None);
        shutdown.cancel();
        assert!(running.cancellation().is_cancelled());
        assert_eq!(running.stop_reason(), Some(StopReason::Shutdown));
        assert!(!running.is_abandoned());
    }
}
