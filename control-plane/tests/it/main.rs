//! Integration tests of agentplane: a real PostgreSQL cluster started by the harness, real
//! control planes on port 0 and real workers, talking over gRPC.
#![allow(
    clippy::unwrap_used,
    reason = "a failed unwrap is a failed test, with its location"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "tests spawn plain tasks and join them; nothing outlives a test"
)]

mod app;
mod fake_control_plane;
mod fixtures;
mod pg;
mod session;

mod auth;
mod end_to_end;
mod events;
mod isolation;
mod lifecycle;
mod queue;
mod reflection;
mod tasks;
mod validation;
mod watch;
mod worker_channel;
mod worker_queue;
mod worker_stream;
