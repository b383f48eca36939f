//! Rows inserted directly as the schema owner, for tests of the worker's queue SQL.

use sqlx::PgPool;
use uuid::Uuid;

/// Inserts a workspace.
pub async fn workspace(owner: &PgPool) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO workspaces (id, display_name) VALUES ($1, 'test')")
        .bind(id)
        .execute(owner)
        .await
        .unwrap();
    id
}

/// Inserts an echo agent allowed `max_concurrency` running tasks.
pub async fn agent(owner: &PgPool, tenant: Uuid, max_concurrency: i32) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO agents (tenant_id, id, name, provider, model, max_concurrency, \
                             task_timeout_ms, max_attempts, generation) \
         VALUES ($1, $2, $3, 'echo', 'echo-1', $4, 60000, 3, '{\"temperature\": 0.2}')",
    )
    .bind(tenant)
    .bind(id)
    .bind(
        format!("a{}", id.simple())
            .chars()
            .take(40)
            .collect::<String>(),
    )
    .bind(max_concurrency)
    .execute(owner)
    .await
    .unwrap();
    id
}

/// Inserts a pending task with a system prompt and one user message.
pub async fn task(owner: &PgPool, tenant: Uuid, agent: Uuid, priority: i32, text: &str) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO tasks (tenant_id, id, agent_id, priority, max_attempts) \
         VALUES ($1, $2, $3, $4, 3)",
    )
    .bind(tenant)
    .bind(id)
    .bind(agent)
    .bind(priority)
    .execute(owner)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO task_messages (tenant_id, id, task_id, position, role, content) \
         VALUES ($1, $2, $3, 0, 'system', 'Be brief.'), ($1, $4, $3, 1, 'user', $5)",
    )
    .bind(tenant)
    .bind(Uuid::now_v7())
    .bind(id)
    .bind(Uuid::now_v7())
    .bind(text)
    .execute(owner)
    .await
    .unwrap();
    id
}

/// Rows of `table` read by scans (sequential, index and bitmap) so far, counted once every
/// backend whose `application_name` is `ended` has gone: a backend's counts reach the
/// statistics when it ends, before it leaves `pg_stat_activity`. A test connects the pools
/// whose reads it counts under that name ([`named`]) and closes them before it reads this.
pub async fn rows_read(owner: &PgPool, table: &str, ended: &str) -> i64 {
    let mut connection = settled_statistics(owner, ended).await;
    sqlx::query_scalar(
        "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) \
         FROM pg_stat_user_tables WHERE relname = $1",
    )
    .bind(table)
    .fetch_one(&mut *connection)
    .await
    .unwrap()
}

/// Scans of `index` so far, counted as [`rows_read`] counts.
pub async fn index_scans(owner: &PgPool, index: &str, ended: &str) -> i64 {
    let mut connection = settled_statistics(owner, ended).await;
    sqlx::query_scalar("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = $1")
        .bind(index)
        .fetch_one(&mut *connection)
        .await
        .unwrap()
}

/// A connection that reads the statistics fresh, once every backend named `ended` has gone.
async fn settled_statistics(
    owner: &PgPool,
    ended: &str,
) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let remaining: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = $1",
        )
        .bind(ended)
        .fetch_one(owner)
        .await
        .unwrap();
        if remaining == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{remaining} backends named {ended} did not end"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut connection = owner.acquire().await.unwrap();
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *connection)
        .await
        .unwrap();
    connection
}

/// A pool on `url` whose sessions are named `name` in `pg_stat_activity`.
pub async fn named(url: &str, name: &str) -> PgPool {
    PgPool::connect(&format!("{url}?application_name={name}"))
        .await
        .unwrap()
}
