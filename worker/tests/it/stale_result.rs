//! A result the control plane refuses (its attempt is no longer current) is logged by the
//! worker at WARN with the lease and the reason, and is not sent again. Run as the real
//! binary with JSON logs, so the test reads what an operator would.

use std::process::Stdio;
use std::time::Duration;

use agentplane_proto::v1::session_request::Kind;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::fake_control_plane::{FakeControlPlane, TOKEN};
use crate::fixtures::{agent, task, workspace};
use crate::pg::TestDb;

#[tokio::test]
async fn a_refused_stale_result_is_logged_as_a_warning_and_not_resent() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let tenant = workspace(&owner).await;
    let agent_id = agent(&owner, tenant, 10).await;
    let task_id = task(&owner, tenant, agent_id, 0, "too late").await;
    let mut cp = FakeControlPlane::start(Duration::from_millis(100), Duration::from_secs(30)).await;
    let mut worker = Command::new(env!("CARGO_BIN_EXE_agentplane-worker"))
        .env_clear()
        .env("AGENTPLANE_CONTROL_PLANE_URL", cp.url())
        .env("AGENTPLANE_WORKER_DATABASE_URL", db.worker_url())
        .env("AGENTPLANE_WORKER_TOKEN", TOKEN)
        .env("AGENTPLANE_WORKER_ECHO_TOKEN_DELAY_MS", "1")
        .env("AGENTPLANE_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();

    let result = loop {
        if let (_, Kind::Result(result)) = cp.next().await {
            break result;
        }
    };
    let lease = result.lease.unwrap();
    assert_eq!(lease.task_id, task_id.to_string());
    let reason = "attempt 1 is not current (current is 2)";
    cp.decline(lease, reason);

    let warning = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if entry["fields"]["message"] == "control plane declined the result" {
                return entry;
            }
        }
        panic!("the worker exited without logging the refusal");
    })
    .await
    .expect("the refusal was logged within 10 s");
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["fields"]["reason"], reason, "{warning}");
    let lease_field = warning["fields"]["lease"].as_str().unwrap_or_default();
    assert!(lease_field.contains(&task_id.to_string()), "{warning}");

    // Refused is settled: the result does not come again, even over a new stream.
    cp.break_stream();
    let later = cp.drain_for(Duration::from_millis(1500)).await;
    assert!(
        later
            .iter()
            .all(|(_, kind)| !matches!(kind, Kind::Result(_))),
        "a refused result was sent again: {later:?}"
    );
    worker.start_kill().unwrap();
    worker.wait().await.unwrap();
}
