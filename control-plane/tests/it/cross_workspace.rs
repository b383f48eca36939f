//! The cross-workspace attack suite: with workspace A's credentials (an API key and a user
//! of each role), call every method of every agentplane service, enumerated from the service
//! descriptors, with workspace B's ids in every id field. Every call must fail with
//! NOT_FOUND or PERMISSION_DENIED (or, where the request names A's own workspace, succeed
//! without showing anything of B), B's rows must be unchanged, and an open watch on A must
//! show nothing of B.
//!
//! A method with no attack below fails the suite, and so does an attack that leaves an id
//! field of its request empty: a new RPC or a new id field cannot slip past it.

use std::collections::BTreeSet;
use std::time::Duration;

use agentplane_proto::v1 as pb;
use prost::Message as _;
use prost::bytes::{Buf, BufMut};
use prost_types::field_descriptor_proto::Type;
use prost_types::{DescriptorProto, FileDescriptorSet};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

use crate::app::{TestApp, user};
use crate::pg::TestDb;

/// B's ids: every kind of id a request can carry.
#[derive(Debug)]
struct Target {
    workspace: String,
    agent: String,
    task: String,
    api_key: String,
    cursor: String,
    /// A worker credential (platform-wide, not B's, but no key of A may touch it either).
    worker: String,
    /// A member of B (a user).
    member: String,
}

/// A request to send: the workspace it names (when it names one) and its encoded body.
struct Attack {
    /// One message, or (for the bidi worker session) several.
    messages: Vec<Vec<u8>>,
}

fn one(message: impl prost::Message) -> Attack {
    Attack {
        messages: vec![message.encode_to_vec()],
    }
}

