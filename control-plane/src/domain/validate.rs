//! Request validation: collects every field violation of a request so a client sees all of
//! its mistakes at once, as `google.rpc.BadRequest` details.

use std::collections::{BTreeMap, HashMap};

use tonic_types::FieldViolation;
use uuid::Uuid;

use agentplane_core::labels;

use crate::error::ApiError;

pub use agentplane_core::labels::{MAX_LABEL_KEY, MAX_LABEL_VALUE, MAX_LABELS};
/// Longest idempotency key.
pub const MAX_REQUEST_ID: usize = 128;
/// Largest page a list call returns.
pub const MAX_PAGE_SIZE: i32 = 1000;
/// Page size when the client asks for none.
pub const DEFAULT_PAGE_SIZE: i32 = 100;

/// The violations found so far in one request.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is wrong and why.
    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// `Ok` if nothing was recorded, else INVALID_ARGUMENT with every violation.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::InvalidArgument(self.0))
        }
    }

    /// Ends a parse: INVALID_ARGUMENT with every violation recorded, else `parsed`.
    ///
    /// `parsed` is `None` only when a required part failed to parse, and every such failure
    /// records a violation; a `None` with nothing recorded is a bug, answered as internal.
    pub fn finish_with<T>(self, parsed: Option<T>) -> Result<T, ApiError> {
        self.finish()?;
        parsed.ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "a required field failed to parse without a violation"
            ))
        })
    }

    /// Parses a required id.
    pub fn id<T: From<Uuid>>(&mut self, field: &str, value: &str) -> Option<T> {
        if value.is_empty() {
            self.add(field, "is required");
            return None;
        }
        self.optional_id(field, value)
    }

    /// Parses an id that may be empty.
    pub fn optional_id<T: From<Uuid>>(&mut self, field: &str, value: &str) -> Option<T> {
        if value.is_empty() {
            return None;
        }
        match Uuid::try_parse(value) {
            Ok(id) => Some(T::from(id)),
            Err(_) => {
                self.add(field, "must be a UUID");
                None
            }
        }
    }

    /// Checks a required string's length in characters.
    pub fn text(&mut self, field: &str, value: &str, min: usize, max: usize) {
        self.no_nul(field, value);
        let chars = value.chars().count();
        if min > 0 && value.is_empty() {
            self.add(field, "is required");
        } else if chars < min || chars > max {
            self.add(field, format!("must be {min} to {max} characters long"));
        }
    }

    /// Rejects NUL characters, which PostgreSQL text cannot hold.
    pub fn no_nul(&mut self, field: &str, value: &str) {
        if value.contains('\0') {
            self.add(field, "must not contain NUL characters");
        }
    }

    /// Checks a string's size in bytes (and that it holds no NUL).
    pub fn max_bytes(&mut self, field: &str, value: &str, max: usize) {
        self.no_nul(field, value);
        if value.len() > max {
            self.add(field, format!("must be at most {max} bytes"));
        }
    }

    /// Checks an optional idempotency key; returns it if set.
    pub fn request_id(&mut self, field: &str, value: &str) -> Option<String> {
        if value.is_empty() {
            return None;
        }
        if value.chars().count() > MAX_REQUEST_ID || value.chars().any(char::is_control) {
            self.add(
                field,
                format!("must be at most {MAX_REQUEST_ID} printable characters"),
            );
            return None;
        }
        Some(value.to_owned())
    }

    /// Checks labels and returns them in a stable order.
    pub fn labels(
        &mut self,
        field: &str,
        labels: &HashMap<String, String>,
    ) -> BTreeMap<String, String> {
        if labels.len() > MAX_LABELS {
            self.add(field, format!("at most {MAX_LABELS} labels are allowed"));
        }
        for (key, value) in labels {
            if !labels::is_valid_key(key) {
                self.add(
                    &format!("{field}[{}]", truncate(key, 64)),
                    format!("label keys must be 1 to {MAX_LABEL_KEY} characters of [a-z0-9_.-]"),
                );
            }
            if !labels::is_valid_value(value) {
                self.add(
                    &format!("{field}[{}]", truncate(key, 64)),
                    format!(
                        "label values must be at most {MAX_LABEL_VALUE} characters, without NUL"
                    ),
                );
            }
        }
        labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Checks a page size; returns the effective size.
    pub fn page_size(&mut self, field: &str, value: i32) -> i64 {
        match value {
            0 => i64::from(DEFAULT_PAGE_SIZE),
            1..=MAX_PAGE_SIZE => i64::from(value),
            _ => {
                self.add(field, format!("must be 0 to {MAX_PAGE_SIZE}"));
                i64::from(DEFAULT_PAGE_SIZE)
            }
        }
    }
}

/// At most `max` characters of `value`, for echoing bad input back safely.
pub fn truncate(value: &str, max: usize) -> String {
    value.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_violation() {
        let mut v = Violations::new();
        let id: Option<Uuid> = v.id("id", "nope");
        v.text("name", "", 1, 10);
        v.page_size("page_size", -1);
        assert!(id.is_none());
        match v.finish() {
            Err(ApiError::InvalidArgument(violations)) => assert_eq!(violations.len(), 3),
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn finish_with_returns_the_parsed_value_only_without_violations() {
        let v = Violations::new();
        assert_eq!(v.finish_with(Some(1)).ok(), Some(1));

        let mut v = Violations::new();
        let id: Option<Uuid> = v.id("id", "");
        assert!(matches!(
            v.finish_with(id),
            Err(ApiError::InvalidArgument(_))
        ));

        assert!(matches!(
            Violations::new().finish_with(None::<Uuid>),
            Err(ApiError::Internal(_))
        ));
    }

    #[test]
    fn accepts_good_labels_and_rejects_bad_keys() {
        let mut v = Violations::new();
        let labels = HashMap::from([("team".to_owned(), "infra".to_owned())]);
        assert_eq!(v.labels("labels", &labels).len(), 1);
        assert!(v.finish().is_ok());

        let mut v = Violations::new();
        v.labels(
            "labels",
            &HashMap::from([("Bad Key".to_owned(), String::new())]),
        );
        assert!(v.finish().is_err());
    }

    #[test]
    fn request_id_rejects_control_characters_and_long_keys() {
        let mut v = Violations::new();
        assert_eq!(v.request_id("request_id", "abc"), Some("abc".to_owned()));
        assert_eq!(v.request_id("request_id", "a\u{0}b"), None);
        assert_eq!(v.request_id("request_id", &"x".repeat(129)), None);
        assert!(v.finish().is_err());
    }
}
