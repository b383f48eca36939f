//! The shape of the bearer secrets the control plane issues, which workers read too (a
//! worker's id is the id in its credential): `<prefix><id, 32 hex digits>_<43 characters of
//! base64url>`. The prefix tells kinds apart and lets secret scanners recognise a leak.

use uuid::Uuid;

/// Prefix of workspace API keys.
pub const API_KEY_PREFIX: &str = "apk_";
/// Prefix of worker credentials.
pub const WORKER_PREFIX: &str = "wkr_";
/// Length of the random part: 32 bytes in unpadded base64url.
pub const RANDOM_CHARS: usize = 43;

/// The id a token names, if it has the shape of a secret with `prefix`.
pub fn parse(prefix: &str, token: &str) -> Option<Uuid> {
    let rest = token.strip_prefix(prefix)?;
    let (id, random) = rest.split_once('_')?;
    if id.len() != 32 || random.len() != RANDOM_CHARS {
        return None;
    }
    Uuid::try_parse(id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_shape_parses() {
        let id = Uuid::now_v7();
        let random = "A".repeat(RANDOM_CHARS);
        let token = format!("wkr_{}_{random}", id.simple());
        assert_eq!(parse(WORKER_PREFIX, &token), Some(id));
        assert_eq!(parse(API_KEY_PREFIX, &token), None);
        assert_eq!(parse(WORKER_PREFIX, &token[..token.len() - 1]), None);
        assert_eq!(parse(WORKER_PREFIX, &format!("{token}A")), None);
        assert_eq!(parse(WORKER_PREFIX, "wkr_"), None);
        assert_eq!(
            parse(WORKER_PREFIX, &format!("wkr_{}_{random}", "g".repeat(32))),
            None
        );
        assert_eq!(parse(WORKER_PREFIX, "dev-worker-token"), None);
    }
}
