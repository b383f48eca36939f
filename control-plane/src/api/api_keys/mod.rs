//! ApiKeyService and IdentityService. `parse` turns their requests into domain values.

mod parse;

pub(super) use parse::role;

use agentplane_proto::v1 as pb;
use pb::api_key_service_server::ApiKeyService;
use pb::identity_service_server::IdentityService;
use tonic::{Request, Response, Status};

use super::paging::split_page;
use super::{State, convert};
use crate::auth::{Principal, caller, secret};
use crate::domain::api_key::{ApiKeyQuery, NewApiKeyRequest, RevokeApiKey};
use crate::domain::page;
use crate::domain::validate::Violations;
use crate::error::ApiError;
use crate::ids::{ApiKeyId, TenantId};
use crate::store::NewApiKey;

/// Handlers of ApiKeyService.
#[derive(Clone, Debug)]
pub struct ApiKeyApi {
    state: State,
}

impl ApiKeyApi {
    /// Handlers over shared state.
    pub fn new(state: State) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl ApiKeyService for ApiKeyApi {
    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let caller = caller(&request)?;
        let new: NewApiKeyRequest = request.into_inner().try_into()?;
        let actor = caller.authorize(&self.state.store, new.tenant).await?;
        // A key never gets more than its creator has (the platform admin grants any role).
        if !caller
            .may_grant(&self.state.store, new.tenant, new.role)
            .await?
        {
            return Err(ApiError::PermissionDenied.into());
        }
        let secret = secret::generate(secret::API_KEY)
            .map_err(|error| ApiError::Internal(anyhow::anyhow!("random source: {error}")))?;
        let mut tx = self.state.store.tenant(new.tenant).await?;
        let row = tx
            .create_api_key(
                NewApiKey {
                    id: ApiKeyId(secret.id),
                    name: &new.name,
                    role: new.role,
                    secret_hash: &secret.hash,
                    expires_at: new.expires_at,
                    request_id: new.request_id.as_deref(),
                },
                &actor,
            )
            .await?;
        tx.commit().await?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(convert::api_key(&row)),
            secret: secret::reveal(&secret.secret),
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let caller = caller(&request)?;
        let query: ApiKeyQuery = request.into_inner().try_into()?;
        caller.authorize(&self.state.store, query.tenant).await?;
        let mut tx = self.state.store.tenant(query.tenant).await?;
        let rows = tx.list_api_keys(query.before, query.limit + 1).await?;
        let (api_keys, next_page_token) = split_page(rows, query.limit, convert::api_key, |row| {
            page::encode_id(&parse::api_keys_page(row.tenant_id), row.id.0)
        });
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys,
            next_page_token,
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let caller = caller(&request)?;
        let revoke: RevokeApiKey = request.into_inner().try_into()?;
        let actor = caller.authorize(&self.state.store, revoke.tenant).await?;
        let mut tx = self.state.store.tenant(revoke.tenant).await?;
        let row = tx
            .revoke_api_key(revoke.key, &actor, revoke.request_id.as_deref())
            .await?;
        tx.commit().await?;
        self.state
            .api_keys
            .revoked(revoke.key, tokio::time::Instant::now());
        Ok(Response::new(pb::RevokeApiKeyResponse {
            api_key: Some(convert::api_key(&row)),
        }))
    }
}

/// Handlers of IdentityService.
#[derive(Clone, Debug)]
pub struct IdentityApi {
    state: State,
}

impl IdentityApi {
    /// Handlers over shared state.
    pub fn new(state: State) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl IdentityService for IdentityApi {
    async fn get_current_identity(
        &self,
        request: Request<pb::GetCurrentIdentityRequest>,
    ) -> Result<Response<pb::GetCurrentIdentityResponse>, Status> {
        let caller = caller(&request)?;
        let mut v = Violations::new();
        let workspace: Option<TenantId> =
            v.optional_id("workspace_id", &request.get_ref().workspace_id);
        v.finish()?;
        let role = match (workspace, &caller.principal) {
            (None, _) => pb::WorkspaceRole::Unspecified,
            (Some(tenant), Principal::PlatformAdmin) => {
                // The workspace must exist, as for any other read by the platform admin.
                self.state.store.get_workspace(tenant).await?;
                pb::WorkspaceRole::Unspecified
            }
            (Some(tenant), _) => {
                let role = caller
                    .role_in(&self.state.store, tenant)
                    .await?
                    .ok_or(ApiError::NotFound("workspace"))?;
                self.state.store.get_workspace(tenant).await?;
                convert::workspace_role(role)
            }
        };
        let home_workspace_id = match &caller.principal {
            Principal::ApiKey { tenant, .. } => tenant.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::GetCurrentIdentityResponse {
            kind: caller.principal.kind().to_owned(),
            actor: caller.principal.actor(),
            home_workspace_id,
            role: role.into(),
        }))
    }
}
