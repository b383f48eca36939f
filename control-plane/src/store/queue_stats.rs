//! Queue totals for metrics, through `agentplane_queue_stats()` (a SECURITY DEFINER function:
//! the control plane's role sees one workspace at a time, the totals cover all of them and
//! reveal no row).

use super::{Store, StoreResult};

/// One priority band's totals.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct QueueBand {
    /// `high` (priority > 0), `normal` (0) or `low` (< 0).
    pub priority_band: String,
    /// Pending tasks that are due.
    pub ready: i64,
    /// Pending tasks scheduled for later.
    pub scheduled: i64,
    /// Running tasks.
    pub running: i64,
    /// Seconds the oldest due pending task has waited (0 when none).
    pub oldest_ready_age_seconds: f64,
}

/// The bands `agentplane_queue_stats()` reports; a band with no task has no row.
pub const PRIORITY_BANDS: [&str; 3] = ["high", "normal", "low"];

impl Store {
    /// The queue's totals by priority band.
    pub async fn queue_stats(&self) -> StoreResult<Vec<QueueBand>> {
        Ok(sqlx::query_as(
            "SELECT priority_band, ready, scheduled, running, oldest_ready_age_seconds \
             FROM agentplane_queue_stats()",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
