//! The Prometheus endpoints of both binaries: the series exist and move as work is done.

use std::time::Duration;

use agentplane_proto::v1 as pb;
use agentplane_testkit::fixtures;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use uuid::Uuid;

use crate::app::TestApp;
use crate::pg::TestDb;

/// GETs `/metrics` from `addr` and returns the body.
pub(crate) async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// The sum of the samples of `name` whose labels include every `label="value"` given;
/// `None` if there is no such sample.
pub(crate) fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if !labels.iter().all(|label| rest.contains(label)) {
            continue;
        }
        let value: f64 = rest.rsplit(' ').next().unwrap().parse().unwrap();
        found = Some(found.unwrap_or(0.0) + value);
    }
    found
}

fn has(text: &str, name: &str, labels: &[&str]) -> f64 {
    sample(text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"))
}

#[tokio::test]
async fn metrics_endpoints_of_both_binaries_expose_series_that_move() {
    let db = TestDb::new().await;
    let app = TestApp::spawn_with(&db, |config| {
        config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let cp_metrics = app.metrics_addr.unwrap();
    let mut c = app.admin().await;
    let ws = c.workspace("metrics").await;
    let agent = c.echo_agent(&ws, "coder").await;

    // Other tests of this binary share the process's registries: compare before and after.
    let cp_before = scrape(cp_metrics).await;
    let create = [
        "method=\"agentplane.v1.TaskService/CreateTask\"",
        "code=\"Ok\"",
    ];
    let created_before =
        sample(&cp_before, "agentplane_grpc_server_requests_total", &create).unwrap_or(0.0);

    // Two tasks wait in the queue (no worker yet); an unknown task is NOT_FOUND.
    let first = c.task(&ws, &agent.id, "one").await;
    let second = c.task(&ws, &agent.id, "two").await;
    let missing = c
        .tasks
        .get_task(pb::GetTaskRequest {
            workspace_id: ws.clone(),
            id: Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let cp = scrape(cp_metrics).await;
    assert_eq!(
        has(
            &cp,
            "agentplane_queue_ready_tasks",
            &["priority=\"normal\""]
        ),
        2.0
    );
    assert_eq!(
        has(&cp, "agentplane_queue_ready_tasks", &["priority=\"high\""]),
        0.0
    );
    assert!(
        has(
            &cp,
            "agentplane_queue_oldest_ready_age_seconds",
            &["priority=\"normal\""]
        ) >= 0.0
    );
    assert_eq!(
        has(
            &cp,
            "agentplane_queue_running_tasks",
            &["priority=\"normal\""]
        ),
        0.0
    );
    assert!(has(&cp, "agentplane_grpc_server_requests_total", &create) >= created_before + 2.0);
    let get_missing = [
        "method=\"agentplane.v1.TaskService/GetTask\"",
        "code=\"NotFound\"",
    ];
    assert!(has(&cp, "agentplane_grpc_server_requests_total", &get_missing) >= 1.0);
    assert!(
        has(
            &cp,
            "agentplane_grpc_server_request_duration_seconds_count",
            &create
        ) >= created_before + 2.0
    );
    assert!(has(&cp, "agentplane_db_pool_max_connections", &[]) >= 1.0);
    has(&cp, "agentplane_db_pool_connections", &["state=\"in_use\""]);
    has(&cp, "agentplane_db_pool_connections", &["state=\"idle\""]);

    // A watcher takes the notifications about the second task: the fan-out's lag moves.
    let lag_before = sample(&cp_before, "agentplane_fanout_lag_seconds_count", &[]).unwrap_or(0.0);
    let mut watch = c
        .tasks
        .watch_task(pb::WatchTaskRequest {
            workspace_id: ws.clone(),
            id: second.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    // A worker with its own endpoint runs them.
    let worker = app
        .worker_with(&db, 2, Duration::from_millis(1), |config| {
            config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
    let worker_metrics = worker.metrics_addr().unwrap();
    for task in [&first, &second] {
        let done = c.wait_terminal(&ws, &task.id).await;
        assert_eq!(done.status, pb::TaskStatus::Succeeded as i32, "{done:?}");
    }

    let cp = scrape(cp_metrics).await;
    assert_eq!(
        has(
            &cp,
            "agentplane_queue_ready_tasks",
            &["priority=\"normal\""]
        ),
        0.0
    );
    // The worker's session is a live stream.
    let session = ["method=\"agentplane.v1.WorkerService/Session\""];
    assert!(has(&cp, "agentplane_grpc_server_in_flight", &session) >= 1.0);
    assert!(has(&cp, "agentplane_fanout_subscribers", &[]) >= 1.0);
    has(&cp, "agentplane_fanout_backlog_notices", &[]);
    while let Some(message) = watch.message().await.unwrap() {
        if let Some(pb::watch_task_response::Kind::Task(task)) = message.kind
            && task.status == pb::TaskStatus::Succeeded as i32
        {
            break;
        }
    }
    let after_watch = scrape(cp_metrics).await;
    assert!(has(&after_watch, "agentplane_fanout_lag_seconds_count", &[]) > lag_before);

    let wk = scrape(worker_metrics).await;
    assert!(has(&wk, "agentplane_worker_claim_duration_seconds_count", &[]) >= 1.0);
    assert!(has(&wk, "agentplane_worker_claim_batch_size_sum", &[]) >= 2.0);
    assert!(has(&wk, "agentplane_worker_queue_wait_seconds_count", &[]) >= 2.0);
    let succeeded = ["outcome=\"succeeded\""];
    assert!(has(&wk, "agentplane_worker_attempts_total", &succeeded) >= 2.0);
    assert!(
        has(
            &wk,
            "agentplane_worker_attempt_duration_seconds_count",
            &succeeded
        ) >= 2.0
    );
    let echo = ["provider=\"echo\"", "model=\"echo-1\""];
    assert!(
        has(
            &wk,
            "agentplane_worker_provider_call_duration_seconds_count",
            &echo
        ) >= 2.0
    );
    assert!(
        has(
            &wk,
            "agentplane_worker_provider_time_to_first_token_seconds_count",
            &echo
        ) >= 2.0
    );
    has(&wk, "agentplane_worker_attempts_in_flight", &[]);
    has(&wk, "agentplane_db_pool_connections", &["state=\"in_use\""]);
    let expired_before = has(&wk, "agentplane_worker_lease_expiries_total", &[]);

    // A lease that ran out (its worker vanished) is reaped, and counted.
    let owner = db.owner_pool().await;
    let tenant: Uuid = ws.parse().unwrap();
    let agent_id: Uuid = agent.id.parse().unwrap();
    let orphan = fixtures::task(&owner, tenant, agent_id, 0, "orphan").await;
    sqlx::query(
        "UPDATE tasks SET status = 'running', attempt = 1, worker_id = $2, \
                lease_expires_at = now() - interval '1 second' \
         WHERE id = $1",
    )
    .bind(orphan)
    .bind(Uuid::now_v7())
    .execute(&owner)
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let wk = scrape(worker_metrics).await;
        if has(&wk, "agentplane_worker_lease_expiries_total", &[]) > expired_before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no lease expiry counted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Anything but /metrics is not found; a path outside the API is labelled `unknown`.
    let mut stream = tokio::net::TcpStream::connect(cp_metrics).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");

    worker.shutdown().await;
    app.stop().await;
}

#[tokio::test]
async fn liveness_probe_target_serves_while_the_process_runs() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel().await);
    let response = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: agentplane_control_plane::startup::LIVENESS_SERVICE.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    app.stop().await;
}
