//! `agentplane-bench`: measures a running agentplane through its public gRPC API only, so
//! the same binary measures the system before and after a change to its queue engine.
//!
//! Each subcommand creates its own workspace and echo agent, runs, and prints a report
//! (`report`): `process` (task throughput), `create` (CreateTask throughput and latency),
//! `trickle` (idle wake-up latency), `history` (processing with a million finished tasks
//! against without). docs/benchmarks.md says how to run them and what each
//! figure means.

pub mod api;
pub mod cli;
pub mod cpu;
pub mod create;
pub mod history;
pub mod machine;
pub mod outcome;
pub mod process;
pub mod report;
pub mod stats;
pub mod trickle;

use anyhow::Context as _;

use crate::cli::{Cli, Command};

/// Runs the command `cli` names against the system at its endpoint and prints the report.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut report = report::Report::new(cli.command.name(), machine::Machine::detect());
    let common = &cli.common;
    let api = api::Api::connect(&common.endpoint, &common.token, common.rpc_timeout())
        .await
        .context("is the system running? (deploy/local/up.sh)")?;
    report.setting("endpoint", "endpoint", common.endpoint.as_str());
    match &cli.command {
        Command::Process(args) => process::run(&api, common, args, &mut report).await?,
        Command::Create(args) => create::run(&api, common, args, &mut report).await?,
        Command::Trickle(args) => trickle::run(&api, common, args, &mut report).await?,
        Command::History(args) => history::run(&api, common, args, &mut report).await?,
    }
    report.print(common.json)
}
