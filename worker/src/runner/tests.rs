//! Tests of the runner: request building, outcomes, and whole attempts against scripted
//! providers.

use super::*;
use crate::queue::{AgentSettings, TranscriptMessage};

fn task(messages: &[(&str, &str)], generation: serde_json::Value) -> ClaimedTask {
    ClaimedTask {
        tenant_id: agentplane_core::ids::TenantId::generate(),
        task_id: agentplane_core::ids::TaskId::generate(),
        agent_id: agentplane_core::ids::AgentId::generate(),
        attempt: 2,
        agent: AgentSettings {
            provider: "echo".to_owned(),
            model: "echo-large".to_owned(),
            generation,
            task_timeout: Duration::from_secs(60),
        },
        messages: messages
            .iter()
            .map(|(role, content)| TranscriptMessage {
                role: (*role).to_owned(),
                content: (*content).to_owned(),
            })
            .collect(),
        run_at: chrono::Utc::now(),
        traceparent: None,
    }
}

fn reported_failure(outcome: Outcome) -> WorkerFailure {
    match outcome {
        Outcome::Reported(worker_result::Outcome::Failure(failure)) => failure,
        _ => panic!("expected a failure"),
    }
}

#[test]
fn builds_the_request_from_the_transcript() {
    let task = task(
        &[
            ("system", "Be brief."),
            ("user", "hi"),
            ("assistant", "hello"),
            ("user", "again"),
        ],
        serde_json::json!({"max_output_tokens": 5}),
    );
    let Ok(request) = build_request(&task) else {
        panic!("valid task")
    };
    assert_eq!(request.system.as_deref(), Some("Be brief."));
    assert_eq!(request.messages.len(), 3);
    assert_eq!(request.messages[1].role, ChatRole::Assistant);
    assert_eq!(request.model, "echo-large");
    assert_eq!(request.generation.max_output_tokens, Some(5));
    assert_eq!(request.request_id, format!("{}-2-0", task.task_id));
}

#[test]
fn unknown_roles_and_bad_generation_fail_without_retry() {
    let Err(outcome) = build_request(&task(&[("tool", "x")], serde_json::json!({}))) else {
        panic!("must fail")
    };
    let failure = reported_failure(outcome);
    assert_eq!(failure.code, "invalid_task");
    assert!(!failure.retryable);

    let bad = serde_json::json!({"temperature": "hot"});
    let Err(outcome) = build_request(&task(&[("user", "x")], bad)) else {
        panic!("must fail")
    };
    assert_eq!(reported_failure(outcome).code, "invalid_agent");
}

#[test]
fn failure_messages_are_truncated_on_char_boundaries() {
    let long = "é".repeat(MAX_FAILURE_MESSAGE_BYTES);
    let failure = reported_failure(failure("provider_error", long, true));
    assert!(failure.message.len() <= MAX_FAILURE_MESSAGE_BYTES);
    assert!(failure.message.chars().all(|c| c == 'é'));
}

#[test]
fn timeouts_are_described_readably() {
    assert_eq!(describe(Duration::from_secs(600)), "600s");
    assert_eq!(describe(Duration::from_millis(1500)), "1500ms");
}

#[test]
fn nul_is_replaced_in_answers_and_failure_messages() {
    let response = ModelResponse {
        text: "a\0b".to_owned(),
        finish_reason: crate::provider::FinishReason::Stop,
        tool_calls: Vec::new(),
        model: "m".to_owned(),
        usage: crate::provider::ModelUsage::default(),
        vendor_request_id: None,
    };
    let Outcome::Reported(worker_result::Outcome::Success(success)) =
        success(response, 0, "id".to_owned())
    else {
        panic!("expected a success")
    };
    assert_eq!(success.output, "a\u{FFFD}b");
    let failed = reported_failure(failure("provider_error", "bad\0byte".to_owned(), true));
    assert_eq!(failed.message, "bad\u{FFFD}byte");
}

mod attempts {
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
                        () = cancel.cancelled() => return Err(ProviderError::Canceled),
                        sent = sink.send(piece.clone()) => {
                            sent.map_err(|_| ProviderError::Canceled)?;
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
}

#[tokio::test]
async fn a_finished_call_counts_its_tokens_and_cost_per_provider_and_model() {
    let provider = "metrics-test-provider";
    let tokens = |kind: &str| {
        METRICS
            .provider_tokens
            .with_label_values(&[provider, "metrics-test-model", kind])
            .get()
    };
    let response = ModelResponse {
        text: "hi".to_owned(),
        finish_reason: crate::provider::FinishReason::Stop,
        tool_calls: Vec::new(),
        model: "metrics-test-model-2026".to_owned(),
        usage: crate::provider::ModelUsage {
            input_tokens: 100,
            output_tokens: 12,
            cache_read_input_tokens: 40,
            cache_write_input_tokens: 10,
            reasoning_tokens: 3,
            cost_micros: 91,
            unpriced: true,
        },
        vendor_request_id: Some("req_1".to_owned()),
    };
    let first_piece = OnceLock::new();
    let result = observe_call(
        async { Ok(response) },
        provider,
        "metrics-test-model",
        "task-1-0",
        &first_piece,
    )
    .await;
    assert!(result.is_ok());
    assert_eq!(
        [
            tokens("input"),
            tokens("output"),
            tokens("cache_read"),
            tokens("cache_write"),
            tokens("reasoning")
        ],
        [100, 12, 40, 10, 3]
    );
    let labels = [provider, "metrics-test-model"];
    assert_eq!(
        METRICS
            .provider_cost_micros
            .with_label_values(&labels)
            .get(),
        91
    );
    assert_eq!(
        METRICS
            .provider_unpriced_calls
            .with_label_values(&labels)
            .get(),
        1
    );
}
