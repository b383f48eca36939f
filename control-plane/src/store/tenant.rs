//! The tenant-scoped transaction: the one way the API reaches workspace tables.
//!
//! It sets `app.tenant_id` when it opens (so row-level security confines every statement to
//! one workspace), and its query builders bind the same tenant as `$1`, so a statement
//! cannot forget the tenant filter: PostgreSQL refuses a statement that does not use a bound
//! parameter. The fields are private to this module; the repositories beside it can only
//! build statements through [`TenantTx::query`] and its siblings.

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{FromRow, PgConnection, Postgres, Transaction};

use super::{Store, StoreError, StoreResult};
use crate::ids::TenantId;
use agentplane_core::key_checks;
use agentplane_core::notify::Notification;

/// A transaction confined to one workspace.
#[derive(Debug)]
pub struct TenantTx {
    tx: Transaction<'static, Postgres>,
    tenant: TenantId,
    /// Whether the deferrable foreign-key checks wait for COMMIT, planned as
    /// [`TenantTx::check_keys_at_commit`] says.
    keys_checked_at_commit: bool,
}

impl Store {
    /// Opens a transaction scoped to a live workspace; NOT_FOUND if the workspace does not
    /// exist or is deleted.
    pub async fn tenant(&self, tenant: TenantId) -> StoreResult<TenantTx> {
        let mut tx = self.tenant_unchecked(tenant).await?;
        let live: Option<bool> = tx
            .query_scalar("SELECT deleted_at IS NULL FROM workspaces WHERE id = $1")
            .fetch_optional(tx.executor())
            .await?;
        match live {
            Some(true) => Ok(tx),
            _ => Err(StoreError::NotFound("workspace")),
        }
    }

    /// Opens a tenant-scoped transaction without checking that the workspace is live: for
    /// the worker channel, whose results must land even while a workspace is being deleted.
    pub async fn tenant_unchecked(&self, tenant: TenantId) -> StoreResult<TenantTx> {
        self.begin_tenant(tenant, "SELECT set_config('app.tenant_id', $1, true)")
            .await
    }

    /// [`Store::tenant_unchecked`] for a worker's batch of reports, whose statements are
    /// planned for their parameters every time (`plan_cache_mode = force_custom_plan`): a
    /// generic plan cached while the tables were small (a fresh deployment) kept scanning a
    /// workspace's whole task list in key order as its backlog grew (measured: from 0.4 to
    /// 1.3 ms of PostgreSQL CPU per task within three 40,000-task runs), where a custom plan
    /// probes the primary key. The planning costs a fraction of that. Random page reads are
    /// costed at 1.1, as in the workers' claims (the data is in memory): fetching a batch's
    /// rows by version or key is then not costed above scanning the planner's guess of the
    /// workspace (0.5 % of the table), which is far too small for a workspace that fills it.
    /// And no JIT compilation, as in the claims: these statements run in a millisecond or
    /// less, and the scans disabled while a batch marks its tasks (`only_tid_scans`) add
    /// PostgreSQL's penalty for a disabled scan to their cost, which would otherwise set off
    /// compilation of every such statement (measured: 150 ms each, 1,500 tasks/s).
    pub async fn tenant_for_reports(&self, tenant: TenantId) -> StoreResult<TenantTx> {
        self.begin_tenant(
            tenant,
            "SELECT set_config('app.tenant_id', $1, true), \
                    set_config('plan_cache_mode', 'force_custom_plan', true), \
                    set_config('random_page_cost', '1.1', true), \
                    set_config('jit', 'off', true)",
        )
        .await
    }

    /// Begins a transaction and runs `settings`, one statement that sets the tenant (`$1`)
    /// and any other transaction-local setting.
    async fn begin_tenant(
        &self,
        tenant: TenantId,
        settings: &'static str,
    ) -> StoreResult<TenantTx> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(settings)
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await?;
        Ok(TenantTx {
            tx,
            tenant,
            keys_checked_at_commit: false,
        })
    }
}

