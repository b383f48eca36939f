//! Worker settings and their validation.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::provider::{ProviderSettings, SettingsError};
use sqlx::postgres::PgConnectOptions;
use tonic::metadata::MetadataValue;
use uuid::Uuid;

use crate::queue::WorkerLabels;

/// Default number of tasks a worker runs at once.
pub const DEFAULT_CAPACITY: u32 = 8;
/// Largest accepted capacity (the control plane refuses more in `WorkerHello`).
pub const MAX_CAPACITY: u32 = 10_000;
/// Default ceiling of the idle poll backoff.
pub const DEFAULT_POLL_INTERVAL_MAX: Duration = Duration::from_secs(2);
/// Default time running tasks get to finish on shutdown before they are given back.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default pause between two tokens of the echo provider.
pub const DEFAULT_ECHO_TOKEN_DELAY: Duration = Duration::from_millis(20);
/// `statement_timeout` of the worker's database sessions, unless its database URL sets one
/// (`?options=-c%20statement_timeout%3D60s`).
pub(crate) const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// `idle_in_transaction_session_timeout` of the worker's database sessions, unless its
/// database URL sets one. An open transaction holds back every event stream.
pub(crate) const DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Default address of the control plane.
pub const DEFAULT_CONTROL_PLANE_URL: &str = "http://127.0.0.1:50051";

const MIN_POLL_INTERVAL_MAX: Duration = Duration::from_millis(10);
const MAX_POLL_INTERVAL_MAX: Duration = Duration::from_secs(300);
const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(3600);
const MAX_ECHO_TOKEN_DELAY: Duration = Duration::from_secs(10);

