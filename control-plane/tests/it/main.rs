//! Integration tests of the control plane: a real PostgreSQL cluster started by the harness,
//! real control planes on port 0 and real workers, talking over gRPC. The harness and the
//! helpers live in `agentplane-testkit`, shared with the worker's tests (`worker/tests/it/`).
#![expect(
    clippy::unwrap_used,
    reason = "a failed unwrap is a failed test, with its location (allow-unwrap-in-tests covers only #[test] functions, not these helpers)"
)]
#![expect(
    clippy::disallowed_methods,
    reason = "tests spawn plain tasks and join them; nothing outlives a test"
)]

// The test modules reach the shared helpers as `crate::pg` and `crate::app`.
use agentplane_testkit::{app, fixtures, pg};

mod session;

mod api_keys;
mod auth;
mod autoscaling;
mod batch;
mod cross_workspace;
mod database;
mod end_to_end;
mod events;
mod group_commit;
mod idempotency;
mod isolation;
mod lifecycle;
mod live_output;
mod log_hygiene;
mod members;
mod metrics;
mod output_reset;
mod reflection;
mod retention;
mod routing;
mod steps;
mod tasks;
mod tracing_e2e;
mod validation;
mod watch;
mod worker_channel;
mod worker_credentials;
