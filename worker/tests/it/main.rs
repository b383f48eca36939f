//! Integration tests of the worker: its claim and lease-expiry SQL against a real PostgreSQL
//! cluster (started by `agentplane-testkit`), and whole workers against a scriptable fake
//! control plane. Tests of workers with a real control plane are the control plane's
//! (`control-plane/tests/it/end_to_end.rs`).
#![expect(
    clippy::unwrap_used,
    reason = "a failed unwrap is a failed test, with its location"
)]
#![expect(
    clippy::disallowed_methods,
    reason = "tests spawn plain tasks and join them; nothing outlives a test"
)]

// The test modules reach the shared helpers as `crate::pg` and `crate::fixtures`.
use agentplane_testkit::{fixtures, pg};

mod chaos;
mod database_role;
mod fake_control_plane;
mod overload;
mod providers;
mod queue;
mod queue_concurrency;
mod queue_fairness;
mod stale_result;
mod stream;
