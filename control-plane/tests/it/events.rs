//! WatchEvents: replay from a cursor, then tail live; resume without loss or repetition.

use std::time::Duration;

use agentplane_proto::v1 as pb;

use crate::app::TestApp;
use crate::pg::TestDb;

async fn next_event(stream: &mut tonic::Streaming<pb::WatchEventsResponse>) -> pb::Event {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .event
        .unwrap()
}

#[tokio::test]
async fn watch_events_replays_then_tails_and_resumes_from_a_cursor() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("events").await;
    let agent = c.echo_agent(&ws, "coder").await;

    let mut stream = c
        .events
        .watch_events(pb::WatchEventsRequest {
            workspace_id: ws.clone(),
            after_cursor: String::new(),
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_event(&mut stream).await.action, "workspace.created");
    let agent_created = next_event(&mut stream).await;
    assert_eq!(agent_created.action, "agent.created");

    // Live: a new event arrives on the open stream.
    let task = c.task(&ws, &agent.id, "tail me").await;
    let live = next_event(&mut stream).await;
    assert_eq!(
        (live.action.as_str(), live.resource_id.as_str()),
        ("task.created", task.id.as_str())
    );
    drop(stream);

    // Resume after the agent event: the next one is the task's, with nothing repeated.
    let mut resumed = c
        .events
        .watch_events(pb::WatchEventsRequest {
            workspace_id: ws.clone(),
            after_cursor: agent_created.cursor.clone(),
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_event(&mut resumed).await.id, live.id);

    // Filters apply to the tail too.
    let mut only_tasks = c
        .events
        .watch_events(pb::WatchEventsRequest {
            workspace_id: ws.clone(),
            after_cursor: String::new(),
            filter: Some(pb::EventFilter {
                resource_type: "task".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_event(&mut only_tasks).await.resource_id, task.id);
    c.tasks
        .cancel_task(pb::CancelTaskRequest {
            workspace_id: ws.clone(),
            id: task.id.clone(),
            request_id: "req-9".into(),
        })
        .await
        .unwrap();
    let canceled = next_event(&mut only_tasks).await;
    assert_eq!(canceled.action, "task.canceled");
    assert_eq!(canceled.request_id, "req-9");
    assert_eq!(canceled.actor, "platform-admin");
    app.stop().await;
}
