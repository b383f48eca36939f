//! API keys read from the database, remembered for [`KEY_CACHE_TTL`], so that a client
//! calling many times a second costs one key read per second instead of a read
//! transaction (four statements) per call: at 64 CreateTask calls in flight that read was
//! ten times the group commit's database work per task.
//!
//! What stays exact: the secret is compared on every call (the cache holds its hash), and
//! so is the expiry time. What may lag: a key revoked on another replica keeps working there
//! for at most [`KEY_CACHE_TTL`] after the revocation commits. On the replica that revoked
//! it, it stops at once: the revocation forgets the key, and a read that began before the
//! revocation cannot put the old row back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::ids::ApiKeyId;
use crate::store::ApiKeyCredential;

/// How long a key read from the database is used before it is read again: the longest a
/// key revoked on one replica keeps working on another.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);

/// Keys remembered before the map is cleared (a bound, not a working-set size).
const MAX_CACHED_KEYS: usize = 100_000;

#[derive(Debug)]
enum Entry {
    /// A key as read by a read that began at `read_at`.
    Read {
        key: ApiKeyCredential,
        read_at: Instant,
    },
    /// Revoked on this replica at `at`: reads that began earlier are not remembered.
    Revoked { at: Instant },
}

/// The keys this replica read recently, shared by the authenticator and the handler that
/// revokes keys.
#[derive(Clone, Debug, Default)]
pub struct ApiKeyCache {
    entries: Arc<Mutex<HashMap<ApiKeyId, Entry>>>,
}

impl ApiKeyCache {
    /// The key `id` if a read that began less than [`KEY_CACHE_TTL`] before `now` found it.
    pub fn get(&self, id: ApiKeyId, now: Instant) -> Option<ApiKeyCredential> {
        let entries = self.entries.lock().ok()?;
        match entries.get(&id)? {
            Entry::Read { key, read_at }
                if now.saturating_duration_since(*read_at) < KEY_CACHE_TTL =>
            {
                Some(key.clone())
            }
            _ => None,
        }
    }

    /// Remembers `key` as found by a read of `id` that began at `read_at`, unless this
    /// replica revoked the key after that read began.
    pub fn insert(&self, id: ApiKeyId, key: ApiKeyCredential, read_at: Instant) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if let Some(Entry::Revoked { at }) = entries.get(&id)
            && read_at <= *at
        {
            return;
        }
        if entries.len() >= MAX_CACHED_KEYS {
            forget_reads(&mut entries);
        }
        entries.insert(id, Entry::Read { key, read_at });
    }

    /// Forgets `id`, revoked at `now` (after its revocation committed): the next call with
    /// it reads the database.
    pub fn revoked(&self, id: ApiKeyId, now: Instant) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_CACHED_KEYS {
                forget_reads(&mut entries);
            }
            entries.insert(id, Entry::Revoked { at: now });
        }
    }
}

/// Makes room: drops every remembered read, but keeps the revocation markers (a read that
/// began before a revocation must still not be remembered after it), unless they alone fill
/// the map, when the oldest half goes.
fn forget_reads(entries: &mut HashMap<ApiKeyId, Entry>) {
    entries.retain(|_, entry| matches!(entry, Entry::Revoked { .. }));
    if entries.len() >= MAX_CACHED_KEYS / 2 {
        let mut times: Vec<Instant> = entries
            .values()
            .filter_map(|entry| match entry {
                Entry::Revoked { at } => Some(*at),
                Entry::Read { .. } => None,
            })
            .collect();
        times.sort_unstable();
        let cutoff = times[times.len() / 2];
        entries.retain(|_, entry| matches!(entry, Entry::Revoked { at } if *at > cutoff));
    }
}

#[cfg(test)]
mod tests {
    use agentplane_core::columns::WorkspaceRole;
    use uuid::Uuid;

    use super::*;
    use crate::ids::TenantId;

    fn key() -> ApiKeyCredential {
        ApiKeyCredential {
            tenant_id: TenantId(Uuid::now_v7()),
            role: WorkspaceRole::Member,
            secret_hash: vec![1; 32],
            expires_at: None,
            revoked_at: None,
        }
    }

    #[test]
    fn a_key_is_used_for_the_ttl_then_read_again() {
        let cache = ApiKeyCache::default();
        let id = ApiKeyId(Uuid::now_v7());
        let now = Instant::now();
        assert!(cache.get(id, now).is_none());
        cache.insert(id, key(), now);
        assert!(cache.get(id, now + KEY_CACHE_TTL / 2).is_some());
        assert!(cache.get(id, now + KEY_CACHE_TTL).is_none());
    }

    #[test]
    fn a_read_that_began_before_a_revocation_is_not_remembered() {
        let cache = ApiKeyCache::default();
        let id = ApiKeyId(Uuid::now_v7());
        let now = Instant::now();
        cache.insert(id, key(), now);
        let read_began = now + Duration::from_millis(1);
        cache.revoked(id, now + Duration::from_millis(2));
        assert!(cache.get(id, now + Duration::from_millis(3)).is_none());
        cache.insert(id, key(), read_began);
        assert!(cache.get(id, now + Duration::from_millis(4)).is_none());
        // A read after the revocation is remembered (it shows the key revoked).
        cache.insert(id, key(), now + Duration::from_millis(5));
        assert!(cache.get(id, now + Duration::from_millis(6)).is_some());
    }
}
