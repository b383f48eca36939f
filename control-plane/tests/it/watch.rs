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
    let ws = c1.workspace("replicas").await;
    let mut c2 = second.with_key(&ws, pb::WorkspaceRole::Member).await;
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

#[tokio::test]
async fn a_stalled_subscriber_holds_at_most_8_mib_of_notices() {
    use agentplane_control_plane::fanout::Fanout;
    use tokio::sync::broadcast::error::TryRecvError;

    let db = TestDb::new().await;
    let pool = sqlx::PgPool::connect(&db.app_url()).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let fanout = Fanout::start(&pool, stop.clone()).await.unwrap();
    // A watcher whose client stopped reading stops receiving too.
    let mut stalled = fanout.subscribe();

    // 1,500 output notices of 7,800 bytes of text each (NOTIFY's payload limit is 8,000
    // bytes): about 11 MiB in all.
    const SENT: usize = 1500;
    const TEXT: usize = 7800;
    let owner = db.owner_pool().await;
    sqlx::query(
        "SELECT pg_notify('agentplane_task_output', json_build_object( \
             't', gen_random_uuid(), 'k', gen_random_uuid(), 'a', 1, 'i', i, \
             'x', repeat('x', $1))::text) \
         FROM generate_series(1, $2) AS i",
    )
    .bind(TEXT as i32)
    .bind(SENT as i32)
    .execute(&owner)
    .await
    .unwrap();
    for _ in 0..600 {
        if stalled.len() >= SENT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stalled.len() >= SENT, "every notice was broadcast");

    // What the stalled receiver can still read is what the fan-out keeps for it.
    let mut skipped = 0;
    let mut kept = 0;
    let mut held_bytes = 0;
    loop {
        match stalled.try_recv() {
            Ok(notice) => {
                kept += 1;
                held_bytes += std::mem::size_of_val(&notice);
                if let agentplane_control_plane::fanout::Notice::TaskOutput {
                    text: Some(text),
                    ..
                } = &notice
                {
                    held_bytes += text.len();
                }
            }
            Err(TryRecvError::Lagged(n)) => skipped += n as usize,
            Err(TryRecvError::Empty) => break,
            Err(error) => panic!("{error}"),
        }
    }
    assert_eq!(kept + skipped, SENT);
    assert!(
        held_bytes <= 8 * 1024 * 1024,
        "a stalled subscriber holds {kept} notices, {held_bytes} bytes"
    );
    assert!(kept > 0, "it then catches up from the newest");
    stop.cancel();
    pool.close().await;
}

#[tokio::test]
async fn a_stream_past_the_servers_cap_is_refused_until_one_closes() {
    let db = TestDb::new().await;
    let app = TestApp::spawn_with(&db, |config| config.max_streams = 1).await;
    let mut c = app.admin().await;
    let ws = c.workspace("cap").await;
    let watch = |c: &mut Clients| {
        let mut events = c.events.clone();
        let ws = ws.clone();
        async move {
            events
                .watch_events(pb::WatchEventsRequest {
                    workspace_id: ws,
                    ..Default::default()
                })
                .await
        }
    };
    let first = watch(&mut c).await.unwrap().into_inner();
    let refused = watch(&mut c).await.expect_err("the cap is one stream");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    let details = tonic_types::StatusExt::get_error_details(&refused);
    assert!(details.quota_failure().is_some(), "{refused:?}");
    assert!(details.retry_info().is_some(), "{refused:?}");

    // Closing the first stream gives its slot back (once the server notices).
    drop(first);
    let mut reopened = None;
    for _ in 0..100 {
        if let Ok(stream) = watch(&mut c).await {
            reopened = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened.is_some(), "the slot came back");
    app.stop().await;
}
