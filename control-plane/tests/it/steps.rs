//! Durable steps and tool calls: a completed model call is recorded as a step as soon as the
//! worker reports it, a later attempt replays it instead of calling the model again, every
//! call is metered whatever became of its attempt, and a task whose model called tools waits
//! for SubmitToolOutputs.

use std::time::Duration;

use agentplane_proto::v1 as pb;
use pb::session_request::Kind as In;
use pb::session_response::Kind as Out;
use sqlx::PgPool;
use tonic::Code;
use uuid::Uuid;

use crate::app::{Clients, TestApp};
use crate::pg::TestDb;
use crate::session::Session;

/// A workspace with an echo agent; returns (workspace id, agent id).
async fn echo_agent(clients: &mut Clients, tools: Vec<pb::Tool>) -> (String, String) {
    let ws = clients.workspace("steps").await;
    let agent = clients
        .agents
        .create_agent(pb::CreateAgentRequest {
            workspace_id: ws.clone(),
            agent: Some(pb::Agent {
                name: "stepper".into(),
                provider: pb::Provider::Echo.into(),
                model: "echo-1".into(),
                system_prompt: "Be brief.".into(),
                tools,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    (ws, agent.id)
}

/// Marks a queued task claimed by `worker` as its attempt 1 (what the claim does, written by
/// hand so that the test plays the worker).
async fn claim_by_hand(owner: &PgPool, task: &str, worker: Uuid) {
    sqlx::query(
        "UPDATE tasks SET status = 'running', attempt = 1, worker_id = $2, \
                lease_expires_at = now() + interval '60 seconds', started_at = now() \
         WHERE id = $1::uuid",
    )
    .bind(task)
    .bind(worker)
    .execute(owner)
    .await
    .unwrap();
}

/// A task of an echo agent, queued while no worker runs, then claimed by `worker` as its
/// attempt 1; returns the workspace, the task and its transcript's next position.
async fn claimed_task(
    clients: &mut Clients,
    owner: &PgPool,
    worker: Uuid,
    tools: Vec<pb::Tool>,
) -> (String, pb::Task, i32) {
    let (ws, agent) = echo_agent(clients, tools).await;
    let task = clients.task(&ws, &agent, "what is the weather?").await;
    claim_by_hand(owner, &task.id, worker).await;
    let next_position: i32 =
        sqlx::query_scalar("SELECT max(position) + 1 FROM task_messages WHERE task_id = $1::uuid")
            .bind(&task.id)
            .fetch_one(owner)
            .await
            .unwrap();
    (ws, task, next_position)
}

fn lease(ws: &str, task: &str, attempt: i32) -> pb::LeaseRef {
    pb::LeaseRef {
        workspace_id: ws.to_owned(),
        task_id: task.to_owned(),
        attempt,
    }
}

fn call(task: &str, step: i32, id: Uuid, outcome: &str) -> pb::ModelCall {
    pb::ModelCall {
        step,
        provider_request_id: format!("{task}-{step}"),
        model: "echo-1".into(),
        usage: Some(pb::Usage {
            input_tokens: 30,
            output_tokens: 20,
            cost_micros: 7,
            cache_read_input_tokens: 10,
            cache_write_input_tokens: 0,
            reasoning_tokens: 4,
        }),
        id: id.to_string(),
        provider: "echo".into(),
        vendor_request_id: "req_42".into(),
        latency_ms: 120,
        first_token_ms: 30,
        outcome: outcome.into(),
        unpriced: false,
    }
}

fn step(
    lease: pb::LeaseRef,
    number: i32,
    position: i32,
    text: &str,
    tool_calls: Vec<pb::ToolCall>,
) -> In {
    let task = lease.task_id.clone();
    In::Step(pb::WorkerStep {
        lease: Some(lease),
        step: number,
        position,
        text: text.into(),
        finish_reason: if tool_calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        }
        .into(),
        tool_calls,
        call: Some(call(&task, number, Uuid::now_v7(), "ok")),
    })
}

/// Waits until `sql` (one bigint) returns `want`.
async fn wait_count(owner: &PgPool, sql: &'static str, task: &str, want: i64) {
    for _ in 0..200 {
        let n: i64 = sqlx::query_scalar(sql)
            .bind(task)
            .fetch_one(owner)
            .await
            .unwrap();
        if n == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{sql} never reached {want}");
}

async fn usage_rows(owner: &PgPool, task: &str) -> Vec<(i32, String, i64, i64, String)> {
    sqlx::query_as(
        "SELECT attempt, outcome, cache_read_input_tokens, reasoning_tokens, vendor_request_id \
         FROM usage_records WHERE task_id = $1::uuid ORDER BY created_at, id",
    )
    .bind(task)
    .fetch_all(owner)
    .await
    .unwrap()
}

async fn next_ack(session: &mut Session) -> pb::ResultAck {
    loop {
        match session.recv.message().await.unwrap().unwrap().kind {
            Some(Out::ResultAck(ack)) => return ack,
            _ => continue,
        }
    }
}

#[tokio::test]
async fn a_step_recorded_before_a_crash_is_replayed_by_the_next_attempt_not_paid_again() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let owner = db.owner_pool().await;
    let mut clients = app.admin().await;
    let credential = app.worker_credential().await;
    let session = Session::open(&app, &credential).await;
    let (ws, task, position) = claimed_task(&mut clients, &owner, credential.0, vec![]).await;

    // Attempt 1 completes its model call (cut off at its token limit) and reports the
    // step ...
    let mut reported = step(lease(&ws, &task.id, 1), 0, position, "sunny, 21C", vec![]);
    if let In::Step(step) = &mut reported {
        step.finish_reason = "max_tokens".into();
    }
    session.send(reported).await;
    wait_count(
        &owner,
        "SELECT count(*) FROM task_messages WHERE task_id = $1::uuid AND step = 0",
        &task.id,
        1,
    )
    .await;
    // ... and dies before its result: the session ends and the lease lapses.
    drop(session);
    sqlx::query(
        "UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE id = $1::uuid",
    )
    .bind(&task.id)
    .execute(&owner)
    .await
    .unwrap();

    // A real worker reaps the lease, claims attempt 2, and answers with the recorded step.
    let worker = app.worker(&db, 2, Duration::ZERO).await;
    let done = clients.wait_terminal(&ws, &task.id).await;
    assert_eq!(done.status, pb::TaskStatus::Succeeded as i32, "{done:?}");
    assert_eq!(done.attempt, 2);
    assert_eq!(done.output, "sunny, 21C");
    let usage = done.usage.unwrap();
    assert_eq!(
        (usage.input_tokens, usage.output_tokens, usage.cost_micros),
        (30, 20, 7),
        "the task paid for one call: attempt 1's"
    );
    assert_eq!(
        (usage.cache_read_input_tokens, usage.reasoning_tokens),
        (10, 4)
    );
    assert_eq!(
        usage_rows(&owner, &task.id).await,
        [(1, "ok".to_owned(), 10, 4, "req_42".to_owned())]
    );
    let calls_started: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE resource_id = $1::uuid \
         AND action = 'task.model_call_started'",
    )
    .bind(&task.id)
    .fetch_one(&owner)
    .await
    .unwrap();
    assert_eq!(calls_started, 0, "attempt 2 called no model");
    let finish_reason: Option<String> =
        sqlx::query_scalar("SELECT finish_reason FROM tasks WHERE id = $1::uuid")
            .bind(&task.id)
            .fetch_one(&owner)
            .await
            .unwrap();
    assert_eq!(
        finish_reason.as_deref(),
        Some("max_tokens"),
        "the replay reports the recorded step's reason"
    );
    let transcript = clients.transcript(&ws, &task.id).await;
    let last = transcript.last().unwrap();
    assert_eq!(last.message.as_ref().unwrap().content, "sunny, 21C");
    assert_eq!((last.step, last.attempt), (0, 1));
    assert_eq!(
        transcript.len(),
        3,
        "system, user, one answer: {transcript:?}"
    );
    worker.shutdown().await;
    app.stop().await;
}

#[tokio::test]
async fn every_call_is_metered_once_but_only_the_current_attempt_records_steps() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let owner = db.owner_pool().await;
    let mut clients = app.admin().await;
    let credential = app.worker_credential().await;
    let session = Session::open(&app, &credential).await;
    let (ws, task, position) = claimed_task(&mut clients, &owner, credential.0, vec![]).await;

    // The lease lapsed and the reaper requeued the task: attempt 1 is fenced out.
    sqlx::query("UPDATE tasks SET status = 'pending', lease_expires_at = NULL WHERE id = $1::uuid")
        .bind(&task.id)
        .execute(&owner)
        .await
        .unwrap();
    // Its completed call and a call that failed after consuming tokens still cost money.
    let failed = Uuid::now_v7();
    let usage = In::Usage(pb::WorkerUsage {
        lease: Some(lease(&ws, &task.id, 1)),
        calls: vec![call(&task.id, 0, failed, "provider_overloaded")],
    });
    session.send(usage.clone()).await;
    session
        .send(step(
            lease(&ws, &task.id, 1),
            0,
            position,
            "late answer",
            vec![],
        ))
        .await;
    // A resend (after a reconnect) is metered once.
    session.send(usage).await;
    wait_count(
        &owner,
        "SELECT count(*) FROM usage_records WHERE task_id = $1::uuid",
        &task.id,
        2,
    )
    .await;
    let outcomes: Vec<String> = usage_rows(&owner, &task.id)
        .await
        .into_iter()
        .map(|row| row.1)
        .collect();
    assert_eq!(outcomes, ["provider_overloaded", "ok"]);
    let steps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM task_messages WHERE task_id = $1::uuid AND step IS NOT NULL",
    )
    .bind(&task.id)
    .fetch_one(&owner)
    .await
    .unwrap();
    assert_eq!(steps, 0, "a fenced attempt's answer does not count");
    // Usage for an attempt that never started is refused quietly.
    session
        .send(In::Usage(pb::WorkerUsage {
            lease: Some(lease(&ws, &task.id, 5)),
            calls: vec![call(&task.id, 0, Uuid::now_v7(), "ok")],
        }))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(usage_rows(&owner, &task.id).await.len(), 2);
    app.stop().await;
}

