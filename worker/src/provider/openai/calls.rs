//! Tool calls assembled from the fragments of a Chat Completions stream: `delta.tool_calls`
//! entries name their call by `index` (several calls may interleave), the first fragment of a
//! call carries its `id` and `function.name`, the later ones pieces of `function.arguments`.

use serde::Deserialize;

use crate::provider::http::arguments_text;
use crate::provider::{ToolCall, made_up_tool_call_id};

/// A fragment of a streamed tool call.
#[derive(Debug, Deserialize)]
pub(super) struct CallDelta {
    /// Which call it continues; some compatible servers leave it out and send each call
    /// whole.
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Debug, Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// The calls of one stream, in order of first appearance.
#[derive(Debug, Default)]
pub(super) struct Calls(Vec<PartialCall>);

/// A tool call assembled from its fragments so far.
#[derive(Debug, Default)]
struct PartialCall {
    index: Option<u64>,
    id: Option<String>,
    name: String,
    arguments: String,
}

impl Calls {
    /// Adds one fragment to its call.
    pub(super) fn add(&mut self, delta: CallDelta) {
        let calls = &mut self.0;
        let position = match delta.index {
            Some(index) => calls.iter().position(|c| c.index == Some(index)),
            // Without an index, a fragment with an id or a name starts a call and any other
            // continues the last one.
            None if delta.id.is_some()
                || delta.function.as_ref().is_some_and(|f| f.name.is_some()) =>
            {
                None
            }
            None => calls.len().checked_sub(1),
        };
        let position = position.unwrap_or_else(|| {
            calls.push(PartialCall {
                index: delta.index,
                ..PartialCall::default()
            });
            calls.len() - 1
        });
        let call = &mut calls[position];
        if let Some(id) = delta.id.filter(|id| !id.is_empty()) {
            call.id.get_or_insert(id);
        }
        if let Some(function) = delta.function {
            // The name comes whole in the first fragment; a server that repeats it in every
            // fragment does not make it longer.
            if let Some(name) = function.name.filter(|name| *name != call.name) {
                call.name.push_str(&name);
            }
            if let Some(arguments) = function.arguments {
                call.arguments.push_str(&arguments);
            }
        }
    }

    /// The finished calls; a call the server gave no id gets one made from `request_id`.
    pub(super) fn finish(self, request_id: &str) -> Vec<ToolCall> {
        self.0
            .into_iter()
            .enumerate()
            .map(|(position, call)| ToolCall {
                id: call
                    .id
                    .unwrap_or_else(|| made_up_tool_call_id(request_id, position)),
                name: call.name,
                arguments: arguments_text(call.arguments),
            })
            .collect()
    }
}
