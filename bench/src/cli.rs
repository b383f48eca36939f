//! Command-line flags. Every setting has a default; the endpoint and token also come from
//! the environment, as for the control plane's `demo`.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// The local control plane's default address.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:50051";
/// The admin token a control plane started with `--dev-mode` accepts.
pub const DEV_ADMIN_TOKEN: &str = "dev-admin-token";

/// Measures a running agentplane over its public gRPC API. Each run creates its own
/// workspace and an agent on the offline echo provider, answering with one token so a task
/// does as little work as the API allows. See docs/benchmarks.md.
#[derive(Debug, Parser)]
#[command(name = "agentplane-bench", version)]
pub struct Cli {
    /// Settings every subcommand shares.
    #[command(flatten)]
    pub common: Common,
    /// What to measure.
    #[command(subcommand)]
    pub command: Command,
}

/// Settings every subcommand shares.
#[derive(Debug, Args)]
pub struct Common {
    /// The control plane's gRPC endpoint.
    #[arg(long, global = true, env = "AGENTPLANE_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Platform admin bearer token.
    #[arg(
        long,
        global = true,
        env = "AGENTPLANE_ADMIN_TOKEN",
        hide_env_values = true,
        default_value = DEV_ADMIN_TOKEN
    )]
    pub token: String,
    /// Print one JSON object instead of the human-readable block (progress still goes to
    /// stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds any one call may take before the run fails.
    #[arg(long, global = true, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub rpc_timeout_secs: u64,
    /// Seconds to wait for a run's tasks to finish before the run fails.
    #[arg(long, global = true, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout_secs: u64,
    /// Milliseconds between two checks whether a run's tasks have finished.
    #[arg(long, global = true, default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub poll_ms: u64,
}

impl Common {
    /// The per-call timeout.
    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_secs(self.rpc_timeout_secs)
    }

    /// How long a run waits for its tasks.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// The pause between two completion checks.
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }
}

/// What to measure.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Task throughput: create tasks as fast as possible, then report how many per second
    /// were processed, how many ran more than once and how many did not succeed.
    Process(ProcessArgs),
    /// CreateTask throughput and latency with a fixed number of calls in flight.
    Create(CreateArgs),
    /// Idle wake-up latency: create tasks at a fixed rate and report the time from each
    /// CreateTask answer to a worker starting the task.
    Trickle(TrickleArgs),
    /// Whether finished history slows processing: process N tasks, seed M finished tasks
    /// with SQL (--database-url), process N again, and compare the two rates.
    History(HistoryArgs),
}

impl Command {
    /// The subcommand's name, for the report.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Process(_) => "process",
            Self::Create(_) => "create",
            Self::Trickle(_) => "trickle",
            Self::History(_) => "history",
        }
    }
}

/// Flags of `process`.
#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// Tasks to create.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub tasks: u64,
    /// CreateTask calls in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub in_flight: u64,
    /// Tasks per call: 1 sends CreateTask, more sends BatchCreateTasks with that many.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub batch: u64,
    /// For a pre-created backlog: after creating every task, pause until Enter is pressed
    /// (no value) or for SECONDS, so the workers can be started meanwhile. Start the system
    /// without workers for this (docs/benchmarks.md).
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "enter", value_parser = parse_wait)]
    pub wait_before_processing: Option<Wait>,
}

/// Flags of `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Tasks to create.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub tasks: u64,
    /// CreateTask calls in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub in_flight: u64,
    /// Tasks per call: 1 sends CreateTask, more sends BatchCreateTasks with that many.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub batch: u64,
}

/// Flags of `trickle`.
#[derive(Debug, Args)]
pub struct TrickleArgs {
    /// Tasks to create.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub tasks: u64,
    /// Tasks created per second, evenly spaced (greater than 0, at most 10000).
    #[arg(long, default_value_t = 50.0, value_parser = parse_rate)]
    pub rate: f64,
}

/// Flags of `history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Tasks per measured run (one before the seed, one after).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub tasks: u64,
    /// Finished tasks to seed between the two runs.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub history: u64,
    /// PostgreSQL URL to seed through: a login role in `agentplane_app` (the control
    /// plane's), so row-level security applies. Never printed.
    #[arg(long, env = "AGENTPLANE_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Most seconds to wait after the seed for autovacuum to analyze `tasks`.
    #[arg(long, default_value_t = 180, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub settle_secs: u64,
}

impl HistoryArgs {
    /// How long to wait for autovacuum after the seed.
    pub fn settle(&self) -> Duration {
        Duration::from_secs(self.settle_secs)
    }
}

/// How long `process --wait-before-processing` pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Until a line is read from stdin.
    Enter,
    /// For this long.
    For(Duration),
}

fn parse_wait(text: &str) -> Result<Wait, String> {
    if text == "enter" {
        return Ok(Wait::Enter);
    }
    match text.parse::<u64>() {
        Ok(seconds) if seconds <= 86_400 => Ok(Wait::For(Duration::from_secs(seconds))),
        _ => Err(
            "expected a number of seconds from 0 to 86400, or no value to wait for Enter".into(),
        ),
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate <= 10_000.0 => Ok(rate),
        _ => Err("expected a number of tasks per second, greater than 0 and at most 10000".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_takes_seconds_or_nothing() {
        assert_eq!(parse_wait("enter"), Ok(Wait::Enter));
        assert_eq!(parse_wait("30"), Ok(Wait::For(Duration::from_secs(30))));
        assert!(parse_wait("-1").is_err());
        assert!(parse_wait("soon").is_err());
    }

    #[test]
    fn rate_must_be_positive_and_finite() {
        assert_eq!(parse_rate("50"), Ok(50.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("NaN").is_err());
        assert!(parse_rate("inf").is_err());
    }

    #[test]
    fn flags_parse_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "agentplane-bench",
            "process",
            "--tasks",
            "10",
            "--wait-before-processing",
            "--json",
        ])
        .expect("valid flags");
        assert!(cli.common.json);
        let Command::Process(args) = cli.command else {
            panic!("not process");
        };
        assert_eq!(args.tasks, 10);
        assert_eq!(args.wait_before_processing, Some(Wait::Enter));
    }

    #[test]
    fn history_needs_a_database_url() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["agentplane-bench", "history"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv)
        };
        let cli = parse(&[
            "--database-url",
            "postgres://ap@localhost/ap",
            "--tasks",
            "5",
        ])
        .expect("valid flags");
        let Command::History(args) = cli.command else {
            panic!("not history");
        };
        assert_eq!((args.tasks, args.history), (5, 1_000_000));
    }

    #[test]
    fn clap_configuration_is_valid() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
