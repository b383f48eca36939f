//! Model vendors' response streams come from the network, so their decoding must refuse
//! anything without panicking, and must not depend on how the bytes were cut into chunks
//! (TCP and proxies cut them anywhere: inside lines, inside UTF-8 characters).
//!
//! Input: `<vendor byte><count byte><count chunk lengths><stream bytes>`. The vendor byte
//! picks the wire format (Anthropic, OpenAI, Gemini), the count byte (mod 8) how many chunk
//! lengths follow; the rest goes through the SSE parser and the vendor's event decoder as the
//! worker feeds them (`agentplane_worker::provider::fuzzing`), once in one chunk, once cut by
//! those lengths (cycled) and once byte by byte. All three must decode alike.
#![no_main]

use agentplane_worker::provider::fuzzing::{Vendor, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [vendor, count, rest @ ..] = data else {
        return;
    };
    let vendor = Vendor::ALL[usize::from(*vendor) % Vendor::ALL.len()];
    let count = usize::from(*count % 8).min(rest.len());
    let (lengths, stream) = rest.split_at(count);
    let lengths: Vec<usize> = lengths.iter().map(|&length| usize::from(length)).collect();

    let whole = decode(vendor, stream, &[]);
    assert_eq!(
        decode(vendor, stream, &lengths),
        whole,
        "cut by {lengths:?}"
    );
    assert_eq!(decode(vendor, stream, &[1]), whole, "cut byte by byte");
});
