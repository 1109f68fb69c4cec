//! The transport: accepting connections and serving the router over HTTP/1.1 with the limits a
//! server on a network needs (axum's `serve` has none):
//! - a connection must send a complete request header within `header_timeout`, and an idle
//!   keep-alive connection is closed after as long (hyper's header-read timer runs while idle);
//! - a request body must arrive within `body_timeout` (408; see `error::Body`) and stay under its
//!   door's size limit (413);
//! - at most `max_connections` connections are open, and never more than the process's
//!   file-descriptor limit allows: past it the oldest *idle* connection is closed (the oldest of
//!   all when none is idle), so that a flood of idle sockets cannot keep `/health` or workers out.
//!
//! Every limit that is hit is counted (`/metrics`) and logged, at most once per `LOG_EVERY` each.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::Shared;

/// The limits, from `ServerSettings`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// Public API.
    pub max_body_bytes: usize,
    /// Worker protocol.
    pub max_worker_request_bytes: usize,
}

/// What the limits did, for `/metrics`.
#[derive(Default)]
pub(crate) struct Stats {
    pub open: AtomicU64,
    pub evicted: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub body_timeouts: AtomicU64,
    pub too_large: AtomicU64,
}

/// How often each kind of limit is logged, at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// File descriptors kept for everything but client connections (database, files, actions).
const FD_RESERVE: u64 = 256;

/// A log line at most every `LOG_EVERY`.
struct Throttle(Mutex<Option<Instant>>);

impl Throttle {
    fn new() -> Self {
        Throttle(Mutex::new(None))
    }
    fn ready(&self) -> bool {
        let mut last = self.0.lock().expect("throttle lock");
        if last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

struct Conn {
    close: CancellationToken,
    /// A request is being answered on it.
    busy: Arc<AtomicBool>,
}

type Registry = Arc<Mutex<BTreeMap<u64, Conn>>>;

/// Raises the soft file-descriptor limit to the hard one and returns how many connections fit
/// below it (keeping `FD_RESERVE` for the rest).
fn connection_room() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let soft =
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() { hard } else { soft };
    Some(soft.saturating_sub(FD_RESERVE).max(16))
}

/// Serves `app` on `listener` until the server shuts down; then closes every connection gracefully
/// (requests in progress finish) and returns once all are gone.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, app: Router) {
    let limits = shared.opts.http.clone();
    let mut max = limits.max_connections;
    if let Some(room) = connection_room() {
        if (room as usize) < max {
            tracing::warn!(
                configured = max,
                allowed = room,
                "server.max_connections is above what the file-descriptor limit allows; using the lower"
            );
            max = room as usize;
        }
    }
    let stats = &shared.metrics.http;
    let registry: Registry = Arc::new(Mutex::new(BTreeMap::new()));
    let mut conns = JoinSet::new();
    let mut next_id = 0u64;
    let (accept_log, limit_log) = (Throttle::new(), Throttle::new());
    loop {
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    if accept_log.ready() {
                        tracing::warn!(error = %e, "cannot accept connections; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = shared.shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        {
            let mut reg = registry.lock().expect("registry lock");
            let mut closed = 0;
            while reg.len() >= max {
                let oldest_idle = reg.iter().find(|(_, c)| !c.busy.load(Relaxed)).map(|(id, _)| *id);
                let Some(id) = oldest_idle.or_else(|| reg.keys().next().copied()) else { break };
                if let Some(c) = reg.remove(&id) {
                    c.close.cancel();
                    closed += 1;
                }
            }
            if closed > 0 {
                stats.evicted.fetch_add(closed, Relaxed);
                if limit_log.ready() {
                    tracing::warn!(
                        max_connections = max,
                        "connection limit reached: closing the oldest idle connections to let new ones in"
                    );
                }
            }
            let conn = Conn { close: CancellationToken::new(), busy: Arc::new(AtomicBool::new(false)) };
            let (close, busy) = (conn.close.clone(), conn.busy.clone());
            reg.insert(next_id, conn);
            stats.open.store(reg.len() as u64, Relaxed);
            let (shared, app, registry, id) = (shared.clone(), app.clone(), registry.clone(), next_id);
            conns.spawn(async move {
                match shared.opts.tls.clone() {
                    None => connection(shared, stream, app, close, busy, registry, id).await,
                    Some(tls) => {
                        // The handshake is bounded like a request header, and ends with the server.
                        let handshake =
                            tokio::time::timeout(shared.opts.http.header_timeout, tls.0.accept(stream));
                        let outcome = tokio::select! {
                            r = handshake => Some(r),
                            _ = close.cancelled() => None,
                        };
                        match outcome {
                            Some(Ok(Ok(stream))) => {
                                connection(shared, stream, app, close, busy, registry, id).await;
                                return;
                            }
                            Some(Ok(Err(e))) => {
                                tracing::debug!(connection = id, error = %e, "TLS handshake failed")
                            }
                            Some(Err(_)) => {
                                tracing::debug!(connection = id, "no TLS handshake within header_timeout")
                            }
                            None => {}
                        }
                        forget(&shared, &registry, id);
                    }
                }
            });
        }
        next_id += 1;
    }
    for c in registry.lock().expect("registry lock").values() {
        c.close.cancel();
    }
    while conns.join_next().await.is_some() {}
}

async fn connection<S>(
    shared: Arc<Shared>,
    stream: S,
    app: Router,
    close: CancellationToken,
    busy: Arc<AtomicBool>,
    registry: Registry,
    id: u64,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let marker = busy.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let (app, busy) = (app.clone(), marker.clone());
        async move {
            busy.store(true, Relaxed);
            let resp = app.oneshot(req.map(axum::body::Body::new)).await.unwrap_or_else(|e| match e {});
            busy.store(false, Relaxed);
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(shared.opts.http.header_timeout).keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut closing = false;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = close.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            let n = shared.metrics.http.header_timeouts.fetch_add(1, Relaxed) + 1;
            tracing::debug!(connection = id, "closed: no complete request header within header_timeout");
            if n.is_power_of_two() {
                tracing::info!(
                    total = n,
                    "connections closed for sending no complete request header within server.header_timeout"
                );
            }
        } else {
            tracing::debug!(connection = id, error = %e, "connection ended with an error");
        }
    }
    forget(&shared, &registry, id);
}

/// A connection has ended: it no longer counts against the limit.
fn forget(shared: &Shared, registry: &Registry, id: u64) {
    let mut reg = registry.lock().expect("registry lock");
    reg.remove(&id);
    shared.metrics.http.open.store(reg.len() as u64, Relaxed);
}
