//! Authentication and authorisation, decided in one place for every request from the
//! credential in `authorization: Bearer <token>` and the gRPC method path.
//!
//! The credentials: the platform admin token and the fleet's worker enrolment token (from
//! configuration), workspace API keys and per-worker credentials (`secret`, stored as
//! hashes), and users' JWTs from an identity provider (`jwt`), whose role in a workspace is
//! their membership of it. The policy is the table in [`table`];
//! the [`AuthLayer`] applies the part that needs only the credential and the method (fail
//! closed: a method missing from the table is refused), and handlers apply the workspace
//! part with [`Caller::authorize`] once they have parsed which workspace a request names.
//! The workspace always comes from the request, never from the credential.
//!
//! Every authentication failure answers the same UNAUTHENTICATED "invalid credentials",
//! whichever check failed, so a caller learns nothing about which part was wrong. Failures
//! are counted, and repeated ones from one source are slowed down (`throttle`).

pub mod jwks;
pub mod jwt;
pub mod key_cache;
pub mod last_used;
pub mod revocations;
pub mod secret;
pub mod table;
pub mod throttle;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use agentplane_core::columns::WorkspaceRole;
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use crate::error::ApiError;
use crate::ids::{ApiKeyId, TenantId, UserId, WorkerId};
use crate::store::Store;
use key_cache::ApiKeyCache;
use last_used::LastUsed;
use table::{Access, Permission};

/// The one answer to a credential that is missing, malformed, unknown, revoked or expired.
const INVALID: ApiError = ApiError::Unauthenticated("invalid credentials");

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// The platform operator: manages workspaces, their keys and settings.
    PlatformAdmin,
    /// The fleet's shared enrolment token: may only exchange itself for a worker credential.
    Enrolment,
    /// A worker with its own credential: may only use the worker channel, as this worker.
    Worker {
        /// The worker id, from the credential.
        id: WorkerId,
    },
    /// A user from the identity provider: acts in the workspaces it is a member of, with its
    /// role in each.
    User {
        /// The user.
        id: UserId,
    },
    /// A workspace API key: acts in its one workspace with its role.
    ApiKey {
        /// The key.
        id: ApiKeyId,
        /// The workspace it is bound to.
        tenant: TenantId,
        /// Its role there.
        role: WorkspaceRole,
    },
}

impl Principal {
    /// The actor recorded in events.
    pub fn actor(&self) -> String {
        match self {
            Principal::PlatformAdmin => "platform-admin".to_owned(),
            Principal::Enrolment => "enrolment".to_owned(),
            Principal::Worker { id } => format!("worker:{id}"),
            Principal::ApiKey { id, .. } => format!("api_key:{id}"),
            Principal::User { id } => format!("user:{id}"),
        }
    }

    /// The kind of identity, as GetCurrentIdentity reports it.
    pub fn kind(&self) -> &'static str {
        match self {
            Principal::PlatformAdmin => "platform-admin",
            Principal::Enrolment => "enrolment",
            Principal::Worker { .. } => "worker",
            Principal::ApiKey { .. } => "api_key",
            Principal::User { .. } => "user",
        }
    }

    /// Whether this credential's kind may call a method with `access` at all.
    fn admits(&self, access: Access) -> bool {
        match (access, self) {
            (Access::Public, _) => true,
            (Access::AnyClient, principal) => matches!(
                principal,
                Principal::PlatformAdmin | Principal::ApiKey { .. } | Principal::User { .. }
            ),
            (Access::Platform, principal) => *principal == Principal::PlatformAdmin,
            (Access::Worker, principal) => matches!(principal, Principal::Worker { .. }),
            (Access::Enrol, principal) => *principal == Principal::Enrolment,
            (Access::Workspace(permission), Principal::PlatformAdmin) => {
                table::platform_admin_permits(permission)
            }
            (Access::Workspace(permission), Principal::ApiKey { role, .. }) => {
                table::role_permits(*role, permission)
            }
            // A user's role depends on the workspace: decided by `Caller::authorize`.
            (Access::Workspace(_), Principal::User { .. }) => true,
            (Access::Workspace(_), Principal::Worker { .. } | Principal::Enrolment) => false,
        }
    }
}

/// The authenticated caller of a request, with the access its method needs.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Who is calling.
    pub principal: Principal,
    access: Access,
}

