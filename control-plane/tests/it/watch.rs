//! WatchTask: snapshot then live deltas, across replicas, and across reconnects.

use std::time::Duration;

use agentplane_proto::v1 as pb;
use pb::watch_task_response::Kind;
use uuid::Uuid;

use crate::app::{Clients, TestApp};
use crate::events::{next_event, watch_from_the_start};
use crate::pg::TestDb;

/// What a watcher has seen so far, assembled by the client's rule: deltas append in
/// index order, a reset clears the attempt's text and says the next delta's index.
#[derive(Default, Debug)]
pub(crate) struct Seen {
    pub(crate) output: String,
    pub(crate) next_index: i64,
    pub(crate) deltas: usize,
    pub(crate) last: Option<pb::Task>,
}

impl Seen {
    pub(crate) fn apply(&mut self, message: pb::WatchTaskResponse) {
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
            Kind::Reset(reset) => {
                self.output.clear();
                self.next_index = reset.index;
            }
        }
    }
}

pub(crate) async fn watch(
    c: &mut Clients,
    ws: &str,
    id: &str,
) -> tonic::Streaming<pb::WatchTaskResponse> {
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
async fn a_stalled_subscriber_holds_a_bounded_queue_and_is_told_to_resync() {
    use agentplane_control_plane::fanout::{Delivery, Fanout, Topic};
    use agentplane_core::ids::{TaskId, TenantId};
    use agentplane_core::notify::Notification;

    let db = TestDb::new().await;
    let pool = sqlx::PgPool::connect(&db.app_url()).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let fanout = Fanout::start(&pool, Duration::from_secs(10), stop.clone())
        .await
        .unwrap();
    let (tenant, task) = (TenantId(Uuid::now_v7()), TaskId(Uuid::now_v7()));
    // A watcher whose client stopped reading stops receiving too.
    let mut stalled = fanout.subscribe(Topic::Task(tenant, task));
    let mut sentinel = fanout.subscribe(Topic::Events(tenant));

    // 1,500 output notices of 7,800 bytes of text each (NOTIFY's payload limit is 8,000
    // bytes) about the watched task: about 11 MiB in all; then one about the workspace's
    // events, delivered after all of them.
    const SENT: usize = 1500;
    const TEXT: usize = 7800;
    let owner = db.owner_pool().await;
    sqlx::query(
        "SELECT pg_notify('agentplane_task_output', json_build_object( \
             't', $3::uuid, 'k', $4::uuid, 'a', 1, 'i', i, 'x', repeat('x', $1))::text) \
         FROM generate_series(1, $2) AS i",
    )
    .bind(TEXT as i32)
    .bind(SENT as i32)
    .bind(tenant.0)
    .bind(task.0)
    .execute(&owner)
    .await
    .unwrap();
    sqlx::query("SELECT pg_notify('agentplane_events', json_build_object('t', $1::uuid)::text)")
        .bind(tenant.0)
        .execute(&owner)
        .await
        .unwrap();
    let last = tokio::time::timeout(Duration::from_secs(30), sentinel.recv())
        .await
        .expect("every notice was routed");
    assert_eq!(last, Delivery::Notice(Notification::Events { tenant }));

    // What the stalled subscriber can still read is what the fan-out keeps for it.
    let mut deliveries = Vec::new();
    while let Some(delivery) = stalled.try_recv() {
        deliveries.push(delivery);
    }
    let held_bytes: usize = deliveries
        .iter()
        .map(|delivery| match delivery {
            Delivery::Notice(Notification::TaskOutput {
                text: Some(text), ..
            }) => text.len(),
            _ => 0,
        })
        .sum();
    assert!(
        held_bytes <= 8 * 1024 * 1024,
        "a stalled subscriber holds {} deliveries, {held_bytes} bytes",
        deliveries.len()
    );
    assert_eq!(
        deliveries.first(),
        Some(&Delivery::Resync),
        "it is told to re-read what it missed"
    );
    assert_eq!(fanout.lag().0, 0, "nothing stays queued");
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

#[tokio::test]
async fn idle_watchers_issue_no_queries() {
    const WATCHERS: usize = 50;
    const EVENT_WATCHERS: usize = 10;
    let db = TestDb::new().await;
    // The process's own listener probe (a query after 10 s of silence) is not a watcher's.
    let app = TestApp::spawn_with(&db, |config| {
        config.listener_probe_interval = Duration::from_secs(3600);
    })
    .await;
    let mut c = app.admin().await;
    let ws = c.workspace("idle").await;
    let agent = c.echo_agent(&ws, "coder").await;
    // No worker: the task stays pending, and nothing about it changes.
    let task = c.task(&ws, &agent.id, "nobody runs me").await;
    let mut streams = Vec::with_capacity(WATCHERS);
    for _ in 0..WATCHERS {
        let mut stream = watch(&mut c, &ws, &task.id).await;
        let first = stream.message().await.unwrap().unwrap();
        assert!(matches!(first.kind, Some(Kind::Snapshot(_))), "{first:?}");
        streams.push(stream);
    }
    // WatchEvents streams too, each at the head of the log once it has shown the task's
    // creation (until then it may still be polling for events held back behind another
    // test's open transaction).
    let mut event_streams = Vec::with_capacity(EVENT_WATCHERS);
    for _ in 0..EVENT_WATCHERS {
        let mut stream = watch_from_the_start(&mut c, &ws).await;
        while next_event(&mut stream).await.resource_id != task.id {}
        event_streams.push(stream);
    }

    // Watch the control plane's database sessions for longer than any re-read period they
    // could have had (it was 5 s): every statement they start shows in pg_stat_activity as
    // it starts. The health probe (`SELECT 1`), the batched API key `last_used_at` write and
    // the poll of revoked worker credentials are the server's own, not the watchers'.
    let owner = db.owner_pool().await;
    let since: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&owner)
        .await
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(7);
    while tokio::time::Instant::now() < deadline {
        let statements: Vec<(i32, String)> = sqlx::query_as(
            "SELECT pid, query FROM pg_stat_activity \
             WHERE datname = current_database() AND usename <> current_user \
               AND query_start > $1 AND query <> 'SELECT 1' \
               AND query NOT LIKE '%last_used_at%' \
               AND query NOT LIKE '%FROM worker_credentials WHERE revoked_at%'",
        )
        .bind(since)
        .fetch_all(&owner)
        .await
        .unwrap();
        seen.extend(statements);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen.is_empty(),
        "{WATCHERS} + {EVENT_WATCHERS} idle watchers ran statements: {seen:#?}"
    );
    // They still work: a change reaches every one of them.
    c.tasks
        .cancel_task(pb::CancelTaskRequest {
            workspace_id: ws.clone(),
            id: task.id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    for stream in &mut streams {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Some(Kind::Task(task)) = message.kind else {
            panic!("expected the canceled task, got {message:?}");
        };
        assert_eq!(task.status, pb::TaskStatus::Canceled as i32);
    }
    for stream in &mut event_streams {
        assert_eq!(next_event(stream).await.action, "task.canceled");
    }
    app.stop().await;
}
