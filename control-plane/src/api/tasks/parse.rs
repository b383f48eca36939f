//! Parsing of TaskService requests: each protobuf request becomes a validated domain value
//! here, once, with every field violation collected.

use std::collections::HashMap;
use std::fmt::Display;

use agentplane_core::text::without_nul;
use agentplane_core::tools;
use agentplane_proto::v1 as pb;
use chrono::Utc;

use crate::api::convert;
use crate::api::paging::page_after;
use crate::domain::page;
use crate::domain::task::{
    self as rules, CancelTask, InputMessage, MessageQuery, NewTask, NewTaskBatch, RetryTask, Role,
    SubmitToolOutputs, TaskQuery, TaskRef, ToolOutputInput,
};
use crate::domain::validate::Violations;
use crate::error::ApiError;
use crate::ids::{AgentId, TaskId, TenantId};

/// The page-token kind of a workspace's task list.
pub(super) fn tasks_page(tenant: impl Display) -> String {
    format!("tasks/{tenant}")
}

/// The page-token kind of a task's transcript.
pub(super) fn messages_page(task: TaskId) -> String {
    format!("messages/{task}")
}

impl TryFrom<pb::GetTaskRequest> for TaskRef {
    type Error = ApiError;

    fn try_from(request: pb::GetTaskRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let task = task_ref(&mut v, &request.workspace_id, "id", &request.id);
        v.finish_with(task)
    }
}

impl TryFrom<pb::WatchTaskRequest> for TaskRef {
    type Error = ApiError;

    fn try_from(request: pb::WatchTaskRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let task = task_ref(&mut v, &request.workspace_id, "id", &request.id);
        v.finish_with(task)
    }
}

impl TryFrom<pb::CancelTaskRequest> for CancelTask {
    type Error = ApiError;

    fn try_from(request: pb::CancelTaskRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let task = task_ref(&mut v, &request.workspace_id, "id", &request.id);
        let request_id = v.request_id("request_id", &request.request_id);
        v.finish_with(task.map(|task| CancelTask { task, request_id }))
    }
}

impl TryFrom<pb::SubmitToolOutputsRequest> for SubmitToolOutputs {
    type Error = ApiError;

    fn try_from(request: pb::SubmitToolOutputsRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let task = task_ref(&mut v, &request.workspace_id, "task_id", &request.task_id);
        let request_id = v.request_id("request_id", &request.request_id);
        let count = request.tool_outputs.len();
        if !(1..=tools::MAX_TOOL_CALLS).contains(&count) {
            v.add(
                "tool_outputs",
                format!("must hold 1 to {} outputs", tools::MAX_TOOL_CALLS),
            );
        }
        let total: usize = request.tool_outputs.iter().map(|o| o.output.len()).sum();
        if total > tools::MAX_TOOL_OUTPUTS_TOTAL_BYTES {
            v.add(
                "tool_outputs",
                format!(
                    "must together be at most {} bytes of output",
                    tools::MAX_TOOL_OUTPUTS_TOTAL_BYTES
                ),
            );
        }
        let mut seen = std::collections::HashSet::new();
        let mut outputs = Vec::with_capacity(count.min(tools::MAX_TOOL_CALLS));
        for (i, output) in request
            .tool_outputs
            .into_iter()
            .take(tools::MAX_TOOL_CALLS)
            .enumerate()
        {
            let id_chars = output.tool_call_id.chars().count();
            if !(1..=tools::MAX_TOOL_CALL_ID_CHARS).contains(&id_chars) {
                v.add(
                    &format!("tool_outputs[{i}].tool_call_id"),
                    format!("must be 1 to {} characters", tools::MAX_TOOL_CALL_ID_CHARS),
                );
            } else if !seen.insert(output.tool_call_id.clone()) {
                v.add(
                    &format!("tool_outputs[{i}].tool_call_id"),
                    "answers a call another output already answers",
                );
            }
            if output.output.len() > tools::MAX_TOOL_OUTPUT_BYTES {
                v.add(
                    &format!("tool_outputs[{i}].output"),
                    format!("must be at most {} bytes", tools::MAX_TOOL_OUTPUT_BYTES),
                );
            }
            outputs.push(ToolOutputInput {
                call_id: output.tool_call_id,
                output: without_nul(&output.output).into_owned(),
                is_error: output.is_error,
            });
        }
        v.finish_with(task.map(|task| SubmitToolOutputs {
            task,
            outputs,
            request_id,
        }))
    }
}

