//! Server reflection, so grpcurl works without proto files.

use tonic::service::interceptor::InterceptedService;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::app::{ADMIN_TOKEN, TestApp, bearer};
use crate::pg::TestDb;

#[tokio::test]
async fn reflection_lists_every_service() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut client = ServerReflectionClient::new(InterceptedService::new(
        app.channel().await,
        bearer(ADMIN_TOKEN),
    ));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response: {response:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    for expected in [
        "agentplane.v1.AgentService",
        "agentplane.v1.EventService",
        "agentplane.v1.TaskService",
        "agentplane.v1.WorkerService",
        "agentplane.v1.WorkspaceService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }

    // The descriptors are served too: a client can describe a method's request type.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "agentplane.v1.TaskService".into(),
        )),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    assert!(
        matches!(response.message_response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{response:?}"
    );
    app.stop().await;
}

/// grpcurl (installed by .ci/run) lists, describes and calls methods with JSON bodies. When
/// grpcurl is not installed the test says so and passes, unless AGENTPLANE_REQUIRE_GRPCURL is
/// set, as CI sets it.
#[tokio::test]
async fn grpcurl_lists_describes_and_calls_with_json() {
    let available = std::process::Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok();
    if !available {
        assert!(
            std::env::var_os("AGENTPLANE_REQUIRE_GRPCURL").is_none(),
            "grpcurl is required but not installed"
        );
        eprintln!("grpcurl not installed; skipping the grpcurl check");
        return;
    }
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let addr = app.addr.to_string();
    let header = format!("authorization: Bearer {ADMIN_TOKEN}");
    let grpcurl = |args: &[&str], succeed: bool| {
        let addr = addr.clone();
        let header = header.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut command = std::process::Command::new("grpcurl");
                command.args(["-plaintext", "-H", &header]);
                let (before, after) = args.split_at(args.len() - 1);
                command.args(before).arg(&addr).args(after);
                let output = command.output().unwrap();
                assert_eq!(
                    output.status.success(),
                    succeed,
                    "grpcurl {args:?}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                let mut text = String::from_utf8(output.stdout).unwrap();
                text.push_str(&String::from_utf8_lossy(&output.stderr));
                text
            })
            .await
            .unwrap()
        }
    };
    let services = grpcurl(&["list"], true).await;
    assert!(services.contains("agentplane.v1.TaskService"), "{services}");
    let described = grpcurl(&["describe"], true).await;
    assert!(described.contains("rpc CreateTask"), "{described}");
    let created = grpcurl(
        &[
            "-d",
            r#"{"workspace": {"display_name": "from grpcurl"}}"#,
            "agentplane.v1.WorkspaceService/CreateWorkspace",
        ],
        true,
    )
    .await;
    assert!(created.contains("from grpcurl"), "{created}");
    // Error details are served by reflection too, so grpcurl shows them decoded.
    let rejected = grpcurl(
        &[
            "-d",
            r#"{"id": "nope"}"#,
            "agentplane.v1.WorkspaceService/GetWorkspace",
        ],
        false,
    )
    .await;
    assert!(rejected.contains("InvalidArgument"), "{rejected}");
    assert!(rejected.contains("must be a UUID"), "{rejected}");
    app.stop().await;
}
