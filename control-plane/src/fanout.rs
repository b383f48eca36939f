//! Live fan-out between replicas: one Postgres LISTEN connection per control-plane process,
//! routed in process to the streams that asked for it.
//!
//! A stream subscribes to one [`Topic`] (a task, a workspace's events, a worker's cancels)
//! and gets only the notifications about it, so a notification costs a map lookup and a
//! queue push per interested stream, never a wake-up of every stream. Each subscription has
//! its own short queue; what overflows is dropped and the stream is told to re-read from the
//! database instead ([`Delivery::Resync`]), so a slow client costs a re-read, never memory.

mod inbox;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use crate::ids::{TaskId, TenantId, WorkerId};
use crate::spawn::spawn_named;
use agentplane_core::notify::{Notification, channel};
use inbox::{Budget, Inbox};

/// How long after a listener reconnect streams are told to re-read once more.
const RESYNC_AFTER_RECONNECT: Duration = Duration::from_secs(2);

/// What a subscription follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// One task's status and output (WatchTask).
    Task(TenantId, TaskId),
    /// A workspace's event log (WatchEvents).
    Events(TenantId),
    /// Cancellations of the attempts one worker holds (its session).
    Worker(WorkerId),
}

impl Topic {
    /// The topic a notification is about; `None` for one no stream follows here.
    fn of(notification: &Notification) -> Option<Topic> {
        match *notification {
            Notification::TaskState { tenant, task }
            | Notification::TaskOutput { tenant, task, .. }
            | Notification::TaskOutputReset { tenant, task, .. } => Some(Topic::Task(tenant, task)),
            Notification::TaskCancel { worker, .. } => Some(Topic::Worker(worker)),
            Notification::Events { tenant } => Some(Topic::Events(tenant)),
            // Workers act on it.
            Notification::TaskReady => None,
        }
    }
}

/// What a subscription receives.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    /// A notification about the topic.
    Notice(Notification),
    /// Notifications may be missing (the listener reconnected, or this stream fell behind
    /// and its queue overflowed): re-read what the stream shows from the database.
    Resync,
}

/// The subscriptions of the process, by topic.
#[derive(Debug, Default)]
struct Hub {
    topics: Mutex<HashMap<Topic, Vec<Arc<Inbox>>>>,
    budget: Budget,
}

