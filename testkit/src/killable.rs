//! A control plane that a test can kill the way a crash would.

use std::net::SocketAddr;
use std::time::Duration;

use agentplane_control_plane::config::Config;
use agentplane_control_plane::startup::Application;

/// A control plane on a runtime of its own, so that a test can kill it the way a crash
/// would: [`KillableApp::kill`] drops every task of that runtime at once (no drain, no
/// goodbye on any stream), which closes its sockets, so PostgreSQL rolls back whatever
/// transaction it had open and its clients see their connections reset.
#[derive(Debug)]
pub struct KillableApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Always `Some` until dropped; dropping a runtime inside another one would panic, so
    /// `Drop` shuts it down in the background instead.
    runtime: Option<tokio::runtime::Runtime>,
}

impl KillableApp {
    /// Starts a control plane with `config` on a new two-thread runtime.
    pub async fn start(config: Config) -> KillableApp {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (bound, addr) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            let app = Application::build(config).await.unwrap();
            let _ = bound.send(app.local_addr());
            let _ = app.run_until_stopped().await;
        });
        let addr = tokio::time::timeout(Duration::from_secs(30), addr)
            .await
            .expect("the control plane started within 30 s")
            .expect("the control plane started");
        KillableApp {
            addr,
            runtime: Some(runtime),
        }
    }

    /// Its URL, for clients and workers.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills it: every task of its runtime is dropped where it stands.
    pub fn kill(self) {
        drop(self);
    }
}

impl Drop for KillableApp {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
