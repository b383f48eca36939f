//! The real binary's JSON logs, at debug level: request lines carry the call's request id,
//! and neither the tokens nor the database password ever appear.

use std::process::Stdio;
use std::time::Duration;

use agentplane_proto::v1 as pb;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;

use crate::app::{Clients, bearer};
use crate::pg::TestDb;

const ADMIN: &str = "admin-token-never-logged-0001";
const WORKER: &str = "worker-token-never-logged-0002";
const PASSWORD: &str = "db-password-never-logged-0003";

#[tokio::test]
async fn json_logs_carry_request_ids_and_never_secrets() {
    let db = TestDb::new().await;
    // The harness trusts local connections, so the password is accepted and ignored.
    let url = db.app_url().replacen('@', &format!(":{PASSWORD}@"), 1);
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentplane-control-plane"))
        .arg("--log-format=json")
        .arg("serve")
        .env("RUST_LOG", "debug")
        .env("AGENTPLANE_DATABASE_URL", &url)
        .env("AGENTPLANE_ADMIN_TOKEN", ADMIN)
        .env("AGENTPLANE_WORKER_TOKEN", WORKER)
        .env("AGENTPLANE_LISTEN_ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let stderr_lines = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Ok(Some(line)) = stderr.next_line().await {
            lines.push(line);
        }
        lines
    });

    // Every line is JSON; the listen address is in the "serving gRPC" line.
    let mut lines = Vec::new();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
            .await
            .expect("the server logs within 20 s")
            .unwrap()
            .expect("the server is still running");
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        lines.push(line);
        if json["fields"]["message"] == "serving gRPC" {
            break json["fields"]["local_addr"].as_str().unwrap().to_owned();
        }
    };

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = Clients::new(channel.clone(), ADMIN);
    let mut request = tonic::Request::new(pb::CreateWorkspaceRequest {
        workspace: Some(pb::Workspace {
            display_name: "logs".to_owned(),
            ..Default::default()
        }),
        request_id: "log-hygiene-1".to_owned(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", "req-log-hygiene-42".parse().unwrap());
    let ws = c
        .workspaces
        .create_workspace(request)
        .await
        .unwrap()
        .into_inner()
        .workspace
        .unwrap()
        .id;
    let key = c.api_key(&ws, pb::WorkspaceRole::Admin).await;
    let mut member = c.with_token(&key);
    let agent = member.echo_agent(&ws, "logged").await;
    let task = member.task(&ws, &agent.id, "log me").await;
    member.get_task(&ws, &task.id).await;
    // A wrong token and a bad request are refused, and logged without the token.
    let mut wrong = pb::workspace_service_client::WorkspaceServiceClient::with_interceptor(
        channel.clone(),
        bearer(WORKER),
    );
    let refused = wrong
        .list_workspaces(pb::ListWorkspacesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    // SIGTERM, then read everything the process wrote.
    let pid = child.id().unwrap().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = stdout.next_line().await {
            lines.push(line);
        }
    })
    .await;
    assert!(drained.is_ok(), "the server stops on SIGTERM");
    let _ = child.wait().await;
    let mut all = lines;
    all.extend(stderr_lines.await.unwrap());

    for line in &all {
        for secret in [ADMIN, WORKER, PASSWORD] {
            assert!(!line.contains(secret), "a secret was logged: {line}");
        }
    }
    assert!(
        all.iter().any(|line| line.contains("req-log-hygiene-42")),
        "the request's lines carry its request id"
    );
    // The access line of GetTask names its workspace and task, as do the lines logged
    // inside the call.
    let get_task = all
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|json| {
            json["fields"]["message"] == "call finished"
                && json["span"]["rpc.method"] == "agentplane.v1.TaskService/GetTask"
        })
        .expect("GetTask's access line is logged at debug");
    assert_eq!(get_task["span"]["workspace_id"], ws.as_str());
    assert_eq!(get_task["span"]["task_id"], task.id.as_str());
    assert_eq!(get_task["fields"]["code"], "Ok");
}
