//! A whole worker against the fake control plane: what it sends, and how it behaves when
//! the stream breaks, a lease is lost, or it shuts down.

use std::time::{Duration, Instant};

use agentplane_proto::v1::{WorkerResult, WorkerStep, session_request::Kind, worker_result};
use agentplane_worker::{Worker, WorkerConfig};
use secrecy::SecretString;
use uuid::Uuid;

use crate::fake_control_plane::{FakeControlPlane, TOKEN};
use crate::fixtures::{agent, task, workspace};
use crate::pg::TestDb;

fn config(
    db: &TestDb,
    cp: &FakeControlPlane,
    capacity: u32,
    token_delay: Duration,
) -> WorkerConfig {
    WorkerConfig {
        worker_id: Uuid::now_v7(),
        control_plane_url: cp.url(),
        database_url: SecretString::from(db.worker_url()),
        worker_token: SecretString::from(TOKEN),
        capacity,
        poll_interval_max: Duration::from_millis(100),
        shutdown_grace: Duration::from_secs(5),
        echo_token_delay: token_delay,
        metrics_addr: None,
        labels: Default::default(),
        providers: Default::default(),
    }
}

/// Reads messages until a result, returning the `(index, text)` outputs and the steps seen
/// before it.
async fn outputs_until_result(
    cp: &mut FakeControlPlane,
    session: usize,
) -> (Vec<(i64, String)>, Vec<WorkerStep>, WorkerResult) {
    let mut outputs = Vec::new();
    let mut steps = Vec::new();
    loop {
        let (on, kind) = cp.next().await;
        assert_eq!(on, session, "message on an unexpected stream: {kind:?}");
        match kind {
            Kind::Output(output) => outputs.push((output.index, output.text)),
            Kind::Event(event) => assert_eq!(event.action, "task.model_call_started"),
            Kind::Step(step) => steps.push(step),
            Kind::Result(result) => return (outputs, steps, result),
            other => panic!("unexpected message {other:?}"),
        }
    }
}

#[tokio::test]
async fn results_are_sent_again_after_a_reconnect_until_acknowledged() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let tenant = workspace(&owner).await;
    let agent_id = agent(&owner, tenant, 10).await;
    let task_id = task(&owner, tenant, agent_id, 0, "one two three").await;
    let mut cp = FakeControlPlane::start(Duration::from_millis(100), Duration::from_secs(30)).await;
    let worker = Worker::start(config(&db, &cp, 2, Duration::from_millis(1)))
        .await
        .unwrap();

    let (outputs, steps, result) = outputs_until_result(&mut cp, 1).await;
    let indexes: Vec<i64> = outputs.iter().map(|(index, _)| *index).collect();
    assert_eq!(
        indexes,
        (0..outputs.len() as i64).collect::<Vec<_>>(),
        "no gaps"
    );
    let text: String = outputs.iter().map(|(_, text)| text.as_str()).collect();
    assert_eq!(text, "You said: one two three");
    let lease = result.lease.clone().unwrap();
    assert_eq!(
        (
            lease.workspace_id.as_str(),
            lease.task_id.as_str(),
            lease.attempt
        ),
        (tenant.to_string().as_str(), task_id.to_string().as_str(), 1)
    );
    let Some(worker_result::Outcome::Success(success)) = &result.outcome else {
        panic!("expected success: {result:?}");
    };
    assert_eq!(success.output, text);
    assert_eq!(success.finish_reason, "stop");
    assert!(
        success.calls.is_empty(),
        "the call is reported with its step"
    );
    // The completed call came first, as the task's step 0, after its system prompt and its
    // input message.
    let [step] = steps.as_slice() else {
        panic!("expected one step before the result: {steps:?}");
    };
    assert_eq!((step.step, step.position), (0, 2));
    assert_eq!(success.position, step.position);
    assert_eq!(step.text, text);
    let call = step.call.as_ref().unwrap();
    assert_eq!(call.provider_request_id, format!("{task_id}-0"));
    assert_eq!(
        (call.provider.as_str(), call.outcome.as_str()),
        ("echo", "ok")
    );
    let usage = call.usage.unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens), (7 + 8, 5));

    // The result is not acknowledged and the stream breaks: it comes again, with its step
    // and without the output it supersedes.
    cp.break_stream();
    let (replayed, steps_again, again) = outputs_until_result(&mut cp, 2).await;
    assert_eq!(replayed, []);
    assert_eq!(steps_again, steps);
    assert_eq!(again, result);
    cp.ack(lease);

    let started = Instant::now();
    worker.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        cp.drain_for(Duration::from_millis(200))
            .await
            .iter()
            .all(|(_, kind)| !matches!(kind, Kind::Result(_))),
        "an acknowledged result is not sent again"
    );
}

