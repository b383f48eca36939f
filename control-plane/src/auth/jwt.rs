//! Users' JWTs from an external identity provider, verified with `jsonwebtoken` (no crypto of
//! our own): against an identity provider's JWKS URL ([`super::jwks`]), or a configured key
//! for self-hosting (an HS256 secret, or a PEM public key: RSA → RS256, EC P-256 → ES256,
//! Ed25519 → EdDSA).
//!
//! Every token must carry `iss`, `aud`, `exp` and `sub`; issuer and audience must match the
//! configuration; `exp` and `nbf` are checked with a small leeway. The header's `alg` must be
//! one the key was configured for, so `alg: none` (which does not even parse) and algorithm
//! confusion (an HS256 token against an RSA key, signed with the public key as the secret)
//! are refused.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::{ExposeSecret, SecretString};

use super::jwks::{self, Jwks};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECONDS: u64 = 30;

/// Where the verification keys come from.
#[derive(Clone, Debug)]
pub enum JwtKeySource {
    /// A shared HS256 secret.
    Hs256(SecretString),
    /// A PEM public key (RSA, EC P-256 or Ed25519).
    PublicKeyPem(String),
    /// An identity provider's JWKS URL (https, or http on localhost).
    JwksUrl(String),
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

enum Keys {
    Static(DecodingKey, Algorithm),
    Jwks(Jwks),
}

/// Verifies users' JWTs.
pub struct JwtVerifier {
    issuer: String,
    audience: String,
    keys: Keys,
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
    /// The JWKS URL cannot be used.
    #[error("the JWKS url {0}")]
    JwksUrl(String),
}

impl JwtVerifier {
    /// A verifier for `config`.
    pub fn new(config: &JwtConfig) -> Result<Self, JwtConfigError> {
        Self::with_refetch_interval(config, jwks::REFETCH_INTERVAL)
    }

    /// A verifier for `config` whose JWKS is fetched again for an unknown kid at most every
    /// `refetch_interval` (tests shorten it).
    pub fn with_refetch_interval(
        config: &JwtConfig,
        refetch_interval: std::time::Duration,
    ) -> Result<Self, JwtConfigError> {
        let keys = match &config.keys {
            JwtKeySource::Hs256(secret) => Keys::Static(
                DecodingKey::from_secret(secret.expose_secret().as_bytes()),
                Algorithm::HS256,
            ),
            JwtKeySource::PublicKeyPem(pem) => {
                let pem = pem.as_bytes();
                let (key, algorithm) = DecodingKey::from_rsa_pem(pem)
                    .map(|k| (k, Algorithm::RS256))
                    .or_else(|_| DecodingKey::from_ec_pem(pem).map(|k| (k, Algorithm::ES256)))
                    .or_else(|_| DecodingKey::from_ed_pem(pem).map(|k| (k, Algorithm::EdDSA)))
                    .map_err(|_| JwtConfigError::PublicKey)?;
                Keys::Static(key, algorithm)
            }
            JwtKeySource::JwksUrl(url) => {
                Keys::Jwks(Jwks::new(url, refetch_interval).map_err(JwtConfigError::JwksUrl)?)
            }
        };
        Ok(Self {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            keys,
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
    pub async fn verify(&self, token: &str) -> Option<VerifiedUser> {
        let (key, algorithm) = match &self.keys {
            Keys::Static(key, algorithm) => (key.clone(), *algorithm),
            Keys::Jwks(jwks) => {
                let header = jsonwebtoken::decode_header(token).ok()?;
                jwks.key(header.kid.as_deref()?).await?
            }
        };
        let validation = self.validation(algorithm);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).ok()?;
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

    #[tokio::test]
    async fn a_valid_token_names_its_user() {
        let v = verifier(JwtKeySource::Hs256(SECRET.into()));
        assert_eq!(
            v.verify(&hs256(&claims())).await,
            Some(VerifiedUser {
                issuer: "https://idp.example".into(),
                subject: "alice".into()
            })
        );
    }

    #[tokio::test]
    async fn wrong_issuer_audience_times_or_missing_claims_are_refused() {
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
            assert_eq!(v.verify(&hs256(&bad)).await, None, "{bad}");
        }
        // Inside the leeway, a just-expired token still passes.
        assert!(
            v.verify(&hs256(&with(claims(), "exp", json!(now() - 5))))
                .await
                .is_some()
        );
        // Another secret's signature fails.
        let other = encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(b"another secret entirely, also long"),
        )
        .unwrap();
        assert_eq!(v.verify(&other).await, None);
    }

    #[tokio::test]
    async fn alg_none_and_algorithm_confusion_are_refused() {
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
            verifier(JwtKeySource::Hs256(SECRET.into()))
                .verify(&none)
                .await,
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
        assert_eq!(rsa.verify(&confused).await, None);
        assert_eq!(rsa.verify(&none).await, None);
    }

    #[tokio::test]
    async fn an_ed25519_pem_key_verifies_eddsa_tokens() {
        let v = verifier(JwtKeySource::PublicKeyPem(ED_PUBLIC.into()));
        let token = encode(
            &Header::new(Algorithm::EdDSA),
            &claims(),
            &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            v.verify(&token).await.map(|u| u.subject),
            Some("alice".into())
        );
        assert!(
            JwtVerifier::new(&JwtConfig {
                issuer: "i".into(),
                audience: "a".into(),
                keys: JwtKeySource::PublicKeyPem("not a key".into()),
            })
            .is_err()
        );
    }

    /// A JWKS endpoint on 127.0.0.1: serves `body` while it is set (closes the connection
    /// when not, like a provider that is down) and counts requests.
    struct FakeIdp {
        url: String,
        body: std::sync::Arc<std::sync::Mutex<Option<String>>>,
        requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl FakeIdp {
        async fn start(body: String) -> FakeIdp {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
            let body = std::sync::Arc::new(std::sync::Mutex::new(Some(body)));
            let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let (served, counted) = (body.clone(), requests.clone());
            crate::spawn::spawn_named("fake_idp", async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let mut buf = vec![0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    let Some(body) = served.lock().unwrap().clone() else {
                        continue; // dropped: the provider is down
                    };
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                }
            });
            FakeIdp {
                url,
                body,
                requests,
            }
        }

        fn requests(&self) -> usize {
            self.requests.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// The JWKS of the Ed25519 test key (kid k1), plus a symmetric key that must be ignored.
    fn jwks_document() -> String {
        use base64::Engine as _;
        let der: String = ED_PUBLIC
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(der)
            .unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der[der.len() - 32..]);
        json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA", "use": "sig"},
            {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ", "kid": "sym"},
        ]})
        .to_string()
    }

