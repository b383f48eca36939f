//! Event log positions and filters.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::ids::TenantId;

/// Where an event sits in the log: the writing transaction, then the sequence. The order of
/// the log, shared by every workspace, so it never leaves the server: clients name a place
/// in the log by an event id instead (see `agentplane_core::page::encode_event`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventPosition {
    /// Transaction id (xid8 as a number).
    pub xid: i64,
    /// Sequence number within the log.
    pub seq: i64,
}

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
pub const RESOURCE_TYPES: &[&str] = &["workspace", "agent", "task", "api_key", "member"];

/// A validated ListEvents request.
#[derive(Clone, Debug)]
pub struct EventQuery {
    /// Workspace whose log is read.
    pub tenant: TenantId,
    /// Which events.
    pub filter: EventFilter,
    /// Page size.
    pub limit: i64,
    /// The event the page token names: the page starts after it.
    pub after: Option<Uuid>,
}

/// A validated WatchEvents request.
#[derive(Clone, Debug)]
pub struct EventWatch {
    /// Workspace whose log is followed.
    pub tenant: TenantId,
    /// Which events.
    pub filter: EventFilter,
    /// The event the cursor names: the watch starts after it.
    pub after: Option<Uuid>,
}
