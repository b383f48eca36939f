//! The one way to start a background task: named, inside the current tracing span, and
//! logged if it fails.

use std::future::Future;

use tracing::Instrument;

/// Spawns `future` as a background task called `name`.
pub fn spawn_named<F>(name: &'static str, future: F) -> tokio::task::JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let span = tracing::info_span!("task", name);
    #[expect(
        clippy::disallowed_methods,
        reason = "this is the one sanctioned spawn"
    )]
    tokio::spawn(future.instrument(span))
}
