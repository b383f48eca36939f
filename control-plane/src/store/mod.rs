//! Postgres access. Workspace-owned tables are reached only through [`TenantTx`]: a
//! transaction that has set `app.tenant_id` (so row-level security confines it to one
//! workspace) and that binds the same tenant into every query it runs.

mod agents;
mod events;
mod tasks;
mod workers;
mod workspaces;

use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

pub use agents::AgentRow;
pub use events::{EventRow, NewEvent};
pub use tasks::{
    LeaseCheck, ModelCallRecord, OutputChunk, ResultOutcome, TaskMessageRow, TaskRow,
    TaskSnapshotRow,
};
pub use workspaces::WorkspaceRow;

use crate::ids::TenantId;

/// Channels the control plane and the workers notify on. Payloads are small JSON objects.
pub mod channel {
    /// A task became claimable (payload empty). Workers listen.
    pub const TASK_READY: &str = "agentplane_task_ready";
    /// A task changed status: `{"t": tenant, "k": task}`.
    pub const TASK_STATE: &str = "agentplane_task_state";
    /// Output of a running attempt: `{"t", "k", "a": attempt, "i": index, "x": text?}`.
    pub const TASK_OUTPUT: &str = "agentplane_task_output";
    /// A running attempt must stop: `{"t", "k", "a", "w": worker}`.
    pub const TASK_CANCEL: &str = "agentplane_task_cancel";
    /// Events were appended for a tenant: `{"t": tenant}`.
    pub const EVENTS: &str = "agentplane_events";
}

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
    /// The database cannot be reached or refused the connection.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// Anything else.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Translates a database error by SQLSTATE.
pub fn classify(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // unique_violation
            Some("23505") => {
                let constraint = db.constraint().unwrap_or_default();
                StoreError::AlreadyExists(match constraint {
                    "agents_live_name" => "an agent with this name already exists".to_owned(),
                    _ => "the resource already exists".to_owned(),
                })
            }
            // foreign_key_violation
            Some("23503") => {
                StoreError::FailedPrecondition("a referenced resource does not exist".to_owned())
            }
            // Text PostgreSQL cannot store (NUL), times out of its range, values too long:
            // bad input that validation let through.
            Some("22021" | "22P05" | "22008" | "22001" | "22P02") => {
                StoreError::InvalidInput(db.message().to_owned())
            }
            // check_violation
            Some("23514") => StoreError::FailedPrecondition(format!(
                "the change violates constraint {}",
                db.constraint().unwrap_or("unknown")
            )),
            // connection exceptions, cannot_connect_now, too_many_connections, admin shutdown
            Some(code) if code.starts_with("08") || code == "57P03" || code == "53300" => {
                StoreError::Unavailable(error)
            }
            Some("57P01") => StoreError::Unavailable(error),
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

    /// The pool, for the listener and health probes.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Opens a transaction scoped to a live workspace; NOT_FOUND if the workspace does not
    /// exist or is deleted.
    pub async fn tenant(&self, tenant: TenantId) -> StoreResult<TenantTx> {
        let mut tx = self.tenant_unchecked(tenant).await?;
        let live: Option<bool> =
            sqlx::query_scalar("SELECT deleted_at IS NULL FROM workspaces WHERE id = $1")
                .bind(tenant)
                .fetch_optional(&mut *tx.tx)
                .await
                .map_err(classify)?;
        match live {
            Some(true) => Ok(tx),
            _ => Err(StoreError::NotFound("workspace")),
        }
    }

    /// Opens a tenant-scoped transaction without checking that the workspace is live: for
    /// the worker channel, whose results must land even while a workspace is being deleted.
    pub async fn tenant_unchecked(&self, tenant: TenantId) -> StoreResult<TenantTx> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        Ok(TenantTx { tx, tenant })
    }

    /// Answers whether the database accepts queries.
    pub async fn probe(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

/// A transaction confined to one workspace. Every method binds [`TenantTx::tenant`].
pub struct TenantTx {
    tx: Transaction<'static, Postgres>,
    tenant: TenantId,
}

impl TenantTx {
    /// The workspace this transaction is confined to.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// Commits the transaction; notifications sent in it are delivered now.
    pub async fn commit(self) -> StoreResult<()> {
        self.tx.commit().await.map_err(classify)
    }

    /// Queues a notification, delivered when the transaction commits.
    pub async fn notify(&mut self, channel: &str, payload: &serde_json::Value) -> StoreResult<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload.to_string())
            .execute(&mut *self.tx)
            .await
            .map_err(classify)?;
        Ok(())
    }
}
