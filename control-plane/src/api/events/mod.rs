//! EventService: `parse` turns requests into domain values, `watch` follows the log.

mod parse;
mod watch;

use agentplane_proto::v1 as pb;
use pb::event_service_server::EventService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{ResponseStream, STREAM_BUFFER, State, convert};
use crate::auth::caller;
use crate::domain::event::{EventPosition, EventQuery, EventWatch};
use crate::domain::page;
use crate::error::ApiError;
use crate::fanout::Topic;
use crate::spawn::spawn_named;
use crate::store::TenantTx;

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
        let caller = caller(&request)?;
        let query: EventQuery = request.into_inner().try_into()?;
        caller.authorize(&self.state.store, query.tenant).await?;
        let mut tx = self.state.store.tenant(query.tenant).await?;
        let after = position(&mut tx, &PAGE_TOKEN, query.after).await?;
        let (filter, limit) = (&query.filter, query.limit);
        let rows = tx.list_events(filter, after, limit + 1).await?.rows;
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
        let caller = caller(&request)?;
        let request: EventWatch = request.into_inner().try_into()?;
        caller.authorize(&self.state.store, request.tenant).await?;
        let slot = self.state.streams.open()?;
        // Fail now, not in the stream, if the workspace or the cursor's event is unknown.
        let mut tx = self.state.store.tenant(request.tenant).await?;
        let after = position(&mut tx, &AFTER_CURSOR, request.after).await?;
        drop(tx);
        let notices = self.state.fanout.subscribe(Topic::Events(request.tenant));
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let follow = watch::follow(self.state.clone(), request, after, notices, sender);
        spawn_named("watch_events", async move {
            follow.await;
            drop(slot);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// A field that names a place in the event log, and what it says when it names none.
pub(super) struct CursorField {
    pub(super) name: &'static str,
    pub(super) refusal: &'static str,
}

pub(super) const PAGE_TOKEN: CursorField = CursorField {
    name: "page_token",
    refusal: "is not a token returned by this list method for this workspace",
};

pub(super) const AFTER_CURSOR: CursorField = CursorField {
    name: "after_cursor",
    refusal: "is not the cursor of an event of this workspace",
};

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