#[tokio::test]
async fn shutdown_releases_attempts_still_running_after_the_grace_period() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let tenant = workspace(&owner).await;
    let agent_id = agent(&owner, tenant, 10).await;
    let task_id = task(&owner, tenant, agent_id, 0, "slow words take ages").await;
    let mut cp = FakeControlPlane::start(Duration::from_millis(100), Duration::from_secs(30)).await;
    let mut settings = config(&db, &cp, 2, Duration::from_secs(10));
    settings.shutdown_grace = Duration::from_millis(100);
    let worker = Worker::start(settings).await.unwrap();

    loop {
        if let (_, Kind::Output(_)) = cp.next().await {
            break;
        }
    }
    let started = Instant::now();
    let shutdown = tokio::spawn(worker.shutdown());
    let release = loop {
        match cp.next().await {
            (_, Kind::Release(release)) => break release,
            (_, Kind::Output(_) | Kind::Event(_) | Kind::Step(_)) => {}
            (_, other) => panic!("unexpected message {other:?}"),
        }
    };
    let lease = release.lease.unwrap();
    assert_eq!(lease.task_id, task_id.to_string());
    cp.ack(lease);
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown finishes once the release is acknowledged")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_lost_lease_stops_its_attempt_silently_and_frees_the_slot() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let tenant = workspace(&owner).await;
    let agent_id = agent(&owner, tenant, 10).await;
    let lost = task(
        &owner,
        tenant,
        agent_id,
        1,
        &"many words to echo ".repeat(50),
    )
    .await;
    let next = task(&owner, tenant, agent_id, 0, "next").await;
    let mut cp = FakeControlPlane::start(Duration::from_millis(50), Duration::from_secs(30)).await;
    let worker = Worker::start(config(&db, &cp, 1, Duration::from_millis(50)))
        .await
        .unwrap();

    loop {
        if let (_, Kind::Output(output)) = cp.next().await {
            assert_eq!(output.lease.unwrap().task_id, lost.to_string());
            break;
        }
    }
    cp.lose(&lost.to_string());
    // Capacity is 1: the next task can only run once the lost attempt freed its slot.
    let result = loop {
        match cp.next().await {
            (_, Kind::Result(result)) => break result,
            (_, Kind::Output(_) | Kind::Event(_) | Kind::Step(_)) => {}
            (_, other) => panic!("unexpected message {other:?}"),
        }
    };
    let lease = result.lease.unwrap();
    assert_eq!(
        lease.task_id,
        next.to_string(),
        "no result for the lost lease"
    );
    cp.ack(lease);
    worker.shutdown().await;
    assert_eq!(cp.sessions(), 1);
}

#[tokio::test]
async fn a_control_plane_that_hangs_up_after_the_welcome_is_retried_with_growing_pauses() {
    let db = TestDb::new().await;
    let mut cp = FakeControlPlane::start(Duration::from_millis(50), Duration::from_secs(30)).await;
    let worker = Worker::start(config(&db, &cp, 1, Duration::ZERO))
        .await
        .unwrap();
    // Let the first stream prove healthy (its heartbeats are answered), then break it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    cp.hang_up_after_welcome(true);
    cp.break_stream();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // Pauses of 100, 200, 400, 800 ms (each jittered down by up to half): at most 6 streams
    // in 2 s, where resetting the backoff at every welcome would open 20 to 40.
    let reconnects = cp.sessions() - 1;
    assert!(
        (2..=6).contains(&reconnects),
        "{reconnects} reconnects in 2s"
    );

    // Once streams stay up again, the worker works as before.
    cp.hang_up_after_welcome(false);
    let owner = db.owner_pool().await;
    let tenant = workspace(&owner).await;
    let agent_id = agent(&owner, tenant, 10).await;
    let task_id = task(&owner, tenant, agent_id, 0, "back again").await;
    let result = loop {
        if let (_, Kind::Result(result)) = cp.next().await {
            break result;
        }
    };
    let lease = result.lease.unwrap();
    assert_eq!(lease.task_id, task_id.to_string());
    cp.ack(lease);
    worker.shutdown().await;
}

#[tokio::test]
async fn start_fails_when_the_control_plane_rejects_the_token() {
    let db = TestDb::new().await;
    let cp = FakeControlPlane::start(Duration::from_secs(1), Duration::from_secs(30)).await;
    let mut settings = config(&db, &cp, 1, Duration::ZERO);
    let wrong = "wkr_0190a5b0c0d07a008000000000000002_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
    settings.worker_token = SecretString::from(wrong);
    let error = Worker::start(settings).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("bad worker token"), "{message}");
    assert!(!message.contains(wrong), "{message}");
}

#[tokio::test]
async fn a_worker_whose_results_are_not_acknowledged_claims_no_more_than_its_capacity() {
    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let tenant = workspace(&owner).await;
    let agent_id = agent(&owner, tenant, 10).await;
    for n in 0..5 {
        task(&owner, tenant, agent_id, 0, &format!("task {n}")).await;
    }
    let mut cp = FakeControlPlane::start(Duration::from_millis(100), Duration::from_secs(30)).await;
    let worker = Worker::start(config(&db, &cp, 2, Duration::from_millis(1)))
        .await
        .unwrap();
    let running = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM tasks WHERE status = 'running'")
            .fetch_one(&owner)
            .await
            .unwrap()
    };

    // Two results arrive and are not acknowledged (the control plane is backed up).
    let mut results = Vec::new();
    while results.len() < 2 {
        if let (_, Kind::Result(result)) = cp.next().await {
            results.push(result);
        }
    }
    // Give the claim loop (polling every 100 ms at most) every chance to claim more.
    cp.drain_for(Duration::from_millis(800)).await;
    assert_eq!(
        running().await,
        2,
        "no slot frees before its result is recorded"
    );

    // Recording one frees one slot: exactly one more task is claimed.
    cp.ack(results[0].lease.clone().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while running().await < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let later = cp.drain_for(Duration::from_millis(500)).await;
    assert_eq!(running().await, 3);
    // Acknowledge the rest so shutdown does not wait for them.
    for kind in later.into_iter().map(|(_, kind)| kind) {
        if let Kind::Result(result) = kind {
            cp.ack(result.lease.unwrap());
        }
    }
    cp.ack(results[1].lease.clone().unwrap());
    worker.shutdown().await;
}
