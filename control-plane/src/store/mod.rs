//! Postgres access. Workspace-owned tables are reached only through [`TenantTx`]: a
//! transaction that has set `app.tenant_id` (so row-level security confines it to one
//! workspace) and that binds the same tenant into every query it runs.

mod agents;
mod api_keys;
mod attempt_events;
mod attempts;
mod events;
mod live_output;
mod members;
mod queue_stats;
mod results;
mod retention;
mod retry;
mod steps;
mod task_batch;
mod tasks;
mod tenant;
mod tool_outputs;
mod worker_credentials;
mod workers;
mod workspaces;

use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub use agents::AgentRow;
pub use api_keys::{ApiKeyCredential, ApiKeyRow, NewApiKey};
pub use attempt_events::AttemptEvent;
pub use attempts::LeaseCheck;
pub use events::{EventPage, EventRow, NewEvent};
pub use live_output::PendingDelta;
pub use members::MemberRow;
pub use queue_stats::{PRIORITY_BANDS, QueueBand};
pub use retention::Purged;
pub use tasks::{OutputChunk, TaskMessageRow, TaskRow, TaskSnapshotRow};
pub use tenant::TenantTx;
pub use worker_credentials::{WorkerCredentialRow, WorkerSecret};
pub use workspaces::WorkspaceRow;

/// What the store can fail with; translated from SQLSTATEs in one place ([`classify`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such row in this tenant (or it is soft-deleted).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A unique constraint refused the write.
    #[error("{0}")]
    AlreadyExists(String),
    /// A referenced row is missing or in the wrong state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The database refused a value as malformed.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A request field does not fit the stored state (e.g. tool outputs that do not answer
    /// the calls a task waits on).
    #[error("{0}: {1}")]
    InvalidField(&'static str, String),
    /// A statement ran past the session's `statement_timeout` and was cancelled.
    #[error("the database statement took too long")]
    Timeout,
    /// The database cannot be reached or refused the connection.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// Anything else.
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

/// SQLSTATEs the store tells apart
/// (<https://www.postgresql.org/docs/current/errcodes-appendix.html>).
mod sqlstate {
    pub(super) const UNIQUE_VIOLATION: &str = "23505";
    pub(super) const FOREIGN_KEY_VIOLATION: &str = "23503";
    pub(super) const CHECK_VIOLATION: &str = "23514";
    /// Bad text and values: NUL in text (22021, 22P05), datetime out of range (22008),
    /// string too long (22001), malformed value (22P02).
    pub(super) const BAD_INPUT: [&str; 5] = ["22021", "22P05", "22008", "22001", "22P02"];
    /// Class 08: connection exceptions.
    pub(super) const CONNECTION_EXCEPTION_CLASS: &str = "08";
    pub(super) const CANNOT_CONNECT_NOW: &str = "57P03";
    pub(super) const ADMIN_SHUTDOWN: &str = "57P01";
    pub(super) const TOO_MANY_CONNECTIONS: &str = "53300";
    /// A statement cancelled by `statement_timeout` (or a cancel request).
    pub(super) const QUERY_CANCELED: &str = "57014";
}

/// Every database error is translated by SQLSTATE here, so `?` cannot skip it.
impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        classify(error)
    }
}

fn classify(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some(sqlstate::UNIQUE_VIOLATION) => {
                let constraint = db.constraint().unwrap_or_default();
                StoreError::AlreadyExists(match constraint {
                    "agents_live_name" => "an agent with this name already exists".to_owned(),
                    "api_keys_request_id" => {
                        "an api key was already created with this request id".to_owned()
                    }
                    _ => "the resource already exists".to_owned(),
                })
            }
            Some(sqlstate::FOREIGN_KEY_VIOLATION) => {
                StoreError::FailedPrecondition("a referenced resource does not exist".to_owned())
            }
            // Bad input that validation let through.
            Some(code) if sqlstate::BAD_INPUT.contains(&code) => {
                StoreError::InvalidInput(db.message().to_owned())
            }
            // Retrying at once would only run the same long statement again.
            Some(sqlstate::QUERY_CANCELED) => StoreError::Timeout,
            Some(sqlstate::CHECK_VIOLATION) => StoreError::FailedPrecondition(format!(
                "the change violates constraint {}",
                db.constraint().unwrap_or("unknown")
            )),
            Some(code)
                if code.starts_with(sqlstate::CONNECTION_EXCEPTION_CLASS)
                    || [
                        sqlstate::CANNOT_CONNECT_NOW,
                        sqlstate::ADMIN_SHUTDOWN,
                        sqlstate::TOO_MANY_CONNECTIONS,
                    ]
                    .contains(&code) =>
            {
                StoreError::Unavailable(error)
            }
            _ => StoreError::Database(error),
        },
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            StoreError::Unavailable(error)
        }
        _ => StoreError::Database(error),
    }
}

