//! agentplane worker: claims tasks from Postgres, runs them against model providers, and
//! streams output, events, heartbeats and results to the control plane.
//!
//! [`Worker::start`] connects and runs the loops in the background; [`WorkerHandle::shutdown`]
//! stops them in order. The control-plane integration tests run workers in-process through
//! this API; `main.rs` is a thin command line around it.
//!
//! Layout: [`queue`] holds the SQL (claim, reap), `link` the control-plane stream, `claimer`
//! the claim/listen/reap loops, `runner` one attempt, [`provider`] the model providers.

mod backoff;
mod claimer;
mod coalesce;
mod config;
mod identity;
mod lease;
mod link;
mod metrics;
pub mod provider;
pub mod queue;
mod runner;
mod spawn;
mod worker;

pub use config::{
    ConfigError, DEFAULT_CAPACITY, DEFAULT_CONTROL_PLANE_URL, DEFAULT_ECHO_TOKEN_DELAY,
    DEFAULT_POLL_INTERVAL_MAX, DEFAULT_SHUTDOWN_GRACE, MAX_CAPACITY, WorkerConfig,
};
pub use worker::{Worker, WorkerHandle};
