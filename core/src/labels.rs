//! The rules every label obeys: a resource's labels, an agent's required worker labels and
//! a worker's advertised labels are checked by the same functions, so a worker can always
//! advertise what an agent may require.

/// Most labels one resource (or worker) may carry.
pub const MAX_LABELS: usize = 64;
/// Longest label key.
pub const MAX_LABEL_KEY: usize = 63;
/// Longest label value, in characters.
pub const MAX_LABEL_VALUE: usize = 256;

/// Whether `key` is 1 to [`MAX_LABEL_KEY`] characters of `[a-z0-9_.-]`.
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_LABEL_KEY
        && key.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

/// Whether `value` is at most [`MAX_LABEL_VALUE`] characters, without NUL.
pub fn is_valid_value(value: &str) -> bool {
    value.chars().count() <= MAX_LABEL_VALUE && !value.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_follow_the_label_rules() {
        assert!(is_valid_key("gpu.vendor_1-x"));
        for bad in ["", "GPU", "a b", &"k".repeat(MAX_LABEL_KEY + 1)] {
            assert!(!is_valid_key(bad), "{bad:?}");
        }
        assert!(is_valid_value(""));
        assert!(is_valid_value(&"é".repeat(MAX_LABEL_VALUE)));
        assert!(!is_valid_value(&"v".repeat(MAX_LABEL_VALUE + 1)));
        assert!(!is_valid_value("a\0b"));
    }
}
