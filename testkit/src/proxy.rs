//! A TCP proxy in front of the test cluster that can make chosen connections fall silent.
//!
//! A connection whose server or network vanished without closing it neither delivers nor
//! fails: reads wait until TCP gives up. [`SilencingProxy::silence`] does that to every
//! connection whose startup message names a given `application_name`, without touching the
//! server's processes (stopping a PostgreSQL backend with SIGSTOP instead can leave it
//! holding a lock or spinlock that the rest of the shared cluster then waits on).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How far into a connection the client's startup message is looked for.
const STARTUP_WINDOW: usize = 1024;

/// Forwards connections to one address; see the module documentation.
#[derive(Debug)]
pub struct SilencingProxy {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    silenced: watch::Sender<Option<Silenced>>,
}

/// Connections that pass nothing: those accepted before the `before`th that gave `name`.
#[derive(Debug, Clone)]
struct Silenced {
    name: String,
    before: u64,
}

impl SilencingProxy {
    /// Listens on a free local port and forwards every connection to `target`, until the
    /// test's runtime ends.
    pub async fn start(target: SocketAddr) -> SilencingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (silenced, watching) = watch::channel(None::<Silenced>);
        let accepted = Arc::new(AtomicU64::new(0));
        let counting = accepted.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let number = counting.fetch_add(1, Ordering::SeqCst);
                let watching = watching.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        forward_both_ways(client, server, number, watching).await;
                    }
                });
            }
        });
        SilencingProxy {
            addr,
            accepted,
            silenced,
        }
    }

    /// Where to connect instead of the target.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// From now on, the open connections that gave this `application_name` at startup pass
    /// nothing in either direction, and stay open.
    pub fn silence(&self, application_name: &str) {
        self.silenced.send_replace(Some(Silenced {
            name: application_name.to_owned(),
            before: self.accepted.load(Ordering::SeqCst),
        }));
    }
}

async fn forward_both_ways(
    client: TcpStream,
    server: TcpStream,
    number: u64,
    silenced: watch::Receiver<Option<Silenced>>,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (from_client, to_client) = client.into_split();
    let (from_server, to_server) = server.into_split();
    // What the client said first, where its startup message (and application_name) is.
    let this = Connection {
        number,
        startup: Startup::default(),
    };
    let up = forward(from_client, to_server, true, silenced.clone(), this.clone());
    let down = forward(from_server, to_client, false, silenced, this);
    // Either direction ending ends the pair, as a closed socket would. A silenced direction
    // never ends.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

type Startup = Arc<Mutex<Vec<u8>>>;

/// What decides whether one proxied connection is silenced.
#[derive(Clone)]
struct Connection {
    number: u64,
    startup: Startup,
}

/// Copies `from` to `to` until either closes, or forever holding both once the connection
/// is silenced.
async fn forward(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    records_startup: bool,
    mut silenced: watch::Receiver<Option<Silenced>>,
    this: Connection,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    // Until the proxy's handle is dropped; then connections go on as they are.
    let mut watching = true;
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            changed = silenced.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                if is_silenced(&silenced, &this) {
                    return hold(from, to).await;
                }
                continue;
            }
        };
        let Ok(count) = read else { return };
        if count == 0 {
            return;
        }
        if records_startup {
            let mut seen = this.startup.lock().unwrap();
            let room = STARTUP_WINDOW.saturating_sub(seen.len()).min(count);
            seen.extend_from_slice(&buffer[..room]);
        }
        if is_silenced(&silenced, &this) {
            return hold(from, to).await;
        }
        if to.write_all(&buffer[..count]).await.is_err() {
            return;
        }
    }
}

fn is_silenced(silenced: &watch::Receiver<Option<Silenced>>, this: &Connection) -> bool {
    let Some(Silenced { name, before }) = silenced.borrow().clone() else {
        return false;
    };
    if this.number >= before {
        return false;
    }
    let seen = this.startup.lock().unwrap();
    // The startup message carries `application_name\0<name>\0`.
    let needle = [b"application_name\0".as_slice(), name.as_bytes(), b"\0"].concat();
    seen.windows(needle.len()).any(|window| window == needle)
}

/// Keeps both halves open and passes nothing, until the test's runtime drops this.
async fn hold(from: OwnedReadHalf, to: OwnedWriteHalf) {
    let _open = (from, to);
    std::future::pending::<()>().await;
}
