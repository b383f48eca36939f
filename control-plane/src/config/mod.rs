//! Command line and configuration. Every setting is a flag with an `AGENTPLANE_*`
//! environment variable; `validate` turns the parsed flags into a [`Config`].

use crate::auth::jwt::{JwtConfig, JwtKeySource, JwtVerifier};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;

use crate::auth::Credentials;
use crate::retention::TaskRetention;
use crate::store::PoolConfig;
use crate::telemetry::LogFormat;

/// Admin token used in local-dev mode when none is configured.
pub const DEV_ADMIN_TOKEN: &str = "dev-admin-token";
/// Worker token used in local-dev mode when none is configured.
pub const DEV_WORKER_TOKEN: &str = "dev-worker-token";
/// Shortest token accepted outside local-dev mode.
const MIN_TOKEN_LEN: usize = 16;
/// Longest database session timeout accepted (a day).
const MAX_DB_TIMEOUT_SECONDS: u64 = 24 * 60 * 60;
/// Longest task retention accepted (a hundred years; `off` keeps tasks forever).
const MAX_TASK_RETENTION_SECONDS: u64 = 36_500 * 24 * 60 * 60;

/// agentplane control plane.
#[derive(Debug, Parser)]
#[command(name = "agentplane-control-plane", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "AGENTPLANE_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: LogFormat,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (applies pending migrations first when a migration URL is set).
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations and exit.
    Migrate(MigrateArgs),
    /// Create a demo workspace, agent and task on a running server and stream the answer.
    Demo(crate::demo::DemoArgs),
    /// Create a workspace and its first admin API key in the database, print them, and exit.
    Bootstrap(crate::bootstrap::BootstrapArgs),
}

/// Flags of `migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Postgres URL of a role that owns the schema (or may create it).
    #[arg(long, env = "AGENTPLANE_MIGRATE_DATABASE_URL", hide_env_values = true)]
    pub migrate_database_url: SecretString,
}

