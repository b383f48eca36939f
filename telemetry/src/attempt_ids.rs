//! Span ids of task attempts, derived from `(task, attempt)` so that a retried attempt can
//! link to the attempt before it without anything stored: any worker, on any machine, knows
//! the id the previous attempt's span had.
//!
//! The SDK draws span ids from its id generator; [`AttemptIdGenerator`] draws random ones
//! like the default, except while [`with_span_id`] has set one for the span being built on
//! this thread.

use std::cell::Cell;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use uuid::Uuid;

thread_local! {
    static NEXT_SPAN_ID: Cell<Option<SpanId>> = const { Cell::new(None) };
}

/// The SDK's id generator: random ids, or the one [`with_span_id`] set.
#[derive(Debug, Default)]
pub(crate) struct AttemptIdGenerator {
    random: RandomIdGenerator,
}

impl IdGenerator for AttemptIdGenerator {
    fn new_trace_id(&self) -> TraceId {
        self.random.new_trace_id()
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_SPAN_ID
            .with(Cell::take)
            .unwrap_or_else(|| self.random.new_span_id())
    }
}

/// Runs `build` with `id` as the span id of the first span the SDK builds on this thread
/// meanwhile; `build` should build exactly one (for a `tracing` span, by asking for its
/// context). The id is cleared afterwards either way.
pub fn with_span_id<R>(id: SpanId, build: impl FnOnce() -> R) -> R {
    /// Clears the id when dropped, so a panic in `build` cannot leave it for another span.
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            NEXT_SPAN_ID.with(|next| next.set(None));
        }
    }
    NEXT_SPAN_ID.with(|next| next.set(Some(id)));
    let _clear = Clear;
    build()
}

/// The span id of attempt `attempt` of task `task`: FNV-1a over the task id's bytes and the
/// attempt number, so every worker computes the same one. Never the invalid all-zero id.
pub fn attempt_span_id(task: Uuid, attempt: i32) -> SpanId {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in task.as_bytes().iter().chain(attempt.to_be_bytes().iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    SpanId::from(hash.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_ids_are_stable_distinct_and_valid() {
        let task = Uuid::from_u128(0x0192_3456_789a_7bcd_8ef0_1234_5678_9abc);
        assert_eq!(attempt_span_id(task, 1), attempt_span_id(task, 1));
        assert_ne!(attempt_span_id(task, 1), attempt_span_id(task, 2));
        assert_ne!(
            attempt_span_id(task, 1),
            attempt_span_id(Uuid::from_u128(1), 1)
        );
        assert_ne!(attempt_span_id(task, 1), SpanId::INVALID);
    }

    #[test]
    fn the_generator_uses_a_set_id_once_then_random_ones() {
        let generator = AttemptIdGenerator::default();
        let set = SpanId::from(42u64);
        let (first, second) =
            with_span_id(set, || (generator.new_span_id(), generator.new_span_id()));
        assert_eq!(first, set);
        assert_ne!(second, set);
        // Cleared after the closure even when it built nothing.
        with_span_id(set, || ());
        assert_ne!(generator.new_span_id(), set);
    }
}
