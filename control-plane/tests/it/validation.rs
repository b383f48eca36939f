//! Bad input gets INVALID_ARGUMENT with field violations in the status details, never a
//! panic or an internal error.
//!
//! One table per RPC: each case is a request and the field paths it must be rejected for.
//! Every case runs, and a test reports all the cases that went wrong at once.

use std::fmt::Debug;

use agentplane_proto::v1 as pb;
use tonic::{Code, Response, Status};
use tonic_types::StatusExt;

use crate::app::{Clients, TestApp, user};
use crate::pg::TestDb;

/// A bad request and the fields it must be rejected for.
struct Case<R> {
    name: &'static str,
    request: R,
    /// Each needs a violation whose field path starts with it (so `input` matches
    /// `input[3].content` and `agent.labels` matches `agent.labels[UPPER]`).
    fields: &'static [&'static str],
}

fn case<R>(name: &'static str, request: R, fields: &'static [&'static str]) -> Case<R> {
    Case {
        name,
        request,
        fields,
    }
}

/// What a case got wrong, if anything.
fn mismatch<T: Debug>(result: Result<Response<T>, Status>, fields: &[&str]) -> Option<String> {
    let status = match result {
        Ok(response) => return Some(format!("accepted: {response:?}")),
        Err(status) => status,
    };
    if status.code() != Code::InvalidArgument {
        return Some(format!("expected INVALID_ARGUMENT, got {status:?}"));
    }
    let Some(bad_request) = status.get_details_bad_request() else {
        return Some(format!("no BadRequest details in {status:?}"));
    };
    let got: Vec<&str> = bad_request
        .field_violations
        .iter()
        .map(|violation| violation.field.as_str())
        .collect();
    let missing: Vec<&str> = fields
        .iter()
        .copied()
        .filter(|field| !got.iter().any(|path| path.starts_with(field)))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "expected violations of {missing:?}, got {:?}",
            bad_request.field_violations
        )
    })
}

/// Sends every case of `rpc`'s table and returns the failures, one line each.
async fn run<R, T: Debug>(
    rpc: &str,
    cases: Vec<Case<R>>,
    mut call: impl AsyncFnMut(R) -> Result<Response<T>, Status>,
) -> Vec<String> {
    let mut failures = Vec::new();
    for Case {
        name,
        request,
        fields,
    } in cases
    {
        if let Some(what) = mismatch(call(request).await, fields) {
            failures.push(format!("{rpc} / {name}: {what}"));
        }
    }
    failures
}

/// A control plane with a workspace and an echo agent in it.
struct Setup {
    app: TestApp,
    c: Clients,
    ws: String,
    agent: pb::Agent,
}

async fn setup() -> Setup {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("v").await;
    let agent = c.echo_agent(&ws, "coder").await;
    Setup { app, c, ws, agent }
}

