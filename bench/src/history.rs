//! `history`: does finished history slow the queue? Processes N tasks on the database as it
//! is (empty, on a fresh system), then seeds M finished tasks (1,000,000 by default) and
//! processes N tasks again, and reports both processing rates and their ratio. The target
//! (issue #13) is the second within 20 % of the first.
//!
//! The processing runs go through the public API only, as `process` does (BatchCreateTasks
//! of 1,000, then the drain from the first claim to the last result). The seeding does not:
//! a million tasks through the engine would take hours and measure nothing, so it writes
//! the rows the engine would have left behind straight into PostgreSQL, through
//! `--database-url` as the control plane's application role (row-level security holds; the
//! rows go into the seed run's own workspace).

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use sqlx::{Connection as _, PgConnection};
use tokio::time::Instant;

use crate::api::{Api, Target};
use crate::cli::{Common, HistoryArgs};
use crate::create::create_tasks;
use crate::outcome::Outcome;
use crate::report::Report;
use crate::stats::per_second;

/// Finished tasks written per statement while seeding.
const SEED_CHUNK: u64 = 10_000;
/// BatchCreateTasks size and calls in flight for the measured runs.
const CREATE_BATCH: u64 = 1000;
const CREATE_IN_FLIGHT: usize = 4;

/// One finished task as the engine leaves it, for `SEED_CHUNK` tasks `$4 .. $4 + $5`:
/// the task (succeeded, one attempt, its output and usage totals), its transcript (system
/// prompt, input, answer), its three events (created, started, succeeded) and one usage
/// record. Ids are UUID v7-shaped (creation time first, as the engine's are), spread over
/// the week before `$3`, so they fall inside the default 30-day retention and land in index
/// order the way real history does.
const SEED_SQL: &str = "\
WITH new AS (
    INSERT INTO tasks (tenant_id, id, agent_id, status, attempt, max_attempts, output,
                       finish_reason, input_tokens, output_tokens, request_id, run_at,
                       created_at, updated_at, started_at, ended_at)
    SELECT $1, s.id, $2, 'succeeded', 1, 3, 'You said: history', 'stop', 3, 1,
           'history-' || s.n, s.at, s.at, s.at + interval '50 ms', s.at + interval '10 ms',
           s.at + interval '50 ms'
    FROM (SELECT n, at,
                 (lpad(to_hex((extract(epoch FROM at) * 1000)::bigint), 12, '0') || '7'
                  || substr(md5(n::text), 1, 19))::uuid AS id
          FROM (SELECT n, $3::timestamptz - make_interval(secs => 604800.0 * ($6 - n) / $6) AS at
                FROM generate_series($4::bigint, $4::bigint + $5 - 1) n) t) s
    RETURNING id, created_at),
messages AS (
    INSERT INTO task_messages (tenant_id, id, task_id, position, role, content, attempt)
    SELECT $1, (substr(replace(new.id::text, '-', ''), 1, 13)
                || substr(md5(new.id::text || m.position), 1, 19))::uuid,
           new.id, m.position, m.role, m.content, m.attempt
    FROM new CROSS JOIN (VALUES (0, 'system', 'You are terse.', 0),
                                (1, 'user', 'task history', 0),
                                (2, 'assistant', 'You said: history', 1))
                        AS m(position, role, content, attempt)
    RETURNING 1),
events AS (
    INSERT INTO events (tenant_id, id, actor, action, resource_type, resource_id, data,
                        created_at)
    SELECT $1, (substr(replace(new.id::text, '-', ''), 1, 13)
                || substr(md5(new.id::text || e.action), 1, 19))::uuid,
           'bench:history', e.action, 'task', new.id, '{}', new.created_at
    FROM new CROSS JOIN (VALUES ('task.created'), ('task.started'), ('task.succeeded'))
                        AS e(action)
    RETURNING 1),
