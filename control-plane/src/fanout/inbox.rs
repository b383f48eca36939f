//! A subscription's queue, and the budget every queue of the process shares.
//!
//! Memory bound: all queues together hold at most [`MAX_QUEUED_NOTICES`] notices and
//! [`MAX_QUEUED_BYTES`] (the notices themselves plus their delta text, which a payload
//! limits to under 8,000 bytes), however many streams subscribe or stall; one queue holds at
//! most [`MAX_PER_SUBSCRIPTION`]. A notice that would pass either bound is dropped and its
//! subscription told to re-read instead. Per stream, what it queues for its client is
//! bounded in `api` (`STREAM_BUFFER`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use tokio::sync::Notify;

use super::Delivery;
use agentplane_core::notify::Notification;

/// Notices all queues of the process hold together, at most.
pub(super) const MAX_QUEUED_NOTICES: usize = 16 * 1024;
/// Bytes all queues of the process hold together, at most.
pub(super) const MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;
/// Notices one queue holds, at most: a stream this far behind re-reads instead.
pub(super) const MAX_PER_SUBSCRIPTION: usize = 256;

/// What every queue of the process holds together.
#[derive(Debug, Default)]
pub(super) struct Budget {
    notices: AtomicUsize,
    bytes: AtomicUsize,
}

impl Budget {
    /// Takes room for one notice of `bytes`, if there is room.
    fn reserve(&self, bytes: usize) -> bool {
        let notices = self.notices.fetch_add(1, Ordering::Relaxed);
        let total = self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if notices < MAX_QUEUED_NOTICES && total.saturating_add(bytes) <= MAX_QUEUED_BYTES {
            return true;
        }
        self.release(1, bytes);
        false
    }

    fn release(&self, notices: usize, bytes: usize) {
        self.notices.fetch_sub(notices, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Notices queued now.
    pub(super) fn queued_notices(&self) -> usize {
        self.notices.load(Ordering::Relaxed)
    }
}

/// A queued notification and when its sender stamped it.
#[derive(Debug)]
struct Queued {
    notification: Notification,
    sent_at: Option<SystemTime>,
    bytes: usize,
}

#[derive(Debug, Default)]
struct Queue {
    notices: VecDeque<Queued>,
    bytes: usize,
    /// Notices were dropped (or may be missing): the next take answers `Resync`.
    resync: bool,
}

impl Queue {
    /// Empties the queue, giving its room back.
    fn clear(&mut self, budget: &Budget) {
        budget.release(self.notices.len(), self.bytes);
        self.notices.clear();
        self.bytes = 0;
    }
}

/// One subscription's queue; the router pushes, the one stream takes.
#[derive(Debug, Default)]
pub(super) struct Inbox {
    queue: Mutex<Queue>,
    wake: Notify,
}

impl Inbox {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Every critical section leaves the queue consistent before it could panic.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a notification, or, past a bound, drops what is queued and asks for a re-read.
    pub(super) fn push(
        &self,
        budget: &Budget,
        notification: Notification,
        sent_at: Option<SystemTime>,
    ) {
        let bytes = std::mem::size_of::<Queued>() + text_len(&notification);
        let mut queue = self.queue();
        if queue.resync {
            // A re-read is coming anyway, and covers this.
        } else if queue.notices.len() < MAX_PER_SUBSCRIPTION && budget.reserve(bytes) {
            queue.bytes += bytes;
            queue.notices.push_back(Queued {
                notification,
                sent_at,
                bytes,
            });
        } else {
            queue.clear(budget);
            queue.resync = true;
        }
        drop(queue);
        self.wake.notify_one();
    }

    /// Drops what is queued and asks for a re-read.
    pub(super) fn resync(&self, budget: &Budget) {
        let mut queue = self.queue();
        queue.clear(budget);
        queue.resync = true;
        drop(queue);
        self.wake.notify_one();
    }

    /// The next delivery, if one is ready, with the time its notification was sent.
    pub(super) fn take(&self, budget: &Budget) -> Option<(Delivery, Option<SystemTime>)> {
        let mut queue = self.queue();
        if queue.resync {
            queue.resync = false;
            return Some((Delivery::Resync, None));
        }
        let queued = queue.notices.pop_front()?;
        queue.bytes -= queued.bytes;
        drop(queue);
        budget.release(1, queued.bytes);
        Some((Delivery::Notice(queued.notification), queued.sent_at))
    }

    /// Waits until something may have been queued since the last take.
    pub(super) async fn wait(&self) {
        self.wake.notified().await;
    }
}

fn text_len(notification: &Notification) -> usize {
    match notification {
        Notification::TaskOutput {
            text: Some(text), ..
        } => text.len(),
        _ => 0,
    }
}
