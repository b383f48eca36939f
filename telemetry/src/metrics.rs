//! Prometheus metrics: a text endpoint on its own port, and label values kept bounded.
//!
//! Each binary keeps its metrics in its own [`prometheus::Registry`]; [`serve`] answers
//! `GET /metrics` with that registry in the text format. The server is a few lines over a
//! tokio listener (one request per connection, no keep-alive) rather than an HTTP framework:
//! a scraper sends one small GET, and nothing else is served on that port.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use prometheus::{Encoder as _, Registry, TextEncoder};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Largest request head read from a scraper.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a scraper may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapers answered at once.
pub const MAX_CONNECTIONS: usize = 16;

/// Runs just before each scrape, to bring gauges up to date (pool statistics, queue totals
/// read from the database). It should bound its own time: the scraper waits for it.
pub type BeforeScrape = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// A bound metrics listener, not yet serving.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `registry` until `stop` fires, answering up to [`MAX_CONNECTIONS`] scrapers
    /// at once (each bounded by a read timeout).
    pub async fn serve(self, registry: Registry, before: BeforeScrape, stop: CancellationToken) {
        let mut open = FuturesUnordered::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept(), if open.len() < MAX_CONNECTIONS => match accepted {
                    Ok((stream, _)) => open.push(answer(stream, registry.clone(), Arc::clone(&before))),
                    Err(error) => {
                        tracing::warn!(%error, "metrics listener accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(result) = open.next(), if !open.is_empty() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "metrics request failed");
                    }
                }
                () = stop.cancelled() => return,
            }
        }
    }
}

async fn answer(
    mut stream: TcpStream,
    registry: Registry,
    before: BeforeScrape,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_BYTES {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let request_line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = request_line.split(|b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let path = path.split(|b| *b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = if method != b"GET" && method != b"HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n".to_vec(),
        )
    } else if path == b"/metrics" {
        before().await;
        let mut body = Vec::new();
        let encoder = TextEncoder::new();
        match encoder.encode(&registry.gather(), &mut body) {
            Ok(()) => ("200 OK", prometheus::TEXT_FORMAT, body),
            Err(error) => {
                tracing::warn!(%error, "encoding metrics failed");
                ("500 Internal Server Error", "text/plain", Vec::new())
            }
        }
    } else {
        ("404 Not Found", "text/plain", b"see /metrics\n".to_vec())
    };
    let header = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    if method != b"HEAD" {
        stream.write_all(&body).await?;
    }
    stream.shutdown().await
}

/// A label whose values come from outside (a model name): the first `limit` distinct values
/// are kept, every later one becomes `other`, so a series count stays bounded whatever
/// workspaces configure.
#[derive(Debug)]
pub struct BoundedLabel {
    seen: Mutex<HashSet<String>>,
    limit: usize,
}

/// The value that stands in for values past the limit.
pub const OTHER: &str = "other";

impl BoundedLabel {
    /// Keeps at most `limit` distinct values.
    pub fn new(limit: usize) -> Self {
        Self {
            seen: Mutex::new(HashSet::new()),
            limit,
        }
    }

    /// `value`, or [`OTHER`] once `limit` other values have been seen. Long values are
    /// [`OTHER`] too.
    pub fn get(&self, value: &str) -> String {
        const MAX_LEN: usize = 64;
        if value.len() > MAX_LEN {
            return OTHER.to_owned();
        }
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() < self.limit {
            seen.insert(value.to_owned());
            return value.to_owned();
        }
        OTHER.to_owned()
    }
}

/// Registers `collector` in `registry`, or panics on a programming error (a duplicate or
/// malformed metric name), which every test run would catch.
pub fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric registered once with a valid name");
    collector
}

/// Latency buckets from 1 ms to about 2 minutes, for calls and runs.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_label_keeps_the_first_values_and_folds_the_rest() {
        let label = BoundedLabel::new(2);
        assert_eq!(label.get("a"), "a");
        assert_eq!(label.get("b"), "b");
        assert_eq!(label.get("c"), OTHER);
        assert_eq!(label.get("a"), "a");
        assert_eq!(label.get(&"x".repeat(65)), OTHER);
    }
}
