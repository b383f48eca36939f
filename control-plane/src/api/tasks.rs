//! TaskService.

use agentplane_proto::v1 as pb;
use chrono::Utc;
use pb::task_service_server::TaskService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::paging::{page_after, split_page};
use super::watch_task::TaskWatcher;
use super::{ResponseStream, STREAM_BUFFER, State, convert};
use crate::auth::principal;
use crate::domain::page;
use crate::domain::task::{self as rules, InputMessage, NewTask, Role, TaskStatus};
use crate::domain::validate::Violations;
use crate::error::ApiError;
use crate::ids::{AgentId, TaskId, TenantId};
use crate::spawn::spawn_named;
use crate::store::StoreError;

/// Handlers of TaskService.
#[derive(Clone, Debug)]
pub struct TaskApi {
    state: State,
}

impl TaskApi {
    /// Handlers over shared state.
    pub fn new(state: State) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl TaskService for TaskApi {
    async fn create_task(
        &self,
        request: Request<pb::CreateTaskRequest>,
    ) -> Result<Response<pb::CreateTaskResponse>, Status> {
        let actor = principal(&request)?.actor();
        let (tenant, new) = new_task(request.into_inner())?;
        let store = &self.state.store;
        let mut tx = store.tenant(tenant).await?;
        let task = match tx.create_task(&new, actor).await {
            Ok((task, created)) => {
                if created {
                    tx.commit().await?;
                }
                task
            }
            // A concurrent call with the same request id committed first: answer with its task.
            Err(StoreError::AlreadyExists(_)) if new.request_id.is_some() => {
                drop(tx);
                let mut tx = store.tenant(tenant).await?;
                let request_id = new.request_id.as_deref().unwrap_or_default();
                tx.task_by_request_id(request_id)
                    .await?
                    .ok_or(ApiError::NotFound("task"))?
            }
            Err(error) => return Err(ApiError::from(error).into()),
        };
        Ok(Response::new(pb::CreateTaskResponse {
            task: Some(convert::task(&task)),
        }))
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let request = request.into_inner();
        let (tenant, id) = task_ref(&request.workspace_id, "id", &request.id)?;
        let mut tx = self.state.tenant(tenant).await?;
        let task = tx.get_task(id).await?;
        Ok(Response::new(pb::GetTaskResponse {
            task: Some(convert::task(&task)),
        }))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let request = request.into_inner();
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
        let before = page_after(
            &mut v,
            &format!(
                "tasks/{}",
                tenant.map(|t| t.to_string()).unwrap_or_default()
            ),
            &request.page_token,
        );
        v.finish()?;
        let Some(tenant) = tenant else {
            return Err(ApiError::invalid("workspace_id", "is required").into());
        };
        let mut tx = self.state.tenant(tenant).await?;
        let rows = tx
            .list_tasks(status, agent, before.map(TaskId), limit + 1)
            .await?;
        let (items, next) = split_page(rows, limit, convert::task, |row| {
            page::encode_id(&format!("tasks/{}", row.tenant_id), row.id.0)
        });
        Ok(Response::new(pb::ListTasksResponse {
            tasks: items,
            next_page_token: next,
        }))
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        let actor = principal(&request)?.actor();
        let request = request.into_inner();
        let (tenant, id) = task_ref(&request.workspace_id, "id", &request.id)?;
        let mut v = Violations::new();
        let request_id = v.request_id("request_id", &request.request_id);
        v.finish()?;
        let mut tx = self.state.tenant(tenant).await?;
        let task = tx.cancel_task(id, request_id.as_deref(), actor).await?;
        tx.commit().await?;
        Ok(Response::new(pb::CancelTaskResponse {
            task: Some(convert::task(&task)),
        }))
    }

    async fn list_task_messages(
        &self,
        request: Request<pb::ListTaskMessagesRequest>,
    ) -> Result<Response<pb::ListTaskMessagesResponse>, Status> {
        let request = request.into_inner();
        let (tenant, id) = task_ref(&request.workspace_id, "task_id", &request.task_id)?;
        let mut v = Violations::new();
        let limit = v.page_size("page_size", request.page_size);
        let kind = format!("messages/{id}");
        let after = if request.page_token.is_empty() {
            None
        } else {
            let position = page::decode_number(&kind, &request.page_token);
            if position.is_none() {
                v.add("page_token", "is not a token returned by this list method");
            }
            position.and_then(|p| i32::try_from(p).ok())
        };
        v.finish()?;
        let mut tx = self.state.tenant(tenant).await?;
        let rows = tx.list_task_messages(id, after, limit + 1).await?;
        let (items, next) = split_page(rows, limit, convert::task_message, |row| {
            page::encode_number(&kind, i64::from(row.position))
        });
        Ok(Response::new(pb::ListTaskMessagesResponse {
            messages: items,
            next_page_token: next,
        }))
    }

    type WatchTaskStream = ResponseStream<pb::WatchTaskResponse>;

    async fn watch_task(
        &self,
        request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let request = request.into_inner();
        let (tenant, id) = task_ref(&request.workspace_id, "id", &request.id)?;
        // Subscribe before reading the snapshot so nothing between the two is missed.
        let notices = self.state.fanout.subscribe();
        let mut tx = self.state.tenant(tenant).await?;
        let snapshot = tx.task_snapshot(id).await?;
        drop(tx);
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let watcher = TaskWatcher::new(self.state.clone(), tenant, id, &snapshot, sender.clone());
        let first = pb::WatchTaskResponse {
            kind: Some(pb::watch_task_response::Kind::Snapshot(pb::TaskSnapshot {
                task: Some(convert::task(&snapshot.task)),
                // Live output is dropped once a task ends; a finished task's answer is its output.
                output: match snapshot.task.status {
                    TaskStatus::Running => {
                        snapshot.chunks.iter().map(|c| c.content.as_str()).collect()
                    }
                    TaskStatus::Succeeded => snapshot.task.output.clone().unwrap_or_default(),
                    _ => String::new(),
                },
                next_delta_index: watcher.next_index(),
            })),
        };
        // The buffer is empty, so this cannot block.
        let _ = sender.send(Ok(first)).await;
        if !snapshot.task.status.is_terminal() {
            spawn_named("watch_task", watcher.run(notices));
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// Parses a (workspace id, task id) pair.
fn task_ref(workspace_id: &str, field: &str, id: &str) -> Result<(TenantId, TaskId), Status> {
    let mut v = Violations::new();
    let tenant: Option<TenantId> = v.id("workspace_id", workspace_id);
    let task: Option<TaskId> = v.id(field, id);
    v.finish()?;
    match (tenant, task) {
        (Some(tenant), Some(task)) => Ok((tenant, task)),
        _ => Err(ApiError::invalid(field, "is required").into()),
    }
}

/// Validates a CreateTask request.
fn new_task(request: pb::CreateTaskRequest) -> Result<(TenantId, NewTask), ApiError> {
    let mut v = Violations::new();
    let tenant: Option<TenantId> = v.id("workspace_id", &request.workspace_id);
    let agent: Option<AgentId> = v.id("agent_id", &request.agent_id);
    if request.input.is_empty() || request.input.len() > rules::MAX_INPUT_MESSAGES {
        v.add(
            "input",
            format!("must hold 1 to {} messages", rules::MAX_INPUT_MESSAGES),
        );
    }
    let mut total = 0usize;
    let mut input = Vec::with_capacity(request.input.len().min(rules::MAX_INPUT_MESSAGES));
    for (i, message) in request
        .input
        .iter()
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
            content: message.content.clone(),
        });
    }
    if total > rules::MAX_INPUT_BYTES {
        v.add(
            "input",
            format!("must total at most {} bytes", rules::MAX_INPUT_BYTES),
        );
    }
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
    v.finish()?;
    match (tenant, agent) {
        (Some(tenant), Some(agent_id)) => Ok((
            tenant,
            NewTask {
                agent_id,
                input,
                priority: request.priority,
                run_at,
                labels,
                request_id,
            },
        )),
        _ => Err(ApiError::invalid("agent_id", "is required")),
    }
}
