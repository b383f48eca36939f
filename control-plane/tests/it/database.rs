//! The control plane's database sessions: every connection of its pool carries a statement
//! timeout and an idle-in-transaction timeout (set per connection: role settings of the
//! `agentplane_app` group role would not reach its member login roles).

use std::time::{Duration, Instant};

use agentplane_control_plane::config::{Cli, Command, Config};
use agentplane_control_plane::store;
use clap::Parser;
use sqlx::{Connection, PgPool};

use crate::pg::TestDb;

/// A validated config for the test database, with extra flags.
fn config(db: &TestDb, flags: &[&str]) -> Config {
    let url = db.app_url();
    let mut args = vec!["agentplane-control-plane", "serve", "--dev-mode"];
    args.extend(["--database-url", &url]);
    args.extend(flags);
    let Command::Serve(args) = Cli::try_parse_from(args).unwrap().command else {
        unreachable!()
    };
    args.validate().unwrap()
}

async fn pool(config: &Config) -> PgPool {
    store::connect(&config.database_url, &config.pool)
        .await
        .unwrap()
}

async fn show(pool: &PgPool, setting: &str) -> String {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_control_planes_sessions_have_timeouts_by_default() {
    let db = TestDb::new().await;
    let pool = pool(&config(&db, &[])).await;
    assert_eq!(show(&pool, "statement_timeout").await, "30s");
    assert_eq!(
        show(&pool, "idle_in_transaction_session_timeout").await,
        "10s"
    );
    pool.close().await;
}

#[tokio::test]
async fn a_statement_over_the_timeout_is_cancelled() {
    let db = TestDb::new().await;
    let pool = pool(&config(&db, &["--db-statement-timeout-seconds", "1"])).await;
    let started = Instant::now();
    let error = sqlx::query("SELECT pg_sleep(10)")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{error}");
    let code = error.as_database_error().and_then(|e| e.code());
    assert_eq!(code.as_deref(), Some("57014"), "query_canceled: {error}");
    pool.close().await;
}

#[tokio::test]
async fn a_transaction_left_idle_past_the_timeout_is_ended() {
    let db = TestDb::new().await;
    let pool = pool(&config(
        &db,
        &["--db-idle-in-transaction-timeout-seconds", "1"],
    ))
    .await;
    let mut connection = pool.acquire().await.unwrap();
    let mut tx = connection.begin().await.unwrap();
    sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let error = sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap_err();
    let ended = error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "25P03")
        || matches!(error, sqlx::Error::Io(_));
    assert!(ended, "idle_in_transaction_session_timeout: {error:?}");
    drop(tx);
    drop(connection);
    pool.close().await;
}

#[tokio::test]
async fn zero_turns_a_timeout_off() {
    let db = TestDb::new().await;
    let pool = pool(&config(
        &db,
        &[
            "--db-statement-timeout-seconds",
            "0",
            "--db-idle-in-transaction-timeout-seconds",
            "0",
        ],
    ))
    .await;
    assert_eq!(show(&pool, "statement_timeout").await, "0");
    assert_eq!(
        show(&pool, "idle_in_transaction_session_timeout").await,
        "0"
    );
    pool.close().await;
}

/// Tenant isolation, and the worker role's restrictions, rest on row-level security being
/// enabled and forced on every workspace table: a control plane refuses to start without.
#[tokio::test]
async fn the_control_plane_refuses_to_start_without_forced_row_security() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    sqlx::query("ALTER TABLE tasks NO FORCE ROW LEVEL SECURITY")
        .execute(&owner)
        .await
        .unwrap();
    let config = crate::app::test_config(&db);
    let error = agentplane_control_plane::startup::Application::build(config)
        .await
        .expect_err("must not start");
    let message = format!("{error:#}");
    assert!(
        message.contains("row-level security") && message.contains("tasks"),
        "{message}"
    );
}

/// Inserts `count` tasks of `agent` in `tenant`, in `status` (`pending` or `succeeded`).
async fn many_tasks(
    owner: &PgPool,
    tenant: uuid::Uuid,
    agent: uuid::Uuid,
    status: &str,
    count: i32,
) {
    sqlx::query(
        "INSERT INTO tasks (tenant_id, id, agent_id, status, max_attempts) \
         SELECT $1, gen_random_uuid(), $2, $3, 3 FROM generate_series(1, $4)",
    )
    .bind(tenant)
    .bind(agent)
    .bind(status)
    .bind(count)
    .execute(owner)
    .await
    .unwrap();
}

