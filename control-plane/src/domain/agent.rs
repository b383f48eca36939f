//! Agents: limits, defaults, the validated spec an agent is stored as, and the validated
//! requests of AgentService.

use std::collections::BTreeMap;

use crate::domain::validate::Violations;
use crate::error::ApiError;
use crate::ids::{AgentId, TenantId};

pub use agentplane_core::generation::{Generation, MAX_OUTPUT_TOKENS};

/// Longest system prompt, in bytes.
pub const MAX_SYSTEM_PROMPT_BYTES: usize = 256 * 1024;
/// Longest model name.
pub const MAX_MODEL_CHARS: usize = 200;
/// Longest agent name.
pub const MAX_NAME_CHARS: usize = 63;
/// Most stop sequences.
pub const MAX_STOP_SEQUENCES: usize = 16;
/// Longest stop sequence.
pub const MAX_STOP_SEQUENCE_CHARS: usize = 256;
/// max_concurrency when none is given.
pub const DEFAULT_MAX_CONCURRENCY: i32 = 10;
/// Highest max_concurrency.
pub const MAX_MAX_CONCURRENCY: i32 = 10_000;
/// max_attempts when none is given.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;
/// Highest max_attempts.
pub const MAX_MAX_ATTEMPTS: i32 = 100;
/// task_timeout when none is given.
pub const DEFAULT_TASK_TIMEOUT_MS: i64 = 10 * 60 * 1000;
/// Shortest task_timeout.
pub const MIN_TASK_TIMEOUT_MS: i64 = 1000;
/// Longest task_timeout.
pub const MAX_TASK_TIMEOUT_MS: i64 = 24 * 60 * 60 * 1000;

pub use agentplane_core::columns::Provider;
use agentplane_core::tools as tool_rules;
pub use agentplane_core::tools::{ModelChoice, ToolDefinition};
/// Everything about an agent a client can set, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentSpec {
    /// Unique among the workspace's live agents.
    pub name: String,
    /// Provider.
    pub provider: Provider,
    /// Model name.
    pub model: String,
    /// System prompt.
    pub system_prompt: String,
    /// Generation parameters.
    pub generation: Generation,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Labels a worker must advertise, all with equal values, to run the agent's tasks.
    pub required_labels: BTreeMap<String, String>,
    /// Most tasks running at once.
    pub max_concurrency: i32,
    /// Timeout of one attempt.
    pub task_timeout_ms: i64,
    /// Attempts per task.
    pub max_attempts: i32,
    /// Tools the model may call.
    pub tools: Vec<ToolDefinition>,
    /// Model calls one task may make.
    pub max_steps: i32,
    /// (provider, model) pairs tried in order when the primary fails.
    pub fallbacks: Vec<ModelChoice>,
}

impl AgentSpec {
    /// Records every rule the spec breaks, under the field paths of the API's `agent`.
    pub fn check(&self, v: &mut Violations) {
        check_name(v, &self.name);
        check_model(v, &self.model);
        check_system_prompt(v, &self.system_prompt);
        check_generation(v, &self.generation);
        check_max_concurrency(v, self.max_concurrency);
        check_task_timeout(v, self.task_timeout_ms);
        check_max_attempts(v, self.max_attempts);
        check_tools(v, &self.tools);
        check_max_steps(v, self.max_steps);
        check_fallbacks(v, &self.fallbacks);
    }

    /// The spec with `changes` made, checked again as a whole: a spec saved under older
    /// rules may break newer ones.
    pub fn with_changes(mut self, changes: Vec<AgentChange>) -> Result<Self, ApiError> {
        for change in changes {
            match change {
                AgentChange::Name(name) => self.name = name,
                AgentChange::Provider(provider) => self.provider = provider,
                AgentChange::Model(model) => self.model = model,
                AgentChange::SystemPrompt(prompt) => self.system_prompt = prompt,
                AgentChange::Generation(generation) => self.generation = generation,
                AgentChange::Labels(labels) => self.labels = labels,
                AgentChange::RequiredLabels(labels) => self.required_labels = labels,
                AgentChange::MaxConcurrency(max) => self.max_concurrency = max,
                AgentChange::TaskTimeoutMs(timeout) => self.task_timeout_ms = timeout,
                AgentChange::MaxAttempts(max) => self.max_attempts = max,
                AgentChange::Tools(tools) => self.tools = tools,
                AgentChange::MaxSteps(max) => self.max_steps = max,
                AgentChange::Fallbacks(fallbacks) => self.fallbacks = fallbacks,
            }
        }
        let mut v = Violations::new();
        self.check(&mut v);
        v.finish()?;
        Ok(self)
    }
}