impl TryFrom<pb::RetryTaskRequest> for RetryTask {
    type Error = ApiError;

    fn try_from(request: pb::RetryTaskRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let task = task_ref(&mut v, &request.workspace_id, "id", &request.id);
        let request_id = v.request_id("request_id", &request.request_id);
        v.finish_with(task.map(|task| RetryTask { task, request_id }))
    }
}

impl TryFrom<pb::ListTasksRequest> for TaskQuery {
    type Error = ApiError;

    fn try_from(request: pb::ListTasksRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let tenant: Option<TenantId> = v.id("workspace_id", &request.workspace_id);
        let agent: Option<AgentId> = v.optional_id("agent_id", &request.agent_id);
        let status = match pb::TaskStatus::try_from(request.status) {
            Ok(status) => convert::task_status_filter(status),
            Err(_) => {
                v.add("status", "is not a known TaskStatus");
                None
            }
        };
        let limit = v.page_size("page_size", request.page_size);
        // A token belongs to one workspace's listing, so it is read only once that is known.
        let before = tenant.and_then(|tenant| {
            page_after(&mut v, &tasks_page(tenant.to_string()), &request.page_token)
        });
        v.finish_with(tenant.map(|tenant| TaskQuery {
            tenant,
            status,
            agent,
            before: before.map(TaskId),
            limit,
        }))
    }
}

impl TryFrom<pb::ListTaskMessagesRequest> for MessageQuery {
    type Error = ApiError;

    fn try_from(request: pb::ListTaskMessagesRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let task = task_ref(&mut v, &request.workspace_id, "task_id", &request.task_id);
        let limit = v.page_size("page_size", request.page_size);
        // A token belongs to one task's transcript, so it is read only once the task is known.
        let after = match task {
            Some(task) if !request.page_token.is_empty() => {
                let position = page::decode_number(&messages_page(task.task), &request.page_token)
                    .and_then(|p| i32::try_from(p).ok());
                if position.is_none() {
                    v.add("page_token", "is not a token returned by this list method");
                }
                position
            }
            _ => None,
        };
        v.finish_with(task.map(|task| MessageQuery { task, after, limit }))
    }
}

impl TryFrom<pb::CreateTaskRequest> for NewTask {
    type Error = ApiError;

    fn try_from(request: pb::CreateTaskRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let tenant: Option<TenantId> = v.id("workspace_id", &request.workspace_id);
        let agent: Option<AgentId> = v.id("agent_id", &request.agent_id);
        let input = input(&mut v, request.input);
        if !rules::PRIORITY_RANGE.contains(&request.priority) {
            v.add("priority", "must be -1000 to 1000");
        }
        let run_at = match request.run_at.as_ref().map(convert::from_timestamp) {
            None => None,
            Some(None) => {
                v.add("run_at", "is not a valid timestamp");
                None
            }
            Some(Some(at)) if at > Utc::now() + rules::MAX_SCHEDULE_AHEAD => {
                v.add("run_at", "must be at most 30 days ahead");
                None
            }
            Some(Some(at)) => Some(at),
        };
        let labels = v.labels("labels", &request.labels);
        let request_id = v.request_id("request_id", &request.request_id);
        v.finish_with(tenant.zip(agent).map(|(tenant, agent_id)| NewTask {
            tenant,
            agent_id,
            input,
            priority: request.priority,
            run_at,
            labels,
            request_id,
            traceparent: None,
        }))
    }
}

impl TryFrom<pb::BatchCreateTasksRequest> for NewTaskBatch {
    type Error = ApiError;

