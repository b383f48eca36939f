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

#[tokio::test]
async fn shutdown_does_not_wait_for_a_database_connection_held_past_the_grace_period() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("stuck").await;

    // The owner locks the workspaces table (without writing, so no other test's event
    // stream waits for it); the next call's query waits, holding a pooled connection.
    let owner = db.owner_pool().await;
    let mut lock = owner.begin().await.unwrap();
    sqlx::query("LOCK TABLE workspaces IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let mut stuck = c.workspaces.clone();
    let call = tokio::spawn(async move {
        stuck
            .get_workspace(pb::GetWorkspaceRequest { id: ws })
            .await
    });
    let mut waiting = false;
    for _ in 0..200 {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'agentplane-control-plane' AND wait_event_type = 'Lock'",
        )
        .fetch_one(&owner)
        .await
        .unwrap();
        if count > 0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(waiting, "the call's query waits on the lock");

    // The grace period (2 s here) passes with the call still waiting; closing the pool must
    // not wait for its connection (the statement timeout would end it only after 30 s).
    let stopping = std::time::Instant::now();
    assert!(
        app.stop_and_wait().await,
        "the server stopped despite a connection in use"
    );
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "{:?}",
        stopping.elapsed()
    );
    lock.rollback().await.unwrap();
    let _ = call.await;
}