/// The request of method `path` naming workspace `ws` and B's resources everywhere else;
/// `None` for a method this suite does not know (which fails it).
fn attack(path: &str, ws: &str, b: &Target) -> Option<Attack> {
    let ws = ws.to_owned();
    let mask = |field: &str| {
        Some(prost_types::FieldMask {
            paths: vec![field.to_owned()],
        })
    };
    let filter = || {
        Some(pb::EventFilter {
            resource_type: "task".into(),
            resource_id: b.task.clone(),
            ..Default::default()
        })
    };
    let agent = || {
        Some(pb::Agent {
            id: b.agent.clone(),
            workspace_id: b.workspace.clone(),
            name: "intruder".into(),
            provider: pb::Provider::Echo.into(),
            model: "echo-1".into(),
            ..Default::default()
        })
    };
    Some(match path {
        "/agentplane.v1.WorkspaceService/CreateWorkspace" => one(pb::CreateWorkspaceRequest {
            workspace: Some(pb::Workspace {
                id: b.workspace.clone(),
                display_name: "intruder".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        }),
        "/agentplane.v1.WorkspaceService/GetWorkspace" => one(pb::GetWorkspaceRequest { id: ws }),
        "/agentplane.v1.WorkspaceService/ListWorkspaces" => {
            one(pb::ListWorkspacesRequest::default())
        }
        "/agentplane.v1.WorkspaceService/UpdateWorkspace" => one(pb::UpdateWorkspaceRequest {
            workspace: Some(pb::Workspace {
                id: ws,
                display_name: "pwned".into(),
                ..Default::default()
            }),
            update_mask: mask("display_name"),
            request_id: String::new(),
        }),
        "/agentplane.v1.WorkspaceService/DeleteWorkspace" => one(pb::DeleteWorkspaceRequest {
            id: ws,
            request_id: String::new(),
        }),
        "/agentplane.v1.AgentService/CreateAgent" => one(pb::CreateAgentRequest {
            workspace_id: ws,
            agent: agent(),
            request_id: String::new(),
        }),
        "/agentplane.v1.AgentService/GetAgent" => one(pb::GetAgentRequest {
            workspace_id: ws,
            id: b.agent.clone(),
        }),
        "/agentplane.v1.AgentService/ListAgents" => one(pb::ListAgentsRequest {
            workspace_id: ws,
            ..Default::default()
        }),
        "/agentplane.v1.AgentService/UpdateAgent" => one(pb::UpdateAgentRequest {
            workspace_id: ws,
            agent: agent(),
            update_mask: mask("model"),
            request_id: String::new(),
        }),
        "/agentplane.v1.AgentService/DeleteAgent" => one(pb::DeleteAgentRequest {
            workspace_id: ws,
            id: b.agent.clone(),
            request_id: String::new(),
        }),
        "/agentplane.v1.TaskService/CreateTask" => one(pb::CreateTaskRequest {
            workspace_id: ws,
            agent_id: b.agent.clone(),
            input: vec![user("intrude")],
            ..Default::default()
        }),
        "/agentplane.v1.TaskService/BatchCreateTasks" => one(pb::BatchCreateTasksRequest {
            workspace_id: ws.clone(),
            // The items are repeated, so the id-field check does not reach them: B's agent
            // (and B's workspace, which must match the batch's) is named here by hand.
            requests: vec![pb::CreateTaskRequest {
                workspace_id: ws.clone(),
                agent_id: b.agent.clone(),
                input: vec![user("intrude")],
                ..Default::default()
            }],
        }),
        "/agentplane.v1.TaskService/GetTask" => one(pb::GetTaskRequest {
            workspace_id: ws,
            id: b.task.clone(),
        }),
        "/agentplane.v1.TaskService/ListTasks" => one(pb::ListTasksRequest {
            workspace_id: ws,
            agent_id: b.agent.clone(),
            ..Default::default()
        }),
        "/agentplane.v1.TaskService/CancelTask" => one(pb::CancelTaskRequest {
            workspace_id: ws,
            id: b.task.clone(),
            request_id: String::new(),
        }),
        "/agentplane.v1.TaskService/RetryTask" => one(pb::RetryTaskRequest {
            workspace_id: ws,
            id: b.task.clone(),
            request_id: String::new(),
        }),
        "/agentplane.v1.TaskService/SubmitToolOutputs" => one(pb::SubmitToolOutputsRequest {
            workspace_id: ws,
            task_id: b.task.clone(),
            tool_outputs: vec![pb::ToolOutput {
                tool_call_id: "call-1".into(),
                output: "forged".into(),
                is_error: false,
            }],
            request_id: String::new(),
        }),
        "/agentplane.v1.TaskService/ListTaskMessages" => one(pb::ListTaskMessagesRequest {
            workspace_id: ws,
            task_id: b.task.clone(),
            ..Default::default()
        }),
        "/agentplane.v1.TaskService/WatchTask" => one(pb::WatchTaskRequest {
            workspace_id: ws,
            id: b.task.clone(),
        }),
        "/agentplane.v1.EventService/ListEvents" => {
            // B's cursor as a page token only where it names B's workspace: under A's it is
            // refused as a malformed token (INVALID_ARGUMENT), which tests/it/events.rs covers.
            let page_token = if ws == b.workspace {
                b.cursor.clone()
            } else {
                String::new()
            };
            one(pb::ListEventsRequest {
                workspace_id: ws,
                filter: filter(),
                page_token,
                ..Default::default()
            })
        }
        "/agentplane.v1.EventService/WatchEvents" => {
            let after_cursor = if ws == b.workspace {
                b.cursor.clone()
            } else {
                String::new()
            };
            one(pb::WatchEventsRequest {
                workspace_id: ws,
                after_cursor,
                filter: filter(),
            })
        }
        "/agentplane.v1.WorkerService/Session" => {
            use pb::session_request::Kind;
            let lease = Some(pb::LeaseRef {
                workspace_id: ws,
                task_id: b.task.clone(),
                attempt: 1,
            });
            let hello = pb::SessionRequest {
                kind: Some(Kind::Hello(pb::WorkerHello {
                    worker_id: uuid::Uuid::now_v7().to_string(),
                    version: "intruder".into(),
                    capacity: 1,
                })),
            };
            let output = pb::SessionRequest {
                kind: Some(Kind::Output(pb::WorkerOutput {
                    lease,
                    index: 0,
                    text: "forged".into(),
                    ..Default::default()
                })),
            };
            Attack {
                messages: vec![hello.encode_to_vec(), output.encode_to_vec()],
            }
        }
        "/agentplane.v1.ApiKeyService/CreateApiKey" => one(pb::CreateApiKeyRequest {
            workspace_id: ws,
            api_key: Some(pb::ApiKey {
                id: b.api_key.clone(),
                workspace_id: b.workspace.clone(),
                name: "intruder".into(),
                role: pb::WorkspaceRole::Viewer.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        }),
        "/agentplane.v1.ApiKeyService/ListApiKeys" => one(pb::ListApiKeysRequest {
            workspace_id: ws,
            ..Default::default()
        }),
        "/agentplane.v1.ApiKeyService/RevokeApiKey" => one(pb::RevokeApiKeyRequest {
            workspace_id: ws,
            id: b.api_key.clone(),
            request_id: String::new(),
        }),
        "/agentplane.v1.IdentityService/GetCurrentIdentity" => {
            one(pb::GetCurrentIdentityRequest { workspace_id: ws })
        }
        "/agentplane.v1.WorkerCredentialService/CreateWorkerCredential" => {
            one(pb::CreateWorkerCredentialRequest {
                name: "intruder".into(),
            })
        }
        "/agentplane.v1.WorkerCredentialService/ListWorkerCredentials" => {
            one(pb::ListWorkerCredentialsRequest::default())
        }
        "/agentplane.v1.WorkerCredentialService/RevokeWorkerCredential" => {
            one(pb::RevokeWorkerCredentialRequest {
                worker_id: b.worker.clone(),
            })
        }
        "/agentplane.v1.WorkerCredentialService/EnrollWorker" => one(pb::EnrollWorkerRequest {
            name: "intruder".into(),
        }),
        "/agentplane.v1.MemberService/AddMember" => one(pb::AddMemberRequest {
            workspace_id: ws,
            member: Some(pb::Member {
                user_id: b.member.clone(),
                workspace_id: b.workspace.clone(),
                issuer: crate::app::JWT_ISSUER.into(),
                subject: "intruder".into(),
                role: pb::WorkspaceRole::Admin.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        }),
        "/agentplane.v1.MemberService/ListMembers" => one(pb::ListMembersRequest {
            workspace_id: ws,
            ..Default::default()
        }),
        "/agentplane.v1.MemberService/UpdateMemberRole" => one(pb::UpdateMemberRoleRequest {
            workspace_id: ws,
            user_id: b.member.clone(),
            role: pb::WorkspaceRole::Viewer.into(),
            request_id: String::new(),
        }),
        "/agentplane.v1.MemberService/RemoveMember" => one(pb::RemoveMemberRequest {
            workspace_id: ws,
            user_id: b.member.clone(),
            request_id: String::new(),
        }),
        _ => return None,
    })
}

/// Raw protobuf bytes in and out, so one caller reaches every method by its path.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

#[derive(Debug)]
struct Raw;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// What a call returned: an error code, or the bytes of every message it answered with.
async fn call(
    channel: &Channel,
    token: &str,
    path: &str,
    streaming: (bool, bool),
    attack: Attack,
) -> Result<Vec<Vec<u8>>, Code> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path: http::uri::PathAndQuery = path.parse().unwrap();
    fn authorize<T>(mut request: tonic::Request<T>, token: &str) -> tonic::Request<T> {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    }
    let first = attack.messages[0].clone();
    let response = match streaming {
        (false, false) => {
            let request = authorize(tonic::Request::new(first), token);
            return grpc
                .unary(request, path, RawCodec)
                .await
                .map(|r| vec![r.into_inner()])
                .map_err(|s| s.code());
        }
        (false, true) => {
            grpc.server_streaming(authorize(tonic::Request::new(first), token), path, RawCodec)
                .await
        }
        (true, _) => {
            let request = authorize(
                tonic::Request::new(tokio_stream::iter(attack.messages)),
                token,
            );
            grpc.streaming(request, path, RawCodec).await
        }
    };
    let mut stream = response.map_err(|s| s.code())?.into_inner();
    // A stream that opened: collect what it shows within a moment.
    let mut seen = Vec::new();
    while let Ok(next) = tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
        match next {
            Ok(Some(message)) => seen.push(message),
            Ok(None) => break,
            Err(status) => return Err(status.code()),
        }
    }
    Ok(seen)
}

/// Every method of every agentplane service, with (client streaming, server streaming) and
/// its request type's name.
fn methods(set: &FileDescriptorSet) -> Vec<(String, (bool, bool), String)> {
    let mut methods = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                methods.push((
                    format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                    (method.client_streaming(), method.server_streaming()),
                    method.input_type().trim_start_matches('.').to_owned(),
                ));
            }
        }
    }
    methods
}

fn message<'a>(set: &'a FileDescriptorSet, full_name: &str) -> Option<&'a DescriptorProto> {
    set.file.iter().find_map(|file| {
        let name = full_name.strip_prefix(&format!("{}.", file.package()))?;
        file.message_type.iter().find(|m| m.name() == name)
    })
}

