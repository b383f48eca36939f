//! The stream decoding of the vendor adapters without the network, for the `sse` fuzz target
//! (`fuzz/fuzz_targets/sse.rs`) and the decoders' property tests: bytes, cut into chunks,
//! through the SSE parser (`sse-stream`) and a vendor's event decoder exactly as the engine
//! feeds them. Not an API: nothing else should use it.

use std::convert::Infallible;

use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use sse_stream::SseByteStream;

use super::http::{Finished, StreamDecoder, WireFormat as _, stream_error};
use super::{FinishReason, ModelUsage, ToolCall};

/// The request id decoders make tool call ids from.
const REQUEST_ID: &str = "fuzz-task-1";

/// A wire format whose streams can be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// Anthropic Messages.
    Anthropic,
    /// OpenAI Chat Completions (and the compatible servers).
    OpenAi,
    /// Gemini `streamGenerateContent?alt=sse`.
    Gemini,
}

impl Vendor {
    /// Every vendor.
    pub const ALL: [Vendor; 3] = [Vendor::Anthropic, Vendor::OpenAi, Vendor::Gemini];

    fn decoder(self) -> Box<dyn StreamDecoder> {
        match self {
            Vendor::Anthropic => super::anthropic::Anthropic.decoder(REQUEST_ID),
            Vendor::OpenAi => super::openai::OpenAi::official().decoder(REQUEST_ID),
            Vendor::Gemini => super::gemini::Gemini.decoder(REQUEST_ID),
        }
    }
}

/// What a stream said, in comparable form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoding {
    /// The text the engine would have streamed.
    pub text: String,
    /// The usage reported when the stream ended or failed (the spend of a failure).
    pub usage: Option<ModelUsage>,
    /// How it ended: the answer's parts, or the failure's code and message.
    pub outcome: Result<Answer, (String, String)>,
}

/// The parts of a complete stream beyond its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// The tools called.
    pub tool_calls: Vec<ToolCall>,
    /// The model that answered.
    pub model: Option<String>,
    /// The vendor's response id.
    pub response_id: Option<String>,
}

impl From<Finished> for Answer {
    fn from(finished: Finished) -> Self {
        Self {
            finish_reason: finished.finish_reason,
            tool_calls: finished.tool_calls,
            model: finished.model,
            response_id: finished.response_id,
        }
    }
}

/// Decodes `bytes` as `vendor`'s stream, delivered in chunks of the given lengths (cycled;
/// a zero length counts as one; none means one chunk), as the engine does.
pub fn decode(vendor: Vendor, bytes: &[u8], chunk_lengths: &[usize]) -> Decoding {
    let mut chunks: Vec<Result<Bytes, Infallible>> = Vec::new();
    let mut rest = bytes;
    let mut lengths = chunk_lengths.iter().cycle();
    while !rest.is_empty() {
        let length = lengths
            .next()
            .map_or(rest.len(), |l| (*l).clamp(1, rest.len()));
        let (chunk, tail) = rest.split_at(length);
        chunks.push(Ok(Bytes::copy_from_slice(chunk)));
        rest = tail;
    }
    let mut events = std::pin::pin!(SseByteStream::new(futures::stream::iter(chunks)));
    let mut decoder = vendor.decoder();
    let mut text = String::new();
    let failure = loop {
        // An in-memory stream is always ready.
        let Some(next) = events.next().now_or_never().flatten() else {
            break None;
        };
        let event = match next {
            Err(error) => break Some(stream_error(&error)),
            Ok(event) => event,
        };
        if event.data.is_none() {
            continue;
        }
        match decoder.event(&event) {
            Err(error) => break Some(error),
            Ok(decoded) => {
                text.push_str(decoded.text.as_deref().unwrap_or_default());
                if decoded.done {
                    break None;
                }
            }
        }
    };
    let usage = decoder.usage();
    let outcome = match failure {
        Some(error) => Err(error),
        None => decoder.finish().map(Answer::from),
    };
    Decoding {
        text,
        usage,
        outcome: outcome.map_err(|error| (error.code().to_owned(), error.to_string())),
    }
}
