//! Tests of the parent module.

use super::*;

fn spec() -> AgentSpec {
    AgentSpec {
        name: "coder".to_owned(),
        provider: Provider::Echo,
        model: "echo-1".to_owned(),
        system_prompt: String::new(),
        generation: Generation::default(),
        labels: BTreeMap::new(),
        required_labels: BTreeMap::new(),
        max_concurrency: DEFAULT_MAX_CONCURRENCY,
        task_timeout_ms: DEFAULT_TASK_TIMEOUT_MS,
        max_attempts: DEFAULT_MAX_ATTEMPTS,
        tools: Vec::new(),
        max_steps: tool_rules::DEFAULT_MAX_STEPS,
        fallbacks: Vec::new(),
    }
}

#[test]
fn tools_fallbacks_and_step_limits_are_checked() {
    let tool = |name: &str, parameters: serde_json::Value| ToolDefinition {
        name: name.to_owned(),
        description: String::new(),
        parameters,
    };
    let object = serde_json::json!({"type": "object", "properties": {}});
    let bad = AgentSpec {
        tools: vec![
            tool("get_weather", object.clone()),
            tool("get_weather", object.clone()),
            tool("has space", object),
            tool("list", serde_json::json!({"type": "array"})),
        ],
        max_steps: 0,
        fallbacks: vec![
            ModelChoice {
                provider: String::new(),
                model: "m".to_owned(),
            },
            ModelChoice {
                provider: "openai".to_owned(),
                model: String::new(),
            },
        ],
        ..spec()
    };
    let mut v = Violations::new();
    bad.check(&mut v);
    let fields: Vec<String> = match v.finish() {
        Err(ApiError::InvalidArgument(violations)) => {
            violations.into_iter().map(|v| v.field).collect()
        }
        other => panic!("expected violations, got {other:?}"),
    };
    assert_eq!(
        fields,
        [
            "agent.tools[1].name",
            "agent.tools[2].name",
            "agent.tools[3].parameters",
            "agent.max_steps",
            "agent.fallbacks[0].provider",
            "agent.fallbacks[1].model",
        ]
    );
    let good = AgentSpec {
        tools: vec![tool("now", tool_rules::empty_object_schema())],
        max_steps: tool_rules::MAX_MAX_STEPS,
        fallbacks: vec![ModelChoice {
            provider: "anthropic".to_owned(),
            model: "claude-haiku-4-5".to_owned(),
        }],
        ..spec()
    };
    let mut v = Violations::new();
    good.check(&mut v);
    assert!(v.finish().is_ok());
}

#[test]
fn changes_replace_only_their_fields() {
    let changed = spec()
        .with_changes(vec![
            AgentChange::Name("writer".to_owned()),
            AgentChange::MaxAttempts(5),
        ])
        .expect("valid changes");
    assert_eq!(
        changed,
        AgentSpec {
            name: "writer".to_owned(),
            max_attempts: 5,
            ..spec()
        }
    );
}

#[test]
fn a_changed_spec_is_checked_as_a_whole() {
    let stale = AgentSpec {
        model: String::new(),
        ..spec()
    };
    let result = stale.with_changes(vec![AgentChange::MaxAttempts(5)]);
    assert!(matches!(result, Err(ApiError::InvalidArgument(v)) if v[0].field == "agent.model"));
}

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
