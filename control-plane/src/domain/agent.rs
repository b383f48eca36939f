//! Agents: limits, defaults and the validated spec an agent is stored as.

use std::collections::BTreeMap;

pub use agentplane_core::generation::{Generation, MAX_OUTPUT_TOKENS};

/// Longest system prompt, in bytes.
pub const MAX_SYSTEM_PROMPT_BYTES: usize = 256 * 1024;
/// Longest model name.
pub const MAX_MODEL_CHARS: usize = 200;
/// Longest agent name.
pub const MAX_NAME_CHARS: usize = 63;
/// Most stop sequences.
pub const MAX_STOP_SEQUENCES: usize = 16;
/// Longest stop sequence.
pub const MAX_STOP_SEQUENCE_CHARS: usize = 256;
/// max_concurrency when none is given.
pub const DEFAULT_MAX_CONCURRENCY: i32 = 10;
/// Highest max_concurrency.
pub const MAX_MAX_CONCURRENCY: i32 = 10_000;
/// max_attempts when none is given.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;
/// Highest max_attempts.
pub const MAX_MAX_ATTEMPTS: i32 = 100;
/// task_timeout when none is given.
pub const DEFAULT_TASK_TIMEOUT_MS: i64 = 10 * 60 * 1000;
/// Shortest task_timeout.
pub const MIN_TASK_TIMEOUT_MS: i64 = 1000;
/// Longest task_timeout.
pub const MAX_TASK_TIMEOUT_MS: i64 = 24 * 60 * 60 * 1000;

pub use agentplane_core::columns::Provider;
/// Everything about an agent a client can set, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentSpec {
    /// Unique among the workspace's live agents.
    pub name: String,
    /// Provider.
    pub provider: Provider,
    /// Model name.
    pub model: String,
    /// System prompt.
    pub system_prompt: String,
    /// Generation parameters.
    pub generation: Generation,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Most tasks running at once.
    pub max_concurrency: i32,
    /// Timeout of one attempt.
    pub task_timeout_ms: i64,
    /// Attempts per task.
    pub max_attempts: i32,
}

/// Whether `name` is a valid agent name: a lowercase letter, then [a-z0-9-].
pub fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && name.len() <= MAX_NAME_CHARS
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names_follow_dns_label_rules() {
        assert!(is_valid_name("coder"));
        assert!(is_valid_name("coder-2"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("2coder"));
        assert!(!is_valid_name("Coder"));
        assert!(!is_valid_name("co der"));
        assert!(!is_valid_name(&"a".repeat(64)));
    }
}
