//! RetryTask, agents' required worker labels and workspaces' caps on running tasks, through
//! the API (the claim's side of them is in the worker's tests/it/queue_fairness.rs).

use std::time::Duration;

use agentplane_proto::v1 as pb;
use agentplane_worker::queue::WorkerLabels;
use tonic::Code;

use crate::app::{Clients, TestApp, user};
use crate::pg::TestDb;

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Option<Code> {
    r.err().map(|status| status.code())
}

fn mask(path: &str) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: vec![path.to_owned()],
    })
}

async fn retry(
    c: &mut Clients,
    ws: &str,
    id: &str,
    request_id: &str,
) -> Result<tonic::Response<pb::RetryTaskResponse>, tonic::Status> {
    c.tasks
        .retry_task(pb::RetryTaskRequest {
            workspace_id: ws.to_owned(),
            id: id.to_owned(),
            request_id: request_id.to_owned(),
        })
        .await
}

async fn cancel(c: &mut Clients, ws: &str, id: &str) {
    c.tasks
        .cancel_task(pb::CancelTaskRequest {
            workspace_id: ws.to_owned(),
            id: id.to_owned(),
            request_id: String::new(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_canceled_task_retried_runs_again_as_the_same_task() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("retry").await;
    let agent = c.echo_agent(&ws, "coder").await;
    let task = c.task(&ws, &agent.id, "again").await;
    cancel(&mut c, &ws, &task.id).await;

    let retried = retry(&mut c, &ws, &task.id, "retry-1")
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(retried.id, task.id);
    assert_eq!(retried.status, pb::TaskStatus::Pending as i32);
    assert!(retried.error.is_none(), "the old error is cleared");
    // The same call again (a client's retry) answers with the task instead of failing.
    let again = retry(&mut c, &ws, &task.id, "retry-1").await.unwrap();
    assert_eq!(again.into_inner().task.unwrap().id, task.id);
    // A different call on a task that is not failed or canceled is refused.
    assert_eq!(
        code(retry(&mut c, &ws, &task.id, "retry-2").await),
        Some(Code::FailedPrecondition)
    );

    let _worker = app.worker(&db, 2, Duration::ZERO).await;
    let done = c.wait_terminal(&ws, &task.id).await;
    assert_eq!(done.status, pb::TaskStatus::Succeeded as i32);
    let owner = db.owner_pool().await;
    let retried_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE action = 'task.retried' AND resource_id = $1::uuid",
    )
    .bind(&task.id)
    .fetch_one(&owner)
    .await
    .unwrap();
    assert_eq!(retried_events, 1);
    // A succeeded task is not retried.
    assert_eq!(
        code(retry(&mut c, &ws, &task.id, "retry-3").await),
        Some(Code::FailedPrecondition)
    );
}

#[tokio::test]
async fn retry_is_refused_for_unknown_tasks_bad_ids_and_deleted_agents() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("retry-refused").await;
    let agent = c.echo_agent(&ws, "coder").await;
    let task = c.task(&ws, &agent.id, "orphan").await;
    assert_eq!(
        code(retry(&mut c, &ws, "not-a-uuid", "").await),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        code(retry(&mut c, &ws, &uuid::Uuid::now_v7().to_string(), "").await),
        Some(Code::NotFound)
    );
    // Deleting the agent cancels its pending task; the task cannot come back without it.
    c.agents
        .delete_agent(pb::DeleteAgentRequest {
            workspace_id: ws.clone(),
            id: agent.id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        c.get_task(&ws, &task.id).await.status,
        pb::TaskStatus::Canceled as i32
    );
    assert_eq!(
        code(retry(&mut c, &ws, &task.id, "").await),
        Some(Code::FailedPrecondition)
    );
    // A viewer may not retry.
    let mut viewer = app.with_key(&ws, pb::WorkspaceRole::Viewer).await;
    assert_eq!(
        code(retry(&mut viewer, &ws, &task.id, "").await),
        Some(Code::PermissionDenied)
    );
}

#[tokio::test]
async fn required_worker_labels_are_copied_to_tasks_and_route_them() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("labels").await;
    let agent = c
        .agents
        .create_agent(pb::CreateAgentRequest {
            workspace_id: ws.clone(),
            agent: Some(pb::Agent {
                name: "gpu".to_owned(),
                provider: pb::Provider::Echo.into(),
                model: "echo-1".to_owned(),
                required_worker_labels: [("gpu".to_owned(), "a100".to_owned())].into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert_eq!(agent.required_worker_labels["gpu"], "a100");
    let single = c.task(&ws, &agent.id, "one").await;
    let batch = c
        .tasks
        .batch_create_tasks(pb::BatchCreateTasksRequest {
            workspace_id: ws.clone(),
            requests: vec![pb::CreateTaskRequest {
                workspace_id: ws.clone(),
                agent_id: agent.id.clone(),
                input: vec![user("two")],
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .tasks
        .remove(0);
    let owner = db.owner_pool().await;
    let required = |id: String| {
        let owner = owner.clone();
        async move {
            sqlx::query_scalar::<_, serde_json::Value>(
                "SELECT required_labels FROM tasks WHERE id = $1::uuid",
            )
            .bind(id)
            .fetch_one(&owner)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        required(single.id.clone()).await,
        serde_json::json!({"gpu": "a100"})
    );
    assert_eq!(
        required(batch.id.clone()).await,
        serde_json::json!({"gpu": "a100"})
    );

    // An unlabelled worker leaves them; the agent's requirement changes, and the pending
    // tasks follow it to the worker that has the new label.
    let _plain = app.worker(&db, 4, Duration::ZERO).await;
    c.agents
        .update_agent(pb::UpdateAgentRequest {
            workspace_id: ws.clone(),
            agent: Some(pb::Agent {
                id: agent.id.clone(),
                required_worker_labels: [("gpu".to_owned(), "h100".to_owned())].into(),
                ..Default::default()
            }),
            update_mask: mask("required_worker_labels"),
            request_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        required(single.id.clone()).await,
        serde_json::json!({"gpu": "h100"})
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.get_task(&ws, &single.id).await.status,
        pb::TaskStatus::Pending as i32,
        "the unlabelled worker did not take it"
    );
    let _gpu = app
        .worker_with(&db, 4, Duration::ZERO, |config| {
            config.labels = WorkerLabels::parse("gpu=h100,region=eu").unwrap();
        })
        .await;
    for id in [&single.id, &batch.id] {
        let done = c.wait_terminal(&ws, id).await;
        assert_eq!(done.status, pb::TaskStatus::Succeeded as i32);
    }

    // Label keys follow the label rules.
    let bad = c
        .agents
        .create_agent(pb::CreateAgentRequest {
            workspace_id: ws.clone(),
            agent: Some(pb::Agent {
                name: "bad".to_owned(),
                provider: pb::Provider::Echo.into(),
                model: "echo-1".to_owned(),
                required_worker_labels: [("GPU".to_owned(), "x".to_owned())].into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await;
    assert_eq!(code(bad), Some(Code::InvalidArgument));
}

#[tokio::test]
async fn only_the_platform_admin_sets_a_workspace_cap_on_running_tasks() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("capped").await;
    let update = |cap: i32| pb::UpdateWorkspaceRequest {
        workspace: Some(pb::Workspace {
            id: ws.clone(),
            max_running_tasks: cap,
            ..Default::default()
        }),
        update_mask: mask("max_running_tasks"),
        request_id: String::new(),
    };
    let capped = c
        .workspaces
        .update_workspace(update(2))
        .await
        .unwrap()
        .into_inner()
        .workspace
        .unwrap();
    assert_eq!(capped.max_running_tasks, 2);
    assert_eq!(
        code(c.workspaces.update_workspace(update(-1)).await),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        code(c.workspaces.update_workspace(update(1_000_001)).await),
        Some(Code::InvalidArgument)
    );
    // The workspace's own admin may change its name, not its cap.
    let mut own_admin = app.with_key(&ws, pb::WorkspaceRole::Admin).await;
    assert_eq!(
        code(own_admin.workspaces.update_workspace(update(100)).await),
        Some(Code::PermissionDenied)
    );
    let got = c
        .workspaces
        .get_workspace(pb::GetWorkspaceRequest { id: ws.clone() })
        .await
        .unwrap()
        .into_inner()
        .workspace
        .unwrap();
    assert_eq!(got.max_running_tasks, 2);
    // 0 lifts the cap.
    let lifted = c
        .workspaces
        .update_workspace(update(0))
        .await
        .unwrap()
        .into_inner()
        .workspace
        .unwrap();
    assert_eq!(lifted.max_running_tasks, 0);

    // With a cap of 1 and room for 8 on the worker, tasks still run, one at a time.
    c.workspaces.update_workspace(update(1)).await.unwrap();
    let agent = c.echo_agent(&ws, "coder").await;
    let tasks = [
        c.task(&ws, &agent.id, "a").await,
        c.task(&ws, &agent.id, "b").await,
        c.task(&ws, &agent.id, "c").await,
    ];
    let _worker = app.worker(&db, 8, Duration::from_millis(20)).await;
    for task in &tasks {
        assert_eq!(
            c.wait_terminal(&ws, &task.id).await.status,
            pb::TaskStatus::Succeeded as i32
        );
    }
    let owner = db.owner_pool().await;
    // No two of its attempts overlapped: each started after the one before had ended.
    let overlaps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tasks a JOIN tasks b \
           ON a.tenant_id = b.tenant_id AND a.id < b.id \
         WHERE a.tenant_id = $1::uuid \
           AND a.started_at < b.ended_at AND b.started_at < a.ended_at",
    )
    .bind(&ws)
    .fetch_one(&owner)
    .await
    .unwrap();
    assert_eq!(overlaps, 0);
}

#[tokio::test]
async fn a_workspace_that_floods_the_queue_does_not_hold_back_another() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let flood = c.workspace("flood").await;
    let flood_agent = c.echo_agent(&flood, "bulk").await;
    for _ in 0..2 {
        let requests = (0..1000)
            .map(|i| pb::CreateTaskRequest {
                workspace_id: flood.clone(),
                agent_id: flood_agent.id.clone(),
                input: vec![user(&format!("bulk {i}"))],
                ..Default::default()
            })
            .collect();
        c.tasks
            .batch_create_tasks(pb::BatchCreateTasksRequest {
                workspace_id: flood.clone(),
                requests,
            })
            .await
            .unwrap();
    }
    let few = c.workspace("few").await;
    let few_agent = c.echo_agent(&few, "small").await;
    let mine = [
        c.task(&few, &few_agent.id, "one").await,
        c.task(&few, &few_agent.id, "two").await,
        c.task(&few, &few_agent.id, "three").await,
    ];

    let _worker = app.worker(&db, 4, Duration::from_millis(5)).await;
    for task in &mine {
        assert_eq!(
            c.wait_terminal(&few, &task.id).await.status,
            pb::TaskStatus::Succeeded as i32
        );
    }
    // By then the flood has barely started: the later workspace's tasks were dealt in with
    // the flood's first ones instead of waiting behind 2,000 of them.
    let owner = db.owner_pool().await;
    let flood_started: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tasks WHERE tenant_id = $1::uuid AND status <> 'pending'",
    )
    .bind(&flood)
    .fetch_one(&owner)
    .await
    .unwrap();
    assert!(
        flood_started < 1000,
        "{flood_started} of the flood's tasks started before the other workspace's three ended"
    );
}
