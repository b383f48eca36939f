//! Chaos, bounded: worker processes SIGKILLed and restarted, and a control-plane replica
//! killed and restarted, while tasks run. However it goes, every task must end in exactly
//! one terminal state, none may succeed twice, and the attempt numbers must agree with the
//! claims the event log recorded.
//!
//! Real processes where it matters: the workers are the `agentplane-worker` binary, killed
//! with SIGKILL. Control planes run in process; the one that is killed runs on a runtime of
//! its own that is dropped at once (`KillableApp`), which closes its sockets as a crash would.
//! Nothing here asserts timing: waits are bounded and generous, and the outcome is checked
//! from the database once every task has finished.

use std::process::Stdio;
use std::time::Duration;

use agentplane_proto::v1 as pb;
use agentplane_testkit::app::{Config, KillableApp, TestApp, test_config, user};
use sqlx::PgPool;
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::pg::TestDb;

const TASKS: usize = 120;
const CAPACITY: &str = "4";
/// Short leases, so the work of a killed worker is reaped within seconds.
const LEASE: Duration = Duration::from_secs(3);
/// Far more than the run needs on an idle machine; only a stuck system reaches it.
const PATIENCE: Duration = Duration::from_secs(90);

/// A worker process with its own credential, restartable under the same identity.
struct WorkerProcess {
    id: Uuid,
    secret: String,
    endpoint: String,
    database_url: String,
    child: Child,
}

impl WorkerProcess {
    fn spawn(id: Uuid, secret: String, endpoint: String, database_url: String) -> WorkerProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_agentplane-worker"))
            .env_clear()
            .env("AGENTPLANE_CONTROL_PLANE_URL", &endpoint)
            .env("AGENTPLANE_WORKER_DATABASE_URL", &database_url)
            .env("AGENTPLANE_WORKER_TOKEN", &secret)
            .env("AGENTPLANE_WORKER_CAPACITY", CAPACITY)
            .env("AGENTPLANE_WORKER_POLL_INTERVAL_MAX_MS", "200")
            .env("AGENTPLANE_WORKER_ECHO_TOKEN_DELAY_MS", "20")
            .env("AGENTPLANE_WORKER_SHUTDOWN_GRACE_SECONDS", "1")
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        WorkerProcess {
            id,
            secret,
            endpoint,
            database_url,
            child,
        }
    }

    /// SIGKILL, then the same worker starts again (as its Deployment would restart it).
    async fn kill_and_restart(self) -> WorkerProcess {
        let WorkerProcess {
            id,
            secret,
            endpoint,
            database_url,
            mut child,
        } = self;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        WorkerProcess::spawn(id, secret, endpoint, database_url)
    }
}

/// Waits (boundedly) until `worker` holds at least one running task, so a kill lands on
/// work in flight. Returns whether it did; a kill on an idle worker still tests the restart.
async fn until_running(owner: &PgPool, worker: Uuid) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tasks WHERE worker_id = $1 AND status = 'running'",
        )
        .bind(worker)
        .fetch_one(owner)
        .await
        .unwrap();
        if running > 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Per task: status, attempt, and the events the log holds about it.
#[derive(Debug, sqlx::FromRow)]
struct Audit {
    id: Uuid,
    status: String,
    attempt: i32,
    output: Option<String>,
    input: String,
    started: i64,
    succeeded: i64,
    terminal: i64,
    terminal_action: Option<String>,
}

