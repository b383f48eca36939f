//! Conversions between stored rows / domain values and protobuf messages.

use std::collections::HashMap;

use agentplane_proto::v1 as pb;
use chrono::{DateTime, TimeZone, Utc};

use crate::domain::agent::Provider;
use crate::domain::page;
use crate::domain::task::{Role, TaskStatus};
use crate::store::{AgentRow, EventRow, TaskMessageRow, TaskRow, WorkspaceRow};

/// A time as a protobuf timestamp.
pub(super) fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf timestamp as a time, if it is valid.
pub(super) fn from_timestamp(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    // Years 1 to 9999, as google.protobuf.Timestamp defines (and PostgreSQL can store).
    if !(-62_135_596_800..=253_402_300_799).contains(&ts.seconds) {
        return None;
    }
    let nanos = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)?;
    Utc.timestamp_opt(ts.seconds, nanos).single()
}

fn labels(labels: &std::collections::BTreeMap<String, String>) -> HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Stored workspace → protobuf.
pub(super) fn workspace(row: &WorkspaceRow) -> pb::Workspace {
    pb::Workspace {
        id: row.id.to_string(),
        display_name: row.display_name.clone(),
        labels: labels(&row.labels),
        max_running_tasks: row.max_running_tasks.unwrap_or(0),
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
    }
}

/// Protobuf enum value → provider (`None` for unspecified or unknown).
pub(super) fn provider_from_wire(value: i32) -> Option<Provider> {
    match pb::Provider::try_from(value).ok()? {
        pb::Provider::Unspecified => None,
        pb::Provider::Echo => Some(Provider::Echo),
        pb::Provider::Anthropic => Some(Provider::Anthropic),
        pb::Provider::Openai => Some(Provider::OpenAi),
        pb::Provider::Gemini => Some(Provider::Gemini),
        pb::Provider::OpenaiCompatible => Some(Provider::OpenAiCompatible),
    }
}

/// Provider → protobuf enum.
pub(super) fn provider(provider: Provider) -> pb::Provider {
    match provider {
        Provider::Echo => pb::Provider::Echo,
        Provider::Anthropic => pb::Provider::Anthropic,
        Provider::OpenAi => pb::Provider::Openai,
        Provider::Gemini => pb::Provider::Gemini,
        Provider::OpenAiCompatible => pb::Provider::OpenaiCompatible,
    }
}

/// Stored agent → protobuf.
pub(super) fn agent(row: &AgentRow) -> pb::Agent {
    let generation = &row.generation.0;
    pb::Agent {
        id: row.id.to_string(),
        workspace_id: row.tenant_id.to_string(),
        name: row.name.clone(),
        provider: provider(row.provider).into(),
        model: row.model.clone(),
        system_prompt: row.system_prompt.clone(),
        generation: Some(pb::GenerationConfig {
            temperature: generation.temperature,
            top_p: generation.top_p,
            max_output_tokens: generation
                .max_output_tokens
                .map(|m| i32::try_from(m).unwrap_or(i32::MAX)),
            stop_sequences: generation.stop_sequences.clone(),
        }),
        labels: labels(&row.labels),
        required_worker_labels: labels(&row.required_labels),
        max_concurrency: row.max_concurrency,
        task_timeout: Some(prost_types::Duration {
            seconds: row.task_timeout_ms / 1000,
            nanos: i32::try_from((row.task_timeout_ms % 1000) * 1_000_000).unwrap_or(0),
        }),
        max_attempts: row.max_attempts,
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
        tools: row
            .tools
            .0
            .iter()
            .map(|tool| pb::Tool {
                name: tool.name.clone(),
                description: tool.description.clone(),
                parameters: json_to_struct(&tool.parameters),
            })
            .collect(),
        max_steps: row.max_steps,
        fallbacks: row
            .fallbacks
            .0
            .iter()
            .map(|choice| pb::ModelChoice {
                provider: Provider::parse(&choice.provider)
                    .map_or(pb::Provider::Unspecified, provider)
                    .into(),
                model: choice.model.clone(),
            })
            .collect(),
    }
}

