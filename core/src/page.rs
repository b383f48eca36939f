//! Opaque page tokens and cursors: base64url of a kind tag and a keyset position, so a token
//! from one list cannot be replayed against another.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

/// Where an event sits in its workspace's log: the writing transaction, then the sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventPosition {
    /// Transaction id (xid8 as a number).
    pub xid: i64,
    /// Sequence number within the log.
    pub seq: i64,
}

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

/// Encodes an event log position (used both as page token and as watch cursor).
pub fn encode_event(position: EventPosition) -> String {
    URL_SAFE_NO_PAD.encode(format!("ev:{}:{}", position.xid, position.seq))
}

/// Decodes a token made by [`encode_event`].
pub fn decode_event(token: &str) -> Option<EventPosition> {
    let text = decode(token)?;
    let mut parts = text.strip_prefix("ev:")?.splitn(2, ':');
    let xid = parts.next()?.parse::<i64>().ok()?;
    let seq = parts.next()?.parse::<i64>().ok()?;
    (xid >= 0 && seq >= 0).then_some(EventPosition { xid, seq })
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
    fn event_cursors_round_trip() {
        let position = EventPosition {
            xid: 7_000_000_123,
            seq: 42,
        };
        assert_eq!(decode_event(&encode_event(position)), Some(position));
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
            assert_eq!(decode_event(token), None, "{token}");
            assert_eq!(decode_id("tasks", token), None, "{token}");
        }
    }
}