/// A workspace and an agent, with autovacuum off on `tasks` so that its statistics (or their
/// absence) stay as the test sets them.
async fn workspace_without_autovacuum(pool: &PgPool) -> (uuid::Uuid, uuid::Uuid) {
    sqlx::query("ALTER TABLE tasks SET (autovacuum_enabled = false)")
        .execute(pool)
        .await
        .unwrap();
    let workspace = agentplane_testkit::fixtures::workspace(pool).await;
    let agent = agentplane_testkit::fixtures::agent(pool, workspace, 10).await;
    (workspace, agent)
}

/// A workspace with an agent and `count` finished tasks, in a `tasks` table that autovacuum
/// leaves alone and that was analyzed with them: the statistics a test's plans start from.
/// Returns the workspace and the agent.
async fn analyzed_workspace(setup: &PgPool, count: i32) -> (uuid::Uuid, uuid::Uuid) {
    let (workspace, agent) = workspace_without_autovacuum(setup).await;
    many_tasks(setup, workspace, agent, "succeeded", count).await;
    sqlx::query("ANALYZE tasks").execute(setup).await.unwrap();
    (workspace, agent)
}

/// The index names in a JSON plan, depth first.
fn indexes_in(plan: &serde_json::Value, found: &mut Vec<String>) {
    match plan {
        serde_json::Value::Object(fields) => {
            if let Some(serde_json::Value::String(name)) = fields.get("Index Name") {
                found.push(name.clone());
            }
            fields.values().for_each(|value| indexes_in(value, found));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| indexes_in(item, found)),
        _ => {}
    }
}

/// A workspace that appeared after `tasks` was last analyzed is costed at its share of the
/// table, not at one row (`tenant_id` keeps no statistics). At one row its whole
/// range in any index that leads with `tenant_id` cost the same as a key probe, and
/// PostgreSQL's own foreign-key check of every transcript row (a statement we do not write)
/// walked the workspace's entries in `tasks_by_status` (docs/benchmarks.md, "Plans that do
/// not trust the statistics").
#[tokio::test]
async fn a_workspace_new_since_the_last_analyze_is_probed_by_key() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let (old, old_agent) = workspace_without_autovacuum(&owner).await;
    many_tasks(&owner, old, old_agent, "succeeded", 3_000).await;
    sqlx::query("ANALYZE tasks").execute(&owner).await.unwrap();

    let young = agentplane_testkit::fixtures::workspace(&owner).await;
    let young_agent = agentplane_testkit::fixtures::agent(&owner, young, 10).await;
    many_tasks(&owner, young, young_agent, "pending", 3_000).await;
    let task: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM tasks WHERE tenant_id = $1 ORDER BY id DESC LIMIT 1")
            .bind(young)
            .fetch_one(&owner)
            .await
            .unwrap();

    // The foreign-key check's statement, with the values written in as a custom plan has them.
    let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (FORMAT JSON) SELECT 1 FROM ONLY tasks x \
         WHERE tenant_id = '{young}' AND id = '{task}' FOR KEY SHARE OF x"
    )))
    .fetch_one(&owner)
    .await
    .unwrap();
    let mut used = Vec::new();
    indexes_in(&plan, &mut used);
    assert_eq!(used, ["tasks_pkey"], "{plan:#}");
}

