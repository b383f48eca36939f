//! What the control plane refuses from a worker: ids, indexes and sizes that would break
//! watchers or storage, however the worker got them wrong.

use std::time::Duration;

use agentplane_core::limits::{MAX_DELTA_BYTES, MAX_OUTPUT_BYTES};
use agentplane_proto::v1 as pb;
use agentplane_worker::queue::claim_tasks;
use pb::session_request::Kind as In;
use pb::watch_task_response::Kind;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::app::{Clients, TestApp};
use crate::pg::TestDb;
use crate::session::Session;

/// A task claimed by a fresh worker id, and that worker's open session.
pub(crate) async fn running_task(
    db: &TestDb,
    app: &TestApp,
    name: &str,
) -> (String, String, Session) {
    let mut c = app.admin().await;
    let ws = c.workspace(name).await;
    let agent = c.echo_agent(&ws, "coder").await;
    let task = c.task(&ws, &agent.id, "hi").await;
    let credential = app.worker_credential().await;
    let claimed = claim_tasks(
        &db.worker_pool().await,
        credential.0,
        1,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 1);
    let session = Session::open(app, &credential).await;
    (ws, task.id, session)
}

pub(crate) fn delta(ws: &str, task: &str, index: i64, text: String) -> In {
    In::Output(pb::WorkerOutput {
        lease: Some(pb::LeaseRef {
            workspace_id: ws.to_owned(),
            task_id: task.to_owned(),
            attempt: 1,
        }),
        index,
        text,
        reset: false,
    })
}