/// Everything a worker needs to run. Build it with [`WorkerConfig::new`] (defaults for the
/// rest) or a struct literal, then call [`WorkerConfig::validate`] (which [`crate::Worker::start`]
/// also does).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The worker's identity; written into every task it claims. Must not be nil.
    /// [`crate::Worker::start`] replaces it with the id in the worker's credential.
    pub worker_id: Uuid,
    /// Base URL of the control plane's gRPC endpoint, `http://host:port`.
    pub control_plane_url: String,
    /// DSN of a login role that is a member of `agentplane_worker`.
    pub database_url: SecretString,
    /// Credential presented to the control plane as `authorization: Bearer <token>`: a worker
    /// credential (`wkr_…`), or the enrolment token, exchanged for one at start.
    pub worker_token: SecretString,
    /// Most tasks run at once, 1 to 10,000.
    pub capacity: u32,
    /// Ceiling of the exponential backoff between idle polls of the queue.
    pub poll_interval_max: Duration,
    /// How long running tasks may keep going after shutdown starts before they are given back.
    pub shutdown_grace: Duration,
    /// Pause between two tokens of the built-in echo provider.
    pub echo_token_delay: Duration,
    /// Address of the Prometheus endpoint (`GET /metrics`); `None` serves none.
    pub metrics_addr: Option<SocketAddr>,
    /// Labels the worker advertises; it claims only tasks whose agent requires a subset.
    pub labels: WorkerLabels,
    /// The model vendors this worker calls (API keys, base URLs, timeouts, prices); echo is
    /// always there.
    pub providers: ProviderSettings,
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The worker id is the nil UUID.
    #[error("worker id must not be the nil uuid")]
    NilWorkerId,
    /// The control-plane URL does not parse or is not plain http.
    #[error("control plane url {url:?} is invalid: {reason}")]
    ControlPlaneUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The database URL does not parse.
    #[error("database url is invalid: {0}")]
    DatabaseUrl(#[source] sqlx::Error),
    /// The worker token is empty or cannot travel in a gRPC header.
    #[error("worker token must be non-empty visible ascii")]
    WorkerToken,
    /// Capacity is out of range.
    #[error("capacity must be between 1 and {MAX_CAPACITY}, got {0}")]
    Capacity(u32),
    /// A duration is out of range.
    #[error("{name} must be between {min:?} and {max:?}, got {value:?}")]
    Duration {
        /// Which setting.
        name: &'static str,
        /// The value given.
        value: Duration,
        /// Smallest accepted value.
        min: Duration,
        /// Largest accepted value.
        max: Duration,
    },
    /// A provider setting cannot work.
    #[error(transparent)]
    Providers(#[from] SettingsError),
}

impl WorkerConfig {
    /// A config with a fresh UUID v7 worker id and default values for everything but the
    /// two secrets.
    pub fn new(database_url: SecretString, worker_token: SecretString) -> Self {
        Self {
            worker_id: Uuid::now_v7(),
            control_plane_url: DEFAULT_CONTROL_PLANE_URL.to_owned(),
            database_url,
            worker_token,
            capacity: DEFAULT_CAPACITY,
            poll_interval_max: DEFAULT_POLL_INTERVAL_MAX,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            echo_token_delay: DEFAULT_ECHO_TOKEN_DELAY,
            metrics_addr: None,
            labels: WorkerLabels::default(),
            providers: ProviderSettings::default(),
        }
    }

    /// Checks every setting; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.worker_id.is_nil() {
            return Err(ConfigError::NilWorkerId);
        }
        validate_control_plane_url(&self.control_plane_url)?;
        self.database_options()?;
        self.authorization_value()?;
        if !(1..=MAX_CAPACITY).contains(&self.capacity) {
            return Err(ConfigError::Capacity(self.capacity));
        }
        check_duration(
            "poll_interval_max",
            self.poll_interval_max,
            MIN_POLL_INTERVAL_MAX,
            MAX_POLL_INTERVAL_MAX,
        )?;
        check_duration(
            "shutdown_grace",
            self.shutdown_grace,
            Duration::ZERO,
            MAX_SHUTDOWN_GRACE,
        )?;
        check_duration(
            "echo_token_delay",
            self.echo_token_delay,
            Duration::ZERO,
            MAX_ECHO_TOKEN_DELAY,
        )?;
        self.providers.validate()?;
        Ok(())
    }

    /// The database connection options, tagged with this binary's `application_name`, with
    /// UTC sessions and the session timeouts ([`DEFAULT_STATEMENT_TIMEOUT`],
    /// [`DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT`]) unless the URL's own `options` set them.
    ///
    /// The timeouts are set per connection because a role setting of the
    /// `agentplane_worker` group role would not reach its member login roles.
    pub(crate) fn database_options(&self) -> Result<PgConnectOptions, ConfigError> {
        let url = self.database_url.expose_secret();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::DatabaseUrl(sqlx::Error::Configuration(
                "the url must start with postgres:// or postgresql://".into(),
            )));
        }
        let options = PgConnectOptions::from_str(url).map_err(ConfigError::DatabaseUrl)?;
        let own = options.get_options().unwrap_or_default().to_owned();
        let timeouts = [
            ("statement_timeout", DEFAULT_STATEMENT_TIMEOUT),
            (
                "idle_in_transaction_session_timeout",
                DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT,
            ),
        ]
        .into_iter()
        .filter(|(name, _)| !own.contains(name))
        .map(|(name, timeout)| (name, format!("{}ms", timeout.as_millis())));
        Ok(options
            .application_name("agentplane-worker")
            .options([("timezone", "UTC")])
            .options(timeouts))
    }

    /// `user@host:port/database` of the database URL: safe to log, no password.
    pub fn database_summary(&self) -> String {
        match self.database_options() {
            Ok(options) => format!(
                "{}@{}:{}/{}",
                options.get_username(),
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or_default(),
            ),
            Err(_) => "<invalid database url>".to_owned(),
        }
    }

    /// The `authorization` metadata value sent to the control plane.
    pub(crate) fn authorization_value(
        &self,
    ) -> Result<MetadataValue<tonic::metadata::Ascii>, ConfigError> {
        let token = self.worker_token.expose_secret();
        if token.is_empty() || !token.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(ConfigError::WorkerToken);
        }
        let mut value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| ConfigError::WorkerToken)?;
        value.set_sensitive(true);
        Ok(value)
    }
}