usage AS (
    INSERT INTO usage_records (tenant_id, id, task_id, attempt, step, provider, model,
                               provider_request_id, input_tokens, output_tokens,
                               cost_micros, created_at)
    SELECT $1, (substr(replace(new.id::text, '-', ''), 1, 13)
                || substr(md5(new.id::text || 'usage'), 1, 19))::uuid,
           new.id, 1, 0, 'echo', 'echo-1', new.id::text || '-1-0', 3, 1, 0, new.created_at
    FROM new
    RETURNING 1)
SELECT (SELECT count(*) FROM new), (SELECT count(*) FROM messages),
       (SELECT count(*) FROM events), (SELECT count(*) FROM usage)";

/// Runs `history` and fills `report`.
pub async fn run(
    api: &Api,
    common: &Common,
    args: &HistoryArgs,
    report: &mut Report,
) -> anyhow::Result<()> {
    report.setting("tasks", "tasks per measured run", args.tasks);
    report.setting("history", "finished tasks seeded", args.history);
    let mut db = PgConnection::connect(&args.database_url)
        .await
        .context("connecting with --database-url")?;
    let before = table_rows(&mut db).await?;
    report.result(
        "tasks_rows_before",
        "rows in tasks before the first run (estimate)",
        before,
        "",
    );

    eprintln!("run 1: {} tasks on the database as it is", args.tasks);
    let empty = measure(api, common, "history-before", args.tasks).await?;
    empty.report(report, "before", "before the seed");

    eprintln!("seeding {} finished tasks", args.history);
    let (seeded, seconds) = seed(api, &mut db, args.history).await?;
    report.result("seed_seconds", "seeding", seconds, "s");
    report.result("seeded_tasks", "finished tasks seeded", seeded, "");
    let analyzed = wait_for_analyze(&mut db, args.settle()).await?;
    report.result(
        "analyzed_after_seed",
        "tasks analyzed (autovacuum) after the seed",
        analyzed,
        "",
    );
    if !analyzed {
        report.note(
            "autovacuum had not analyzed tasks when the second run started: the planner \
             still had the statistics of the smaller table",
        );
    }
    report.result(
        "tasks_rows_after_seed",
        "rows in tasks after the seed (estimate)",
        table_rows(&mut db).await?,
        "",
    );

    eprintln!("run 2: {} tasks with the history in place", args.tasks);
    let full = measure(api, common, "history-after", args.tasks).await?;
    full.report(report, "after", "with the history");

    let ratio = match (empty.rate, full.rate) {
        (Some(empty), Some(full)) if empty > 0.0 => Some(full / empty),
        _ => None,
    };
    report.result(
        "rate_ratio",
        "processing rate with history / before",
        ratio.map(|r| (r * 1000.0).round() / 1000.0),
        "",
    );
    report.result(
        "within_20_percent",
        "within 20 % of before (target)",
        ratio.map(|r| r >= 0.8),
        "",
    );
    if before > 10_000.0 {
        report.note(
            "the tasks table was not empty before the first run: the comparison is \
             \"as it was\" against \"plus the seed\", not empty against a million",
        );
    }
    report.note(
        "the seed is written with SQL as the application role (not through the engine); both \
         runs use BatchCreateTasks of 1,000 with 4 calls in flight and time the drain from \
         the first claim to the last result; other work on the machine moves both figures",
    );
    Ok(())
}

/// What one measured run found.
struct Run {
    outcome: Outcome,
    seconds: Option<f64>,
    rate: Option<f64>,
}

impl Run {
    fn report(&self, report: &mut Report, key: &str, label: &str) {
        report.result(
            &format!("{key}_processing_seconds"),
            &format!("processing {label} (first claim → last end)"),
            self.seconds,
            "s",
        );
        report.result(
            &format!("{key}_processing_tasks_per_second"),
            &format!("processing rate {label}"),
            self.rate,
            "tasks/s",
        );
        report.result(
            &format!("{key}_ran_more_than_once"),
            &format!("  run more than once {label}"),
            self.outcome.ran_more_than_once,
            "",
        );
        report.result(
            &format!("{key}_not_succeeded"),
            &format!("  not SUCCEEDED {label}"),
            self.outcome.not_succeeded(),
            "",
        );
    }
}

