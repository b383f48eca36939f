//! Command line and configuration. Every setting is a flag with an `AGENTPLANE_*`
//! environment variable; `validate` turns the parsed flags into a [`Config`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;

use crate::auth::Credentials;
use crate::store::PoolConfig;
use crate::telemetry::LogFormat;

/// Admin token used in local-dev mode when none is configured.
pub const DEV_ADMIN_TOKEN: &str = "dev-admin-token";
/// Worker token used in local-dev mode when none is configured.
pub const DEV_WORKER_TOKEN: &str = "dev-worker-token";
/// Shortest token accepted outside local-dev mode.
const MIN_TOKEN_LEN: usize = 16;

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
}

/// Flags of `migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Postgres URL of a role that owns the schema (or may create it).
    #[arg(long, env = "AGENTPLANE_MIGRATE_DATABASE_URL", hide_env_values = true)]
    pub migrate_database_url: String,
}

/// Flags of `serve`.
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
    pub database_url: String,
    /// Postgres URL of the schema owner; when set, pending migrations are applied at start.
    #[arg(long, env = "AGENTPLANE_MIGRATE_DATABASE_URL", hide_env_values = true)]
    pub migrate_database_url: Option<String>,
    /// Bearer token of the platform admin (at least 16 characters).
    #[arg(long, env = "AGENTPLANE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Bearer token workers present (at least 16 characters).
    #[arg(long, env = "AGENTPLANE_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,
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
    /// Seconds a task lease lasts after each worker heartbeat.
    #[arg(long, env = "AGENTPLANE_LEASE_SECONDS", default_value_t = 30)]
    pub lease_seconds: u64,
    /// Seconds streams and in-flight calls get to finish on shutdown.
    #[arg(long, env = "AGENTPLANE_SHUTDOWN_GRACE_SECONDS", default_value_t = 20)]
    pub shutdown_grace_seconds: u64,
}

/// Validated server configuration.
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
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting is missing or out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ServeArgs {
    /// Checks the flags and builds the configuration.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let token = |value: Option<String>, dev_default: &str, name: &str| match value {
            Some(token) if self.dev_mode || token.len() >= MIN_TOKEN_LEN => {
                Ok(SecretString::from(token))
            }
            Some(_) => Err(ConfigError::Invalid(format!(
                "{name} must be at least {MIN_TOKEN_LEN} characters"
            ))),
            None if self.dev_mode => Ok(SecretString::from(dev_default.to_owned())),
            None => Err(ConfigError::Invalid(format!(
                "{name} is required (or start with --dev-mode for local development)"
            ))),
        };
        let admin_token = token(self.admin_token.clone(), DEV_ADMIN_TOKEN, "--admin-token")?;
        let worker_token = token(
            self.worker_token.clone(),
            DEV_WORKER_TOKEN,
            "--worker-token",
        )?;
        if self.admin_token.is_some() && self.admin_token == self.worker_token {
            return Err(ConfigError::Invalid(
                "--admin-token and --worker-token must differ".to_owned(),
            ));
        }
        if !(1..=1000).contains(&self.db_max_connections) {
            return Err(ConfigError::Invalid(
                "--db-max-connections must be 1 to 1000".to_owned(),
            ));
        }
        if !(3..=3600).contains(&self.lease_seconds) {
            return Err(ConfigError::Invalid(
                "--lease-seconds must be 3 to 3600".to_owned(),
            ));
        }
        let lease_duration = Duration::from_secs(self.lease_seconds);
        Ok(Config {
            listen_addr: self.listen_addr,
            database_url: SecretString::from(self.database_url),
            migrate_database_url: self.migrate_database_url.map(SecretString::from),
            credentials: Credentials {
                admin_token,
                worker_token,
            },
            pool: PoolConfig {
                max_connections: self.db_max_connections,
                acquire_timeout: Duration::from_secs(self.db_acquire_timeout_seconds.max(1)),
                application_name: "agentplane-control-plane".to_owned(),
            },
            lease_duration,
            heartbeat_interval: lease_duration / 3,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_seconds),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            listen_addr: "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
            database_url: "postgres://localhost/x".to_owned(),
            migrate_database_url: None,
            admin_token: None,
            worker_token: None,
            dev_mode: false,
            db_max_connections: 10,
            db_acquire_timeout_seconds: 5,
            lease_seconds: 30,
            shutdown_grace_seconds: 5,
        }
    }

    #[test]
    fn refuses_to_start_without_tokens_outside_dev_mode() {
        assert!(args().validate().is_err());
        assert!(
            ServeArgs {
                dev_mode: true,
                ..args()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn refuses_short_or_equal_tokens() {
        let short = ServeArgs {
            admin_token: Some("short".into()),
            worker_token: Some("w".repeat(20)),
            ..args()
        };
        assert!(short.validate().is_err());
        let same = ServeArgs {
            admin_token: Some("a".repeat(20)),
            worker_token: Some("a".repeat(20)),
            ..args()
        };
        assert!(same.validate().is_err());
        let good = ServeArgs {
            admin_token: Some("a".repeat(20)),
            worker_token: Some("w".repeat(20)),
            ..args()
        };
        assert!(good.validate().is_ok());
    }
}
