//! One trace from the client through the control plane and the claim in PostgreSQL to the
//! worker's attempt and its provider call, exported over OTLP to a collector in this test.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use agentplane_proto::v1 as pb;
use agentplane_telemetry::{LogFormat, Telemetry, TelemetryOptions, TracesConfig, propagation};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio_stream::wrappers::TcpListenerStream;

use crate::app::{Clients, TestApp, user};
use crate::pg::TestDb;

/// An OTLP/gRPC trace collector that keeps every span it receives.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The collector and the process's telemetry pointed at it. The subscriber is global to this
/// test binary, so it is installed once (other tests' spans are exported too, and ignored).
/// It runs on its own runtime so that it outlives the test that started it.
fn collector() -> &'static (Collector, Telemetry) {
    static COLLECTOR: OnceLock<(Collector, Telemetry)> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async move {
                let collector = Collector::default();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr: SocketAddr = listener.local_addr().unwrap();
                let server = tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(collector.clone()))
                    .serve_with_incoming(TcpListenerStream::new(listener));
                tokio::spawn(server);
                let telemetry = agentplane_telemetry::init(TelemetryOptions {
                    service_name: "agentplane-it",
                    log_format: LogFormat::Text,
                    log_filter: Some("off".to_owned()),
                    traces: TracesConfig::Endpoint(format!("http://{addr}")),
                });
                assert!(
                    telemetry.exporting(),
                    "another subscriber was installed first"
                );
                sender.send((collector, telemetry)).unwrap();
                std::future::pending::<()>().await;
            });
        });
        receiver.recv().unwrap()
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates a task inside a client span ("client submits"), sending its W3C trace context in
/// the call's metadata as a traced client would; returns the task and the trace id.
async fn create_traced(c: &mut Clients, request: pb::CreateTaskRequest) -> (pb::Task, String) {
    let client_span = tracing::info_span!("client submits", trace_id = tracing::field::Empty);
    let trace_id = propagation::trace_id_of(&client_span).expect("the client span is exported");
    let mut request = tonic::Request::new(request);
    propagation::inject_into_metadata(&client_span, request.metadata_mut());
    let task = c
        .tasks
        .create_task(request)
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    (task, trace_id)
}

