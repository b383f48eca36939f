//! What agentplane's integration tests share: a private PostgreSQL cluster with a migrated
//! database per test ([`pg`]), in-process control planes and workers on port 0 with
//! authenticated clients ([`app`]), and rows inserted directly as the schema owner
//! ([`fixtures`]).
//!
//! Used as a dev-dependency by `agentplane-control-plane` and `agentplane-worker`, each with
//! one integration test binary (`tests/it/`). Each binary gets its own cluster, started by the
//! first test that asks for a database and stopped when the binary exits.
#![expect(
    clippy::unwrap_used,
    reason = "test support: a failed unwrap is a failed test, with its location"
)]
#![expect(
    clippy::disallowed_methods,
    reason = "test support spawns servers that live as long as the test, not background tasks"
)]

pub mod app;
pub mod fixtures;
mod killable;
pub mod pg;
pub mod proxy;
