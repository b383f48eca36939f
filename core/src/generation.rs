//! An agent's generation parameters: written as JSON by the control plane (in
//! `agents.generation`) and read by the worker, through this one type.

use serde::{Deserialize, Serialize};

/// Generated tokens per call when the agent does not say.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 4096;
/// Highest `max_output_tokens` an agent may set.
pub const MAX_OUTPUT_TOKENS: u32 = 1_000_000;

/// Sampling parameters; every field is optional and unset fields are not stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Generation {
    /// Sampling temperature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling cut-off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Upper bound on generated tokens per call; [`DEFAULT_MAX_OUTPUT_TOKENS`] when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// Generation stops before the first of these.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop_sequences: Vec<String>,
}

impl Generation {
    /// Parses a stored `generation` value (null means all defaults); unknown keys are
    /// ignored, so a newer control plane can add a field before every worker knows it.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, serde_json::Error> {
        if value.is_null() {
            return Ok(Self::default());
        }
        Self::deserialize(value)
    }

    /// The token limit that applies to a call.
    pub fn effective_max_output_tokens(&self) -> u32 {
        self.max_output_tokens.unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_without_unset_fields() {
        let generation = Generation {
            max_output_tokens: Some(5),
            ..Generation::default()
        };
        let json = serde_json::to_value(&generation).unwrap();
        assert_eq!(json, serde_json::json!({ "max_output_tokens": 5 }));
        assert_eq!(Generation::from_json(&json).ok(), Some(generation));
    }

    #[test]
    fn null_and_empty_mean_defaults_and_unknown_keys_are_ignored() {
        for value in [
            serde_json::Value::Null,
            serde_json::json!({}),
            serde_json::json!({"future_knob": 1}),
        ] {
            let parsed = Generation::from_json(&value).ok();
            assert_eq!(parsed, Some(Generation::default()));
        }
        assert_eq!(
            Generation::default().effective_max_output_tokens(),
            DEFAULT_MAX_OUTPUT_TOKENS
        );
    }

    #[test]
    fn wrong_types_are_errors() {
        for bad in [
            serde_json::json!({"max_output_tokens": "many"}),
            serde_json::json!({"max_output_tokens": -1}),
            serde_json::json!({"temperature": "hot"}),
        ] {
            assert!(Generation::from_json(&bad).is_err(), "{bad}");
        }
    }
}
