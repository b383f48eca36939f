//! `process`: task throughput. Creates N tasks as fast as the API takes them, waits until
//! every one has finished, and reports how many per second were processed, how many ran
//! more than once and how many did not succeed.
//!
//! Two windows are reported, both ending at the last task's `end_time`:
//! - processing: from the first claim (`start_time`) — the workers' drain rate. With
//!   `--wait-before-processing` and the workers started during the pause, this is the
//!   "pre-created backlog" figure;
//! - end to end: from the first CreateTask sent, i.e. what a client submitting N tasks at
//!   once sees (it includes any pause).
//!
//! It also reports the machine's CPU time per task (`cpu.rs`), to set against DESIGN.md's
//! cost per task.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::time::Instant;

use crate::api::{Api, Target};
use crate::cli::{Common, ProcessArgs, Wait};
use crate::cpu::{CpuSample, CpuSpent};
use crate::create::create_tasks;
use crate::outcome::Outcome;
use crate::report::Report;
use crate::stats::per_second;

/// Runs `process` and fills `report`.
pub async fn run(
    api: &Api,
    common: &Common,
    args: &ProcessArgs,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (scoped, target) = api.create_target("process").await?;
    let api = &scoped;
    report.setting("workspace_id", "workspace", target.workspace_id.as_str());
    report.setting("tasks", "tasks", args.tasks);
    report.setting("in_flight", "create calls in flight", args.in_flight);
    report.setting(
        "wait_before_processing",
        "wait before processing",
        match args.wait_before_processing {
            None => "no".to_owned(),
            Some(Wait::Enter) => "until Enter".to_owned(),
            Some(Wait::For(pause)) => format!("{} s", pause.as_secs()),
        },
    );

    eprintln!(
        "creating {} tasks with {} calls in flight",
        args.tasks, args.in_flight
    );
    let in_flight = usize::try_from(args.in_flight).context("--in-flight is too large")?;
    let cpu_before = CpuSample::read();
    let phase = create_tasks(api, &target, args.tasks, in_flight, args.batch).await?;
    let cpu_after_create = CpuSample::read();
    eprintln!(
        "created {} tasks in {:.2} s",
        phase.created.len(),
        phase.elapsed.as_secs_f64()
    );
    report.result(
        "create_seconds",
        "create phase",
        phase.elapsed.as_secs_f64(),
        "s",
    );
    report.result("creates_per_second", "create rate", phase.rate(), "tasks/s");

    let mut workers_ran_early = false;
    if let Some(wait) = args.wait_before_processing {
        if any_started(api, &target).await? {
            workers_ran_early = true;
            report.note(
                "some tasks started during the create phase, so the workers were running: \
                 this is not a pre-created backlog figure",
            );
        }
        pause(wait, args.tasks).await?;
    }

    eprintln!("waiting for every task to finish");
    // CPU is counted up to the moment nothing is pending or running, before the full read
    // of every task that confirms it, which is the bench's bookkeeping, not processing.
    let mut cpu_done = None;
    let tasks = api
        .wait_until_all_finished_noting(&target, common.poll(), common.timeout(), || {
            cpu_done = CpuSample::read();
        })
        .await?;
    let cpu = CpuSpent::over(cpu_before, cpu_done);
    // With a pre-created backlog the workers start only after the create phase, so the
    // machine's CPU splits into creating and processing at that point. Without a pause, or
    // when tasks started early, the two overlap and there is nothing to split.
    let split = (args.wait_before_processing.is_some() && !workers_ran_early).then(|| {
        (
            CpuSpent::over(cpu_before, cpu_after_create),
            CpuSpent::over(cpu_after_create, cpu_done),
        )
    });
    let outcome = Outcome::of(&tasks);
    let processing = window(outcome.first_start, outcome.last_end);
    let end_to_end = window(Some(phase.started_at), outcome.last_end);
    let seconds = |window: Option<Duration>| window.map(|w| w.as_secs_f64());
    let rate = |window: Option<Duration>| window.and_then(|w| per_second(outcome.total, w));

    report.result("tasks_finished", "tasks finished", outcome.total, "");
    report.result(
        "processing_seconds",
        "processing (first claim → last end)",
        seconds(processing),
        "s",
    );
    report.result(
        "processing_tasks_per_second",
        "processing rate",
        rate(processing),
        "tasks/s",
    );
    report.result(
        "end_to_end_seconds",
        "end to end (first create → last end)",
        seconds(end_to_end),
        "s",
    );
    report.result(
        "end_to_end_tasks_per_second",
        "end-to-end rate",
        rate(end_to_end),
        "tasks/s",
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
    report.result("failed", "  of which FAILED", outcome.failed, "");
    report.result("canceled", "  of which CANCELED", outcome.canceled, "");
    report.result(
        "cpu_ms_per_task",
        "machine CPU per task, bench excluded",
        cpu.and_then(|spent| spent.others_ms_per_task(outcome.total)),
        "ms",
    );
    if let Some((creating, processing)) = split {
        report.result(
            "create_cpu_ms_per_task",
            "  of which the create phase",
            creating.and_then(|spent| spent.others_ms_per_task(outcome.total)),
            "ms",
        );
        report.result(
            "processing_cpu_ms_per_task",
            "  of which after it (pause and processing)",
            processing.and_then(|spent| spent.others_ms_per_task(outcome.total)),
            "ms",
        );
    }
    report.result(
        "machine_cpu_seconds",
        "machine CPU, all processes",
        cpu.map(|spent| spent.machine.as_secs_f64()),
        "s",
    );
    report.result(
        "bench_cpu_seconds",
        "  of which the bench",
        cpu.map(|spent| spent.own.as_secs_f64()),
        "s",
    );
    report.note(
        "CPU is the whole machine's busy time from the first create until the bench first \
         sees no task pending or running (a pause included: the workers start during it; \
         the read of every task that follows is not), less the bench's own; other work on \
         the machine counts too",
    );
    if split.is_some() {
        report.note(
            "with a pause, CPU is also split at the end of the create phase: what follows it \
             is the workers' processing of the backlog plus whatever the idle system spent \
             during the pause",
        );
    }
    report.note(
        "the windows use the server's start_time (first claim) and end_time (last result) \
         and, for end to end, this machine's clock at the first CreateTask",
    );
    Ok(())
}

/// From `from` to `to`; `None` when either is unknown or they are out of order.
fn window(from: Option<SystemTime>, to: Option<SystemTime>) -> Option<Duration> {
    to?.duration_since(from?).ok()
}

/// Whether any task of the run has been claimed already (is running or has finished).
async fn any_started(api: &Api, target: &Target) -> anyhow::Result<bool> {
    use agentplane_proto::v1::TaskStatus;
    for status in [
        TaskStatus::Running,
        TaskStatus::Succeeded,
        TaskStatus::Failed,
    ] {
        if api.any_task(target, status).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Holds the run between the create phase and processing, telling the user what to do.
async fn pause(wait: Wait, tasks: u64) -> anyhow::Result<()> {
    let start_workers = "start the workers now (docs/benchmarks.md, \"Pre-created backlog\"); \
                         processing is timed from the first claim";
    match wait {
        Wait::Enter => {
            eprintln!("{tasks} tasks are queued: {start_workers}. Press Enter to go on.");
            tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new()))
                .await
                .context("reading stdin")?
                .context("reading stdin")?;
        }
        Wait::For(pause) => {
            eprintln!(
                "{tasks} tasks are queued: {start_workers}. Going on in {} s.",
                pause.as_secs()
            );
            tokio::time::sleep_until(Instant::now() + pause).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_needs_both_ends_in_order() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let end = start + Duration::from_millis(1500);
        assert_eq!(
            window(Some(start), Some(end)),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(window(Some(end), Some(start)), None);
        assert_eq!(window(None, Some(end)), None);
        assert_eq!(window(Some(start), None), None);
    }
}