/// A new value for one field of an agent's spec.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentChange {
    /// New name.
    Name(String),
    /// New provider.
    Provider(Provider),
    /// New model name.
    Model(String),
    /// New system prompt.
    SystemPrompt(String),
    /// New generation parameters, replacing all of the old ones.
    Generation(Generation),
    /// New labels, replacing all of the old ones.
    Labels(BTreeMap<String, String>),
    /// New required worker labels, replacing all of the old ones.
    RequiredLabels(BTreeMap<String, String>),
    /// New concurrency limit.
    MaxConcurrency(i32),
    /// New attempt timeout.
    TaskTimeoutMs(i64),
    /// New attempt limit.
    MaxAttempts(i32),
    /// New tools, replacing all of the old ones.
    Tools(Vec<ToolDefinition>),
    /// New step limit.
    MaxSteps(i32),
    /// New fallbacks, replacing all of the old ones.
    Fallbacks(Vec<ModelChoice>),
}

impl AgentChange {
    /// Records every rule the new value breaks (provider and labels are checked as they
    /// are parsed).
    pub fn check(&self, v: &mut Violations) {
        match self {
            AgentChange::Name(name) => check_name(v, name),
            AgentChange::Model(model) => check_model(v, model),
            AgentChange::SystemPrompt(prompt) => check_system_prompt(v, prompt),
            AgentChange::Generation(generation) => check_generation(v, generation),
            AgentChange::MaxConcurrency(max) => check_max_concurrency(v, *max),
            AgentChange::TaskTimeoutMs(timeout) => check_task_timeout(v, *timeout),
            AgentChange::MaxAttempts(max) => check_max_attempts(v, *max),
            AgentChange::Tools(tools) => check_tools(v, tools),
            AgentChange::MaxSteps(max) => check_max_steps(v, *max),
            AgentChange::Fallbacks(fallbacks) => check_fallbacks(v, fallbacks),
            AgentChange::Provider(_) | AgentChange::Labels(_) | AgentChange::RequiredLabels(_) => {}
        }
    }
}

/// One agent of one workspace: what GetAgent addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentRef {
    /// Workspace the agent belongs to.
    pub tenant: TenantId,
    /// The agent.
    pub agent: AgentId,
}

/// A validated CreateAgent request.
#[derive(Clone, Debug)]
pub struct NewAgent {
    /// Workspace to create it in.
    pub tenant: TenantId,
    /// The agent.
    pub spec: AgentSpec,
    /// Idempotency key.
    pub request_id: Option<String>,
}

/// A validated ListAgents request: a page of a workspace's live agents, oldest first.
#[derive(Clone, Debug)]
pub struct AgentQuery {
    /// Workspace listed.
    pub tenant: TenantId,
    /// Only agents after this one (the page token); `None` starts at the oldest.
    pub after: Option<AgentId>,
    /// Most agents in the page.
    pub limit: i64,
}

/// A validated UpdateAgent request.
#[derive(Clone, Debug)]
pub struct AgentUpdate {
    /// Agent to change.
    pub agent: AgentRef,
    /// The update mask's paths as sent, recorded in the `agent.updated` event.
    pub paths: Vec<String>,
    /// The new value of each field the mask names, checked on its own.
    pub changes: Vec<AgentChange>,
    /// Idempotency key.
    pub request_id: Option<String>,
}

/// A validated DeleteAgent request.
#[derive(Clone, Debug)]
pub struct DeleteAgent {
    /// Agent to delete.
    pub agent: AgentRef,
    /// Idempotency key.
    pub request_id: Option<String>,
}

