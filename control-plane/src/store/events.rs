//! The append-only event log.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use super::{StoreResult, TenantTx};
use crate::domain::event::{EventFilter, EventPosition};
use crate::ids::TenantId;
use agentplane_core::notify::Notification;

/// An event to append.
#[derive(Debug)]
pub struct NewEvent<'a> {
    /// Who caused it.
    pub actor: &'a str,
    /// What happened, `<resource>.<verb>`.
    pub action: &'a str,
    /// `workspace`, `agent` or `task`.
    pub resource_type: &'a str,
    /// The resource's id.
    pub resource_id: Uuid,
    /// The request id of the call that caused it.
    pub request_id: Option<&'a str>,
    /// Action-specific details.
    pub data: serde_json::Value,
}

/// A stored event.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct EventRow {
    /// Owning workspace.
    pub tenant_id: TenantId,
    /// Event id.
    pub id: Uuid,
    /// Id of the transaction that wrote it (first part of its position).
    pub xid: i64,
    /// Sequence number (second part of its position).
    pub seq: i64,
    /// Who caused it.
    pub actor: String,
    /// What happened.
    pub action: String,
    /// Kind of resource.
    pub resource_type: String,
    /// Resource id.
    pub resource_id: Uuid,
    /// Request id, if any.
    pub request_id: Option<String>,
    /// Details.
    pub data: Json<serde_json::Value>,
    /// When it was written.
    pub created_at: DateTime<Utc>,
}

impl EventRow {
    /// The event's position in its workspace's log.
    pub fn position(&self) -> EventPosition {
        EventPosition {
            xid: self.xid,
            seq: self.seq,
        }
    }
}

