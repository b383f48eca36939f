//! Task lifecycle rules: fencing by attempt, cancellation, agents' soft delete, paging.

use std::time::Duration;

use agentplane_proto::v1 as pb;
use agentplane_worker::queue::{claim_tasks, reap_expired_leases};
use pb::session_request::Kind as In;
use tonic::Code;

use crate::app::TestApp;
use crate::pg::TestDb;
use crate::session::Session;

#[tokio::test]
async fn a_result_from_an_attempt_that_lost_its_lease_is_not_recorded() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("fence").await;
    let agent = c.echo_agent(&ws, "coder").await;
    let task = c.task(&ws, &agent.id, "who wins?").await;
    let pool = sqlx::PgPool::connect(&db.worker_url()).await.unwrap();
    let owner = db.owner_pool().await;

    let (old_worker, new_worker) = (app.worker_credential().await, app.worker_credential().await);
    let (old, new) = (old_worker.0, new_worker.0);
    assert_eq!(
        claim_tasks(&pool, old, 1, Duration::from_millis(50))
            .await
            .unwrap()
            .len(),
        1
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(reap_expired_leases(&pool, 10).await.unwrap(), 1);
    sqlx::query("UPDATE tasks SET run_at = now()")
        .execute(&owner)
        .await
        .unwrap();
    let claimed = claim_tasks(&pool, new, 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed[0].attempt, 2);

    let lease = |attempt| pb::LeaseRef {
        workspace_id: ws.clone(),
        task_id: task.id.clone(),
        attempt,
    };
    let mut stale = Session::open(&app, &old_worker).await;
    let ack = stale.succeed(lease(1), "stale answer").await;
    assert!(!ack.accepted, "{ack:?}");

    let mut current = Session::open(&app, &new_worker).await;
    let ack = current.succeed(lease(2), "fresh answer").await;
    assert!(ack.accepted, "{ack:?}");
    // A resend after a reconnect is acknowledged without recording twice.
    let ack = current.succeed(lease(2), "fresh answer").await;
    assert!(ack.accepted, "{ack:?}");

    let done = c.get_task(&ws, &task.id).await;
    assert_eq!(done.status, pb::TaskStatus::Succeeded as i32);
    assert_eq!(done.output, "fresh answer");
    assert_eq!(done.attempt, 2);
    let answers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM task_messages WHERE role = 'assistant'")
            .fetch_one(&owner)
            .await
            .unwrap();
    assert_eq!(answers, 1);
    app.stop().await;
}

