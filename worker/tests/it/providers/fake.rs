//! A scriptable vendor HTTP server on 127.0.0.1: it records every request (path, headers,
//! JSON body) and answers each with the next scripted reply (the last one repeats): a status
//! with a body, or a 200 stream written chunk by chunk, which may pause, hang until the client
//! goes away (recorded, so tests see cancellation close the connection), or break the
//! connection. What the streams and bodies say is each vendor's wire format (`vendors.rs`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

/// One step of a streamed reply.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    /// Write these bytes as one chunk.
    Send(Bytes),
    /// Write nothing more and keep the connection open until the client leaves.
    Hang,
    /// Break the connection mid-body (no terminating chunk).
    Reset,
    /// Wait this long before the next step (a slow model).
    Pause(std::time::Duration),
}

/// `frames` as steps of `size` bytes each, cut anywhere (inside lines, inside UTF-8
/// characters), with a comment line after the first frame as vendors send keep-alives.
pub(crate) fn split(frames: &[String], size: usize) -> Vec<Step> {
    let mut text = String::new();
    for (i, frame) in frames.iter().enumerate() {
        text.push_str(frame);
        if i == 0 {
            text.push_str(": keep-alive\n\n");
        }
    }
    Bytes::from(text)
        .chunks(size)
        .map(|chunk| Step::Send(Bytes::copy_from_slice(chunk)))
        .collect()
}

/// `frames` as one step each.
pub(crate) fn whole(frames: &[String]) -> Vec<Step> {
    frames
        .iter()
        .map(|frame| Step::Send(Bytes::from(frame.clone())))
        .collect()
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// A 200 `text/event-stream` response written step by step.
    Stream {
        headers: Vec<(&'static str, String)>,
        steps: Vec<Step>,
    },
    /// A response with this status and body.
    Status {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
}

/// What the fake received.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    /// Path and query.
    pub(crate) path: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: serde_json::Value,
}

impl Recorded {
    /// A header's value as text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Debug, Default)]
struct State {
    replies: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Recorded>>,
    /// Streams whose client went away while the fake was hanging on them.
    closed: AtomicUsize,
    closed_changed: Notify,
}

impl State {
    fn next_reply(&self) -> Reply {
        let mut replies = self.replies.lock().unwrap();
        if replies.len() > 1 {
            replies.pop_front().unwrap()
        } else {
            replies.front().cloned().expect("the fake has a reply")
        }
    }
}

/// A running fake vendor.
#[derive(Debug)]
pub(crate) struct FakeVendor {
    addr: std::net::SocketAddr,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

type Body = BoxBody<Bytes, std::io::Error>;

impl FakeVendor {
    /// Serves `replies` in order; the last one repeats.
    pub(crate) async fn start(replies: Vec<Reply>) -> FakeVendor {
        assert!(!replies.is_empty());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            replies: Mutex::new(replies.into()),
            ..State::default()
        });
        let served = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&served);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(state, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeVendor {
            addr,
            state,
            accept,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// How many requests were received.
    pub(crate) fn request_count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// Waits (at most 10 s, then panics) until a client left a hanging stream.
    pub(crate) async fn wait_closed(&self) {
        let wait = async {
            loop {
                let changed = self.state.closed_changed.notified();
                if self.state.closed.load(Ordering::SeqCst) > 0 {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("the client closed the connection");
    }
}

impl Drop for FakeVendor {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Response<Body> {
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let headers = request.headers().clone();
    let bytes = request.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    state.requests.lock().unwrap().push(Recorded {
        path,
        headers,
        body,
    });
    match state.next_reply() {
        Reply::Status {
            status,
            headers,
            body,
        } => {
            let mut response = Response::new(
                Full::new(Bytes::from(body))
                    .map_err(|never: Infallible| match never {})
                    .boxed(),
            );
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            response
                .headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            for (name, value) in headers {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
        Reply::Stream { headers, steps } => {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
            tokio::spawn(write_steps(Arc::clone(&state), tx, steps));
            let frames = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|frame| (frame, rx))
            });
            let mut response = Response::new(StreamBody::new(frames).boxed());
            response
                .headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            for (name, value) in headers {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
    }
}

async fn write_steps(
    state: Arc<State>,
    tx: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    steps: Vec<Step>,
) {
    for step in steps {
        match step {
            Step::Send(bytes) => {
                if tx.send(Ok(Frame::data(bytes))).await.is_err() {
                    // The client left before this step: that is a close too.
                    state.closed.fetch_add(1, Ordering::SeqCst);
                    state.closed_changed.notify_waiters();
                    return;
                }
            }
            Step::Hang => {
                tx.closed().await;
                state.closed.fetch_add(1, Ordering::SeqCst);
                state.closed_changed.notify_waiters();
                return;
            }
            Step::Pause(duration) => tokio::time::sleep(duration).await,
            Step::Reset => {
                let _ = tx
                    .send(Err(std::io::Error::other("connection reset by the fake")))
                    .await;
                return;
            }
        }
    }
}
