//! The claim and reap transactions against a real database, as the worker role.

use std::time::Duration;

use agentplane_core::notify::channel::TASK_STATE as TASK_STATE_CHANNEL;
use agentplane_worker::queue::{claim_tasks, reap_expired_leases};
use sqlx::postgres::PgListener;
use uuid::Uuid;

use crate::fixtures::{agent, task, workspace};
use crate::pg::TestDb;

const LEASE: Duration = Duration::from_secs(60);

/// A notification's payload as JSON, less the time it was sent (checked to be there).
fn payload_json(payload: &str) -> serde_json::Value {
    let mut value: serde_json::Value = serde_json::from_str(payload).unwrap();
    let sent = value.as_object_mut().and_then(|fields| fields.remove("s"));
    assert!(
        sent.is_some_and(|sent| sent.is_i64()),
        "stamped with its send time: {payload}"
    );
    value
}

#[tokio::test]
async fn claim_takes_highest_priority_first_and_loads_agent_and_transcript() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let tenant = workspace(&owner).await;
    let agent_id = agent(&owner, tenant, 10).await;
    let low = task(&owner, tenant, agent_id, 0, "low").await;
    let high = task(&owner, tenant, agent_id, 5, "high").await;
    let worker = Uuid::now_v7();

    let claimed = claim_tasks(&db.worker_pool().await, worker, 1, LEASE)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let first = &claimed[0];
    assert_eq!(
        (first.task_id.0, first.tenant_id.0, first.agent_id.0),
        (high, tenant, agent_id)
    );
    assert_eq!(first.attempt, 1);
    assert_eq!(first.agent.provider, "echo");
    assert_eq!(first.agent.model, "echo-1");
    assert_eq!(first.agent.generation["temperature"], 0.2);
    assert_eq!(first.agent.task_timeout, Duration::from_secs(60));
    let transcript: Vec<(&str, &str)> = first
        .messages
        .iter()
        .map(|message| (message.role.as_str(), message.content.as_str()))
        .collect();
    assert_eq!(transcript, [("system", "Be brief."), ("user", "high")]);

    let (status, worker_id, leased): (String, Option<Uuid>, bool) = sqlx::query_as(
        "SELECT status, worker_id, lease_expires_at > now() + interval '50 seconds' \
         FROM tasks WHERE id = $1",
    )
    .bind(high)
    .fetch_one(&owner)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), worker_id, leased),
        ("running", Some(worker), true)
    );
    let low_status: String = sqlx::query_scalar("SELECT status FROM tasks WHERE id = $1")
        .bind(low)
        .fetch_one(&owner)
        .await
        .unwrap();
    assert_eq!(low_status, "pending");

    let (actor, data): (String, serde_json::Value) = sqlx::query_as(
        "SELECT actor, data FROM events WHERE action = 'task.started' AND resource_id = $1",
    )
    .bind(high)
    .fetch_one(&owner)
    .await
    .unwrap();
    assert_eq!(actor, format!("worker:{worker}"));
    assert_eq!(
        data,
        serde_json::json!({"attempt": 1, "worker_id": worker.to_string()})
    );
}

#[tokio::test]
async fn a_busy_agent_does_not_starve_other_agents_behind_it() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let tenant = workspace(&owner).await;
    let busy = agent(&owner, tenant, 1).await;
    for _ in 0..30 {
        task(&owner, tenant, busy, 10, "busy").await;
    }
    let other_tenant = workspace(&owner).await;
    let other = agent(&owner, other_tenant, 5).await;
    let behind = task(&owner, other_tenant, other, 0, "behind").await;
    let pool = db.worker_pool().await;

    let first = claim_tasks(&pool, Uuid::now_v7(), 1, LEASE).await.unwrap();
    assert_eq!(first[0].agent_id.0, busy);
    // The next 8 candidates in claim order all belong to the saturated agent.
    let second = claim_tasks(&pool, Uuid::now_v7(), 2, LEASE).await.unwrap();
    let ids: Vec<Uuid> = second.iter().map(|claimed| claimed.task_id.0).collect();
    assert_eq!(ids, [behind]);
}

