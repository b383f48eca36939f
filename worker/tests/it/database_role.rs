//! The worker's database role can do what claiming and lease expiry need and nothing else:
//! no forged events, no finished task touched, no arbitrary transition, no reading of events,
//! output, usage or API keys. (Claim and expiry themselves are covered by `queue.rs`.)

use std::time::Duration;

use agentplane_worker::queue::{claim_tasks, reap_expired_leases};
use sqlx::PgPool;
use uuid::Uuid;

use crate::fixtures::{agent, task, workspace};
use crate::pg::TestDb;

/// SQLSTATE of an error, if it is a database error.
fn sqlstate(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

async fn event(
    pool: &PgPool,
    tenant: Uuid,
    task: Uuid,
    action: &str,
    actor: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO events (tenant_id, id, actor, action, resource_type, resource_id) \
         VALUES ($1, $2, $3, $4, 'task', $5)",
    )
    .bind(tenant)
    .bind(Uuid::now_v7())
    .bind(actor)
    .bind(action)
    .bind(task)
    .execute(pool)
    .await
    .map(|_| ())
}

async fn set_status(pool: &PgPool, task: Uuid, sql: &str) -> sqlx::Result<u64> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE tasks SET {sql} WHERE id = $1"
    )))
    .bind(task)
    .execute(pool)
    .await
    .map(|r| r.rows_affected())
}

#[tokio::test]
async fn the_worker_role_cannot_forge_events_touch_finished_tasks_or_read_results() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    // One connection: a refused statement's row lock is released when its server process
    // finishes the implicit transaction, which can be after the client saw the error; on
    // the same connection the next statement always comes after that.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.worker_url())
        .await
        .unwrap();
    let tenant = workspace(&owner).await;
    let agent_id = agent(&owner, tenant, 10).await;
    let pending = task(&owner, tenant, agent_id, 0, "p").await;
    let done = task(&owner, tenant, agent_id, 0, "d").await;
    sqlx::query("UPDATE tasks SET status = 'succeeded', output = 'secret answer', ended_at = now() WHERE id = $1")
        .bind(done)
        .execute(&owner)
        .await
        .unwrap();

    // No event it did not earn: not another kind, not about a task it did not just move.
    for (action, actor) in [
        ("task.succeeded", "system"),
        ("agent.created", "system"),
        (
            "task.started",
            "worker:00000000-0000-0000-0000-000000000001",
        ),
        ("task.failed", "system"),
    ] {
        let error = event(&pool, tenant, pending, action, actor)
            .await
            .expect_err(action);
        assert_eq!(
            sqlstate(&error).as_deref(),
            Some("42501"),
            "{action}: {error}"
        );
    }

    // A finished task is out of reach; a pending one cannot be finished or failed.
    assert_eq!(
        set_status(&pool, done, "status = 'pending'").await.unwrap(),
        0
    );
    assert_eq!(
        set_status(&pool, done, "error_message = 'x'")
            .await
            .unwrap(),
        0
    );
    let error = set_status(&pool, pending, "status = 'failed', ended_at = now()")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&error).as_deref(), Some("42501"), "{error}");
    let error = set_status(&pool, pending, "status = 'succeeded'")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&error).as_deref(), Some("42501"), "{error}");
    // Nor written with results it has no column grant for.
    let error = set_status(&pool, pending, "output = 'forged'")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&error).as_deref(), Some("42501"), "{error}");

    // A claimed task whose lease has not run out cannot be expired or failed early.
    let worker = Uuid::now_v7();
    let claimed = claim_tasks(&pool, worker, 2, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    for change in [
        "status = 'pending', worker_id = NULL, lease_expires_at = NULL",
        "status = 'failed', worker_id = NULL, lease_expires_at = NULL",
        "lease_expires_at = now() + interval '1 day'",
        "attempt = attempt + 5",
    ] {
        let error = set_status(&pool, pending, change).await.unwrap_err();
        assert_eq!(
            sqlstate(&error).as_deref(),
            Some("42501"),
            "{change}: {error}"
        );
    }

    // A lapsed lease can only be expired the way the reaper does it: the fixed code and
    // message, failed only once the attempts are used up, requeued within the retry delay.
    sqlx::query("UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(pending)
        .execute(&owner)
        .await
        .unwrap();
    for change in [
        "status = 'failed', worker_id = NULL, lease_expires_at = NULL, ended_at = now(), \
         error_code = 'lease_expired', \
         error_message = 'the worker holding the task stopped renewing its lease'",
        "status = 'pending', worker_id = NULL, lease_expires_at = NULL, \
         error_code = 'lease_expired', error_message = 'your account was suspended'",
        "status = 'pending', worker_id = NULL, lease_expires_at = NULL, \
         run_at = now() + interval '1 year', error_code = 'lease_expired', \
         error_message = 'the worker holding the task stopped renewing its lease'",
    ] {
        let error = set_status(&pool, pending, change).await.unwrap_err();
        assert_eq!(
            sqlstate(&error).as_deref(),
            Some("42501"),
            "{change}: {error}"
        );
    }
    // A claim cannot take a lease for a century.
    let other = task(&owner, tenant, agent_id, 0, "o").await;
    let error = set_status(
        &pool,
        other,
        "status = 'running', attempt = attempt + 1, worker_id = gen_random_uuid(), \
         lease_expires_at = now() + interval '100 years'",
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&error).as_deref(), Some("42501"), "{error}");

    // Results, prompts and labels are not readable, nor transcripts of tasks not running.
    for column in [
        "SELECT output FROM tasks",
        "SELECT error_message FROM tasks",
        "SELECT labels FROM tasks",
        "SELECT system_prompt FROM agents",
    ] {
        let error = sqlx::query(sqlx::AssertSqlSafe(column.to_owned()))
            .execute(&pool)
            .await
            .unwrap_err();
        assert_eq!(
            sqlstate(&error).as_deref(),
            Some("42501"),
            "{column}: {error}"
        );
    }
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM task_messages WHERE task_id = $1")
        .bind(other)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(visible, 0, "a pending task's prompt is not visible");

    // What it may not read at all.
    for table in [
        "events",
        "task_output_chunks",
        "usage_records",
        "api_keys",
        "worker_credentials",
    ] {
        let error = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .execute(&pool)
            .await
            .unwrap_err();
        assert_eq!(
            sqlstate(&error).as_deref(),
            Some("42501"),
            "{table}: {error}"
        );
    }

    // And what it needs still works: the lease has run out and the reaper requeues the task.
    assert_eq!(reap_expired_leases(&pool, 10).await.unwrap(), 1);
    let events: Vec<String> =
        sqlx::query_scalar("SELECT action FROM events WHERE resource_id = $1 ORDER BY seq")
            .bind(pending)
            .fetch_all(&owner)
            .await
            .unwrap();
    assert_eq!(events, ["task.started", "task.retrying"]);
}

