//! Whole attempts against scripted providers, with the link replaced by a queue.

use tokio::sync::Semaphore;
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::lease::LeaseKey;
use crate::provider::{
    FinishReason, ModelFuture, ModelProvider, ModelUsage, OutputSink, ProviderError,
};
use crate::spawn::spawn_named;

/// What a scripted provider does after streaming its pieces.
#[derive(Debug, Clone, Copy)]
enum Then {
    /// Answers with the pieces' concatenation.
    Answer,
    /// Panics.
    Panic,
    /// Never ends.
    Hang,
}

/// Streams fixed pieces, then does what `then` says.
struct Scripted {
    pieces: Vec<String>,
    then: Then,
}

impl ModelProvider for Scripted {
    fn generate(
        &self,
        request: ModelRequest,
        sink: OutputSink,
        cancel: CancellationToken,
    ) -> ModelFuture<'_> {
        Box::pin(async move {
            for piece in &self.pieces {
                tokio::select! {
                    () = cancel.cancelled() => return Err(ProviderError::Canceled { spent: None }),
                    sent = sink.send(piece.clone()) => {
                        sent.map_err(|_| ProviderError::Canceled { spent: None })?;
                    }
                }
            }
            match self.then {
                Then::Answer => Ok(ModelResponse {
                    text: self.pieces.concat(),
                    finish_reason: FinishReason::Stop,
                    tool_calls: Vec::new(),
                    model: request.model,
                    usage: ModelUsage::default(),
                    vendor_request_id: None,
                }),
                Then::Panic => panic!("the scripted provider has a bug"),
                Then::Hang => std::future::pending().await,
            }
        })
    }
}

/// How a scripted attempt went.
struct Run {
    /// Everything the runner told the link, in order.
    messages: Vec<Outbound>,
    slots: Arc<Semaphore>,
    joined: Result<(), JoinError>,
}

impl Run {
    /// Whether the attempt's capacity slot is free once the link (here, the collected
    /// messages) lets go of the attempt; it must be held until then.
    fn slot_frees_only_when_the_link_lets_go(self) -> bool {
        let held_while_unacknowledged = self.slots.available_permits() == 0;
        let slots = Arc::clone(&self.slots);
        drop(self);
        held_while_unacknowledged && slots.available_permits() == 1
    }

    fn ending(&self) -> &Ending {
        match self.messages.last() {
            Some(Outbound::Finish { ending, .. }) => ending,
            other => panic!("the last message is not an ending: {other:?}"),
        }
    }

    fn outputs(&self) -> Vec<&str> {
        self.messages
            .iter()
            .filter_map(|message| match message {
                Outbound::Output { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// Runs one attempt with `provider`; aborts its task after `abort_after` if given.
async fn run(provider: Scripted, abort_after: Option<Duration>) -> Run {
    let (link, mut inbox) = LinkHandle::for_tests(1024);
    let mut providers = Providers::default();
    providers.register(Provider::Echo, Arc::new(provider));
    let context = Arc::new(RunContext { link, providers });
    let claimed = task(&[("user", "hi")], serde_json::json!({}));
    let lease = LeaseKey {
        tenant_id: claimed.tenant_id,
        task_id: claimed.task_id,
        attempt: claimed.attempt,
    };
    let shutdown = CancellationToken::new();
    let slots = Arc::new(Semaphore::new(1));
    let permit = Arc::clone(&slots)
        .acquire_owned()
        .await
        .expect("a free slot");
    let attempt =
        Arc::new(Attempt::new(lease, std::time::Instant::now(), &shutdown).holding(permit));
    let handle = spawn_named("attempt", run_attempt(context, claimed, attempt));
    if let Some(wait) = abort_after {
        tokio::time::sleep(wait).await;
        handle.abort();
    }
    let joined = handle.await;
    let mut messages = Vec::new();
    while let Some(message) = inbox.recv().await {
        messages.push(message);
    }
    Run {
        messages,
        slots,
        joined,
    }
}

#[tokio::test]
async fn a_panicking_provider_abandons_its_lease_and_frees_the_slot() {
    let run = run(
        Scripted {
            pieces: vec!["partial".to_owned()],
            then: Then::Panic,
        },
        None,
    )
    .await;
    assert!(run.joined.as_ref().is_err_and(JoinError::is_panic));
    assert!(
        matches!(run.ending(), Ending::Abandon),
        "{:?}",
        run.ending()
    );
    assert!(run.slot_frees_only_when_the_link_lets_go());
}

#[tokio::test]
async fn a_dropped_attempt_abandons_its_lease() {
    let run = run(
        Scripted {
            pieces: Vec::new(),
            then: Then::Hang,
        },
        Some(Duration::from_millis(50)),
    )
    .await;
    assert!(run.joined.as_ref().is_err_and(JoinError::is_cancelled));
    assert!(
        matches!(run.ending(), Ending::Abandon),
        "{:?}",
        run.ending()
    );
    assert!(run.slot_frees_only_when_the_link_lets_go());
}

#[tokio::test]
async fn streaming_past_the_output_limit_fails_without_retry() {
    let run = run(
        Scripted {
            pieces: vec!["x".repeat(64 * 1024); 20],
            then: Then::Answer,
        },
        None,
    )
    .await;
    assert!(run.joined.is_ok());
    let Ending::Result(worker_result::Outcome::Failure(failure)) = run.ending() else {
        panic!("expected a failure: {:?}", run.ending());
    };
    assert_eq!(failure.code, "output_too_large");
    assert!(!failure.retryable);
    let streamed: usize = run.outputs().iter().map(|text| text.len()).sum();
    assert!(streamed <= MAX_OUTPUT_BYTES, "{streamed}");
}

#[tokio::test]
async fn nul_in_streamed_output_is_replaced() {
    let run = run(
        Scripted {
            pieces: vec!["a\0".to_owned(), "b".to_owned()],
            then: Then::Answer,
        },
        None,
    )
    .await;
    assert_eq!(run.outputs().concat(), "a\u{FFFD}b");
    let Ending::Result(worker_result::Outcome::Success(success)) = run.ending() else {
        panic!("expected a success: {:?}", run.ending());
    };
    assert_eq!(success.output, "a\u{FFFD}b");
}
