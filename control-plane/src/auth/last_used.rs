//! `last_used_at` of API keys without a database write per request: authentication notes the
//! time in memory, and a background task writes what was noted in one batch per workspace
//! every [`FLUSH_INTERVAL`] (and once more at shutdown, before the pool closes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::ids::{ApiKeyId, TenantId};
use crate::store::Store;

/// How often noted uses are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(30);

/// The latest noted use of each key, keyed by (workspace, key).
type Uses = HashMap<(TenantId, ApiKeyId), DateTime<Utc>>;

/// Uses noted since the last flush, by key.
#[derive(Clone, Debug, Default)]
pub struct LastUsed {
    pending: Arc<Mutex<Uses>>,
}

impl LastUsed {
    /// Notes that a key authenticated a request now.
    pub fn note(&self, tenant: TenantId, key: ApiKeyId) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert((tenant, key), Utc::now());
        }
    }

    fn take(&self) -> HashMap<TenantId, Vec<(ApiKeyId, DateTime<Utc>)>> {
        let drained = match self.pending.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(_) => HashMap::new(),
        };
        let mut by_tenant: HashMap<TenantId, Vec<_>> = HashMap::new();
        for ((tenant, key), at) in drained {
            by_tenant.entry(tenant).or_default().push((key, at));
        }
        by_tenant
    }

    /// Writes every noted use.
    pub async fn flush(&self, store: &Store) {
        for (tenant, uses) in self.take() {
            if let Err(error) = store.touch_api_keys(tenant, &uses).await {
                tracing::warn!(%error, %tenant, keys = uses.len(), "recording api key use failed");
            }
        }
    }

    /// Flushes every [`FLUSH_INTERVAL`] until `stop`. Shutdown flushes once more itself,
    /// before it closes the pool.
    pub async fn run(self, store: Store, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(FLUSH_INTERVAL) => self.flush(&store).await,
            }
        }
    }
}
