//! Why a model call failed, split the one way that matters to the queue: may another try
//! succeed (`Unavailable`), or will it fail the same way (`Rejected`). Each kind has a stable
//! failure code, reported to the control plane as the attempt's `code`.

use std::time::Duration;

use super::ModelUsage;

/// Why a provider refused a request for good: retrying it unchanged fails the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The request is malformed or not supported by the model (HTTP 400, 413, 422).
    InvalidRequest,
    /// The API key is missing, wrong or revoked (HTTP 401).
    Authentication,
    /// The key may not use this model or feature, or the account cannot pay (403, 402,
    /// OpenAI's `insufficient_quota`).
    PermissionDenied,
    /// The model or endpoint does not exist (404).
    NotFound,
    /// The prompt does not fit the model's context window.
    ContextTooLong,
    /// The model or the vendor's safety system refused to answer.
    ContentRefused,
    /// The answer passed the size a task may store.
    OutputTooLarge,
    /// The vendor answered with something this adapter does not understand (a redirect, a
    /// finish reason for a feature the request did not ask for).
    UnexpectedResponse,
}

impl Rejection {
    /// The failure code reported to the control plane.
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidRequest => "provider_invalid_request",
            Self::Authentication => "provider_authentication_failed",
            Self::PermissionDenied => "provider_permission_denied",
            Self::NotFound => "provider_model_not_found",
            Self::ContextTooLong => "provider_context_too_long",
            Self::ContentRefused => "provider_content_refused",
            Self::OutputTooLarge => "provider_output_too_large",
            Self::UnexpectedResponse => "provider_unexpected_response",
        }
    }
}

/// Why a provider could not answer now; a later try may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailability {
    /// Our rate limit with the vendor is used up (HTTP 429).
    RateLimited,
    /// The vendor is overloaded (Anthropic's 529 and `overloaded_error`, HTTP 503).
    Overloaded,
    /// The vendor failed (HTTP 5xx, 408, 409).
    ServerError,
    /// The call ran past the per-request timeout (or the vendor's own timeout).
    Timeout,
    /// The stream went quiet for longer than the stall timeout.
    Stalled,
    /// The connection could not be made or broke (refused, reset, TLS).
    Network,
    /// The stream ended before its terminal event.
    Truncated,
    /// An event could not be decoded.
    MalformedStream,
}

impl Unavailability {
    /// The failure code reported to the control plane.
    pub fn code(self) -> &'static str {
        match self {
            Self::RateLimited => "provider_rate_limited",
            Self::Overloaded => "provider_overloaded",
            Self::ServerError => "provider_server_error",
            Self::Timeout => "provider_timeout",
            Self::Stalled => "provider_stalled",
            Self::Network => "provider_network_error",
            Self::Truncated => "provider_stream_truncated",
            Self::MalformedStream => "provider_malformed_stream",
        }
    }
}

/// Why a call did not produce an answer. Messages never carry credentials: vendor messages
/// are scrubbed of the API key before they get here (see `http::scrub`).
///
/// A failed call may still have cost money: `Rejected` and `Unavailable` carry `spent`, what
/// the call's tries had consumed by the vendor's reports before it failed (see
/// [`Self::spent`]).
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The caller canceled the call (or stopped reading its output).
    #[error("the model call was canceled")]
    Canceled {
        /// What the call had consumed before it was canceled, if the vendor said.
        spent: Option<ModelUsage>,
    },
    /// The provider refused the request; retrying will not help.
    #[error("the provider refused the request ({}): {message}", reason.code())]
    Rejected {
        /// What kind of refusal.
        reason: Rejection,
        /// What the vendor said, or what we saw.
        message: String,
        /// What the call's tries consumed before the failure (see [`Self::spent`]).
        spent: Option<ModelUsage>,
    },
    /// A failure that may pass: overload, rate limit, network trouble, a 5xx, a broken stream.
    #[error("the provider is unavailable ({}): {message}", reason.code())]
    Unavailable {
        /// What kind of failure.
        reason: Unavailability,
        /// What the vendor said, or what we saw.
        message: String,
        /// How long the provider asked us to wait, when it said.
        retry_after: Option<Duration>,
        /// What the call's tries consumed before the failure (see [`Self::spent`]).
        spent: Option<ModelUsage>,
    },
}

impl ProviderError {
    /// A permanent failure.
    pub fn rejected(reason: Rejection, message: impl Into<String>) -> Self {
        Self::Rejected {
            reason,
            message: message.into(),
            spent: None,
        }
    }

    /// A transient failure without a retry hint.
    pub fn unavailable(reason: Unavailability, message: impl Into<String>) -> Self {
        Self::Unavailable {
            reason,
            message: message.into(),
            retry_after: None,
            spent: None,
        }
    }

    /// Whether the caller canceled the call.
    pub fn is_canceled(&self) -> bool {
        matches!(self, Self::Canceled { .. })
    }

    /// What the failed call consumed, priced like a successful call's usage: the sum over
    /// its tries (HTTP requests) of the token counts the vendor reported before each failed
    /// (Anthropic's `message_start`, a usage chunk before an error event or a broken
    /// stream). `None` when no try reported usage: a vendor charges nothing for a request
    /// it refused (4xx, 5xx), and says nothing of a stream cut before its first usage.
    pub fn spent(&self) -> Option<ModelUsage> {
        match self {
            Self::Canceled { spent }
            | Self::Rejected { spent, .. }
            | Self::Unavailable { spent, .. } => *spent,
        }
    }

    /// This error with `usage` (what one more try consumed) added to its spend.
    pub(crate) fn with_spend(mut self, usage: ModelUsage) -> Self {
        let (Self::Canceled { spent }
        | Self::Rejected { spent, .. }
        | Self::Unavailable { spent, .. }) = &mut self;
        *spent = Some(match spent {
            Some(earlier) => earlier.plus(&usage),
            None => usage,
        });
        self
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Canceled { .. })
    }

    /// The failure code reported to the control plane.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Canceled { .. } => "provider_canceled",
            Self::Rejected { reason, .. } => reason.code(),
            Self::Unavailable { reason, .. } => reason.code(),
        }
    }

    /// How long the vendor asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailability_and_cancellation_are_retryable() {
        assert!(ProviderError::unavailable(Unavailability::Overloaded, "busy").is_retryable());
        assert!(ProviderError::Canceled { spent: None }.is_retryable());
        for reason in [
            Rejection::InvalidRequest,
            Rejection::Authentication,
            Rejection::ContextTooLong,
            Rejection::ContentRefused,
        ] {
            assert!(!ProviderError::rejected(reason, "no").is_retryable());
        }
    }

    #[test]
    fn codes_fit_the_wire_limit_and_messages_name_them() {
        let error = ProviderError::rejected(Rejection::ContextTooLong, "prompt is too long");
        assert_eq!(error.code(), "provider_context_too_long");
        assert_eq!(
            error.to_string(),
            "the provider refused the request (provider_context_too_long): prompt is too long"
        );
        for code in [
            Rejection::UnexpectedResponse.code(),
            Unavailability::MalformedStream.code(),
        ] {
            assert!(code.len() <= agentplane_core::limits::MAX_CODE_CHARS);
        }
    }
}
