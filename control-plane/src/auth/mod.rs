//! Authentication and authorisation, decided in one place for every request from the
//! credential in `authorization: Bearer <token>` and the gRPC method path.
//!
//! Today there are two credentials, both from configuration: the platform admin token and
//! the worker token. Users (JWT) and workspace API keys slot in as further [`Principal`]
//! variants; [`authorize`] is where their (workspace, role, method) rules will live.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use secrecy::{ExposeSecret, SecretString};
use tower::{Layer, Service};

use crate::error::ApiError;

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// The platform operator: may manage every workspace.
    PlatformAdmin,
    /// A worker process: may only use the worker channel.
    Worker,
}

impl Principal {
    /// The actor recorded in events.
    pub fn actor(&self) -> &'static str {
        match self {
            Principal::PlatformAdmin => "platform-admin",
            Principal::Worker => "worker",
        }
    }
}

/// The credentials the server accepts.
/// `Debug` shows the tokens as `[REDACTED]` (`SecretString`).
#[derive(Clone, Debug)]
pub struct Credentials {
    /// Bearer token of the platform admin.
    pub admin_token: SecretString,
    /// Bearer token shared by workers.
    pub worker_token: SecretString,
}

/// Who may call a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    /// No credential needed (health checks, for load balancers and kubelets).
    Public,
    /// Any valid credential.
    AnyPrincipal,
    /// Only the platform admin.
    Admin,
    /// Only workers.
    Worker,
}

/// The authorisation table: the first matching prefix decides.
const RULES: &[(&str, Rule)] = &[
    ("/grpc.health.v1.Health/", Rule::Public),
    ("/grpc.reflection.", Rule::AnyPrincipal),
    ("/agentplane.v1.WorkerService/", Rule::Worker),
    ("/agentplane.v1.WorkspaceService/", Rule::Admin),
    ("/agentplane.v1.AgentService/", Rule::Admin),
    ("/agentplane.v1.TaskService/", Rule::Admin),
    ("/agentplane.v1.EventService/", Rule::Admin),
];

fn rule_for(path: &str) -> Rule {
    RULES
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix))
        // Unknown methods still need a credential; the router then answers UNIMPLEMENTED.
        .map_or(Rule::AnyPrincipal, |(_, rule)| *rule)
}

/// Identifies the caller from the request headers.
pub fn authenticate(
    credentials: &Credentials,
    headers: &http::HeaderMap,
) -> Result<Principal, ApiError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(ApiError::Unauthenticated("missing authorization metadata"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or(ApiError::Unauthenticated(
            "authorization must be \"Bearer <token>\"",
        ))?;
    if constant_time_eq(token, credentials.admin_token.expose_secret()) {
        Ok(Principal::PlatformAdmin)
    } else if constant_time_eq(token, credentials.worker_token.expose_secret()) {
        Ok(Principal::Worker)
    } else {
        Err(ApiError::Unauthenticated("invalid credentials"))
    }
}

/// Decides whether `principal` may call the method at `path`. Deny wins.
pub fn authorize(principal: &Principal, path: &str) -> Result<(), ApiError> {
    let allowed = match rule_for(path) {
        Rule::Public | Rule::AnyPrincipal => true,
        Rule::Admin => *principal == Principal::PlatformAdmin,
        Rule::Worker => *principal == Principal::Worker,
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::PermissionDenied)
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Tower layer that authenticates and authorises every request before it reaches a
/// service, and stores the [`Principal`] in the request extensions.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    credentials: Arc<Credentials>,
}

impl AuthLayer {
    /// A layer accepting these credentials.
    pub fn new(credentials: Credentials) -> Self {
        Self {
            credentials: Arc::new(credentials),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            credentials: self.credentials.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    credentials: Arc<Credentials>,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if rule_for(path) != Rule::Public {
            let decision = authenticate(&self.credentials, request.headers())
                .and_then(|principal| authorize(&principal, path).map(|()| principal));
            match decision {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                }
                Err(error) => {
                    let response = tonic::Status::from(error).into_http();
                    return Box::pin(async move { Ok(response) });
                }
            }
        }
        Box::pin(self.inner.call(request))
    }
}

/// The principal the auth layer attached to a request.
pub fn principal<T>(request: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| ApiError::Unauthenticated("no credentials").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> Credentials {
        Credentials {
            admin_token: SecretString::from("admin-secret"),
            worker_token: SecretString::from("worker-secret"),
        }
    }

    fn headers(value: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        if let Ok(value) = http::HeaderValue::from_str(value) {
            headers.insert(http::header::AUTHORIZATION, value);
        }
        headers
    }

    #[test]
    fn tokens_map_to_principals() {
        let c = credentials();
        assert_eq!(
            authenticate(&c, &headers("Bearer admin-secret")).ok(),
            Some(Principal::PlatformAdmin)
        );
        assert_eq!(
            authenticate(&c, &headers("Bearer worker-secret")).ok(),
            Some(Principal::Worker)
        );
        assert!(authenticate(&c, &headers("Bearer nope")).is_err());
        assert!(authenticate(&c, &headers("admin-secret")).is_err());
        assert!(authenticate(&c, &http::HeaderMap::new()).is_err());
    }

    #[test]
    fn workers_cannot_use_the_public_api_and_admins_cannot_use_the_worker_channel() {
        assert!(authorize(&Principal::Worker, "/agentplane.v1.TaskService/CreateTask").is_err());
        assert!(authorize(&Principal::Worker, "/agentplane.v1.WorkerService/Session").is_ok());
        assert!(
            authorize(
                &Principal::PlatformAdmin,
                "/agentplane.v1.WorkerService/Session"
            )
            .is_err()
        );
        assert!(
            authorize(
                &Principal::PlatformAdmin,
                "/agentplane.v1.TaskService/CreateTask"
            )
            .is_ok()
        );
        assert_eq!(rule_for("/grpc.health.v1.Health/Check"), Rule::Public);
    }
}