#[tokio::test]
async fn tasks_of_deleted_agents_are_left_alone() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let tenant = workspace(&owner).await;
    let deleted = agent(&owner, tenant, 10).await;
    task(&owner, tenant, deleted, 0, "orphan").await;
    sqlx::query("UPDATE agents SET deleted_at = now() WHERE id = $1")
        .bind(deleted)
        .execute(&owner)
        .await
        .unwrap();
    let claimed = claim_tasks(&db.worker_pool().await, Uuid::now_v7(), 4, LEASE)
        .await
        .unwrap();
    assert!(claimed.is_empty());
}

#[tokio::test]
async fn claims_and_reaps_notify_task_state_with_tenant_and_task() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let tenant = workspace(&owner).await;
    let agent_id = agent(&owner, tenant, 10).await;
    let task_id = task(&owner, tenant, agent_id, 0, "hi").await;
    let mut listener = PgListener::connect_with(&owner).await.unwrap();
    listener.listen(TASK_STATE_CHANNEL).await.unwrap();
    let pool = db.worker_pool().await;

    claim_tasks(&pool, Uuid::now_v7(), 1, Duration::from_millis(10))
        .await
        .unwrap();
    let expected = serde_json::json!({"t": tenant.to_string(), "k": task_id.to_string()});
    let claimed = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(payload_json(claimed.payload()), expected);

    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(reap_expired_leases(&pool, 10).await.unwrap(), 1);
    let reaped = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(payload_json(reaped.payload()), expected);
    let (status, worker_id, delayed, message): (String, Option<Uuid>, bool, Option<String>) =
        sqlx::query_as(
            "SELECT status, worker_id, run_at > now(), error_message FROM tasks WHERE id = $1",
        )
        .bind(task_id)
        .fetch_one(&owner)
        .await
        .unwrap();
    assert_eq!(
        (status.as_str(), worker_id, delayed),
        ("pending", None, true)
    );
    assert_eq!(
        message.as_deref(),
        Some("the worker holding the task stopped renewing its lease")
    );
}

#[tokio::test]
async fn released_attempts_do_not_count_towards_max_attempts_when_reaping() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let tenant = workspace(&owner).await;
    let agent_id = agent(&owner, tenant, 10).await;
    let task_id = task(&owner, tenant, agent_id, 0, "hi").await;
    // Third claim of a task with max_attempts 3, one of the earlier attempts released.
    sqlx::query(
        "UPDATE tasks SET status = 'running', attempt = 3, releases = 1, \
         worker_id = $2, lease_expires_at = now() - interval '1 second' WHERE id = $1",
    )
    .bind(task_id)
    .bind(Uuid::now_v7())
    .execute(&owner)
    .await
    .unwrap();
    assert_eq!(
        reap_expired_leases(&db.worker_pool().await, 10)
            .await
            .unwrap(),
        1
    );
    let (status, data): (String, serde_json::Value) = sqlx::query_as(
        "SELECT t.status, e.data FROM tasks AS t \
         JOIN events AS e ON e.resource_id = t.id AND e.action = 'task.retrying' \
         WHERE t.id = $1",
    )
    .bind(task_id)
    .fetch_one(&owner)
    .await
    .unwrap();
    assert_eq!(status, "pending");
    assert_eq!(
        data,
        serde_json::json!({"attempt": 3, "reason": "lease_expired"})
    );
}

#[tokio::test]
async fn a_claim_stuck_on_an_agent_lock_gives_up_and_claims_nothing() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let tenant = workspace(&owner).await;
    let agent_id = agent(&owner, tenant, 10).await;
    let task_id = task(&owner, tenant, agent_id, 0, "hi").await;
    // Another session holds the agent's claim lock and never lets go.
    let mut holder = owner.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text || ':' || $2::text, 0))")
        .bind(tenant)
        .bind(agent_id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let pool = db.worker_pool().await;

    let started = std::time::Instant::now();
    let claimed = tokio::time::timeout(
        Duration::from_secs(20),
        claim_tasks(&pool, Uuid::now_v7(), 1, LEASE),
    )
    .await
    .expect("the lock wait is bounded")
    .unwrap();
    assert!(claimed.is_empty());
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let status: String = sqlx::query_scalar("SELECT status FROM tasks WHERE id = $1")
        .bind(task_id)
        .fetch_one(&owner)
        .await
        .unwrap();
    assert_eq!(status, "pending", "the timed-out claim was rolled back");

    holder.rollback().await.unwrap();
    let claimed = claim_tasks(&pool, Uuid::now_v7(), 1, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1, "the pool's connection is usable again");
}
