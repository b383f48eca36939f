//! API errors and the one place that maps them to gRPC status codes.

use tonic::Code;
use tonic_types::{ErrorDetails, FieldViolation, QuotaViolation, StatusExt};
use uuid::Uuid;

use crate::store::StoreError;

/// Domain the `google.rpc.ErrorInfo` details are issued under.
const ERROR_DOMAIN: &str = "agentplane.dev";

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; each violation names a field.
    #[error("invalid request")]
    InvalidArgument(Vec<FieldViolation>),
    /// The resource does not exist, is deleted, or belongs to another workspace.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A unique name or key is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The resource is not in a state that allows the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No credentials, or credentials that are not valid.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The caller is known but may not call this method.
    #[error("permission denied")]
    PermissionDenied,
    /// The caller took too long to do its part (e.g. a worker that never says hello).
    #[error("{0}")]
    DeadlineExceeded(&'static str),
    /// A dependency (the database) is not reachable right now; retrying may help.
    #[error("service unavailable")]
    Unavailable,
    /// A request message is larger than the server accepts; a retry as is fails the same way.
    #[error("request message larger than the limit of {limit_bytes} bytes")]
    MessageTooLarge {
        /// Largest request message accepted, in bytes.
        limit_bytes: usize,
    },
    /// The server holds as many open streams as it allows; retry later or elsewhere.
    #[error("too many open streams on this server (at most {limit})")]
    TooManyStreams {
        /// Most streams one server holds open.
        limit: usize,
    },
    /// A bug or an unexpected failure; details go to the log only.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A single field violation.
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(what) => ApiError::NotFound(what),
            StoreError::AlreadyExists(what) => ApiError::AlreadyExists(what),
            StoreError::FailedPrecondition(what) => ApiError::FailedPrecondition(what),
            StoreError::InvalidInput(what) => ApiError::invalid("request", what),
            StoreError::InvalidField(field, what) => ApiError::invalid(field, what),
            StoreError::Timeout => {
                ApiError::DeadlineExceeded("the database statement took too long")
            }
            StoreError::Unavailable(error) => {
                tracing::warn!(%error, "database unavailable");
                ApiError::Unavailable
            }
            StoreError::Database(error) => ApiError::Internal(error.into()),
        }
    }
}

impl From<StoreError> for tonic::Status {
    fn from(error: StoreError) -> Self {
        ApiError::from(error).into()
    }
}

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        let message = error.to_string();
        let (code, details) = match error {
            ApiError::InvalidArgument(violations) => {
                let mut details = reason("INVALID_ARGUMENT");
                details.set_bad_request(violations);
                (Code::InvalidArgument, details)
            }
            ApiError::NotFound(_) => (Code::NotFound, reason("NOT_FOUND")),
            ApiError::AlreadyExists(_) => (Code::AlreadyExists, reason("ALREADY_EXISTS")),
            ApiError::FailedPrecondition(_) => {
                (Code::FailedPrecondition, reason("FAILED_PRECONDITION"))
            }
            ApiError::Unauthenticated(_) => (Code::Unauthenticated, reason("UNAUTHENTICATED")),
            ApiError::PermissionDenied => (Code::PermissionDenied, reason("PERMISSION_DENIED")),
            ApiError::DeadlineExceeded(_) => (Code::DeadlineExceeded, reason("DEADLINE_EXCEEDED")),
            ApiError::Unavailable => {
                let mut details = reason("UNAVAILABLE");
                details.set_retry_info(Some(std::time::Duration::from_secs(1)));
                (Code::Unavailable, details)
            }
            ApiError::MessageTooLarge { limit_bytes } => {
                let mut details = ErrorDetails::new();
                details.set_error_info(
                    "RESOURCE_EXHAUSTED",
                    ERROR_DOMAIN,
                    [("limit_bytes".to_owned(), limit_bytes.to_string())],
                );
                (Code::ResourceExhausted, details)
            }
            ApiError::TooManyStreams { limit } => {
                let mut details = ErrorDetails::new();
                details.set_error_info(
                    "TOO_MANY_STREAMS",
                    ERROR_DOMAIN,
                    [("limit".to_owned(), limit.to_string())],
                );
                details.set_quota_failure(vec![QuotaViolation::new(
                    "server/streams",
                    format!("at most {limit} open streams per server"),
                )]);
                details.set_retry_info(Some(std::time::Duration::from_secs(1)));
                (Code::ResourceExhausted, details)
            }
            ApiError::Internal(error) => {
                let error_id = Uuid::now_v7();
                tracing::error!(error = format!("{error:#}"), %error_id, "internal error");
                let mut details = reason("INTERNAL");
                details.set_error_info(
                    "INTERNAL",
                    ERROR_DOMAIN,
                    [("error_id".to_owned(), error_id.to_string())],
                );
                return tonic::Status::with_error_details(
                    Code::Internal,
                    format!("internal error (id {error_id})"),
                    details,
                );
            }
        };
        tonic::Status::with_error_details(code, message, details)
    }
}

fn reason(reason: &str) -> ErrorDetails {
    ErrorDetails::with_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new())
}
