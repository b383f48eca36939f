//! WatchEvents: replay from a cursor, then tail live; resume without loss or repetition.

use std::time::Duration;

use agentplane_control_plane::fanout::LISTENER_APPLICATION_NAME;
use agentplane_proto::v1 as pb;
use tonic_types::StatusExt;

use crate::app::TestApp;
use crate::pg::TestDb;
use agentplane_testkit::proxy::SilencingProxy;

/// The next event on a WatchEvents stream, within 10 s.
pub(crate) async fn next_event(
    stream: &mut tonic::Streaming<pb::WatchEventsResponse>,
) -> pb::Event {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .event
        .unwrap()
}

/// A WatchEvents stream of the whole log of `ws`, from its start.
pub(crate) async fn watch_from_the_start(
    c: &mut crate::app::Clients,
    ws: &str,
) -> tonic::Streaming<pb::WatchEventsResponse> {
    c.events
        .watch_events(pb::WatchEventsRequest {
            workspace_id: ws.to_owned(),
            after_cursor: String::new(),
            filter: None,
        })
        .await
        .unwrap()
        .into_inner()
}

/// A new workspace named `name` with an echo agent, and a WatchEvents stream of its log
/// that has shown the agent's creation.
async fn watching_a_new_workspace(
    c: &mut crate::app::Clients,
    name: &str,
) -> (String, pb::Agent, tonic::Streaming<pb::WatchEventsResponse>) {
    let ws = c.workspace(name).await;
    let agent = c.echo_agent(&ws, "coder").await;
    let mut stream = watch_from_the_start(c, &ws).await;
    while next_event(&mut stream).await.action != "agent.created" {}
    (ws, agent, stream)
}

#[tokio::test]
async fn watch_events_replays_then_tails_and_resumes_from_a_cursor() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("events").await;
    let agent = c.echo_agent(&ws, "coder").await;

    let mut stream = watch_from_the_start(&mut c, &ws).await;
    assert_eq!(next_event(&mut stream).await.action, "workspace.created");
    assert_eq!(next_event(&mut stream).await.action, "api_key.created");
    let agent_created = next_event(&mut stream).await;
    assert_eq!(agent_created.action, "agent.created");

    // Live: a new event arrives on the open stream.
    let task = c.task(&ws, &agent.id, "tail me").await;
    let live = next_event(&mut stream).await;
    assert_eq!(
        (live.action.as_str(), live.resource_id.as_str()),
        ("task.created", task.id.as_str())
    );
    drop(stream);

    // Resume after the agent event: the next one is the task's, with nothing repeated.
    let mut resumed = c
        .events
        .watch_events(pb::WatchEventsRequest {
            workspace_id: ws.clone(),
            after_cursor: agent_created.cursor.clone(),
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_event(&mut resumed).await.id, live.id);

    // Filters apply to the tail too.
    let mut only_tasks = c
        .events
        .watch_events(pb::WatchEventsRequest {
            workspace_id: ws.clone(),
            after_cursor: String::new(),
            filter: Some(pb::EventFilter {
                resource_type: "task".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_event(&mut only_tasks).await.resource_id, task.id);
    c.tasks
        .cancel_task(pb::CancelTaskRequest {
            workspace_id: ws.clone(),
            id: task.id.clone(),
            request_id: "req-9".into(),
        })
        .await
        .unwrap();
    let canceled = next_event(&mut only_tasks).await;
    assert_eq!(canceled.action, "task.canceled");
    assert_eq!(canceled.request_id, "req-9");
    // The actor is the API key that asked (the workspace's admin key, made by the harness).
    assert!(canceled.actor.starts_with("api_key:"), "{}", canceled.actor);
    app.stop().await;
}

#[tokio::test]
async fn an_event_held_back_behind_an_older_transaction_is_shown_when_it_ends() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let (ws, agent, mut stream) = watching_a_new_workspace(&mut c, "held-back").await;

    // A transaction older than the task's creation, of nobody in this workspace: while it
    // is open the creation is committed (and notified) but held back; its end sends no
    // notification at all.
    let owner = db.owner_pool().await;
    let mut older = owner.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *older)
        .await
        .unwrap();
    let task = c.task(&ws, &agent.id, "held back").await;
    let early = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
    assert!(
        early.is_err(),
        "shown past an open older transaction: {early:?}"
    );
    older.commit().await.unwrap();

    let shown = next_event(&mut stream).await;
    assert_eq!(
        (shown.action.as_str(), shown.resource_id.as_str()),
        ("task.created", task.id.as_str())
    );
    app.stop().await;
}

#[tokio::test]
async fn a_watch_goes_on_after_its_listener_is_cut_off() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let (ws, agent, mut stream) = watching_a_new_workspace(&mut c, "listener").await;

    // End the control plane's LISTEN session and change something at once: the watch,
    // which no longer re-reads on a timer, hears of it on the listener's next session, or
    // is told to re-read if the notification fell between the two.
    let owner = db.owner_pool().await;
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
           AND query ILIKE 'LISTEN%'",
    )
    .fetch_all(&owner)
    .await
    .unwrap();
    assert!(
        !ended.is_empty() && ended.iter().all(|&ended| ended),
        "{ended:?}"
    );
    let task = c.task(&ws, &agent.id, "notified into the gap").await;

    let shown = next_event(&mut stream).await;
    assert_eq!(
        (shown.action.as_str(), shown.resource_id.as_str()),
        ("task.created", task.id.as_str())
    );
    app.stop().await;
}

