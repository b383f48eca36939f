//! Users' JWTs from an external identity provider, verified with `jsonwebtoken` (no crypto of
//! our own): against a configured key for self-hosting (an HS256 secret, or a PEM public key:
//! RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA).
//!
//! Every token must carry `iss`, `aud`, `exp` and `sub`; issuer and audience must match the
//! configuration; `exp` and `nbf` are checked with a small leeway. The header's `alg` must be
//! one the key was configured for, so `alg: none` (which does not even parse) and algorithm
//! confusion (an HS256 token against an RSA key, signed with the public key as the secret)
//! are refused.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::{ExposeSecret, SecretString};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECONDS: u64 = 30;

/// Where the verification keys come from.
#[derive(Clone, Debug)]
pub enum JwtKeySource {
    /// A shared HS256 secret.
    Hs256(SecretString),
    /// A PEM public key (RSA, EC P-256 or Ed25519).
    PublicKeyPem(String),
}

/// How users' tokens are verified.
#[derive(Clone, Debug)]
pub struct JwtConfig {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must carry.
    pub audience: String,
    /// The keys.
    pub keys: JwtKeySource,
}

/// A verified user: who the identity provider says it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VerifiedUser {
    /// The token's issuer.
    pub issuer: String,
    /// The token's subject.
    pub subject: String,
}

#[derive(serde::Deserialize)]
struct Claims {
    iss: String,
    sub: String,
}

/// Verifies users' JWTs.
pub struct JwtVerifier {
    issuer: String,
    audience: String,
    key: DecodingKey,
    algorithm: Algorithm,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    /// The PEM is not an RSA, EC P-256 or Ed25519 public key.
    #[error("the JWT public key is not an RSA, EC P-256 or Ed25519 PEM public key")]
    PublicKey,
}

impl JwtVerifier {
    /// A verifier for `config`.
    pub fn new(config: &JwtConfig) -> Result<Self, JwtConfigError> {
        let (key, algorithm) = match &config.keys {
            JwtKeySource::Hs256(secret) => (
                DecodingKey::from_secret(secret.expose_secret().as_bytes()),
                Algorithm::HS256,
            ),
            JwtKeySource::PublicKeyPem(pem) => {
                let pem = pem.as_bytes();
                DecodingKey::from_rsa_pem(pem)
                    .map(|k| (k, Algorithm::RS256))
                    .or_else(|_| DecodingKey::from_ec_pem(pem).map(|k| (k, Algorithm::ES256)))
                    .or_else(|_| DecodingKey::from_ed_pem(pem).map(|k| (k, Algorithm::EdDSA)))
                    .map_err(|_| JwtConfigError::PublicKey)?
            }
        };
        Ok(Self {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            key,
            algorithm,
        })
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation
    }

    /// The user a token proves, or `None` for any token that does not verify (which check
    /// failed is not told).
    pub fn verify(&self, token: &str) -> Option<VerifiedUser> {
        let validation = self.validation(self.algorithm);
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &validation).ok()?;
        if data.claims.sub.is_empty() || data.claims.sub.len() > 255 {
            return None;
        }
        Some(VerifiedUser {
            issuer: data.claims.iss,
            subject: data.claims.sub,
        })
    }

    /// Whether `token` looks like a JWT (three dot-separated parts), so it is tried here.
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";
    /// Test keys made with `openssl genpkey` for these tests only.
    const ED_PRIVATE: &str = include_str!("testdata/ed25519-private.pem");
    const ED_PUBLIC: &str = include_str!("testdata/ed25519-public.pem");
    const RSA_PUBLIC: &str = include_str!("testdata/rsa-public.pem");

    fn verifier(keys: JwtKeySource) -> JwtVerifier {
        JwtVerifier::new(&JwtConfig {
            issuer: "https://idp.example".into(),
            audience: "agentplane".into(),
            keys,
        })
        .unwrap()
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn claims() -> serde_json::Value {
        json!({"iss": "https://idp.example", "aud": "agentplane", "sub": "alice",
               "exp": now() + 600, "nbf": now() - 10})
    }

    fn hs256(claims: &serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn with(
        mut claims: serde_json::Value,
        key: &str,
        value: serde_json::Value,
    ) -> serde_json::Value {
        claims[key] = value;
        claims
    }

    #[test]
    fn a_valid_token_names_its_user() {
        let v = verifier(JwtKeySource::Hs256(SECRET.into()));
        assert_eq!(
            v.verify(&hs256(&claims())),
            Some(VerifiedUser {
                issuer: "https://idp.example".into(),
                subject: "alice".into()
            })
        );
    }

    #[test]
    fn wrong_issuer_audience_times_or_missing_claims_are_refused() {
        let v = verifier(JwtKeySource::Hs256(SECRET.into()));
        let mut no_exp = claims();
        no_exp.as_object_mut().unwrap().remove("exp");
        let mut no_sub = claims();
        no_sub.as_object_mut().unwrap().remove("sub");
        for bad in [
            with(claims(), "iss", json!("https://evil.example")),
            with(claims(), "aud", json!("someone-else")),
            with(claims(), "exp", json!(now() - 120)),
            with(claims(), "nbf", json!(now() + 120)),
            with(claims(), "sub", json!("")),
            no_exp,
            no_sub,
        ] {
            assert_eq!(v.verify(&hs256(&bad)), None, "{bad}");
        }
        // Inside the leeway, a just-expired token still passes.
        assert!(
            v.verify(&hs256(&with(claims(), "exp", json!(now() - 5))))
                .is_some()
        );
        // Another secret's signature fails.
        let other = encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(b"another secret entirely, also long"),
        )
        .unwrap();
        assert_eq!(v.verify(&other), None);
    }

    #[test]
    fn alg_none_and_algorithm_confusion_are_refused() {
        use base64::Engine as _;
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&claims())
        );
        assert_eq!(
            verifier(JwtKeySource::Hs256(SECRET.into())).verify(&none),
            None
        );

        // An HS256 token "signed" with the RSA public key as the secret, against that key.
        let rsa = verifier(JwtKeySource::PublicKeyPem(RSA_PUBLIC.into()));
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        )
        .unwrap();
        assert_eq!(rsa.verify(&confused), None);
        assert_eq!(rsa.verify(&none), None);
    }

    #[test]
    fn an_ed25519_pem_key_verifies_eddsa_tokens() {
        let v = verifier(JwtKeySource::PublicKeyPem(ED_PUBLIC.into()));
        let token = encode(
            &Header::new(Algorithm::EdDSA),
            &claims(),
            &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&token).map(|u| u.subject), Some("alice".into()));
        assert!(
            JwtVerifier::new(&JwtConfig {
                issuer: "i".into(),
                audience: "a".into(),
                keys: JwtKeySource::PublicKeyPem("not a key".into()),
            })
            .is_err()
        );
    }
}
