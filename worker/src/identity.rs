//! Who this worker is. Its id comes from its credential (`wkr_<worker id>_…`, issued by the
//! platform admin), never from a flag it could set to anything; a worker started with the
//! fleet's shared enrolment token first exchanges it for a credential of its own
//! (`WorkerCredentialService.EnrollWorker`), so every worker is told apart and can be revoked
//! on its own.

use agentplane_core::credential::{self, WORKER_PREFIX};
use agentplane_proto::v1 as pb;
use anyhow::Context as _;
use pb::worker_credential_service_client::WorkerCredentialServiceClient;
use secrecy::{ExposeSecret, SecretString};
use tonic::service::interceptor::InterceptedService;

use crate::config::WorkerConfig;
use crate::link::SessionSettings;

/// Sets `config.worker_id` from its credential, enrolling first when `config.worker_token`
/// is the enrolment token rather than a credential.
pub(crate) async fn resolve(mut config: WorkerConfig) -> anyhow::Result<WorkerConfig> {
    if credential::parse(WORKER_PREFIX, config.worker_token.expose_secret()).is_none() {
        let secret = enrol(&config).await?;
        config.worker_token = SecretString::from(secret);
    }
    let id = credential::parse(WORKER_PREFIX, config.worker_token.expose_secret())
        .context("the control plane issued a credential of an unknown shape")?;
    if id != config.worker_id {
        tracing::debug!(worker_id = %id, "the worker id comes from the credential");
    }
    config.worker_id = id;
    Ok(config)
}

/// Exchanges the enrolment token for a worker credential; returns its secret.
async fn enrol(config: &WorkerConfig) -> anyhow::Result<String> {
    let channel = SessionSettings::channel(&config.control_plane_url)
        .context("building the control-plane channel")?;
    let authorization = config.authorization_value()?;
    let mut client = WorkerCredentialServiceClient::new(InterceptedService::new(
        channel,
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
            Ok(request)
        },
    ));
    let name = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| (1..=200).contains(&h.chars().count()))
        .unwrap_or_else(|| "enrolled worker".to_owned());
    let enrolled = client
        .enroll_worker(pb::EnrollWorkerRequest { name })
        .await
        .with_context(|| {
            format!(
                "exchanging the enrolment token for a worker credential at {}",
                config.control_plane_url
            )
        })?
        .into_inner();
    let worker_id = enrolled.credential.map(|c| c.worker_id).unwrap_or_default();
    tracing::info!(%worker_id, "enrolled: this worker has its own credential");
    Ok(enrolled.secret)
}