/// Result alias of the store.
pub type StoreResult<T> = Result<T, StoreError>;

/// Pool settings.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// How long a request waits for a connection before it fails as unavailable.
    pub acquire_timeout: Duration,
    /// `application_name` reported to Postgres.
    pub application_name: String,
    /// `statement_timeout` of every session (zero turns it off); `None` keeps the server's.
    pub statement_timeout: Option<Duration>,
    /// `idle_in_transaction_session_timeout` of every session (zero turns it off); `None`
    /// keeps the server's.
    pub idle_in_transaction_timeout: Option<Duration>,
}

/// Opens a pool with UTC sessions, the given application name and session timeouts.
///
/// The timeouts are set per connection (startup options), not with `ALTER ROLE … SET` on
/// the group roles the migrations create: a role's settings apply only to sessions that log
/// in as that very role, never to the members of a group role.
pub async fn connect(url: &SecretString, config: &PoolConfig) -> Result<PgPool, sqlx::Error> {
    let timeouts = [
        ("statement_timeout", config.statement_timeout),
        (
            "idle_in_transaction_session_timeout",
            config.idle_in_transaction_timeout,
        ),
    ]
    .into_iter()
    .filter_map(|(name, timeout)| Some((name, format!("{}ms", timeout?.as_millis()))));
    let options = PgConnectOptions::from_str(url.expose_secret())?
        .application_name(&config.application_name)
        .options([("timezone", "UTC")])
        .options(timeouts);
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(options)
        .await
}

/// The embedded migrations of `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The database handle the API uses.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Wraps a pool connected as the application role.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Sends notifications now, in a transaction of their own that does not wait for the
    /// disk: news watchers should have before the change it announces is stored.
    pub async fn publish(
        &self,
        notifications: &[agentplane_core::notify::Notification],
    ) -> StoreResult<()> {
        Ok(agentplane_core::notify::publish_now(&self.pool, notifications).await?)
    }

    /// Answers whether the database accepts queries.
    pub async fn probe(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

/// The workspace tables whose row-level security must be enabled and forced: tenant
/// isolation rests on it, and so does the worker role's trigger (its condition,
/// `app_acting_as_worker()`, reads `row_security_active(tasks)`).
const FORCED_RLS_TABLES: &[&str] = &[
    "agents",
    "tasks",
    "task_messages",
    "task_output_chunks",
    "usage_records",
    "events",
];

/// Fails unless every workspace table has row-level security enabled and forced.
pub async fn check_row_security(pool: &PgPool) -> Result<(), String> {
    let off: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c \
         WHERE c.relname = ANY($1) AND c.relkind = 'r' \
           AND c.relnamespace = to_regnamespace(current_schema())::oid \
           AND NOT (c.relrowsecurity AND c.relforcerowsecurity) \
         ORDER BY 1",
    )
    .bind(FORCED_RLS_TABLES)
    .fetch_all(pool)
    .await
    .map_err(|error| format!("reading the tables' row-level security: {error}"))?;
    if off.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "row-level security is not enabled and forced on {off:?}: tenant isolation and the \
             worker role's restrictions depend on it (ALTER TABLE ... ENABLE ROW LEVEL \
             SECURITY, ... FORCE ROW LEVEL SECURITY)"
        ))
    }
}
