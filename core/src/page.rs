//! Opaque page tokens and cursors: base64url of a kind tag and a keyset position, so a token
//! from one list cannot be replayed against another.
//!
//! A token carries only what its client has already seen (an id, a place in a transcript):
//! never a position in a log shared by every workspace, such as a transaction id.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use crate::ids::TenantId;

/// Longest token accepted, well above any token this module issues.
const MAX_TOKEN_LEN: usize = 256;

/// Encodes an id-keyed position for list `kind`.
pub fn encode_id(kind: &str, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{id}"))
}

/// Decodes a token made by [`encode_id`] for the same `kind`.
pub fn decode_id(kind: &str, token: &str) -> Option<Uuid> {
    let text = decode(token)?;
    let rest = text.strip_prefix(kind)?.strip_prefix(':')?;
    Uuid::try_parse(rest).ok()
}

/// Encodes a numeric position (such as a message's place in a transcript) for list `kind`.
pub fn encode_number(kind: &str, number: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{number}"))
}

/// Decodes a token made by [`encode_number`] for the same `kind`.
pub fn decode_number(kind: &str, token: &str) -> Option<i64> {
    let text = decode(token)?;
    text.strip_prefix(kind)?
        .strip_prefix(':')?
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
}

/// Encodes the cursor of event `event` in `workspace`'s log (used both as an event's
/// `cursor` and as ListEvents' page token). It names the event and nothing else: the server
/// looks the event's place in the log up within the workspace, so a cursor of another
/// workspace's event leads nowhere.
pub fn encode_event(workspace: TenantId, event: Uuid) -> String {
    encode_id(&event_kind(workspace), event)
}

/// Decodes a cursor made by [`encode_event`] for the same workspace into the event's id.
pub fn decode_event(workspace: TenantId, token: &str) -> Option<Uuid> {
    decode_id(&event_kind(workspace), token)
}

fn event_kind(workspace: TenantId) -> String {
    format!("events/{workspace}")
}

fn decode(token: &str) -> Option<String> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_tokens_round_trip_and_are_bound_to_their_kind() {
        let id = Uuid::now_v7();
        let token = encode_id("tasks", id);
        assert_eq!(decode_id("tasks", &token), Some(id));
        assert_eq!(decode_id("agents", &token), None);
    }

    #[test]
    fn event_cursors_round_trip_within_their_workspace_only() {
        let (workspace, other) = (TenantId::generate(), TenantId::generate());
        let event = Uuid::now_v7();
        let cursor = encode_event(workspace, event);
        assert_eq!(decode_event(workspace, &cursor), Some(event));
        assert_eq!(decode_event(other, &cursor), None);
        assert_eq!(decode_id("tasks", &cursor), None);
        assert_eq!(
            decode_event(workspace, &encode_id(&format!("tasks/{workspace}"), event)),
            None
        );
    }

    #[test]
    fn garbage_tokens_are_rejected() {
        for token in [
            "",
            "!!!",
            "ev:1:2",
            &"a".repeat(1000),
            &URL_SAFE_NO_PAD.encode("ev:-1:2"),
        ] {
            assert_eq!(decode_event(TenantId::generate(), token), None, "{token}");
            assert_eq!(decode_id("tasks", token), None, "{token}");
        }
    }
}
