//! Workspace isolation: row-level security under the application role, and the API
//! answering NOT_FOUND for another workspace's resources.

use std::time::Duration;

use agentplane_proto::v1 as pb;
use sqlx::Connection;
use tonic::Code;

use crate::app::TestApp;
use crate::pg::TestDb;

const WORKSPACE_TABLES: &[&str] = &[
    "agents",
    "tasks",
    "task_messages",
    "task_output_chunks",
    "usage_records",
    "events",
    "api_keys",
    "memberships",
];

#[tokio::test]
async fn row_level_security_confines_the_application_role_to_one_workspace() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let worker = app.worker(&db, 2, Duration::ZERO).await;
    let mut c = app.admin().await;
    let mut ids = Vec::new();
    for name in ["a", "b"] {
        let ws = c.workspace(name).await;
        c.members
            .add_member(pb::AddMemberRequest {
                workspace_id: ws.clone(),
                member: Some(pb::Member {
                    issuer: crate::app::JWT_ISSUER.into(),
                    subject: format!("{name}-admin"),
                    role: pb::WorkspaceRole::Admin.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .unwrap();
        let agent = c.echo_agent(&ws, "coder").await;
        let task = c.task(&ws, &agent.id, "hi").await;
        c.wait_terminal(&ws, &task.id).await;
        let pending = c.task(&ws, &agent.id, "later").await;
        ids.push((ws, agent.id, pending.id));
    }
    worker.shutdown().await;
    let owner = db.owner_pool().await;
    // Live output rows exist only while tasks run; add one per workspace directly.
    for (ws, _, pending) in &ids {
        sqlx::query("INSERT INTO task_output_chunks (tenant_id, task_id, attempt, seq, content) VALUES ($1::uuid, $2::uuid, 1, 0, 'x')")
            .bind(ws)
            .bind(pending)
            .execute(&owner)
            .await
            .unwrap();
    }
    for table in WORKSPACE_TABLES {
        let total: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&owner)
                .await
                .unwrap();
        assert!(
            total >= 2,
            "{table} should hold rows of both workspaces for this test to mean anything"
        );
    }

    let mut app_conn = sqlx::PgConnection::connect(&db.app_url()).await.unwrap();
    // No tenant set: every workspace table reads empty.
    for table in WORKSPACE_TABLES {
        let visible: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&mut app_conn)
                .await
                .unwrap();
        assert_eq!(visible, 0, "{table} without a tenant");
    }

    let (a, b) = (&ids[0], &ids[1]);
    let mut tx = app_conn.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(&a.0)
        .execute(&mut *tx)
        .await
        .unwrap();
    for table in WORKSPACE_TABLES {
        let (own, other): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FILTER (WHERE tenant_id = $1::uuid), count(*) FILTER (WHERE tenant_id <> $1::uuid) FROM {table}"
        )))
        .bind(&a.0)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert!(own > 0, "{table}: workspace A sees its own rows");
        assert_eq!(other, 0, "{table}: workspace A sees none of B's rows");
    }
    // Writing B's tenant id while A is set is refused by the policy.
    let error = sqlx::query(
        "INSERT INTO agents (tenant_id, id, name, provider, model, max_concurrency, task_timeout_ms, max_attempts) \
         VALUES ($1::uuid, $2, 'intruder', 'echo', 'm', 1, 60000, 1)",
    )
    .bind(&b.0)
    .bind(uuid::Uuid::now_v7())
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert_eq!(
        error.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("42501"),
        "{error}"
    );
    tx.rollback().await.unwrap();

    // Updating B's rows from A's transaction changes nothing.
    let mut tx = app_conn.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(&a.0)
        .execute(&mut *tx)
        .await
        .unwrap();
    let changed = sqlx::query("UPDATE tasks SET priority = 5 WHERE tenant_id = $1::uuid")
        .bind(&b.0)
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(changed, 0);
    tx.rollback().await.unwrap();

    // The event log is append-only, even for the owner.
    let error = sqlx::query("DELETE FROM events")
        .execute(&owner)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("append-only"), "{error}");
    app.stop().await;
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Option<Code> {
    r.err().map(|s| s.code())
}

#[tokio::test]
async fn another_workspaces_resources_answer_not_found() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut ca = app.admin().await;
    let a = ca.workspace("a").await;
    // b's admin asks for a's resources under b's workspace id.
    let mut cb = app.admin().await;
    let b = cb.workspace("b").await;
    let agent = ca.echo_agent(&a, "coder").await;
    let task = ca.task(&a, &agent.id, "secret").await;

    assert_eq!(
        code(
            cb.agents
                .get_agent(pb::GetAgentRequest {
                    workspace_id: b.clone(),
                    id: agent.id.clone()
                })
                .await
        ),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(
            cb.agents
                .delete_agent(pb::DeleteAgentRequest {
                    workspace_id: b.clone(),
                    id: agent.id.clone(),
                    ..Default::default()
                })
                .await
        ),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(
            cb.agents
                .update_agent(pb::UpdateAgentRequest {
                    workspace_id: b.clone(),
                    agent: Some(pb::Agent {
                        id: agent.id.clone(),
                        model: "x".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["model".into()]
                    }),
                    ..Default::default()
                })
                .await
        ),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(
            cb.tasks
                .create_task(pb::CreateTaskRequest {
                    workspace_id: b.clone(),
                    agent_id: agent.id.clone(),
                    input: vec![crate::app::user("x")],
                    ..Default::default()
                })
                .await
        ),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(
            cb.tasks
                .get_task(pb::GetTaskRequest {
                    workspace_id: b.clone(),
                    id: task.id.clone()
                })
                .await
        ),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(
            cb.tasks
                .cancel_task(pb::CancelTaskRequest {
                    workspace_id: b.clone(),
                    id: task.id.clone(),
                    ..Default::default()
                })
                .await
        ),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(
            cb.tasks
                .list_task_messages(pb::ListTaskMessagesRequest {
                    workspace_id: b.clone(),
                    task_id: task.id.clone(),
                    ..Default::default()
                })
                .await
        ),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(
            cb.tasks
                .watch_task(pb::WatchTaskRequest {
                    workspace_id: b.clone(),
                    id: task.id.clone()
                })
                .await
        ),
        Some(Code::NotFound)
    );
    let listed = cb
        .tasks
        .list_tasks(pb::ListTasksRequest {
            workspace_id: b.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.tasks.is_empty());
    let events = cb
        .events
        .list_events(pb::ListEventsRequest {
            workspace_id: b.clone(),
            filter: Some(pb::EventFilter {
                resource_id: task.id.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(events.events.is_empty());

    // A deleted workspace is gone for reads and writes.
    ca.workspaces
        .delete_workspace(pb::DeleteWorkspaceRequest {
            id: a.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        code(
            ca.workspaces
                .get_workspace(pb::GetWorkspaceRequest { id: a.clone() })
                .await
        ),
        Some(Code::NotFound)
    );
    assert_eq!(
        code(
            ca.tasks
                .get_task(pb::GetTaskRequest {
                    workspace_id: a.clone(),
                    id: task.id.clone()
                })
                .await
        ),
        Some(Code::NotFound)
    );
    let owner = db.owner_pool().await;
    let status: String = sqlx::query_scalar("SELECT status FROM tasks WHERE id = $1::uuid")
        .bind(&task.id)
        .fetch_one(&owner)
        .await
        .unwrap();
    assert_eq!(
        status, "canceled",
        "deleting a workspace cancels its unfinished tasks"
    );
    app.stop().await;
}
