//! Tools, tool calls and fallbacks as both binaries store and read them: the JSON shapes of
//! `agents.tools`, `agents.fallbacks`, `task_messages.tool_calls` and
//! `tasks.required_action`, and the limits the API enforces on them.

use serde::{Deserialize, Serialize};

/// Most tools an agent may declare.
pub const MAX_TOOLS: usize = 64;
/// Longest tool name.
pub const MAX_TOOL_NAME_CHARS: usize = 64;
/// Longest tool description, in bytes.
pub const MAX_TOOL_DESCRIPTION_BYTES: usize = 4 * 1024;
/// Largest parameters schema, in bytes of JSON.
pub const MAX_TOOL_SCHEMA_BYTES: usize = 64 * 1024;
/// Most fallback (provider, model) pairs of an agent.
pub const MAX_FALLBACKS: usize = 4;
/// max_steps when none is given.
pub const DEFAULT_MAX_STEPS: i32 = 16;
/// Highest max_steps.
pub const MAX_MAX_STEPS: i32 = 100;
/// Most tool calls one model step may make (and outputs one SubmitToolOutputs may carry).
pub const MAX_TOOL_CALLS: usize = 64;
/// Longest tool call id.
pub const MAX_TOOL_CALL_ID_CHARS: usize = 256;
/// Largest arguments of one tool call, in bytes of JSON text.
pub const MAX_TOOL_ARGUMENTS_BYTES: usize = 256 * 1024;
/// Largest output of one tool call, in bytes.
pub const MAX_TOOL_OUTPUT_BYTES: usize = 256 * 1024;
/// Largest outputs of one SubmitToolOutputs together, in bytes.
pub const MAX_TOOL_OUTPUTS_TOTAL_BYTES: usize = 1024 * 1024;

/// A tool an agent declares (an element of `agents.tools`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// 1 to 64 characters of `[a-zA-Z0-9_-]`, unique within the agent.
    pub name: String,
    /// What it does, for the model.
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the arguments: an object schema.
    #[serde(default = "empty_object_schema")]
    pub parameters: serde_json::Value,
}

/// The schema of a tool without arguments.
pub fn empty_object_schema() -> serde_json::Value {
    serde_json::json!({ "type": "object", "properties": {} })
}

/// A provider and model to fall back on (an element of `agents.fallbacks`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelChoice {
    /// The provider's stored name (`agents.provider`'s values).
    pub provider: String,
    /// The provider's model name.
    pub model: String,
}

/// A model's call of a tool (an element of `task_messages.tool_calls`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallRecord {
    /// The call's id, unique within its task.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments as JSON text, as the model wrote them.
    pub arguments: String,
}

/// What a task waiting for tool outputs waits on (`tasks.required_action`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequiredAction {
    /// The model step that made the calls.
    pub step: i32,
    /// The calls to answer, in the model's order.
    pub tool_calls: Vec<ToolCallRecord>,
}

/// Whether `name` is a valid tool name: 1 to 64 characters of `[a-zA-Z0-9_-]` (the set
/// every vendor accepts).
pub fn is_valid_tool_name(name: &str) -> bool {
    (1..=MAX_TOOL_NAME_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether a tool call's id can be stored and sent back to the vendor: 1 to
/// [`MAX_TOOL_CALL_ID_CHARS`] characters, without NUL (PostgreSQL text cannot hold it).
pub fn is_storable_tool_call_id(id: &str) -> bool {
    (1..=MAX_TOOL_CALL_ID_CHARS).contains(&id.chars().count()) && !id.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_are_the_set_every_vendor_accepts() {
        assert!(is_valid_tool_name("get_weather"));
        assert!(is_valid_tool_name("Search-2"));
        assert!(!is_valid_tool_name(""));
        assert!(!is_valid_tool_name("has space"));
        assert!(!is_valid_tool_name("dotted.name"));
        assert!(!is_valid_tool_name("é"));
        assert!(is_valid_tool_name(&"a".repeat(64)));
        assert!(!is_valid_tool_name(&"a".repeat(65)));
    }

    #[test]
    fn a_stored_tool_without_parameters_gets_an_empty_object_schema() {
        let tool: ToolDefinition = serde_json::from_str(r#"{"name": "now"}"#).expect("valid");
        assert_eq!(tool.parameters, empty_object_schema());
        assert_eq!(tool.description, "");
    }
}
