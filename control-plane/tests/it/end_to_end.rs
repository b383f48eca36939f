//! The whole path: workspace → agent → task → worker → provider → result → events.

use std::time::Duration;

use agentplane_proto::v1 as pb;

use crate::app::TestApp;
use crate::pg::TestDb;

#[tokio::test]
async fn task_runs_end_to_end_through_a_worker_and_is_recorded() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let worker = app.worker(&db, 4, Duration::from_millis(1)).await;
    let mut c = app.admin().await;

    let ws = c.workspace("acme").await;
    let agent = c.echo_agent(&ws, "coder").await;
    let task = c.task(&ws, &agent.id, "hello there, agent").await;
    assert_eq!(task.status, pb::TaskStatus::Pending as i32);

    let done = c.wait_terminal(&ws, &task.id).await;
    assert_eq!(done.status, pb::TaskStatus::Succeeded as i32, "{done:?}");
    assert_eq!(done.attempt, 1);
    assert!(
        done.output.contains("hello there, agent"),
        "output: {:?}",
        done.output
    );
    assert_eq!(done.worker_id, worker.worker_id().to_string());
    let usage = done.usage.unwrap();
    assert!(
        usage.input_tokens > 0 && usage.output_tokens > 0,
        "{usage:?}"
    );

    // The transcript: system prompt, input, answer.
    let transcript = c.transcript(&ws, &task.id).await;
    let roles: Vec<i32> = transcript
        .iter()
        .map(|m| m.message.as_ref().unwrap().role)
        .collect();
    assert_eq!(
        roles,
        vec![
            pb::Role::System as i32,
            pb::Role::User as i32,
            pb::Role::Assistant as i32
        ]
    );
    assert_eq!(transcript[2].message.as_ref().unwrap().content, done.output);
    assert_eq!(transcript[2].attempt, 1);

    // Every side effect is in the event log, in order. Reads only return events older than
    // every transaction still writing anywhere in the cluster (so a cursor never skips a late
    // commit); other tests hold such transactions open for seconds, so wait for the tail.
    let mut events = Vec::new();
    for _ in 0..300 {
        events = c
            .events
            .list_events(pb::ListEventsRequest {
                workspace_id: ws.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        if events.len() >= 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        vec![
            "workspace.created",
            "api_key.created",
            "agent.created",
            "task.created",
            "task.started",
            "task.model_call_started",
            "task.succeeded"
        ],
        "{events:#?}"
    );
    let succeeded = events.last().unwrap();
    assert_eq!(succeeded.resource_id, task.id);
    assert_eq!(succeeded.actor, format!("worker:{}", worker.worker_id()));

    // Usage is stored with the provider request id derived from (task, attempt, step).
    let pool = db.owner_pool().await;
    let (request_id, output_tokens): (String, i64) = sqlx::query_as(
        "SELECT provider_request_id, output_tokens FROM usage_records WHERE task_id = $1::uuid",
    )
    .bind(&task.id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(request_id.contains(&task.id), "{request_id}");
    assert_eq!(output_tokens, usage.output_tokens);

    worker.shutdown().await;
    app.stop().await;
}

#[tokio::test]
async fn create_task_twice_with_same_request_id_returns_first() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("acme").await;
    let agent = c.echo_agent(&ws, "coder").await;
    let request = pb::CreateTaskRequest {
        workspace_id: ws.clone(),
        agent_id: agent.id.clone(),
        input: vec![crate::app::user("once")],
        request_id: "retry-me-1".to_owned(),
        ..Default::default()
    };
    let first = c
        .tasks
        .create_task(request.clone())
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let second = c
        .tasks
        .create_task(request.clone())
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(first.id, second.id);
    assert_eq!(second.request_id, "retry-me-1");

    // Concurrent retries too.
    let mut handles = Vec::new();
    for _ in 0..8 {
        let mut tasks = c.tasks.clone();
        let mut request = request.clone();
        request.request_id = "retry-me-2".to_owned();
        handles.push(tokio::spawn(async move {
            tasks
                .create_task(request)
                .await
                .unwrap()
                .into_inner()
                .task
                .unwrap()
                .id
        }));
    }
    let mut ids = Vec::new();
    for handle in handles {
        ids.push(handle.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");

    // Concurrent CreateAgent retries answer with one agent too.
    let mut handles = Vec::new();
    for _ in 0..8 {
        let mut agents = c.agents.clone();
        let request = pb::CreateAgentRequest {
            workspace_id: ws.clone(),
            agent: Some(pb::Agent {
                name: "twin".into(),
                provider: pb::Provider::Echo.into(),
                model: "echo-1".into(),
                ..Default::default()
            }),
            request_id: "agent-retry".into(),
        };
        handles.push(tokio::spawn(async move {
            agents
                .create_agent(request)
                .await
                .unwrap()
                .into_inner()
                .agent
                .unwrap()
                .id
        }));
    }
    let mut agent_ids = Vec::new();
    for handle in handles {
        agent_ids.push(handle.await.unwrap());
    }
    agent_ids.dedup();
    assert_eq!(agent_ids.len(), 1, "{agent_ids:?}");

    let listed = c
        .tasks
        .list_tasks(pb::ListTasksRequest {
            workspace_id: ws.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(listed.len(), 2);
    app.stop().await;
}
