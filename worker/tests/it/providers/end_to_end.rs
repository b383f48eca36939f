//! Real model providers through the whole system: a control plane and a worker in process,
//! an agent created over the API, and the vendor played by the fake server.

use std::time::Duration;

use agentplane_proto::v1 as pb;
use agentplane_testkit::app::TestApp;

use super::fake::{FakeVendor, Reply, whole};
use super::tool_wire::FakeCall;
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

/// The agent's one tool, as the API takes it.
fn weather_tool() -> pb::Tool {
    let json = serde_json::json!({
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    });
    let serde_json::Value::Object(fields) = json else {
        unreachable!()
    };
    pb::Tool {
        name: "get_weather".to_owned(),
        description: "The weather in a city".to_owned(),
        parameters: Some(prost_types::Struct {
            fields: fields.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
        }),
    }
}

fn to_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

fn wire_provider(vendor: Vendor) -> pb::Provider {
    match vendor {
        Vendor::Anthropic => pb::Provider::Anthropic,
        Vendor::OpenAi => pb::Provider::Openai,
        Vendor::OpenAiCompatible => pb::Provider::OpenaiCompatible,
        Vendor::Gemini => pb::Provider::Gemini,
    }
}

/// Polls the task until it has `status`.
async fn wait_status(
    clients: &mut agentplane_testkit::app::Clients,
    workspace_id: &str,
    id: &str,
    status: pb::TaskStatus,
) -> pb::Task {
    for _ in 0..400 {
        let task = clients.get_task(workspace_id, id).await;
        if task.status == status as i32 {
            return task;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("task {id} never reached {status:?}");
}

#[tokio::test]
async fn every_vendor_runs_a_tool_call_round_trip_through_submit_tool_outputs() {
    for vendor in [
        Vendor::Anthropic,
        Vendor::OpenAi,
        Vendor::OpenAiCompatible,
        Vendor::Gemini,
    ] {
        let call = FakeCall {
            id: "call_w1",
            name: "get_weather",
            fragments: &["{\"city\":", " \"Paris\"}"],
        };
        let fake = FakeVendor::start(vec![
            Reply::Stream {
                headers: vec![],
                steps: whole(&vendor.tool_answer(&["Checking."], &[call])),
            },
            Reply::Stream {
                headers: vec![],
                steps: whole(&vendor.answer(&["Sunny", " in Paris."])),
            },
        ])
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
        let agent = clients
            .agents
            .create_agent(pb::CreateAgentRequest {
                workspace_id: workspace_id.clone(),
                agent: Some(pb::Agent {
                    name: "forecaster".to_owned(),
                    provider: wire_provider(vendor).into(),
                    model: MODEL.to_owned(),
                    system_prompt: "Be brief.".to_owned(),
                    tools: vec![weather_tool()],
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .agent
            .unwrap();
        let task = clients
            .task(&workspace_id, &agent.id, "Weather in Paris?")
            .await;

        let waiting = wait_status(
            &mut clients,
            &workspace_id,
            &task.id,
            pb::TaskStatus::RequiresAction,
        )
        .await;
        let action = waiting.required_action.unwrap();
        assert_eq!(action.step, 0, "{vendor:?}");
        let [called] = action.tool_calls.as_slice() else {
            panic!("{vendor:?}: one call expected: {action:?}");
        };
        assert_eq!(called.name, "get_weather");
        let arguments: serde_json::Value = serde_json::from_str(&called.arguments).unwrap();
        assert_eq!(
            arguments,
            serde_json::json!({"city": "Paris"}),
            "{vendor:?}"
        );
        if vendor.names_calls() {
            assert_eq!(called.id, "call_w1", "{vendor:?}");
        }

        let resumed = clients
            .tasks
            .submit_tool_outputs(pb::SubmitToolOutputsRequest {
                workspace_id: workspace_id.clone(),
                task_id: task.id.clone(),
                tool_outputs: vec![pb::ToolOutput {
                    tool_call_id: called.id.clone(),
                    output: "sunny, 21 °C".to_owned(),
                    is_error: false,
                }],
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap();
        assert_eq!(resumed.status, pb::TaskStatus::Pending as i32);
        let done = clients.wait_terminal(&workspace_id, &task.id).await;
        assert_eq!(
            done.status,
            pb::TaskStatus::Succeeded as i32,
            "{vendor:?}: {done:?}"
        );
        assert_eq!(done.output, "Sunny in Paris.", "{vendor:?}");
        assert_eq!(done.attempt, 2, "{vendor:?}: one attempt per step");

        // The second request carried the call and its output in the vendor's own form, and
        // the request id of step 1.
        let requests = fake.requests();
        assert_eq!(
            requests.len(),
            2,
            "{vendor:?}: one call per step, none repeated"
        );
        assert_eq!(
            requests[1].header("idempotency-key"),
            Some(format!("{}-1", task.id).as_str()),
            "{vendor:?}"
        );
        let history = vendor.sent_history(&requests[1].body).to_string();
        for needle in ["get_weather", "sunny, 21 °C", "Checking."] {
            assert!(
                history.contains(needle),
                "{vendor:?}: {needle} in {history}"
            );
        }
        assert!(
            !vendor.sent_tools(&requests[1].body).is_null(),
            "{vendor:?}: the tools are declared on every step"
        );
        worker.shutdown().await;
        app.stop().await;
    }
}

#[tokio::test]
async fn a_primary_that_fails_mid_stream_falls_back_and_watchers_see_its_output_withdrawn() {
    // The primary streams half an answer, stalls a moment, and its stream ends without its
    // terminal event: retryable, but it streamed, so only a fallback can save the attempt.
    let primary = Vendor::OpenAiCompatible;
    let mut steps = whole(&primary.truncated(&["Once upon"])[..2]);
    steps.push(super::fake::Step::Pause(Duration::from_millis(800)));
    steps.extend(whole(&primary.truncated(&["Once upon"])[2..]));
    let failing = FakeVendor::start(vec![Reply::Stream {
        headers: vec![],
        steps,
    }])
    .await;
    let fallback = Vendor::OpenAi;
    let answering = FakeVendor::start(vec![Reply::Stream {
        headers: vec![],
        steps: whole(&fallback.answer(&["Hello", " from", " the fallback"])),
    }])
    .await;
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let worker = app
        .worker_with(&db, 2, Duration::ZERO, |config| {
            let mut settings = primary.settings(&failing.url(), "local-key-123");
            settings.openai = fallback.settings(&answering.url(), "sk-test").openai;
            config.providers = settings;
        })
        .await;
    let mut clients = app.admin().await;
    let workspace_id = clients.workspace("acme").await;
    let agent = clients
        .agents
        .create_agent(pb::CreateAgentRequest {
            workspace_id: workspace_id.clone(),
            agent: Some(pb::Agent {
                name: "resilient".to_owned(),
                provider: pb::Provider::OpenaiCompatible.into(),
                model: MODEL.to_owned(),
                fallbacks: vec![pb::ModelChoice {
                    provider: pb::Provider::Openai.into(),
                    model: MODEL.to_owned(),
                }],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    let task = clients.task(&workspace_id, &agent.id, "A story?").await;
    let mut watch = clients
        .tasks
        .watch_task(pb::WatchTaskRequest {
            workspace_id: workspace_id.clone(),
            id: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();

    // What the watcher assembles: the snapshot's text, deltas appended, cleared on a reset.
    let mut text = String::new();
    let mut resets = 0;
    let mut withdrawn = String::new();
    let last = loop {
        use pb::watch_task_response::Kind;
        match watch.message().await.unwrap().unwrap().kind.unwrap() {
            Kind::Snapshot(snapshot) => text = snapshot.output,
            Kind::Delta(delta) => text.push_str(&delta.text),
            Kind::Reset(reset) => {
                assert_eq!(reset.reason, "provider_fallback");
                resets += 1;
                withdrawn = std::mem::take(&mut text);
            }
            Kind::Task(task) if task.status == pb::TaskStatus::Succeeded as i32 => break task,
            Kind::Task(_) => {}
        }
    };
    assert_eq!(last.output, "Hello from the fallback");
    assert_eq!(
        text, last.output,
        "the deltas after the reset add up to the answer"
    );
    assert_eq!(resets, 1);
    assert_eq!(
        withdrawn, "Once upon",
        "the failed call's output was withdrawn"
    );
    assert_eq!(last.attempt, 1, "the fallback ran in the same attempt");
    assert_eq!(
        failing.request_count(),
        1,
        "a call that streamed is not retried"
    );
    assert_eq!(answering.request_count(), 1);
    assert_eq!(
        answering.requests()[0].header("idempotency-key"),
        Some(format!("{}-0", task.id).as_str()),
        "the fallback sends the step's request id"
    );
    worker.shutdown().await;
    app.stop().await;
}

#[tokio::test]
async fn a_canceled_call_is_metered_for_what_the_vendor_said_it_consumed() {
    // Anthropic reports the prompt's tokens in message_start, before any text: a call
    // canceled after that has cost them.
    let vendor = Vendor::Anthropic;
    let mut steps = whole(&vendor.answer(&["Once", " upon", " a time"])[..3]);
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
            config.providers = vendor.settings(&fake.url(), "sk-ant-test");
            config.providers.http.stall_timeout = Duration::from_secs(600);
        })
        .await;
    let mut clients = app.admin().await;
    let workspace_id = clients.workspace("acme").await;
    let agent = create_agent(&mut clients, &workspace_id, pb::Provider::Anthropic).await;
    let task = clients.task(&workspace_id, &agent.id, "A story?").await;
    for _ in 0..600 {
        if fake.request_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the worker read message_start before the cancel.
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    let owner = db.owner_pool().await;
    let mut metered: Option<(String, i64)> = None;
    for _ in 0..200 {
        metered = sqlx::query_as(
            "SELECT outcome, input_tokens FROM usage_records WHERE task_id = $1::uuid",
        )
        .bind(&task.id)
        .fetch_optional(&owner)
        .await
        .unwrap();
        if metered.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (outcome, input_tokens) = metered.expect("the canceled call is metered");
    assert_eq!(outcome, "provider_canceled");
    assert!(input_tokens > 0, "{input_tokens}");
    worker.shutdown().await;
    app.stop().await;
}

#[tokio::test]
async fn a_primary_answering_500s_falls_back_after_its_retries_and_a_401_does_not() {
    // Anthropic fails with 500 on every try (the first and two retries), then OpenAI answers.
    let primary = Vendor::Anthropic;
    let server_error = || Reply::Status {
        status: 500,
        headers: vec![],
        body: primary.error_body(500, "internal error"),
    };
    let failing = FakeVendor::start(vec![server_error(), server_error(), server_error()]).await;
    let fallback = Vendor::OpenAi;
    let answering = FakeVendor::start(vec![Reply::Stream {
        headers: vec![],
        steps: whole(&fallback.answer(&["Saved", " by the fallback"])),
    }])
    .await;
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let worker = app
        .worker_with(&db, 2, Duration::ZERO, |config| {
            let mut settings = primary.settings(&failing.url(), "sk-ant-test");
            settings.openai = fallback.settings(&answering.url(), "sk-test").openai;
            config.providers = settings;
        })
        .await;
    let mut clients = app.admin().await;
    let workspace_id = clients.workspace("acme").await;
    let agent = clients
        .agents
        .create_agent(pb::CreateAgentRequest {
            workspace_id: workspace_id.clone(),
            agent: Some(pb::Agent {
                name: "resilient".to_owned(),
                provider: pb::Provider::Anthropic.into(),
                model: MODEL.to_owned(),
                fallbacks: vec![pb::ModelChoice {
                    provider: pb::Provider::Openai.into(),
                    model: MODEL.to_owned(),
                }],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    let task = clients.task(&workspace_id, &agent.id, "Hello?").await;
    let done = clients.wait_terminal(&workspace_id, &task.id).await;
    assert_eq!(done.status, pb::TaskStatus::Succeeded as i32, "{done:?}");
    assert_eq!(done.output, "Saved by the fallback");
    assert_eq!(
        failing.request_count(),
        3,
        "the primary's retries came first"
    );
    assert_eq!(answering.request_count(), 1);
    let owner = db.owner_pool().await;
    let code: String = sqlx::query_scalar(
        "SELECT data ->> 'code' FROM events \
         WHERE resource_id = $1::uuid AND action = 'task.provider_fallback'",
    )
    .bind(&task.id)
    .fetch_one(&owner)
    .await
    .unwrap();
    assert_eq!(code, "provider_server_error");

    // A permanent error does not fall back: 401 fails the task at once.
    let refusing = FakeVendor::start(vec![Reply::Status {
        status: 401,
        headers: vec![],
        body: primary.error_body(401, "invalid x-api-key"),
    }])
    .await;
    let app2 = TestApp::spawn(&db).await;
    let worker2 = app2
        .worker_with(&db, 2, Duration::ZERO, |config| {
            let mut settings = primary.settings(&refusing.url(), "sk-ant-wrong");
            settings.openai = fallback.settings(&answering.url(), "sk-test").openai;
            config.providers = settings;
        })
        .await;
    worker.shutdown().await;
    let task = clients.task(&workspace_id, &agent.id, "Hello again?").await;
    let done = clients.wait_terminal(&workspace_id, &task.id).await;
    assert_eq!(done.status, pb::TaskStatus::Failed as i32, "{done:?}");
    assert_eq!(done.error.unwrap().code, "provider_authentication_failed");
    assert_eq!(done.attempt, 1, "not retried");
    assert_eq!(refusing.request_count(), 1);
    assert_eq!(
        answering.request_count(),
        1,
        "no fallback after a permanent error"
    );
    worker2.shutdown().await;
    app2.stop().await;
    app.stop().await;
}