    fn eddsa(kid: &str) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        encode(
            &header,
            &claims(),
            &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn jwks_verifier(url: &str, refetch: std::time::Duration) -> JwtVerifier {
        JwtVerifier::with_refetch_interval(
            &JwtConfig {
                issuer: "https://idp.example".into(),
                audience: "agentplane".into(),
                keys: JwtKeySource::JwksUrl(url.to_owned()),
            },
            refetch,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn jwks_keys_are_fetched_cached_and_refetched_at_most_once_a_minute() {
        let idp = FakeIdp::start(jwks_document()).await;
        let v = jwks_verifier(&idp.url, jwks::REFETCH_INTERVAL);
        assert_eq!(
            v.verify(&eddsa("k1")).await.map(|u| u.subject),
            Some("alice".into())
        );
        assert_eq!(
            v.verify(&eddsa("k1")).await.map(|u| u.subject),
            Some("alice".into())
        );
        assert_eq!(idp.requests(), 1, "a known kid is served from the cache");
        // Unknown kids do not make us fetch again within the minute.
        for kid in ["k2", "k3", "k4"] {
            assert_eq!(v.verify(&eddsa(kid)).await, None);
        }
        assert_eq!(idp.requests(), 1);
        // A symmetric key in the set is not taken, and an HS256 token naming the Ed25519
        // key's kid is refused (algorithm confusion).
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("sym".into());
        let sym = encode(
            &header,
            &claims(),
            &EncodingKey::from_secret(b"secret-secret-secret"),
        )
        .unwrap();
        assert_eq!(v.verify(&sym).await, None);
        header.kid = Some("k1".into());
        let confused = encode(
            &header,
            &claims(),
            &EncodingKey::from_secret(ED_PUBLIC.as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify(&confused).await, None);
        // A token without a kid cannot pick a key.
        let no_kid = encode(
            &Header::new(Algorithm::EdDSA),
            &claims(),
            &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&no_kid).await, None);
    }

    #[tokio::test]
    async fn the_last_good_keys_are_served_while_the_provider_is_down() {
        let idp = FakeIdp::start(jwks_document()).await;
        let v = jwks_verifier(&idp.url, std::time::Duration::ZERO);
        assert!(v.verify(&eddsa("k1")).await.is_some());
        *idp.body.lock().unwrap() = None;
        // An unknown kid makes it try again; the fetch fails...
        assert_eq!(v.verify(&eddsa("k2")).await, None);
        assert_eq!(idp.requests(), 2);
        // ...and the keys it had still verify.
        assert!(v.verify(&eddsa("k1")).await.is_some());
    }

    #[test]
    fn a_jwks_url_must_be_https_unless_local() {
        for (url, ok) in [
            ("https://idp.example/jwks.json", true),
            ("http://127.0.0.1:8080/jwks.json", true),
            ("http://idp.example/jwks.json", false),
            ("ftp://idp.example/jwks.json", false),
            ("not a url", false),
        ] {
            let config = JwtConfig {
                issuer: "i".into(),
                audience: "a".into(),
                keys: JwtKeySource::JwksUrl(url.into()),
            };
            assert_eq!(JwtVerifier::new(&config).is_ok(), ok, "{url}");
        }
    }
}