impl Setup {
    /// Fails with every mismatch, once the server has shown it is still healthy.
    async fn finish(mut self, failures: Vec<String>) {
        let healthy = self
            .c
            .workspaces
            .get_workspace(pb::GetWorkspaceRequest {
                id: self.ws.clone(),
            })
            .await;
        self.app.stop().await;
        assert!(
            failures.is_empty(),
            "{} case(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
        assert!(healthy.is_ok(), "the server is still healthy: {healthy:?}");
    }
}

/// Over the 256 KiB limit of a system prompt or a message.
fn big() -> String {
    "x".repeat(300 * 1024)
}

#[tokio::test]
async fn create_workspace_rejects_bad_fields() {
    let mut s = setup().await;
    let workspace = |display_name: String| {
        Some(pb::Workspace {
            display_name,
            ..Default::default()
        })
    };
    let cases = vec![
        case(
            "no workspace",
            pb::CreateWorkspaceRequest {
                workspace: None,
                request_id: String::new(),
            },
            &["workspace.display_name"],
        ),
        case(
            "display name and request id too long",
            pb::CreateWorkspaceRequest {
                workspace: workspace("x".repeat(201)),
                request_id: "r".repeat(129),
            },
            &["workspace.display_name", "request_id"],
        ),
        case(
            "NUL in the display name",
            pb::CreateWorkspaceRequest {
                workspace: workspace("nul\0here".into()),
                request_id: String::new(),
            },
            &["workspace.display_name"],
        ),
    ];
    let failures = run("CreateWorkspace", cases, async |r| {
        s.c.workspaces.create_workspace(r).await
    })
    .await;
    s.finish(failures).await;
}

#[tokio::test]
async fn get_workspace_rejects_bad_fields() {
    let mut s = setup().await;
    let cases = vec![case(
        "id not a UUID",
        pb::GetWorkspaceRequest {
            id: "not-a-uuid".into(),
        },
        &["id"],
    )];
    let failures = run("GetWorkspace", cases, async |r| {
        s.c.workspaces.get_workspace(r).await
    })
    .await;
    s.finish(failures).await;
}

#[tokio::test]
async fn list_workspaces_rejects_bad_fields() {
    let mut s = setup().await;
    let cases = vec![
        case(
            "negative page size",
            pb::ListWorkspacesRequest {
                page_size: -5,
                page_token: String::new(),
            },
            &["page_size"],
        ),
        case(
            "page token not one of ours",
            pb::ListWorkspacesRequest {
                page_size: 10,
                page_token: "garbage!".into(),
            },
            &["page_token"],
        ),
    ];
    let failures = run("ListWorkspaces", cases, async |r| {
        s.c.workspaces.list_workspaces(r).await
    })
    .await;
    s.finish(failures).await;
}

#[tokio::test]
async fn update_workspace_rejects_bad_fields() {
    let mut s = setup().await;
    let cases = vec![case(
        "update mask names an output-only field",
        pb::UpdateWorkspaceRequest {
            workspace: Some(pb::Workspace {
                id: s.ws.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["id".into()],
            }),
            request_id: String::new(),
        },
        &["update_mask"],
    )];
    let failures = run("UpdateWorkspace", cases, async |r| {
        s.c.workspaces.update_workspace(r).await
    })
    .await;
    s.finish(failures).await;
}

#[tokio::test]
async fn create_agent_rejects_bad_fields() {
    let mut s = setup().await;
    let good = || pb::Agent {
        name: "ok-name".into(),
        provider: pb::Provider::Echo.into(),
        model: "echo-1".into(),
        ..Default::default()
    };
    let ws = s.ws.clone();
    let create = |agent: pb::Agent| pb::CreateAgentRequest {
        workspace_id: ws.clone(),
        agent: Some(agent),
        request_id: String::new(),
    };
    let cases = vec![
        case(
            "name not a DNS label",
            create(pb::Agent {
                name: "Bad Name".into(),
                ..good()
            }),
            &["agent.name"],
        ),
        case(
            "unknown provider",
            create(pb::Agent {
                provider: 99,
                ..good()
            }),
            &["agent.provider"],
        ),
        case(
            "unspecified provider",
            create(pb::Agent {
                provider: 0,
                ..good()
            }),
            &["agent.provider"],
        ),
        case(
            "no model",
            create(pb::Agent {
                model: String::new(),
                ..good()
            }),
            &["agent.model"],
        ),
        case(
            "system prompt too long",
            create(pb::Agent {
                system_prompt: big(),
                ..good()
            }),
            &["agent.system_prompt"],
        ),
        case(
            "negative max concurrency",
            create(pb::Agent {
                max_concurrency: -1,
                ..good()
            }),
            &["agent.max_concurrency"],
        ),
        case(
            "too many attempts",
            create(pb::Agent {
                max_attempts: 1000,
                ..good()
            }),
            &["agent.max_attempts"],
        ),
        case(
            "task timeout under a millisecond",
            create(pb::Agent {
                task_timeout: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 5,
                }),
                ..good()
            }),
            &["agent.task_timeout"],
        ),
        case(
            "temperature not a number",
            create(pb::Agent {
                generation: Some(pb::GenerationConfig {
                    temperature: Some(f64::NAN),
                    ..Default::default()
                }),
                ..good()
            }),
            &["agent.generation.temperature"],
        ),
        case(
            "empty stop sequence",
            create(pb::Agent {
                generation: Some(pb::GenerationConfig {
                    stop_sequences: vec![String::new()],
                    ..Default::default()
                }),
                ..good()
            }),
            &["agent.generation.stop_sequences[0]"],
        ),
        case(
            "label key in upper case",
            create(pb::Agent {
                labels: [("UPPER".to_owned(), "v".to_owned())].into(),
                ..good()
            }),
            &["agent.labels"],
        ),
    ];
    let failures = run("CreateAgent", cases, async |r| {
        s.c.agents.create_agent(r).await
    })
    .await;
    s.finish(failures).await;
}

