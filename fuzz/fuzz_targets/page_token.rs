//! Page tokens come straight from clients (`page_token`, `after_cursor`), so their decoders
//! must refuse anything without panicking.
//!
//! Input: `<kind>\n<token>`; without a newline the whole input is the token and the kind is
//! empty. The kind, when it parses as a UUID, is also the workspace an event cursor is
//! decoded for (else the nil UUID). The token is decoded as sent, and also base64-encoded
//! first, so that the fuzzer reaches the parsers behind the base64 layer directly. Its bytes
//! also make an id and a number that must round-trip through their encoders.
#![no_main]

use agentplane_core::ids::TenantId;
use agentplane_core::page::{
    decode_event, decode_id, decode_number, encode_event, encode_id, encode_number,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

/// Kinds the API builds are under 64 bytes; longer ones make tokens past the length limit.
const MAX_ROUND_TRIP_KIND: usize = 64;

fuzz_target!(|data: &[u8]| {
    let (kind, token) = match data.iter().position(|&b| b == b'\n') {
        Some(split) => (&data[..split], &data[split + 1..]),
        None => (&data[..0], data),
    };
    let kind = String::from_utf8_lossy(kind);
    let workspace = TenantId(Uuid::try_parse(&kind).unwrap_or_default());

    // Refusing is fine; panicking is not.
    for token in [
        String::from_utf8_lossy(token).into_owned(),
        URL_SAFE_NO_PAD.encode(token),
    ] {
        let _ = decode_id(&kind, &token);
        let _ = decode_number(&kind, &token);
        let _ = decode_event(workspace, &token);
    }

    if kind.len() <= MAX_ROUND_TRIP_KIND {
        let mut bytes = [0u8; 16];
        for (slot, byte) in bytes.iter_mut().zip(token) {
            *slot = *byte;
        }
        let id = Uuid::from_bytes(bytes);
        assert_eq!(decode_id(&kind, &encode_id(&kind, id)), Some(id));
        assert_eq!(
            decode_event(workspace, &encode_event(workspace, id)),
            Some(id)
        );

        let number = i64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        let expected = (number >= 0).then_some(number);
        assert_eq!(
            decode_number(&kind, &encode_number(&kind, number)),
            expected
        );
    }
});
