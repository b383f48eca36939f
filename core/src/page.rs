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

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Any kind at all (colons, control characters, non-ASCII), short enough that its
        /// tokens stay within `MAX_TOKEN_LEN`.
        fn any_kind() -> impl Strategy<Value = String> {
            proptest::collection::vec(any::<char>(), 0..32).prop_map(String::from_iter)
        }

        /// Kinds as the API builds them (`workspaces`, `tasks/<workspace id>`, ...): never a
        /// `:`, the separator. Binding a token to its kind relies on that: `encode_id`
        /// for kind `x:urn:uuid` decodes for kind `x`, since `urn:uuid:<id>` parses as a UUID.
        fn api_kind() -> impl Strategy<Value = String> {
            "[a-z0-9/-]{0,48}"
        }

        fn any_uuid() -> impl Strategy<Value = Uuid> {
            any::<u128>().prop_map(Uuid::from_u128)
        }

        /// Strings a client might send: arbitrary text, base64 of arbitrary bytes, and base64
        /// of a kind, a colon and arbitrary text (which reaches the number and UUID parsers).
        fn any_token() -> impl Strategy<Value = String> {
            prop_oneof![
                proptest::collection::vec(any::<char>(), 0..300).prop_map(String::from_iter),
                proptest::collection::vec(any::<u8>(), 0..220)
                    .prop_map(|bytes| URL_SAFE_NO_PAD.encode(bytes)),
                (api_kind(), "[-0-9a-fA-F:{}urn ]{0,60}")
                    .prop_map(|(kind, rest)| URL_SAFE_NO_PAD.encode(format!("{kind}:{rest}"))),
            ]
        }

        proptest! {
            #[test]
            fn id_tokens_round_trip_for_any_kind(kind in any_kind(), id in any_uuid()) {
                let token = encode_id(&kind, id);
                prop_assert!(token.len() <= MAX_TOKEN_LEN);
                prop_assert_eq!(decode_id(&kind, &token), Some(id));
            }

            #[test]
            fn number_tokens_round_trip_for_any_kind_and_reject_negatives(
                kind in any_kind(),
                number in any::<i64>(),
            ) {
                let token = encode_number(&kind, number);
                prop_assert!(token.len() <= MAX_TOKEN_LEN);
                let expected = (number >= 0).then_some(number);
                prop_assert_eq!(decode_number(&kind, &token), expected);
            }

            #[test]
            fn decoding_any_string_never_panics(
                kind in any_kind(),
                token in any_token(),
                workspace in any_uuid(),
            ) {
                let _ = decode_id(&kind, &token);
                let _ = decode_number(&kind, &token);
                let _ = decode_event(TenantId(workspace), &token);
            }

            #[test]
            fn an_event_cursor_decodes_for_its_workspace_only(
                workspace in any_uuid(),
                other in any_uuid(),
                event in any_uuid(),
            ) {
                prop_assume!(workspace != other);
                let cursor = encode_event(TenantId(workspace), event);
                prop_assert!(cursor.len() <= MAX_TOKEN_LEN);
                prop_assert_eq!(decode_event(TenantId(workspace), &cursor), Some(event));
                prop_assert_eq!(decode_event(TenantId(other), &cursor), None);
            }

            #[test]
            fn a_token_for_one_kind_never_decodes_for_another(
                kind in api_kind(),
                other in api_kind(),
                id in any_uuid(),
                number in 0..=i64::MAX,
            ) {
                prop_assume!(kind != other);
                let id_token = encode_id(&kind, id);
                let number_token = encode_number(&kind, number);
                prop_assert_eq!(decode_id(&other, &id_token), None);
                prop_assert_eq!(decode_number(&other, &number_token), None);
                // Nor does a token of one shape decode as the other, for any kind.
                prop_assert_eq!(decode_number(&other, &id_token), None);
                prop_assert_eq!(decode_number(&kind, &id_token), None);
                prop_assert_eq!(decode_id(&other, &number_token), None);
                prop_assert_eq!(decode_id(&kind, &number_token), None);
            }
        }
    }
}
