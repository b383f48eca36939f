//! Revoked worker credentials, known to every open worker session: a revoked worker's
//! session ends as soon as its revocation is seen, at once on the replica that revoked it
//! and within [`REFRESH_INTERVAL`] on the others, which re-read the revoked ids from the
//! database. New sessions are refused at authentication, which reads the credential.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ids::WorkerId;
use crate::store::Store;

/// How often revoked ids are re-read.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// The set of revoked worker ids, watched by sessions.
#[derive(Clone, Debug)]
pub struct Revocations {
    revoked: Arc<watch::Sender<HashSet<WorkerId>>>,
}

impl Default for Revocations {
    fn default() -> Self {
        Self {
            revoked: Arc::new(watch::Sender::new(HashSet::new())),
        }
    }
}

impl Revocations {
    /// Marks a worker revoked on this replica now.
    pub fn revoke(&self, worker: WorkerId) {
        self.revoked.send_if_modified(|set| set.insert(worker));
    }

    /// Completes once `worker` is revoked.
    pub async fn revoked(&self, worker: WorkerId) {
        let mut receiver = self.revoked.subscribe();
        // Err only when the sender is gone, which it never is while a session holds `self`.
        let _ = receiver.wait_for(|set| set.contains(&worker)).await;
    }

    /// Re-reads the revoked ids every [`REFRESH_INTERVAL`] until `stop`.
    pub async fn run(self, store: Store, stop: CancellationToken) {
        loop {
            match store.revoked_workers().await {
                Ok(ids) => {
                    self.revoked.send_if_modified(|set| {
                        let before = set.len();
                        set.extend(ids);
                        set.len() != before
                    });
                }
                Err(error) => tracing::warn!(%error, "reading revoked worker credentials failed"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(REFRESH_INTERVAL) => {}
            }
        }
    }
}
