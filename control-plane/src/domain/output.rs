//! The rules of an attempt's live output: deltas are numbered from 0 without gaps, and
//! together they hold at most [`MAX_OUTPUT_BYTES`]. A reset withdraws everything before its
//! index (a model call failed after streaming it; a fallback answers instead): the next
//! delta has that index, and only what follows it counts towards the cap. Pure, so the
//! store (what may be written) and the worker session (what may be published before it is
//! written) apply the same rule, and it is tested without a database.

use agentplane_core::limits::MAX_OUTPUT_BYTES;

/// Where an attempt's output stands: the index the next delta must have, and the bytes
/// taken so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputChain {
    /// Index of the next delta.
    pub next_index: i64,
    /// Bytes of every delta since the latest reset (the running total stored with each
    /// row).
    pub bytes: i64,
    /// Index of the latest reset, 0 if none: the output before it was withdrawn.
    pub reset_index: i64,
}

/// What to do with a delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaStep {
    /// It extends the output; the running total after it.
    Append {
        /// Bytes of the output up to and including this delta.
        end_offset: i64,
    },
    /// It was taken before (a resend): nothing to do.
    Repeat,
    /// It comes after a gap, or would take the output past the cap: refused, and so is
    /// every later delta until the missing one arrives.
    Refuse,
}

impl OutputChain {
    /// Judges the delta with this index and length arriving now, and moves on if it is
    /// taken.
    pub fn step(&mut self, index: i64, len: usize) -> DeltaStep {
        if index < self.next_index {
            return DeltaStep::Repeat;
        }
        let end_offset = i64::try_from(len)
            .ok()
            .and_then(|len| self.bytes.checked_add(len))
            .filter(|&end| end <= i64::try_from(MAX_OUTPUT_BYTES).unwrap_or(i64::MAX));
        match end_offset {
            Some(end_offset) if index == self.next_index => {
                self.next_index += 1;
                self.bytes = end_offset;
                DeltaStep::Append { end_offset }
            }
            _ => DeltaStep::Refuse,
        }
    }

    /// Judges a reset to `index` arriving now (withdraw the output before it; the next
    /// delta has `index`), and moves on if it is taken. Returns whether it is taken: it
    /// must be past the latest reset and not behind the deltas taken, or it is a repeat
    /// (ignored, like a repeated delta). It may pass a gap: the deltas it withdraws need
    /// not arrive.
    pub fn reset(&mut self, index: i64) -> bool {
        if index < self.next_index || index <= self.reset_index {
            return false;
        }
        *self = OutputChain {
            next_index: index,
            bytes: 0,
            reset_index: index,
        };
        true
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn deltas_in_order_are_taken_and_repeats_are_skipped() {
        let mut chain = OutputChain::default();
        assert_eq!(chain.step(0, 2), DeltaStep::Append { end_offset: 2 });
        assert_eq!(chain.step(1, 3), DeltaStep::Append { end_offset: 5 });
        assert_eq!(chain.step(0, 2), DeltaStep::Repeat);
        assert_eq!(
            chain,
            OutputChain {
                next_index: 2,
                bytes: 5,
                reset_index: 0,
            }
        );
    }

    #[test]
    fn a_reset_withdraws_what_came_before_and_frees_the_cap() {
        let mut chain = OutputChain::default();
        assert!(!chain.reset(0), "nothing to withdraw before index 0");
        assert_eq!(
            chain.step(0, MAX_OUTPUT_BYTES),
            DeltaStep::Append {
                end_offset: MAX_OUTPUT_BYTES as i64
            }
        );
        assert_eq!(chain.step(1, 1), DeltaStep::Refuse);
        assert!(chain.reset(1));
        assert_eq!(chain.step(0, 1), DeltaStep::Repeat, "withdrawn, not resent");
        assert_eq!(chain.step(1, 3), DeltaStep::Append { end_offset: 3 });
        assert!(!chain.reset(1), "a repeated reset is ignored");
        assert!(!chain.reset(0), "so is a stale one");
        assert_eq!(chain.step(2, 1), DeltaStep::Append { end_offset: 4 });
    }

    #[test]
    fn a_reset_may_pass_a_gap_of_withdrawn_deltas() {
        let mut chain = OutputChain::default();
        assert_eq!(chain.step(0, 1), DeltaStep::Append { end_offset: 1 });
        assert!(
            chain.reset(3),
            "deltas 1 and 2 were withdrawn before they arrived"
        );
        assert_eq!(chain.step(2, 1), DeltaStep::Repeat);
        assert_eq!(chain.step(3, 1), DeltaStep::Append { end_offset: 1 });
    }

    #[test]
    fn a_gap_is_refused_until_the_missing_delta_arrives() {
        let mut chain = OutputChain::default();
        assert_eq!(chain.step(1, 1), DeltaStep::Refuse);
        assert_eq!(chain.step(0, 1), DeltaStep::Append { end_offset: 1 });
        assert_eq!(chain.step(1, 1), DeltaStep::Append { end_offset: 2 });
    }

    #[test]
    fn the_cap_is_reached_exactly_and_never_passed() {
        let mut chain = OutputChain::default();
        assert_eq!(
            chain.step(0, MAX_OUTPUT_BYTES - 1),
            DeltaStep::Append {
                end_offset: MAX_OUTPUT_BYTES as i64 - 1
            }
        );
        assert_eq!(chain.step(1, 2), DeltaStep::Refuse);
        assert_eq!(
            chain.step(1, 1),
            DeltaStep::Append {
                end_offset: MAX_OUTPUT_BYTES as i64
            }
        );
        assert_eq!(chain.step(2, 1), DeltaStep::Refuse);
    }

    proptest! {
        #[test]
        fn whatever_arrives_what_is_taken_is_gapless_and_within_the_cap(
            arrivals in proptest::collection::vec(
                (0i64..40, 0usize..100_000, proptest::bool::weighted(0.1)),
                0..200,
            ),
        ) {
            let mut chain = OutputChain::default();
            // Deltas taken since the latest reset taken, and where that reset put the index.
            let (mut from, mut taken) = (0i64, Vec::new());
            let mut last_index = -1i64;
            for (index, len, reset) in arrivals {
                if reset {
                    if chain.reset(index) {
                        prop_assert!(index > last_index, "a reset never goes back");
                        (from, taken) = (index, Vec::new());
                    }
                } else if let DeltaStep::Append { end_offset } = chain.step(index, len) {
                    prop_assert!(index > last_index);
                    last_index = index;
                    taken.push((index, end_offset));
                }
            }
            for (position, (index, end_offset)) in taken.iter().enumerate() {
                prop_assert_eq!(*index, from + position as i64);
                prop_assert!(*end_offset <= MAX_OUTPUT_BYTES as i64);
            }
        }
    }
}