impl TenantTx {
    /// Appends an event in this transaction and wakes event watchers on commit.
    pub async fn append_event(&mut self, event: NewEvent<'_>) -> StoreResult<()> {
        self.query(
            "INSERT INTO events (tenant_id, id, actor, action, resource_type, resource_id, \
             request_id, data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(Uuid::now_v7())
        .bind(event.actor)
        .bind(event.action)
        .bind(event.resource_type)
        .bind(event.resource_id)
        .bind(event.request_id)
        .bind(Json(&event.data))
        .execute(self.executor())
        .await?;
        let tenant = self.tenant();
        self.notify(&[Notification::Events { tenant }]).await
    }

    /// The position of this workspace's event `id`, if it has one.
    pub async fn event_position(&mut self, id: Uuid) -> StoreResult<Option<EventPosition>> {
        let found = self
            .query_as::<(i64, i64)>(
                "SELECT xid::text::bigint, seq FROM events WHERE tenant_id = $1 AND id = $2",
            )
            .bind(id)
            .fetch_optional(self.executor())
            .await?;
        Ok(found.map(|(xid, seq)| EventPosition { xid, seq }))
    }

    /// Events after `after` in log order, at most `limit`. Only events of transactions older
    /// than every transaction still in flight are returned, so a later read after the last
    /// position returned can never miss an event that commits late; the page says whether it
    /// stopped short of committed events held back that way.
    pub async fn list_events(
        &mut self,
        filter: &EventFilter,
        after: Option<EventPosition>,
        limit: i64,
    ) -> StoreResult<EventPage> {
        // One statement, so one snapshot and one horizon (`pg_snapshot_xmin`) for both
        // parts: the page below the horizon, and a probe for one committed event of the
        // workspace at or past it, whatever the filter (so a filtered watcher of a busy
        // workspace may look again, up to once a second, while events it would not show
        // are held back). The page orders by the table's columns, which `events_log` keeps
        // in order: a bare `xid` would name the output column (a bigint), and every page
        // would then read and sort the whole log from the cursor to the horizon.
        let rows = self
            .query_as::<PageRow>(
                "SELECT * FROM ( \
                     (SELECT tenant_id, id, xid::text::bigint AS xid, seq, actor, action, \
                             resource_type, resource_id, request_id, data, created_at, \
                             true AS settled \
                      FROM events \
                      WHERE tenant_id = $1 \
                        AND xid < (SELECT pg_snapshot_xmin(pg_current_snapshot())) \
                        AND ($2::bigint IS NULL \
                             OR (xid, seq) > ($2::bigint::text::xid8, $3::bigint)) \
                        AND ($4::text IS NULL OR resource_type = $4) \
                        AND ($5::uuid IS NULL OR resource_id = $5) \
                        AND ($6::text IS NULL OR action = $6) \
                        AND ($7::timestamptz IS NULL OR created_at >= $7) \
                        AND ($8::timestamptz IS NULL OR created_at < $8) \
                      ORDER BY events.xid, events.seq \
                      LIMIT $9) \
                   UNION ALL \
                     (SELECT tenant_id, id, xid::text::bigint, seq, actor, action, \
                             resource_type, resource_id, request_id, data, created_at, \
                             false \
                      FROM events \
                      WHERE tenant_id = $1 \
                        AND xid >= (SELECT pg_snapshot_xmin(pg_current_snapshot())) \
                      LIMIT 1)) AS page \
                 ORDER BY xid, seq",
            )
            .bind(after.map(|p| p.xid))
            .bind(after.map(|p| p.seq))
            .bind(filter.resource_type.as_deref())
            .bind(filter.resource_id)
            .bind(filter.action.as_deref())
            .bind(filter.start_time)
            .bind(filter.end_time)
            .bind(limit)
            .fetch_all(self.executor())
            .await?;
        Ok(EventPage::from_rows(rows))
    }
}

/// A page of the event log, as [`TenantTx::list_events`] reads it.
#[derive(Debug)]
pub struct EventPage {
    /// The events, each with a transaction id below the snapshot's `xmin` (older than
    /// every transaction that was still in flight).
    pub rows: Vec<EventRow>,
    /// Whether committed events after the page are held back behind an older transaction
    /// still in flight. That transaction may be anyone's and sends no word when it ends, so
    /// a reader waiting at the head must look again by itself.
    pub held_back: bool,
}

impl EventPage {
    /// Keeps the rows before the first unsettled one: settled means `xid` below the
    /// horizon, so in log order every settled row comes before every other.
    fn from_rows(rows: Vec<PageRow>) -> Self {
        let read = rows.len();
        let rows: Vec<EventRow> = rows
            .into_iter()
            .map_while(|row| row.settled.then_some(row.event))
            .collect();
        Self {
            held_back: rows.len() < read,
            rows,
        }
    }
}

/// A row of [`TenantTx::list_events`]'s statement.
#[derive(sqlx::FromRow)]
struct PageRow {
    #[sqlx(flatten)]
    event: EventRow,
    /// Whether its transaction is older than every transaction still in flight.
    settled: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(xid: i64, settled: bool) -> PageRow {
        PageRow {
            event: EventRow {
                tenant_id: TenantId(Uuid::nil()),
                id: Uuid::now_v7(),
                xid,
                seq: 1,
                actor: "system".to_owned(),
                action: "task.created".to_owned(),
                resource_type: "task".to_owned(),
                resource_id: Uuid::nil(),
                request_id: None,
                data: Json(serde_json::Value::Null),
                created_at: Utc::now(),
            },
            settled,
        }
    }

    #[test]
    fn a_page_shows_the_settled_rows_and_says_whether_any_is_held_back() {
        let page = EventPage::from_rows(vec![row(10, true), row(11, true), row(20, false)]);
        let shown: Vec<i64> = page.rows.iter().map(|row| row.xid).collect();
        assert_eq!(shown, [10, 11]);
        assert!(page.held_back);

        let page = EventPage::from_rows(vec![row(10, true), row(11, true)]);
        assert_eq!(page.rows.len(), 2);
        assert!(!page.held_back);

        let page = EventPage::from_rows(vec![row(20, false)]);
        assert!(page.rows.is_empty());
        assert!(page.held_back);

        let page = EventPage::from_rows(Vec::new());
        assert!(page.rows.is_empty());
        assert!(!page.held_back);
    }
}