#[tokio::test]
async fn a_watch_goes_on_when_its_listener_falls_silent() {
    let db = TestDb::new().await;
    let proxy = SilencingProxy::start(db.server_addr()).await;
    let app = TestApp::spawn_with(&db, |config| {
        config.database_url = db.app_url_through(proxy.port()).into();
        config.listener_probe_interval = Duration::from_millis(500);
    })
    .await;
    let mut c = app.admin().await;
    let (ws, agent, mut stream) = watching_a_new_workspace(&mut c, "silent").await;
    let owner = db.owner_pool().await;
    // One listener, unless a busy machine delayed a probe and it is being replaced.
    assert_eq!(listeners_eventually(&owner, 1).await, 1);

    // The listener's connection stays open and passes nothing, as one does whose server or
    // network vanished without closing it (no read fails). The watch, which waits on the
    // listener, goes on only if the control plane notices and listens anew.
    proxy.silence(LISTENER_APPLICATION_NAME);
    let task = c
        .task(&ws, &agent.id, "notified to a silent listener")
        .await;

    let shown = next_event(&mut stream).await;
    assert_eq!(
        (shown.action.as_str(), shown.resource_id.as_str()),
        ("task.created", task.id.as_str())
    );
    // It was heard by a new listener: the silenced one is still connected beside it.
    assert_eq!(listeners_eventually(&owner, 2).await, 2);
    app.stop().await;
}

/// How many listeners are connected to the test's database, once it is `count` (or after
/// five seconds).
async fn listeners_eventually(owner: &sqlx::PgPool, count: i64) -> i64 {
    let mut connected = 0;
    for _ in 0..100 {
        connected = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
        )
        .bind(LISTENER_APPLICATION_NAME)
        .fetch_one(owner)
        .await
        .unwrap();
        if connected == count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    connected
}

