//! BatchCreateTasks: all or none, in order, idempotent per item, and confined to its
//! workspace.

use agentplane_proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::app::{Clients, TestApp, user};
use crate::pg::TestDb;

fn item(agent_id: &str, prompt: &str, request_id: &str) -> pb::CreateTaskRequest {
    pb::CreateTaskRequest {
        agent_id: agent_id.to_owned(),
        input: vec![user(prompt)],
        request_id: request_id.to_owned(),
        ..Default::default()
    }
}

async fn batch(
    c: &mut Clients,
    workspace_id: &str,
    requests: Vec<pb::CreateTaskRequest>,
) -> Result<Vec<pb::Task>, tonic::Status> {
    c.tasks
        .batch_create_tasks(pb::BatchCreateTasksRequest {
            workspace_id: workspace_id.to_owned(),
            requests,
        })
        .await
        .map(|response| response.into_inner().tasks)
}

async fn task_count(c: &mut Clients, workspace_id: &str) -> usize {
    c.tasks
        .list_tasks(pb::ListTasksRequest {
            workspace_id: workspace_id.to_owned(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks
        .len()
}

fn violated_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|v| v.field.clone())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_batch_creates_every_task_in_request_order_with_its_own_transcript() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("batch").await;
    let agent = c.echo_agent(&ws, "coder").await;
    let requests = (0..50)
        .map(|n| item(&agent.id, &format!("task {n}"), ""))
        .collect();
    let tasks = batch(&mut c, &ws, requests).await.unwrap();
    assert_eq!(tasks.len(), 50);
    for (n, task) in tasks.iter().enumerate() {
        assert_eq!(task.status, pb::TaskStatus::Pending as i32);
        let messages = c.transcript(&ws, &task.id).await;
        let last = messages.last().unwrap();
        let content = &last.message.as_ref().unwrap().content;
        assert_eq!(content, &format!("task {n}"), "task {n} has its own input");
    }
    assert_eq!(task_count(&mut c, &ws).await, 50);
    app.stop().await;
}

#[tokio::test]
async fn an_invalid_item_creates_nothing_and_every_violation_is_named_by_item() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("invalid").await;
    let agent = c.echo_agent(&ws, "coder").await;
    let mut empty = item(&agent.id, "x", "");
    empty.input.clear();
    let mut priority = item(&agent.id, "x", "");
    priority.priority = 5000;
    let refused = batch(
        &mut c,
        &ws,
        vec![
            item(&agent.id, "fine", "r-1"),
            empty,
            priority,
            item(&agent.id, "again", "r-1"),
        ],
    )
    .await
    .expect_err("the batch is invalid");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let fields = violated_fields(&refused);
    for expected in [
        "requests[1].input",
        "requests[2].priority",
        "requests[3].request_id",
    ] {
        assert!(
            fields.iter().any(|f| f == expected),
            "{expected} in {fields:?}"
        );
    }
    assert_eq!(task_count(&mut c, &ws).await, 0, "all or none");

    let too_many = (0..1001).map(|_| item(&agent.id, "x", "")).collect();
    let refused = batch(&mut c, &ws, too_many)
        .await
        .expect_err("over the limit");
    assert_eq!(violated_fields(&refused), ["requests"]);
    app.stop().await;
}

#[tokio::test]
async fn a_retried_item_answers_with_the_task_its_request_id_created() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("retry").await;
    let agent = c.echo_agent(&ws, "coder").await;
    let first = batch(
        &mut c,
        &ws,
        vec![item(&agent.id, "a", "r-a"), item(&agent.id, "b", "r-b")],
    )
    .await
    .unwrap();
    let second = batch(
        &mut c,
        &ws,
        vec![item(&agent.id, "b", "r-b"), item(&agent.id, "c", "r-c")],
    )
    .await
    .unwrap();
    assert_eq!(second[0].id, first[1].id, "r-b is not created twice");
    assert_ne!(second[1].id, first[0].id);
    assert_ne!(second[1].id, first[1].id);
    assert_eq!(task_count(&mut c, &ws).await, 3);
    app.stop().await;
}

#[tokio::test]
async fn a_batch_cannot_reach_another_workspace() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    // One client per workspace: each acts with its own workspace's API key.
    let mut c = app.admin().await;
    let a = c.workspace("a").await;
    let mut cb = app.admin().await;
    let b = cb.workspace("b").await;
    let a_agent = c.echo_agent(&a, "coder").await;
    let b_agent = cb.echo_agent(&b, "coder").await;

    // B's agent is not found from A, and A's batch creates nothing.
    let refused = batch(
        &mut c,
        &a,
        vec![item(&a_agent.id, "x", ""), item(&b_agent.id, "x", "")],
    )
    .await
    .expect_err("B's agent is not A's");
    assert_eq!(refused.code(), Code::NotFound);
    // An item naming B's workspace is refused, not created there.
    let mut elsewhere = item(&b_agent.id, "x", "");
    elsewhere.workspace_id = b.clone();
    let refused = batch(&mut c, &a, vec![elsewhere])
        .await
        .expect_err("one workspace per call");
    assert_eq!(violated_fields(&refused), ["requests[0].workspace_id"]);
    assert_eq!(task_count(&mut c, &a).await, 0);
    assert_eq!(task_count(&mut cb, &b).await, 0);
    app.stop().await;
}
