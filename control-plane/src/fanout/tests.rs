use uuid::Uuid;

use super::inbox::{MAX_PER_SUBSCRIPTION, MAX_QUEUED_NOTICES};
use super::*;

fn tenant() -> TenantId {
    TenantId(Uuid::now_v7())
}

fn task() -> TaskId {
    TaskId(Uuid::now_v7())
}

fn delta(tenant: TenantId, task: TaskId, index: i64) -> Notification {
    Notification::TaskOutput {
        tenant,
        task,
        attempt: 1,
        index,
        text: Some("hi".to_owned()),
    }
}

/// What is ready for the subscription now, without waiting.
fn ready(subscription: &Subscription) -> Vec<Delivery> {
    std::iter::from_fn(|| subscription.inbox.take(&subscription.hub.budget))
        .map(|(delivery, _)| delivery)
        .collect()
}

#[test]
fn a_notification_reaches_only_the_subscribers_of_its_topic() {
    let fanout = Fanout::unconnected();
    let (a, b) = (tenant(), tenant());
    let (watched, other) = (task(), task());
    let watcher = fanout.subscribe(Topic::Task(a, watched));
    let other_watcher = fanout.subscribe(Topic::Task(a, other));
    // The same task id under another workspace is another topic.
    let b_watcher = fanout.subscribe(Topic::Task(b, watched));
    let a_events = fanout.subscribe(Topic::Events(a));

    fanout.hub.route(delta(a, watched, 0), None);
    fanout.hub.route(
        Notification::TaskState {
            tenant: a,
            task: watched,
        },
        None,
    );
    fanout.hub.route(Notification::Events { tenant: b }, None);

    assert_eq!(
        ready(&watcher),
        vec![
            Delivery::Notice(delta(a, watched, 0)),
            Delivery::Notice(Notification::TaskState {
                tenant: a,
                task: watched
            }),
        ]
    );
    assert_eq!(ready(&other_watcher), vec![]);
    assert_eq!(ready(&b_watcher), vec![]);
    assert_eq!(ready(&a_events), vec![]);
}

#[test]
fn a_cancel_reaches_only_the_session_of_its_worker() {
    let fanout = Fanout::unconnected();
    let (holder, other) = (WorkerId(Uuid::now_v7()), WorkerId(Uuid::now_v7()));
    let session = fanout.subscribe(Topic::Worker(holder));
    let other_session = fanout.subscribe(Topic::Worker(other));
    let cancel = Notification::TaskCancel {
        tenant: tenant(),
        task: task(),
        attempt: 1,
        worker: holder,
    };
    fanout.hub.route(cancel.clone(), None);
    assert_eq!(ready(&session), vec![Delivery::Notice(cancel)]);
    assert_eq!(ready(&other_session), vec![]);
}

#[test]
fn a_subscriber_that_falls_behind_is_told_to_resync_and_holds_nothing() {
    let fanout = Fanout::unconnected();
    let (t, k) = (tenant(), task());
    let slow = fanout.subscribe(Topic::Task(t, k));
    for index in 0..=MAX_PER_SUBSCRIPTION as i64 {
        fanout.hub.route(delta(t, k, index), None);
    }
    assert_eq!(
        fanout.lag().0,
        0,
        "the overflowing queue gave its room back"
    );
    // Until it takes the resync, the re-read it will do covers whatever else arrives.
    fanout.hub.route(delta(t, k, 998), None);
    assert_eq!(ready(&slow), vec![Delivery::Resync]);
    // Then it starts over from what arrives after.
    fanout.hub.route(delta(t, k, 999), None);
    assert_eq!(ready(&slow), vec![Delivery::Notice(delta(t, k, 999))]);
}

#[test]
fn the_process_wide_budget_bounds_all_queues_together() {
    let fanout = Fanout::unconnected();
    let t = tenant();
    let per_queue = MAX_PER_SUBSCRIPTION / 2;
    let queues = MAX_QUEUED_NOTICES / per_queue + 1;
    let subscriptions: Vec<(TaskId, Subscription)> = (0..queues)
        .map(|_| {
            let k = task();
            (k, fanout.subscribe(Topic::Task(t, k)))
        })
        .collect();
    for (k, _) in &subscriptions {
        for index in 0..per_queue as i64 {
            fanout.hub.route(delta(t, *k, index), None);
        }
    }
    assert!(fanout.lag().0 <= MAX_QUEUED_NOTICES);
    let (_, last) = subscriptions.last().expect("several subscriptions");
    assert_eq!(ready(last), vec![Delivery::Resync]);
    drop(subscriptions);
    assert_eq!(
        fanout.lag(),
        (0, 0),
        "dropped subscriptions leave nothing behind"
    );
}

#[test]
fn a_listener_reconnect_tells_every_subscriber_to_resync() {
    let fanout = Fanout::unconnected();
    let t = tenant();
    let watcher = fanout.subscribe(Topic::Task(t, task()));
    let events = fanout.subscribe(Topic::Events(t));
    fanout.hub.resync_all();
    assert_eq!(ready(&watcher), vec![Delivery::Resync]);
    assert_eq!(ready(&events), vec![Delivery::Resync]);
}

#[tokio::test]
async fn recv_waits_for_a_notification_pushed_later() {
    let fanout = Fanout::unconnected();
    let (t, k) = (tenant(), task());
    let mut watcher = fanout.subscribe(Topic::Task(t, k));
    let hub = Arc::clone(&fanout.hub);
    let push = async move {
        tokio::task::yield_now().await;
        hub.route(delta(t, k, 0), Some(SystemTime::now()));
    };
    let (delivery, ()) = tokio::join!(watcher.recv(), push);
    assert_eq!(delivery, Delivery::Notice(delta(t, k, 0)));
}
