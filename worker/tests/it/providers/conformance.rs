//! The conformance suite every vendor adapter passes against its fake server: the same
//! scenarios, each vendor speaking its own wire format (`vendors.rs`).

use std::sync::Arc;
use std::time::Duration;

use agentplane_worker::provider::{
    ChatMessage, ChatRole, FinishReason, Generation, ModelProvider, ModelRequest, ModelResponse,
    ProviderError, Providers,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fake::{FakeVendor, Reply, Step, split, whole};
use super::vendors::{MODEL, Vendor};

/// The key configured for the vendor; long enough to be recognisable anywhere it leaks.
pub(super) const KEY: &str = "sk-test-0123456789abcdef-SECRET-KEY";
/// The request id the worker derives for the call.
pub(super) const REQUEST_ID: &str = "01920000-0000-7000-8000-000000000001-1-0";
/// The answer, in pieces (with characters of several bytes, so split frames cut them).
pub(super) const PIECES: &[&str] = &["Hel", "lo, ", "wörld", " ✓"];

pub(super) struct Harness {
    pub(super) fake: FakeVendor,
    pub(super) provider: Arc<dyn ModelProvider>,
}

pub(super) async fn harness(vendor: Vendor, replies: Vec<Reply>) -> Harness {
    harness_with(vendor, replies, |_| {}).await
}

pub(super) async fn harness_with(
    vendor: Vendor,
    replies: Vec<Reply>,
    adjust: impl FnOnce(&mut agentplane_worker::provider::ProviderSettings),
) -> Harness {
    let fake = FakeVendor::start(replies).await;
    let mut settings = vendor.settings(&fake.url(), KEY);
    adjust(&mut settings);
    let providers = Providers::from_settings(Duration::ZERO, &settings).unwrap();
    let provider = providers.get(vendor.provider()).expect("registered");
    Harness { fake, provider }
}

pub(super) fn request(messages: &[(ChatRole, &str)]) -> ModelRequest {
    ModelRequest {
        request_id: REQUEST_ID.to_owned(),
        model: MODEL.to_owned(),
        system: Some("Be brief.".to_owned()),
        messages: messages
            .iter()
            .map(|(role, content)| ChatMessage::text(*role, (*content).to_owned()))
            .collect(),
        tools: Vec::new(),
        generation: Generation {
            temperature: Some(0.3),
            max_output_tokens: Some(256),
            ..Generation::default()
        },
        deadline: None,
    }
}

fn question() -> ModelRequest {
    request(&[(ChatRole::User, "Say hello.")])
}

impl Harness {
    /// Runs one call to its end; the pieces it streamed and its result.
    pub(super) async fn call(
        &self,
        request: ModelRequest,
    ) -> (String, Result<ModelResponse, ProviderError>) {
        let (sink, mut pieces) = mpsc::channel(1024);
        let result = self
            .provider
            .generate(request, sink, CancellationToken::new())
            .await;
        let mut streamed = String::new();
        while let Some(piece) = pieces.recv().await {
            streamed.push_str(&piece);
        }
        (streamed, result)
    }
}

pub(super) fn stream(vendor: Vendor, steps: Vec<Step>) -> Reply {
    let headers = match vendor.request_id_header() {
        Some(name) => vec![(name, "req_fake_123".to_owned())],
        None => vec![],
    };
    Reply::Stream { headers, steps }
}

pub(super) fn status(
    vendor: Vendor,
    code: u16,
    headers: Vec<(&'static str, String)>,
    message: &str,
) -> Reply {
    Reply::Status {
        status: code,
        headers,
        body: vendor.error_body(code, message),
    }
}

fn assert_no_secret(error: &ProviderError) {
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(!text.contains(KEY), "the key leaked: {text}");
        assert!(
            !text.contains("0123456789abcdef"),
            "part of the key leaked: {text}"
        );
    }
}

pub(super) async fn streams_an_answer_with_cached_usage_and_cost(vendor: Vendor) {
    let h = harness(
        vendor,
        vec![stream(vendor, split(&vendor.answer(PIECES), 7))],
    )
    .await;
    let (streamed, result) = h.call(question()).await;
    let response = result.expect("an answer");
    assert_eq!(streamed, "Hello, wörld ✓");
    assert_eq!(response.text, streamed, "the pieces add up to the answer");
    assert_eq!(response.finish_reason, FinishReason::Stop);
    assert_eq!(response.model, "test-model-2026", "the model that answered");
    assert_eq!(response.usage, vendor.expected_usage());
    let expected_id = match vendor.request_id_header() {
        Some(_) => "req_fake_123",
        None => "resp-fake",
    };
    assert_eq!(response.vendor_request_id.as_deref(), Some(expected_id));
    assert_eq!(h.fake.request_count(), 1);
}

pub(super) async fn sends_the_conversation_the_key_and_the_request_id(vendor: Vendor) {
    let h = harness(vendor, vec![stream(vendor, whole(&vendor.answer(&["8"])))]).await;
    let conversation = request(&[
        (ChatRole::User, "What is 2+2?"),
        (ChatRole::Assistant, "4"),
        (ChatRole::User, "And 4+4?"),
    ]);
    let (_, result) = h.call(conversation).await;
    assert_eq!(result.expect("an answer").text, "8");
    let requests = h.fake.requests();
    let sent = &requests[0];
    assert_eq!(sent.path, vendor.path());
    assert_eq!(
        vendor.conversation(&sent.body),
        [
            ("system", "Be brief."),
            ("user", "What is 2+2?"),
            ("assistant", "4"),
            ("user", "And 4+4?")
        ]
        .map(|(role, text)| (role.to_owned(), text.to_owned()))
    );
    assert_eq!(vendor.sent_key(sent).as_deref(), Some(KEY));
    assert!(!sent.path.contains(KEY), "the key never travels in the url");
    assert_eq!(sent.header("idempotency-key"), Some(REQUEST_ID));
    if matches!(vendor, Vendor::OpenAi | Vendor::OpenAiCompatible) {
        assert_eq!(sent.header("x-client-request-id"), Some(REQUEST_ID));
        assert_eq!(sent.body["stream_options"]["include_usage"], true);
    }
    if vendor == Vendor::Anthropic {
        assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    }
    assert_eq!(sent.header("accept"), Some("text/event-stream"));
}

pub(super) async fn waits_for_retry_after_then_succeeds(vendor: Vendor) {
    let h = harness(
        vendor,
        vec![
            status(
                vendor,
                429,
                vec![("retry-after", "1".to_owned())],
                "rate limited",
            ),
            stream(vendor, whole(&vendor.answer(PIECES))),
        ],
    )
    .await;
    let (streamed, result) = h.call(question()).await;
    assert_eq!(result.expect("an answer after the retry").text, streamed);
    assert_eq!(h.fake.request_count(), 2);

    // A wait longer than the policy's max_retry_after (5 s here) is not waited for in
    // process: the attempt fails at once, retryable, carrying the vendor's wait.
    let h = harness(
        vendor,
        vec![status(
            vendor,
            429,
            vec![("retry-after", "3600".to_owned())],
            "slow down",
        )],
    )
    .await;
    let (_, result) = h.call(question()).await;
    let error = result.expect_err("rate limited");
    assert_eq!(error.code(), "provider_rate_limited");
    assert_eq!(error.retry_after(), Some(Duration::from_secs(3600)));
    assert_eq!(h.fake.request_count(), 1);
}

pub(super) async fn an_overload_inside_a_200_stream_is_retried(vendor: Vendor) {
    let h = harness(
        vendor,
        vec![
            stream(vendor, whole(&vendor.overloaded_in_stream())),
            stream(vendor, whole(&vendor.answer(PIECES))),
        ],
    )
    .await;
    let (streamed, result) = h.call(question()).await;
    let response = result.expect("the retry answers");
    assert_eq!(
        streamed, "Hello, wörld ✓",
        "only the real answer was streamed"
    );
    assert_eq!(response.text, streamed);
    assert_eq!(h.fake.request_count(), 2);

    // Without retries the error event itself is the failure, never an (empty) answer.
    let h = harness_with(
        vendor,
        vec![stream(vendor, whole(&vendor.overloaded_in_stream()))],
        |settings| settings.http.retry.max_retries = 0,
    )
    .await;
    let (_, result) = h.call(question()).await;
    let error = result.expect_err("the overload is a failure");
    let expected = match vendor {
        Vendor::Anthropic | Vendor::Gemini => "provider_overloaded",
        Vendor::OpenAi | Vendor::OpenAiCompatible => "provider_server_error",
    };
    assert_eq!(error.code(), expected, "{error}");
    assert!(error.is_retryable());
}

pub(super) async fn server_errors_exhaust_the_retries(vendor: Vendor) {
    let h = harness(vendor, vec![status(vendor, 500, vec![], "internal error")]).await;
    let (streamed, result) = h.call(question()).await;
    let error = result.expect_err("every try fails");
    assert!(error.is_retryable(), "{error}");
    assert_eq!(error.code(), "provider_server_error");
    assert_eq!(streamed, "");
    assert_eq!(h.fake.request_count(), 3, "the first try and two retries");
}

pub(super) async fn a_refused_key_fails_at_once_without_leaking_it(vendor: Vendor) {
    let h = harness(
        vendor,
        vec![status(
            vendor,
            401,
            vec![],
            &format!("Incorrect API key provided: {KEY}"),
        )],
    )
    .await;
    let (_, result) = h.call(question()).await;
    let error = result.expect_err("refused");
    assert!(!error.is_retryable());
    assert_eq!(error.code(), "provider_authentication_failed");
    assert_eq!(h.fake.request_count(), 1, "no retry");
    assert_no_secret(&error);
    let settings = vendor.settings(&h.fake.url(), KEY);
    let printed = format!(
        "{settings:?} {:?}",
        Providers::from_settings(Duration::ZERO, &settings)
    );
    assert!(!printed.contains(KEY), "{printed}");
}

/// A log sink for one test's thread.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(super) async fn the_key_never_reaches_the_logs(vendor: Vendor) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // tracing caches each callsite's interest process-wide, and while at most one dispatcher
    // is registered it computes it against the registering thread's default: a parallel test
    // without a subscriber that reaches the engine's `warn!` first pins it to "never" (seen
    // here as a missing "retrying" line). A second live dispatcher makes tracing ask every
    // registered one, this test's included.
    let _anchor = tracing::Dispatch::new(tracing_subscriber::registry());
    let _logging = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    let echoed = format!("your key {KEY} is rate limited");
    let h = harness(
        vendor,
        vec![
            status(vendor, 429, vec![("retry-after", "0".to_owned())], &echoed),
            status(vendor, 503, vec![], &echoed),
            status(vendor, 401, vec![], &echoed),
        ],
    )
    .await;
    let (_, result) = h.call(question()).await;
    assert_no_secret(&result.expect_err("refused in the end"));
    assert_eq!(h.fake.request_count(), 3);
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("retrying"), "the retries were logged: {logs}");
    assert!(!logs.contains(KEY), "the key leaked into the logs: {logs}");
    assert!(
        !logs.contains("0123456789abcdef"),
        "part of the key leaked: {logs}"
    );
}

