//! Real model providers through the whole system: a control plane and a worker in process,
//! an agent created over the API, and the vendor played by the fake server.

use std::time::Duration;

use agentplane_proto::v1 as pb;
use agentplane_testkit::app::TestApp;

use super::fake::{FakeVendor, Reply, whole};
use super::vendors::{MODEL, Vendor};
use crate::pg::TestDb;

async fn create_agent(
    clients: &mut agentplane_testkit::app::Clients,
    workspace_id: &str,
    provider: pb::Provider,
) -> pb::Agent {
    clients
        .agents
        .create_agent(pb::CreateAgentRequest {
            workspace_id: workspace_id.to_owned(),
            agent: Some(pb::Agent {
                name: "local-llama".to_owned(),
                provider: provider.into(),
                model: MODEL.to_owned(),
                system_prompt: "Be brief.".to_owned(),
                max_attempts: 2,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap()
}

#[tokio::test]
async fn an_openai_compatible_agent_runs_a_task_with_the_servers_answer_and_usage() {
    let vendor = Vendor::OpenAiCompatible;
    let fake = FakeVendor::start(vec![Reply::Stream {
        headers: vec![("x-request-id", "req_e2e".to_owned())],
        steps: whole(&vendor.answer(&["Hello", " from", " the fake"])),
    }])
    .await;
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let worker = app
        .worker_with(&db, 2, Duration::ZERO, |config| {
            config.providers = vendor.settings(&fake.url(), "local-key-123");
        })
        .await;
    let mut clients = app.admin().await;
    let workspace_id = clients.workspace("acme").await;
    let agent = create_agent(&mut clients, &workspace_id, pb::Provider::OpenaiCompatible).await;
    assert_eq!(agent.provider, pb::Provider::OpenaiCompatible as i32);

    let task = clients.task(&workspace_id, &agent.id, "Say hello.").await;
    let done = clients.wait_terminal(&workspace_id, &task.id).await;
    assert_eq!(done.status, pb::TaskStatus::Succeeded as i32, "{done:?}");
    assert_eq!(done.output, "Hello from the fake");
    let usage = done.usage.unwrap();
    let expected = vendor.expected_usage();
    assert_eq!(
        (usage.input_tokens, usage.output_tokens, usage.cost_micros),
        (
            expected.input_tokens,
            expected.output_tokens,
            expected.cost_micros
        )
    );

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].header("idempotency-key"),
        Some(format!("{}-0", task.id).as_str()),
        "the request id derived from (task, step), the same on every attempt"
    );
    assert_eq!(
        vendor.conversation(&requests[0].body),
        [("system", "Be brief."), ("user", "Say hello.")]
            .map(|(role, text)| (role.to_owned(), text.to_owned()))
    );
    worker.shutdown().await;
    app.stop().await;
}

#[tokio::test]
async fn a_task_of_a_provider_without_credentials_fails_once_its_attempts_are_used() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    // This worker has no ANTHROPIC_API_KEY: it runs echo only.
    let worker = app.worker(&db, 2, Duration::ZERO).await;
    let mut clients = app.admin().await;
    let workspace_id = clients.workspace("acme").await;
    let agent = create_agent(&mut clients, &workspace_id, pb::Provider::Anthropic).await;

    let task = clients.task(&workspace_id, &agent.id, "Say hello.").await;
    let done = clients.wait_terminal(&workspace_id, &task.id).await;
    assert_eq!(done.status, pb::TaskStatus::Failed as i32, "{done:?}");
    // Retryable, since another worker of a fleet may hold the key: the agent's two attempts
    // are used, then the task fails with the reason.
    assert_eq!(done.attempt, 2, "{done:?}");
    let error = done.error.unwrap();
    assert_eq!(error.code, "provider_not_configured");
    assert!(
        error.message.contains("ANTHROPIC_API_KEY"),
        "{}",
        error.message
    );
    worker.shutdown().await;
    app.stop().await;
}

#[tokio::test]
async fn cancel_task_closes_the_connection_to_the_vendor() {
    let vendor = Vendor::OpenAiCompatible;
    // The vendor streams the start of an answer, then goes quiet until the worker hangs up.
    let mut steps = whole(&vendor.answer(&["Once", " upon", " a time"])[..2]);
    steps.push(super::fake::Step::Hang);
    let fake = FakeVendor::start(vec![Reply::Stream {
        headers: vec![],
        steps,
    }])
    .await;
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let worker = app
        .worker_with(&db, 2, Duration::ZERO, |config| {
            config.providers = vendor.settings(&fake.url(), "local-key-123");
            // Only the cancellation can end the call within wait_closed's 10 s.
            config.providers.http.stall_timeout = Duration::from_secs(600);
        })
        .await;
    let mut clients = app.admin().await;
    let workspace_id = clients.workspace("acme").await;
    let agent = create_agent(&mut clients, &workspace_id, pb::Provider::OpenaiCompatible).await;
    let task = clients
        .task(&workspace_id, &agent.id, "Tell me a story.")
        .await;

    // Wait until the worker is in the middle of the vendor's stream.
    for _ in 0..600 {
        if fake.request_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fake.request_count(), 1, "the worker called the vendor");
    clients
        .tasks
        .cancel_task(pb::CancelTaskRequest {
            workspace_id: workspace_id.clone(),
            id: task.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    fake.wait_closed().await;
    let done = clients.wait_terminal(&workspace_id, &task.id).await;
    assert_eq!(done.status, pb::TaskStatus::Canceled as i32, "{done:?}");
    assert_eq!(fake.request_count(), 1, "a canceled call is not retried");
    worker.shutdown().await;
    app.stop().await;
}
