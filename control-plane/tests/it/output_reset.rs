//! Output resets: a worker withdraws an attempt's output (a model call failed after
//! streaming; a fallback answers), and every watcher, live or late, on any replica, ends with
//! deltas that add up to the answer.

use std::time::Duration;

use agentplane_proto::v1 as pb;
use pb::session_request::Kind as In;
use pb::watch_task_response::Kind;

use crate::app::{Clients, TestApp};
use crate::pg::TestDb;
use crate::watch::{Seen, watch};
use crate::worker_channel::{delta, running_task};

/// A reset of attempt 1 of `task`: its next delta has `index`.
fn reset(ws: &str, task: &str, index: i64) -> In {
    In::Output(pb::WorkerOutput {
        lease: Some(pb::LeaseRef {
            workspace_id: ws.to_owned(),
            task_id: task.to_owned(),
            attempt: 1,
        }),
        index,
        text: String::new(),
        reset: true,
    })
}

/// The next message of a watch stream.
async fn next(stream: &mut tonic::Streaming<pb::WatchTaskResponse>) -> Kind {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message within 10 s")
        .expect("the stream stays healthy")
        .expect("the stream stays open")
        .kind
        .expect("a kind")
}

fn label(kind: &Kind) -> &'static str {
    match kind {
        Kind::Snapshot(_) => "snapshot",
        Kind::Delta(_) => "delta",
        Kind::Task(_) => "task",
        Kind::Reset(_) => "reset",
    }
}

/// The snapshot a watcher connecting now gets.
async fn snapshot(c: &mut Clients, ws: &str, task: &str) -> pb::TaskSnapshot {
    let mut stream = watch(c, ws, task).await;
    match next(&mut stream).await {
        Kind::Snapshot(snapshot) => snapshot,
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

#[tokio::test]
async fn a_reset_withdraws_the_output_for_live_and_late_watchers_on_every_replica() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let other_replica = TestApp::spawn(&db).await;
    let (ws, task, mut session) = running_task(&db, &app, "fallback").await;
    let mut c = other_replica.with_key(&ws, pb::WorkspaceRole::Member).await;

    // A live watcher on the other replica sees the failed call's deltas.
    let mut live = watch(&mut c, &ws, &task).await;
    let mut seen = Seen::default();
    let mut kinds = Vec::new();
    let first = next(&mut live).await;
    kinds.push(label(&first));
    seen.apply(pb::WatchTaskResponse { kind: Some(first) });
    for (index, text) in ["wrong ", "answer ", "so far"].into_iter().enumerate() {
        let index = i64::try_from(index).unwrap();
        session.send(delta(&ws, &task, index, text.into())).await;
    }
    session.settle(&ws).await;
    while seen.deltas < 3 {
        let kind = next(&mut live).await;
        kinds.push(label(&kind));
        seen.apply(pb::WatchTaskResponse { kind: Some(kind) });
    }
    assert_eq!(seen.output, "wrong answer so far");

    // The call fails; the fallback's answer follows a reset at the next index.
    session.send(reset(&ws, &task, 3)).await;
    session.settle(&ws).await;
    let after_reset = snapshot(&mut c, &ws, &task).await;
    assert_eq!(after_reset.output, "", "the withdrawn text is gone");
    assert_eq!(after_reset.next_delta_index, 3);
    // A watcher that connects after the reset follows from there.
    let mut late = watch(&mut c, &ws, &task).await;

    session.send(delta(&ws, &task, 3, "right ".into())).await;
    session.send(delta(&ws, &task, 4, "answer".into())).await;
    // Stale and repeated resets, and a withdrawn delta resent, change nothing.
    session.send(reset(&ws, &task, 3)).await;
    session.send(reset(&ws, &task, 2)).await;
    session.send(delta(&ws, &task, 2, "so far".into())).await;
    session.settle(&ws).await;
    let stored = snapshot(&mut c, &ws, &task).await;
    assert_eq!(stored.output, "right answer");
    assert_eq!(stored.next_delta_index, 5);

    // Stored: one marker in place of the withdrawn deltas, and the cap counts only the rest.
    let owner = db.owner_pool().await;
    let rows: Vec<(i64, bool, String, i64)> = sqlx::query_as(
        "SELECT seq, reset, content, end_offset FROM task_output_chunks \
         WHERE task_id = $1::uuid ORDER BY seq",
    )
    .bind(&task)
    .fetch_all(&owner)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (2, true, String::new(), 0),
            (3, false, "right ".to_owned(), 6),
            (4, false, "answer".to_owned(), 12),
        ]
    );

    let ack = session.succeed(lease(&ws, &task), "right answer").await;
    assert!(ack.accepted, "{ack:?}");
    loop {
        let kind = next(&mut live).await;
        kinds.push(label(&kind));
        let done =
            matches!(&kind, Kind::Task(task) if task.status == pb::TaskStatus::Succeeded as i32);
        seen.apply(pb::WatchTaskResponse { kind: Some(kind) });
        if done {
            break;
        }
    }
    assert_eq!(
        kinds,
        [
            "snapshot", "delta", "delta", "delta", "reset", "delta", "delta", "task"
        ]
    );
    assert_eq!(
        seen.output, "right answer",
        "the deltas add up to the answer"
    );

    let mut late_seen = Seen::default();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(10), late.message())
        .await
        .unwrap()
        .unwrap()
    {
        late_seen.apply(message);
    }
    assert_eq!(late_seen.output, "right answer");
    assert_eq!(late_seen.last.unwrap().output, "right answer");
    app.stop().await;
    other_replica.stop().await;
}

fn lease(ws: &str, task: &str) -> pb::LeaseRef {
    pb::LeaseRef {
        workspace_id: ws.to_owned(),
        task_id: task.to_owned(),
        attempt: 1,
    }
}

#[tokio::test]
async fn a_reset_of_an_attempt_not_held_or_in_another_workspace_is_ignored() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let (ws, task, mut holder) = running_task(&db, &app, "held").await;
    let mut admin = app.admin().await;
    let other_ws = admin.workspace("elsewhere").await;
    holder.send(delta(&ws, &task, 0, "kept".into())).await;
    holder.settle(&ws).await;
    let mut c = app.with_key(&ws, pb::WorkspaceRole::Member).await;
    let mut stream = watch(&mut c, &ws, &task).await;
    let Kind::Snapshot(first) = next(&mut stream).await else {
        panic!("a snapshot first");
    };
    assert_eq!(first.output, "kept");

    // The holder names its task under another workspace; a worker holding nothing names it
    // under its own.
    holder.send(reset(&other_ws, &task, 1)).await;
    holder.settle(&other_ws).await;
    let credential = app.worker_credential().await;
    let mut forger = crate::session::Session::open(&app, &credential).await;
    forger.send(reset(&ws, &task, 1)).await;
    forger.settle(&ws).await;

    let nothing = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
    assert!(nothing.is_err(), "the watcher was shown {nothing:?}");
    let snapshot = snapshot(&mut c, &ws, &task).await;
    assert_eq!(snapshot.output, "kept");
    assert_eq!(snapshot.next_delta_index, 1);
    // The holder's own output goes on where it was.
    holder.send(delta(&ws, &task, 1, "!".into())).await;
    holder.settle(&ws).await;
    assert_eq!(snapshot_output(&mut c, &ws, &task).await, "kept!");
    app.stop().await;
}

async fn snapshot_output(c: &mut Clients, ws: &str, task: &str) -> String {
    snapshot(c, ws, task).await.output
}