async fn audit(owner: &PgPool, tenant: Uuid) -> Vec<Audit> {
    sqlx::query_as(
        "SELECT t.id, t.status, t.attempt, t.output, \
                (SELECT content FROM task_messages m WHERE m.tenant_id = t.tenant_id \
                   AND m.task_id = t.id AND m.role = 'user') AS input, \
                count(e.id) FILTER (WHERE e.action = 'task.started') AS started, \
                count(e.id) FILTER (WHERE e.action = 'task.succeeded') AS succeeded, \
                count(e.id) FILTER (WHERE e.action IN \
                    ('task.succeeded', 'task.failed', 'task.canceled')) AS terminal, \
                max(e.action) FILTER (WHERE e.action IN \
                    ('task.succeeded', 'task.failed', 'task.canceled')) AS terminal_action \
         FROM tasks t LEFT JOIN events e ON e.tenant_id = t.tenant_id AND e.resource_id = t.id \
         WHERE t.tenant_id = $1 GROUP BY t.tenant_id, t.id ORDER BY t.id",
    )
    .bind(tenant)
    .fetch_all(owner)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_and_a_killed_replica_leave_every_task_finished_once() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let short_leases = |config: &mut Config| {
        config.lease_duration = LEASE;
        config.heartbeat_interval = LEASE / 3;
    };
    // Replica B stays up throughout; replica A is killed and comes back on the same port.
    let b = TestApp::spawn_with(&db, short_leases).await;
    let mut a_config = test_config(&db);
    short_leases(&mut a_config);
    let a = KillableApp::start(a_config.clone()).await;
    let a_addr = a.addr;

    let mut admin = b.admin().await;
    let ws = admin.workspace("chaos").await;
    let agent = admin
        .agents
        .create_agent(pb::CreateAgentRequest {
            workspace_id: ws.clone(),
            agent: Some(pb::Agent {
                name: "coder".to_owned(),
                provider: pb::Provider::Echo.into(),
                model: "echo-1".to_owned(),
                // Enough attempts that the kills below rarely use them all up (a task that
                // does is FAILED: still exactly one terminal state).
                max_attempts: 10,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    admin
        .tasks
        .batch_create_tasks(pb::BatchCreateTasksRequest {
            workspace_id: ws.clone(),
            requests: (0..TASKS)
                .map(|n| pb::CreateTaskRequest {
                    workspace_id: ws.clone(),
                    agent_id: agent.id.clone(),
                    input: vec![user(&format!("chaos task {n}"))],
                    request_id: format!("chaos-{n}"),
                    ..Default::default()
                })
                .collect(),
        })
        .await
        .unwrap();

    let mut workers = Vec::new();
    for endpoint in [a.endpoint(), a.endpoint(), b.endpoint()] {
        let (id, secret) = b.worker_credential().await;
        workers.push(WorkerProcess::spawn(id, secret, endpoint, db.worker_url()));
    }

    // 1. A worker of replica A dies mid-task and comes back.
    let victim = workers.remove(0);
    let first_hit = until_running(&owner, victim.id).await;
    workers.push(victim.kill_and_restart().await);

    // 2. Replica A dies while its workers' sessions are open and tasks run, and comes back
    //    on the same address (as a restarted pod behind its Service would).
    let second_hit = until_running(&owner, workers[0].id).await;
    a.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut restarted = a_config;
    restarted.listen_addr = a_addr;
    let a = KillableApp::start(restarted).await;

    // 3. The worker of replica B dies mid-task and comes back.
    let victim = workers.remove(1);
    let third_hit = until_running(&owner, victim.id).await;
    workers.push(victim.kill_and_restart().await);
    // At least one kill landed on running work, or the test proves nothing.
    assert!(
        first_hit || second_hit || third_hit,
        "no kill found its worker running a task"
    );

    // Everything finishes.
    let tenant: Uuid = ws.parse().unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let unfinished: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tasks WHERE tenant_id = $1 \
             AND status NOT IN ('succeeded', 'failed', 'canceled')",
        )
        .bind(tenant)
        .fetch_one(&owner)
        .await
        .unwrap();
        if unfinished == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{unfinished} tasks still unfinished after {} s",
            PATIENCE.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let tasks = audit(&owner, tenant).await;
    assert_eq!(tasks.len(), TASKS);
    for task in &tasks {
        assert_eq!(
            task.terminal, 1,
            "task {}: one terminal event per task: {task:?}",
            task.id
        );
        assert_eq!(
            task.terminal_action.as_deref(),
            Some(format!("task.{}", task.status).as_str()),
            "the terminal event matches the status: {task:?}"
        );
        assert!(task.succeeded <= 1, "succeeded at most once: {task:?}");
        assert_eq!(
            i64::from(task.attempt),
            task.started,
            "every attempt was a recorded claim: {task:?}"
        );
        if task.status == "succeeded" {
            // The answer is one attempt's whole echo, not pieces of two.
            assert_eq!(
                task.output.as_deref(),
                Some(format!("You said: {}", task.input).as_str()),
                "{task:?}"
            );
        }
    }
    let rerun = tasks.iter().filter(|task| task.attempt > 1).count();
    eprintln!(
        "chaos: {} tasks, {rerun} ran more than once, {} did not succeed",
        tasks.len(),
        tasks
            .iter()
            .filter(|task| task.status != "succeeded")
            .count()
    );

    drop(workers);
    a.kill();
    b.stop().await;
}
