//! `agentplane-bench`: parse the flags and run the measurement (see the library).

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    agentplane_bench::run(agentplane_bench::cli::Cli::parse()).await
}