impl Caller {
    /// Decides whether the caller may act in `tenant` with the permission its method needs
    /// (from the table), and returns the actor to record in events.
    ///
    /// Another workspace answers NOT_FOUND, as if it did not exist, so ids reveal nothing.
    pub async fn authorize(&self, store: &Store, tenant: TenantId) -> Result<String, ApiError> {
        // Every workspace method calls this first: from here on the call's log lines (and its
        // span) name the workspace, refused calls included.
        tracing::Span::current().record("workspace_id", tracing::field::display(tenant));
        let Access::Workspace(permission) = self.access else {
            // Only workspace methods call this; anything else is a wiring bug: refuse.
            return Err(ApiError::PermissionDenied);
        };
        let allowed = match &self.principal {
            Principal::PlatformAdmin => table::platform_admin_permits(permission),
            Principal::ApiKey {
                tenant: own, role, ..
            } => {
                if *own != tenant {
                    return Err(ApiError::NotFound("workspace"));
                }
                table::role_permits(*role, permission)
            }
            Principal::User { .. } => {
                let role = self
                    .role_in(store, tenant)
                    .await?
                    .ok_or(ApiError::NotFound("workspace"))?;
                table::role_permits(role, permission)
            }
            Principal::Worker { .. } | Principal::Enrolment => false,
        };
        if allowed {
            Ok(self.principal.actor())
        } else {
            Err(ApiError::PermissionDenied)
        }
    }

    /// The caller's role in `tenant`: `None` where it has none (the platform admin has none
    /// anywhere, an API key only in its own workspace).
    pub async fn role_in(
        &self,
        store: &Store,
        tenant: TenantId,
    ) -> Result<Option<WorkspaceRole>, ApiError> {
        Ok(match &self.principal {
            Principal::ApiKey {
                tenant: own, role, ..
            } if *own == tenant => Some(*role),
            Principal::User { id } => match store.member_role(tenant, *id).await {
                Ok(role) => role,
                Err(crate::store::StoreError::NotFound(_)) => None,
                Err(error) => return Err(error.into()),
            },
            _ => None,
        })
    }

    /// Whether the caller may give `role` to a key or member: never more than it has.
    pub async fn may_grant(
        &self,
        store: &Store,
        tenant: TenantId,
        role: WorkspaceRole,
    ) -> Result<bool, ApiError> {
        Ok(match self.principal {
            Principal::PlatformAdmin => true,
            _ => self
                .role_in(store, tenant)
                .await?
                .is_some_and(|own| role <= own),
        })
    }

    /// The permission of the method being called, for handlers that filter by it.
    pub fn permission(&self) -> Option<Permission> {
        match self.access {
            Access::Workspace(permission) => Some(permission),
            _ => None,
        }
    }
}

/// The static credentials the server accepts.
/// `Debug` shows the tokens as `[REDACTED]` (`SecretString`).
#[derive(Clone, Debug)]
pub struct Credentials {
    /// Bearer token of the platform admin.
    pub admin_token: SecretString,
    /// The fleet's worker enrolment token: exchanged for a worker credential.
    pub worker_token: SecretString,
}

/// Everything authentication needs: the static tokens, the key store, and where key uses
/// are noted.
#[derive(Clone, Debug)]
pub struct Authenticator {
    credentials: Credentials,
    store: Store,
    last_used: LastUsed,
    /// API keys read recently (`key_cache.rs`: a revocation on another replica takes up to
    /// a second to reach this one).
    keys: ApiKeyCache,
    jwt: Option<Arc<jwt::JwtVerifier>>,
    /// Authentication failures, counted and slowed down per source.
    throttle: Arc<throttle::FailureThrottle>,
    /// User ids by (issuer, subject), so a known user costs no database read.
    users: Arc<std::sync::Mutex<std::collections::HashMap<jwt::VerifiedUser, UserId>>>,
}

/// Users remembered in memory before the map is cleared (a bound, not a working-set size).
const MAX_CACHED_USERS: usize = 100_000;

impl Authenticator {
    /// Accepts `credentials` and the API keys in `store`; notes key uses in `last_used`.
    pub fn new(credentials: Credentials, store: Store, last_used: LastUsed) -> Self {
        Self {
            credentials,
            store,
            last_used,
            keys: ApiKeyCache::default(),
            jwt: None,
            throttle: Arc::default(),
            users: Arc::default(),
        }
    }

    /// Authentication failures since start.
    pub fn failures(&self) -> u64 {
        self.throttle.total()
    }

    /// Shares `keys` with the handler that revokes keys, so a revocation stops its key at
    /// once on this replica.
    pub fn with_key_cache(mut self, keys: ApiKeyCache) -> Self {
        self.keys = keys;
        self
    }

    /// Also accepts users' JWTs that `verifier` verifies.
    pub fn with_jwt(mut self, verifier: jwt::JwtVerifier) -> Self {
        self.jwt = Some(Arc::new(verifier));
        self
    }

