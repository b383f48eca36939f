//! API key secrets: `apk_<key id, 32 hex digits>_<32 random bytes, base64url>`.
//!
//! The `apk_` prefix lets secret scanners recognise a leaked key; the embedded id finds the
//! stored row without trying every hash; the random part carries 256 bits of entropy, so a
//! fast hash (SHA-256) is as good as a password hash here and costs microseconds per call.
//! Only the hash is stored, and it is compared in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::ids::ApiKeyId;

/// What every API key secret starts with.
pub const PREFIX: &str = "apk_";
/// Random bytes in a secret.
const SECRET_BYTES: usize = 32;
/// Length of the base64url (unpadded) encoding of the random bytes.
const SECRET_CHARS: usize = 43;

/// A freshly made key: its id, its secret (shown once) and the hash that is stored.
#[derive(Debug)]
pub struct NewSecret {
    /// The key id embedded in the secret.
    pub id: ApiKeyId,
    /// The whole secret, as the client sends it.
    pub secret: SecretString,
    /// SHA-256 of the secret.
    pub hash: [u8; 32],
}

/// Makes a new key id and secret from the operating system's random source.
pub fn generate() -> Result<NewSecret, getrandom::Error> {
    let id = ApiKeyId::generate();
    let mut random = [0u8; SECRET_BYTES];
    getrandom::fill(&mut random)?;
    let secret = format!(
        "{PREFIX}{}_{}",
        id.0.simple(),
        URL_SAFE_NO_PAD.encode(random)
    );
    let hash = hash(&secret);
    Ok(NewSecret {
        id,
        secret: SecretString::from(secret),
        hash,
    })
}

/// The key id a presented token names, if it has the shape of an API key secret.
pub fn parse(token: &str) -> Option<ApiKeyId> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, random) = rest.split_once('_')?;
    if id.len() != 32 || random.len() != SECRET_CHARS {
        return None;
    }
    let id = Uuid::try_parse(id).ok()?;
    Some(ApiKeyId(id))
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
        let key = generate().unwrap();
        let secret = key.secret.expose_secret();
        assert!(secret.starts_with("apk_"));
        assert_eq!(parse(secret), Some(key.id));
        assert!(matches(secret, &key.hash));
        let mut tampered = secret.to_owned();
        tampered.pop();
        tampered.push(if secret.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(parse(&tampered), Some(key.id));
        assert!(!matches(&tampered, &key.hash));
    }

    #[test]
    fn tokens_of_another_shape_name_no_key() {
        let key = generate().unwrap();
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
            assert_eq!(parse(token), None, "{token}");
        }
        assert!(!matches(secret, &[0u8; 31]));
    }
}
