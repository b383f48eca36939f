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

use crate::app::{TestApp, user};
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
    let client_span = tracing::info_span!("client submits", trace_id = tracing::field::Empty);
    let trace_id = propagation::trace_id_of(&client_span).expect("the client span is exported");
    let mut request = tonic::Request::new(pb::CreateTaskRequest {
        workspace_id: ws.clone(),
        agent_id: agent.id.clone(),
        input: vec![user("trace me")],
        request_id: "traced-1".to_owned(),
        ..Default::default()
    });
    propagation::inject_into_metadata(&client_span, request.metadata_mut());
    let task = c
        .tasks
        .create_task(request)
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    drop(client_span);
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
