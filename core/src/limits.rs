//! Limits of the worker channel (`WorkerService.Session`): the worker keeps within them and
//! the control plane refuses what passes them. `proto/agentplane/v1/worker.proto` quotes the
//! same numbers; the unit test below keeps the two in step.

/// Largest output delta, in bytes.
pub const MAX_DELTA_BYTES: usize = 64 * 1024;
/// Largest final answer of one attempt, and largest total of its stored deltas, in bytes.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// Highest output delta index. Deltas are numbered from 0 without gaps and none is empty, so
/// an attempt within [`MAX_OUTPUT_BYTES`] never needs a higher one; the bound also keeps
/// `index + 1` from overflowing anywhere downstream.
pub const MAX_DELTA_INDEX: i64 = MAX_OUTPUT_BYTES as i64;
/// Longest failure message kept, in bytes (longer ones are cut at a character boundary).
pub const MAX_FAILURE_MESSAGE_BYTES: usize = 4 * 1024;
/// Most model calls reported for one attempt.
pub const MAX_MODEL_CALLS: usize = 1000;
/// Most leases in one heartbeat; a worker holding more splits them over several.
pub const MAX_HEARTBEAT_LEASES: usize = 10_000;
/// Largest progress event payload, as JSON bytes.
pub const MAX_EVENT_DATA_BYTES: usize = 16 * 1024;
/// Most tasks one worker may run at once.
pub const MAX_WORKER_CAPACITY: u32 = 10_000;
/// Longest failure code, finish reason and similar machine-readable names, in characters.
pub const MAX_CODE_CHARS: usize = 64;
/// Longest model name or provider request id a worker reports, in characters.
pub const MAX_MODEL_CALL_FIELD_CHARS: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;

    /// The proto documents these limits to client authors; a change here must change it too.
    #[test]
    fn the_worker_proto_quotes_these_limits() {
        let proto = include_str!("../../proto/agentplane/v1/worker.proto");
        for quoted in [
            format!("The text, at most {} KiB.", MAX_DELTA_BYTES / 1024),
            format!(
                "The full answer, at most {} MiB.",
                MAX_OUTPUT_BYTES / (1024 * 1024)
            ),
            format!(
                "Human-readable detail, at most {} KiB.",
                MAX_FAILURE_MESSAGE_BYTES / 1024
            ),
            format!(
                "Details, at most {} KiB as JSON.",
                MAX_EVENT_DATA_BYTES / 1024
            ),
            format!("at most {}", thousands(MAX_HEARTBEAT_LEASES)),
            format!("1 to {}", thousands(MAX_WORKER_CAPACITY as usize)),
            format!("at most {}", MAX_DELTA_INDEX),
            format!(
                "reported in a WorkerStep or WorkerUsage, at most\n  // {}",
                thousands(MAX_MODEL_CALLS)
            ),
        ] {
            assert!(
                proto.contains(&quoted),
                "worker.proto should say {quoted:?}"
            );
        }
    }

    /// `10000` as `10,000`, as the proto docs write numbers.
    fn thousands(n: usize) -> String {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    }
}