impl Hub {
    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<Topic, Vec<Arc<Inbox>>>> {
        // A panic while holding the lock cannot leave the map inconsistent: every change to
        // it is one insert or removal.
        self.topics.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a notification to the subscribers of its topic.
    fn route(&self, notification: Notification, sent_at: Option<SystemTime>) {
        let Some(topic) = Topic::of(&notification) else {
            return;
        };
        let topics = self.topics();
        if let Some(inboxes) = topics.get(&topic) {
            for inbox in inboxes {
                inbox.push(&self.budget, notification.clone(), sent_at);
            }
        }
    }

    /// Tells every subscriber to re-read.
    fn resync_all(&self) {
        for inbox in self.topics().values().flatten() {
            inbox.resync(&self.budget);
        }
    }
}

/// The channel on which a listener that has heard nothing for a while probes itself.
const PROBE: &str = "agentplane_listener_probe";

/// The listener's `application_name`, so that operators (and a test) can tell it apart.
pub const LISTENER_APPLICATION_NAME: &str = "agentplane-control-plane-listener";

/// Longest a listener may take to connect and subscribe.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(15);

/// A listener on every channel the fan-out routes, and on [`PROBE`].
///
/// It connects through a pool of its own, with `pool`'s options and one connection: it takes
/// no connection from the API's pool, and when it is replaced for silence, the `UNLISTEN` that
/// sqlx sends as it drops a listener, which waits on the dead connection until TCP gives up,
/// holds only that pool.
async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let options = (*pool.connect_options())
        .clone()
        .application_name(LISTENER_APPLICATION_NAME);
    let own = PgPoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(LISTEN_TIMEOUT)
        .connect_lazy_with(options);
    let subscribe = async {
        let mut listener = PgListener::connect_with(&own).await?;
        listener
            .listen_all([
                channel::TASK_STATE,
                channel::TASK_OUTPUT,
                channel::TASK_CANCEL,
                channel::EVENTS,
                PROBE,
            ])
            .await?;
        Ok(listener)
    };
    // A connection can go silent while it subscribes, too.
    tokio::time::timeout(LISTEN_TIMEOUT, subscribe)
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

/// When the listener last heard anything (a notification or its own probe).
#[derive(Debug)]
struct Heard {
    since: Instant,
    at_millis: AtomicU64,
}

impl Heard {
    fn now() -> Self {
        Self {
            since: Instant::now(),
            at_millis: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let millis = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.at_millis.store(millis, Ordering::Relaxed);
    }

    /// How long ago the last thing was heard.
    fn ago(&self) -> Duration {
        self.since.elapsed().saturating_sub(Duration::from_millis(
            self.at_millis.load(Ordering::Relaxed),
        ))
    }
}

/// Receives on `listener` until it fails, routing what it hears; only an abort (the listener
/// being replaced, or shutdown) interrupts a receive, so one is never cancelled while sqlx
/// reconnects.
async fn receive(mut listener: PgListener, hub: Arc<Hub>, heard: Arc<Heard>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                heard.touch();
                if notification.channel() == PROBE {
                    continue;
                }
                match Notification::decode_with_sent_at(
                    notification.channel(),
                    notification.payload(),
                ) {
                    Some((decoded, sent_at)) => hub.route(decoded, sent_at),
                    None => tracing::warn!(
                        channel = notification.channel(),
                        "ignoring malformed notification"
                    ),
                }
            }
            Ok(None) => {
                // The listener has reconnected (sqlx re-issues LISTEN before it says so),
                // but whatever was notified meanwhile is lost: streams re-read now, and once
                // more a moment later from a task of its own, so that no receive waits for it.
                heard.touch();
                tracing::warn!("notification listener reconnecting");
                crate::metrics::METRICS.fanout_listener_restart("reconnected");
                hub.resync_all();
                let hub = Arc::clone(&hub);
                spawn_named("fanout_resync", async move {
                    tokio::time::sleep(RESYNC_AFTER_RECONNECT).await;
                    hub.resync_all();
                });
            }
            Err(error) => {
                tracing::warn!(%error, "notification listener failed; reconnecting");
                crate::metrics::METRICS.fanout_listener_restart("failed");
                return;
            }
        }
    }
}

/// Notifies [`PROBE`] from `pool`, waiting at most `timeout`; false if it surely was not
/// sent (an unsent probe says nothing about the listener).
async fn probe(pool: &PgPool, timeout: Duration) -> bool {
    let probe = sqlx::query("SELECT pg_notify($1, '')")
        .bind(PROBE)
        .execute(pool);
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(_)) => true,
        Ok(Err(error)) => {
            tracing::warn!(%error, "could not probe the notification listener");
            false
        }
        // Perhaps sent, perhaps not: judge the listener as if it was. A listener rebuilt
        // for nothing costs a reconnect and a re-read per stream; one dead and never
        // rebuilt stalls them all.
        Err(_) => {
            tracing::warn!("probing the notification listener timed out");
            true
        }
    }
}