/// Whether a role is held to the worker's transitions (the trigger's condition,
/// `app_acting_as_worker()`): members of the worker role only, not the control plane's
/// role, a superuser or a role that bypasses row-level security, even one that is also a
/// member of the worker role.
#[tokio::test]
async fn only_plain_members_of_the_worker_role_are_held_to_its_transitions() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let suffix = Uuid::now_v7().simple().to_string();
    let (worker, bypassing, both) = (
        format!("w_{suffix}"),
        format!("wb_{suffix}"),
        format!("wa_{suffix}"),
    );
    for sql in [
        format!("CREATE ROLE {worker} IN ROLE agentplane_worker"),
        format!("CREATE ROLE {bypassing} BYPASSRLS IN ROLE agentplane_worker"),
        format!("CREATE ROLE {both} IN ROLE agentplane_worker, agentplane_app"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&owner)
            .await
            .unwrap();
    }
    let mut connection = owner.acquire().await.unwrap();
    let mut acting = Vec::new();
    for role in [
        worker.as_str(),
        bypassing.as_str(),
        both.as_str(),
        "agentplane_app",
        "postgres",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET ROLE {role}")))
            .execute(&mut *connection)
            .await
            .unwrap();
        let is_worker: bool = sqlx::query_scalar("SELECT app_acting_as_worker()")
            .fetch_one(&mut *connection)
            .await
            .unwrap();
        acting.push(is_worker);
        sqlx::raw_sql("RESET ROLE")
            .execute(&mut *connection)
            .await
            .unwrap();
    }
    assert_eq!(acting, [true, false, false, false, false]);
}

/// The worker check names its table in a form a dump and restore keep: a SQL-standard body,
/// stored parsed, which pg_dump writes back as `'tasks'::regclass` (a body with the table's
/// oid written in as a number would name nothing after a restore, and so switch the
/// worker's restrictions off).
#[tokio::test]
async fn the_worker_check_names_its_table_so_that_a_restore_keeps_it() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let (definition, parsed): (String, bool) = sqlx::query_as(
        "SELECT pg_get_functiondef(p.oid), p.prosqlbody IS NOT NULL FROM pg_proc p \
         WHERE p.proname = 'app_acting_as_worker'",
    )
    .fetch_one(&owner)
    .await
    .unwrap();
    assert!(parsed, "a SQL-standard body: {definition}");
    assert!(
        definition.contains("'tasks'::regclass"),
        "the table by name: {definition}"
    );
}