impl TenantTx {
    /// The workspace this transaction is confined to.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// A statement with the tenant bound as `$1`; bind the rest from `$2`.
    ///
    /// The batch statements of a worker's reports (steps, usage, progress events, results)
    /// that look tasks up by key write the tenant condition as `tenant_id = (SELECT
    /// $1::uuid)`: an init plan, whose value the planner does not know.
    /// With `tenant_id = $1` a custom plan looks the workspace up in the column's statistics,
    /// and a workspace that was small or absent when `tasks` was last analyzed (a new one
    /// flooding its first tasks, for up to a minute of `autovacuum_naptime`) is costed at one
    /// row: the planner then walks its whole key range (40,000 rows, 10,000 buffers per
    /// batch) instead of probing the keys it was given. (Since `tenant_id` keeps no
    /// statistics, migration `20261124930000`, both forms are costed alike on a database
    /// migrated from scratch; the init plan also holds where old statistics remain.)
    pub(super) fn query(&self, sql: &'static str) -> Query<'static, Postgres, PgArguments> {
        sqlx::query(sql).bind(self.tenant)
    }

    /// A row-returning statement with the tenant bound as `$1`.
    pub(super) fn query_as<T>(
        &self,
        sql: &'static str,
    ) -> QueryAs<'static, Postgres, T, PgArguments>
    where
        T: for<'r> FromRow<'r, PgRow>,
    {
        sqlx::query_as(sql).bind(self.tenant)
    }

    /// A statement returning one column, with the tenant bound as `$1`.
    pub(super) fn query_scalar<T>(
        &self,
        sql: &'static str,
    ) -> QueryScalar<'static, Postgres, T, PgArguments>
    where
        (T,): for<'r> FromRow<'r, PgRow>,
    {
        sqlx::query_scalar(sql).bind(self.tenant)
    }

    /// Where the statements built above run.
    pub(super) fn executor(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Defers the foreign-key checks of the rows a task writes (its events, its transcript
    /// and its output chunks, migrations `20261125100000` to `…02`) to COMMIT, where
    /// [`TenantTx::commit`] has them use a plan kept per connection, made without
    /// sequential scans. Every such row is checked, as before, only later.
    ///
    /// PostgreSQL runs each check as a statement of its own (`SELECT 1 FROM tasks WHERE
    /// tenant_id = $1 AND id = $2 FOR KEY SHARE`), through the plan cache, so it follows
    /// `plan_cache_mode`: in the worker's reports, which plan their own statements for their
    /// parameters, each of a task's four checked rows was planned again, 7 to 16 µs each, a
    /// fifth of PostgreSQL's time per task. A kept plan is made from the table as it is at
    /// that moment: one made while `tasks` is a page long, with sequential scans allowed,
    /// scans it whole for every check until the next ANALYZE of `tasks` (measured: 2 million
    /// rows read to create 2,000 tasks). So every path that writes transcript rows defers
    /// its checks and plans them this way; what still checks at the statement, with
    /// sequential scans allowed, is the workspace of an event written by any other API call,
    /// a table of a page or so when such a plan is made. Idempotent.
    pub async fn check_keys_at_commit(&mut self) -> StoreResult<()> {
        if !self.keys_checked_at_commit {
            sqlx::raw_sql(key_checks::DEFER)
                .execute(&mut *self.tx)
                .await?;
            self.keys_checked_at_commit = true;
        }
        Ok(())
    }

    /// Sets how the deferred key checks are planned, if this transaction deferred them: the
    /// last statement before COMMIT. [`TenantTx::commit`] runs it if the caller has not; a
    /// caller that must tell a failed statement from a COMMIT of unknown outcome runs it
    /// first.
    pub async fn plan_key_checks(&mut self) -> StoreResult<()> {
        if std::mem::take(&mut self.keys_checked_at_commit) {
            sqlx::raw_sql(key_checks::PLAN_AT_COMMIT)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    /// Commits the transaction; notifications sent in it are delivered now. Deferred key
    /// checks run first ([`TenantTx::plan_key_checks`]).
    pub async fn commit(mut self) -> StoreResult<()> {
        self.plan_key_checks().await?;
        Ok(self.tx.commit().await?)
    }

    /// Queues notifications, delivered when the transaction commits, in one statement.
    pub(super) async fn notify(&mut self, notifications: &[Notification]) -> StoreResult<()> {
        Ok(agentplane_core::notify::send_all(&mut self.tx, notifications).await?)
    }
}
