//! `agentplane-control-plane`: serve, migrate, bootstrap, or run the demo client.

use agentplane_control_plane::config::{Cli, Command};
use agentplane_control_plane::startup::{Application, migrate};
use agentplane_control_plane::{bootstrap, demo, telemetry};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Migrate(args) => migrate(&args.migrate_database_url).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Bootstrap(args) => bootstrap::run(args).await,
        Command::Serve(args) => {
            let config = args.validate()?;
            let app = Application::build(config).await?;
            let stop = app.stop_token();
            agentplane_control_plane::spawn::spawn_named("signals", async move {
                wait_for_signal().await;
                stop.cancel();
                wait_for_signal().await;
                tracing::warn!("second signal: exiting now");
                std::process::exit(130);
            });
            app.run_until_stopped().await
        }
    };
    // Last step of shutdown: export the spans still buffered.
    telemetry.shutdown();
    result
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