pub(super) async fn a_bad_request_fails_at_once(vendor: Vendor) {
    let h = harness(
        vendor,
        vec![status(vendor, 400, vec![], "max_tokens: too large")],
    )
    .await;
    let (_, result) = h.call(question()).await;
    let error = result.expect_err("refused");
    assert!(!error.is_retryable());
    assert_eq!(error.code(), "provider_invalid_request");
    assert!(
        error.to_string().contains("max_tokens: too large"),
        "{error}"
    );
    assert_eq!(h.fake.request_count(), 1);
}

pub(super) async fn a_malformed_event_is_a_clean_retryable_error(vendor: Vendor) {
    let garbage = "event: message_start\ndata: {\"type\": \"message_start\", \"message\": \n\n";
    let h = harness(vendor, vec![stream(vendor, whole(&[garbage.to_owned()]))]).await;
    let (streamed, result) = h.call(question()).await;
    let error = result.expect_err("malformed");
    assert_eq!(error.code(), "provider_malformed_stream", "{error}");
    assert!(error.is_retryable());
    assert_eq!(streamed, "");
    assert_eq!(
        h.fake.request_count(),
        3,
        "retried like any transient failure"
    );
}

pub(super) async fn a_truncated_stream_fails_after_its_text_without_a_retry(vendor: Vendor) {
    let h = harness(
        vendor,
        vec![stream(vendor, whole(&vendor.truncated(PIECES)))],
    )
    .await;
    let (streamed, result) = h.call(question()).await;
    let error = result.expect_err("truncated");
    assert_eq!(error.code(), "provider_stream_truncated", "{error}");
    assert!(error.is_retryable(), "the queue retries the task");
    assert!(!streamed.is_empty());
    assert_eq!(
        h.fake.request_count(),
        1,
        "text was streamed, so a retry in process would repeat it"
    );
}