/// Flags of `serve`. Secrets are [`SecretString`]s, so printing the flags shows none.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on for gRPC (port 0 picks a free port).
    #[arg(
        long,
        env = "AGENTPLANE_LISTEN_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub listen_addr: SocketAddr,
    /// Postgres URL of a login role that is a member of `agentplane_app`.
    #[arg(long, env = "AGENTPLANE_DATABASE_URL", hide_env_values = true)]
    pub database_url: SecretString,
    /// Postgres URL of the schema owner; when set, pending migrations are applied at start.
    #[arg(long, env = "AGENTPLANE_MIGRATE_DATABASE_URL", hide_env_values = true)]
    pub migrate_database_url: Option<SecretString>,
    /// Bearer token of the platform admin (at least 16 characters).
    #[arg(long, env = "AGENTPLANE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<SecretString>,
    /// Bearer token workers present (at least 16 characters).
    #[arg(long, env = "AGENTPLANE_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<SecretString>,
    /// Local-dev mode: missing tokens default to well-known dev values. Never in production.
    #[arg(long, env = "AGENTPLANE_DEV_MODE")]
    pub dev_mode: bool,
    /// Most database connections.
    #[arg(long, env = "AGENTPLANE_DB_MAX_CONNECTIONS", default_value_t = 20)]
    pub db_max_connections: u32,
    /// Seconds a request waits for a database connection.
    #[arg(
        long,
        env = "AGENTPLANE_DB_ACQUIRE_TIMEOUT_SECONDS",
        default_value_t = 5
    )]
    pub db_acquire_timeout_seconds: u64,
    /// Seconds a database statement may run before the server cancels it (0: no limit).
    #[arg(
        long,
        env = "AGENTPLANE_DB_STATEMENT_TIMEOUT_SECONDS",
        default_value_t = 30
    )]
    pub db_statement_timeout_seconds: u64,
    /// Seconds a database transaction may sit idle before the server ends its session (0: no
    /// limit). An open transaction holds back every event stream, so keep this short.
    #[arg(
        long,
        env = "AGENTPLANE_DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    pub db_idle_in_transaction_timeout_seconds: u64,
    /// Seconds a task lease lasts after each worker heartbeat.
    #[arg(long, env = "AGENTPLANE_LEASE_SECONDS", default_value_t = 30)]
    pub lease_seconds: u64,
    /// Seconds streams and in-flight calls get to finish on shutdown.
    #[arg(long, env = "AGENTPLANE_SHUTDOWN_GRACE_SECONDS", default_value_t = 20)]
    pub shutdown_grace_seconds: u64,
    /// Most streams (WatchTask, WatchEvents, worker sessions) this process holds open; one
    /// more is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "AGENTPLANE_MAX_STREAMS", default_value_t = 10_000)]
    pub max_streams: u64,
    /// Users' JWTs: the `iss` they must carry. Setting it turns user sign-in on (with
    /// --jwt-audience and one of --jwt-jwks-url, --jwt-hs256-secret or --jwt-public-key-file).
    #[arg(long, env = "AGENTPLANE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Users' JWTs: the `aud` they must carry.
    #[arg(long, env = "AGENTPLANE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Users' JWTs are HS256 with this shared secret (at least 32 bytes).
    #[arg(long, env = "AGENTPLANE_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<SecretString>,
    /// Users' JWTs are signed by the key whose PEM public key (RSA → RS256, EC P-256 →
    /// ES256, Ed25519 → EdDSA) is in this file.
    #[arg(long, env = "AGENTPLANE_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,
    /// Users' JWTs are signed by keys of the identity provider's JWKS at this URL (https, or
    /// http on localhost); RS256, ES256 and EdDSA keys are taken, cached by kid.
    #[arg(long, env = "AGENTPLANE_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// Address of the Prometheus endpoint (`GET /metrics`); unset serves none.
    #[arg(long, env = "AGENTPLANE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// How long finished tasks (succeeded, failed, canceled) are kept after they end, with
    /// their transcripts: a number with s, m, h or d (`30d`), or `off` to keep them forever.
    /// Events and usage records are kept regardless (see docs/operations.md, "Retention").
    #[arg(long, env = "AGENTPLANE_TASK_RETENTION", default_value = "30d")]
    pub task_retention: TaskRetention,
    /// Seconds between retention passes (each replica runs its own; they skip each other's
    /// rows).
    #[arg(
        long,
        env = "AGENTPLANE_TASK_RETENTION_INTERVAL_SECONDS",
        default_value_t = 300
    )]
    pub task_retention_interval_seconds: u64,
    /// Seconds of silence after which the notification listener probes itself, and is
    /// replaced if the probe is not heard within as long again (a connection whose server or
    /// network vanished fails no read; live streams would wait on it).
    #[arg(long, env = "AGENTPLANE_LISTENER_PROBE_SECONDS", default_value_t = 10)]
    pub listener_probe_seconds: u64,
}

