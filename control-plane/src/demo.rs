//! `agentplane-control-plane demo`: a small client that exercises the whole path on a
//! running system: workspace and its first API key (as the platform admin), then, with that
//! key, agent → task → streamed answer → event log.

use std::io::Write as _;

use agentplane_proto::v1 as pb;
use anyhow::Context as _;
use pb::agent_service_client::AgentServiceClient;
use pb::api_key_service_client::ApiKeyServiceClient;
use pb::event_service_client::EventServiceClient;
use pb::task_service_client::TaskServiceClient;
use pb::watch_task_response::Kind;
use pb::workspace_service_client::WorkspaceServiceClient;
use secrecy::{ExposeSecret, SecretString};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::config::DEV_ADMIN_TOKEN;

/// Flags of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Control-plane endpoint.
    #[arg(
        long,
        env = "AGENTPLANE_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    pub endpoint: String,
    /// Admin bearer token.
    #[arg(long, env = "AGENTPLANE_ADMIN_TOKEN", hide_env_values = true, default_value = DEV_ADMIN_TOKEN)]
    pub token: SecretString,
    /// What to ask the demo agent.
    #[arg(
        long,
        default_value = "Tell me, token by token, what a control plane for AI agents does."
    )]
    pub prompt: String,
}

type Auth = Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;

fn auth(token: &str) -> anyhow::Result<Auth> {
    let value: MetadataValue<_> = format!("Bearer {token}")
        .parse()
        .context("token is not valid metadata")?;
    Ok(Box::new(move |mut request: tonic::Request<()>| {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
        Ok(request)
    }))
}

/// Runs the demo against `args.endpoint`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let channel = Channel::from_shared(args.endpoint.clone())
        .context("invalid endpoint")?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.endpoint))?;
    let intercepted =
        |channel: Channel, token: &str| -> anyhow::Result<InterceptedService<Channel, Auth>> {
            Ok(InterceptedService::new(channel, auth(token)?))
        };
    let admin = args.token.expose_secret();
    let mut workspaces = WorkspaceServiceClient::new(intercepted(channel.clone(), admin)?);
    let mut api_keys = ApiKeyServiceClient::new(intercepted(channel.clone(), admin)?);

    let workspace = workspaces
        .create_workspace(pb::CreateWorkspaceRequest {
            workspace: Some(pb::Workspace {
                display_name: "Demo workspace".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?
        .into_inner()
        .workspace
        .context("no workspace in response")?;
    println!("workspace  {}", workspace.id);

    // The platform admin manages workspaces and keys; work inside one uses its API key.
    let created = api_keys
        .create_api_key(pb::CreateApiKeyRequest {
            workspace_id: workspace.id.clone(),
            api_key: Some(pb::ApiKey {
                name: "demo".into(),
                role: pb::WorkspaceRole::Admin.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    let key = created.api_key.context("no api key in response")?;
    println!("api key    {} (admin; the secret is shown once)", key.id);
    let secret = created.secret;
    let mut agents = AgentServiceClient::new(intercepted(channel.clone(), &secret)?);
    let mut tasks = TaskServiceClient::new(intercepted(channel.clone(), &secret)?);
    let mut events = EventServiceClient::new(intercepted(channel, &secret)?);

    let agent = agents
        .create_agent(pb::CreateAgentRequest {
            workspace_id: workspace.id.clone(),
            agent: Some(pb::Agent {
                name: "demo-echo".into(),
                provider: pb::Provider::Echo.into(),
                model: "echo-1".into(),
                system_prompt: "You are a helpful agent.".into(),
                max_concurrency: 4,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?
        .into_inner()
        .agent
        .context("no agent in response")?;
    println!("agent      {} ({})", agent.id, agent.name);

    let task = tasks
        .create_task(pb::CreateTaskRequest {
            workspace_id: workspace.id.clone(),
            agent_id: agent.id.clone(),
            input: vec![pb::Message {
                role: pb::Role::User.into(),
                content: args.prompt.clone(),
                ..Default::default()
            }],
            request_id: format!("demo-{}", uuid::Uuid::now_v7()),
            ..Default::default()
        })
        .await?
        .into_inner()
        .task
        .context("no task in response")?;
    println!("task       {}\n", task.id);
    println!("> {}", args.prompt);

    let mut stream = tasks
        .watch_task(pb::WatchTaskRequest {
            workspace_id: workspace.id.clone(),
            id: task.id.clone(),
        })
        .await?
        .into_inner();
    let mut last = None;
    let mut stdout = std::io::stdout();
    while let Some(message) = stream.message().await? {
        match message.kind {
            Some(Kind::Snapshot(snapshot)) => {
                print!("{}", snapshot.output);
                last = snapshot.task;
            }
            Some(Kind::Delta(delta)) => print!("{}", delta.text),
            Some(Kind::Task(task)) => last = Some(task),
            Some(Kind::Reset(reset)) => print!("\n[output withdrawn: {}]\n", reset.reason),
            None => {}
        }
        let _ = stdout.flush();
    }
    let task = last.context("the stream ended without the task")?;
    let status = pb::TaskStatus::try_from(task.status)
        .map_or("unknown".to_owned(), |s| s.as_str_name().to_owned());
    let usage = task.usage.unwrap_or_default();
    println!(
        "\n\nstatus     {status} (attempt {}, worker {})\nusage      {} input / {} output tokens",
        task.attempt, task.worker_id, usage.input_tokens, usage.output_tokens
    );

    let log = events
        .list_events(pb::ListEventsRequest {
            workspace_id: workspace.id.clone(),
            page_size: 100,
            ..Default::default()
        })
        .await?
        .into_inner();
    println!("\nevent log:");
    for event in &log.events {
        println!(
            "  {:<20} {:<8} {}  by {}",
            event.action, event.resource_type, event.resource_id, event.actor
        );
    }
    if task.status != i32::from(pb::TaskStatus::Succeeded) {
        anyhow::bail!("the demo task did not succeed");
    }
    println!(
        "\nWORKSPACE_ID={} AGENT_ID={} TASK_ID={} API_KEY={secret}",
        workspace.id, agent.id, task.id
    );
    Ok(())
}
