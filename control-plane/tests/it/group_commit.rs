//! CreateTask's group commit: concurrent calls share transactions, and each still gets
//! exactly the answer it would get alone.

use std::collections::{HashMap, HashSet};

use agentplane_proto::v1 as pb;
use tonic::Code;

use crate::app::{Clients, TestApp, user};
use crate::pg::TestDb;

fn request(ws: &str, agent_id: &str, prompt: &str, request_id: &str) -> pb::CreateTaskRequest {
    pb::CreateTaskRequest {
        workspace_id: ws.to_owned(),
        agent_id: agent_id.to_owned(),
        input: vec![user(prompt)],
        request_id: request_id.to_owned(),
        ..Default::default()
    }
}

/// Sends every request at once, each on its own client clone; answers in request order.
async fn all_at_once(
    c: &Clients,
    requests: Vec<pb::CreateTaskRequest>,
) -> Vec<Result<pb::Task, tonic::Status>> {
    let calls = requests.into_iter().map(|request| {
        let mut tasks = c.tasks.clone();
        tokio::spawn(async move {
            tasks
                .create_task(request)
                .await
                .map(|response| response.into_inner().task.unwrap())
        })
    });
    let mut answers = Vec::new();
    for call in futures::future::join_all(calls).await {
        answers.push(call.unwrap());
    }
    answers
}

#[tokio::test]
async fn concurrent_creates_share_commits_and_each_gets_its_own_answer() {
    const CALLS: usize = 64;
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("grouped").await;
    let agent = c.echo_agent(&ws, "coder").await;
    let owner = db.owner_pool().await;

    // Valid calls at once share transactions: tasks created in one transaction share its
    // id (xmin).
    let shared: Vec<pb::CreateTaskRequest> = (0..CALLS)
        .map(|i| {
            request(
                &ws,
                &agent.id,
                &format!("shared {i}"),
                &format!("shared-{i}"),
            )
        })
        .collect();
    for answer in all_at_once(&c, shared).await {
        answer.unwrap();
    }
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT xmin::text) FROM tasks WHERE tenant_id = $1::uuid",
    )
    .bind(&ws)
    .fetch_one(&owner)
    .await
    .unwrap();
    assert!(
        (transactions as usize) < CALLS,
        "{CALLS} tasks in {transactions} transactions"
    );

    // Among the next ones: one call naming an agent that does not exist, and a request id
    // sent by three calls (a client retrying while its first call is still under way).
    let missing_agent = uuid::Uuid::now_v7().to_string();
    let mut requests: Vec<pb::CreateTaskRequest> = (0..CALLS)
        .map(|i| request(&ws, &agent.id, &format!("task {i}"), &format!("call-{i}")))
        .collect();
    requests[10] = request(&ws, &missing_agent, "lost", "call-lost");
    requests[20].request_id = "retried".to_owned();
    requests[21] = request(&ws, &agent.id, "task 20", "retried");
    requests[22] = request(&ws, &agent.id, "task 20", "retried");
    let answers = all_at_once(&c, requests.clone()).await;

    let mut ids = HashSet::new();
    for (i, answer) in answers.iter().enumerate() {
        if i == 10 {
            let status = answer.as_ref().unwrap_err();
            assert_eq!(status.code(), Code::NotFound, "{status:?}");
            continue;
        }
        let task = answer
            .as_ref()
            .unwrap_or_else(|status| panic!("call {i}: {status:?}"));
        assert_eq!(task.request_id, requests[i].request_id);
        ids.insert(task.id.clone());
    }
    let retried: HashSet<&str> = answers[20..=22]
        .iter()
        .map(|answer| answer.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(retried.len(), 1, "one task for the retried request id");
    assert_eq!(ids.len(), CALLS - 3, "one task per distinct request id");
    // The bad call's group was split, not undone: its other calls still shared commits.
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT xmin::text) FROM tasks \
         WHERE tenant_id = $1::uuid AND request_id NOT LIKE 'shared-%'",
    )
    .bind(&ws)
    .fetch_one(&owner)
    .await
    .unwrap();
    assert!(
        (transactions as usize) < ids.len(),
        "{} tasks in {transactions} transactions",
        ids.len()
    );

    // Each task has its own transcript and one `task.created` event with its request id.
    let created: Vec<(uuid::Uuid, String, String)> = sqlx::query_as(
        "SELECT resource_id, request_id, actor FROM events \
         WHERE tenant_id = $1::uuid AND action = 'task.created' \
           AND request_id NOT LIKE 'shared-%'",
    )
    .bind(&ws)
    .fetch_all(&owner)
    .await
    .unwrap();
    assert_eq!(created.len(), ids.len());
    let by_task: HashMap<String, String> = created
        .iter()
        .map(|(task, request_id, _)| (task.to_string(), request_id.clone()))
        .collect();
    for answer in answers.iter().flatten() {
        assert_eq!(by_task[&answer.id], answer.request_id);
        let transcript: Vec<String> = sqlx::query_scalar(
            "SELECT content FROM task_messages WHERE task_id = $1::uuid ORDER BY position",
        )
        .bind(&answer.id)
        .fetch_all(&owner)
        .await
        .unwrap();
        let asked = requests
            .iter()
            .find(|r| r.request_id == answer.request_id)
            .unwrap();
        // The agent's system prompt, then the call's own input.
        assert_eq!(transcript.len(), 2, "{transcript:?}");
        assert_eq!(transcript[1], asked.input[0].content);
    }

    app.stop().await;
}

#[tokio::test]
async fn a_group_of_several_workspaces_keeps_each_task_in_its_own() {
    const PER_WORKSPACE: usize = 16;
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut a = app.admin().await;
    let ws_a = a.workspace("group a").await;
    let agent_a = a.echo_agent(&ws_a, "coder").await;
    let mut b = app.admin().await;
    let ws_b = b.workspace("group b").await;
    let agent_b = b.echo_agent(&ws_b, "coder").await;

    let calls_a = (0..PER_WORKSPACE).map(|i| request(&ws_a, &agent_a.id, "a", &format!("a-{i}")));
    let calls_b = (0..PER_WORKSPACE).map(|i| request(&ws_b, &agent_b.id, "b", &format!("b-{i}")));
    // B's agent named in A's workspace: not found there, whatever B's calls in the group.
    let crossing = request(&ws_a, &agent_b.id, "crossing", "crossing");
    let (answers_a, answers_b, crossing) = tokio::join!(
        all_at_once(&a, calls_a.collect()),
        all_at_once(&b, calls_b.collect()),
        all_at_once(&a, vec![crossing]),
    );
    assert_eq!(crossing[0].as_ref().unwrap_err().code(), Code::NotFound);
    for (answers, mine, theirs, other) in [
        (&answers_a, &ws_a, &ws_b, &mut b),
        (&answers_b, &ws_b, &ws_a, &mut a),
    ] {
        for answer in answers {
            let task = answer.as_ref().unwrap();
            assert_eq!(&task.workspace_id, mine);
            // The other workspace's key cannot see it, not even by naming it in its own.
            let status = other
                .tasks
                .get_task(pb::GetTaskRequest {
                    workspace_id: theirs.clone(),
                    id: task.id.clone(),
                })
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::NotFound);
        }
    }
    let owner = db.owner_pool().await;
    let misplaced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events e JOIN tasks t ON t.id = e.resource_id \
         WHERE e.action = 'task.created' AND e.tenant_id <> t.tenant_id",
    )
    .fetch_one(&owner)
    .await
    .unwrap();
    assert_eq!(misplaced, 0, "every event is in its task's workspace");
    app.stop().await;
}