/// Creates `tasks` tasks in a new workspace and waits for them all to finish.
async fn measure(api: &Api, common: &Common, name: &str, tasks: u64) -> anyhow::Result<Run> {
    let (scoped, target) = api.create_target(name).await?;
    create_tasks(&scoped, &target, tasks, CREATE_IN_FLIGHT, CREATE_BATCH).await?;
    let finished = scoped
        .wait_until_all_finished(&target, common.poll(), common.timeout())
        .await?;
    let outcome = Outcome::of(&finished);
    let window = outcome
        .last_end
        .zip(outcome.first_start)
        .and_then(|(end, start)| end.duration_since(start).ok());
    Ok(Run {
        seconds: window.map(|w| w.as_secs_f64()),
        rate: window.and_then(|w| per_second(outcome.total, w)),
        outcome,
    })
}

/// Writes `count` finished tasks into a new workspace; returns how many and the seconds it
/// took.
async fn seed(api: &Api, db: &mut PgConnection, count: u64) -> anyhow::Result<(u64, f64)> {
    let (
        _,
        Target {
            workspace_id,
            agent_id,
        },
    ) = api.create_target("history-seed").await?;
    let tenant: uuid::Uuid = workspace_id.parse().context("workspace id")?;
    let agent: uuid::Uuid = agent_id.parse().context("agent id")?;
    let now = chrono::Utc::now();
    let started = Instant::now();
    let mut seeded = 0;
    let mut next_note = Instant::now();
    while seeded < count {
        let chunk = SEED_CHUNK.min(count - seeded);
        let mut tx = db.begin().await?;
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await?;
        let (tasks, _, _, _): (i64, i64, i64, i64) = sqlx::query_as(SEED_SQL)
            .bind(tenant)
            .bind(agent)
            .bind(now)
            .bind(i64::try_from(seeded)?)
            .bind(i64::try_from(chunk)?)
            .bind(i64::try_from(count)? as f64)
            .fetch_one(&mut *tx)
            .await
            .context("seeding finished tasks")?;
        tx.commit().await?;
        seeded += u64::try_from(tasks)?;
        if Instant::now() >= next_note {
            eprintln!(
                "  {seeded} of {count} seeded ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
            next_note = Instant::now() + Duration::from_secs(15);
        }
    }
    Ok((seeded, started.elapsed().as_secs_f64()))
}

/// PostgreSQL's estimate of the rows in `tasks` (readable by any role).
async fn table_rows(db: &mut PgConnection) -> anyhow::Result<f64> {
    let rows: f32 = sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE relname = 'tasks'")
        .fetch_one(db)
        .await
        .context("reading the size of tasks")?;
    Ok(f64::from(rows.max(0.0)))
}

/// Waits (at most `settle`) until autovacuum has analyzed `tasks` since now, as it would
/// have long before a million tasks had finished in production. The application role may
/// not ANALYZE a table it does not own, so this waits for autovacuum rather than running it.
async fn wait_for_analyze(db: &mut PgConnection, settle: Duration) -> anyhow::Result<bool> {
    let since = SystemTime::now() - Duration::from_secs(1);
    let since = chrono::DateTime::<chrono::Utc>::from(since);
    let deadline = Instant::now() + settle;
    eprintln!(
        "waiting up to {} s for autovacuum to analyze tasks",
        settle.as_secs()
    );
    loop {
        let analyzed: bool = sqlx::query_scalar(
            "SELECT coalesce(greatest(last_analyze, last_autoanalyze) > $1, false) \
             FROM pg_stat_user_tables WHERE relname = 'tasks'",
        )
        .bind(since)
        .fetch_optional(&mut *db)
        .await?
        .unwrap_or(false);
        if analyzed || Instant::now() >= deadline {
            return Ok(analyzed);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
