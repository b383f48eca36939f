//! API keys: limits and the validated requests of ApiKeyService.

use agentplane_core::columns::WorkspaceRole;
use chrono::{DateTime, Utc};

use crate::ids::{ApiKeyId, TenantId};

/// Longest key name.
pub const MAX_NAME: usize = 200;
/// Furthest ahead a key may expire, in days (about ten years).
pub const MAX_LIFETIME_DAYS: i64 = 3653;

/// A validated CreateApiKey request.
#[derive(Clone, Debug)]
pub struct NewApiKeyRequest {
    /// Workspace the key acts in.
    pub tenant: TenantId,
    /// Name.
    pub name: String,
    /// Role.
    pub role: WorkspaceRole,
    /// When it stops working.
    pub expires_at: Option<DateTime<Utc>>,
    /// Idempotency key.
    pub request_id: Option<String>,
}

/// A validated ListApiKeys request: a page of a workspace's keys, newest first.
#[derive(Clone, Debug)]
pub struct ApiKeyQuery {
    /// Workspace whose keys are listed.
    pub tenant: TenantId,
    /// Only keys older than this one (the page token).
    pub before: Option<ApiKeyId>,
    /// Most keys in the page.
    pub limit: i64,
}

/// A validated RevokeApiKey request.
#[derive(Clone, Debug)]
pub struct RevokeApiKey {
    /// Workspace the key belongs to.
    pub tenant: TenantId,
    /// The key.
    pub key: ApiKeyId,
    /// Idempotency key, recorded in the event.
    pub request_id: Option<String>,
}
