//! The agentplane control plane: the public gRPC API, the worker channel, and the single
//! writer of task results, events and usage. See `docs/architecture.md`.

pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod config;
pub mod demo;
pub mod domain;
pub mod error;
pub mod fanout;
pub mod metrics;
pub mod retention;
pub use agentplane_core::ids;
pub mod spawn;
pub mod startup;
pub mod store;
pub mod telemetry;
