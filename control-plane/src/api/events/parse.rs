//! Parsing of EventService requests into domain values, with every field violation
//! collected at once.

use agentplane_proto::v1 as pb;
use uuid::Uuid;

use super::{AFTER_CURSOR, CursorField, PAGE_TOKEN};
use crate::api::convert;
use crate::domain::event::{EventFilter, EventQuery, EventWatch, RESOURCE_TYPES};
use crate::domain::page;
use crate::domain::validate::Violations;
use crate::error::ApiError;
use crate::ids::TenantId;

/// Longest action filter.
const MAX_ACTION_CHARS: usize = 64;

impl TryFrom<pb::ListEventsRequest> for EventQuery {
    type Error = ApiError;

    fn try_from(request: pb::ListEventsRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let tenant: Option<TenantId> = v.id("workspace_id", &request.workspace_id);
        let filter = event_filter(&mut v, request.filter.as_ref(), true);
        let limit = v.page_size("page_size", request.page_size);
        let after = cursor(&mut v, &PAGE_TOKEN, tenant, &request.page_token);
        let tenant = v.finish_with(tenant)?;
        Ok(EventQuery {
            tenant,
            filter,
            limit,
            after,
        })
    }
}

impl TryFrom<pb::WatchEventsRequest> for EventWatch {
    type Error = ApiError;

    fn try_from(request: pb::WatchEventsRequest) -> Result<Self, ApiError> {
        let mut v = Violations::new();
        let tenant: Option<TenantId> = v.id("workspace_id", &request.workspace_id);
        let filter = event_filter(&mut v, request.filter.as_ref(), false);
        let after = cursor(&mut v, &AFTER_CURSOR, tenant, &request.after_cursor);
        let tenant = v.finish_with(tenant)?;
        Ok(EventWatch {
            tenant,
            filter,
            after,
        })
    }
}

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