/// Runs the listener and replaces it when it fails or falls silent.
///
/// A connection whose server or network vanished without closing it (a half-open socket)
/// fails no read: it is only silent. So when nothing has been heard for `probe_every`, a
/// probe is notified from the pool; if the listener does not hear that either within another
/// `probe_every`, it is dropped and a new one is built. Idle streams re-read only when told
/// to, so every replacement tells them all, once the new listener is surely listening.
async fn supervise(
    mut listener: PgListener,
    hub: Arc<Hub>,
    pool: PgPool,
    probe_every: Duration,
    shutdown: CancellationToken,
) {
    let heard = Arc::new(Heard::now());
    loop {
        let mut receiving = spawn_named(
            "fanout_receive",
            receive(listener, Arc::clone(&hub), Arc::clone(&heard)),
        );
        // Whether a probe went out since the listener last heard anything.
        let mut probed = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    receiving.abort();
                    return;
                }
                _ = &mut receiving => break,
                () = tokio::time::sleep(probe_every) => {}
            }
            if heard.ago() < probe_every {
                probed = false;
                continue;
            }
            if probed {
                tracing::warn!(
                    silent_for = ?heard.ago(),
                    "notification listener heard nothing, not even its own probe; reconnecting"
                );
                crate::metrics::METRICS.fanout_listener_restart("silent");
                receiving.abort();
                break;
            }
            probed = probe(&pool, probe_every).await;
        }
        hub.resync_all();
        listener = loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            match listen(&pool).await {
                Ok(listener) => break listener,
                Err(error) => tracing::warn!(%error, "notification listener still down"),
            }
        };
        heard.touch();
        tracing::info!("notification listener back");
        hub.resync_all();
    }
}

/// The process-wide router of notifications to subscriptions.
#[derive(Clone, Debug)]
pub struct Fanout {
    hub: Arc<Hub>,
}

impl Fanout {
    /// Starts listening, probing the listener after `probe_every` of silence; stops when
    /// `shutdown` is cancelled.
    pub async fn start(
        pool: &PgPool,
        probe_every: Duration,
        shutdown: CancellationToken,
    ) -> Result<Self, sqlx::Error> {
        let listener = listen(pool).await?;
        let fanout = Self::unconnected();
        spawn_named(
            "fanout",
            supervise(
                listener,
                Arc::clone(&fanout.hub),
                pool.clone(),
                probe_every,
                shutdown,
            ),
        );
        Ok(fanout)
    }

    /// A router with no listener behind it (for tests of the routing itself).
    fn unconnected() -> Self {
        Self {
            hub: Arc::new(Hub::default()),
        }
    }

    /// A subscription to every notification about `topic` from now on.
    pub fn subscribe(&self, topic: Topic) -> Subscription {
        let inbox = Arc::new(Inbox::default());
        self.hub
            .topics()
            .entry(topic)
            .or_default()
            .push(Arc::clone(&inbox));
        Subscription {
            hub: Arc::clone(&self.hub),
            topic,
            inbox,
        }
    }

    /// For metrics: notices queued for all subscriptions together (at most
    /// [`inbox::MAX_QUEUED_NOTICES`]), and how many subscriptions there are.
    pub fn lag(&self) -> (usize, usize) {
        let subscribers = self.hub.topics().values().map(Vec::len).sum();
        (self.hub.budget.queued_notices(), subscribers)
    }
}

/// One stream's subscription; unsubscribes when dropped.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    topic: Topic,
    inbox: Arc<Inbox>,
}

impl Subscription {
    /// The next delivery, waiting for one. Cancel-safe: nothing is lost if the future is
    /// dropped before it completes.
    pub async fn recv(&mut self) -> Delivery {
        loop {
            if let Some((delivery, sent_at)) = self.inbox.take(&self.hub.budget) {
                if let Some(sent_at) = sent_at {
                    crate::metrics::METRICS.observe_fanout_lag(sent_at);
                }
                return delivery;
            }
            self.inbox.wait().await;
        }
    }
}

impl Subscription {
    /// The next delivery if one is ready now, without waiting.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.inbox
            .take(&self.hub.budget)
            .map(|(delivery, _)| delivery)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut topics = self.hub.topics();
        if let Some(inboxes) = topics.get_mut(&self.topic) {
            inboxes.retain(|inbox| !Arc::ptr_eq(inbox, &self.inbox));
            if inboxes.is_empty() {
                topics.remove(&self.topic);
            }
        }
        drop(topics);
        self.inbox.resync(&self.hub.budget);
    }
}

#[cfg(test)]
mod tests;
