//! EventService.

use std::time::Duration;

use agentplane_proto::v1 as pb;
use pb::event_service_server::EventService;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{ResponseStream, STREAM_BUFFER, State, convert};
use crate::domain::event::{EventFilter, EventPosition, RESOURCE_TYPES};
use crate::domain::page;
use crate::domain::validate::Violations;
use crate::error::ApiError;
use crate::fanout::Notice;
use crate::ids::TenantId;
use crate::spawn::spawn_named;
use crate::store::TenantTx;

/// Longest action filter.
const MAX_ACTION_CHARS: usize = 64;
/// Events read per query while replaying; a watch holds one batch while its client reads
/// it, so this bounds the stream's memory (see `STREAM_BUFFER`).
const WATCH_BATCH: i64 = 100;
/// How often a quiet watch re-reads anyway (covers lost notifications and events held back
/// while an older transaction was still running).
const WATCH_POLL: Duration = Duration::from_secs(1);

/// Handlers of EventService.
#[derive(Clone, Debug)]
pub struct EventApi {
    state: State,
}

impl EventApi {
    /// Handlers over shared state.
    pub fn new(state: State) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl EventService for EventApi {
    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let request = request.into_inner();
        let mut v = Violations::new();
        let tenant: Option<TenantId> = v.id("workspace_id", &request.workspace_id);
        let filter = event_filter(&mut v, request.filter.as_ref(), true);
        let limit = v.page_size("page_size", request.page_size);
        let after = cursor(&mut v, &PAGE_TOKEN, tenant, &request.page_token);
        v.finish()?;
        let Some(tenant) = tenant else {
            return Err(ApiError::invalid("workspace_id", "is required").into());
        };
        let mut tx = self.state.store.tenant(tenant).await?;
        let after = position(&mut tx, &PAGE_TOKEN, after).await?;
        let rows = tx.list_events(&filter, after, limit + 1).await?;
        let (items, next) = super::paging::split_page(rows, limit, convert::event, |row| {
            page::encode_event(row.tenant_id, row.id)
        });
        Ok(Response::new(pb::ListEventsResponse {
            events: items,
            next_page_token: next,
        }))
    }

    type WatchEventsStream = ResponseStream<pb::WatchEventsResponse>;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let request = request.into_inner();
        let mut v = Violations::new();
        let tenant: Option<TenantId> = v.id("workspace_id", &request.workspace_id);
        let filter = event_filter(&mut v, request.filter.as_ref(), false);
        let after = cursor(&mut v, &AFTER_CURSOR, tenant, &request.after_cursor);
        v.finish()?;
        let Some(tenant) = tenant else {
            return Err(ApiError::invalid("workspace_id", "is required").into());
        };
        // Fail now, not in the stream, if the workspace or the cursor's event is unknown.
        let mut tx = self.state.store.tenant(tenant).await?;
        let after = position(&mut tx, &AFTER_CURSOR, after).await?;
        drop(tx);
        let notices = self.state.fanout.subscribe();
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        spawn_named(
            "watch_events",
            watch_events(self.state.clone(), tenant, filter, after, notices, sender),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

async fn watch_events(
    state: State,
    tenant: TenantId,
    filter: EventFilter,
    mut after: Option<EventPosition>,
    mut notices: broadcast::Receiver<Notice>,
    sender: mpsc::Sender<Result<pb::WatchEventsResponse, Status>>,
) {
    loop {
        // Replay (or catch up) until a short page says we are at the head.
        loop {
            let read = async {
                let mut tx = state.store.tenant_unchecked(tenant).await?;
                tx.list_events(&filter, after, WATCH_BATCH).await
            };
            let rows = match read.await {
                Ok(rows) => rows,
                Err(error) => {
                    let _ = sender.send(Err(ApiError::from(error).into())).await;
                    return;
                }
            };
            let full = rows.len() as i64 == WATCH_BATCH;
            for row in rows {
                after = Some(row.position());
                let message = pb::WatchEventsResponse {
                    event: Some(convert::event(&row)),
                };
                if sender.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            if !full {
                break;
            }
        }
        // Wait for news about this workspace, or re-read at the deadline anyway: notices for
        // other workspaces must not keep postponing it.
        let deadline = tokio::time::Instant::now() + WATCH_POLL;
        loop {
            tokio::select! {
                () = state.shutdown.cancelled() => return,
                () = sender.closed() => return,
                received = tokio::time::timeout_at(deadline, notices.recv()) => match received {
                    Ok(Ok(Notice::Events { tenant: t })) if t == tenant => break,
                    Ok(Ok(Notice::Resync)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) | Err(_) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) => return,
                    Ok(Ok(_)) => {}
                },
            }
        }
    }
}

/// A field that names a place in the event log, and what it says when it names none.
struct CursorField {
    name: &'static str,
    refusal: &'static str,
}

const PAGE_TOKEN: CursorField = CursorField {
    name: "page_token",
    refusal: "is not a token returned by this list method for this workspace",
};

const AFTER_CURSOR: CursorField = CursorField {
    name: "after_cursor",
    refusal: "is not the cursor of an event of this workspace",
};

/// The event a cursor field names: none for an empty field; a violation unless it is a
/// cursor of this workspace's log (checked only once the workspace id is valid).
fn cursor(
    v: &mut Violations,
    field: &CursorField,
    tenant: Option<TenantId>,
    token: &str,
) -> Option<Uuid> {
    let tenant = tenant?;
    if token.is_empty() {
        return None;
    }
    let event = page::decode_event(tenant, token);
    if event.is_none() {
        v.add(field.name, field.refusal);
    }
    event
}

/// The position of the event a cursor names, looked up within the transaction's workspace:
/// a made-up event id is refused like a malformed cursor.
async fn position(
    tx: &mut TenantTx,
    field: &CursorField,
    event: Option<Uuid>,
) -> Result<Option<EventPosition>, Status> {
    let Some(event) = event else {
        return Ok(None);
    };
    match tx.event_position(event).await? {
        Some(position) => Ok(Some(position)),
        None => Err(ApiError::invalid(field.name, field.refusal).into()),
    }
}

fn event_filter(
    v: &mut Violations,
    filter: Option<&pb::EventFilter>,
    allow_end: bool,
) -> EventFilter {
    let Some(filter) = filter else {
        return EventFilter::default();
    };
    let resource_type = (!filter.resource_type.is_empty()).then(|| filter.resource_type.clone());
    if let Some(kind) = &resource_type
        && !RESOURCE_TYPES.contains(&kind.as_str())
    {
        v.add(
            "filter.resource_type",
            format!("must be one of {}", RESOURCE_TYPES.join(", ")),
        );
    }
    let resource_id = v.optional_id("filter.resource_id", &filter.resource_id);
    let action = (!filter.action.is_empty()).then(|| filter.action.clone());
    if let Some(action) = &action {
        v.text("filter.action", action, 1, MAX_ACTION_CHARS);
    }
    let mut time = |field: &str, ts: Option<&prost_types::Timestamp>| {
        let ts = ts?;
        let parsed = convert::from_timestamp(ts);
        if parsed.is_none() {
            v.add(field, "is not a valid timestamp");
        }
        parsed
    };
    let start_time = time("filter.start_time", filter.start_time.as_ref());
    let end_time = time("filter.end_time", filter.end_time.as_ref());
    if end_time.is_some() && !allow_end {
        v.add("filter.end_time", "is not allowed on a watch");
    }
    EventFilter {
        resource_type,
        resource_id,
        action,
        start_time,
        end_time,
    }
}
