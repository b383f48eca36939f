//! `trickle`: idle wake-up latency. Creates tasks at a fixed rate, low enough that the
//! workers are idle between tasks, and reports per task the time from the CreateTask answer
//! to a worker starting it.
//!
//! "Starting" is the task's `start_time`, which the worker's claim transaction sets from the
//! database clock (`now()`, the start of that transaction); the answer's arrival is this
//! machine's clock. With `deploy/local/up.sh` both are the same machine's clock. The claim
//! can begin before the answer reaches the client, so single values may be negative. The
//! server-side figure (`create_time` → `start_time`, both database clock) is reported too;
//! it includes the create transaction itself.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use tokio::time::Instant;

use crate::api::Api;
use crate::cli::{Common, TrickleArgs};
use crate::create::{Created, create_one};
use crate::outcome::{Outcome, system_time};
use crate::report::Report;
use crate::stats::{LatencySummary, due_offset, millis_between};

/// Most paced calls waiting for their turn or in flight at once. Waiting is cheap (a
/// timer), and a bound keeps a stuck system from piling up calls.
const MAX_OUTSTANDING: usize = 256;

/// Runs `trickle` and fills `report`.
pub async fn run(
    api: &Api,
    common: &Common,
    args: &TrickleArgs,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (scoped, target) = api.create_target("trickle").await?;
    let api = &scoped;
    report.setting("workspace_id", "workspace", target.workspace_id.as_str());
    report.setting("tasks", "tasks", args.tasks);
    report.setting("rate", "tasks created per second", args.rate);

    eprintln!("creating {} tasks at {} per second", args.tasks, args.rate);
    let start = Instant::now();
    let paced: Vec<(Created, Duration)> = stream::iter(0..args.tasks)
        .map(|index| {
            let due = start + due_offset(index, args.rate);
            let target = &target;
            async move {
                tokio::time::sleep_until(due).await;
                let late = Instant::now().saturating_duration_since(due);
                Ok::<_, anyhow::Error>((create_one(api, target, index).await?, late))
            }
        })
        .buffer_unordered(MAX_OUTSTANDING)
        .try_collect()
        .await?;
    let created_in = start.elapsed();

    eprintln!("waiting for every task to finish");
    let tasks = api
        .wait_until_all_finished(&target, common.poll(), common.timeout())
        .await?;
    let outcome = Outcome::of(&tasks);
    let by_id: HashMap<&str, _> = tasks.iter().map(|task| (task.id.as_str(), task)).collect();

    let mut from_ack = Vec::with_capacity(paced.len());
    let mut from_create = Vec::with_capacity(paced.len());
    let mut never_started = 0;
    for (created, _) in &paced {
        let task = by_id
            .get(created.task_id.as_str())
            .with_context(|| format!("task {} is missing from ListTasks", created.task_id))?;
        let started = system_time(task.start_time.as_ref());
        let (Some(started), Some(created_at)) = (started, system_time(task.create_time.as_ref()))
        else {
            never_started += 1;
            continue;
        };
        from_ack.push(millis_between(created.acked_at, started));
        from_create.push(millis_between(created_at, started));
    }
    let latest = paced
        .iter()
        .map(|(_, late)| *late)
        .max()
        .unwrap_or_default();

    report.result(
        "create_seconds",
        "create phase",
        created_in.as_secs_f64(),
        "s",
    );
    report.result(
        "max_schedule_lag_ms",
        "latest CreateTask behind schedule",
        latest.as_secs_f64() * 1000.0,
        "ms",
    );
    report.latency(
        "ack_to_start",
        "wake-up: CreateTask answer → start",
        LatencySummary::of(from_ack),
    );
    report.latency(
        "server_create_to_start",
        "server: create_time → start_time",
        LatencySummary::of(from_create),
    );
    report.result(
        "never_started",
        "tasks without a start_time",
        never_started,
        "",
    );
    report.result(
        "ran_more_than_once",
        "tasks run more than once (attempt > 1)",
        outcome.ran_more_than_once,
        "",
    );
    report.result(
        "not_succeeded",
        "tasks not SUCCEEDED",
        outcome.not_succeeded(),
        "",
    );
    report.note(
        "start_time is the start of the worker's claim transaction (database clock); the \
         answer time is this machine's clock; a task run twice counts from its last start",
    );
    Ok(())
}