#[tokio::test]
async fn canceling_a_running_task_stops_its_worker() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    // Slow tokens keep the task running long enough to cancel it.
    let worker = app.worker(&db, 1, Duration::from_millis(200)).await;
    let mut c = app.admin().await;
    let ws = c.workspace("cancel").await;
    let agent = c.echo_agent(&ws, "coder").await;
    let task = c
        .task(&ws, &agent.id, &"many words to echo slowly ".repeat(60))
        .await;
    for _ in 0..200 {
        if c.get_task(&ws, &task.id).await.status == pb::TaskStatus::Running as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let canceled = c
        .tasks
        .cancel_task(pb::CancelTaskRequest {
            workspace_id: ws.clone(),
            id: task.id.clone(),
            request_id: "cancel-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(canceled.status, pb::TaskStatus::Canceled as i32);
    // Canceling again is a precondition failure, not a second cancel.
    let again = c
        .tasks
        .cancel_task(pb::CancelTaskRequest {
            workspace_id: ws.clone(),
            id: task.id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    // The worker (capacity 1) frees its slot at once: a new task runs to completion long
    // before the canceled one could have finished.
    let next = c.task(&ws, &agent.id, "short").await;
    let done = c.wait_terminal(&ws, &next.id).await;
    assert_eq!(done.status, pb::TaskStatus::Succeeded as i32);
    let still = c.get_task(&ws, &task.id).await;
    assert_eq!(
        still.status,
        pb::TaskStatus::Canceled as i32,
        "a canceled task stays canceled"
    );
    worker.shutdown().await;
    app.stop().await;
}

#[tokio::test]
async fn a_deleted_agents_name_can_be_reused_and_its_pending_tasks_are_canceled() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("names").await;
    let agent = c.echo_agent(&ws, "coder").await;
    let pending = c.task(&ws, &agent.id, "never runs").await;

    let duplicate = c
        .agents
        .create_agent(pb::CreateAgentRequest {
            workspace_id: ws.clone(),
            agent: Some(pb::Agent {
                name: "coder".into(),
                provider: pb::Provider::Echo.into(),
                model: "m".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);

    c.agents
        .delete_agent(pb::DeleteAgentRequest {
            workspace_id: ws.clone(),
            id: agent.id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let reborn = c.echo_agent(&ws, "coder").await;
    assert_ne!(reborn.id, agent.id);
    assert_eq!(
        c.get_task(&ws, &pending.id).await.status,
        pb::TaskStatus::Canceled as i32
    );
    let gone = c
        .agents
        .get_agent(pb::GetAgentRequest {
            workspace_id: ws.clone(),
            id: agent.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    app.stop().await;
}

#[tokio::test]
async fn update_agent_changes_only_masked_fields() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("upd").await;
    let agent = c.echo_agent(&ws, "coder").await;
    let updated = c
        .agents
        .update_agent(pb::UpdateAgentRequest {
            workspace_id: ws.clone(),
            agent: Some(pb::Agent {
                id: agent.id.clone(),
                model: "echo-2".into(),
                system_prompt: "ignored: not in the mask".into(),
                max_concurrency: 7,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["model".into(), "max_concurrency".into()],
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert_eq!(updated.model, "echo-2");
    assert_eq!(updated.max_concurrency, 7);
    assert_eq!(updated.system_prompt, agent.system_prompt);
    assert_eq!(updated.max_attempts, 3);
    app.stop().await;
}

#[tokio::test]
async fn list_tasks_pages_newest_first_and_filters() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("pages").await;
    let a = c.echo_agent(&ws, "a").await;
    let b = c.echo_agent(&ws, "b").await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(c.task(&ws, &a.id, &format!("a{i}")).await.id);
    }
    c.task(&ws, &b.id, "b").await;

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .tasks
            .list_tasks(pb::ListTasksRequest {
                workspace_id: ws.clone(),
                agent_id: a.id.clone(),
                status: pb::TaskStatus::Pending.into(),
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.tasks.len() <= 2);
        seen.extend(page.tasks.into_iter().map(|t| t.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    created.reverse();
    assert_eq!(seen, created);
    app.stop().await;
}

#[tokio::test]
async fn model_output_with_nul_is_recorded_with_a_replacement_character() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("nul").await;
    let agent = c.echo_agent(&ws, "coder").await;
    let task = c.task(&ws, &agent.id, "say nul").await;
    let pool = db.worker_pool().await;
    let credential = app.worker_credential().await;
    let worker = credential.0;
    assert_eq!(
        claim_tasks(&pool, worker, 1, Duration::from_secs(60))
            .await
            .unwrap()
            .len(),
        1
    );
    let mut session = Session::open(&app, &credential).await;
    let lease = pb::LeaseRef {
        workspace_id: ws.clone(),
        task_id: task.id.clone(),
        attempt: 1,
    };
    session
        .send(In::Output(pb::WorkerOutput {
            lease: Some(lease.clone()),
            index: 0,
            text: "a\0".into(),
            ..Default::default()
        }))
        .await;
    let ack = session.succeed(lease, "a\0b").await;
    assert!(ack.accepted, "{ack:?}");
    let done = c.get_task(&ws, &task.id).await;
    assert_eq!(done.output, "a\u{FFFD}b");
    app.stop().await;
}

/// Asserts RESOURCE_EXHAUSTED with an ErrorInfo that names the 4 MiB message limit.
fn assert_message_too_large(status: &tonic::Status) {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "agentplane.dev");
    assert_eq!(info.reason, "RESOURCE_EXHAUSTED");
    assert_eq!(
        info.metadata.get("limit_bytes").map(String::as_str),
        Some("4194304"),
        "{info:?}"
    );
}

#[tokio::test]
async fn a_request_over_the_message_limit_is_resource_exhausted_with_error_info() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("big").await;
    let agent = c.echo_agent(&ws, "coder").await;
    let huge = "x".repeat(5 * 1024 * 1024);

    let status = c
        .tasks
        .create_task(pb::CreateTaskRequest {
            workspace_id: ws.clone(),
            agent_id: agent.id.clone(),
            input: vec![crate::app::user(&huge)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_message_too_large(&status);
    // A streaming call's request too.
    let status = c
        .events
        .watch_events(pb::WatchEventsRequest {
            workspace_id: ws.clone(),
            filter: Some(pb::EventFilter {
                action: huge,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_message_too_large(&status);

    // The connection is still good for the next call.
    assert!(
        c.tasks
            .list_tasks(pb::ListTasksRequest {
                workspace_id: ws,
                ..Default::default()
            })
            .await
            .is_ok()
    );
    app.stop().await;
}
