//! The HTTP listener: accepting connections, with the limits a public server needs that
//! `axum::serve` does not offer.
//!
//! - A client must send a request's headers within the header timeout (also the longest an
//!   idle keep-alive connection waits for its next request); a stalled one is closed.
//! - Connections are counted, sockets upgraded from them included, until their file descriptor
//!   is closed. At the cap, a new connection pushes out the oldest one that is not serving a
//!   request (a stalled or idle one), so stalled clients cannot starve honest ones of file
//!   descriptors: with slow-loris connections filling every slot, `/healthz` still answers.
//! - An accept error (out of file descriptors) backs off instead of spinning.
//! - On shutdown the listener keeps accepting while the application drains, so `/readyz`
//!   answers 503 to load balancers instead of refusing connections; then it stops accepting
//!   and lets requests in flight finish.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

use crate::startup::HttpService;

/// How the listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// How long an accept waits for the connection it pushed out to close its descriptor.
const EVICTION_WAIT: Duration = Duration::from_millis(100);

/// Connections accepted before the accept loop lets other tasks run (tokio's own
/// budget would stop it at 128: a quarter of the listen queue per turn instead of a thirty-second).
const ACCEPTS_PER_TURN: usize = 1024;

/// The longest pause after failed accepts (a pause stalls every client waiting to connect).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// File descriptors kept back from the open-files limit for the database, logs and the like
/// when the connection cap is derived from it.
const RESERVED_FDS: usize = 64;

impl Limits {
    /// `configured` connections, or when 0 the open-files limit less a reserve.
    pub fn new(header_timeout: Duration, configured: usize) -> Limits {
        let max_connections = if configured > 0 { configured } else { open_files_limit() };
        Limits { header_timeout, max_connections: max_connections.max(1) }
    }
}

fn open_files_limit() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let soft = if ok { usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX) } else { 1024 };
    soft.saturating_sub(RESERVED_FDS).max(16)
}

/// One open connection, as the listener sees it.
struct Conn {
    opened: Instant,
    /// Requests being served now.
    serving: AtomicUsize,
    /// Milliseconds since `opened` when it last became idle.
    idle_since: AtomicU64,
    /// Upgraded to a socket: never pushed out (the socket's own limits apply).
    upgraded: AtomicBool,
    /// Asked to close to make room: not picked again, still counted until its descriptor is.
    evicting: AtomicBool,
    evict: Notify,
    /// Told when the descriptor is closed.
    closed: Notify,
}

impl Conn {
    fn idle_at(&self) -> Option<u64> {
        let idle = self.serving.load(Ordering::Acquire) == 0
            && !self.upgraded.load(Ordering::Acquire)
            && !self.evicting.load(Ordering::Acquire);
        idle.then(|| self.idle_since.load(Ordering::Acquire))
    }

    fn mark_idle(&self) {
        self.idle_since.store(self.opened.elapsed().as_millis() as u64, Ordering::Release);
    }
}

#[derive(Default)]
struct Registry {
    conns: Mutex<Conns>,
    next: AtomicU64,
}

#[derive(Default)]
struct Conns {
    open: HashMap<u64, Arc<Conn>>,
    /// How many of `open` were asked to close (kept here, under the lock that sets their flag,
    /// so an accept below the cap costs no walk over every connection).
    evicting: usize,
}

impl Registry {
    /// Room for one more. At the cap, the connection idle the longest is asked to close, and
    /// is returned so the caller can wait for its descriptor (it is counted until then, so the
    /// open descriptors never pass the cap). `Err` if every connection is busy.
    fn make_room(&self, max: usize) -> Result<Option<Arc<Conn>>, ()> {
        let mut conns = self.conns.lock();
        if conns.open.len() - conns.evicting < max {
            return Ok(None);
        }
        let now = Instant::now();
        let victim = conns
            .open
            .values()
            .filter_map(|c| c.idle_at().map(|at| (c.opened + Duration::from_millis(at), c)))
            .min_by_key(|(since, _)| *since)
            .map(|(since, c)| (since, c.clone()));
        let Some((since, conn)) = victim else { return Err(()) };
        conn.evicting.store(true, Ordering::Release);
        conns.evicting += 1;
        drop(conns);
        conn.evict.notify_one();
        let idle_for = now.saturating_duration_since(since);
        tracing::debug!(?idle_for, "connection limit reached: closing the longest idle one");
        Ok(Some(conn))
    }

    fn add(self: &Arc<Self>) -> Slot {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            opened: Instant::now(),
            serving: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            evicting: AtomicBool::new(false),
            evict: Notify::new(),
            closed: Notify::new(),
        });
        self.conns.lock().open.insert(id, conn.clone());
        Slot { registry: self.clone(), id, conn }
    }

    fn len(&self) -> usize {
        self.conns.lock().open.len()
    }
}