/// Status → protobuf enum.
pub(super) fn task_status(status: TaskStatus) -> pb::TaskStatus {
    match status {
        TaskStatus::Pending => pb::TaskStatus::Pending,
        TaskStatus::Running => pb::TaskStatus::Running,
        TaskStatus::Succeeded => pb::TaskStatus::Succeeded,
        TaskStatus::Failed => pb::TaskStatus::Failed,
        TaskStatus::Canceled => pb::TaskStatus::Canceled,
        TaskStatus::RequiresAction => pb::TaskStatus::RequiresAction,
    }
}

/// Protobuf enum → status filter (`None` for unspecified).
pub(super) fn task_status_filter(status: pb::TaskStatus) -> Option<TaskStatus> {
    match status {
        pb::TaskStatus::Unspecified => None,
        pb::TaskStatus::Pending => Some(TaskStatus::Pending),
        pb::TaskStatus::Running => Some(TaskStatus::Running),
        pb::TaskStatus::Succeeded => Some(TaskStatus::Succeeded),
        pb::TaskStatus::Failed => Some(TaskStatus::Failed),
        pb::TaskStatus::Canceled => Some(TaskStatus::Canceled),
        pb::TaskStatus::RequiresAction => Some(TaskStatus::RequiresAction),
    }
}

/// Stored task → protobuf.
pub(super) fn task(row: &TaskRow) -> pb::Task {
    let status = row.status;
    pb::Task {
        id: row.id.to_string(),
        workspace_id: row.tenant_id.to_string(),
        agent_id: row.agent_id.to_string(),
        status: task_status(status).into(),
        priority: row.priority,
        run_at: Some(timestamp(row.run_at)),
        labels: labels(&row.labels),
        attempt: row.attempt,
        max_attempts: row.max_attempts,
        output: row.output.clone().unwrap_or_default(),
        usage: (status == TaskStatus::Succeeded).then_some(pb::Usage {
            input_tokens: row.input_tokens,
            output_tokens: row.output_tokens,
            cost_micros: row.cost_micros,
            cache_read_input_tokens: row.cache_read_input_tokens,
            cache_write_input_tokens: row.cache_write_input_tokens,
            reasoning_tokens: row.reasoning_tokens,
        }),
        error: row.error_code.as_ref().map(|code| pb::TaskError {
            code: code.clone(),
            message: row.error_message.clone().unwrap_or_default(),
        }),
        request_id: row.request_id.clone().unwrap_or_default(),
        worker_id: row.worker_id.map(|w| w.to_string()).unwrap_or_default(),
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
        start_time: row.started_at.map(timestamp),
        end_time: row.ended_at.map(timestamp),
        required_action: row
            .required_action
            .as_ref()
            .map(|action| pb::RequiredAction {
                step: action.0.step,
                tool_calls: action.0.tool_calls.iter().map(tool_call).collect(),
            }),
    }
}

/// Role → protobuf enum.
pub(super) fn role(role: Role) -> pb::Role {
    match role {
        Role::System => pb::Role::System,
        Role::User => pb::Role::User,
        Role::Assistant => pb::Role::Assistant,
        Role::Tool => pb::Role::Tool,
    }
}

/// Stored tool call → protobuf.
pub(super) fn tool_call(call: &agentplane_core::tools::ToolCallRecord) -> pb::ToolCall {
    pb::ToolCall {
        id: call.id.clone(),
        name: call.name.clone(),
        arguments: call.arguments.clone(),
    }
}

/// Stored transcript message → protobuf.
pub(super) fn task_message(row: &TaskMessageRow) -> pb::TaskMessage {
    pb::TaskMessage {
        id: row.id.to_string(),
        message: Some(pb::Message {
            role: role(row.role).into(),
            content: row.content.clone(),
            tool_calls: row
                .tool_calls
                .as_ref()
                .map(|calls| calls.0.iter().map(tool_call).collect())
                .unwrap_or_default(),
            tool_call_id: row.tool_call_id.clone().unwrap_or_default(),
            is_error: row.is_error,
        }),
        attempt: row.attempt,
        create_time: Some(timestamp(row.created_at)),
        step: row.step.unwrap_or(-1),
    }
}

