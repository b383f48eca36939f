//! Overload: the control plane is slow to record results (here it holds them, unanswered,
//! for more than two lease lengths). Nothing may run twice: the worker keeps heartbeating
//! the leases of attempts whose results wait, so they never lapse and the lease reaper (the
//! worker's own, every 5 s) finds nothing; it claims nothing while its slots hold
//! unacknowledged results; and a slot frees only when its result is acknowledged.
//!
//! The stand-in control plane renews leases in the database on each heartbeat, as the real
//! one does, and the test records each result in the database when it acknowledges it.

use std::time::Duration;

use agentplane_proto::v1::session_request::Kind;
use agentplane_proto::v1::{LeaseRef, WorkerResult};
use agentplane_worker::{Worker, WorkerConfig};
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

use crate::fake_control_plane::{FakeControlPlane, TOKEN};
use crate::fixtures::{agent, task, workspace};
use crate::pg::TestDb;

// Long enough that a stall of a loaded CI machine does not pass for a lapsed lease.
const LEASE: Duration = Duration::from_secs(5);
const HEARTBEAT: Duration = Duration::from_millis(300);
/// How long results wait unanswered: past two lease lengths, and past a reaper pass.
const HOLD: Duration = Duration::from_secs(11);
const CAPACITY: u32 = 2;

/// What the database says about the queue, as the owner sees it.
#[derive(Debug, PartialEq, Eq, sqlx::FromRow)]
struct Queue {
    pending: i64,
    running: i64,
    running_with_lapsed_lease: i64,
    claimed_more_than_once: i64,
}

async fn queue(owner: &PgPool) -> Queue {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending') AS pending, \
                count(*) FILTER (WHERE status = 'running') AS running, \
                count(*) FILTER (WHERE status = 'running' AND lease_expires_at <= now()) \
                    AS running_with_lapsed_lease, \
                count(*) FILTER (WHERE attempt > 1) AS claimed_more_than_once \
         FROM tasks",
    )
    .fetch_one(owner)
    .await
    .unwrap()
}

/// Records a result as the control plane would (fenced by attempt), then acknowledges it.
async fn record_and_ack(owner: &PgPool, cp: &FakeControlPlane, lease: LeaseRef) {
    let recorded = sqlx::query(
        "UPDATE tasks SET status = 'succeeded', lease_expires_at = NULL, ended_at = now() \
         WHERE id = $1::uuid AND attempt = $2 AND status = 'running'",
    )
    .bind(&lease.task_id)
    .bind(lease.attempt)
    .execute(owner)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(recorded, 1, "the attempt was still current: {lease:?}");
    cp.ack(lease);
}

async fn next_result(cp: &mut FakeControlPlane) -> WorkerResult {
    loop {
        if let (_, Kind::Result(result)) = cp.next().await {
            return result;
        }
    }
}

#[tokio::test]
async fn results_held_past_the_lease_neither_lapse_leases_nor_free_slots() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let tenant = workspace(&owner).await;
    let agent_id = agent(&owner, tenant, 10).await;
    let mut tasks = Vec::new();
    for n in 0..=CAPACITY {
        tasks.push(task(&owner, tenant, agent_id, 0, &format!("task {n}")).await);
    }
    let mut cp = FakeControlPlane::start_renewing(HEARTBEAT, LEASE, owner.clone()).await;
    let worker = Worker::start(WorkerConfig {
        worker_id: Uuid::now_v7(),
        control_plane_url: cp.url(),
        database_url: SecretString::from(db.worker_url()),
        worker_token: SecretString::from(TOKEN),
        capacity: CAPACITY,
        poll_interval_max: Duration::from_millis(100),
        shutdown_grace: Duration::from_secs(5),
        echo_token_delay: Duration::from_millis(1),
        metrics_addr: None,
        labels: Default::default(),
        providers: Default::default(),
    })
    .await
    .unwrap();

    // The worker fills its capacity and reports; the control plane sits on the results.
    let mut held = Vec::new();
    while held.len() < CAPACITY as usize {
        held.push(next_result(&mut cp).await.lease.unwrap());
    }
    let deadline = tokio::time::Instant::now() + HOLD;
    let mut samples = 0;
    while tokio::time::Instant::now() < deadline {
        assert_eq!(
            queue(&owner).await,
            Queue {
                pending: 1,
                running: i64::from(CAPACITY),
                running_with_lapsed_lease: 0,
                claimed_more_than_once: 0,
            },
            "while {CAPACITY} results wait unacknowledged"
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(samples > 10);
    let unexpected: Vec<_> = cp
        .drain_for(Duration::ZERO)
        .await
        .into_iter()
        .filter(|(_, kind)| matches!(kind, Kind::Result(_)))
        .collect();
    assert_eq!(
        unexpected,
        [],
        "no result while every slot waits for an ack"
    );

    // Recording one result frees one slot: the last task is claimed and run.
    let mut held = held.into_iter();
    record_and_ack(&owner, &cp, held.next().unwrap()).await;
    let last = next_result(&mut cp).await.lease.unwrap();
    assert_eq!(last.attempt, 1);
    record_and_ack(&owner, &cp, last).await;
    for lease in held {
        record_and_ack(&owner, &cp, lease).await;
    }

    let statuses: Vec<(String, i32)> =
        sqlx::query_as("SELECT status, attempt FROM tasks ORDER BY id")
            .fetch_all(&owner)
            .await
            .unwrap();
    assert_eq!(
        statuses,
        vec![("succeeded".to_owned(), 1); tasks.len()],
        "every task ran exactly once"
    );
    worker.shutdown().await;
}