fn validate_control_plane_url(url: &str) -> Result<(), ConfigError> {
    let invalid = |reason: &str| ConfigError::ControlPlaneUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: tonic::transport::Uri = url.parse().map_err(|_| invalid("not a url"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(invalid("https is not supported by this build; use http")),
        _ => return Err(invalid("the scheme must be http")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("the host is missing"));
    }
    Ok(())
}

fn check_duration(
    name: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::Duration {
            name,
            value,
            min,
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WorkerConfig {
        WorkerConfig::new(
            SecretString::from("postgres://worker:hunter2@db.internal:5433/agentplane"),
            SecretString::from("token-123"),
        )
    }

    #[test]
    fn defaults_are_valid() {
        assert!(config().validate().is_ok());
    }

    #[test]
    fn database_summary_leaves_out_the_password() {
        let summary = config().database_summary();
        assert_eq!(summary, "worker@db.internal:5433/agentplane");
        assert!(!summary.contains("hunter2"));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let mut config = config();
        config.providers.openai = crate::provider::Endpoint::public(
            crate::provider::Provider::OpenAi,
            SecretString::from("sk-live-key-456"),
        );
        assert!(config.validate().is_ok());
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"));
        assert!(!printed.contains("token-123"));
        assert!(!printed.contains("sk-live-key-456"), "{printed}");
    }

    #[test]
    fn sessions_get_timeouts_unless_the_url_sets_its_own() {
        let options = config().database_options().expect("a valid url");
        let set = options.get_options().unwrap_or_default();
        assert!(set.contains("statement_timeout=30000ms"), "{set}");
        assert!(
            set.contains("idle_in_transaction_session_timeout=10000ms"),
            "{set}"
        );
        let mut own = config();
        own.database_url = SecretString::from(
            "postgres://worker@db/ap?options=-c%20statement_timeout%3D5min&options[idle_in_transaction_session_timeout]=1min",
        );
        let options = own.database_options().expect("a valid url");
        let set = options.get_options().unwrap_or_default();
        assert!(set.contains("statement_timeout=5min"), "{set}");
        assert!(
            set.contains("idle_in_transaction_session_timeout=1min"),
            "{set}"
        );
        assert!(
            !set.contains("30000ms") && !set.contains("10000ms"),
            "{set}"
        );
    }

    #[test]
    fn rejects_out_of_range_values() {
        let mut bad = config();
        bad.capacity = 0;
        assert!(matches!(bad.validate(), Err(ConfigError::Capacity(0))));
        let mut bad = config();
        bad.capacity = MAX_CAPACITY + 1;
        assert!(bad.validate().is_err());
        let mut bad = config();
        bad.worker_id = Uuid::nil();
        assert!(matches!(bad.validate(), Err(ConfigError::NilWorkerId)));
        let mut bad = config();
        bad.poll_interval_max = Duration::ZERO;
        assert!(matches!(bad.validate(), Err(ConfigError::Duration { .. })));
    }

    #[test]
    fn rejects_bad_urls_and_tokens() {
        for url in ["", "127.0.0.1:50051", "https://cp:443", "ftp://cp"] {
            let mut bad = config();
            bad.control_plane_url = url.to_owned();
            assert!(
                matches!(bad.validate(), Err(ConfigError::ControlPlaneUrl { .. })),
                "{url}"
            );
        }
        for token in ["", "has space", "new\nline"] {
            let mut bad = config();
            bad.worker_token = SecretString::from(token);
            assert!(matches!(bad.validate(), Err(ConfigError::WorkerToken)));
        }
        let mut bad = config();
        bad.database_url = SecretString::from("mysql://nope");
        assert!(matches!(bad.validate(), Err(ConfigError::DatabaseUrl(_))));
    }
}