#[tokio::test]
async fn one_trace_follows_a_task_from_client_to_provider_call() {
    let (collector, telemetry) = collector();
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let worker = app.worker(&db, 2, Duration::from_millis(1)).await;
    let mut c = app.admin().await;
    let ws = c.workspace("traced").await;
    let agent = c.echo_agent(&ws, "coder").await;

    // The client's own span, sent as W3C trace context in the call's metadata.
    let (task, trace_id) = create_traced(
        &mut c,
        pb::CreateTaskRequest {
            workspace_id: ws.clone(),
            agent_id: agent.id.clone(),
            input: vec![user("trace me")],
            request_id: "traced-1".to_owned(),
            ..Default::default()
        },
    )
    .await;
    let done = c.wait_terminal(&ws, &task.id).await;
    assert_eq!(done.status, pb::TaskStatus::Succeeded as i32, "{done:?}");

    // Wait until the worker's spans (which end just after the result is sent) arrive.
    let wanted = [
        "client submits",
        "agentplane.v1.TaskService/CreateTask",
        "queue wait",
        "attempt",
        "provider call",
        "report result",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let spans: HashMap<String, Span> = loop {
        telemetry.force_flush();
        let spans: HashMap<String, Span> = collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|span| hex(&span.trace_id) == trace_id)
            .map(|span| {
                // The provider span is named after the provider and model.
                let name = if span.name.starts_with("echo ") {
                    "provider call".to_owned()
                } else {
                    span.name.clone()
                };
                (name, span.clone())
            })
            .collect();
        if wanted.iter().all(|name| spans.contains_key(*name)) {
            break spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans of the trace so far: {:?}",
            spans.keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let parent_of = |name: &str| hex(&spans[name].parent_span_id);
    let id_of = |name: &str| hex(&spans[name].span_id);
    assert_eq!(
        parent_of("client submits"),
        "",
        "the client span is the root"
    );
    assert_eq!(
        parent_of("agentplane.v1.TaskService/CreateTask"),
        id_of("client submits"),
        "the control plane continues the client's trace"
    );
    for (child, parent) in [
        ("queue wait", "agentplane.v1.TaskService/CreateTask"),
        ("attempt", "agentplane.v1.TaskService/CreateTask"),
        ("provider call", "attempt"),
        ("report result", "attempt"),
    ] {
        assert_eq!(parent_of(child), id_of(parent), "{child} under {parent}");
    }
    // The queue wait ends where the attempt begins.
    assert!(
        spans["queue wait"].end_time_unix_nano
            <= spans["attempt"].start_time_unix_nano + 50_000_000
    );
    assert!(
        spans["queue wait"].start_time_unix_nano
            >= spans["client submits"].start_time_unix_nano - 1_000_000_000
    );

    worker.shutdown().await;
    app.stop().await;
}

#[tokio::test]
async fn a_retried_attempt_is_in_the_same_trace_and_links_to_the_attempt_before() {
    let (collector, telemetry) = collector();
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("retraced").await;
    let agent = c.echo_agent(&ws, "coder").await;
    let (task, trace_id) = create_traced(
        &mut c,
        pb::CreateTaskRequest {
            workspace_id: ws.clone(),
            agent_id: agent.id.clone(),
            input: vec![user("twice")],
            ..Default::default()
        },
    )
    .await;

    // Attempt 1 is claimed and its lease lapses; attempt 2 runs on a real worker.
    let pool = sqlx::PgPool::connect(&db.worker_url()).await.unwrap();
    let (lost, _) = app.worker_credential().await;
    let claimed = agentplane_worker::queue::claim_tasks(&pool, lost, 1, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        agentplane_worker::queue::reap_expired_leases(&pool, 10)
            .await
            .unwrap(),
        1
    );
    sqlx::query("UPDATE tasks SET run_at = now() WHERE id = $1::uuid")
        .bind(&task.id)
        .execute(&db.owner_pool().await)
        .await
        .unwrap();
    let worker = app.worker(&db, 2, Duration::from_millis(1)).await;
    let done = c.wait_terminal(&ws, &task.id).await;
    assert_eq!(done.status, pb::TaskStatus::Succeeded as i32);
    assert_eq!(done.attempt, 2);

    let task_id: uuid::Uuid = task.id.parse().unwrap();
    let second = agentplane_telemetry::attempt_ids::attempt_span_id(task_id, 2);
    let first = agentplane_telemetry::attempt_ids::attempt_span_id(task_id, 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let attempt = loop {
        telemetry.force_flush();
        let found = collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .find(|span| hex(&span.trace_id) == trace_id && span.name == "attempt")
            .cloned();
        if let Some(span) = found {
            break span;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no attempt span in the trace"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(hex(&attempt.span_id), second.to_string());
    let links: Vec<(String, String)> = attempt
        .links
        .iter()
        .map(|link| (hex(&link.trace_id), hex(&link.span_id)))
        .collect();
    assert_eq!(links, [(trace_id.clone(), first.to_string())]);

    worker.shutdown().await;
    app.stop().await;
}

/// A one-shot OpenAI-compatible server: answers every request with a short streamed answer
/// and keeps each request's head (request line and headers, lowercased).
async fn streaming_vendor() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                // The head, then the body of Content-Length bytes.
                loop {
                    let n = socket.read(&mut buffer).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&request).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length: usize = text
                            .lines()
                            .find_map(|line| line.strip_prefix("content-length:"))
                            .and_then(|value| value.trim().parse().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            seen.lock().unwrap().push(text[..end].to_owned());
                            break;
                        }
                    }
                }
                let chunk = |json: &str| format!("data: {json}\n\n");
                let body = [
                    chunk(r#"{"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"traced"},"finish_reason":null}]}"#),
                    chunk(r#"{"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#),
                    chunk(r#"{"id":"c1","object":"chat.completion.chunk","model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#),
                    chunk("[DONE]"),
                ]
                .concat();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (url, heads)
}

#[tokio::test]
async fn the_provider_http_call_carries_the_tasks_trace_context() {
    let (collector, telemetry) = collector();
    let (url, heads) = streaming_vendor().await;
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let worker = app
        .worker_with(&db, 2, Duration::ZERO, |config| {
            config.providers.openai_compatible = Some(agentplane_worker::provider::Endpoint {
                base_url: url.clone(),
                api_key: None,
            });
        })
        .await;
    let mut c = app.admin().await;
    let ws = c.workspace("traced-vendor").await;
    let agent = c
        .agents
        .create_agent(pb::CreateAgentRequest {
            workspace_id: ws.clone(),
            agent: Some(pb::Agent {
                name: "local".to_owned(),
                provider: pb::Provider::OpenaiCompatible.into(),
                model: "m".to_owned(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    let (task, trace_id) = create_traced(
        &mut c,
        pb::CreateTaskRequest {
            workspace_id: ws.clone(),
            agent_id: agent.id.clone(),
            input: vec![user("trace the vendor")],
            ..Default::default()
        },
    )
    .await;
    let done = c.wait_terminal(&ws, &task.id).await;
    assert_eq!(done.status, pb::TaskStatus::Succeeded as i32, "{done:?}");

    // The vendor saw the trace, and the parent it names is the provider-call span.
    let head = heads
        .lock()
        .unwrap()
        .first()
        .cloned()
        .expect("the vendor was called");
    let traceparent = head
        .lines()
        .find_map(|line| line.strip_prefix("traceparent:"))
        .map(|value| value.trim().to_owned())
        .expect("the request carries a traceparent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], trace_id, "the vendor call is in the task's trace");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        telemetry.force_flush();
        let call = collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .find(|span| hex(&span.trace_id) == trace_id && span.name == "openai_compatible m")
            .cloned();
        if let Some(call) = call {
            assert_eq!(hex(&call.span_id), parts[2]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no provider-call span in the trace"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.shutdown().await;
    app.stop().await;
}

#[tokio::test]
async fn every_task_stores_its_own_callers_trace_context_grouped_or_batched() {
    collector();
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("traced groups").await;
    let agent = c.echo_agent(&ws, "coder").await;

    // Concurrent CreateTask calls, which share commits, each from its own client trace.
    let mut expected: HashMap<String, String> = HashMap::new();
    let mut calls = Vec::new();
    for i in 0..16 {
        let span = tracing::info_span!("client submits", trace_id = tracing::field::Empty);
        let trace_id = propagation::trace_id_of(&span).expect("the client span is exported");
        let mut request = tonic::Request::new(pb::CreateTaskRequest {
            workspace_id: ws.clone(),
            agent_id: agent.id.clone(),
            input: vec![user("trace me")],
            request_id: format!("grouped-{i}"),
            ..Default::default()
        });
        propagation::inject_into_metadata(&span, request.metadata_mut());
        let mut tasks = c.tasks.clone();
        calls.push(tokio::spawn(async move {
            let task = tasks.create_task(request).await.unwrap().into_inner().task;
            (task.unwrap().id, trace_id)
        }));
    }
    for call in calls {
        let (id, trace_id) = call.await.unwrap();
        expected.insert(id, trace_id);
    }
    // And a BatchCreateTasks call: its tasks continue its trace.
    let span = tracing::info_span!("client batches", trace_id = tracing::field::Empty);
    let trace_id = propagation::trace_id_of(&span).expect("the client span is exported");
    let mut request = tonic::Request::new(pb::BatchCreateTasksRequest {
        workspace_id: ws.clone(),
        requests: (0..3)
            .map(|i| pb::CreateTaskRequest {
                agent_id: agent.id.clone(),
                input: vec![user("batched")],
                request_id: format!("batched-{i}"),
                ..Default::default()
            })
            .collect(),
    });
    propagation::inject_into_metadata(&span, request.metadata_mut());
    for task in c
        .tasks
        .batch_create_tasks(request)
        .await
        .unwrap()
        .into_inner()
        .tasks
    {
        expected.insert(task.id, trace_id.clone());
    }

    let owner = db.owner_pool().await;
    let stored: Vec<(uuid::Uuid, Option<String>)> =
        sqlx::query_as("SELECT id, traceparent FROM tasks WHERE tenant_id = $1::uuid")
            .bind(&ws)
            .fetch_all(&owner)
            .await
            .unwrap();
    assert_eq!(stored.len(), expected.len());
    for (id, traceparent) in stored {
        let traceparent = traceparent.unwrap_or_else(|| panic!("task {id} has no traceparent"));
        assert_eq!(
            traceparent.split('-').nth(1),
            Some(expected[&id.to_string()].as_str()),
            "task {id}"
        );
    }
    app.stop().await;
}
