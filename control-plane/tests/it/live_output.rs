//! Live output: published to watchers as it arrives, stored in batches, fenced like before.

use std::time::Duration;

use agentplane_proto::v1 as pb;
use pb::watch_task_response::Kind;

use crate::app::TestApp;
use crate::pg::TestDb;
use crate::worker_channel::{delta, running_task};

/// Reads deltas from a watch stream until `want` bytes of text arrived.
async fn watched_text(stream: &mut tonic::Streaming<pb::WatchTaskResponse>, want: usize) -> String {
    let mut text = String::new();
    while text.len() < want {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the watcher keeps getting deltas")
            .unwrap()
            .expect("the stream stays open");
        match message.kind {
            Some(Kind::Delta(delta)) => text.push_str(&delta.text),
            Some(Kind::Snapshot(snapshot)) => text.push_str(&snapshot.output),
            _ => {}
        }
    }
    text
}

#[tokio::test]
async fn trickling_deltas_reach_a_watcher_on_another_replica_and_are_stored_in_batches() {
    const DELTAS: i64 = 40;
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let other_replica = TestApp::spawn(&db).await;
    let (ws, task, mut session) = running_task(&db, &app, "trickle").await;
    let mut c = other_replica.with_key(&ws, pb::WorkspaceRole::Member).await;
    let mut stream = c
        .tasks
        .watch_task(pb::WatchTaskRequest {
            workspace_id: ws.clone(),
            id: task.clone(),
        })
        .await
        .unwrap()
        .into_inner();

    // One delta every 5 ms, as a fast provider streams (the worker coalesces to at most one
    // message per 20 ms; this is faster).
    let mut expected = String::new();
    for index in 0..DELTAS {
        let text = format!("<{index}>");
        expected.push_str(&text);
        session.send(delta(&ws, &task, index, text)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(watched_text(&mut stream, expected.len()).await, expected);
    session.settle(&ws).await;

    // Stored: every delta, in far fewer transactions than deltas (rows written by one
    // transaction share its id, xmin).
    let owner = db.owner_pool().await;
    let (rows, transactions): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT xmin::text) FROM task_output_chunks \
         WHERE task_id = $1::uuid",
    )
    .bind(&task)
    .fetch_one(&owner)
    .await
    .unwrap();
    assert_eq!(rows, DELTAS);
    assert!(
        transactions <= DELTAS / 4,
        "{rows} deltas were stored by {transactions} transactions"
    );
    app.stop().await;
    other_replica.stop().await;
}

#[tokio::test]
async fn a_worker_cannot_show_output_in_an_attempt_it_does_not_hold() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let (ws, task, _holder) = running_task(&db, &app, "forged").await;
    // Another worker, holding nothing, names the running attempt.
    let credential = app.worker_credential().await;
    let mut forger = crate::session::Session::open(&app, &credential).await;
    let mut c = app.with_key(&ws, pb::WorkspaceRole::Member).await;
    let mut stream = c
        .tasks
        .watch_task(pb::WatchTaskRequest {
            workspace_id: ws.clone(),
            id: task.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(first.kind, Some(Kind::Snapshot(_))), "{first:?}");
    for index in 0..10 {
        forger
            .send(delta(&ws, &task, index, format!("forged {index} ")))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    forger.settle(&ws).await;

    // Nothing reached the watcher, and nothing was stored.
    let nothing = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
    assert!(nothing.is_err(), "the watcher was shown {nothing:?}");
    let owner = db.owner_pool().await;
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM task_output_chunks WHERE task_id = $1::uuid")
            .bind(&task)
            .fetch_one(&owner)
            .await
            .unwrap();
    assert_eq!(stored, 0);
    app.stop().await;
}
