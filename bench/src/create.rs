//! `create`: how many tasks per second the API accepts, and how long one CreateTask takes,
//! with a fixed number of calls in flight. `process` uses the same create phase.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use tokio::time::Instant;

use agentplane_proto::v1 as pb;

use crate::api::{Api, Target};
use crate::cli::{Common, CreateArgs};
use crate::outcome::Outcome;
use crate::report::Report;
use crate::stats::{LatencySummary, per_second};

/// One acknowledged CreateTask.
#[derive(Debug, Clone)]
pub struct Created {
    /// The new task's id.
    pub task_id: String,
    /// When the answer arrived (this machine's clock).
    pub acked_at: SystemTime,
    /// From sending the call to its answer.
    pub latency: Duration,
}

/// A batch of tasks created as fast as the API takes them.
#[derive(Debug)]
pub struct CreatePhase {
    /// Just before the first call was sent (this machine's clock).
    pub started_at: SystemTime,
    /// From the first call sent to the last answer.
    pub elapsed: Duration,
    /// Every task created, in order of their answers.
    pub created: Vec<Created>,
}

impl CreatePhase {
    /// Creates per second.
    pub fn rate(&self) -> Option<f64> {
        per_second(self.created.len(), self.elapsed)
    }

    /// The distribution of call latencies.
    pub fn latency(&self) -> Option<LatencySummary> {
        LatencySummary::of(
            self.created
                .iter()
                .map(|created| created.latency.as_secs_f64() * 1000.0)
                .collect(),
        )
    }
}

/// Creates `count` tasks for `target` with at most `in_flight` calls outstanding, `batch`
/// tasks per call (1: CreateTask; more: BatchCreateTasks). The first failed call ends the
/// phase with its error (the calls still in flight are dropped).
pub async fn create_tasks(
    api: &Api,
    target: &Target,
    count: u64,
    in_flight: usize,
    batch: u64,
) -> anyhow::Result<CreatePhase> {
    let started_at = SystemTime::now();
    let clock = Instant::now();
    let batch = batch.max(1);
    let chunks: Vec<Vec<Created>> = stream::iter((0..count).step_by(usize::try_from(batch)?))
        .map(|first| async move {
            if batch == 1 {
                create_one(api, target, first)
                    .await
                    .map(|created| vec![created])
            } else {
                create_batch(api, target, first..(first + batch).min(count)).await
            }
        })
        .buffer_unordered(in_flight.max(1))
        .try_collect()
        .await?;
    Ok(CreatePhase {
        started_at,
        elapsed: clock.elapsed(),
        created: chunks.into_iter().flatten().collect(),
    })
}

/// Sends one BatchCreateTasks of the run's tasks `indexes`; each task gets the call's
/// latency.
pub async fn create_batch(
    api: &Api,
    target: &Target,
    indexes: std::ops::Range<u64>,
) -> anyhow::Result<Vec<Created>> {
    let requests = indexes
        .clone()
        .map(|index| target.task_request(index))
        .collect();
    let sent = Instant::now();
    let tasks = api
        .tasks()
        .batch_create_tasks(pb::BatchCreateTasksRequest {
            workspace_id: target.workspace_id.clone(),
            requests,
        })
        .await
        .with_context(|| format!("BatchCreateTasks of tasks {indexes:?}"))?
        .into_inner()
        .tasks;
    let (acked_at, latency) = (SystemTime::now(), sent.elapsed());
    Ok(tasks
        .into_iter()
        .map(|task| Created {
            task_id: task.id,
            acked_at,
            latency,
        })
        .collect())
}

/// Sends the CreateTask of the run's `index`-th task and times it.
pub async fn create_one(api: &Api, target: &Target, index: u64) -> anyhow::Result<Created> {
    let request = target.task_request(index);
    let sent = Instant::now();
    let task = api
        .tasks()
        .create_task(request)
        .await
        .with_context(|| format!("CreateTask of task {index}"))?
        .into_inner()
        .task
        .context("CreateTask answered without a task")?;
    Ok(Created {
        task_id: task.id,
        acked_at: SystemTime::now(),
        latency: sent.elapsed(),
    })
}

/// Runs `create` and fills `report`.
pub async fn run(
    api: &Api,
    common: &Common,
    args: &CreateArgs,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (scoped, target) = api.create_target("create").await?;
    let api = &scoped;
    report.setting("workspace_id", "workspace", target.workspace_id.as_str());
    report.setting("tasks", "tasks", args.tasks);
    report.setting("in_flight", "calls in flight", args.in_flight);

    eprintln!(
        "creating {} tasks with {} calls in flight",
        args.tasks, args.in_flight
    );
    let in_flight = usize::try_from(args.in_flight).context("--in-flight is too large")?;
    report.setting("batch", "tasks per call", args.batch);
    let phase = create_tasks(api, &target, args.tasks, in_flight, args.batch).await?;
    report.result("tasks_created", "tasks created", phase.created.len(), "");
    report.result(
        "create_seconds",
        "create phase",
        phase.elapsed.as_secs_f64(),
        "s",
    );
    report.result(
        "creates_per_second",
        "CreateTask throughput",
        phase.rate(),
        "tasks/s",
    );
    report.latency("create_latency", "CreateTask latency", phase.latency());
    report.note(
        "workers process the tasks while they are created, as in production; the figures \
         are for creation under that load",
    );

    // Not measured: lets the workers finish, so the next run starts on an idle system.
    eprintln!("waiting for the workers to finish the tasks (not measured)");
    let tasks = api
        .wait_until_all_finished(&target, common.poll(), common.timeout())
        .await?;
    let outcome = Outcome::of(&tasks);
    report.result(
        "not_succeeded",
        "tasks not SUCCEEDED",
        outcome.not_succeeded(),
        "",
    );
    Ok(())
}
