//! Output coalescing: a piece goes out at once if nothing was sent during the last window;
//! otherwise it waits for the window to end and leaves together with the pieces that
//! arrived meanwhile. The first token is never delayed, a fast provider costs at most one
//! message per window, and no message exceeds the wire limit.

use std::time::Duration;

use tokio::time::Instant;

/// Buffers text between sends; all times are passed in, so it is tested without a clock.
#[derive(Debug)]
pub(crate) struct Coalescer {
    buffer: String,
    max_bytes: usize,
    window: Duration,
    last_sent: Option<Instant>,
    flush_at: Option<Instant>,
}

impl Coalescer {
    /// Sends at most once per `window` (full chunks excepted), chunks of at most
    /// `max_bytes` (at least 4: one character).
    pub(crate) fn new(window: Duration, max_bytes: usize) -> Self {
        Self {
            buffer: String::new(),
            max_bytes: max_bytes.max(4),
            window,
            last_sent: None,
            flush_at: None,
        }
    }

    /// Adds a piece at `now`; returns the texts to send now.
    pub(crate) fn push(&mut self, piece: &str, now: Instant) -> Vec<String> {
        self.buffer.push_str(piece);
        let mut ready = self.take_full_chunks();
        if !self.buffer.is_empty() {
            let quiet = self.last_sent.is_none_or(|sent| now >= sent + self.window);
            if quiet || !ready.is_empty() {
                // Sending now anyway: the rest goes along.
                ready.push(std::mem::take(&mut self.buffer));
            } else if self.flush_at.is_none() {
                self.flush_at = Some(self.last_sent.map_or(now, |sent| sent + self.window));
            }
        }
        self.note_sent(&ready, now);
        ready
    }

    /// When buffered text is due, if any is waiting.
    pub(crate) fn flush_at(&self) -> Option<Instant> {
        self.flush_at
    }

    /// The buffered text, if its time has come at `now`.
    pub(crate) fn take_due(&mut self, now: Instant) -> Option<String> {
        if self.flush_at.is_some_and(|at| at <= now) {
            return self.take_rest(now);
        }
        None
    }

    /// Whatever is buffered, due or not (the provider is done).
    pub(crate) fn take_rest(&mut self, now: Instant) -> Option<String> {
        self.flush_at = None;
        if self.buffer.is_empty() {
            return None;
        }
        self.last_sent = Some(now);
        Some(std::mem::take(&mut self.buffer))
    }

    fn take_full_chunks(&mut self) -> Vec<String> {
        let mut full = Vec::new();
        while self.buffer.len() >= self.max_bytes {
            let mut cut = self.max_bytes;
            while !self.buffer.is_char_boundary(cut) {
                cut -= 1;
            }
            let rest = self.buffer.split_off(cut);
            full.push(std::mem::replace(&mut self.buffer, rest));
        }
        full
    }

    fn note_sent(&mut self, sent: &[String], now: Instant) {
        if !sent.is_empty() {
            self.last_sent = Some(now);
        }
        if self.buffer.is_empty() {
            self.flush_at = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use agentplane_core::limits::MAX_DELTA_BYTES;

    use super::*;

    const WINDOW: Duration = Duration::from_millis(20);

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn the_first_piece_goes_at_once_and_later_ones_wait_for_the_window() {
        let start = Instant::now();
        let mut coalescer = Coalescer::new(WINDOW, MAX_DELTA_BYTES);
        assert_eq!(coalescer.push("You", start), ["You"]);
        assert!(coalescer.push(" said", at(start, 5)).is_empty());
        assert!(coalescer.push(" hi", at(start, 10)).is_empty());
        assert_eq!(coalescer.flush_at(), Some(at(start, 20)));
        assert_eq!(coalescer.take_due(at(start, 19)), None);
        assert_eq!(
            coalescer.take_due(at(start, 20)).as_deref(),
            Some(" said hi")
        );
        assert_eq!(coalescer.flush_at(), None);
        // Quiet for a whole window: the next piece goes at once again.
        assert_eq!(coalescer.push(" again", at(start, 45)), [" again"]);
    }

    #[test]
    fn take_rest_empties_the_buffer_whether_due_or_not() {
        let start = Instant::now();
        let mut coalescer = Coalescer::new(WINDOW, MAX_DELTA_BYTES);
        coalescer.push("a", start);
        coalescer.push("b", at(start, 1));
        assert_eq!(coalescer.take_rest(at(start, 2)).as_deref(), Some("b"));
        assert_eq!(coalescer.take_rest(at(start, 3)), None);
        assert_eq!(coalescer.flush_at(), None);
    }

    #[test]
    fn full_chunks_go_at_once_and_never_exceed_the_limit() {
        let start = Instant::now();
        let mut coalescer = Coalescer::new(WINDOW, 10);
        assert_eq!(coalescer.push("x", start), ["x"]);
        let chunks = coalescer.push("abcdefghijklmnopqrstuvwxy", at(start, 1));
        assert_eq!(chunks, ["abcdefghij", "klmnopqrst", "uvwxy"]);
        assert_eq!(coalescer.take_rest(at(start, 2)), None);
    }

    #[test]
    fn cuts_only_on_character_boundaries() {
        let start = Instant::now();
        let mut coalescer = Coalescer::new(WINDOW, 5);
        coalescer.push("", start);
        // "é" is two bytes, so "aaaaé" would be six: the cut falls before it.
        let mut chunks = coalescer.push("aaaaéébb", start);
        chunks.extend(coalescer.take_rest(start));
        assert_eq!(chunks.concat(), "aaaaéébb");
        assert!(chunks.iter().all(|chunk| chunk.len() <= 5), "{chunks:?}");
        assert_eq!(chunks[0], "aaaa");
    }
}
