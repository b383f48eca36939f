//! Where the vendors are and how to reach them: base URLs and API keys (from the worker's
//! configuration, never from a task), timeouts, the retry policy, the price table.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::Provider;
use super::prices::PriceTable;
use super::retry::RetryPolicy;

/// Default timeout to open a connection to a vendor.
pub(super) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit of one HTTP request, from sending it to the end of its stream.
pub(super) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// Default longest silence: before the response headers, and between two chunks of a
/// stream (vendors' keep-alives count as activity). Generous because reasoning models can
/// think for minutes before their first chunk and not every vendor sends keep-alives.
pub(super) const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(300);

/// The vendor's public API, unless the configuration overrides it.
pub fn default_base_url(provider: Provider) -> Option<&'static str> {
    match provider {
        Provider::Anthropic => Some("https://api.anthropic.com"),
        // Like OpenAI's own SDKs, the base URL includes the version: `{base}/chat/completions`.
        Provider::OpenAi => Some("https://api.openai.com/v1"),
        Provider::Gemini => Some("https://generativelanguage.googleapis.com"),
        Provider::Echo | Provider::OpenAiCompatible => None,
    }
}

/// One vendor endpoint. `Debug` shows the URL and whether a key is set, never the key.
#[derive(Clone)]
pub struct Endpoint {
    /// Base URL, `https://…` (or `http://…`, e.g. a local vLLM or Ollama), without a
    /// trailing slash needed.
    pub base_url: String,
    /// The API key; required for Anthropic, OpenAI and Gemini, optional for an
    /// OpenAI-compatible server (Ollama and llama.cpp need none).
    pub api_key: Option<SecretString>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl Endpoint {
    /// The vendor's public API with `api_key`.
    pub fn public(provider: Provider, api_key: SecretString) -> Option<Self> {
        default_base_url(provider).map(|base_url| Self {
            base_url: base_url.to_owned(),
            api_key: Some(api_key),
        })
    }
}

/// Timeouts and retries of every vendor call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Limit to open a connection.
    pub connect_timeout: Duration,
    /// Limit of one HTTP request, from sending it to the end of its stream.
    pub request_timeout: Duration,
    /// Longest silence before the response headers and between two chunks of the stream.
    pub stall_timeout: Duration,
    /// How failed calls are retried within an attempt.
    pub retry: RetryPolicy,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            retry: RetryPolicy::default(),
        }
    }
}

/// Every vendor this worker can call. A vendor left `None` is not registered: its tasks
/// fail with `provider_not_configured`.
#[derive(Debug, Clone, Default)]
pub struct ProviderSettings {
    /// Anthropic (`ANTHROPIC_API_KEY`, `AGENTPLANE_ANTHROPIC_BASE_URL`).
    pub anthropic: Option<Endpoint>,
    /// OpenAI (`OPENAI_API_KEY`, `AGENTPLANE_OPENAI_BASE_URL`).
    pub openai: Option<Endpoint>,
    /// Gemini (`GEMINI_API_KEY`, `AGENTPLANE_GEMINI_BASE_URL`).
    pub gemini: Option<Endpoint>,
    /// An OpenAI-compatible server (`AGENTPLANE_OPENAI_COMPATIBLE_BASE_URL`,
    /// `AGENTPLANE_OPENAI_COMPATIBLE_API_KEY`).
    pub openai_compatible: Option<Endpoint>,
    /// Timeouts and retries.
    pub http: HttpSettings,
    /// Prices by (provider, model); empty means every call is unpriced.
    pub prices: Arc<PriceTable>,
}