/// Stored event → protobuf.
pub(super) fn event(row: &EventRow) -> pb::Event {
    pb::Event {
        id: row.id.to_string(),
        workspace_id: row.tenant_id.to_string(),
        cursor: page::encode_event(row.tenant_id, row.id),
        actor: row.actor.clone(),
        action: row.action.clone(),
        resource_type: row.resource_type.clone(),
        resource_id: row.resource_id.to_string(),
        request_id: row.request_id.clone().unwrap_or_default(),
        data: json_to_struct(&row.data.0),
        create_time: Some(timestamp(row.created_at)),
    }
}

/// A JSON object as a protobuf Struct (`None` for anything but an object).
pub(super) fn json_to_struct(value: &serde_json::Value) -> Option<prost_types::Struct> {
    match json_to_value(value).kind {
        Some(prost_types::value::Kind::StructValue(s)) => Some(s),
        _ => None,
    }
}

fn json_to_value(value: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A protobuf Struct as JSON (non-finite numbers become null).
pub(super) fn struct_to_json(s: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(value: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.iter().map(value_to_json).collect())
        }
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

/// Stored role → protobuf.
pub(super) fn workspace_role(role: agentplane_core::columns::WorkspaceRole) -> pb::WorkspaceRole {
    use agentplane_core::columns::WorkspaceRole;
    match role {
        WorkspaceRole::Viewer => pb::WorkspaceRole::Viewer,
        WorkspaceRole::Member => pb::WorkspaceRole::Member,
        WorkspaceRole::Admin => pb::WorkspaceRole::Admin,
    }
}

/// Stored API key → protobuf (never with a secret: the row has none).
pub(super) fn api_key(row: &crate::store::ApiKeyRow) -> pb::ApiKey {
    pb::ApiKey {
        id: row.id.to_string(),
        workspace_id: row.tenant_id.to_string(),
        name: row.name.clone(),
        role: workspace_role(row.role).into(),
        expire_time: row.expires_at.map(timestamp),
        created_by: row.created_by.clone(),
        create_time: Some(timestamp(row.created_at)),
        revoke_time: row.revoked_at.map(timestamp),
        last_use_time: row.last_used_at.map(timestamp),
    }
}

/// Stored worker credential → protobuf (never with a secret: the row has none).
pub(super) fn worker_credential(row: &crate::store::WorkerCredentialRow) -> pb::WorkerCredential {
    pb::WorkerCredential {
        worker_id: row.id.to_string(),
        name: row.name.clone(),
        created_by: row.created_by.clone(),
        create_time: Some(timestamp(row.created_at)),
        revoked_by: row.revoked_by.clone().unwrap_or_default(),
        revoke_time: row.revoked_at.map(timestamp),
    }
}

/// Stored membership → protobuf.
pub(super) fn member(row: &crate::store::MemberRow) -> pb::Member {
    pb::Member {
        user_id: row.user_id.to_string(),
        workspace_id: row.tenant_id.to_string(),
        issuer: row.issuer.clone(),
        subject: row.subject.clone(),
        role: workspace_role(row.role).into(),
        created_by: row.created_by.clone(),
        create_time: Some(timestamp(row.created_at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_survives_a_round_trip_through_struct() {
        let json = serde_json::json!({ "a": 1.5, "b": [true, null, "x"], "c": { "d": "e" } });
        let s = json_to_struct(&json);
        assert!(s.is_some());
        assert_eq!(s.map(|s| struct_to_json(&s)), Some(json));
    }

    #[test]
    fn invalid_timestamps_are_rejected() {
        assert!(
            from_timestamp(&prost_types::Timestamp {
                seconds: 0,
                nanos: -1
            })
            .is_none()
        );
        assert!(
            from_timestamp(&prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0
            })
            .is_none()
        );
        assert!(
            from_timestamp(&prost_types::Timestamp {
                seconds: 1,
                nanos: 0
            })
            .is_some()
        );
    }
}