pub(super) async fn a_broken_connection_is_retried(vendor: Vendor) {
    let h = harness(
        vendor,
        vec![
            stream(vendor, vec![Step::Reset]),
            stream(vendor, whole(&vendor.answer(PIECES))),
        ],
    )
    .await;
    let (streamed, result) = h.call(question()).await;
    assert_eq!(result.expect("the retry answers").text, streamed);
    assert_eq!(h.fake.request_count(), 2);
}

pub(super) async fn a_stalled_stream_hits_the_stall_timeout(vendor: Vendor) {
    let mut steps = whole(&vendor.answer(PIECES)[..2]);
    steps.push(Step::Hang);
    let h = harness_with(vendor, vec![stream(vendor, steps)], |settings| {
        settings.http.stall_timeout = Duration::from_millis(300);
    })
    .await;
    let (_, result) = h.call(question()).await;
    let error = result.expect_err("stalled");
    assert_eq!(error.code(), "provider_stalled", "{error}");
    assert!(error.is_retryable());
    h.fake.wait_closed().await;
}

pub(super) async fn the_attempt_deadline_bounds_the_call(vendor: Vendor) {
    let h = harness(vendor, vec![stream(vendor, vec![Step::Hang])]).await;
    let mut request = question();
    request.deadline = Some(Instant::now() + Duration::from_millis(300));
    let (_, result) = h.call(request).await;
    let error = result.expect_err("out of time");
    assert_eq!(error.code(), "provider_timeout", "{error}");
    assert_eq!(h.fake.request_count(), 1, "no retry past the deadline");
    h.fake.wait_closed().await;
}