/// A provider setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A base URL does not parse, is not http(s), or carries credentials or a query.
    #[error("the {provider} base url {url:?} is invalid: {reason}")]
    BaseUrl {
        /// Which provider.
        provider: Provider,
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A vendor that needs an API key has none, or it cannot travel in a header.
    #[error("the {0} api key must be set and be visible ascii")]
    ApiKey(Provider),
    /// A timeout is zero or longer than a day.
    #[error("provider {name} must be between 1 ms and 24 h, got {value:?}")]
    Timeout {
        /// Which setting.
        name: &'static str,
        /// The value given.
        value: Duration,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the http client: {0}")]
    Client(String),
}

impl ProviderSettings {
    /// The configured endpoints, by provider.
    pub fn endpoints(&self) -> impl Iterator<Item = (Provider, &Endpoint)> {
        [
            (Provider::Anthropic, &self.anthropic),
            (Provider::OpenAi, &self.openai),
            (Provider::Gemini, &self.gemini),
            (Provider::OpenAiCompatible, &self.openai_compatible),
        ]
        .into_iter()
        .filter_map(|(provider, endpoint)| endpoint.as_ref().map(|e| (provider, e)))
    }

    /// Checks every setting; the first problem found is returned.
    pub fn validate(&self) -> Result<(), SettingsError> {
        for (provider, endpoint) in self.endpoints() {
            check_base_url(provider, &endpoint.base_url)?;
            let key_required = provider != Provider::OpenAiCompatible;
            match &endpoint.api_key {
                Some(key) if !is_header_safe(key.expose_secret()) => {
                    return Err(SettingsError::ApiKey(provider));
                }
                None if key_required => return Err(SettingsError::ApiKey(provider)),
                _ => {}
            }
        }
        let day = Duration::from_secs(24 * 3600);
        for (name, value) in [
            ("connect_timeout", self.http.connect_timeout),
            ("request_timeout", self.http.request_timeout),
            ("stall_timeout", self.http.stall_timeout),
            ("initial_backoff", self.http.retry.initial_backoff),
            ("max_backoff", self.http.retry.max_backoff),
        ] {
            if value < Duration::from_millis(1) || value > day {
                return Err(SettingsError::Timeout { name, value });
            }
        }
        Ok(())
    }
}

fn is_header_safe(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|byte| byte.is_ascii_graphic())
}

fn check_base_url(provider: Provider, url: &str) -> Result<(), SettingsError> {
    let invalid = |reason| SettingsError::BaseUrl {
        provider,
        url: url.to_owned(),
        reason,
    };
    let parsed = reqwest::Url::parse(url).map_err(|_| invalid("not a url"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("the host is missing"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "credentials belong in the api key setting, not the url",
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("a base url has no query or fragment"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ProviderSettings {
        ProviderSettings {
            anthropic: Endpoint::public(Provider::Anthropic, SecretString::from("sk-ant-secret1")),
            openai_compatible: Some(Endpoint {
                base_url: "http://127.0.0.1:11434/v1".to_owned(),
                api_key: None,
            }),
            ..ProviderSettings::default()
        }
    }

    #[test]
    fn valid_settings_pass_and_debug_hides_keys() {
        let settings = settings();
        assert!(settings.validate().is_ok());
        let printed = format!("{settings:?}");
        assert!(!printed.contains("sk-ant-secret1"), "{printed}");
        assert!(printed.contains("api.anthropic.com"));
        let names: Vec<_> = settings.endpoints().map(|(p, _)| p).collect();
        assert_eq!(names, [Provider::Anthropic, Provider::OpenAiCompatible]);
    }

    #[test]
    fn bad_urls_keys_and_timeouts_are_refused() {
        for url in [
            "",
            "api.openai.com",
            "ftp://host",
            "https://user:pw@host",
            "https://host/v1?key=x",
        ] {
            let mut bad = settings();
            bad.openai_compatible = Some(Endpoint {
                base_url: url.to_owned(),
                api_key: None,
            });
            assert!(
                matches!(bad.validate(), Err(SettingsError::BaseUrl { .. })),
                "{url}"
            );
        }
        let mut bad = settings();
        bad.gemini = Some(Endpoint {
            base_url: "https://generativelanguage.googleapis.com".to_owned(),
            api_key: None,
        });
        assert!(matches!(
            bad.validate(),
            Err(SettingsError::ApiKey(Provider::Gemini))
        ));
        let mut bad = settings();
        bad.anthropic = Endpoint::public(Provider::Anthropic, SecretString::from("two words"));
        assert!(matches!(bad.validate(), Err(SettingsError::ApiKey(_))));
        let mut bad = settings();
        bad.http.stall_timeout = Duration::ZERO;
        assert!(matches!(bad.validate(), Err(SettingsError::Timeout { .. })));
    }
}
