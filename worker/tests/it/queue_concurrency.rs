//! The claim: FOR UPDATE SKIP LOCKED batches, per-agent concurrency, lease expiry.

use std::collections::HashSet;
use std::time::Duration;

use agentplane_worker::queue::{claim_tasks, reap_expired_leases};
use sqlx::PgPool;
use uuid::Uuid;

use crate::pg::TestDb;

/// Inserts a workspace, an agent and `n` pending tasks as the owner; returns the agent id.
async fn seed(pool: &PgPool, max_concurrency: i32, n: usize) -> (Uuid, Uuid) {
    let tenant = Uuid::now_v7();
    let agent = Uuid::now_v7();
    sqlx::query("INSERT INTO workspaces (id, display_name) VALUES ($1, 'queue')")
        .bind(tenant)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO agents (tenant_id, id, name, provider, model, max_concurrency, task_timeout_ms, max_attempts) \
         VALUES ($1, $2, 'a', 'echo', 'echo-1', $3, 60000, 2)",
    )
    .bind(tenant)
    .bind(agent)
    .bind(max_concurrency)
    .execute(pool)
    .await
    .unwrap();
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO tasks (tenant_id, id, agent_id, max_attempts) SELECT $1, id, $2, 2 FROM unnest($3::uuid[]) AS t(id)",
    )
    .bind(tenant)
    .bind(agent)
    .bind(&ids)
    .execute(pool)
    .await
    .unwrap();
    (tenant, agent)
}

async fn worker_pool(db: &TestDb) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.worker_url())
        .await
        .unwrap()
}

#[tokio::test]
async fn four_concurrent_claimers_claim_each_of_1000_tasks_exactly_once() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    seed(&owner, 10_000, 1000).await;

    let mut claimers = Vec::new();
    for _ in 0..4 {
        let pool = worker_pool(&db).await;
        claimers.push(tokio::spawn(async move {
            let worker = Uuid::now_v7();
            let mut claimed = Vec::new();
            loop {
                let batch = claim_tasks(&pool, worker, 25, Duration::from_secs(60))
                    .await
                    .unwrap();
                if batch.is_empty() {
                    break;
                }
                claimed.extend(batch.into_iter().map(|t| (t.task_id, t.attempt)));
            }
            claimed
        }));
    }
    let mut all = Vec::new();
    for claimer in claimers {
        let claimed = claimer.await.unwrap();
        assert!(!claimed.is_empty(), "every claimer should get some work");
        all.extend(claimed);
    }
    let unique: HashSet<Uuid> = all.iter().map(|(id, _)| id.0).collect();
    assert_eq!(all.len(), 1000, "claims: {}", all.len());
    assert_eq!(unique.len(), 1000);
    assert!(all.iter().all(|(_, attempt)| *attempt == 1));

    let (running, attempts): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'running'), sum(attempt)::bigint FROM tasks",
    )
    .fetch_one(&owner)
    .await
    .unwrap();
    assert_eq!((running, attempts), (1000, 1000));
    let started: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE action = 'task.started'")
            .fetch_one(&owner)
            .await
            .unwrap();
    assert_eq!(
        started, 1000,
        "one claim event per task, written with the claim"
    );
}

#[tokio::test]
async fn concurrent_claimers_never_exceed_the_agents_max_concurrency() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    seed(&owner, 3, 50).await;
    let mut claimers = Vec::new();
    for _ in 0..4 {
        let pool = worker_pool(&db).await;
        claimers.push(tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..5 {
                n += claim_tasks(&pool, Uuid::now_v7(), 10, Duration::from_secs(60))
                    .await
                    .unwrap()
                    .len();
            }
            n
        }));
    }
    let mut total = 0;
    for claimer in claimers {
        total += claimer.await.unwrap();
    }
    assert_eq!(total, 3);
}

#[tokio::test]
async fn an_expired_lease_is_requeued_and_then_failed_after_max_attempts() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    seed(&owner, 10, 1).await;
    let pool = worker_pool(&db).await;

    let first = claim_tasks(&pool, Uuid::now_v7(), 1, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(reap_expired_leases(&pool, 100).await.unwrap(), 1);
    let (status, attempt, error): (String, i32, Option<String>) =
        sqlx::query_as("SELECT status, attempt, error_code FROM tasks")
            .fetch_one(&owner)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), attempt, error.as_deref()),
        ("pending", 1, Some("lease_expired"))
    );

    // The retry waits for its backoff; make it due now and let it expire once more.
    sqlx::query("UPDATE tasks SET run_at = now()")
        .execute(&owner)
        .await
        .unwrap();
    let second = claim_tasks(&pool, Uuid::now_v7(), 1, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(second[0].attempt, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(reap_expired_leases(&pool, 100).await.unwrap(), 1);
    let status: String = sqlx::query_scalar("SELECT status FROM tasks")
        .fetch_one(&owner)
        .await
        .unwrap();
    assert_eq!(status, "failed", "max_attempts is 2");
    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM events ORDER BY seq")
        .fetch_all(&owner)
        .await
        .unwrap();
    assert_eq!(
        actions,
        vec![
            "task.started",
            "task.retrying",
            "task.started",
            "task.failed"
        ]
    );
}

#[tokio::test]
async fn delayed_tasks_are_not_claimed_before_run_at() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    seed(&owner, 10, 2).await;
    sqlx::query("UPDATE tasks SET run_at = now() + interval '1 hour'")
        .execute(&owner)
        .await
        .unwrap();
    let pool = worker_pool(&db).await;
    assert!(
        claim_tasks(&pool, Uuid::now_v7(), 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
}