/// Validated server configuration. Its `Debug` shows database URLs without their password
/// and no token.
#[derive(Clone)]
pub struct Config {
    /// gRPC listen address.
    pub listen_addr: SocketAddr,
    /// Application-role database URL.
    pub database_url: SecretString,
    /// Owner database URL for migrations at start.
    pub migrate_database_url: Option<SecretString>,
    /// Accepted credentials.
    pub credentials: Credentials,
    /// Pool settings.
    pub pool: PoolConfig,
    /// Lease length.
    pub lease_duration: Duration,
    /// Heartbeat interval told to workers (a third of the lease).
    pub heartbeat_interval: Duration,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Most open streams.
    pub max_streams: usize,
    /// How users' JWTs are verified; `None` when user sign-in is off.
    pub jwt: Option<JwtConfig>,
    /// Prometheus endpoint address, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// How long finished tasks are kept; `None` keeps them forever.
    pub task_retention: Option<Duration>,
    /// Time between retention passes.
    pub task_retention_interval: Duration,
    /// Silence after which the notification listener probes itself.
    pub listener_probe_interval: Duration,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen_addr", &self.listen_addr)
            .field("database", &database_summary(&self.database_url))
            .field(
                "migrate_database",
                &self.migrate_database_url.as_ref().map(database_summary),
            )
            .field("credentials", &"[REDACTED]")
            .field("pool", &self.pool)
            .field("lease_duration", &self.lease_duration)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("max_streams", &self.max_streams)
            .field(
                "jwt_issuer",
                &self.jwt.as_ref().map(|jwt| jwt.issuer.as_str()),
            )
            .field("metrics_addr", &self.metrics_addr)
            .field("task_retention", &TaskRetention(self.task_retention))
            .field("task_retention_interval", &self.task_retention_interval)
            .field("listener_probe_interval", &self.listener_probe_interval)
            .finish()
    }
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The JWT settings are incomplete or contradictory.
    #[error(
        "user sign-in needs --jwt-issuer, --jwt-audience and exactly one of --jwt-jwks-url, --jwt-hs256-secret (at least 32 bytes) or --jwt-public-key-file: {0}"
    )]
    Jwt(&'static str),
    /// The JWT public key file cannot be read or is not a supported public key.
    #[error("--jwt-public-key-file: {0}")]
    JwtKey(String),
    /// A token is missing outside local-dev mode.
    #[error("{flag} is required (or start with --dev-mode for local development)")]
    MissingToken {
        /// The flag.
        flag: &'static str,
    },
    /// A token is too short to be a secret.
    #[error("{flag} must be at least {MIN_TOKEN_LEN} characters")]
    ShortToken {
        /// The flag.
        flag: &'static str,
    },
    /// The admin and the worker token are the same, so a worker could act as admin.
    #[error("--admin-token and --worker-token must differ")]
    SameTokens,
    /// A database URL does not parse (the error never quotes the URL).
    #[error("{flag} is not a valid postgres:// url")]
    DatabaseUrl {
        /// The flag.
        flag: &'static str,
        /// Why it does not parse.
        #[source]
        source: sqlx::Error,
    },
    /// A number is out of range.
    #[error("{flag} must be {min} to {max}, got {value}")]
    OutOfRange {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: u64,
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
}

impl ServeArgs {
    /// Checks the flags and builds the configuration.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let admin_token = token(
            self.admin_token.as_ref(),
            DEV_ADMIN_TOKEN,
            "--admin-token",
            self.dev_mode,
        )?;
        let worker_token = token(
            self.worker_token.as_ref(),
            DEV_WORKER_TOKEN,
            "--worker-token",
            self.dev_mode,
        )?;
        if admin_token.expose_secret() == worker_token.expose_secret() {
            return Err(ConfigError::SameTokens);
        }
        check_database_url("--database-url", &self.database_url)?;
        if let Some(url) = &self.migrate_database_url {
            check_database_url("--migrate-database-url", url)?;
        }
        check_range(
            "--db-max-connections",
            self.db_max_connections.into(),
            1,
            1000,
        )?;
        check_range("--lease-seconds", self.lease_seconds, 3, 3600)?;
        check_range(
            "--db-statement-timeout-seconds",
            self.db_statement_timeout_seconds,
            0,
            MAX_DB_TIMEOUT_SECONDS,
        )?;
        check_range(
            "--db-idle-in-transaction-timeout-seconds",
            self.db_idle_in_transaction_timeout_seconds,
            0,
            MAX_DB_TIMEOUT_SECONDS,
        )?;
        check_range("--max-streams", self.max_streams, 1, 1_000_000)?;
        if let TaskRetention(Some(keep)) = self.task_retention {
            check_range(
                "--task-retention (seconds)",
                keep.as_secs(),
                60,
                MAX_TASK_RETENTION_SECONDS,
            )?;
        }
        check_range(
            "--task-retention-interval-seconds",
            self.task_retention_interval_seconds,
            1,
            MAX_DB_TIMEOUT_SECONDS,
        )?;
        check_range(
            "--listener-probe-seconds",
            self.listener_probe_seconds,
            1,
            3600,
        )?;
        let jwt = jwt_config(
            self.jwt_issuer,
            self.jwt_audience,
            self.jwt_hs256_secret,
            self.jwt_public_key_file,
            self.jwt_jwks_url,
        )?;
        let lease_duration = Duration::from_secs(self.lease_seconds);
        Ok(Config {
            jwt,
            listen_addr: self.listen_addr,
            database_url: self.database_url,
            migrate_database_url: self.migrate_database_url,
            credentials: Credentials {
                admin_token,
                worker_token,
            },
            pool: PoolConfig {
                max_connections: self.db_max_connections,
                acquire_timeout: Duration::from_secs(self.db_acquire_timeout_seconds.max(1)),
                application_name: "agentplane-control-plane".to_owned(),
                statement_timeout: Some(Duration::from_secs(self.db_statement_timeout_seconds)),
                idle_in_transaction_timeout: Some(Duration::from_secs(
                    self.db_idle_in_transaction_timeout_seconds,
                )),
            },
            lease_duration,
            heartbeat_interval: lease_duration / 3,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_seconds),
            max_streams: usize::try_from(self.max_streams).unwrap_or(usize::MAX),
            metrics_addr: self.metrics_addr,
            task_retention: self.task_retention.0,
            task_retention_interval: Duration::from_secs(self.task_retention_interval_seconds),
            listener_probe_interval: Duration::from_secs(self.listener_probe_seconds),
        })
    }
}

