//! Parsing of AgentService requests: each protobuf request becomes a validated domain value
//! here, once, with every field violation collected.

use std::fmt::Display;

use agentplane_proto::v1 as pb;

use crate::api::convert::{provider_from_wire, struct_to_json};
use crate::api::mask::update_paths;
use crate::api::paging::page_after;
use crate::domain::agent::{
    self as rules, AgentChange, AgentQuery, AgentRef, AgentSpec, AgentUpdate, DeleteAgent,
    Generation, ModelChoice, NewAgent, Provider, ToolDefinition,
};
use crate::domain::validate::Violations;
use crate::error::ApiError;
use crate::ids::{AgentId, TenantId};
use agentplane_core::tools::{DEFAULT_MAX_STEPS, empty_object_schema};

/// Fields UpdateAgent may change.
const UPDATABLE: &[&str] = &[
    "name",
    "provider",
    "model",
    "system_prompt",
    "generation",
    "labels",
    "required_worker_labels",
    "max_concurrency",
    "task_timeout",
    "max_attempts",
    "tools",
    "max_steps",
    "fallbacks",
];

/// The page-token kind of a workspace's agent list.
pub(super) fn agents_page(tenant: impl Display) -> String {
    format!("agents/{tenant}")
}

impl TryFrom<pb::CreateAgentRequest> for NewAgent {
    type Error = ApiError;

    fn try_from(request: pb::CreateAgentRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let tenant: Option<TenantId> = v.id("workspace_id", &request.workspace_id);
        let agent = request.agent.unwrap_or_default();
        let spec = AgentSpec {
            provider: provider(&mut v, agent.provider),
            generation: generation(agent.generation.as_ref()),
            labels: v.labels("agent.labels", &agent.labels),
            required_labels: v.labels(
                "agent.required_worker_labels",
                &agent.required_worker_labels,
            ),
            max_concurrency: or_default(agent.max_concurrency, rules::DEFAULT_MAX_CONCURRENCY),
            task_timeout_ms: agent
                .task_timeout
                .as_ref()
                .map_or(rules::DEFAULT_TASK_TIMEOUT_MS, |d| duration_ms(&mut v, d)),
            max_attempts: or_default(agent.max_attempts, rules::DEFAULT_MAX_ATTEMPTS),
            tools: tools(&agent.tools),
            max_steps: or_default(agent.max_steps, DEFAULT_MAX_STEPS),
            fallbacks: fallbacks(&agent.fallbacks),
            name: agent.name,
            model: agent.model,
            system_prompt: agent.system_prompt,
        };
        spec.check(&mut v);
        let request_id = v.request_id("request_id", &request.request_id);
        v.finish_with(tenant.map(|tenant| NewAgent {
            tenant,
            spec,
            request_id,
        }))
    }
}

impl TryFrom<pb::GetAgentRequest> for AgentRef {
    type Error = ApiError;

    fn try_from(request: pb::GetAgentRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let agent = agent_ref(&mut v, &request.workspace_id, &request.id);
        v.finish_with(agent)
    }
}

impl TryFrom<pb::ListAgentsRequest> for AgentQuery {
    type Error = ApiError;

    fn try_from(request: pb::ListAgentsRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let tenant: Option<TenantId> = v.id("workspace_id", &request.workspace_id);
        let limit = v.page_size("page_size", request.page_size);
        let kind = agents_page(tenant.map(|t| t.to_string()).unwrap_or_default());
        let after = page_after(&mut v, &kind, &request.page_token);
        v.finish_with(tenant.map(|tenant| AgentQuery {
            tenant,
            after: after.map(AgentId),
            limit,
        }))
    }
}

impl TryFrom<pb::UpdateAgentRequest> for AgentUpdate {
    type Error = ApiError;