/// A batch of worker reports locks and marks its tasks by key however many there are. The
/// planner guesses a workspace at 0.5 % of the table (`tenant_id` keeps no statistics), and
/// with the keys written as `id = ANY(…)` it scanned the workspace's whole key range instead
/// as soon as a batch outnumbered that guess: here 300 keys against a guess of ~100 rows, in
/// a workspace of 20,000 tasks (docs/benchmarks.md, "A workspace larger than the planner's
/// guess").
#[tokio::test]
async fn a_batch_larger_than_the_guess_of_its_workspace_reaches_its_tasks_by_key() {
    use agentplane_control_plane::domain::worker::{Lease, ResultOutcome};
    use agentplane_control_plane::ids::{TaskId, TenantId, WorkerId};

    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    // The setup's own reads of tasks are counted when its connection ends, before the test.
    let setup = agentplane_testkit::fixtures::named(&db.owner_url(), "setup").await;
    let (workspace, _) = analyzed_workspace(&setup, 20_000).await;
    let worker = WorkerId(uuid::Uuid::now_v7());
    let ids: Vec<TaskId> = sqlx::query_scalar::<_, uuid::Uuid>(
        "UPDATE tasks SET status = 'running', attempt = 1, worker_id = $2, ended_at = NULL, \
                lease_expires_at = now() + interval '1 minute' \
         WHERE (tenant_id, id) IN (SELECT tenant_id, id FROM tasks WHERE tenant_id = $1 \
                                   ORDER BY random() LIMIT 300) \
         RETURNING id",
    )
    .bind(workspace)
    .bind(worker.0)
    .fetch_all(&setup)
    .await
    .unwrap()
    .into_iter()
    .map(TaskId)
    .collect();
    setup.close().await;
    let tenant = TenantId(workspace);
    // Half succeed, half fail for good.
    let endings: Vec<(Lease, ResultOutcome)> = ids
        .iter()
        .enumerate()
        .map(|(n, &task)| {
            let outcome = if n % 2 == 0 {
                ResultOutcome::Success {
                    output: "done".into(),
                    finish_reason: "stop".into(),
                    calls: Vec::new(),
                    position: 0,
                }
            } else {
                ResultOutcome::Failure {
                    code: "broken".into(),
                    message: "it broke".into(),
                    retryable: false,
                }
            };
            let lease = Lease {
                tenant,
                task,
                attempt: 1,
            };
            (lease, outcome)
        })
        .collect();

    let before = agentplane_testkit::fixtures::rows_read(&owner, "tasks", "setup").await;
    let app = agentplane_testkit::fixtures::named(&db.app_url(), "reports").await;
    let mut tx = store::Store::new(app.clone())
        .tenant_for_reports(tenant)
        .await
        .unwrap();
    tx.lock_tasks_in_order(&ids).await.unwrap();
    let checks = tx
        .record_results(worker, &endings, &Default::default(), "worker:test")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        checks
            .iter()
            .all(|check| *check == store::LeaseCheck::Accepted)
    );
    app.close().await;
    let read = agentplane_testkit::fixtures::rows_read(&owner, "tasks", "reports").await - before;
    assert!(
        (300..3_000).contains(&read),
        "locking and marking 300 tasks read {read} rows of tasks"
    );
    let ended: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM tasks WHERE id = ANY($1) GROUP BY status ORDER BY status",
    )
    .bind(ids.iter().map(|id| id.0).collect::<Vec<_>>())
    .fetch_all(&owner)
    .await
    .unwrap();
    assert_eq!(
        ended,
        [("failed".to_owned(), 150), ("succeeded".to_owned(), 150)]
    );
}

