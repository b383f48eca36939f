//! Bearer secrets the control plane issues: `<prefix><id, 32 hex digits>_<32 random bytes,
//! base64url>`, with prefix `apk_` for workspace API keys and `wkr_` for worker credentials.
//!
//! The prefix lets secret scanners recognise a leaked secret; the embedded id finds the
//! stored row without trying every hash (for a worker it is also the worker id); the random
//! part carries 256 bits of entropy, so a fast hash (SHA-256) is as good as a password hash
//! here and costs microseconds per call. Only the hash is stored, compared in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

pub use agentplane_core::credential::parse;

/// What every workspace API key starts with.
pub const API_KEY: &str = agentplane_core::credential::API_KEY_PREFIX;
/// What every worker credential starts with.
pub const WORKER: &str = agentplane_core::credential::WORKER_PREFIX;
/// Random bytes in a secret (`credential::RANDOM_CHARS` characters once encoded).
const SECRET_BYTES: usize = 32;

/// A freshly made secret: its id, the secret (shown once) and the hash that is stored.
#[derive(Debug)]
pub struct NewSecret {
    /// The id embedded in the secret (UUID v7).
    pub id: Uuid,
    /// The whole secret, as the client sends it.
    pub secret: SecretString,
    /// SHA-256 of the secret.
    pub hash: [u8; 32],
}

/// Makes a new id and secret with `prefix` from the operating system's random source.
pub fn generate(prefix: &str) -> Result<NewSecret, getrandom::Error> {
    let id = Uuid::now_v7();
    let mut random = [0u8; SECRET_BYTES];
    getrandom::fill(&mut random)?;
    let secret = format!("{prefix}{}_{}", id.simple(), URL_SAFE_NO_PAD.encode(random));
    let hash = hash(&secret);
    Ok(NewSecret {
        id,
        secret: SecretString::from(secret),
        hash,
    })
}

/// SHA-256 of a secret, as stored.
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `token` hashes to `stored`, compared in constant time.
pub fn matches(token: &str, stored: &[u8]) -> bool {
    hash(token).ct_eq(stored).into()
}

/// The secret's text, for the one response that returns it.
pub fn reveal(secret: &SecretString) -> String {
    secret.expose_secret().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_secret_parses_back_to_its_id_and_matches_its_hash() {
        for prefix in [API_KEY, WORKER] {
            let key = generate(prefix).unwrap();
            let secret = key.secret.expose_secret();
            assert!(secret.starts_with(prefix));
            assert_eq!(parse(prefix, secret), Some(key.id));
            assert!(matches(secret, &key.hash));
            let mut tampered = secret.to_owned();
            tampered.pop();
            tampered.push(if secret.ends_with('A') { 'B' } else { 'A' });
            assert_eq!(parse(prefix, &tampered), Some(key.id));
            assert!(!matches(&tampered, &key.hash));
        }
    }

    #[test]
    fn tokens_of_another_shape_name_nothing() {
        let key = generate(API_KEY).unwrap();
        let secret = key.secret.expose_secret();
        for token in [
            "",
            "apk_",
            "dev-admin-token",
            &secret[..secret.len() - 1],
            &format!("{secret}x"),
            &secret.replacen("apk_", "apx_", 1),
            "apk_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(parse(API_KEY, token), None, "{token}");
        }
        // A key is not a worker credential, nor the other way round.
        assert_eq!(parse(WORKER, secret), None);
        assert!(!matches(secret, &[0u8; 31]));
    }
}
