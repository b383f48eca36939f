//! What an attempt does next, read from its task's transcript: the input, then every step
//! recorded so far (assistant messages of completed model calls, and the tool outputs the
//! caller submitted). A recorded step is never paid for again: if the transcript already ends
//! with the model's answer or tool calls (an earlier attempt made the call and died before
//! its result was recorded), the attempt reports that step instead of calling the model.

use agentplane_core::columns::{Provider, Role};
use agentplane_core::generation::Generation;
use agentplane_core::tools::{ModelChoice, ToolCallRecord, ToolDefinition};
use agentplane_proto::v1::{WorkerRequiresAction, WorkerSuccess, worker_result};
use tokio::time::Instant;

use super::{Outcome, failure};
use crate::provider::{
    ChatMessage, ChatRole, ModelRequest, ToolCall, ToolOutput, ToolSpec, provider_request_id,
};
use crate::queue::{ClaimedTask, TranscriptMessage};

/// What the attempt does.
#[derive(Debug)]
pub(super) enum Plan {
    /// Report this without calling a model: the step it answers with is recorded.
    Replay(worker_result::Outcome),
    /// Call a model for the next step.
    Call(NextStep),
}

/// The next step's model call.
#[derive(Debug)]
pub(super) struct NextStep {
    /// The step, from 0: how many model calls the task has recorded.
    pub(super) step: i32,
    /// The transcript position its assistant message takes.
    pub(super) position: i32,
    /// The request, for the first choice's model.
    pub(super) request: ModelRequest,
    /// The (provider, model) pairs to try in order: the agent's, then its fallbacks.
    pub(super) choices: Vec<(Provider, String)>,
    /// The names of the tools the model may call.
    pub(super) tool_names: Vec<String>,
    /// The ids of the tool calls earlier steps made: a call id is unique within its task.
    pub(super) used_call_ids: Vec<String>,
}

/// Reads the transcript: a replayed ending, the next call, or a failure for a task that
/// cannot run (bad settings, or no steps left).
pub(super) fn plan(task: &ClaimedTask) -> Result<Plan, Outcome> {
    if let Some(last) = task.messages.last()
        && last.step.is_some()
        && Role::parse(&last.role) == Ok(Role::Assistant)
    {
        let calls = tool_calls(last)?;
        let outcome = if calls.is_empty() {
            worker_result::Outcome::Success(WorkerSuccess {
                output: last.content.clone(),
                // A step recorded before the reason was kept has none; it ended either way.
                finish_reason: last
                    .finish_reason
                    .clone()
                    .unwrap_or_else(|| "stop".to_owned()),
                calls: Vec::new(),
                position: last.position,
            })
        } else {
            worker_result::Outcome::RequiresAction(WorkerRequiresAction {
                position: last.position,
            })
        };
        return Ok(Plan::Replay(outcome));
    }
    let steps = task.messages.iter().filter(|m| m.step.is_some()).count();
    let step = i32::try_from(steps).unwrap_or(i32::MAX);
    if step >= task.agent.max_steps {
        return Err(failure(
            "max_steps_exceeded",
            format!(
                "the task has made {step} model calls, the agent's max_steps; it needs another"
            ),
            false,
        ));
    }
    let position = task
        .messages
        .last()
        .map_or(0, |m| m.position.saturating_add(1));
    let generation = Generation::from_json(&task.agent.generation).map_err(|error| {
        invalid_agent(format!(
            "the agent's generation settings are invalid: {error}"
        ))
    })?;
    let tools: Vec<ToolDefinition> = serde_json::from_value(task.agent.tools.clone())
        .map_err(|error| invalid_agent(format!("the agent's tools are invalid: {error}")))?;
    let choices = choices(task)?;
    let (system, messages) = conversation(&task.messages)?;
    let used_call_ids = messages
        .iter()
        .flat_map(|message| message.tool_calls.iter().map(|call| call.id.clone()))
        .collect();
    let request = ModelRequest {
        request_id: provider_request_id(task.task_id, step),
        model: choices[0].1.clone(),
        system: (!system.is_empty()).then_some(system),
        messages,
        generation,
        tools: tools
            .iter()
            .map(|tool| ToolSpec {
                name: tool.name.clone(),
                description: tool.description.clone(),
                parameters: tool.parameters.clone(),
            })
            .collect(),
        deadline: Some(Instant::now() + task.agent.task_timeout),
    };
    Ok(Plan::Call(NextStep {
        step,
        position,
        request,
        choices,
        tool_names: tools.into_iter().map(|tool| tool.name).collect(),
        used_call_ids,
    }))
}

