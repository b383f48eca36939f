//! WorkerCredentialService: per-worker credentials, issued by the platform admin or in
//! exchange for the fleet's enrolment token. Credentials are platform rows, not workspace
//! ones, so their changes are logged here (with the acting identity) and kept on the row
//! (`created_by`, `revoked_by`) rather than in a workspace's event log.

use agentplane_proto::v1 as pb;
use pb::worker_credential_service_server::WorkerCredentialService;
use tonic::{Request, Response, Status};

use super::paging::{page_after, split_page};
use super::{State, convert};
use crate::auth::{caller, secret};
use crate::domain::page;
use crate::domain::validate::Violations;
use crate::error::ApiError;
use crate::ids::WorkerId;
use crate::store::WorkerCredentialRow;

/// The page-token kind of the credential list.
const CREDENTIALS_PAGE: &str = "worker_credentials";
/// Longest credential name.
const MAX_NAME: usize = 200;

/// Handlers of WorkerCredentialService.
#[derive(Clone, Debug)]
pub struct WorkerCredentialApi {
    state: State,
}

impl WorkerCredentialApi {
    /// Handlers over shared state.
    pub fn new(state: State) -> Self {
        Self { state }
    }

    /// Issues a credential named `name` on behalf of `actor`; `action` names the platform
    /// event (`worker_credential.created` or `worker_credential.enrolled`).
    async fn issue(
        &self,
        name: &str,
        actor: &str,
        action: &str,
    ) -> Result<(WorkerCredentialRow, String), ApiError> {
        let mut v = Violations::new();
        v.text("name", name, 1, MAX_NAME);
        v.finish()?;
        let made = secret::generate(secret::WORKER)
            .map_err(|error| ApiError::Internal(anyhow::anyhow!("random source: {error}")))?;
        let row = self
            .state
            .store
            .create_worker_credential(WorkerId(made.id), name, &made.hash, actor, action)
            .await?;
        tracing::info!(worker_id = %row.id, %actor, name, "worker credential created");
        Ok((row, secret::reveal(&made.secret)))
    }
}

fn credential(row: &WorkerCredentialRow) -> pb::WorkerCredential {
    convert::worker_credential(row)
}

#[tonic::async_trait]
impl WorkerCredentialService for WorkerCredentialApi {
    async fn create_worker_credential(
        &self,
        request: Request<pb::CreateWorkerCredentialRequest>,
    ) -> Result<Response<pb::CreateWorkerCredentialResponse>, Status> {
        let actor = caller(&request)?.principal.actor();
        let (row, secret) = self
            .issue(&request.get_ref().name, &actor, "worker_credential.created")
            .await?;
        Ok(Response::new(pb::CreateWorkerCredentialResponse {
            credential: Some(credential(&row)),
            secret,
        }))
    }

    async fn list_worker_credentials(
        &self,
        request: Request<pb::ListWorkerCredentialsRequest>,
    ) -> Result<Response<pb::ListWorkerCredentialsResponse>, Status> {
        let request = request.into_inner();
        let mut v = Violations::new();
        let limit = v.page_size("page_size", request.page_size);
        let before = page_after(&mut v, CREDENTIALS_PAGE, &request.page_token);
        v.finish()?;
        let rows = self
            .state
            .store
            .list_worker_credentials(before.map(WorkerId), limit + 1)
            .await?;
        let (credentials, next_page_token) = split_page(rows, limit, credential, |row| {
            page::encode_id(CREDENTIALS_PAGE, row.id.0)
        });
        Ok(Response::new(pb::ListWorkerCredentialsResponse {
            credentials,
            next_page_token,
        }))
    }

    async fn revoke_worker_credential(
        &self,
        request: Request<pb::RevokeWorkerCredentialRequest>,
    ) -> Result<Response<pb::RevokeWorkerCredentialResponse>, Status> {
        let actor = caller(&request)?.principal.actor();
        let mut v = Violations::new();
        let worker: Option<WorkerId> = v.id("worker_id", &request.get_ref().worker_id);
        let worker = v.finish_with(worker)?;
        let row = self
            .state
            .store
            .revoke_worker_credential(worker, &actor)
            .await?;
        // This replica's sessions of the worker end now; the others' within seconds.
        self.state.revocations.revoke(worker);
        tracing::info!(worker_id = %worker, %actor, "worker credential revoked");
        Ok(Response::new(pb::RevokeWorkerCredentialResponse {
            credential: Some(credential(&row)),
        }))
    }

    async fn enroll_worker(
        &self,
        request: Request<pb::EnrollWorkerRequest>,
    ) -> Result<Response<pb::EnrollWorkerResponse>, Status> {
        let actor = caller(&request)?.principal.actor();
        let (row, secret) = self
            .issue(
                &request.get_ref().name,
                &actor,
                "worker_credential.enrolled",
            )
            .await?;
        Ok(Response::new(pb::EnrollWorkerResponse {
            credential: Some(credential(&row)),
            secret,
        }))
    }
}