    fn try_from(request: pb::BatchCreateTasksRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let tenant: Option<TenantId> = v.id("workspace_id", &request.workspace_id);
        if request.requests.is_empty() || request.requests.len() > rules::MAX_BATCH_TASKS {
            v.add(
                "requests",
                format!("must hold 1 to {} tasks", rules::MAX_BATCH_TASKS),
            );
        }
        let mut tasks = Vec::with_capacity(request.requests.len().min(rules::MAX_BATCH_TASKS));
        let mut request_ids: HashMap<String, usize> = HashMap::new();
        for (i, mut item) in request
            .requests
            .into_iter()
            .enumerate()
            .take(rules::MAX_BATCH_TASKS)
        {
            if item.workspace_id.is_empty() {
                item.workspace_id.clone_from(&request.workspace_id);
            } else if item.workspace_id != request.workspace_id {
                v.add(
                    &format!("requests[{i}].workspace_id"),
                    "must be empty or equal to workspace_id",
                );
                continue;
            }
            if !item.request_id.is_empty()
                && let Some(first) = request_ids.insert(item.request_id.clone(), i)
            {
                v.add(
                    &format!("requests[{i}].request_id"),
                    format!("repeats requests[{first}].request_id"),
                );
            }
            match NewTask::try_from(item) {
                Ok(task) => tasks.push(task),
                Err(ApiError::InvalidArgument(violations)) => {
                    for violation in violations {
                        v.add(
                            &format!("requests[{i}].{}", violation.field),
                            violation.description,
                        );
                    }
                }
                Err(error) => return Err(error),
            }
        }
        let tenant = v.finish_with(tenant)?;
        Ok(NewTaskBatch { tenant, tasks })
    }
}

/// Parses a (workspace id, task id) pair; the task id is read from `field`.
fn task_ref(v: &mut Violations, workspace_id: &str, field: &str, id: &str) -> Option<TaskRef> {
    let tenant = v.id("workspace_id", workspace_id);
    let task = v.id(field, id);
    Some(TaskRef {
        tenant: tenant?,
        task: task?,
    })
}

/// Checks a task's input conversation.
fn input(v: &mut Violations, messages: Vec<pb::Message>) -> Vec<InputMessage> {
    if messages.is_empty() || messages.len() > rules::MAX_INPUT_MESSAGES {
        v.add(
            "input",
            format!("must hold 1 to {} messages", rules::MAX_INPUT_MESSAGES),
        );
    }
    let mut total = 0usize;
    let mut input = Vec::with_capacity(messages.len().min(rules::MAX_INPUT_MESSAGES));
    for (i, message) in messages
        .into_iter()
        .enumerate()
        .take(rules::MAX_INPUT_MESSAGES)
    {
        let role = match pb::Role::try_from(message.role) {
            Ok(pb::Role::User) => Role::User,
            Ok(pb::Role::Assistant) => Role::Assistant,
            _ => {
                v.add(
                    &format!("input[{i}].role"),
                    "must be ROLE_USER or ROLE_ASSISTANT (the system prompt comes from the agent)",
                );
                Role::User
            }
        };
        if message.content.is_empty() {
            v.add(&format!("input[{i}].content"), "is required");
        }
        v.max_bytes(
            &format!("input[{i}].content"),
            &message.content,
            rules::MAX_MESSAGE_BYTES,
        );
        total = total.saturating_add(message.content.len());
        input.push(InputMessage {
            role,
            content: message.content,
        });
    }
    if total > rules::MAX_INPUT_BYTES {
        v.add(
            "input",
            format!("must total at most {} bytes", rules::MAX_INPUT_BYTES),
        );
    }
    input
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

    #[test]
    fn a_create_task_request_reports_every_violation_at_once() {
        let request = pb::CreateTaskRequest {
            workspace_id: "nope".to_owned(),
            input: vec![pb::Message {
                role: pb::Role::System.into(),
                content: String::new(),
                ..Default::default()
            }],
            priority: 5000,
            ..Default::default()
        };
        let error = NewTask::try_from(request).expect_err("the request is invalid");
        assert_eq!(
            fields(error),
            [
                "workspace_id",
                "agent_id",
                "input[0].role",
                "input[0].content",
                "priority"
            ]
        );
    }

    #[test]
    fn a_page_token_of_another_tasks_transcript_is_refused() {
        let workspace_id = Uuid::now_v7().to_string();
        let other = TaskId(Uuid::now_v7());
        let request = |page_token: String| pb::ListTaskMessagesRequest {
            workspace_id: workspace_id.clone(),
            task_id: Uuid::now_v7().to_string(),
            page_size: 0,
            page_token,
        };
        let foreign = page::encode_number(&messages_page(other), 3);
        let error = MessageQuery::try_from(request(foreign)).expect_err("a foreign token");
        assert_eq!(fields(error), ["page_token"]);
        let query = MessageQuery::try_from(request(String::new())).expect("no token");
        assert_eq!((query.after, query.limit), (None, 100));
    }
}