/// The agent's provider and model, then its fallbacks this build knows. An unknown primary
/// fails the task (one agent of a provider this build does not know fails its own tasks);
/// an unknown fallback is skipped.
fn choices(task: &ClaimedTask) -> Result<Vec<(Provider, String)>, Outcome> {
    let primary = Provider::parse(&task.agent.provider).map_err(|_| {
        failure(
            "unsupported_provider",
            format!("this worker has no provider {:?}", task.agent.provider),
            false,
        )
    })?;
    let fallbacks: Vec<ModelChoice> = serde_json::from_value(task.agent.fallbacks.clone())
        .map_err(|error| invalid_agent(format!("the agent's fallbacks are invalid: {error}")))?;
    let mut choices = vec![(primary, task.agent.model.clone())];
    for fallback in fallbacks {
        match Provider::parse(&fallback.provider) {
            Ok(provider) => choices.push((provider, fallback.model)),
            Err(_) => tracing::warn!(
                provider = %fallback.provider,
                "skipping a fallback of a provider this worker does not know"
            ),
        }
    }
    Ok(choices)
}

/// The system prompt and the conversation of a transcript. Consecutive tool outputs become
/// one tool message answering the calls of the assistant message before them.
fn conversation(transcript: &[TranscriptMessage]) -> Result<(String, Vec<ChatMessage>), Outcome> {
    let mut system = Vec::new();
    let mut messages: Vec<ChatMessage> = Vec::with_capacity(transcript.len());
    let mut open_calls: Vec<ToolCallRecord> = Vec::new();
    for message in transcript {
        match Role::parse(&message.role) {
            Ok(Role::System) => system.push(message.content.as_str()),
            Ok(Role::User) => messages.push(ChatMessage::text(ChatRole::User, &*message.content)),
            Ok(Role::Assistant) => {
                open_calls = tool_calls(message)?;
                messages.push(ChatMessage {
                    role: ChatRole::Assistant,
                    content: message.content.clone(),
                    tool_calls: open_calls
                        .iter()
                        .map(|call| ToolCall {
                            id: call.id.clone(),
                            name: call.name.clone(),
                            arguments: call.arguments.clone(),
                        })
                        .collect(),
                    tool_outputs: Vec::new(),
                });
            }
            Ok(Role::Tool) => {
                let call_id = message.tool_call_id.clone().unwrap_or_default();
                let Some(call) = open_calls.iter().find(|call| call.id == call_id) else {
                    return Err(invalid_task(format!(
                        "the transcript has a tool output for call {call_id:?}, which the \
                         model message before it did not make"
                    )));
                };
                let output = ToolOutput {
                    call_id,
                    name: call.name.clone(),
                    output: message.content.clone(),
                    is_error: message.is_error,
                };
                match messages.last_mut() {
                    Some(last) if last.role == ChatRole::Tool => last.tool_outputs.push(output),
                    _ => messages.push(ChatMessage {
                        role: ChatRole::Tool,
                        content: String::new(),
                        tool_calls: Vec::new(),
                        tool_outputs: vec![output],
                    }),
                }
            }
            Err(unknown) => {
                return Err(invalid_task(format!(
                    "the transcript has a message with an {unknown}"
                )));
            }
        }
    }
    Ok((system.join("\n\n"), messages))
}

/// The tool calls stored with an assistant message.
fn tool_calls(message: &TranscriptMessage) -> Result<Vec<ToolCallRecord>, Outcome> {
    match &message.tool_calls {
        None => Ok(Vec::new()),
        Some(stored) => serde_json::from_value(stored.clone()).map_err(|error| {
            invalid_task(format!(
                "the tool calls at transcript position {} are unreadable: {error}",
                message.position
            ))
        }),
    }
}

fn invalid_agent(message: String) -> Outcome {
    failure("invalid_agent", message, false)
}

fn invalid_task(message: String) -> Outcome {
    failure("invalid_task", message, false)
}
