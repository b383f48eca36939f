//! The bench's view of agentplane: one gRPC channel with the bearer credential on every
//! call, the workspace and agent a run creates for itself, and the few reads it makes.

use std::time::Duration;

use agentplane_proto::v1 as pb;
use anyhow::{Context as _, bail};
use pb::agent_service_client::AgentServiceClient;
use pb::api_key_service_client::ApiKeyServiceClient;
use pb::task_service_client::TaskServiceClient;
use pb::workspace_service_client::WorkspaceServiceClient;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// The largest page ListTasks serves.
const LIST_PAGE_SIZE: i32 = 1000;
/// The agent's concurrency limit: the API's maximum, so it never limits a run.
const AGENT_MAX_CONCURRENCY: i32 = 10_000;
/// Tells the echo provider to answer with one piece, so a task never waits for its
/// configured delay between tokens: the closest to a no-op task the API can ask for.
const ECHO_MAX_OUTPUT_TOKENS: i32 = 1;
/// Pages of ListTasks read before giving up on a server that keeps answering with more.
const MAX_PAGES: usize = 10_000;
/// How often to print that the bench is still waiting.
const WAIT_NOTE_EVERY: Duration = Duration::from_secs(10);

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone, Debug)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel with credentials.
pub type Authed = InterceptedService<Channel, Bearer>;

/// Clients of the services the bench uses, over one HTTP/2 connection.
#[derive(Clone, Debug)]
pub struct Api {
    workspaces: WorkspaceServiceClient<Authed>,
    agents: AgentServiceClient<Authed>,
    tasks: TaskServiceClient<Authed>,
    api_keys: ApiKeyServiceClient<Authed>,
    channel: Channel,
}

impl Api {
    /// Connects to `endpoint`; every call fails after `rpc_timeout`.
    pub async fn connect(
        endpoint: &str,
        token: &str,
        rpc_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .with_context(|| format!("invalid endpoint {endpoint:?}"))?
            .connect_timeout(Duration::from_secs(10))
            .timeout(rpc_timeout)
            .connect()
            .await
            .with_context(|| format!("connecting to {endpoint}"))?;
        Self::on(channel, token)
    }

    fn on(channel: Channel, token: &str) -> anyhow::Result<Self> {
        let bearer: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .context("the token cannot travel in a gRPC header")?;
        let authed = InterceptedService::new(channel.clone(), Bearer(bearer));
        Ok(Self {
            workspaces: WorkspaceServiceClient::new(authed.clone()),
            agents: AgentServiceClient::new(authed.clone()),
            tasks: TaskServiceClient::new(authed.clone()),
            api_keys: ApiKeyServiceClient::new(authed),
            channel,
        })
    }

    /// A TaskService client to move into a concurrent call (clones share the connection).
    pub fn tasks(&self) -> TaskServiceClient<Authed> {
        self.tasks.clone()
    }