fn is_id_field(name: &str) -> bool {
    (name == "id" || name.ends_with("_id"))
        && name != "request_id"
        && !name.starts_with("provider_")
}

/// Paths of the id fields (strings named `id` or `*_id`) of a message type, through its
/// singular message fields of the agentplane package.
fn id_fields(set: &FileDescriptorSet, type_name: &str, prefix: &str, out: &mut BTreeSet<String>) {
    let Some(descriptor) = message(set, type_name) else {
        return;
    };
    for field in &descriptor.field {
        let path = format!("{prefix}{}", field.name());
        let repeated = field.label() == prost_types::field_descriptor_proto::Label::Repeated;
        match field.r#type() {
            Type::String if is_id_field(field.name()) && !repeated => {
                out.insert(path);
            }
            Type::Message if !repeated && field.type_name().starts_with(".agentplane.") => {
                let nested = field.type_name().trim_start_matches('.');
                id_fields(set, nested, &format!("{path}."), out);
            }
            _ => {}
        }
    }
}

/// Paths of the non-empty length-delimited fields present in an encoded message, read with
/// its descriptor (a minimal wire-format walk).
fn present(
    set: &FileDescriptorSet,
    type_name: &str,
    mut bytes: &[u8],
    prefix: &str,
    out: &mut BTreeSet<String>,
) {
    let descriptor = message(set, type_name);
    while bytes.has_remaining() {
        let key = prost::encoding::decode_varint(&mut bytes).unwrap();
        let (number, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                prost::encoding::decode_varint(&mut bytes).unwrap();
            }
            1 => bytes.advance(8),
            5 => bytes.advance(4),
            2 => {
                let len =
                    usize::try_from(prost::encoding::decode_varint(&mut bytes).unwrap()).unwrap();
                let (value, rest) = bytes.split_at(len);
                bytes = rest;
                let field = descriptor.and_then(|d| {
                    d.field
                        .iter()
                        .find(|f| i64::from(f.number()) == i64::try_from(number).unwrap())
                });
                if let Some(field) = field
                    && len > 0
                {
                    let path = format!("{prefix}{}", field.name());
                    if field.r#type() == Type::Message {
                        let nested = field.type_name().trim_start_matches('.');
                        present(set, nested, value, &format!("{path}."), out);
                    }
                    out.insert(path);
                }
            }
            other => panic!("unexpected wire type {other}"),
        }
    }
}

