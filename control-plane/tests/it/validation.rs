//! Bad input gets INVALID_ARGUMENT with field violations in the status details, never a
//! panic or an internal error.

use agentplane_proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::app::{TestApp, user};
use crate::pg::TestDb;

/// Asserts INVALID_ARGUMENT with a BadRequest violation naming `field`.
fn assert_violation<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    field: &str,
) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
    let bad_request = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("{field}: no BadRequest details in {status:?}"));
    assert!(
        bad_request
            .field_violations
            .iter()
            .any(|v| v.field.starts_with(field)),
        "expected a violation of {field}, got {:?}",
        bad_request.field_violations
    );
}

#[tokio::test]
async fn bad_requests_get_invalid_argument_with_field_violations() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("v").await;
    let agent = c.echo_agent(&ws, "coder").await;
    let big = "x".repeat(300 * 1024);

    assert_violation(
        c.workspaces
            .create_workspace(pb::CreateWorkspaceRequest {
                workspace: None,
                request_id: String::new(),
            })
            .await,
        "workspace.display_name",
    );
    assert_violation(
        c.workspaces
            .create_workspace(pb::CreateWorkspaceRequest {
                workspace: Some(pb::Workspace {
                    display_name: "x".repeat(201),
                    ..Default::default()
                }),
                request_id: "r".repeat(129),
            })
            .await,
        "request_id",
    );
    assert_violation(
        c.workspaces
            .create_workspace(pb::CreateWorkspaceRequest {
                workspace: Some(pb::Workspace {
                    display_name: "nul\0here".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await,
        "workspace.display_name",
    );
    assert_violation(
        c.workspaces
            .get_workspace(pb::GetWorkspaceRequest {
                id: "not-a-uuid".into(),
            })
            .await,
        "id",
    );
    assert_violation(
        c.workspaces
            .list_workspaces(pb::ListWorkspacesRequest {
                page_size: -5,
                page_token: String::new(),
            })
            .await,
        "page_size",
    );
    assert_violation(
        c.workspaces
            .list_workspaces(pb::ListWorkspacesRequest {
                page_size: 10,
                page_token: "garbage!".into(),
            })
            .await,
        "page_token",
    );
    assert_violation(
        c.workspaces
            .update_workspace(pb::UpdateWorkspaceRequest {
                workspace: Some(pb::Workspace {
                    id: ws.clone(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["id".into()],
                }),
                request_id: String::new(),
            })
            .await,
        "update_mask",
    );

    let good_agent = || pb::Agent {
        name: "ok-name".into(),
        provider: pb::Provider::Echo.into(),
        model: "echo-1".into(),
        ..Default::default()
    };
    let create_agent = |agent: pb::Agent| pb::CreateAgentRequest {
        workspace_id: ws.clone(),
        agent: Some(agent),
        request_id: String::new(),
    };
    for (agent, field) in [
        (
            pb::Agent {
                name: "Bad Name".into(),
                ..good_agent()
            },
            "agent.name",
        ),
        (
            pb::Agent {
                provider: 99,
                ..good_agent()
            },
            "agent.provider",
        ),
        (
            pb::Agent {
                provider: 0,
                ..good_agent()
            },
            "agent.provider",
        ),
        (
            pb::Agent {
                model: String::new(),
                ..good_agent()
            },
            "agent.model",
        ),
        (
            pb::Agent {
                system_prompt: big.clone(),
                ..good_agent()
            },
            "agent.system_prompt",
        ),
        (
            pb::Agent {
                max_concurrency: -1,
                ..good_agent()
            },
            "agent.max_concurrency",
        ),
        (
            pb::Agent {
                max_attempts: 1000,
                ..good_agent()
            },
            "agent.max_attempts",
        ),
        (
            pb::Agent {
                task_timeout: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 5,
                }),
                ..good_agent()
            },
            "agent.task_timeout",
        ),
        (
            pb::Agent {
                generation: Some(pb::GenerationConfig {
                    temperature: Some(f64::NAN),
                    ..Default::default()
                }),
                ..good_agent()
            },
            "agent.generation.temperature",
        ),
        (
            pb::Agent {
                generation: Some(pb::GenerationConfig {
                    stop_sequences: vec![String::new()],
                    ..Default::default()
                }),
                ..good_agent()
            },
            "agent.generation.stop_sequences[0]",
        ),
        (
            pb::Agent {
                labels: [("UPPER".to_owned(), "v".to_owned())].into(),
                ..good_agent()
            },
            "agent.labels",
        ),
    ] {
        assert_violation(c.agents.create_agent(create_agent(agent)).await, field);
    }

    let create_task = |input: Vec<pb::Message>| pb::CreateTaskRequest {
        workspace_id: ws.clone(),
        agent_id: agent.id.clone(),
        input,
        ..Default::default()
    };
    assert_violation(c.tasks.create_task(create_task(vec![])).await, "input");
    assert_violation(
        c.tasks.create_task(create_task(vec![user(&big)])).await,
        "input[0].content",
    );
    assert_violation(
        c.tasks
            .create_task(create_task(vec![pb::Message {
                role: pb::Role::System.into(),
                content: "x".into(),
            }]))
            .await,
        "input[0].role",
    );
    assert_violation(
        c.tasks
            .create_task(create_task(vec![pb::Message {
                role: 42,
                content: "x".into(),
            }]))
            .await,
        "input[0].role",
    );
    assert_violation(
        c.tasks
            .create_task(create_task((0..300).map(|_| user("x")).collect()))
            .await,
        "input",
    );
    assert_violation(
        c.tasks
            .create_task(pb::CreateTaskRequest {
                priority: 5000,
                ..create_task(vec![user("x")])
            })
            .await,
        "priority",
    );
    assert_violation(
        c.tasks
            .create_task(pb::CreateTaskRequest {
                run_at: Some(prost_types::Timestamp {
                    seconds: 4_102_444_800,
                    nanos: 0,
                }),
                ..create_task(vec![user("x")])
            })
            .await,
        "run_at",
    );
    assert_violation(
        c.tasks
            .create_task(pb::CreateTaskRequest {
                run_at: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: -7,
                }),
                ..create_task(vec![user("x")])
            })
            .await,
        "run_at",
    );
    assert_violation(
        c.tasks
            .create_task(pb::CreateTaskRequest {
                run_at: Some(prost_types::Timestamp {
                    seconds: -9_000_000_000_000,
                    nanos: 0,
                }),
                ..create_task(vec![user("x")])
            })
            .await,
        "run_at",
    );
    assert_violation(
        c.tasks.create_task(create_task(vec![user("a\0b")])).await,
        "input[0].content",
    );
    assert_violation(
        c.tasks
            .create_task(pb::CreateTaskRequest {
                agent_id: "nope".into(),
                ..create_task(vec![user("x")])
            })
            .await,
        "agent_id",
    );
    assert_violation(
        c.tasks
            .list_tasks(pb::ListTasksRequest {
                workspace_id: ws.clone(),
                status: 77,
                ..Default::default()
            })
            .await,
        "status",
    );
    assert_violation(
        c.events
            .list_events(pb::ListEventsRequest {
                workspace_id: ws.clone(),
                filter: Some(pb::EventFilter {
                    resource_type: "planet".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
        "filter.resource_type",
    );
    assert_violation(
        c.events
            .watch_events(pb::WatchEventsRequest {
                workspace_id: ws.clone(),
                after_cursor: "zzz".into(),
                filter: None,
            })
            .await,
        "after_cursor",
    );

    // A page token of one list is not accepted by another.
    let page = c
        .tasks
        .list_tasks(pb::ListTasksRequest {
            workspace_id: ws.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let _ = c.task(&ws, &agent.id, "one").await;
    let _ = c.task(&ws, &agent.id, "two").await;
    let page = if page.next_page_token.is_empty() {
        c.tasks
            .list_tasks(pb::ListTasksRequest {
                workspace_id: ws.clone(),
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    } else {
        page
    };
    assert!(!page.next_page_token.is_empty());
    assert_violation(
        c.agents
            .list_agents(pb::ListAgentsRequest {
                workspace_id: ws.clone(),
                page_size: 1,
                page_token: page.next_page_token,
            })
            .await,
        "page_token",
    );

    // The server is still healthy after all of that.
    assert!(
        c.workspaces
            .get_workspace(pb::GetWorkspaceRequest { id: ws })
            .await
            .is_ok()
    );
    app.stop().await;
}