#[tokio::test]
async fn list_agents_rejects_a_page_token_of_another_list() {
    let mut s = setup().await;
    let _ = s.c.task(&s.ws, &s.agent.id, "one").await;
    let _ = s.c.task(&s.ws, &s.agent.id, "two").await;
    let tasks_page =
        s.c.tasks
            .list_tasks(pb::ListTasksRequest {
                workspace_id: s.ws.clone(),
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert!(!tasks_page.next_page_token.is_empty());
    let cases = vec![case(
        "page token of ListTasks",
        pb::ListAgentsRequest {
            workspace_id: s.ws.clone(),
            page_size: 1,
            page_token: tasks_page.next_page_token,
        },
        &["page_token"],
    )];
    let failures = run("ListAgents", cases, async |r| {
        s.c.agents.list_agents(r).await
    })
    .await;
    s.finish(failures).await;
}

#[tokio::test]
async fn create_task_rejects_bad_fields() {
    let mut s = setup().await;
    let (ws, agent_id) = (s.ws.clone(), s.agent.id.clone());
    let create = |input: Vec<pb::Message>| pb::CreateTaskRequest {
        workspace_id: ws.clone(),
        agent_id: agent_id.clone(),
        input,
        ..Default::default()
    };
    let at = |seconds: i64, nanos: i32| Some(prost_types::Timestamp { seconds, nanos });
    let cases = vec![
        case("no input", create(vec![]), &["input"]),
        case(
            "message too long",
            create(vec![user(&big())]),
            &["input[0].content"],
        ),
        case(
            "system message in the input",
            create(vec![pb::Message {
                role: pb::Role::System.into(),
                content: "x".into(),
                ..Default::default()
            }]),
            &["input[0].role"],
        ),
        case(
            "unknown role",
            create(vec![pb::Message {
                role: 42,
                content: "x".into(),
                ..Default::default()
            }]),
            &["input[0].role"],
        ),
        case(
            "too many messages",
            create((0..300).map(|_| user("x")).collect()),
            &["input"],
        ),
        case(
            "priority out of range",
            pb::CreateTaskRequest {
                priority: 5000,
                ..create(vec![user("x")])
            },
            &["priority"],
        ),
        case(
            "run_at too far ahead",
            pb::CreateTaskRequest {
                run_at: at(4_102_444_800, 0),
                ..create(vec![user("x")])
            },
            &["run_at"],
        ),
        case(
            "run_at with negative nanos",
            pb::CreateTaskRequest {
                run_at: at(1, -7),
                ..create(vec![user("x")])
            },
            &["run_at"],
        ),
        case(
            "run_at before any date we can store",
            pb::CreateTaskRequest {
                run_at: at(-9_000_000_000_000, 0),
                ..create(vec![user("x")])
            },
            &["run_at"],
        ),
        case(
            "NUL in a message",
            create(vec![user("a\0b")]),
            &["input[0].content"],
        ),
        case(
            "agent id not a UUID",
            pb::CreateTaskRequest {
                agent_id: "nope".into(),
                ..create(vec![user("x")])
            },
            &["agent_id"],
        ),
    ];
    let failures = run("CreateTask", cases, async |r| {
        s.c.tasks.create_task(r).await
    })
    .await;
    s.finish(failures).await;
}

#[tokio::test]
async fn list_tasks_rejects_bad_fields() {
    let mut s = setup().await;
    let cases = vec![case(
        "unknown status filter",
        pb::ListTasksRequest {
            workspace_id: s.ws.clone(),
            status: 77,
            ..Default::default()
        },
        &["status"],
    )];
    let failures = run("ListTasks", cases, async |r| s.c.tasks.list_tasks(r).await).await;
    s.finish(failures).await;
}

#[tokio::test]
async fn list_events_rejects_bad_fields() {
    let mut s = setup().await;
    let cases = vec![case(
        "unknown resource type filter",
        pb::ListEventsRequest {
            workspace_id: s.ws.clone(),
            filter: Some(pb::EventFilter {
                resource_type: "planet".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        &["filter.resource_type"],
    )];
    let failures = run("ListEvents", cases, async |r| {
        s.c.events.list_events(r).await
    })
    .await;
    s.finish(failures).await;
}

#[tokio::test]
async fn watch_events_rejects_bad_fields() {
    let mut s = setup().await;
    let cases = vec![case(
        "cursor not one of ours",
        pb::WatchEventsRequest {
            workspace_id: s.ws.clone(),
            after_cursor: "zzz".into(),
            filter: None,
        },
        &["after_cursor"],
    )];
    let failures = run("WatchEvents", cases, async |r| {
        s.c.events.watch_events(r).await
    })
    .await;
    s.finish(failures).await;
}
