//! Event log positions and filters.

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use agentplane_core::page::EventPosition;

/// Which events to return; every set field must match.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Resource kind.
    pub resource_type: Option<String>,
    /// Resource id.
    pub resource_id: Option<Uuid>,
    /// Action.
    pub action: Option<String>,
    /// Inclusive lower bound on time.
    pub start_time: Option<DateTime<Utc>>,
    /// Exclusive upper bound on time.
    pub end_time: Option<DateTime<Utc>>,
}

/// Resource kinds events are recorded for.
pub const RESOURCE_TYPES: &[&str] = &["workspace", "agent", "task"];
