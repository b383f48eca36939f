//! WatchTask: snapshot then live deltas, across replicas, and across reconnects.

use std::time::Duration;

use agentplane_proto::v1 as pb;
use pb::watch_task_response::Kind;

use crate::app::{Clients, TestApp};
use crate::pg::TestDb;

/// What a watcher has seen so far.
#[derive(Default, Debug)]
struct Seen {
    output: String,
    next_index: i64,
    deltas: usize,
    last: Option<pb::Task>,
}

impl Seen {
    fn apply(&mut self, message: pb::WatchTaskResponse) {
        match message.kind.unwrap() {
            Kind::Snapshot(snapshot) => {
                self.output = snapshot.output;
                self.next_index = snapshot.next_delta_index;
                self.last = snapshot.task;
            }
            Kind::Delta(delta) => {
                assert_eq!(
                    delta.index, self.next_index,
                    "deltas arrive in order without gaps"
                );
                self.next_index += 1;
                self.deltas += 1;
                self.output.push_str(&delta.text);
            }
            Kind::Task(task) => {
                if Some(task.attempt) != self.last.as_ref().map(|t| t.attempt) {
                    self.output.clear();
                    self.next_index = 0;
                }
                self.last = Some(task);
            }
        }
    }
}

async fn watch(c: &mut Clients, ws: &str, id: &str) -> tonic::Streaming<pb::WatchTaskResponse> {
    c.tasks
        .watch_task(pb::WatchTaskRequest {
            workspace_id: ws.to_owned(),
            id: id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn watch_on_a_second_replica_sees_output_produced_through_the_first() {
    let db = TestDb::new().await;
    let first = TestApp::spawn(&db).await;
    let second = TestApp::spawn(&db).await;
    let mut c1 = first.admin().await;
    let mut c2 = second.admin().await;
    let ws = c1.workspace("replicas").await;
    let agent = c1.echo_agent(&ws, "coder").await;
    let task = c1
        .task(&ws, &agent.id, "stream me across replicas please")
        .await;

    // Watch through the second replica before any worker exists; the worker reports to the first.
    let mut stream = watch(&mut c2, &ws, &task.id).await;
    let worker = first.worker(&db, 2, Duration::from_millis(10)).await;
    let mut seen = Seen::default();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .unwrap()
        .unwrap()
    {
        seen.apply(message);
    }
    let last = seen.last.clone().unwrap();
    assert_eq!(last.status, pb::TaskStatus::Succeeded as i32);
    assert!(seen.deltas > 3, "output arrived as live deltas: {seen:?}");
    assert_eq!(seen.output, last.output);
    assert_eq!(last.output, c1.get_task(&ws, &task.id).await.output);
    worker.shutdown().await;
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_watcher_that_reconnects_loses_nothing() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let worker = app.worker(&db, 2, Duration::from_millis(25)).await;
    let mut c = app.admin().await;
    let ws = c.workspace("reconnect").await;
    let agent = c.echo_agent(&ws, "coder").await;
    let task = c
        .task(
            &ws,
            &agent.id,
            &"a reasonably long prompt so the echo takes a while ".repeat(3),
        )
        .await;

    // Read a few deltas, then drop the stream mid-task.
    let mut stream = watch(&mut c, &ws, &task.id).await;
    let mut before = Seen::default();
    while before.deltas < 3 {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        before.apply(message);
    }
    drop(stream);
    tokio::time::sleep(Duration::from_millis(150)).await;

    // Reconnect: the snapshot carries everything produced meanwhile.
    let mut stream = watch(&mut c, &ws, &task.id).await;
    let mut after = Seen::default();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .unwrap()
        .unwrap()
    {
        after.apply(message);
    }
    let last = after.last.clone().unwrap();
    assert_eq!(last.status, pb::TaskStatus::Succeeded as i32);
    assert!(
        after.output.starts_with(&before.output),
        "{after:?} vs {before:?}"
    );
    assert_eq!(after.output, last.output);

    // Watching a finished task yields its snapshot and ends.
    let mut stream = watch(&mut c, &ws, &task.id).await;
    let mut finished = Seen::default();
    while let Some(message) = stream.message().await.unwrap() {
        finished.apply(message);
    }
    assert_eq!(
        finished.output, last.output,
        "a finished task's snapshot carries its answer"
    );
    assert_eq!(finished.last.unwrap().output, last.output);
    worker.shutdown().await;
    app.stop().await;
}

#[tokio::test]
async fn output_too_large_for_a_notification_after_escaping_still_streams() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("escapes").await;
    let agent = c.echo_agent(&ws, "coder").await;
    // One 7,000-byte token of quotes becomes a 14,000-byte JSON string: over NOTIFY's limit.
    let quotes = "\"".repeat(7000);
    let task = c.task(&ws, &agent.id, &quotes).await;
    let mut stream = watch(&mut c, &ws, &task.id).await;
    let worker = app.worker(&db, 1, Duration::from_millis(1)).await;
    let mut seen = Seen::default();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .unwrap()
        .unwrap()
    {
        seen.apply(message);
    }
    let last = seen.last.clone().unwrap();
    assert_eq!(last.status, pb::TaskStatus::Succeeded as i32, "{last:?}");
    assert!(last.output.contains(&quotes));
    assert!(
        seen.output == last.output,
        "the deltas add up to the answer: watched {} of {} bytes",
        seen.output.len(),
        last.output.len()
    );
    worker.shutdown().await;
    app.stop().await;
}
