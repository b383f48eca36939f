//! Retention of finished tasks: what the purge deletes, what it keeps, and that it neither
//! waits on a locked task nor needs more than the application role.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentplane_control_plane::retention::purge_expired;
use agentplane_control_plane::store::{self, PoolConfig, Store};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::app::TestApp;
use crate::pg::TestDb;

const DAY: Duration = Duration::from_secs(86_400);
const RETENTION: Duration = Duration::from_secs(30 * 86_400);

/// A UUID v7 made `age` ago, as the control plane would have made it then.
fn id_made_ago(age: Duration) -> Uuid {
    let at = (SystemTime::now() - age)
        .duration_since(UNIX_EPOCH)
        .unwrap();
    Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        at.as_secs(),
        at.subsec_nanos(),
    ))
}

async fn workspace_with_agent(owner: &PgPool) -> (Uuid, Uuid) {
    let tenant = crate::fixtures::workspace(owner).await;
    let agent = crate::fixtures::agent(owner, tenant, 10).await;
    (tenant, agent)
}

/// A task created `created` ago in `status`, ended `ended` ago if finished, with a
/// transcript of two messages, one live output row, one usage record and one event.
async fn task(
    owner: &PgPool,
    (tenant, agent): (Uuid, Uuid),
    status: &str,
    created: Duration,
    ended: Duration,
) -> Uuid {
    let id = id_made_ago(created);
    let finished = matches!(status, "succeeded" | "failed" | "canceled");
    sqlx::query(
        "INSERT INTO tasks (tenant_id, id, agent_id, status, max_attempts, attempt, \
                            worker_id, lease_expires_at, created_at, ended_at) \
         VALUES ($1, $2, $3, $4, 3, 1, \
                 CASE WHEN $4 = 'running' THEN gen_random_uuid() END, \
                 CASE WHEN $4 = 'running' THEN now() + interval '1 minute' END, \
                 now() - make_interval(secs => $5), \
                 CASE WHEN $6 THEN now() - make_interval(secs => $7) END)",
    )
    .bind(tenant)
    .bind(id)
    .bind(agent)
    .bind(status)
    .bind(created.as_secs_f64())
    .bind(finished)
    .bind(ended.as_secs_f64())
    .execute(owner)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO task_messages (tenant_id, id, task_id, position, role, content) \
         VALUES ($1, gen_random_uuid(), $2, 0, 'user', 'hi'), \
                ($1, gen_random_uuid(), $2, 1, 'assistant', 'hello')",
    )
    .bind(tenant)
    .bind(id)
    .execute(owner)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO task_output_chunks (tenant_id, task_id, attempt, seq, content) \
         VALUES ($1, $2, 1, 0, 'hel')",
    )
    .bind(tenant)
    .bind(id)
    .execute(owner)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO usage_records (tenant_id, id, task_id, attempt, step, provider, model, \
                                    provider_request_id, input_tokens, output_tokens, \
                                    cost_micros) \
         VALUES ($1, gen_random_uuid(), $2, 1, 0, 'echo', 'echo-1', $2::text || '-1-0', \
                 3, 5, 7)",
    )
    .bind(tenant)
    .bind(id)
    .execute(owner)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO events (tenant_id, id, actor, action, resource_type, resource_id) \
         VALUES ($1, gen_random_uuid(), 'test', 'task.created', 'task', $2)",
    )
    .bind(tenant)
    .bind(id)
    .execute(owner)
    .await
    .unwrap();
    id
}

/// Rows referring to `task` in each table, in a fixed order: tasks, task_messages,
/// task_output_chunks, usage_records, events.
async fn rows_of(owner: &PgPool, task: Uuid) -> [i64; 5] {
    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .bind(task)
            .fetch_one(owner)
            .await
            .unwrap()
    };
    [
        count("SELECT count(*) FROM tasks WHERE id = $1").await,
        count("SELECT count(*) FROM task_messages WHERE task_id = $1").await,
        count("SELECT count(*) FROM task_output_chunks WHERE task_id = $1").await,
        count("SELECT count(*) FROM usage_records WHERE task_id = $1").await,
        count("SELECT count(*) FROM events WHERE resource_id = $1").await,
    ]
}

const KEPT: [i64; 5] = [1, 2, 1, 1, 1];
/// The task, its transcript and its live output are gone; usage and events stay.
const PURGED: [i64; 5] = [0, 0, 0, 1, 1];

/// The store as the control plane's application role, under row-level security.
async fn app_store(db: &TestDb) -> Store {
    let config = PoolConfig {
        max_connections: 2,
        acquire_timeout: Duration::from_secs(10),
        application_name: "retention-test".to_owned(),
        statement_timeout: Some(Duration::from_secs(30)),
        idle_in_transaction_timeout: Some(Duration::from_secs(10)),
    };
    Store::new(store::connect(&db.app_url().into(), &config).await.unwrap())
}

