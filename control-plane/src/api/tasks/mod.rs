//! TaskService. `parse` turns its requests into domain values; `group_commit` lets
//! concurrent CreateTask calls share commits.

mod group_commit;
mod parse;

use agentplane_proto::v1 as pb;
use pb::task_service_server::TaskService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::paging::split_page;
pub use group_commit::TaskCreator;

use super::watch_task::TaskWatcher;
use super::{ResponseStream, STREAM_BUFFER, State, convert};
use crate::auth::caller;
use crate::domain::page;
use crate::domain::task::{
    CancelTask, MessageQuery, NewTask, NewTaskBatch, RetryTask, SubmitToolOutputs, TaskQuery,
    TaskRef, TaskStatus,
};
use crate::fanout::Topic;
use crate::spawn::spawn_named;
use crate::store::StoreError;
use agentplane_telemetry::propagation;

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
        let caller = caller(&request)?;
        let mut new: NewTask = request.into_inner().try_into()?;
        let actor = caller.authorize(&self.state.store, new.tenant).await?;
        let span = tracing::Span::current();
        span.record("workspace_id", tracing::field::display(new.tenant));
        new.traceparent = propagation::traceparent_of(&span);
        let task = self.state.task_creator.create(new, actor).await?;
        span.record("task_id", tracing::field::display(task.id));
        Ok(Response::new(pb::CreateTaskResponse {
            task: Some(convert::task(&task)),
        }))
    }

    async fn batch_create_tasks(
        &self,
        request: Request<pb::BatchCreateTasksRequest>,
    ) -> Result<Response<pb::BatchCreateTasksResponse>, Status> {
        let caller = caller(&request)?;
        let mut batch: NewTaskBatch = request.into_inner().try_into()?;
        let actor = caller.authorize(&self.state.store, batch.tenant).await?;
        let traceparent = propagation::traceparent_of(&tracing::Span::current());
        for task in &mut batch.tasks {
            task.traceparent.clone_from(&traceparent);
        }
        let items: Vec<(&NewTask, &str)> = batch
            .tasks
            .iter()
            .map(|task| (task, actor.as_str()))
            .collect();
        let store = &self.state.store;
        let mut tx = store.tenant(batch.tenant).await?;
        let rows = match tx.create_tasks(&items).await {
            Ok(rows) => {
                tx.commit().await?;
                rows
            }
            // A concurrent call with one of the request ids committed first: go again, and
            // that item answers with the task it created.
            Err(StoreError::AlreadyExists(_)) => {
                drop(tx);
                let mut tx = store.tenant(batch.tenant).await?;
                let rows = tx.create_tasks(&items).await?;
                tx.commit().await?;
                rows
            }
            Err(error) => return Err(error.into()),
        };
        Ok(Response::new(pb::BatchCreateTasksResponse {
            tasks: rows.iter().map(convert::task).collect(),
        }))
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let caller = caller(&request)?;
        let request: TaskRef = request.into_inner().try_into()?;
        record_task(request.task);
        caller.authorize(&self.state.store, request.tenant).await?;
        let mut tx = self.state.store.tenant(request.tenant).await?;
        let task = tx.get_task(request.task).await?;
        Ok(Response::new(pb::GetTaskResponse {
            task: Some(convert::task(&task)),
        }))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let caller = caller(&request)?;
        let query: TaskQuery = request.into_inner().try_into()?;
        caller.authorize(&self.state.store, query.tenant).await?;
        let mut tx = self.state.store.tenant(query.tenant).await?;
        let rows = tx
            .list_tasks(query.status, query.agent, query.before, query.limit + 1)
            .await?;
        let (tasks, next_page_token) = split_page(rows, query.limit, convert::task, |row| {
            page::encode_id(&parse::tasks_page(row.tenant_id), row.id.0)
        });
        Ok(Response::new(pb::ListTasksResponse {
            tasks,
            next_page_token,
        }))
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        let caller = caller(&request)?;
        let request: CancelTask = request.into_inner().try_into()?;
        record_task(request.task.task);
        let actor = caller
            .authorize(&self.state.store, request.task.tenant)
            .await?;
        let mut tx = self.state.store.tenant(request.task.tenant).await?;
        let task = tx
            .cancel_task(request.task.task, request.request_id.as_deref(), &actor)
            .await?;
        tx.commit().await?;
        Ok(Response::new(pb::CancelTaskResponse {
            task: Some(convert::task(&task)),
        }))
    }

    async fn retry_task(
        &self,
        request: Request<pb::RetryTaskRequest>,
    ) -> Result<Response<pb::RetryTaskResponse>, Status> {
        let caller = caller(&request)?;
        let request: RetryTask = request.into_inner().try_into()?;
        record_task(request.task.task);
        let actor = caller
            .authorize(&self.state.store, request.task.tenant)
            .await?;
        let mut tx = self.state.store.tenant(request.task.tenant).await?;
        let task = tx
            .retry_task(request.task.task, request.request_id.as_deref(), &actor)
            .await?;
        tx.commit().await?;
        Ok(Response::new(pb::RetryTaskResponse {
            task: Some(convert::task(&task)),
        }))
    }

    async fn submit_tool_outputs(
        &self,
        request: Request<pb::SubmitToolOutputsRequest>,
    ) -> Result<Response<pb::SubmitToolOutputsResponse>, Status> {
        let caller = caller(&request)?;
        let request: SubmitToolOutputs = request.into_inner().try_into()?;
        record_task(request.task.task);
        let actor = caller
            .authorize(&self.state.store, request.task.tenant)
            .await?;
        let mut tx = self.state.store.tenant(request.task.tenant).await?;
        let task = tx
            .submit_tool_outputs(
                request.task.task,
                &request.outputs,
                request.request_id.as_deref(),
                &actor,
            )
            .await?;
        tx.commit().await?;
        Ok(Response::new(pb::SubmitToolOutputsResponse {
            task: Some(convert::task(&task)),
        }))
    }

    async fn list_task_messages(
        &self,
        request: Request<pb::ListTaskMessagesRequest>,
    ) -> Result<Response<pb::ListTaskMessagesResponse>, Status> {
        let caller = caller(&request)?;
        let query: MessageQuery = request.into_inner().try_into()?;
        record_task(query.task.task);
        caller
            .authorize(&self.state.store, query.task.tenant)
            .await?;
        let mut tx = self.state.store.tenant(query.task.tenant).await?;
        let rows = tx
            .list_task_messages(query.task.task, query.after, query.limit + 1)
            .await?;
        let kind = parse::messages_page(query.task.task);
        let (messages, next_page_token) =
            split_page(rows, query.limit, convert::task_message, |row| {
                page::encode_number(&kind, i64::from(row.position))
            });
        Ok(Response::new(pb::ListTaskMessagesResponse {
            messages,
            next_page_token,
        }))
    }

    type WatchTaskStream = ResponseStream<pb::WatchTaskResponse>;

    async fn watch_task(
        &self,
        request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let caller = caller(&request)?;
        let TaskRef { tenant, task: id } = request.into_inner().try_into()?;
        record_task(id);
        caller.authorize(&self.state.store, tenant).await?;
        let slot = self.state.streams.open()?;
        // Subscribe before reading the snapshot so nothing between the two is missed.
        let notices = self.state.fanout.subscribe(Topic::Task(tenant, id));
        let mut tx = self.state.store.tenant(tenant).await?;
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
            spawn_named("watch_task", async move {
                watcher.run(notices).await;
                drop(slot);
            });
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// Names the task in the call's span, so every log line of the call carries its id (the
/// workspace is recorded by `Caller::authorize`).
fn record_task(task: crate::ids::TaskId) {
    tracing::Span::current().record("task_id", tracing::field::display(task));
}
