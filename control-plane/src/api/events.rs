//! EventService.

use std::time::Duration;

use agentplane_proto::v1 as pb;
use pb::event_service_server::EventService;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{ResponseStream, STREAM_BUFFER, State, convert};
use crate::domain::event::{EventFilter, EventPosition, RESOURCE_TYPES};
use crate::domain::page;
use crate::domain::validate::Violations;
use crate::error::ApiError;
use crate::fanout::Notice;
use crate::ids::TenantId;
use crate::spawn::spawn_named;

/// Longest action filter.
const MAX_ACTION_CHARS: usize = 64;
/// Events read per query while replaying.
const WATCH_BATCH: i64 = 500;
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
        let after = cursor(&mut v, "page_token", &request.page_token);
        v.finish()?;
        let Some(tenant) = tenant else {
            return Err(ApiError::invalid("workspace_id", "is required").into());
        };
        let mut tx = self.state.tenant(tenant).await?;
        let rows = tx.list_events(&filter, after, limit + 1).await?;
        let (items, next) = super::paging::split_page(rows, limit, convert::event, |row| {
            page::encode_event(row.position())
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
        let after = cursor(&mut v, "after_cursor", &request.after_cursor);
        v.finish()?;
        let Some(tenant) = tenant else {
            return Err(ApiError::invalid("workspace_id", "is required").into());
        };
        // Fail now, not in the stream, if the workspace is unknown.
        drop(self.state.tenant(tenant).await?);
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

fn cursor(v: &mut Violations, field: &str, token: &str) -> Option<EventPosition> {
    if token.is_empty() {
        return None;
    }
    let position = page::decode_event(token);
    if position.is_none() {
        v.add(field, "is not a cursor returned by this service");
    }
    position
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