#[tokio::test]
async fn finished_tasks_past_retention_are_deleted_and_everything_else_stays() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let a = workspace_with_agent(&owner).await;
    let old = 40 * DAY;
    let expired = [
        task(&owner, a, "succeeded", old, 35 * DAY).await,
        task(&owner, a, "failed", old, 31 * DAY).await,
        task(&owner, a, "canceled", old, 31 * DAY).await,
    ];
    let kept = [
        // Created long ago but ended recently (a late run_at, long retries).
        task(&owner, a, "succeeded", old, 29 * DAY).await,
        task(&owner, a, "succeeded", DAY, DAY).await,
        task(&owner, a, "pending", old, Duration::ZERO).await,
        task(&owner, a, "running", old, Duration::ZERO).await,
    ];
    // Another workspace, deleted since: its history expires too; its recent task stays.
    let b = workspace_with_agent(&owner).await;
    sqlx::query("UPDATE workspaces SET deleted_at = now() WHERE id = $1")
        .bind(b.0)
        .execute(&owner)
        .await
        .unwrap();
    let b_expired = task(&owner, b, "succeeded", old, 35 * DAY).await;
    let b_kept = task(&owner, b, "succeeded", 2 * DAY, DAY).await;

    let store = app_store(&db).await;
    let purged = purge_expired(&store, RETENTION, &CancellationToken::new())
        .await
        .unwrap();

    assert_eq!(
        (purged.tasks, purged.messages, purged.output_chunks),
        (4, 8, 4)
    );
    for id in expired.into_iter().chain([b_expired]) {
        assert_eq!(rows_of(&owner, id).await, PURGED, "task {id}");
    }
    for id in kept.into_iter().chain([b_kept]) {
        assert_eq!(rows_of(&owner, id).await, KEPT, "task {id}");
    }
    // A second pass finds nothing more.
    let again = purge_expired(&store, RETENTION, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(again.tasks, 0);
}

#[tokio::test]
async fn the_purge_skips_a_task_another_transaction_holds_and_takes_it_later() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let a = workspace_with_agent(&owner).await;
    let held = task(&owner, a, "failed", 40 * DAY, 35 * DAY).await;
    let free = task(&owner, a, "failed", 40 * DAY, 35 * DAY).await;
    let mut holder = owner.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE")
        .bind(held)
        .execute(&mut *holder)
        .await
        .unwrap();

    let store = app_store(&db).await;
    let purged = tokio::time::timeout(
        Duration::from_secs(20),
        purge_expired(&store, RETENTION, &CancellationToken::new()),
    )
    .await
    .expect("the purge does not wait for a locked task")
    .unwrap();
    assert_eq!(purged.tasks, 1);
    assert_eq!(rows_of(&owner, free).await, PURGED);
    assert_eq!(rows_of(&owner, held).await, KEPT);

    holder.rollback().await.unwrap();
    let purged = purge_expired(&store, RETENTION, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(purged.tasks, 1);
    assert_eq!(rows_of(&owner, held).await, PURGED);
}

#[tokio::test]
async fn a_purge_larger_than_a_batch_deletes_every_expired_task() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let (tenant, agent) = workspace_with_agent(&owner).await;
    let batch = agentplane_control_plane::retention::BATCH;
    // Bare finished rows, more than two batches' worth.
    // Bare finished rows, more than two batches' worth, with ids of the epoch's first
    // millisecond (made "long ago").
    sqlx::query(
        "INSERT INTO tasks (tenant_id, id, agent_id, status, max_attempts, created_at, ended_at) \
         SELECT $1, ('00000000-0000-7000-8000-' || lpad(to_hex(n), 12, '0'))::uuid, $2, \
                'succeeded', 3, now() - interval '40 days', now() - interval '35 days' \
         FROM generate_series(1, $3) n",
    )
    .bind(tenant)
    .bind(agent)
    .bind(2 * batch + 7)
    .execute(&owner)
    .await
    .unwrap();

    let store = app_store(&db).await;
    let purged = purge_expired(&store, RETENTION, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(purged.tasks, u64::try_from(2 * batch + 7).unwrap());
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks")
        .fetch_one(&owner)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_control_plane_with_retention_purges_in_the_background() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let a = workspace_with_agent(&owner).await;
    let expired = task(&owner, a, "succeeded", 40 * DAY, 35 * DAY).await;
    let recent = task(&owner, a, "succeeded", DAY, DAY).await;
    let app = TestApp::spawn_with(&db, |config| {
        config.task_retention = Some(RETENTION);
        config.task_retention_interval = Duration::from_millis(200);
    })
    .await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while rows_of(&owner, expired).await != PURGED {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the background pass did not run within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows_of(&owner, recent).await, KEPT);
    app.stop().await;
}

#[tokio::test]
async fn retention_off_keeps_every_finished_task() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let a = workspace_with_agent(&owner).await;
    let old = task(&owner, a, "succeeded", 400 * DAY, 399 * DAY).await;
    let app = TestApp::spawn_with(&db, |config| {
        config.task_retention = None;
        config.task_retention_interval = Duration::from_millis(50);
    })
    .await;
    // Well past several intervals: with retention off no pass runs at all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rows_of(&owner, old).await, KEPT);
    app.stop().await;
}