fn weather_tool() -> pb::Tool {
    pb::Tool {
        name: "get_weather".into(),
        description: "Current weather in a city".into(),
        parameters: Some(prost_types::Struct {
            fields: [(
                "type".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue("object".into())),
                },
            )]
            .into(),
        }),
    }
}

fn tool_call(id: &str, city: &str) -> pb::ToolCall {
    pb::ToolCall {
        id: id.into(),
        name: "get_weather".into(),
        arguments: format!("{{\"city\":\"{city}\"}}"),
    }
}

fn output(id: &str, text: &str) -> pb::ToolOutput {
    pb::ToolOutput {
        tool_call_id: id.into(),
        output: text.into(),
        is_error: false,
    }
}

async fn submit(
    clients: &mut Clients,
    ws: &str,
    task: &str,
    outputs: Vec<pb::ToolOutput>,
) -> Result<pb::Task, tonic::Status> {
    clients
        .tasks
        .submit_tool_outputs(pb::SubmitToolOutputsRequest {
            workspace_id: ws.to_owned(),
            task_id: task.to_owned(),
            tool_outputs: outputs,
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner().task.unwrap())
}

#[tokio::test]
async fn tool_calls_wait_for_their_outputs_and_the_task_continues() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let owner = db.owner_pool().await;
    let mut clients = app.admin().await;
    let credential = app.worker_credential().await;
    let mut session = Session::open(&app, &credential).await;
    let (ws, task, position) =
        claimed_task(&mut clients, &owner, credential.0, vec![weather_tool()]).await;
    let held = lease(&ws, &task.id, 1);

    let requires_action = |position| {
        In::Result(pb::WorkerResult {
            lease: Some(held.clone()),
            outcome: Some(pb::worker_result::Outcome::RequiresAction(
                pb::WorkerRequiresAction { position },
            )),
        })
    };
    let mut watch = clients
        .tasks
        .watch_task(pb::WatchTaskRequest {
            workspace_id: ws.clone(),
            id: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    // The model calls two tools: the step, then the result.
    let calls = vec![tool_call("call_1", "Paris"), tool_call("call_2", "Rome")];
    session
        .send(step(held.clone(), 0, position, "Checking.", calls.clone()))
        .await;
    session.send(requires_action(position)).await;
    let ack = next_ack(&mut session).await;
    assert!(ack.accepted, "{ack:?}");

    // A watcher sees the wait, with the calls.
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let message = watch.message().await.unwrap().unwrap();
            if let Some(pb::watch_task_response::Kind::Task(task)) = message.kind
                && task.status == pb::TaskStatus::RequiresAction as i32
            {
                return task;
            }
        }
    })
    .await
    .expect("the watcher sees REQUIRES_ACTION");
    assert_eq!(seen.required_action.unwrap().tool_calls.len(), 2);
    let waiting = clients.get_task(&ws, &task.id).await;
    assert_eq!(waiting.status, pb::TaskStatus::RequiresAction as i32);
    assert_eq!(
        waiting.required_action,
        Some(pb::RequiredAction {
            step: 0,
            tool_calls: calls.clone()
        })
    );
    let running: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tasks WHERE id = $1::uuid AND lease_expires_at IS NOT NULL",
    )
    .bind(&task.id)
    .fetch_one(&owner)
    .await
    .unwrap();
    assert_eq!(running, 0, "a waiting task holds no lease");

    // Every call needs exactly one output.
    let error = submit(&mut clients, &ws, &task.id, vec![output("call_1", "18C")])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(
        format!("{error:?}").contains("call_2"),
        "the violation names the missing call"
    );
    let error = submit(
        &mut clients,
        &ws,
        &task.id,
        vec![output("call_1", "18C"), output("call_9", "?")],
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    let error = submit(
        &mut clients,
        &ws,
        &task.id,
        vec![output("call_1", "18C"), output("call_1", "19C")],
    )
    .await
    .unwrap_err();
    assert_eq!(
        error.code(),
        Code::InvalidArgument,
        "duplicate ids: {error:?}"
    );

    let outputs = vec![output("call_2", "24C"), output("call_1", "18C")];
    let resumed = submit(&mut clients, &ws, &task.id, outputs.clone())
        .await
        .unwrap();
    assert_eq!(resumed.status, pb::TaskStatus::Pending as i32);
    assert_eq!(resumed.required_action, None);
    // Idempotent per call id: the same outputs again return the task as it is.
    let again = submit(&mut clients, &ws, &task.id, outputs).await.unwrap();
    assert_eq!(again.id, resumed.id);
    // Outputs for calls it never made, on a task that waits for none.
    let error = submit(&mut clients, &ws, &task.id, vec![output("call_7", "x")])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");

    // The transcript holds the step and the outputs in the calls' order.
    let transcript = clients.transcript(&ws, &task.id).await;
    let tail: Vec<(i32, String, String, Vec<pb::ToolCall>)> = transcript[2..]
        .iter()
        .map(|m| {
            let message = m.message.clone().unwrap();
            (
                message.role,
                message.content,
                message.tool_call_id,
                message.tool_calls,
            )
        })
        .collect();
    assert_eq!(
        tail,
        [
            (
                pb::Role::Assistant as i32,
                "Checking.".into(),
                String::new(),
                calls
            ),
            (pb::Role::Tool as i32, "18C".into(), "call_1".into(), vec![]),
            (pb::Role::Tool as i32, "24C".into(), "call_2".into(), vec![]),
        ]
    );
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM events WHERE resource_id = $1::uuid ORDER BY seq")
            .bind(&task.id)
            .fetch_all(&owner)
            .await
            .unwrap();
    assert!(
        actions.ends_with(&[
            "task.requires_action".to_owned(),
            "task.tool_outputs_submitted".to_owned()
        ]),
        "{actions:?}"
    );

    // Waiting again, then canceled: a waiting task can be canceled.
    sqlx::query(
        "UPDATE tasks SET status = 'requires_action', \
                required_action = '{\"step\": 1, \"tool_calls\": []}' WHERE id = $1::uuid",
    )
    .bind(&task.id)
    .execute(&owner)
    .await
    .unwrap();
    let canceled = clients
        .tasks
        .cancel_task(pb::CancelTaskRequest {
            workspace_id: ws.clone(),
            id: task.id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(canceled.status, pb::TaskStatus::Canceled as i32);
    assert_eq!(canceled.required_action, None);
    app.stop().await;
}

#[tokio::test]
async fn a_provider_this_worker_cannot_run_falls_back_to_the_next_choice() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let owner = db.owner_pool().await;
    let mut clients = app.admin().await;
    let ws = clients.workspace("fallbacks").await;
    // The test worker has no Anthropic key: the primary cannot run here, echo can.
    let agent = clients
        .agents
        .create_agent(pb::CreateAgentRequest {
            workspace_id: ws.clone(),
            agent: Some(pb::Agent {
                name: "careful".into(),
                provider: pb::Provider::Anthropic.into(),
                model: "claude-haiku-4-5".into(),
                fallbacks: vec![pb::ModelChoice {
                    provider: pb::Provider::Echo.into(),
                    model: "echo-1".into(),
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
    assert_eq!(
        agent.fallbacks.len(),
        1,
        "fallbacks are stored and returned"
    );
    assert_eq!(agent.max_steps, 16, "the default step limit");
    let worker = app.worker(&db, 2, Duration::ZERO).await;
    let task = clients.task(&ws, &agent.id, "hello there").await;
    let done = clients.wait_terminal(&ws, &task.id).await;
    assert_eq!(done.status, pb::TaskStatus::Succeeded as i32, "{done:?}");
    assert_eq!(done.attempt, 1, "the fallback ran in the same attempt");
    let fallback: serde_json::Value = sqlx::query_scalar(
        "SELECT data FROM events WHERE resource_id = $1::uuid AND action = 'task.provider_fallback'",
    )
    .bind(&task.id)
    .fetch_one(&owner)
    .await
    .unwrap();
    assert_eq!(fallback["from_provider"], "anthropic");
    assert_eq!(fallback["to_provider"], "echo");
    assert_eq!(fallback["code"], "provider_not_configured");
    let (provider, model): (String, String) =
        sqlx::query_as("SELECT provider, model FROM usage_records WHERE task_id = $1::uuid")
            .bind(&task.id)
            .fetch_one(&owner)
            .await
            .unwrap();
    assert_eq!((provider.as_str(), model.as_str()), ("echo", "echo-1"));
    worker.shutdown().await;
    app.stop().await;
}

#[tokio::test]
async fn agents_keep_their_tools_step_limit_and_fallbacks_and_refuse_bad_ones() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut clients = app.admin().await;
    let ws = clients.workspace("tools").await;
    let create = |agent: pb::Agent| pb::CreateAgentRequest {
        workspace_id: ws.clone(),
        agent: Some(agent),
        request_id: String::new(),
    };
    let base = pb::Agent {
        name: "tooled".into(),
        provider: pb::Provider::Echo.into(),
        model: "echo-1".into(),
        ..Default::default()
    };
    let agent = clients
        .agents
        .create_agent(create(pb::Agent {
            tools: vec![weather_tool()],
            max_steps: 5,
            ..base.clone()
        }))
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert_eq!(agent.tools, [weather_tool()]);
    assert_eq!(agent.max_steps, 5);

    let bad = pb::Agent {
        name: "bad".into(),
        tools: vec![
            pb::Tool {
                name: "no spaces".into(),
                ..weather_tool()
            },
            pb::Tool {
                parameters: None,
                ..weather_tool()
            },
        ],
        max_steps: 101,
        fallbacks: vec![pb::ModelChoice {
            provider: pb::Provider::Unspecified.into(),
            model: "m".into(),
        }],
        ..base.clone()
    };
    let error = clients.agents.create_agent(create(bad)).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let details = format!("{error:?}");
    for field in [
        "agent.tools[0].name",
        "agent.max_steps",
        "agent.fallbacks[0].provider",
    ] {
        assert!(details.contains(field), "{field} in {details}");
    }

    // UpdateAgent replaces the tools named in the mask.
    let updated = clients
        .agents
        .update_agent(pb::UpdateAgentRequest {
            workspace_id: ws.clone(),
            agent: Some(pb::Agent {
                id: agent.id.clone(),
                tools: vec![],
                max_steps: 0,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["tools".into(), "max_steps".into()],
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert!(updated.tools.is_empty());
    assert_eq!(updated.max_steps, 16, "0 means the default");
    app.stop().await;
}

#[tokio::test]
async fn the_echo_provider_runs_a_tool_round_trip_offline() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let worker = app.worker(&db, 2, Duration::ZERO).await;
    let mut clients = app.admin().await;
    let ws = clients.workspace("offline-tools").await;
    let agent = clients
        .agents
        .create_agent(pb::CreateAgentRequest {
            workspace_id: ws.clone(),
            agent: Some(pb::Agent {
                name: "weather".into(),
                provider: pb::Provider::Echo.into(),
                model: "echo-1".into(),
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
        .task(&ws, &agent.id, "/tool get_weather {\"city\":\"Paris\"}")
        .await;
    let mut waiting = clients.get_task(&ws, &task.id).await;
    for _ in 0..400 {
        if waiting.status == pb::TaskStatus::RequiresAction as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        waiting = clients.get_task(&ws, &task.id).await;
    }
    let action = waiting
        .required_action
        .expect("the task waits for the tool");
    assert_eq!(action.tool_calls.len(), 1);
    assert_eq!(action.tool_calls[0].name, "get_weather");
    assert_eq!(action.tool_calls[0].arguments, "{\"city\":\"Paris\"}");
    let id = action.tool_calls[0].id.clone();
    submit(&mut clients, &ws, &task.id, vec![output(&id, "18C")])
        .await
        .unwrap();
    let done = clients.wait_terminal(&ws, &task.id).await;
    assert_eq!(done.status, pb::TaskStatus::Succeeded as i32, "{done:?}");
    assert_eq!(done.output, "get_weather returned: 18C");
    worker.shutdown().await;
    app.stop().await;
}

#[tokio::test]
async fn a_wait_whose_step_was_not_recorded_fails_the_attempt_retryably() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let owner = db.owner_pool().await;
    let mut clients = app.admin().await;
    let credential = app.worker_credential().await;
    let mut session = Session::open(&app, &credential).await;
    let (ws, task, position) =
        claimed_task(&mut clients, &owner, credential.0, vec![weather_tool()]).await;
    session
        .send(In::Result(pb::WorkerResult {
            lease: Some(lease(&ws, &task.id, 1)),
            outcome: Some(pb::worker_result::Outcome::RequiresAction(
                pb::WorkerRequiresAction { position },
            )),
        }))
        .await;
    let ack = next_ack(&mut session).await;
    assert!(ack.accepted, "{ack:?}");
    let task = clients.get_task(&ws, &task.id).await;
    assert_eq!(
        task.status,
        pb::TaskStatus::Pending as i32,
        "queued again, not left running"
    );
    assert_eq!(task.error.unwrap().code, "step_not_recorded");
    app.stop().await;
}

/// Progress events of several attempts reported in one batch are appended in the order they
/// were reported, whatever the order of their tasks' ids (the store probes and locks the
/// tasks in id order); an event about an attempt the worker does not hold is dropped. The
/// batch goes to the store directly, so that it is one batch whatever the timing.
#[tokio::test]
async fn progress_events_of_several_attempts_keep_the_order_they_were_reported_in() {
    use agentplane_control_plane::domain::worker::Lease;
    use agentplane_control_plane::ids::{TaskId, TenantId, WorkerId};
    use agentplane_control_plane::store::{AttemptEvent, Store};

    let db = TestDb::new().await;
    let owner = db.owner_pool().await;
    let tenant = crate::fixtures::workspace(&owner).await;
    let agent = crate::fixtures::agent(&owner, tenant, 10).await;
    let first = crate::fixtures::task(&owner, tenant, agent, 0, "one").await;
    let second = crate::fixtures::task(&owner, tenant, agent, 0, "two").await;
    assert!(first < second, "ids are UUID v7, in creation order");
    let worker = Uuid::now_v7();
    for task in [first, second] {
        claim_by_hand(&owner, &task.to_string(), worker).await;
    }

    // Alternating, the later task first: the order reported is not the ids' order.
    let reported = [
        (second, 1, "task.first"),
        (first, 1, "task.second"),
        (first, 2, "task.not_held"),
        (second, 1, "task.third"),
        (first, 1, "task.fourth"),
    ];
    let events: Vec<AttemptEvent> = reported
        .iter()
        .map(|&(task, attempt, action)| AttemptEvent {
            lease: Lease {
                tenant: TenantId(tenant),
                task: TaskId(task),
                attempt,
            },
            action: action.to_owned(),
            data: serde_json::json!({}),
        })
        .collect();
    let store = Store::new(PgPool::connect(&db.app_url()).await.unwrap());
    let mut tx = store.tenant_for_reports(TenantId(tenant)).await.unwrap();
    let appended = tx
        .append_attempt_events(WorkerId(worker), "worker:test", &events)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(appended, 4);

    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT resource_id, action FROM events \
         WHERE tenant_id = $1 AND action LIKE 'task.%' AND actor = 'worker:test' \
         ORDER BY xid, seq",
    )
    .bind(tenant)
    .fetch_all(&owner)
    .await
    .unwrap();
    let expected = [
        (second, "task.first".to_owned()),
        (first, "task.second".to_owned()),
        (second, "task.third".to_owned()),
        (first, "task.fourth".to_owned()),
    ];
    assert_eq!(rows, expected);
}
