//! Text rules for anything stored in PostgreSQL `text` or sent in a bounded field: no NUL
//! characters, and byte limits cut at a character boundary.

use std::borrow::Cow;

/// `text` with every NUL (which PostgreSQL text cannot hold) replaced by U+FFFD. Model
/// output may contain NUL; it is kept readable rather than refused.
pub fn without_nul(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
pub fn truncate_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` shortened in place to at most `max` bytes, at a character boundary.
pub fn truncate_owned(mut text: String, max: usize) -> String {
    let kept = truncate_bytes(&text, max).len();
    text.truncate(kept);
    text
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn nul_becomes_the_replacement_character() {
        assert_eq!(without_nul("a\0b\0"), "a\u{FFFD}b\u{FFFD}");
        assert!(matches!(without_nul("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate_bytes("héllo", 2), "h");
        assert_eq!(truncate_bytes("hello", 10), "hello");
        assert_eq!(truncate_owned("héllo".to_owned(), 3), "hé");
    }

    proptest! {
        #[test]
        fn truncation_is_a_prefix_within_the_limit(text in any::<String>(), max in 0usize..64) {
            let cut = truncate_bytes(&text, max);
            prop_assert!(cut.len() <= max);
            prop_assert!(text.starts_with(cut));
            // The longest such prefix: one more character would pass the limit.
            if let Some(next) = text[cut.len()..].chars().next() {
                prop_assert!(cut.len() + next.len_utf8() > max);
            }
        }
    }
}
