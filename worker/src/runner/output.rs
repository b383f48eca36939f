//! Forwarding an attempt's streamed output to the link: coalesced into numbered messages,
//! made storable (no NUL), and capped at the size of a whole answer.

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

/// Sends provider pieces to the link as numbered output, coalesced by [`Coalescer`].
/// Returns when the provider drops its sink, or, once the pieces pass [`MAX_OUTPUT_BYTES`]
/// in total, cancels the call through `stop_call` and returns an error.
pub(super) async fn forward_output(
    mut pieces: mpsc::Receiver<String>,
    link: &LinkHandle,
    attempt: &Arc<Attempt>,
    stop_call: &CancellationToken,
    first_piece: &OnceLock<Instant>,
) -> Result<(), OutputTooLarge> {
    let mut coalescer = Coalescer::new(COALESCE_WINDOW, MAX_DELTA_BYTES);
    let mut next_index = 0i64;
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
                index: next_index,
                text,
            };
            next_index += 1;
            // Waits while the link is backed up. A stopped link is noticed when the ending
            // is reported.
            let _ = link.send(output).await;
        }
        if done {
            return Ok(());
        }
    }
}

/// Sleeps until `deadline`, or forever if there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