/// B's rows in every workspace table, as text (last use of keys aside: it is bookkeeping).
async fn snapshot(owner: &sqlx::PgPool, b: &str, worker: &str) -> Vec<String> {
    let mut rows = Vec::new();
    for table in [
        "agents",
        "tasks",
        "task_messages",
        "task_output_chunks",
        "usage_records",
        "events",
        "api_keys",
        "memberships",
    ] {
        let text: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT string_agg((to_jsonb(t) - 'last_used_at')::text, '|' ORDER BY t::text) \
             FROM {table} t WHERE tenant_id = $1::uuid"
        )))
        .bind(b)
        .fetch_one(owner)
        .await
        .unwrap();
        rows.push(format!("{table}: {}", text.unwrap_or_default()));
    }
    let workspace: String =
        sqlx::query_scalar("SELECT to_jsonb(w)::text FROM workspaces w WHERE id = $1::uuid")
            .bind(b)
            .fetch_one(owner)
            .await
            .unwrap();
    rows.push(workspace);
    let credentials: String = sqlx::query_scalar(
        "SELECT string_agg(to_jsonb(w)::text, '|' ORDER BY w.id) FROM worker_credentials w",
    )
    .fetch_one(owner)
    .await
    .unwrap();
    assert!(credentials.contains(worker));
    rows.push(credentials);
    rows
}

fn mentions(bytes: &[u8], ids: &[&str]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    ids.iter()
        .find(|id| text.contains(**id))
        .map(|id| (*id).to_owned())
}

