//! In-process control planes and workers on port 0, and authenticated clients.

use std::net::SocketAddr;
use std::time::Duration;

/// The control plane's validated configuration, for tests that adjust it.
pub use agentplane_control_plane::config::Config;
use agentplane_control_plane::config::ServeArgs;
use agentplane_control_plane::startup::Application;
use agentplane_proto::v1 as pb;
use agentplane_worker::{Worker, WorkerConfig, WorkerHandle};
use pb::agent_service_client::AgentServiceClient;
use pb::api_key_service_client::ApiKeyServiceClient;
use pb::event_service_client::EventServiceClient;
use pb::identity_service_client::IdentityServiceClient;
use pb::member_service_client::MemberServiceClient;
use pb::task_service_client::TaskServiceClient;
use pb::worker_credential_service_client::WorkerCredentialServiceClient;
use pb::worker_service_client::WorkerServiceClient;
use pb::workspace_service_client::WorkspaceServiceClient;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use crate::killable::KillableApp;
use crate::pg::TestDb;

/// The platform admin token every [`TestApp`] accepts.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// The worker enrolment token every [`TestApp`] accepts: a worker started with it exchanges
/// it for a credential of its own.
pub const WORKER_TOKEN: &str = "test-worker-token-0123456789";

/// The issuer of the test identity provider's tokens.
pub const JWT_ISSUER: &str = "https://idp.test";
/// The audience every [`TestApp`] expects in users' tokens.
pub const JWT_AUDIENCE: &str = "agentplane-test";
/// The HS256 secret of the test identity provider.
pub const JWT_SECRET: &str = "test-identity-provider-secret-0123456789";