/// The first message of a WatchTask stream.
async fn snapshot(c: &mut Clients, ws: &str, task: &str) -> pb::TaskSnapshot {
    let mut stream = c
        .tasks
        .watch_task(pb::WatchTaskRequest {
            workspace_id: ws.to_owned(),
            id: task.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a snapshot within 10 s")
        .expect("the watch stream stays healthy")
        .expect("a first message");
    match first.kind {
        Some(Kind::Snapshot(snapshot)) => snapshot,
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

#[tokio::test]
async fn an_output_index_at_the_top_of_the_range_is_refused_and_watchers_keep_working() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let (ws, task, mut session) = running_task(&db, &app, "overflow").await;
    session.send(delta(&ws, &task, 0, "ok".into())).await;
    session
        .send(delta(&ws, &task, i64::MAX, "boom".into()))
        .await;
    session.settle(&ws).await;

    let mut c = app.with_key(&ws, pb::WorkspaceRole::Member).await;
    let snapshot = snapshot(&mut c, &ws, &task).await;
    assert_eq!(snapshot.output, "ok");
    assert_eq!(snapshot.next_delta_index, 1);
    // The session survived the bad message: it still records output.
    session.send(delta(&ws, &task, 1, "!".into())).await;
    session.settle(&ws).await;
    assert_eq!(snapshot_output(&mut c, &ws, &task).await, "ok!");
    app.stop().await;
}

async fn snapshot_output(c: &mut Clients, ws: &str, task: &str) -> String {
    snapshot(c, ws, task).await.output
}

#[tokio::test]
async fn stored_output_of_an_attempt_is_capped_where_it_is_written() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let (ws, task, mut session) = running_task(&db, &app, "cap").await;
    let deltas = MAX_OUTPUT_BYTES / MAX_DELTA_BYTES + 2;
    for index in 0..deltas {
        let text = "a".repeat(MAX_DELTA_BYTES);
        session
            .send(delta(&ws, &task, i64::try_from(index).unwrap(), text))
            .await;
    }
    session.settle(&ws).await;

    let mut c = app.with_key(&ws, pb::WorkspaceRole::Member).await;
    let snapshot = snapshot(&mut c, &ws, &task).await;
    assert_eq!(snapshot.output.len(), MAX_OUTPUT_BYTES);
    assert_eq!(
        snapshot.next_delta_index,
        i64::try_from(MAX_OUTPUT_BYTES / MAX_DELTA_BYTES).unwrap()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_worker_saying_hello_with_the_nil_uuid_is_refused() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let (_, token) = app.worker_credential().await;
    let mut client = Clients::new(app.channel().await, &token).workers;
    let (send, rx) = tokio::sync::mpsc::channel(1);
    send.send(pb::SessionRequest {
        kind: Some(In::Hello(pb::WorkerHello {
            worker_id: uuid::Uuid::nil().to_string(),
            version: "test".into(),
            capacity: 4,
        })),
    })
    .await
    .unwrap();
    let refused = client
        .session(ReceiverStream::new(rx))
        .await
        .expect_err("the nil UUID is not a worker id");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_full_heartbeat_reports_each_lease_as_renewed_or_lost() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let (ws, task, mut session) = running_task(&db, &app, "beat").await;
    let held = pb::LeaseRef {
        workspace_id: ws.clone(),
        task_id: task.clone(),
        attempt: 1,
    };
    let mut leases: Vec<pb::LeaseRef> = (1..agentplane_core::limits::MAX_HEARTBEAT_LEASES)
        .map(|_| pb::LeaseRef {
            workspace_id: ws.clone(),
            task_id: uuid::Uuid::now_v7().to_string(),
            attempt: 1,
        })
        .collect();
    leases.push(held.clone());
    session
        .send(In::Heartbeat(pb::WorkerHeartbeat { leases }))
        .await;
    let ack = loop {
        let message = session.recv.message().await.unwrap().unwrap();
        if let Some(pb::session_response::Kind::HeartbeatAck(ack)) = message.kind {
            break ack;
        }
    };
    assert_eq!(ack.renewed, vec![held]);
    assert_eq!(
        ack.lost.len(),
        agentplane_core::limits::MAX_HEARTBEAT_LEASES - 1
    );
    app.stop().await;
}

#[tokio::test]
async fn deltas_out_of_order_are_refused_so_the_cap_cannot_be_skirted() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let (ws, task, mut session) = running_task(&db, &app, "gaps").await;
    // Highest index first, then downwards: each would otherwise find no running total.
    let top = i64::try_from(MAX_OUTPUT_BYTES / MAX_DELTA_BYTES + 2).unwrap();
    for index in (1..=top).rev() {
        session
            .send(delta(&ws, &task, index, "a".repeat(MAX_DELTA_BYTES)))
            .await;
    }
    session.send(delta(&ws, &task, 0, "b".into())).await;
    session.send(delta(&ws, &task, 1, "c".into())).await;
    session.settle(&ws).await;

    let mut c = app.with_key(&ws, pb::WorkspaceRole::Member).await;
    let snapshot = snapshot(&mut c, &ws, &task).await;
    assert_eq!(snapshot.output, "bc");
    assert_eq!(snapshot.next_delta_index, 2);
    app.stop().await;
}

#[tokio::test]
async fn heartbeats_renew_leases_while_results_wait_behind_a_lock() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("lanes").await;
    let agent = c.echo_agent(&ws, "coder").await;
    let blocked = c.task(&ws, &agent.id, "one").await;
    let other = c.task(&ws, &agent.id, "two").await;
    let credential = app.worker_credential().await;
    let worker = credential.0;
    let claimed = claim_tasks(&db.worker_pool().await, worker, 2, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    let mut session = Session::open(&app, &credential).await;
    let lease = |task: &str| pb::LeaseRef {
        workspace_id: ws.clone(),
        task_id: task.to_owned(),
        attempt: 1,
    };

    // Someone else holds the first task's row: recording its result has to wait.
    let owner = db.owner_pool().await;
    let mut blocker = owner.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM tasks WHERE id = $1::uuid FOR UPDATE")
        .bind(&blocked.id)
        .execute(&mut *blocker)
        .await
        .unwrap();
    session
        .send(In::Result(pb::WorkerResult {
            lease: Some(lease(&blocked.id)),
            outcome: Some(pb::worker_result::Outcome::Failure(pb::WorkerFailure {
                code: "boom".into(),
                message: String::new(),
                retryable: true,
            })),
        }))
        .await;
    session
        .send(In::Heartbeat(pb::WorkerHeartbeat {
            leases: vec![lease(&other.id)],
        }))
        .await;
    let ack = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let message = session.recv.message().await.unwrap().unwrap();
            match message.kind {
                Some(pb::session_response::Kind::HeartbeatAck(ack)) => break ack,
                Some(pb::session_response::Kind::ResultAck(ack)) => {
                    panic!("the result was recorded through the lock: {ack:?}")
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the heartbeat is answered while the result waits");
    assert_eq!(ack.renewed, vec![lease(&other.id)]);

    blocker.rollback().await.unwrap();
    let result = loop {
        let message = session.recv.message().await.unwrap().unwrap();
        if let Some(pb::session_response::Kind::ResultAck(ack)) = message.kind {
            break ack;
        }
    };
    assert!(result.accepted, "{result:?}");
    app.stop().await;
}

fn progress(ws: &str, task: &str, attempt: i32, step: f64) -> In {
    let mut data = prost_types::Struct::default();
    data.fields.insert(
        "step".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::NumberValue(step)),
        },
    );
    In::Event(pb::WorkerEvent {
        lease: Some(pb::LeaseRef {
            workspace_id: ws.to_owned(),
            task_id: task.to_owned(),
            attempt,
        }),
        action: "task.progress".into(),
        data: Some(data),
    })
}

#[tokio::test]
async fn reported_events_are_appended_in_order_for_held_attempts_only() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let (ws, task, mut session) = running_task(&db, &app, "events-batch").await;
    // Sent back to back, so they are recorded in one batch or a few: either way in order,
    // and an event about an attempt the worker does not hold, or sent after it gave the
    // attempt back, is dropped.
    session.send(progress(&ws, &task, 1, 0.0)).await;
    session.send(progress(&ws, &task, 2, 1.0)).await;
    session.send(progress(&ws, &task, 1, 2.0)).await;
    session
        .send(In::Release(pb::WorkerRelease {
            lease: Some(pb::LeaseRef {
                workspace_id: ws.clone(),
                task_id: task.clone(),
                attempt: 1,
            }),
        }))
        .await;
    session.send(progress(&ws, &task, 1, 3.0)).await;
    session.settle(&ws).await;

    let mut c = app.with_key(&ws, pb::WorkspaceRole::Admin).await;
    let mut steps = Vec::new();
    for _ in 0..300 {
        let events = c
            .events
            .list_events(pb::ListEventsRequest {
                workspace_id: ws.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
        if let Some(released) = actions.iter().position(|a| *a == "task.released") {
            assert!(
                !actions[released..].contains(&"task.progress"),
                "{actions:?}"
            );
            steps = events
                .iter()
                .filter(|e| e.action == "task.progress")
                .map(|e| {
                    assert_eq!(e.resource_id, task);
                    e.data.as_ref().unwrap().fields["step"].clone()
                })
                .collect();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let steps: Vec<f64> = steps
        .into_iter()
        .map(|v| match v.kind {
            Some(prost_types::value::Kind::NumberValue(n)) => n,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(steps, vec![0.0, 2.0]);
}