pub(super) async fn cancellation_mid_stream_closes_the_connection(vendor: Vendor) {
    let mut steps = whole(&vendor.answer(PIECES)[..2]);
    if vendor == Vendor::Anthropic {
        // Anthropic's first text arrives in the fourth event.
        steps = whole(&vendor.answer(PIECES)[..4]);
    }
    steps.push(Step::Hang);
    let h = harness(vendor, vec![stream(vendor, steps)]).await;
    let (sink, mut pieces) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let call = h.provider.generate(question(), sink, cancel.clone());
    let canceler = async {
        assert_eq!(pieces.recv().await.as_deref(), Some("Hel"));
        cancel.cancel();
    };
    let (result, ()) = tokio::join!(call, canceler);
    assert!(
        matches!(result, Err(ProviderError::Canceled { .. })),
        "{result:?}"
    );
    h.fake.wait_closed().await;
    assert_eq!(h.fake.request_count(), 1);
}

/// The request timeout is the engine's, the same for every vendor: each try gets its own.
#[tokio::test]
async fn the_request_timeout_bounds_each_try() {
    let vendor = Vendor::OpenAi;
    let mut steps = whole(&vendor.answer(PIECES)[..1]);
    steps.push(Step::Hang);
    let h = harness_with(vendor, vec![stream(vendor, steps)], |settings| {
        settings.http.request_timeout = Duration::from_millis(300);
    })
    .await;
    let (streamed, result) = h.call(question()).await;
    let error = result.expect_err("every try runs out of time");
    assert_eq!(error.code(), "provider_timeout", "{error}");
    assert!(error.is_retryable());
    assert_eq!(streamed, "", "the role chunk carries no text");
    assert_eq!(
        h.fake.request_count(),
        3,
        "each try timed out, then was retried"
    );
}

/// Every scenario, as one test per vendor.
macro_rules! conformance {
    ($($vendor:ident => $kind:expr),+ $(,)?) => {$(
        mod $vendor {
            use super::*;

            #[tokio::test]
            async fn streams_an_answer_with_cached_usage_and_cost() {
                super::streams_an_answer_with_cached_usage_and_cost($kind).await;
            }

            #[tokio::test]
            async fn sends_the_conversation_the_key_and_the_request_id() {
                super::sends_the_conversation_the_key_and_the_request_id($kind).await;
            }

            #[tokio::test]
            async fn waits_for_retry_after_then_succeeds() {
                super::waits_for_retry_after_then_succeeds($kind).await;
            }

            #[tokio::test]
            async fn an_overload_inside_a_200_stream_is_retried() {
                super::an_overload_inside_a_200_stream_is_retried($kind).await;
            }

            #[tokio::test]
            async fn server_errors_exhaust_the_retries() {
                super::server_errors_exhaust_the_retries($kind).await;
            }

            #[tokio::test]
            async fn a_refused_key_fails_at_once_without_leaking_it() {
                super::a_refused_key_fails_at_once_without_leaking_it($kind).await;
            }

            #[tokio::test]
            async fn the_key_never_reaches_the_logs() {
                super::the_key_never_reaches_the_logs($kind).await;
            }

            #[tokio::test]
            async fn a_bad_request_fails_at_once() {
                super::a_bad_request_fails_at_once($kind).await;
            }

            #[tokio::test]
            async fn a_malformed_event_is_a_clean_retryable_error() {
                super::a_malformed_event_is_a_clean_retryable_error($kind).await;
            }

            #[tokio::test]
            async fn a_truncated_stream_fails_after_its_text_without_a_retry() {
                super::a_truncated_stream_fails_after_its_text_without_a_retry($kind).await;
            }

            #[tokio::test]
            async fn a_broken_connection_is_retried() {
                super::a_broken_connection_is_retried($kind).await;
            }

            #[tokio::test]
            async fn a_stalled_stream_hits_the_stall_timeout() {
                super::a_stalled_stream_hits_the_stall_timeout($kind).await;
            }

            #[tokio::test]
            async fn the_attempt_deadline_bounds_the_call() {
                super::the_attempt_deadline_bounds_the_call($kind).await;
            }

            #[tokio::test]
            async fn cancellation_mid_stream_closes_the_connection() {
                super::cancellation_mid_stream_closes_the_connection($kind).await;
            }
        }
    )+};
}

conformance!(
    anthropic => Vendor::Anthropic,
    openai => Vendor::OpenAi,
    openai_compatible => Vendor::OpenAiCompatible,
    gemini => Vendor::Gemini,
);
