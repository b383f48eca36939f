//! Parsing of ApiKeyService and IdentityService requests into domain values, with every
//! field violation collected.

use std::fmt::Display;

use agentplane_core::columns::WorkspaceRole;
use agentplane_proto::v1 as pb;
use chrono::Utc;

use crate::api::convert;
use crate::api::paging::page_after;
use crate::domain::api_key::{
    ApiKeyQuery, MAX_LIFETIME_DAYS, MAX_NAME, NewApiKeyRequest, RevokeApiKey,
};
use crate::domain::validate::Violations;
use crate::error::ApiError;
use crate::ids::{ApiKeyId, TenantId};

/// The page-token kind of a workspace's key list.
pub(super) fn api_keys_page(tenant: impl Display) -> String {
    format!("api_keys/{tenant}")
}

/// A protobuf role as a stored role; `None` for UNSPECIFIED or an unknown number.
pub(crate) fn role(value: i32) -> Option<WorkspaceRole> {
    match pb::WorkspaceRole::try_from(value).ok()? {
        pb::WorkspaceRole::Unspecified => None,
        pb::WorkspaceRole::Viewer => Some(WorkspaceRole::Viewer),
        pb::WorkspaceRole::Member => Some(WorkspaceRole::Member),
        pb::WorkspaceRole::Admin => Some(WorkspaceRole::Admin),
    }
}

impl TryFrom<pb::CreateApiKeyRequest> for NewApiKeyRequest {
    type Error = ApiError;

    fn try_from(request: pb::CreateApiKeyRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let tenant: Option<TenantId> = v.id("workspace_id", &request.workspace_id);
        let key = request.api_key.unwrap_or_default();
        v.text("api_key.name", &key.name, 1, MAX_NAME);
        let role = role(key.role);
        if role.is_none() {
            v.add("api_key.role", "must be VIEWER, MEMBER or ADMIN");
        }
        let expires_at = match key.expire_time.as_ref().map(convert::from_timestamp) {
            None => None,
            Some(None) => {
                v.add("api_key.expire_time", "is not a valid timestamp");
                None
            }
            Some(Some(at)) => {
                let now = Utc::now();
                if at <= now {
                    v.add("api_key.expire_time", "must be in the future");
                } else if at > now + chrono::Duration::days(MAX_LIFETIME_DAYS) {
                    v.add("api_key.expire_time", "must be at most 10 years ahead");
                }
                Some(at)
            }
        };
        let request_id = v.request_id("request_id", &request.request_id);
        v.finish_with(tenant.zip(role).map(|(tenant, role)| NewApiKeyRequest {
            tenant,
            name: key.name,
            role,
            expires_at,
            request_id,
        }))
    }
}

impl TryFrom<pb::ListApiKeysRequest> for ApiKeyQuery {
    type Error = ApiError;

    fn try_from(request: pb::ListApiKeysRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let tenant: Option<TenantId> = v.id("workspace_id", &request.workspace_id);
        let limit = v.page_size("page_size", request.page_size);
        // A token belongs to one workspace's listing, so it is read only once that is known.
        let before = tenant
            .and_then(|tenant| page_after(&mut v, &api_keys_page(tenant), &request.page_token));
        v.finish_with(tenant.map(|tenant| ApiKeyQuery {
            tenant,
            before: before.map(ApiKeyId),
            limit,
        }))
    }
}

impl TryFrom<pb::RevokeApiKeyRequest> for RevokeApiKey {
    type Error = ApiError;

    fn try_from(request: pb::RevokeApiKeyRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let tenant: Option<TenantId> = v.id("workspace_id", &request.workspace_id);
        let key: Option<ApiKeyId> = v.id("id", &request.id);
        let request_id = v.request_id("request_id", &request.request_id);
        v.finish_with(tenant.zip(key).map(|(tenant, key)| RevokeApiKey {
            tenant,
            key,
            request_id,
        }))
    }
}