/// Lists events until at least `count` are visible (reads wait for older transactions
/// anywhere in the cluster, which other tests may hold open for seconds).
async fn wait_for_events(c: &mut crate::app::Clients, ws: &str, count: usize) -> Vec<pb::Event> {
    for _ in 0..300 {
        let events = c
            .events
            .list_events(pb::ListEventsRequest {
                workspace_id: ws.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        if events.len() >= count {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {count} events in {ws}");
}

/// Asserts INVALID_ARGUMENT with a BadRequest violation of exactly `field`.
fn assert_violation<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    field: &str,
) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let violations = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest details in {status:?}"))
        .field_violations;
    assert!(
        violations.iter().any(|v| v.field == field),
        "expected a violation of {field}, got {violations:?}"
    );
}

#[tokio::test]
async fn event_page_tokens_and_cursors_of_another_workspace_are_refused() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut ca = app.admin().await;
    let a = ca.workspace("a").await;
    let mut cb = app.admin().await;
    let b = cb.workspace("b").await;
    ca.echo_agent(&a, "one").await;
    cb.echo_agent(&b, "one").await;
    // Each workspace's events: creation, its API key, its agent.
    let a_events = wait_for_events(&mut ca, &a, 3).await;
    wait_for_events(&mut cb, &b, 3).await;

    let page = ca
        .events
        .list_events(pb::ListEventsRequest {
            workspace_id: a.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!page.next_page_token.is_empty());
    // The token works where it came from...
    let next = ca
        .events
        .list_events(pb::ListEventsRequest {
            workspace_id: a.clone(),
            page_token: page.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.events[0].id, a_events[1].id);
    // ...and nowhere else: not as another workspace's page token, nor as its cursor.
    assert_violation(
        cb.events
            .list_events(pb::ListEventsRequest {
                workspace_id: b.clone(),
                page_token: page.next_page_token.clone(),
                ..Default::default()
            })
            .await,
        "page_token",
    );
    assert_violation(
        cb.events
            .list_events(pb::ListEventsRequest {
                workspace_id: b.clone(),
                page_token: a_events[0].cursor.clone(),
                ..Default::default()
            })
            .await,
        "page_token",
    );
    assert_violation(
        cb.events
            .watch_events(pb::WatchEventsRequest {
                workspace_id: b.clone(),
                after_cursor: a_events[0].cursor.clone(),
                filter: None,
            })
            .await,
        "after_cursor",
    );
    // A well-formed cursor of b's log that names a's event: the lookup within b finds nothing.
    let forged = agentplane_core::page::encode_event(
        agentplane_core::ids::TenantId(b.parse().unwrap()),
        a_events[0].id.parse().unwrap(),
    );
    assert_violation(
        cb.events
            .watch_events(pb::WatchEventsRequest {
                workspace_id: b.clone(),
                after_cursor: forged.clone(),
                filter: None,
            })
            .await,
        "after_cursor",
    );
    assert_violation(
        cb.events
            .list_events(pb::ListEventsRequest {
                workspace_id: b.clone(),
                page_token: forged,
                ..Default::default()
            })
            .await,
        "page_token",
    );
    app.stop().await;
}

#[tokio::test]
async fn event_cursors_reveal_no_log_position() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let mut c = app.admin().await;
    let ws = c.workspace("opaque").await;
    c.echo_agent(&ws, "one").await;
    c.echo_agent(&ws, "two").await;
    let events = wait_for_events(&mut c, &ws, 3).await;
    let page = c
        .events
        .list_events(pb::ListEventsRequest {
            workspace_id: ws.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let tokens = events
        .iter()
        .map(|e| (e.cursor.clone(), e.id.clone()))
        .chain([(page.next_page_token, events[0].id.clone())]);
    for (token, event_id) in tokens {
        // Whatever the token holds beyond ids the client already has, it is no number (such
        // as a transaction id, which would reveal how busy the whole database is).
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &token)
                .unwrap();
        let rest = String::from_utf8(bytes)
            .unwrap()
            .replace(&event_id, "")
            .replace(&ws, "");
        assert!(
            !rest.chars().any(|ch| ch.is_ascii_digit()),
            "{token} carries more than ids: {rest:?}"
        );
    }

    // Paging one event at a time walks the same log as one page.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .events
            .list_events(pb::ListEventsRequest {
                workspace_id: ws.clone(),
                page_size: 1,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        paged.extend(page.events.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let whole: Vec<String> = events.into_iter().map(|e| e.id).collect();
    assert_eq!(paged, whole);
    app.stop().await;
}