fn check_tools(v: &mut Violations, tools: &[ToolDefinition]) {
    if tools.len() > tool_rules::MAX_TOOLS {
        v.add(
            "agent.tools",
            format!("at most {} tools", tool_rules::MAX_TOOLS),
        );
    }
    let mut names = std::collections::HashSet::new();
    for (i, tool) in tools.iter().enumerate() {
        if !tool_rules::is_valid_tool_name(&tool.name) {
            v.add(
                &format!("agent.tools[{i}].name"),
                format!(
                    "must be 1 to {} characters of [a-zA-Z0-9_-]",
                    tool_rules::MAX_TOOL_NAME_CHARS
                ),
            );
        } else if !names.insert(tool.name.as_str()) {
            v.add(
                &format!("agent.tools[{i}].name"),
                "is declared twice; tool names are unique within an agent",
            );
        }
        if tool.description.len() > tool_rules::MAX_TOOL_DESCRIPTION_BYTES
            || tool.description.contains('\0')
        {
            v.add(
                &format!("agent.tools[{i}].description"),
                format!(
                    "must be at most {} bytes, without NUL",
                    tool_rules::MAX_TOOL_DESCRIPTION_BYTES
                ),
            );
        }
        let schema_type = tool.parameters.get("type").and_then(|t| t.as_str());
        if !tool.parameters.is_object() || schema_type != Some("object") {
            v.add(
                &format!("agent.tools[{i}].parameters"),
                "must be a JSON Schema of an object: {\"type\": \"object\", ...}",
            );
        } else if tool.parameters.to_string().len() > tool_rules::MAX_TOOL_SCHEMA_BYTES {
            v.add(
                &format!("agent.tools[{i}].parameters"),
                format!(
                    "must be at most {} bytes as JSON",
                    tool_rules::MAX_TOOL_SCHEMA_BYTES
                ),
            );
        }
    }
}

fn check_max_steps(v: &mut Violations, max: i32) {
    if !(1..=tool_rules::MAX_MAX_STEPS).contains(&max) {
        v.add(
            "agent.max_steps",
            format!("must be 1 to {}", tool_rules::MAX_MAX_STEPS),
        );
    }
}

fn check_fallbacks(v: &mut Violations, fallbacks: &[ModelChoice]) {
    if fallbacks.len() > tool_rules::MAX_FALLBACKS {
        v.add(
            "agent.fallbacks",
            format!("at most {} fallbacks", tool_rules::MAX_FALLBACKS),
        );
    }
    for (i, choice) in fallbacks.iter().enumerate() {
        if Provider::parse(&choice.provider).is_err() {
            v.add(
                &format!("agent.fallbacks[{i}].provider"),
                "must be a supported provider",
            );
        }
        let chars = choice.model.chars().count();
        if !(1..=MAX_MODEL_CHARS).contains(&chars) || choice.model.contains('\0') {
            v.add(
                &format!("agent.fallbacks[{i}].model"),
                format!("must be 1 to {MAX_MODEL_CHARS} characters"),
            );
        }
    }
}

fn check_name(v: &mut Violations, name: &str) {
    if !is_valid_name(name) {
        v.add(
            "agent.name",
            format!("must be 1 to {MAX_NAME_CHARS} characters of [a-z0-9-] starting with a letter"),
        );
    }
}

fn check_model(v: &mut Violations, model: &str) {
    v.text("agent.model", model, 1, MAX_MODEL_CHARS);
}

fn check_system_prompt(v: &mut Violations, prompt: &str) {
    v.max_bytes("agent.system_prompt", prompt, MAX_SYSTEM_PROMPT_BYTES);
}

fn check_generation(v: &mut Violations, g: &Generation) {
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
        .is_some_and(|m| !(1..=MAX_OUTPUT_TOKENS).contains(&m))
    {
        v.add(
            "agent.generation.max_output_tokens",
            format!("must be 1 to {MAX_OUTPUT_TOKENS}"),
        );
    }
    if g.stop_sequences.len() > MAX_STOP_SEQUENCES {
        v.add(
            "agent.generation.stop_sequences",
            format!("at most {MAX_STOP_SEQUENCES} are allowed"),
        );
    }
    for (i, stop) in g.stop_sequences.iter().enumerate() {
        v.text(
            &format!("agent.generation.stop_sequences[{i}]"),
            stop,
            1,
            MAX_STOP_SEQUENCE_CHARS,
        );
    }
}

fn check_max_concurrency(v: &mut Violations, max: i32) {
    if !(1..=MAX_MAX_CONCURRENCY).contains(&max) {
        v.add(
            "agent.max_concurrency",
            format!("must be 1 to {MAX_MAX_CONCURRENCY}"),
        );
    }
}

fn check_task_timeout(v: &mut Violations, timeout_ms: i64) {
    if !(MIN_TASK_TIMEOUT_MS..=MAX_TASK_TIMEOUT_MS).contains(&timeout_ms) {
        v.add("agent.task_timeout", "must be 1 second to 24 hours");
    }
}

fn check_max_attempts(v: &mut Violations, max: i32) {
    if !(1..=MAX_MAX_ATTEMPTS).contains(&max) {
        v.add(
            "agent.max_attempts",
            format!("must be 1 to {MAX_MAX_ATTEMPTS}"),
        );
    }
}

/// Whether `name` is a valid agent name: a lowercase letter, then [a-z0-9-].
pub fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && name.len() <= MAX_NAME_CHARS
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests;