    fn try_from(request: pb::UpdateAgentRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let agent = request.agent.unwrap_or_default();
        // Both ids are reported as one violation: the agent's id is inside `agent`.
        let mut ids = Violations::new();
        let reference = agent_ref(&mut ids, &request.workspace_id, &agent.id);
        if ids.finish().is_err() {
            v.add("workspace_id/agent.id", "must be UUIDs");
        }
        let paths = update_paths(&mut v, request.update_mask.as_ref(), UPDATABLE);
        let request_id = v.request_id("request_id", &request.request_id);
        let changes = paths
            .iter()
            .filter_map(|path| change(&mut v, path, &agent))
            .collect();
        v.finish_with(reference.map(|agent| AgentUpdate {
            agent,
            paths,
            changes,
            request_id,
        }))
    }
}

impl TryFrom<pb::DeleteAgentRequest> for DeleteAgent {
    type Error = ApiError;

    fn try_from(request: pb::DeleteAgentRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let agent = agent_ref(&mut v, &request.workspace_id, &request.id);
        let request_id = v.request_id("request_id", &request.request_id);
        v.finish_with(agent.map(|agent| DeleteAgent { agent, request_id }))
    }
}

/// Parses a (workspace id, agent id) pair.
fn agent_ref(v: &mut Violations, workspace_id: &str, id: &str) -> Option<AgentRef> {
    let tenant = v.id("workspace_id", workspace_id);
    let agent = v.id("id", id);
    Some(AgentRef {
        tenant: tenant?,
        agent: agent?,
    })
}

/// The new value UpdateAgent gives the field at `path`, checked; `None` for a path the
/// mask may not name (already reported).
fn change(v: &mut Violations, path: &str, agent: &pb::Agent) -> Option<AgentChange> {
    let change = match path {
        "name" => AgentChange::Name(agent.name.clone()),
        "provider" => AgentChange::Provider(provider(v, agent.provider)),
        "model" => AgentChange::Model(agent.model.clone()),
        "system_prompt" => AgentChange::SystemPrompt(agent.system_prompt.clone()),
        "generation" => AgentChange::Generation(generation(agent.generation.as_ref())),
        "labels" => AgentChange::Labels(v.labels("agent.labels", &agent.labels)),
        "required_worker_labels" => AgentChange::RequiredLabels(v.labels(
            "agent.required_worker_labels",
            &agent.required_worker_labels,
        )),
        "max_concurrency" => AgentChange::MaxConcurrency(agent.max_concurrency),
        "task_timeout" => AgentChange::TaskTimeoutMs(match &agent.task_timeout {
            Some(d) => duration_ms(v, d),
            None => rules::DEFAULT_TASK_TIMEOUT_MS,
        }),
        "max_attempts" => AgentChange::MaxAttempts(agent.max_attempts),
        "tools" => AgentChange::Tools(tools(&agent.tools)),
        "max_steps" => AgentChange::MaxSteps(or_default(agent.max_steps, DEFAULT_MAX_STEPS)),
        "fallbacks" => AgentChange::Fallbacks(fallbacks(&agent.fallbacks)),
        _ => return None,
    };
    change.check(v);
    Some(change)
}

fn or_default(value: i32, default: i32) -> i32 {
    if value == 0 { default } else { value }
}

fn provider(v: &mut Violations, value: i32) -> Provider {
    provider_from_wire(value).unwrap_or_else(|| {
        v.add(
            "agent.provider",
            "must be a supported provider (PROVIDER_ECHO, PROVIDER_ANTHROPIC, \
             PROVIDER_OPENAI, PROVIDER_GEMINI or PROVIDER_OPENAI_COMPATIBLE)",
        );
        Provider::Echo
    })
}

/// The declared tools as stored (checked by `AgentSpec::check`).
fn tools(tools: &[pb::Tool]) -> Vec<ToolDefinition> {
    tools
        .iter()
        .map(|tool| ToolDefinition {
            name: tool.name.clone(),
            description: tool.description.clone(),
            parameters: tool
                .parameters
                .as_ref()
                .map_or_else(empty_object_schema, struct_to_json),
        })
        .collect()
}

