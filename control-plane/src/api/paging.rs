//! Keyset paging shared by every list method: reading a page token and cutting a page.

use crate::domain::page;
use crate::domain::validate::Violations;

/// Largest page of a list response, in encoded bytes (clients reject messages over 4 MiB
/// by default).
const MAX_PAGE_BYTES: usize = 3 * 1024 * 1024;

/// Decodes an id page token for list `kind`.
pub(super) fn page_after(v: &mut Violations, kind: &str, token: &str) -> Option<uuid::Uuid> {
    if token.is_empty() {
        return None;
    }
    let decoded = page::decode_id(kind, token);
    if decoded.is_none() {
        v.add("page_token", "is not a token returned by this list method");
    }
    decoded
}

/// Cuts a page fetched with `limit + 1` rows: returns the page and the next token.
pub(super) fn split_page<R, P: prost::Message>(
    rows: Vec<R>,
    limit: i64,
    convert: impl Fn(&R) -> P,
    token: impl Fn(&R) -> String,
) -> (Vec<P>, String) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut items = Vec::with_capacity(rows.len().min(limit));
    let mut bytes = 0usize;
    let mut last = None;
    for row in &rows {
        let item = convert(row);
        bytes = bytes.saturating_add(item.encoded_len());
        // A page stops at `limit` rows or at the byte budget, whichever comes first, but
        // always holds at least one row so paging makes progress.
        if items.len() == limit || (!items.is_empty() && bytes > MAX_PAGE_BYTES) {
            return (items, last.map(&token).unwrap_or_default());
        }
        items.push(item);
        last = Some(row);
    }
    (items, String::new())
}