    /// Creates a workspace (as the platform admin), an admin API key of it and an echo agent
    /// for one run, and returns clients that use the key with the target. Each run gets its
    /// own workspace, so its tasks are exactly the ones it created; they are left in place
    /// for inspection.
    pub async fn create_target(&self, command: &str) -> anyhow::Result<(Api, Target)> {
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
        let workspace = self
            .workspaces
            .clone()
            .create_workspace(pb::CreateWorkspaceRequest {
                workspace: Some(pb::Workspace {
                    display_name: format!("agentplane-bench {command} {now}"),
                    labels: [("purpose".to_owned(), "bench".to_owned())].into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .context("CreateWorkspace")?
            .into_inner()
            .workspace
            .context("CreateWorkspace answered without a workspace")?;
        let secret = self
            .api_keys
            .clone()
            .create_api_key(pb::CreateApiKeyRequest {
                workspace_id: workspace.id.clone(),
                api_key: Some(pb::ApiKey {
                    name: "agentplane-bench".to_owned(),
                    role: pb::WorkspaceRole::Admin.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .context("CreateApiKey")?
            .into_inner()
            .secret;
        let scoped = Api::on(self.channel.clone(), &secret)?;
        let agent = scoped
            .agents
            .clone()
            .create_agent(pb::CreateAgentRequest {
                workspace_id: workspace.id.clone(),
                agent: Some(pb::Agent {
                    name: "bench".to_owned(),
                    provider: pb::Provider::Echo.into(),
                    model: "echo-1".to_owned(),
                    generation: Some(pb::GenerationConfig {
                        max_output_tokens: Some(ECHO_MAX_OUTPUT_TOKENS),
                        ..Default::default()
                    }),
                    max_concurrency: AGENT_MAX_CONCURRENCY,
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .context("CreateAgent")?
            .into_inner()
            .agent
            .context("CreateAgent answered without an agent")?;
        let target = Target {
            workspace_id: workspace.id,
            agent_id: agent.id,
        };
        Ok((scoped, target))
    }

    /// Whether the workspace has at least one task in `status`: one ListTasks of one row,
    /// an index probe on `(tenant_id, status, id)` from the newest end.
    pub async fn any_task(&self, target: &Target, status: pb::TaskStatus) -> anyhow::Result<bool> {
        let page = self
            .tasks()
            .list_tasks(pb::ListTasksRequest {
                workspace_id: target.workspace_id.clone(),
                status: status.into(),
                page_size: 1,
                ..Default::default()
            })
            .await
            .with_context(|| format!("ListTasks {}", status.as_str_name()))?
            .into_inner();
        Ok(!page.tasks.is_empty())
    }

    /// Every task of the workspace, newest first, page by page.
    pub async fn all_tasks(&self, target: &Target) -> anyhow::Result<Vec<pb::Task>> {
        let mut tasks = Vec::new();
        let mut page_token = String::new();
        for _ in 0..MAX_PAGES {
            let page = self
                .tasks()
                .list_tasks(pb::ListTasksRequest {
                    workspace_id: target.workspace_id.clone(),
                    page_size: LIST_PAGE_SIZE,
                    page_token,
                    ..Default::default()
                })
                .await
                .context("ListTasks")?
                .into_inner();
            if page.tasks.is_empty() && !page.next_page_token.is_empty() {
                bail!("ListTasks returned an empty page with a next page token");
            }
            tasks.extend(page.tasks);
            if page.next_page_token.is_empty() {
                return Ok(tasks);
            }
            page_token = page.next_page_token;
        }
        bail!("ListTasks still had more pages after {MAX_PAGES}")
    }

    /// Waits until every task of the workspace is SUCCEEDED, FAILED or CANCELED, and returns
    /// them all; fails once `timeout` has passed.
    ///
    /// While tasks remain it asks only "is any task PENDING?" and then "is any RUNNING?",
    /// each a one-row ListTasks that the newest-first index answers from the end where the
    /// unfinished tasks are: a few cheap queries per `poll` for the system under test,
    /// whatever its throughput. Counting `task.succeeded` events with WatchEvents would
    /// instead make the control plane re-read the event log after every NOTIFY of the
    /// workspace (every create, claim and result), more work the faster the system goes.
    /// The one full read (every task, 1000 per page) happens once both answers are no; it
    /// also settles the race of a task moving from RUNNING back to PENDING between the two
    /// questions.
    pub async fn wait_until_all_finished(
        &self,
        target: &Target,
        poll: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Vec<pb::Task>> {
        self.wait_until_all_finished_noting(target, poll, timeout, || {})
            .await
    }

    /// [`Api::wait_until_all_finished`], calling `idle` each time neither probe finds a task
    /// unfinished, just before the full read: the moment the work was done, if the read
    /// confirms it (a task retried between the two probes sends the wait on).
    pub async fn wait_until_all_finished_noting(
        &self,
        target: &Target,
        poll: Duration,
        timeout: Duration,
        mut idle: impl FnMut(),
    ) -> anyhow::Result<Vec<pb::Task>> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut next_note = started + WAIT_NOTE_EVERY;
        loop {
            if !self.any_task(target, pb::TaskStatus::Pending).await?
                && !self.any_task(target, pb::TaskStatus::Running).await?
            {
                idle();
                let tasks = self.all_tasks(target).await?;
                if tasks.iter().all(is_finished) {
                    return Ok(tasks);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "tasks were still unfinished after {} s (are the workers running? \
                     raise --timeout-secs for a slower system)",
                    timeout.as_secs()
                );
            }
            if now >= next_note {
                eprintln!(
                    "  still waiting for tasks to finish ({} s)",
                    (now - started).as_secs()
                );
                next_note = now + WAIT_NOTE_EVERY;
            }
            tokio::time::sleep(poll.min(deadline - now)).await;
        }
    }
}

/// Whether a task has reached a terminal status.
pub fn is_finished(task: &pb::Task) -> bool {
    matches!(
        task.status(),
        pb::TaskStatus::Succeeded | pb::TaskStatus::Failed | pb::TaskStatus::Canceled
    )
}

/// The workspace and agent one run owns.
#[derive(Clone, Debug)]
pub struct Target {
    /// The run's workspace.
    pub workspace_id: String,
    /// Its echo agent.
    pub agent_id: String,
}

impl Target {
    /// The CreateTask request of the run's `index`-th task. It carries a request id, as a
    /// real client's would, so the idempotency lookup is part of what is measured.
    pub fn task_request(&self, index: u64) -> pb::CreateTaskRequest {
        pb::CreateTaskRequest {
            workspace_id: self.workspace_id.clone(),
            agent_id: self.agent_id.clone(),
            input: vec![pb::Message {
                role: pb::Role::User.into(),
                content: format!("task {index}"),
                ..Default::default()
            }],
            request_id: format!("bench-{index}"),
            ..Default::default()
        }
    }
}