#[tokio::test]
async fn workspace_a_credentials_can_neither_see_nor_touch_workspace_b() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;

    // B: an agent, a task with its transcript, events, an API key.
    let mut owner_b = app.admin().await;
    let b_ws = owner_b.workspace("b").await;
    let b_agent = owner_b.echo_agent(&b_ws, "coder").await;
    let b_task = owner_b.task(&b_ws, &b_agent.id, "b's secret prompt").await;
    let b_key = owner_b
        .api_keys
        .list_api_keys(pb::ListApiKeysRequest {
            workspace_id: b_ws.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .api_keys
        .remove(0);
    // An event shows once every older transaction on the server has ended: wait for one.
    let mut b_events = Vec::new();
    for _ in 0..200 {
        b_events = owner_b
            .events
            .list_events(pb::ListEventsRequest {
                workspace_id: b_ws.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        if !b_events.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b_event = b_events.remove(0);
    let b_member = owner_b
        .members
        .add_member(pb::AddMemberRequest {
            workspace_id: b_ws.clone(),
            member: Some(pb::Member {
                issuer: crate::app::JWT_ISSUER.into(),
                subject: "b-admin".into(),
                role: pb::WorkspaceRole::Admin.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    let b = Target {
        workspace: b_ws.clone(),
        agent: b_agent.id.clone(),
        task: b_task.id.clone(),
        api_key: b_key.id.clone(),
        cursor: b_event.cursor.clone(),
        worker: app.worker_credential().await.0.to_string(),
        member: b_member.user_id.clone(),
    };
    let b_ids = [
        b.workspace.as_str(),
        &b.agent,
        &b.task,
        &b.api_key,
        &b_event.id,
        &b.worker,
        &b.member,
        "b-admin",
        "b's secret prompt",
    ];

    // A: one key per role, and a watch on A's event log that must never show B.
    let mut platform = app.admin().await;
    let a_ws = platform.create_workspace("a").await;
    let mut tokens = Vec::new();
    for role in [
        pb::WorkspaceRole::Viewer,
        pb::WorkspaceRole::Member,
        pb::WorkspaceRole::Admin,
    ] {
        tokens.push((format!("{role:?} key"), platform.api_key(&a_ws, role).await));
        // A user with the same role in A (and none in B).
        let subject = format!("a-{}", role.as_str_name().to_lowercase());
        platform
            .members
            .add_member(pb::AddMemberRequest {
                workspace_id: a_ws.clone(),
                member: Some(pb::Member {
                    issuer: crate::app::JWT_ISSUER.into(),
                    subject: subject.clone(),
                    role: role.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .unwrap();
        tokens.push((format!("{role:?} user"), crate::app::user_token(&subject)));
    }
    let mut a_admin = platform.with_token(&tokens[4].1);
    let mut a_watch = a_admin
        .events
        .watch_events(pb::WatchEventsRequest {
            workspace_id: a_ws.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let owner = db.owner_pool().await;
    let before = snapshot(&owner, &b_ws, &b.worker).await;
    let set = FileDescriptorSet::decode(agentplane_proto::FILE_DESCRIPTOR_SET).unwrap();
    let channel = app.channel().await;
    let mut calls = 0;
    let methods = methods(&set);
    assert!(methods.len() >= 23, "the descriptors list every method");
    for (path, streaming, input) in &methods {
        let (path, streaming) = (path.as_str(), *streaming);
        let template = attack(path, &b.workspace, &b)
            .unwrap_or_else(|| panic!("no cross-workspace attack for {path}: add one"));
        // Every id field of a one-message request carries one of B's ids.
        if !streaming.0 {
            let mut wanted = BTreeSet::new();
            id_fields(&set, input, "", &mut wanted);
            let mut set_fields = BTreeSet::new();
            present(&set, input, &template.messages[0], "", &mut set_fields);
            let missing: Vec<_> = wanted.difference(&set_fields).collect();
            assert!(
                missing.is_empty(),
                "{path}: id fields left empty: {missing:?}"
            );
        }
        for (role, token) in &tokens {
            // B's workspace with B's resources; then A's own workspace with B's resources.
            for ws in [&b.workspace, &a_ws] {
                let attack = attack(path, ws, &b).unwrap();
                let outcome = call(&channel, token, path, streaming, attack).await;
                calls += 1;
                let context = format!(
                    "{path} as A's {role} naming workspace {}",
                    if *ws == b.workspace { "B" } else { "A" }
                );
                match outcome {
                    Err(Code::NotFound | Code::PermissionDenied) => {}
                    // In A's own workspace, an earlier role's call may have created what a
                    // later one tries again (CreateAgent, AddMember): A's data, not B's.
                    Err(Code::AlreadyExists) if *ws == a_ws => {}
                    // Naming A's own workspace may succeed, showing nothing of B.
                    Ok(messages) if *ws == a_ws || path.ends_with("/ListWorkspaces") => {
                        for message in &messages {
                            assert_eq!(mentions(message, &b_ids), None, "{context} showed B");
                        }
                    }
                    other => {
                        panic!("{context}: expected NOT_FOUND or PERMISSION_DENIED, got {other:?}")
                    }
                }
            }
        }
    }
    assert_eq!(calls, 6 * 2 * methods.len());
    assert_eq!(
        snapshot(&owner, &b_ws, &b.worker).await,
        before,
        "B's data changed"
    );

    // B keeps working, and A's open watch sees none of it.
    owner_b.task(&b_ws, &b_agent.id, "after the attack").await;
    while let Ok(Some(Ok(event))) = tokio::time::timeout(Duration::from_secs(1), a_watch.message())
        .await
        .map(|m| m.transpose())
    {
        let event = event.event.unwrap();
        assert_eq!(event.workspace_id, a_ws);
        assert_eq!(mentions(&event.encode_to_vec(), &b_ids), None);
    }
    app.stop().await;
}
