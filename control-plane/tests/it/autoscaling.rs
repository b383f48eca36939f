//! The KEDA ScaledObject's query (deploy/k8s/base/worker-scaledobject.yaml), run as KEDA runs
//! it: as a login role in `agentplane_metrics`, against the real schema.

use agentplane_testkit::fixtures;
use sqlx::Connection as _;

use crate::pg::TestDb;

/// The `query:` of the postgresql trigger, read from the manifest itself so the test and
/// the deployment cannot drift apart.
fn scaler_query() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/k8s/base/worker-scaledobject.yaml"
    );
    let manifest = std::fs::read_to_string(path).unwrap();
    let line = manifest
        .lines()
        .find_map(|line| line.trim().strip_prefix("query: "))
        .unwrap_or_else(|| panic!("no query in {path}"));
    line.trim().trim_matches('"').to_owned()
}

#[tokio::test]
async fn keda_scaler_query_returns_the_queue_depth_on_a_seeded_database() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    // Roles are cluster-wide: create the scaler's login role once per cluster.
    sqlx::raw_sql(
        "DO $$ BEGIN \
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'keda_test') THEN \
             CREATE ROLE keda_test LOGIN IN ROLE agentplane_metrics; \
           END IF; \
         END $$",
    )
    .execute(&owner)
    .await
    .unwrap();
    let url = db
        .owner_url()
        .replace("postgres://postgres@", "postgres://keda_test@");
    let mut keda = sqlx::PgConnection::connect(&url).await.unwrap();
    let query = scaler_query();
    let depth = || async {
        let mut keda = sqlx::PgConnection::connect(&url).await.unwrap();
        let (value,): (f64,) = sqlx::query_as(sqlx::AssertSqlSafe(scaler_query()))
            .fetch_one(&mut keda)
            .await
            .unwrap();
        value
    };
    assert_eq!(depth().await, 0.0, "an empty queue: {query}");

    // Two workspaces: 3 due tasks (two priority bands), 1 scheduled for later, 1 running,
    // 1 finished.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let ws = fixtures::workspace(&owner).await;
        let agent = fixtures::agent(&owner, ws, 10).await;
        ids.push((ws, agent));
    }
    let (a, b) = (ids[0], ids[1]);
    fixtures::task(&owner, a.0, a.1, 0, "due").await;
    fixtures::task(&owner, a.0, a.1, 5, "due, urgent").await;
    fixtures::task(&owner, b.0, b.1, -3, "due, low").await;
    let later = fixtures::task(&owner, b.0, b.1, 0, "later").await;
    let running = fixtures::task(&owner, b.0, b.1, 0, "running").await;
    let done = fixtures::task(&owner, a.0, a.1, 0, "done").await;
    sqlx::query("UPDATE tasks SET run_at = now() + interval '1 hour' WHERE id = $1")
        .bind(later)
        .execute(&owner)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE tasks SET status = 'running', attempt = 1, worker_id = gen_random_uuid(), \
                lease_expires_at = now() + interval '30 seconds' WHERE id = $1",
    )
    .bind(running)
    .execute(&owner)
    .await
    .unwrap();
    sqlx::query("UPDATE tasks SET status = 'succeeded', ended_at = now() WHERE id = $1")
        .bind(done)
        .execute(&owner)
        .await
        .unwrap();

    // Due pending plus running: the work the fleet should have capacity for.
    assert_eq!(depth().await, 4.0, "{query}");

    // The scaler's role sees totals only: no row of any workspace.
    let read = sqlx::query("SELECT id FROM tasks LIMIT 1")
        .fetch_optional(&mut keda)
        .await;
    assert!(read.is_err(), "the metrics role read a task row");
}