/// A connection's place in the registry, held by its stream: given back when the file
/// descriptor closes, whether the connection ended as HTTP or as an upgraded socket.
struct Slot {
    registry: Arc<Registry>,
    id: u64,
    conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut conns = self.registry.conns.lock();
        if conns.open.remove(&self.id).is_some_and(|c| c.evicting.load(Ordering::Acquire)) {
            conns.evicting -= 1;
        }
        drop(conns);
        self.conn.closed.notify_one();
    }
}

/// A TCP stream that carries its slot, so the slot lives exactly as long as the descriptor.
struct Counted {
    stream: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves `service` on `listener` until `accepting` turns false, then stops accepting and
/// returns once every connection finished its requests (idle ones are closed at once); the
/// caller bounds that wait.
pub async fn serve(
    listener: TcpListener,
    service: HttpService,
    limits: Limits,
    mut accepting: watch::Receiver<bool>,
) {
    let registry = Arc::new(Registry::default());
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut backoff = Duration::from_millis(5);
    let mut accepts = 0_usize;
    loop {
        // Unconstrained below, so this loop yields by itself now and then: a flood of
        // connections cannot keep a worker thread to it.
        accepts += 1;
        if accepts == ACCEPTS_PER_TURN {
            accepts = 0;
            tokio::task::yield_now().await;
        }
        let accepted = tokio::select! {
            // Outside the runtime's co-operative budget: in a connect storm this task takes
            // every pending connection when it runs, instead of 128 and then waiting a whole
            // round of the (then thousands of) busy tasks while the kernel's listen queue
            // overflows and clients retry a second later.
            accepted = tokio::task::unconstrained(listener.accept()) => accepted,
            _ = accepting.wait_for(|open| !*open) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::from_millis(5);
                accepted
            }
            Err(error) => {
                // Out of file descriptors (or memory): wait for some to be given back rather
                // than spinning on an accept that fails at once.
                tracing::warn!(%error, retry_in = ?backoff, open = registry.len(), "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        match registry.make_room(limits.max_connections) {
            Ok(None) => {}
            Ok(Some(victim)) => {
                // Its task closes the descriptor at once; bounded all the same.
                let _ = tokio::time::timeout(EVICTION_WAIT, victim.closed.notified()).await;
            }
            Err(()) => {
                tracing::warn!(
                    max = limits.max_connections,
                    "every connection is serving a request: refusing a new one"
                );
                drop(stream);
                continue;
            }
        }
        let _ = stream.set_nodelay(false);
        let slot = registry.add();
        let conn = slot.conn.clone();
        let io = TokioIo::new(Counted { stream, _slot: slot });
        tokio::spawn(connection(io, peer, service.clone(), conn, limits, drain_rx.clone()));
    }
    drop(listener);
    let _ = drain_tx.send(true);
    // Requests in flight finish; upgraded sockets were closed by the application already.
    while registry.len() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connection(
    io: TokioIo<Counted>,
    peer: SocketAddr,
    service: HttpService,
    conn: Arc<Conn>,
    limits: Limits,
    mut drain: watch::Receiver<bool>,
) {
    let tracked = conn.clone();
    let hyper_service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let conn = tracked.clone();
        conn.serving.fetch_add(1, Ordering::AcqRel);
        let service = service.clone();
        async move {
            let response = service.oneshot(request.map(axum::body::Body::new)).await;
            if let Ok(response) = &response {
                if response.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS {
                    conn.upgraded.store(true, Ordering::Release);
                }
            }
            conn.mark_idle();
            conn.serving.fetch_sub(1, Ordering::AcqRel);
            response
        }
    });
    let serving = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(io, hyper_service)
        .with_upgrades();
    tokio::pin!(serving);
    let evicted = conn.evict.notified();
    tokio::pin!(evicted);
    tokio::select! {
        result = serving.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
        }
        () = &mut evicted => {}
        () = async { let _ = drain.wait_for(|d| *d).await; } => {
            serving.as_mut().graceful_shutdown();
            if let Err(error) = serving.await {
                tracing::debug!(%error, "connection ended with an error while draining");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_made_by_pushing_out_the_longest_idle() {
        let registry = Arc::new(Registry::default());
        let a = registry.add();
        let b = registry.add();
        let c = registry.add();
        assert!(matches!(registry.make_room(4), Ok(None)));
        // a busy, b upgraded, c idle: at the cap of 3, c is asked to close.
        a.conn.serving.store(1, Ordering::Release);
        b.conn.upgraded.store(true, Ordering::Release);
        let victim = registry.make_room(3).unwrap().expect("a victim");
        assert!(Arc::ptr_eq(&victim, &c.conn));
        assert_eq!(registry.conns.lock().evicting, 1);
        // Still counted until its descriptor closes, but not picked or counted twice: a
        // second accept finds room (3 open, 1 of them leaving) below a cap of 3.
        assert!(matches!(registry.make_room(3), Ok(None)));
        // At a cap of 2 nobody else is idle: refused.
        assert!(registry.make_room(2).is_err());
        drop(c);
        assert_eq!((registry.len(), registry.conns.lock().evicting), (2, 0));
        drop(a);
        drop(b);
        assert_eq!((registry.len(), registry.conns.lock().evicting), (0, 0));
    }
}
