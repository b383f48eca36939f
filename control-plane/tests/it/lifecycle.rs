//! Ordered shutdown: open streams end, the server stops, nothing hangs.

use std::time::Duration;

use agentplane_proto::v1 as pb;

use crate::app::TestApp;
use crate::pg::TestDb;

#[tokio::test]
async fn shutdown_ends_open_streams_and_the_server_stops() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let addr = app.addr;
    let mut c = app.admin().await;
    let ws = c.workspace("bye").await;
    let agent = c.echo_agent(&ws, "coder").await;
    // No worker: the task stays pending and its watch stays open.
    let task = c.task(&ws, &agent.id, "never answered").await;
    let mut watch = c
        .tasks
        .watch_task(pb::WatchTaskRequest {
            workspace_id: ws.clone(),
            id: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        watch.message().await.unwrap().is_some(),
        "the snapshot arrives"
    );
    let mut events = c
        .events
        .watch_events(pb::WatchEventsRequest {
            workspace_id: ws.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(events.message().await.unwrap().is_some());

    assert!(app.stop_and_wait().await, "the server stopped on its own");
    let ended = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap();
    assert!(!matches!(ended, Ok(Some(_))), "the watch ended: {ended:?}");
    let mut drained = false;
    for _ in 0..100 {
        match tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .unwrap()
        {
            Ok(Some(_)) => continue,
            _ => {
                drained = true;
                break;
            }
        }
    }
    assert!(drained, "the event watch ended");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}