/// The foreign-key checks that the workers' claims and reports and batch creation defer to
/// COMMIT still refuse a row without its parent, at COMMIT; a transaction that does not
/// defer them is refused at the statement, as before.
#[tokio::test]
async fn deferred_key_checks_still_refuse_an_orphan_at_commit() {
    use agentplane_core::key_checks;

    let db = TestDb::new().await;
    let app = PgPool::connect(&db.app_url()).await.unwrap();
    // A workspace that does not exist, so that row-level security lets the row through and
    // only the foreign key can refuse it.
    let missing = uuid::Uuid::now_v7();
    let insert = "INSERT INTO events (tenant_id, id, actor, action, resource_type, resource_id) \
                  VALUES ($1, $2, 'test', 'task.tested', 'task', $2)";
    let settings = "SELECT set_config('app.tenant_id', $1, true)";

    let mut tx = app.begin().await.unwrap();
    sqlx::query(settings)
        .bind(missing.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    let refused = sqlx::query(insert)
        .bind(missing)
        .bind(uuid::Uuid::now_v7())
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(code(&refused), "23503", "{refused}");
    drop(tx);

    let mut tx = app.begin().await.unwrap();
    sqlx::query(settings)
        .bind(missing.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::raw_sql(key_checks::DEFER)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(insert)
        .bind(missing)
        .bind(uuid::Uuid::now_v7())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::raw_sql(key_checks::PLAN_AT_COMMIT)
        .execute(&mut *tx)
        .await
        .unwrap();
    let refused = tx.commit().await.unwrap_err();
    assert_eq!(code(&refused), "23503", "{refused}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant_id = $1")
        .bind(missing)
        .fetch_one(&db.owner_pool().await)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    app.close().await;
}

fn code(error: &sqlx::Error) -> String {
    error
        .as_database_error()
        .and_then(|error| error.code())
        .map(|code| code.into_owned())
        .unwrap_or_default()
}

/// Creates six tasks one by one and then `batch` in one transaction, all through one
/// connection named `creates` (closed at the end), so that the key checks of the batch's
/// transcript rows use the plan PostgreSQL keeps from the sixth execution of a check on.
async fn create_with_kept_key_checks(
    db: &TestDb,
    workspace: uuid::Uuid,
    agent: uuid::Uuid,
    batch: usize,
) {
    use agentplane_control_plane::domain::task::{InputMessage, NewTask, Role};
    use agentplane_control_plane::ids::{AgentId, TenantId};

    let app = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{}?application_name=creates", db.app_url()))
        .await
        .unwrap();
    let store = store::Store::new(app.clone());
    let new = |_| NewTask {
        tenant: TenantId(workspace),
        agent_id: AgentId(agent),
        input: vec![InputMessage {
            role: Role::User,
            content: "hello".into(),
        }],
        priority: 0,
        run_at: None,
        labels: Default::default(),
        request_id: None,
        traceparent: None,
    };
    for _ in 0..6 {
        let task = new(0);
        let mut tx = store.tenant(TenantId(workspace)).await.unwrap();
        tx.create_tasks(&[(&task, "test")]).await.unwrap();
        tx.commit().await.unwrap();
    }
    let tasks: Vec<NewTask> = (0..batch).map(new).collect();
    let items: Vec<(&NewTask, &str)> = tasks.iter().map(|task| (task, "test")).collect();
    let mut tx = store.tenant(TenantId(workspace)).await.unwrap();
    tx.create_tasks(&items).await.unwrap();
    tx.commit().await.unwrap();
    app.close().await;
}

/// Without statistics (a fresh install, until autovacuum first analyzes `tasks`),
/// PostgreSQL costs every index of `tasks` that leads with `tenant_id` the same as the primary
/// key for a probe by `(tenant_id, id)`, and takes the index created last. The transcript
/// rows' key checks are such probes: they must reach the primary key (migration
/// 20261126100000), not walk the workspace's entries in `tasks_by_status`. An index added to
/// `tasks` later that leads with `tenant_id` fails this test until the primary key is rebuilt
/// after it.
#[tokio::test]
async fn a_key_check_on_a_table_without_statistics_probes_the_primary_key() {
    use agentplane_testkit::fixtures::index_scans;

    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let (workspace, agent) = workspace_without_autovacuum(&owner).await;
    let analyzed: f32 =
        sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE oid = 'tasks'::regclass")
            .fetch_one(&owner)
            .await
            .unwrap();
    assert!(analyzed < 0.0, "tasks has statistics: {analyzed} tuples");

    let indexes = ["tasks_pkey", "tasks_by_status", "tasks_by_agent"];
    let mut before = Vec::new();
    for index in indexes {
        before.push(index_scans(&owner, index, "creates").await);
    }
    create_with_kept_key_checks(&db, workspace, agent, 500).await;

    let mut scans = Vec::new();
    for (index, before) in indexes.into_iter().zip(before) {
        scans.push((index, index_scans(&owner, index, "creates").await - before));
    }
    assert!(
        scans[0].1 >= 506 && scans[1].1 == 0 && scans[2].1 == 0,
        "scans while creating 506 tasks: {scans:?}"
    );
}

/// The key checks deferred to COMMIT use a plan kept per connection, and one kept from a
/// table analyzed while it was a page long still probes the key as the table grows: made
/// with sequential scans allowed, it scanned `tasks` whole for every checked row (here the
/// transcript row of each of 2,000 tasks created in one batch: 2 million rows read).
#[tokio::test]
async fn a_key_check_kept_from_a_one_page_table_probes_the_key() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let setup = agentplane_testkit::fixtures::named(&db.owner_url(), "setup").await;
    let (workspace, agent) = analyzed_workspace(&setup, 5).await;
    setup.close().await;

    let before = agentplane_testkit::fixtures::rows_read(&owner, "tasks", "setup").await;
    create_with_kept_key_checks(&db, workspace, agent, 2_000).await;

    let read = agentplane_testkit::fixtures::rows_read(&owner, "tasks", "creates").await - before;
    assert!(
        read < 20_000,
        "creating 2,006 tasks read {read} rows of tasks for their key checks"
    );
    let created: i64 =
        sqlx::query_scalar("SELECT count(*) FROM task_messages WHERE tenant_id = $1")
            .bind(workspace)
            .fetch_one(&owner)
            .await
            .unwrap();
    assert!(created >= 2_006, "{created} transcript rows");
}
