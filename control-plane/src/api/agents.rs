//! AgentService.

use agentplane_proto::v1 as pb;
use pb::agent_service_server::AgentService;
use tonic::{Request, Response, Status};

use super::mask::update_paths;
use super::paging::{page_after, split_page};
use super::{State, convert};
use crate::auth::principal;
use crate::domain::agent::{self as rules, AgentSpec, Generation, Provider};
use crate::domain::page;
use crate::domain::validate::Violations;
use crate::error::ApiError;
use crate::ids::{AgentId, TenantId};
use crate::store::StoreError;

/// Fields UpdateAgent may change.
const UPDATABLE: &[&str] = &[
    "name",
    "provider",
    "model",
    "system_prompt",
    "generation",
    "labels",
    "max_concurrency",
    "task_timeout",
    "max_attempts",
];

/// Handlers of AgentService.
#[derive(Clone, Debug)]
pub struct AgentApi {
    state: State,
}

impl AgentApi {
    /// Handlers over shared state.
    pub fn new(state: State) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn create_agent(
        &self,
        request: Request<pb::CreateAgentRequest>,
    ) -> Result<Response<pb::CreateAgentResponse>, Status> {
        let actor = principal(&request)?.actor();
        let request = request.into_inner();
        let mut v = Violations::new();
        let tenant: Option<TenantId> = v.id("workspace_id", &request.workspace_id);
        let agent = request.agent.unwrap_or_default();
        let spec = AgentSpec {
            name: agent.name.clone(),
            provider: provider(&mut v, agent.provider),
            model: agent.model.clone(),
            system_prompt: agent.system_prompt.clone(),
            generation: generation(agent.generation.as_ref()),
            labels: v.labels("agent.labels", &agent.labels),
            max_concurrency: or_default(agent.max_concurrency, rules::DEFAULT_MAX_CONCURRENCY),
            task_timeout_ms: agent
                .task_timeout
                .as_ref()
                .map_or(rules::DEFAULT_TASK_TIMEOUT_MS, |d| duration_ms(&mut v, d)),
            max_attempts: or_default(agent.max_attempts, rules::DEFAULT_MAX_ATTEMPTS),
        };
        validate_spec(&mut v, &spec);
        let request_id = v.request_id("request_id", &request.request_id);
        v.finish()?;
        let Some(tenant) = tenant else {
            return Err(ApiError::invalid("workspace_id", "is required").into());
        };
        let mut tx = self.state.tenant(tenant).await?;
        let row = match tx.create_agent(&spec, request_id.as_deref(), actor).await {
            Ok(row) => {
                tx.commit().await?;
                row
            }
            // A concurrent call with the same request id committed first: answer with its agent.
            Err(StoreError::AlreadyExists(_)) if request_id.is_some() => {
                drop(tx);
                let mut tx = self.state.tenant(tenant).await?;
                let found = tx
                    .agent_by_request_id(request_id.as_deref().unwrap_or_default())
                    .await?;
                match found {
                    Some(row) => row,
                    // The conflict was the name, not the request id.
                    None => {
                        return Err(ApiError::AlreadyExists(
                            "an agent with this name already exists".to_owned(),
                        )
                        .into());
                    }
                }
            }
            Err(error) => return Err(ApiError::from(error).into()),
        };
        Ok(Response::new(pb::CreateAgentResponse {
            agent: Some(convert::agent(&row)),
        }))
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        let request = request.into_inner();
        let (tenant, id) = agent_ref(&request.workspace_id, &request.id)?;
        let mut tx = self.state.tenant(tenant).await?;
        let row = tx.get_agent(id, false).await?;
        Ok(Response::new(pb::GetAgentResponse {
            agent: Some(convert::agent(&row)),
        }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let request = request.into_inner();
        let mut v = Violations::new();
        let tenant: Option<TenantId> = v.id("workspace_id", &request.workspace_id);
        let limit = v.page_size("page_size", request.page_size);
        let after = page_after(
            &mut v,
            &format!(
                "agents/{}",
                tenant.map(|t| t.to_string()).unwrap_or_default()
            ),
            &request.page_token,
        );
        v.finish()?;
        let Some(tenant) = tenant else {
            return Err(ApiError::invalid("workspace_id", "is required").into());
        };
        let mut tx = self.state.tenant(tenant).await?;
        let rows = tx.list_agents(after.map(AgentId), limit + 1).await?;
        let (items, next) = split_page(rows, limit, convert::agent, |row| {
            page::encode_id(&format!("agents/{}", row.tenant_id), row.id.0)
        });
        Ok(Response::new(pb::ListAgentsResponse {
            agents: items,
            next_page_token: next,
        }))
    }

    async fn update_agent(
        &self,
        request: Request<pb::UpdateAgentRequest>,
    ) -> Result<Response<pb::UpdateAgentResponse>, Status> {
        let actor = principal(&request)?.actor();
        let request = request.into_inner();
        let agent = request.agent.unwrap_or_default();
        let (tenant, id) = agent_ref(&request.workspace_id, &agent.id).map_err(|_| {
            Status::from(ApiError::invalid("workspace_id/agent.id", "must be UUIDs"))
        })?;
        let mut v = Violations::new();
        let paths = update_paths(&mut v, request.update_mask.as_ref(), UPDATABLE);
        let request_id = v.request_id("request_id", &request.request_id);
        v.finish()?;

        let mut tx = self.state.tenant(tenant).await?;
        let current = tx.get_agent(id, true).await?;
        let mut spec = current.spec();
        let mut v = Violations::new();
        for path in &paths {
            match path.as_str() {
                "name" => spec.name = agent.name.clone(),
                "provider" => spec.provider = provider(&mut v, agent.provider),
                "model" => spec.model = agent.model.clone(),
                "system_prompt" => spec.system_prompt = agent.system_prompt.clone(),
                "generation" => spec.generation = generation(agent.generation.as_ref()),
                "labels" => spec.labels = v.labels("agent.labels", &agent.labels),
                "max_concurrency" => spec.max_concurrency = agent.max_concurrency,
                "task_timeout" => {
                    spec.task_timeout_ms = match &agent.task_timeout {
                        Some(d) => duration_ms(&mut v, d),
                        None => rules::DEFAULT_TASK_TIMEOUT_MS,
                    }
                }
                "max_attempts" => spec.max_attempts = agent.max_attempts,
                _ => {}
            }
        }
        validate_spec(&mut v, &spec);
        v.finish()?;
        let row = tx
            .save_agent(id, &spec, &paths, request_id.as_deref(), actor)
            .await?;
        tx.commit().await?;
        Ok(Response::new(pb::UpdateAgentResponse {
            agent: Some(convert::agent(&row)),
        }))
    }

    async fn delete_agent(
        &self,
        request: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<pb::DeleteAgentResponse>, Status> {
        let actor = principal(&request)?.actor();
        let request = request.into_inner();
        let (tenant, id) = agent_ref(&request.workspace_id, &request.id)?;
        let mut v = Violations::new();
        let request_id = v.request_id("request_id", &request.request_id);
        v.finish()?;
        let mut tx = self.state.tenant(tenant).await?;
        tx.delete_agent(id, request_id.as_deref(), actor).await?;
        tx.commit().await?;
        Ok(Response::new(pb::DeleteAgentResponse {}))
    }
}

/// Parses a (workspace id, agent id) pair.
fn agent_ref(workspace_id: &str, id: &str) -> Result<(TenantId, AgentId), Status> {
    let mut v = Violations::new();
    let tenant: Option<TenantId> = v.id("workspace_id", workspace_id);
    let agent: Option<AgentId> = v.id("id", id);
    v.finish()?;
    match (tenant, agent) {
        (Some(tenant), Some(agent)) => Ok((tenant, agent)),
        _ => Err(ApiError::invalid("id", "is required").into()),
    }
}

fn or_default(value: i32, default: i32) -> i32 {
    if value == 0 { default } else { value }
}

fn provider(v: &mut Violations, value: i32) -> Provider {
    match pb::Provider::try_from(value) {
        Ok(pb::Provider::Echo) => Provider::Echo,
        _ => {
            v.add(
                "agent.provider",
                "must be a supported provider (PROVIDER_ECHO)",
            );
            Provider::Echo
        }
    }
}

fn generation(config: Option<&pb::GenerationConfig>) -> Generation {
    config.map_or_else(Generation::default, |c| Generation {
        temperature: c.temperature,
        top_p: c.top_p,
        // A negative value becomes 0, which validation refuses like any value out of range.
        max_output_tokens: c.max_output_tokens.map(|m| u32::try_from(m).unwrap_or(0)),
        stop_sequences: c.stop_sequences.clone(),
    })
}

fn duration_ms(v: &mut Violations, duration: &prost_types::Duration) -> i64 {
    if duration.seconds < 0 || !(0..1_000_000_000).contains(&duration.nanos) {
        v.add("agent.task_timeout", "must be a positive duration");
        return rules::DEFAULT_TASK_TIMEOUT_MS;
    }
    duration
        .seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(duration.nanos / 1_000_000))
}

/// Checks every rule an agent spec must satisfy.
fn validate_spec(v: &mut Violations, spec: &AgentSpec) {
    if !rules::is_valid_name(&spec.name) {
        v.add(
            "agent.name",
            format!(
                "must be 1 to {} characters of [a-z0-9-] starting with a letter",
                rules::MAX_NAME_CHARS
            ),
        );
    }
    v.text("agent.model", &spec.model, 1, rules::MAX_MODEL_CHARS);
    v.max_bytes(
        "agent.system_prompt",
        &spec.system_prompt,
        rules::MAX_SYSTEM_PROMPT_BYTES,
    );
    let g = &spec.generation;
    if g.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        v.add("agent.generation.temperature", "must be 0 to 2");
    }
    if g.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
        v.add(
            "agent.generation.top_p",
            "must be greater than 0 and at most 1",
        );
    }
    if g.max_output_tokens
        .is_some_and(|m| !(1..=rules::MAX_OUTPUT_TOKENS).contains(&m))
    {
        v.add(
            "agent.generation.max_output_tokens",
            format!("must be 1 to {}", rules::MAX_OUTPUT_TOKENS),
        );
    }
    if g.stop_sequences.len() > rules::MAX_STOP_SEQUENCES {
        v.add(
            "agent.generation.stop_sequences",
            format!("at most {} are allowed", rules::MAX_STOP_SEQUENCES),
        );
    }
    for (i, stop) in g.stop_sequences.iter().enumerate() {
        v.text(
            &format!("agent.generation.stop_sequences[{i}]"),
            stop,
            1,
            rules::MAX_STOP_SEQUENCE_CHARS,
        );
    }
    if !(1..=rules::MAX_MAX_CONCURRENCY).contains(&spec.max_concurrency) {
        v.add(
            "agent.max_concurrency",
            format!("must be 1 to {}", rules::MAX_MAX_CONCURRENCY),
        );
    }
    if !(rules::MIN_TASK_TIMEOUT_MS..=rules::MAX_TASK_TIMEOUT_MS).contains(&spec.task_timeout_ms) {
        v.add("agent.task_timeout", "must be 1 second to 24 hours");
    }
    if !(1..=rules::MAX_MAX_ATTEMPTS).contains(&spec.max_attempts) {
        v.add(
            "agent.max_attempts",
            format!("must be 1 to {}", rules::MAX_MAX_ATTEMPTS),
        );
    }
}