/// A user's token from the test identity provider, valid for ten minutes.
pub fn user_token(subject: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "sub": subject,
        "iat": now, "exp": now + 600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// A running control plane.
#[derive(Debug)]
pub struct TestApp {
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    /// Its Prometheus endpoint, if the configuration asked for one.
    pub metrics_addr: Option<SocketAddr>,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl TestApp {
    /// Starts a control plane on the test database.
    pub async fn spawn(db: &TestDb) -> TestApp {
        Self::spawn_with(db, |_| {}).await
    }

    /// Starts a control plane on the test database with its configuration adjusted.
    pub async fn spawn_with(db: &TestDb, adjust: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = test_config(db);
        adjust(&mut config);
        let app = Application::build(config).await.unwrap();
        let addr = app.local_addr();
        let metrics_addr = app.metrics_addr();
        let stop = app.stop_token();
        let handle = tokio::spawn(async move {
            let _ = app.run_until_stopped().await;
        });
        TestApp {
            addr,
            metrics_addr,
            stop,
            handle,
        }
    }

    /// Its URL, for clients and workers.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A new connection to it.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Clients authenticated as the platform admin.
    pub async fn admin(&self) -> Clients {
        Clients::new(self.channel().await, ADMIN_TOKEN)
    }

    /// Clients authenticated with a new API key of `workspace_id` with `role` (created by
    /// the platform admin).
    pub async fn with_key(&self, workspace_id: &str, role: pb::WorkspaceRole) -> Clients {
        let mut admin = self.admin().await;
        let key = admin.api_key(workspace_id, role).await;
        admin.with_token(&key)
    }

    /// A new worker credential from the platform admin: the worker id and the secret.
    pub async fn worker_credential(&self) -> (uuid::Uuid, String) {
        let mut admin = self.admin().await;
        let created = admin
            .worker_credentials
            .create_worker_credential(pb::CreateWorkerCredentialRequest {
                name: "test worker".to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        let id = created.credential.unwrap().worker_id.parse().unwrap();
        (id, created.secret)
    }

    /// Starts a worker connected to this control plane.
    pub async fn worker(&self, db: &TestDb, capacity: u32, token_delay: Duration) -> WorkerHandle {
        self.worker_with(db, capacity, token_delay, |_| {}).await
    }

    /// Starts a worker connected to this control plane with its configuration adjusted.
    pub async fn worker_with(
        &self,
        db: &TestDb,
        capacity: u32,
        token_delay: Duration,
        adjust: impl FnOnce(&mut WorkerConfig),
    ) -> WorkerHandle {
        let mut config = WorkerConfig {
            worker_id: uuid::Uuid::now_v7(),
            control_plane_url: self.endpoint(),
            database_url: SecretString::from(db.worker_url()),
            worker_token: SecretString::from(WORKER_TOKEN.to_owned()),
            capacity,
            poll_interval_max: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(5),
            echo_token_delay: token_delay,
            metrics_addr: None,
            labels: Default::default(),
            providers: Default::default(),
        };
        adjust(&mut config);
        Worker::start(config).await.unwrap()
    }

    /// Stops the server, waiting at most 10 s for it to finish.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.handle).await;
    }

    /// Stops the server; true if it finished on its own (within 10 s).
    pub async fn stop_and_wait(self) -> bool {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .is_ok()
    }
}

/// The configuration every test control plane starts from: port 0, the test database's
/// application role, the test tokens and identity provider.
pub fn test_config(db: &TestDb) -> Config {
    let args = ServeArgs {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        database_url: db.app_url().into(),
        migrate_database_url: None,
        admin_token: Some(ADMIN_TOKEN.into()),
        worker_token: Some(WORKER_TOKEN.into()),
        dev_mode: false,
        db_max_connections: 10,
        db_acquire_timeout_seconds: 5,
        db_statement_timeout_seconds: 30,
        db_idle_in_transaction_timeout_seconds: 10,
        lease_seconds: 30,
        shutdown_grace_seconds: 2,
        max_streams: 10_000,
        jwt_issuer: Some(JWT_ISSUER.into()),
        jwt_audience: Some(JWT_AUDIENCE.into()),
        jwt_hs256_secret: Some(JWT_SECRET.into()),
        jwt_public_key_file: None,
        jwt_jwks_url: None,
        metrics_addr: None,
        task_retention: "30d".parse().unwrap(),
        task_retention_interval_seconds: 300,
        listener_probe_seconds: 10,
    };
    args.validate().unwrap()
}

/// An interceptor adding `authorization: Bearer <token>` (or nothing for an empty token).
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs, even in tests.
        f.write_str("Bearer(..)")
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel that sends a bearer token with every call.
pub type Authed = InterceptedService<Channel, Bearer>;

/// The interceptor for `token`; an empty token sends no `authorization` at all.
pub fn bearer(token: &str) -> Bearer {
    Bearer((!token.is_empty()).then(|| format!("Bearer {token}").parse().unwrap()))
}

/// One client per public service.
#[derive(Debug)]
pub struct Clients {
    /// `WorkspaceService`.
    pub workspaces: WorkspaceServiceClient<Authed>,
    /// `AgentService`.
    pub agents: AgentServiceClient<Authed>,
    /// `TaskService`.
    pub tasks: TaskServiceClient<Authed>,
    /// `EventService`.
    pub events: EventServiceClient<Authed>,
    /// `WorkerService` (answers only to the worker token).
    pub workers: WorkerServiceClient<Authed>,
    /// `ApiKeyService`.
    pub api_keys: ApiKeyServiceClient<Authed>,
    /// `IdentityService`.
    pub identity: IdentityServiceClient<Authed>,
    /// `WorkerCredentialService`.
    pub worker_credentials: WorkerCredentialServiceClient<Authed>,
    /// `MemberService`.
    pub members: MemberServiceClient<Authed>,
    channel: Channel,
}

impl Clients {
    /// Clients on `channel` that authenticate with `token`.
    pub fn new(channel: Channel, token: &str) -> Clients {
        Clients {
            workspaces: WorkspaceServiceClient::new(InterceptedService::new(
                channel.clone(),
                bearer(token),
            )),
            agents: AgentServiceClient::new(InterceptedService::new(
                channel.clone(),
                bearer(token),
            )),
            tasks: TaskServiceClient::new(InterceptedService::new(channel.clone(), bearer(token))),
            events: EventServiceClient::new(InterceptedService::new(
                channel.clone(),
                bearer(token),
            )),
            workers: WorkerServiceClient::new(InterceptedService::new(
                channel.clone(),
                bearer(token),
            )),
            api_keys: ApiKeyServiceClient::new(InterceptedService::new(
                channel.clone(),
                bearer(token),
            )),
            identity: IdentityServiceClient::new(InterceptedService::new(
                channel.clone(),
                bearer(token),
            )),
            worker_credentials: WorkerCredentialServiceClient::new(InterceptedService::new(
                channel.clone(),
                bearer(token),
            )),
            members: MemberServiceClient::new(InterceptedService::new(
                channel.clone(),
                bearer(token),
            )),
            channel,
        }
    }

    /// Clients on the same connection that authenticate with `token`.
    pub fn with_token(&self, token: &str) -> Clients {
        Clients::new(self.channel.clone(), token)
    }

    /// Creates an API key in `workspace_id` with `role` (calling as these clients'
    /// credential) and returns its secret.
    pub async fn api_key(&mut self, workspace_id: &str, role: pb::WorkspaceRole) -> String {
        self.api_keys
            .create_api_key(pb::CreateApiKeyRequest {
                workspace_id: workspace_id.to_owned(),
                api_key: Some(pb::ApiKey {
                    name: format!("test-{}", role.as_str_name().to_lowercase()),
                    role: role.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .secret
    }

    /// Creates a workspace (these clients must be the platform admin's), gives it an admin
    /// API key, and points the workspace clients (`agents`, `tasks`, `events`) at that key,
    /// since the platform admin does not act inside workspaces. `workspaces` and `api_keys`
    /// stay on the platform admin. Returns the workspace id.
    pub async fn workspace(&mut self, name: &str) -> String {
        let id = self.create_workspace(name).await;
        let key = self.api_key(&id, pb::WorkspaceRole::Admin).await;
        let scoped = self.with_token(&key);
        self.agents = scoped.agents;
        self.tasks = scoped.tasks;
        self.events = scoped.events;
        id
    }

    /// Creates a workspace as these clients' credential and returns its id.
    pub async fn create_workspace(&mut self, name: &str) -> String {
        self.workspaces
            .create_workspace(pb::CreateWorkspaceRequest {
                workspace: Some(pb::Workspace {
                    display_name: name.to_owned(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .workspace
            .unwrap()
            .id
    }

    /// Creates an echo agent and returns it.
    pub async fn echo_agent(&mut self, workspace_id: &str, name: &str) -> pb::Agent {
        self.agents
            .create_agent(pb::CreateAgentRequest {
                workspace_id: workspace_id.to_owned(),
                agent: Some(pb::Agent {
                    name: name.to_owned(),
                    provider: pb::Provider::Echo.into(),
                    model: "echo-1".to_owned(),
                    system_prompt: "You are terse.".to_owned(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .agent
            .unwrap()
    }

    /// Submits a one-message task and returns it.
    pub async fn task(&mut self, workspace_id: &str, agent_id: &str, prompt: &str) -> pb::Task {
        self.tasks
            .create_task(pb::CreateTaskRequest {
                workspace_id: workspace_id.to_owned(),
                agent_id: agent_id.to_owned(),
                input: vec![user(prompt)],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap()
    }

    /// Gets a task, which must exist.
    pub async fn get_task(&mut self, workspace_id: &str, id: &str) -> pb::Task {
        self.tasks
            .get_task(pb::GetTaskRequest {
                workspace_id: workspace_id.to_owned(),
                id: id.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap()
    }

    /// A task's transcript (its first page of messages), in order.
    pub async fn transcript(&mut self, workspace_id: &str, task_id: &str) -> Vec<pb::TaskMessage> {
        self.tasks
            .list_task_messages(pb::ListTaskMessagesRequest {
                workspace_id: workspace_id.to_owned(),
                task_id: task_id.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .messages
    }

    /// Polls until the task reaches a terminal status (at most 30 s).
    pub async fn wait_terminal(&mut self, workspace_id: &str, id: &str) -> pb::Task {
        for _ in 0..600 {
            let task = self.get_task(workspace_id, id).await;
            if task.status >= pb::TaskStatus::Succeeded as i32 {
                return task;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("task {id} did not finish in time");
    }
}

/// A user message with `content`.
pub fn user(content: &str) -> pb::Message {
    pb::Message {
        role: pb::Role::User.into(),
        content: content.to_owned(),
        ..Default::default()
    }
}
