//! Retention of finished history: a background loop that deletes tasks which ended longer
//! ago than `--task-retention`, with their transcripts and leftover live output.
//!
//! Events (the audit log) and usage records (billing) are kept; see
//! `docs/operations.md` ("Retention"). The loop walks every workspace (deleted ones too) in
//! id order and deletes in batches of [`BATCH`] rows, each its own short transaction that
//! skips rows another transaction holds, so it never waits on the queue and several replicas
//! can run it at once. It touches only finished rows, which the claim (served by the partial
//! index on pending rows) never reads.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ids::TenantId;
use crate::metrics::METRICS;
use crate::store::{Purged, Store, StoreResult};

/// Tasks deleted per transaction: small enough that a batch (with its messages) takes
/// milliseconds, so its locks and WAL never stand in anyone's way.
pub const BATCH: i64 = 500;
/// Workspaces read per page while walking them.
const WORKSPACE_PAGE: i64 = 1000;
/// Pause between batches, so a large backlog of expired history is deleted at a bounded
/// rate (at most `BATCH` tasks per pause) rather than as fast as the database can.
const BATCH_PAUSE: Duration = Duration::from_millis(20);
/// The longest wait before the first pass after start, so replicas restarted more often
/// than the interval still purge.
const FIRST_PASS_DELAY: Duration = Duration::from_secs(60);

/// How long finished tasks are kept: a duration, or forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskRetention(pub Option<Duration>);

impl FromStr for TaskRetention {
    type Err = String;

    /// `off` or `0` keeps tasks forever; otherwise a whole number with a unit: `s`, `m`,
    /// `h` or `d` (`30d`, `12h`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text == "off" || text == "0" {
            return Ok(Self(None));
        }
        let invalid =
            || format!("{text:?} is not a retention: use off, or a number with s, m, h or d (30d)");
        let unit = match text.chars().last() {
            Some('s') => 1,
            Some('m') => 60,
            Some('h') => 60 * 60,
            Some('d') => 24 * 60 * 60,
            _ => return Err(invalid()),
        };
        let count: u64 = text[..text.len() - 1].parse().map_err(|_| invalid())?;
        match count.checked_mul(unit) {
            Some(0) => Ok(Self(None)),
            Some(seconds) => Ok(Self(Some(Duration::from_secs(seconds)))),
            None => Err(invalid()),
        }
    }
}

impl fmt::Display for TaskRetention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("off"),
            Some(keep) if keep.as_secs() % 86_400 == 0 => write!(f, "{}d", keep.as_secs() / 86_400),
            Some(keep) => write!(f, "{}s", keep.as_secs()),
        }
    }
}

/// Deletes every task, in every workspace, that ended more than `retention` ago. Returns
/// what it deleted; stops early (returning what it did so far) when `stop` is cancelled.
pub async fn purge_expired(
    store: &Store,
    retention: Duration,
    stop: &CancellationToken,
) -> StoreResult<Purged> {
    let mut total = Purged::default();
    let mut after = None;
    loop {
        let workspaces = store.workspace_ids_after(after, WORKSPACE_PAGE).await?;
        for &tenant in &workspaces {
            let purged = purge_workspace(store, tenant, retention, stop).await?;
            total.tasks += purged.tasks;
            total.messages += purged.messages;
            total.output_chunks += purged.output_chunks;
            if stop.is_cancelled() {
                return Ok(total);
            }
        }
        match workspaces.last() {
            Some(&last) if workspaces.len() as i64 == WORKSPACE_PAGE => after = Some(last),
            _ => return Ok(total),
        }
    }
}

async fn purge_workspace(
    store: &Store,
    tenant: TenantId,
    retention: Duration,
    stop: &CancellationToken,
) -> StoreResult<Purged> {
    let mut total = Purged::default();
    loop {
        // Unchecked: a deleted workspace's history expires too.
        let mut tx = store.tenant_unchecked(tenant).await?;
        let purged = tx.purge_finished_tasks(retention, BATCH).await?;
        tx.commit().await?;
        count(&purged);
        total.tasks += purged.tasks;
        total.messages += purged.messages;
        total.output_chunks += purged.output_chunks;
        if purged.tasks < u64::try_from(BATCH).unwrap_or(u64::MAX) || stop.is_cancelled() {
            return Ok(total);
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(total),
            () = tokio::time::sleep(BATCH_PAUSE) => {}
        }
    }
}

fn count(purged: &Purged) {
    for (table, rows) in [
        ("tasks", purged.tasks),
        ("task_messages", purged.messages),
        ("task_output_chunks", purged.output_chunks),
    ] {
        METRICS
            .retention_deleted
            .with_label_values(&[table])
            .inc_by(rows);
    }
}

/// Purges every `interval` (the first pass sooner, see [`FIRST_PASS_DELAY`]) until `stop`.
/// A failed pass is logged and retried at the next one.
pub async fn run(store: Store, retention: Duration, interval: Duration, stop: CancellationToken) {
    let mut wait = interval.min(FIRST_PASS_DELAY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = interval;
        match purge_expired(&store, retention, &stop).await {
            Ok(purged) if purged.tasks > 0 => tracing::info!(
                tasks = purged.tasks,
                messages = purged.messages,
                output_chunks = purged.output_chunks,
                retention_seconds = retention.as_secs(),
                "deleted finished tasks past retention"
            ),
            Ok(_) => tracing::debug!("no finished tasks past retention"),
            Err(error) => tracing::warn!(%error, "retention pass failed; retrying at the next"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_reads_units_and_off() {
        let parse = |text: &str| text.parse::<TaskRetention>().map(|r| r.0);
        assert_eq!(parse("30d"), Ok(Some(Duration::from_secs(30 * 86_400))));
        assert_eq!(parse("12h"), Ok(Some(Duration::from_secs(12 * 3600))));
        assert_eq!(parse("90m"), Ok(Some(Duration::from_secs(90 * 60))));
        assert_eq!(parse("5s"), Ok(Some(Duration::from_secs(5))));
        assert_eq!(parse("off"), Ok(None));
        assert_eq!(parse("0"), Ok(None));
        assert_eq!(parse("0d"), Ok(None));
        for bad in ["", "d", "30", "30w", "-1d", "1.5d", "99999999999999999999d"] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn retention_prints_what_it_reads() {
        for text in ["30d", "3600s", "off"] {
            assert_eq!(text.parse::<TaskRetention>().unwrap().to_string(), text);
        }
    }
}
