//! Verification keys from an identity provider's JWKS URL: fetched on first need, cached by
//! `kid`, fetched again when a token names a `kid` the cache lacks but at most once per
//! [`REFETCH_INTERVAL`] (so unknown kids cannot make us hammer the provider), and kept when a
//! fetch fails, so sign-in goes on with the last good keys while the provider is down.
//!
//! Only asymmetric keys are taken: RSA (RS256), EC P-256 (ES256) and Ed25519 (EdDSA); a
//! symmetric (`oct`) or other key in the set is ignored, and each key verifies only the
//! algorithm it is for.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};

/// Least time between two fetches caused by unknown kids.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(60);
/// Longest a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 256 * 1024;

type Keys = HashMap<String, (DecodingKey, Algorithm)>;

/// The cached key set of one JWKS URL.
pub struct Jwks {
    url: String,
    client: reqwest::Client,
    refetch_interval: Duration,
    keys: RwLock<Arc<Keys>>,
    /// When the last fetch started; held while fetching, so one fetch runs at a time.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// A cache for `url`, fetching again for an unknown kid at most every `refetch_interval`.
    pub fn new(url: &str, refetch_interval: Duration) -> Result<Self, String> {
        let parsed: http::Uri = url.parse().map_err(|_| "not a url".to_owned())?;
        match parsed.scheme_str() {
            Some("https") => {}
            // Plain http only for a provider on this machine (and tests).
            Some("http") if matches!(parsed.host(), Some("127.0.0.1" | "localhost" | "[::1]")) => {}
            _ => return Err("must be https (or http on localhost)".to_owned()),
        }
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|error| error.to_string())?;
        Ok(Self {
            url: url.to_owned(),
            client,
            refetch_interval,
            keys: RwLock::default(),
            last_fetch: tokio::sync::Mutex::new(None),
        })
    }

    fn cached(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        self.keys.read().ok()?.get(kid).cloned()
    }

    /// The key named `kid`, fetching the set again if it is unknown and the last fetch is
    /// old enough.
    pub async fn key(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        if let Some(key) = self.cached(kid) {
            return Some(key);
        }
        let mut last_fetch = self.last_fetch.lock().await;
        // Another caller may have fetched while this one waited.
        if let Some(key) = self.cached(kid) {
            return Some(key);
        }
        if last_fetch.is_some_and(|at| at.elapsed() < self.refetch_interval) {
            return None;
        }
        *last_fetch = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "fetched the identity provider's keys");
                if let Ok(mut cached) = self.keys.write() {
                    *cached = Arc::new(keys);
                }
            }
            // Keep serving the keys we have.
            Err(error) => tracing::warn!(url = %self.url, %error, "fetching the JWKS failed"),
        }
        self.cached(kid)
    }

    async fn fetch(&self) -> Result<Keys, String> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|error| error.to_string())?
            .error_for_status()
            .map_err(|error| error.to_string())?;
        if response
            .content_length()
            .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
        {
            return Err("the JWKS document is too large".to_owned());
        }
        let body = response.bytes().await.map_err(|error| error.to_string())?;
        if body.len() > MAX_JWKS_BYTES {
            return Err("the JWKS document is too large".to_owned());
        }
        let set: JwkSet = serde_json::from_slice(&body).map_err(|error| error.to_string())?;
        Ok(set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let algorithm = algorithm(jwk)?;
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some((kid, (key, algorithm)))
            })
            .collect())
    }
}

/// The one algorithm an asymmetric key verifies; `None` for keys we do not take.
fn algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let from_key = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    // A key that says what it is for must agree with its type.
    match jwk.common.key_algorithm {
        None => Some(from_key),
        Some(KeyAlgorithm::RS256) if from_key == Algorithm::RS256 => Some(from_key),
        Some(KeyAlgorithm::ES256) if from_key == Algorithm::ES256 => Some(from_key),
        Some(KeyAlgorithm::EdDSA) if from_key == Algorithm::EdDSA => Some(from_key),
        Some(_) => None,
    }
}

/// rustls needs a process-wide crypto provider; ring is the one built in.
fn install_crypto_provider() {
    // Err means one is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