/// The fallbacks as stored (checked by `AgentSpec::check`: an unspecified or unknown
/// provider becomes an empty name, which the check refuses).
fn fallbacks(choices: &[pb::ModelChoice]) -> Vec<ModelChoice> {
    choices
        .iter()
        .map(|choice| ModelChoice {
            provider: provider_from_wire(choice.provider)
                .map_or("", Provider::as_str)
                .to_owned(),
            model: choice.model.clone(),
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn fields(error: ApiError) -> Vec<String> {
        match error {
            ApiError::InvalidArgument(violations) => {
                violations.into_iter().map(|v| v.field).collect()
            }
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    fn update(workspace_id: String, paths: &[&str], agent: pb::Agent) -> pb::UpdateAgentRequest {
        pb::UpdateAgentRequest {
            workspace_id,
            agent: Some(agent),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            }),
            request_id: String::new(),
        }
    }

    #[test]
    fn an_update_reports_its_ids_its_mask_and_its_new_values_at_once() {
        let agent = pb::Agent {
            name: "Bad Name".to_owned(),
            provider: 99,
            ..Default::default()
        };
        let request = update("nope".to_owned(), &["name", "provider", "id"], agent);
        let error = AgentUpdate::try_from(request).expect_err("the request is invalid");
        assert_eq!(
            fields(error),
            [
                "workspace_id/agent.id",
                "update_mask",
                "agent.name",
                "agent.provider"
            ]
        );
    }

    #[test]
    fn an_update_checks_only_the_fields_its_mask_names() {
        let agent = pb::Agent {
            id: Uuid::now_v7().to_string(),
            max_concurrency: 7,
            ..Default::default()
        };
        let request = update(Uuid::now_v7().to_string(), &["max_concurrency"], agent);
        let parsed = AgentUpdate::try_from(request).expect("an empty name is not changed");
        assert_eq!(parsed.paths, ["max_concurrency"]);
        assert_eq!(parsed.changes, [AgentChange::MaxConcurrency(7)]);
    }

    #[test]
    fn a_created_agent_gets_the_defaults_of_unset_limits() {
        let request = pb::CreateAgentRequest {
            workspace_id: Uuid::now_v7().to_string(),
            agent: Some(pb::Agent {
                name: "coder".to_owned(),
                provider: pb::Provider::Echo.into(),
                model: "echo-1".to_owned(),
                ..Default::default()
            }),
            request_id: String::new(),
        };
        let new = NewAgent::try_from(request).expect("a valid agent");
        assert_eq!(new.spec.max_concurrency, rules::DEFAULT_MAX_CONCURRENCY);
        assert_eq!(new.spec.max_attempts, rules::DEFAULT_MAX_ATTEMPTS);
        assert_eq!(new.spec.task_timeout_ms, rules::DEFAULT_TASK_TIMEOUT_MS);
    }

    #[test]
    fn every_real_provider_is_accepted_and_unspecified_is_not() {
        let create = |provider: pb::Provider| pb::CreateAgentRequest {
            workspace_id: Uuid::now_v7().to_string(),
            agent: Some(pb::Agent {
                name: "coder".to_owned(),
                provider: provider.into(),
                model: "some-model".to_owned(),
                ..Default::default()
            }),
            request_id: String::new(),
        };
        for (wire, stored) in [
            (pb::Provider::Echo, Provider::Echo),
            (pb::Provider::Anthropic, Provider::Anthropic),
            (pb::Provider::Openai, Provider::OpenAi),
            (pb::Provider::Gemini, Provider::Gemini),
            (pb::Provider::OpenaiCompatible, Provider::OpenAiCompatible),
        ] {
            let new = NewAgent::try_from(create(wire)).expect("a valid agent");
            assert_eq!(new.spec.provider, stored);
            assert_eq!(crate::api::convert::provider(stored), wire, "round trip");
        }
        let error = NewAgent::try_from(create(pb::Provider::Unspecified)).expect_err("refused");
        assert_eq!(fields(error), ["agent.provider"]);
    }
}
