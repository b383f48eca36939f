//! Foreign-key checks deferred to COMMIT in the transactions that write a task's rows (the
//! workers' claims and reports, task creation, tool outputs): the statements both sides
//! run, so that they plan those checks alike. Why, measured: `TenantTx::check_keys_at_commit`
//! in the control plane, and migrations `20261125100000` to `…02`, which make the checks
//! deferrable.

/// Run once in the transaction, before its first checked row: the deferrable checks (an
/// event's workspace, a transcript row's or an output chunk's task) wait for COMMIT.
pub const DEFER: &str = "SET CONSTRAINTS ALL DEFERRED";

/// Run just before COMMIT: the checks then use a plan kept per connection instead of being
/// planned for every row (a transaction that plans its own statements for their parameters
/// would otherwise plan each check too), and a plan made without sequential scans, so that
/// one kept from a table that was a page long when it was planned still probes the key as
/// the table grows.
pub const PLAN_AT_COMMIT: &str = "SELECT set_config('plan_cache_mode', 'auto', true), \
                                         set_config('enable_seqscan', 'off', true)";