/// The JWT settings, checked: all or nothing, exactly one key source, a usable key.
fn jwt_config(
    issuer: Option<String>,
    audience: Option<String>,
    secret: Option<SecretString>,
    key_file: Option<std::path::PathBuf>,
    jwks_url: Option<String>,
) -> Result<Option<JwtConfig>, ConfigError> {
    let keys = match (secret, key_file, jwks_url) {
        (None, None, None) => None,
        (Some(secret), None, None) if secret.expose_secret().len() < 32 => {
            return Err(ConfigError::Jwt(
                "the HS256 secret is shorter than 32 bytes",
            ));
        }
        (Some(secret), None, None) => Some(JwtKeySource::Hs256(secret)),
        (None, Some(path), None) => Some(JwtKeySource::PublicKeyPem(
            std::fs::read_to_string(&path)
                .map_err(|error| ConfigError::JwtKey(format!("{}: {error}", path.display())))?,
        )),
        (None, None, Some(url)) => Some(JwtKeySource::JwksUrl(url)),
        _ => return Err(ConfigError::Jwt("more than one key source is set")),
    };
    let config = match (issuer, audience, keys) {
        (None, None, None) => return Ok(None),
        (Some(issuer), Some(audience), Some(keys))
            if !issuer.is_empty() && !audience.is_empty() =>
        {
            JwtConfig {
                issuer,
                audience,
                keys,
            }
        }
        _ => return Err(ConfigError::Jwt("some are missing")),
    };
    // Fail at start, not at the first sign-in, on a key that cannot be used.
    JwtVerifier::new(&config).map_err(|error| ConfigError::JwtKey(error.to_string()))?;
    Ok(Some(config))
}

/// A token as configured, or the dev default in local-dev mode.
fn token(
    value: Option<&SecretString>,
    dev_default: &str,
    flag: &'static str,
    dev_mode: bool,
) -> Result<SecretString, ConfigError> {
    match value {
        Some(token) if dev_mode || token.expose_secret().len() >= MIN_TOKEN_LEN => {
            Ok(token.clone())
        }
        Some(_) => Err(ConfigError::ShortToken { flag }),
        None if dev_mode => Ok(SecretString::from(dev_default)),
        None => Err(ConfigError::MissingToken { flag }),
    }
}

fn check_database_url(flag: &'static str, url: &SecretString) -> Result<(), ConfigError> {
    database_options(url)
        .map(|_| ())
        .map_err(|source| ConfigError::DatabaseUrl { flag, source })
}

fn check_range(flag: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            flag,
            value,
            min,
            max,
        })
    }
}

/// The connection options of a `postgres://` URL.
fn database_options(url: &SecretString) -> Result<PgConnectOptions, sqlx::Error> {
    let url = url.expose_secret();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(sqlx::Error::Configuration(
            "the url must start with postgres:// or postgresql://".into(),
        ));
    }
    PgConnectOptions::from_str(url)
}

/// `user@host:port/database` of a database URL: safe to log, no password.
pub fn database_summary(url: &SecretString) -> String {
    match database_options(url) {
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

#[cfg(test)]
mod tests;
