//! Forwarding an attempt's streamed output to the link: coalesced into numbered messages,
//! made storable (no NUL), and capped at the size of a whole answer; and withdrawing it when
//! a model call fails after streaming and another (a fallback) answers instead.
//!
//! Numbering: deltas and resets of an attempt share one index sequence, kept in an
//! [`OutputCursor`] the runner holds for the whole attempt. Deltas count up from 0; a reset
//! takes the index of the next delta without using it up, so indexes keep increasing
//! across resets and watchers are told "withdraw what came before `index`; the next delta
//! has `index`".

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use agentplane_core::limits::{MAX_DELTA_BYTES, MAX_OUTPUT_BYTES};
use agentplane_core::text::without_nul;

use crate::coalesce::Coalescer;
use crate::lease::Attempt;
use crate::link::{LinkHandle, Outbound};

/// At most one output message per window (pieces arriving meanwhile travel together).
const COALESCE_WINDOW: Duration = Duration::from_millis(20);

/// The provider streamed more than [`MAX_OUTPUT_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct OutputTooLarge {
    /// Bytes received when the limit was passed.
    pub(super) streamed: usize,
}

/// Where an attempt's output numbering stands: one per attempt, across all its model calls.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct OutputCursor {
    /// The index the next delta takes.
    next_index: i64,
    /// Index of the latest reset (0 before any): deltas from here on are shown.
    shown_from: i64,
}

/// Sends one model call's pieces to the link as numbered output, coalesced by
/// [`Coalescer`], numbered from `cursor`, which moves on with each delta handed to the link
/// (so it stays right if this future is dropped midway). Returns when the provider drops
/// its sink, or, once this call's pieces pass [`MAX_OUTPUT_BYTES`] in total, cancels the
/// call through `stop_call` and returns an error.
pub(super) async fn forward_output_from(
    mut pieces: mpsc::Receiver<String>,
    link: &LinkHandle,
    attempt: &Arc<Attempt>,
    stop_call: &CancellationToken,
    first_piece: &OnceLock<Instant>,
    cursor: &mut OutputCursor,
) -> Result<(), OutputTooLarge> {
    let mut coalescer = Coalescer::new(COALESCE_WINDOW, MAX_DELTA_BYTES);
    let mut streamed = 0usize;
    loop {
        let (ready, done) = tokio::select! {
            piece = pieces.recv() => match piece {
                Some(piece) => {
                    if first_piece.get().is_none() {
                        let _ = first_piece.set(Instant::now());
                    }
                    let piece = without_nul(&piece);
                    streamed = streamed.saturating_add(piece.len());
                    if streamed > MAX_OUTPUT_BYTES {
                        stop_call.cancel();
                        return Err(OutputTooLarge { streamed });
                    }
                    (coalescer.push(&piece, Instant::now()), false)
                }
                None => (coalescer.take_rest(Instant::now()).into_iter().collect(), true),
            },
            () = sleep_until(coalescer.flush_at()) => {
                (coalescer.take_due(Instant::now()).into_iter().collect(), false)
            }
        };
        for text in ready {
            let output = Outbound::Output {
                attempt: Arc::clone(attempt),
                index: cursor.next_index,
                text,
            };
            cursor.next_index += 1;
            // Waits while the link is backed up. A stopped link is noticed when the ending
            // is reported.
            let _ = link.send(output).await;
        }
        if done {
            return Ok(());
        }
    }
}

/// Withdraws the output the attempt has shown since its latest reset (a model call failed
/// after streaming it, and a fallback is about to answer): queues a reset at the cursor's
/// next index, which the next [`forward_output_from`] with the same cursor continues from.
/// Sends nothing if no delta was sent since the latest reset (or at all). Returns whether a
/// reset was queued; waits while the link is backed up.
pub(super) async fn withdraw_output(
    link: &LinkHandle,
    attempt: &Arc<Attempt>,
    cursor: &mut OutputCursor,
) -> bool {
    if cursor.next_index == cursor.shown_from {
        return false;
    }
    cursor.shown_from = cursor.next_index;
    let reset = Outbound::OutputReset {
        attempt: Arc::clone(attempt),
        index: cursor.next_index,
    };
    // A stopped link is noticed when the ending is reported.
    link.send(reset).await.is_ok()
}

/// Sleeps until `deadline`, or forever if there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use crate::lease::LeaseKey;

    use super::*;

    /// Forwards `pieces` as one model call, numbered from `cursor`.
    async fn call(
        link: &LinkHandle,
        attempt: &Arc<Attempt>,
        cursor: &mut OutputCursor,
        pieces: &[&str],
    ) {
        let (sink, received) = mpsc::channel(pieces.len().max(1));
        for piece in pieces {
            sink.send((*piece).to_owned())
                .await
                .expect("room for every piece");
        }
        drop(sink);
        let stop_call = CancellationToken::new();
        let first_piece = OnceLock::new();
        forward_output_from(received, link, attempt, &stop_call, &first_piece, cursor)
            .await
            .expect("within the limit");
    }

    #[tokio::test]
    async fn a_reset_takes_the_next_index_and_the_fallback_continues_after_it() {
        let (link, mut inbox) = LinkHandle::for_tests(64);
        let shutdown = CancellationToken::new();
        let lease = LeaseKey {
            tenant_id: agentplane_core::ids::TenantId::generate(),
            task_id: agentplane_core::ids::TaskId::generate(),
            attempt: 1,
        };
        let attempt = Arc::new(Attempt::new(lease, std::time::Instant::now(), &shutdown));
        let mut cursor = OutputCursor::default();
        assert!(
            !withdraw_output(&link, &attempt, &mut cursor).await,
            "nothing shown, nothing to withdraw"
        );
        call(&link, &attempt, &mut cursor, &["failed ", "call"]).await;
        assert!(withdraw_output(&link, &attempt, &mut cursor).await);
        assert!(
            !withdraw_output(&link, &attempt, &mut cursor).await,
            "a fallback that showed nothing has nothing to withdraw"
        );
        call(&link, &attempt, &mut cursor, &["answer"]).await;
        drop(link);

        let mut seen = Vec::new();
        while let Some(message) = inbox.recv().await {
            seen.push(match message {
                Outbound::Output { index, text, .. } => format!("{index}:{text}"),
                Outbound::OutputReset { index, .. } => format!("{index}:reset"),
                other => panic!("unexpected {other:?}"),
            });
        }
        let failed = seen.len() - 2;
        let mut expected: Vec<String> = (0..failed).map(|index| format!("{index}:")).collect();
        expected.push(format!("{failed}:reset"));
        expected.push(format!("{failed}:answer"));
        assert_eq!(seen.len(), expected.len(), "{seen:?}");
        for (seen, expected) in seen.iter().zip(&expected) {
            assert!(seen.starts_with(expected.as_str()), "{seen} vs {expected}");
        }
        let withdrawn: String = seen[..failed]
            .iter()
            .map(|message| message.split_once(':').map_or("", |(_, text)| text))
            .collect();
        assert_eq!(withdrawn, "failed call");
    }
}
