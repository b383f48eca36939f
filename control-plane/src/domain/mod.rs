//! Validated domain values and rules, independent of protobuf and SQL.

pub mod agent;
pub mod api_key;
pub mod event;
pub mod output;
pub use agentplane_core::page;
pub mod task;
pub mod validate;
pub mod worker;
pub mod workspace;
