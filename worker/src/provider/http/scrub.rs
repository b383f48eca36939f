//! Keeping credentials out of errors: vendors quote keys (whole or masked) in their messages,
//! and every error message can reach a log, an event or a client.

use secrecy::{ExposeSecret, SecretString};

use crate::provider::{ProviderError, Rejection};

/// Longest vendor message kept in an error.
pub(super) const MAX_MESSAGE_CHARS: usize = 1000;

/// `error` with the API key cut out of its message and the message cut to a readable length;
/// an authentication failure keeps none of the vendor's words (vendors quote masked keys).
pub(super) fn scrub_error(error: ProviderError, key: Option<&SecretString>) -> ProviderError {
    let clean = |message: String| scrub(&message, key);
    match error {
        ProviderError::Canceled { spent } => ProviderError::Canceled { spent },
        // Vendors quote (masked) keys in these: say only what happened.
        ProviderError::Rejected {
            reason: Rejection::Authentication,
            spent,
            ..
        } => ProviderError::Rejected {
            reason: Rejection::Authentication,
            message: "the vendor refused the api key configured on this worker".to_owned(),
            spent,
        },
        ProviderError::Rejected {
            reason,
            message,
            spent,
        } => ProviderError::Rejected {
            reason,
            message: clean(message),
            spent,
        },
        ProviderError::Unavailable {
            reason,
            message,
            retry_after,
            spent,
        } => ProviderError::Unavailable {
            reason,
            message: clean(message),
            retry_after,
            spent,
        },
    }
}

/// `message` without `key` (nor any run of its 8+ leading or trailing characters, as in a
/// masked key such as `sk-proj-****abcd`), at most [`MAX_MESSAGE_CHARS`] characters.
pub(super) fn scrub(message: &str, key: Option<&SecretString>) -> String {
    let mut text = message.to_owned();
    if let Some(key) = key
        .map(ExposeSecret::expose_secret)
        .filter(|k| !k.is_empty())
    {
        text = text.replace(key, "[redacted]");
        let chars: Vec<char> = key.chars().collect();
        if chars.len() >= 16 {
            let head: String = chars[..8].iter().collect();
            let tail: String = chars[chars.len() - 8..].iter().collect();
            text = text
                .replace(&head, "[redacted]")
                .replace(&tail, "[redacted]");
        }
    }
    if text.chars().count() > MAX_MESSAGE_CHARS {
        text = text.chars().take(MAX_MESSAGE_CHARS).collect::<String>() + "…";
    }
    text
}
