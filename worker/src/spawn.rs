//! The one way this crate starts background tasks: named and instrumented, so every log line
//! says which loop or attempt it came from.

use std::future::Future;

use tokio::task::JoinHandle;
use tracing::Instrument;

/// Spawns `future` on the runtime inside a span `task{name}` that is a child of the current
/// span. Stopping it is the future's own business (each loop watches a cancellation token).
pub(crate) fn spawn_named<F>(name: &'static str, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let span = tracing::info_span!("task", name);
    #[expect(
        clippy::disallowed_methods,
        reason = "this helper is the one place allowed to spawn"
    )]
    tokio::spawn(future.instrument(span))
}