    async fn authenticate_user(&self, user: jwt::VerifiedUser) -> Result<Principal, ApiError> {
        let cached = self
            .users
            .lock()
            .ok()
            .and_then(|users| users.get(&user).copied());
        let id = match cached {
            Some(id) => id,
            None => {
                let id = self.store.user_id(&user.issuer, &user.subject).await?;
                if let Ok(mut users) = self.users.lock() {
                    if users.len() >= MAX_CACHED_USERS {
                        users.clear();
                    }
                    users.insert(user, id);
                }
                id
            }
        };
        Ok(Principal::User { id })
    }

    /// Identifies the caller from the request headers.
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Principal, ApiError> {
        let token = bearer(headers).ok_or(INVALID)?;
        if let Some(id) = secret::parse(secret::API_KEY, token) {
            return self.authenticate_key(ApiKeyId(id), token).await;
        }
        if let Some(id) = secret::parse(secret::WORKER, token) {
            return self.authenticate_worker(WorkerId(id), token).await;
        }
        if let Some(verifier) = &self.jwt
            && jwt::JwtVerifier::looks_like_jwt(token)
        {
            let user = verifier.verify(token).await.ok_or(INVALID)?;
            return self.authenticate_user(user).await;
        }
        if secret_eq(token, &self.credentials.admin_token) {
            Ok(Principal::PlatformAdmin)
        } else if secret_eq(token, &self.credentials.worker_token) {
            Ok(Principal::Enrolment)
        } else {
            Err(INVALID)
        }
    }

    async fn authenticate_key(&self, id: ApiKeyId, token: &str) -> Result<Principal, ApiError> {
        let now = tokio::time::Instant::now();
        let key = match self.keys.get(id, now) {
            Some(key) => Some(key),
            None => {
                let key = self.store.api_key_for_authentication(id).await?;
                if let Some(key) = &key {
                    self.keys.insert(id, key.clone(), now);
                }
                key
            }
        };
        let Some(key) = key else {
            // Hash anyway, so an unknown id costs what a known one does.
            let _ = secret::matches(token, &[0u8; 32]);
            return Err(INVALID);
        };
        let live = key.revoked_at.is_none() && key.expires_at.is_none_or(|at| at > Utc::now());
        if !secret::matches(token, &key.secret_hash) || !live {
            return Err(INVALID);
        }
        self.last_used.note(key.tenant_id, id);
        Ok(Principal::ApiKey {
            id,
            tenant: key.tenant_id,
            role: key.role,
        })
    }

    async fn authenticate_worker(&self, id: WorkerId, token: &str) -> Result<Principal, ApiError> {
        let Some(credential) = self.store.worker_secret(id).await? else {
            let _ = secret::matches(token, &[0u8; 32]);
            return Err(INVALID);
        };
        if !secret::matches(token, &credential.secret_hash) || credential.revoked_at.is_some() {
            return Err(INVALID);
        }
        Ok(Principal::Worker { id })
    }

    /// Authenticates and admits a request for `path`: the caller, or the error to answer.
    pub async fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<Caller, ApiError> {
        let access = table::access(path);
        let principal = self.authenticate(headers).await?;
        // Fail closed: a method the table does not list is refused.
        let access = access.ok_or(ApiError::PermissionDenied)?;
        if principal.admits(access) {
            Ok(Caller { principal, access })
        } else {
            Err(ApiError::PermissionDenied)
        }
    }
}

/// The token of `authorization: Bearer <token>`, if the header has that shape.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

fn secret_eq(token: &str, secret: &SecretString) -> bool {
    let (a, b) = (token.as_bytes(), secret.expose_secret().as_bytes());
    // Lengths are not secret (both tokens are at least 16 characters by configuration).
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Tower layer that authenticates and admits every request before it reaches a service,
/// and stores the [`Caller`] in the request extensions.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer authenticating with `authenticator`.
    pub fn new(authenticator: Authenticator) -> Self {
        Self {
            authenticator: Arc::new(authenticator),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        if table::access(&path) == Some(Access::Public) {
            return Box::pin(self.inner.call(request));
        }
        // The service that was polled ready serves this request; its clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = self.authenticator.clone();
        let source = request
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|info| info.remote_addr())
            .map(|addr| addr.ip());
        Box::pin(async move {
            match authenticator.check(&path, request.headers()).await {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(error) => {
                    if matches!(error, ApiError::Unauthenticated(_)) {
                        let delay = authenticator.throttle.failed(source);
                        tracing::debug!(method = %path, ?source, ?delay, "authentication failed");
                        tokio::time::sleep(delay).await;
                    }
                    Ok(tonic::Status::from(error).into_http())
                }
            }
        })
    }
}

/// The caller the auth layer attached to a request.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| INVALID.into())
}

#[cfg(test)]
mod tests;
