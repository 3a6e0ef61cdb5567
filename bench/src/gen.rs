//! The load generator: N joined WebSocket clients from loopback source addresses 127.0.0.2…,
//! one control connection that triggers broadcasts and targeted messages, and the timing.
//!
//! All measuring clients live in this one process, so every receive time is read from one
//! monotonic clock. One process holds at most ~19,900 sockets here (hard fd limit 20,000); past
//! that, the idle sockets are held by `bench ballast` child processes (see online.rs).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::proto::{user_id, Incoming, Proto, Step};

const SLOTS: usize = 4096;
/// Source addresses 127.0.0.2 … 127.0.0.(1+SOURCES).
const SOURCES: usize = 16;
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Consecutive timed-out steps after which a phase gives up (a server that fell over).
const GIVE_UP_AFTER: usize = 2;

struct Slot {
    count: AtomicU32,
    first: AtomicU64,
    last: AtomicU64,
}

impl Slot {
    fn new() -> Slot {
        Slot { count: AtomicU32::new(0), first: AtomicU64::new(u64::MAX), last: AtomicU64::new(0) }
    }
    fn reset(&self) {
        self.count.store(0, Ordering::SeqCst);
        self.first.store(u64::MAX, Ordering::SeqCst);
        self.last.store(0, Ordering::SeqCst);
    }
    /// Records a delivery at `t`; true when it was the `expected`-th.
    fn record(&self, t: u64, expected: u32) -> bool {
        self.first.fetch_min(t, Ordering::Relaxed);
        self.last.fetch_max(t, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::AcqRel) + 1 == expected
    }
}

struct Shared {
    base: Instant,
    proto: Proto,
    broadcasts: Vec<Slot>,
    targeted: Vec<Slot>,
    /// Subscribers expected to receive each broadcast.
    expected: AtomicU32,
    notify: Notify,
    joined: AtomicUsize,
    last_join: AtomicU64,
    join_errors: AtomicUsize,
    first_error: std::sync::Mutex<Option<String>>,
    dropped: AtomicUsize,
    join_times: std::sync::Mutex<Vec<u64>>,
    /// Set when a paced connect phase's deadline passed: clients still waiting for a connect
    /// slot give up, so they do not load the phases measured after it.
    cancelled: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
    fn error(&self, e: String) {
        self.join_errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(e);
        }
        drop(first);
        self.notify.notify_one();
    }
}

/// One server under test, as the generator sees it.
#[derive(Clone, Debug)]
pub struct Target {
    pub proto: Proto,
    pub addr: SocketAddr,
    /// Tako's HTTP base (`http://127.0.0.1:PORT`) for the operators' message route.
    pub http_base: Option<String>,
}

pub struct Clients {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    control: mpsc::Sender<String>,
    control_task: JoinHandle<()>,
    target: Target,
    n: usize,
    next_seq: u64,
    next_ref: u64,
    http: reqwest::Client,
}

/// The node of subscriber `i` when spread over `nodes`: alternating, so both halves get the
/// same mix of source addresses and user indexes.
pub fn node_of(i: usize, nodes: usize) -> usize {
    i % nodes.max(1)
}

pub(crate) fn source_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % SOURCES) as u8))
}

pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0)
}

pub(crate) type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connects from `source_ip(index)` and joins `notifications` as `uid`.
pub(crate) async fn open(target: &Target, index: usize, uid: &str) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source_ip(index), 0)).context("bind source address")?;
    let tcp = socket.connect(target.addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://{}{}", target.addr, target.proto.path(uid));
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config()))
        .await
        .context("upgrade")?;
    for frame in target.proto.initial() {
        ws.send(Message::text(frame)).await?;
    }
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => match target.proto.handshake(&text, uid) {
                Step::Send(frame) => ws.send(Message::text(frame)).await?,
                Step::Joined => return Ok(ws),
                Step::Wait => {}
                Step::Refused(why) => bail!("join refused: {why}"),
            },
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed during join"),
        }
    }
}

async fn subscriber(
    shared: Arc<Shared>,
    target: Target,
    index: usize,
    gate: Option<Arc<Semaphore>>,
) {
    let uid = user_id(index);
    let permit = match &gate {
        Some(g) => Some(g.clone().acquire_owned().await.expect("semaphore open")),
        None => None,
    };
    if shared.cancelled.load(Ordering::Acquire) {
        return;
    }
    let ws = match tokio::time::timeout(STEP_TIMEOUT * 2, open(&target, index, &uid)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return shared.error(format!("client {index}: {e:#}")),
        Err(_) => return shared.error(format!("client {index}: join timed out")),
    };
    drop(permit);
    let now = shared.now();
    shared.join_times.lock().unwrap().push(now);
    shared.last_join.fetch_max(now, Ordering::Relaxed);
    shared.joined.fetch_add(1, Ordering::AcqRel);
    shared.notify.notify_one();
    let mut ws = ws;
    while let Some(msg) = ws.next().await {
        let Ok(Message::Text(text)) = msg else {
            if matches!(msg, Ok(Message::Close(_)) | Err(_)) {
                break;
            }
            continue;
        };
        match shared.proto.classify(&text) {
            Incoming::Broadcast(seq) => {
                let slot = &shared.broadcasts[seq as usize % SLOTS];
                if slot.record(shared.now(), shared.expected.load(Ordering::Relaxed)) {
                    shared.notify.notify_one();
                }
            }
            Incoming::Targeted(seq) => {
                if shared.targeted[seq as usize % SLOTS].record(shared.now(), 1) {
                    shared.notify.notify_one();
                }
            }
            Incoming::Ping(reply) => {
                if ws.send(Message::text(reply)).await.is_err() {
                    break;
                }
            }
            Incoming::Other => {}
        }
    }
    shared.dropped.fetch_add(1, Ordering::Relaxed);
}

/// The control connection: sends what it is told, answers pings, ignores the rest.
async fn control(mut ws: Ws, proto: Proto, mut rx: mpsc::Receiver<String>) {
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(frame) => if ws.send(Message::text(frame)).await.is_err() { break },
                None => break,
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if let Incoming::Ping(reply) = proto.classify(&text) {
                        if ws.send(Message::text(reply)).await.is_err() { break }
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            },
        }
    }
}

/// Results of a connect phase.
#[derive(Debug, Clone)]
pub struct Joined {
    pub joined: usize,
    pub errors: usize,
    /// From the start of the phase to the last join reply.
    pub all_joined: Duration,
    /// From the start of the phase to each join reply.
    pub join_times: Vec<Duration>,
}

impl Clients {
    /// Connects and joins `n` subscribers (user indexes 0..n) and the control connection (user
    /// index n). `concurrency` bounds connects in flight; `None` is the storm: all at once.
    pub async fn connect(
        target: Target,
        n: usize,
        concurrency: Option<usize>,
    ) -> anyhow::Result<(Clients, Joined)> {
        Clients::connect_spread(vec![target], n, concurrency).await
    }

    /// As `connect`, with subscriber `i` on `targets[node_of(i, targets.len())]` (several nodes
    /// of one cluster) and the control connection on `targets[0]`.
    pub async fn connect_spread(
        targets: Vec<Target>,
        n: usize,
        concurrency: Option<usize>,
    ) -> anyhow::Result<(Clients, Joined)> {
        let target = targets.first().cloned().context("no target")?;
        let shared = Arc::new(Shared {
            base: Instant::now(),
            proto: target.proto,
            broadcasts: (0..SLOTS).map(|_| Slot::new()).collect(),
            targeted: (0..SLOTS).map(|_| Slot::new()).collect(),
            expected: AtomicU32::new(n as u32),
            notify: Notify::new(),
            joined: AtomicUsize::new(0),
            last_join: AtomicU64::new(0),
            join_errors: AtomicUsize::new(0),
            first_error: std::sync::Mutex::new(None),
            dropped: AtomicUsize::new(0),
            join_times: std::sync::Mutex::new(Vec::with_capacity(n)),
            cancelled: std::sync::atomic::AtomicBool::new(false),
        });
        let gate = concurrency.map(|c| Arc::new(Semaphore::new(c)));
        let start = shared.now();
        let tasks: Vec<JoinHandle<()>> = (0..n)
            .map(|i| {
                tokio::spawn(subscriber(
                    shared.clone(),
                    targets[node_of(i, targets.len())].clone(),
                    i,
                    gate.clone(),
                ))
            })
            .collect();
        let deadline = Instant::now() + STEP_TIMEOUT * 4;
        loop {
            let done =
                shared.joined.load(Ordering::Acquire) + shared.join_errors.load(Ordering::Acquire);
            if done >= n {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let _ = tokio::time::timeout(
                left.min(Duration::from_millis(200)),
                shared.notify.notified(),
            )
            .await;
        }
        let joined = shared.joined.load(Ordering::Acquire);
        let errors = shared.join_errors.load(Ordering::Acquire);
        let all_joined =
            Duration::from_nanos(shared.last_join.load(Ordering::Acquire).saturating_sub(start));
        if joined < n {
            shared.cancelled.store(true, Ordering::Release);
            let first = shared.first_error.lock().unwrap().clone().unwrap_or_default();
            eprintln!("  {} of {n} joined ({errors} errors; first: {first})", joined);
        }
        let control_ws = tokio::time::timeout(STEP_TIMEOUT, open(&target, n, &user_id(n)))
            .await
            .map_err(|_| anyhow!("control connection timed out"))?
            .context("control connection")?;
        let (tx, rx) = mpsc::channel(1024);
        let control_task = tokio::spawn(control(control_ws, target.proto, rx));
        shared.expected.store(joined as u32, Ordering::SeqCst);
        let http = reqwest::Client::builder().pool_max_idle_per_host(4)
        // Tako closes keep-alive connections idle for TAKO_HEADER_TIMEOUT (10 s); a client
        // that keeps them longer races the close and loses requests (status 0).
        .pool_idle_timeout(crate::runner::CLIENT_IDLE_TIMEOUT).build()?;
        let clients = Clients {
            shared,
            tasks,
            control: tx,
            control_task,
            target,
            n: joined,
            next_seq: 1,
            next_ref: 2,
            http,
        };
        let join_times = clients
            .shared
            .join_times
            .lock()
            .unwrap()
            .iter()
            .map(|t| Duration::from_nanos(t.saturating_sub(start)))
            .collect();
        Ok((clients, Joined { joined, errors, all_joined, join_times }))
    }

    pub fn dropped(&self) -> usize {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    async fn send_broadcast(&mut self) -> anyhow::Result<(u64, u64)> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.next_ref += 1;
        let slot = &self.shared.broadcasts[seq as usize % SLOTS];
        slot.reset();
        let frame = self.target.proto.broadcast_frame(seq, self.next_ref);
        let sent = self.shared.now();
        self.control.send(frame).await.map_err(|_| anyhow!("control connection gone"))?;
        Ok((seq, sent))
    }

    /// Waits until `slot` counted `expected` or the deadline passed; false on timeout.
    async fn wait_slot(&self, slot: &Slot, expected: u32, deadline: Instant) -> bool {
        loop {
            if slot.count.load(Ordering::Acquire) >= expected {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = tokio::time::timeout(
                left.min(Duration::from_millis(50)),
                self.shared.notify.notified(),
            )
            .await;
        }
    }

    /// One broadcast at a time, `repeats` times: (first, last) delivery after the send.
    pub async fn broadcast_latency(
        &mut self,
        repeats: usize,
    ) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, usize)> {
        let (mut firsts, mut lasts, mut incomplete) = (Vec::new(), Vec::new(), 0);
        let expected = self.n as u32;
        for _ in 0..repeats {
            let (seq, sent) = self.send_broadcast().await?;
            let slot = &self.shared.broadcasts[seq as usize % SLOTS];
            if !self.wait_slot(slot, expected, Instant::now() + STEP_TIMEOUT).await {
                incomplete += 1;
                if incomplete >= GIVE_UP_AFTER && firsts.len() < incomplete {
                    break;
                }
                continue;
            }
            firsts.push(Duration::from_nanos(
                slot.first.load(Ordering::Acquire).saturating_sub(sent),
            ));
            lasts
                .push(Duration::from_nanos(slot.last.load(Ordering::Acquire).saturating_sub(sent)));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok((firsts, lasts, incomplete))
    }

    /// Steady broadcasting for `duration` with `window` broadcasts in flight: a new one is sent
    /// each time the oldest has reached every subscriber. Deliveries per second.
    pub async fn broadcast_throughput(
        &mut self,
        duration: Duration,
        window: usize,
    ) -> anyhow::Result<(f64, usize)> {
        let expected = self.n as u32;
        let mut in_flight = std::collections::VecDeque::new();
        let start = self.shared.now();
        let stop_sending = Instant::now() + duration;
        let mut delivered = 0u64;
        let mut incomplete = 0;
        for _ in 0..window {
            in_flight.push_back(self.send_broadcast().await?.0);
        }
        let mut last_seen = start;
        while let Some(seq) = in_flight.pop_front() {
            let slot = &self.shared.broadcasts[seq as usize % SLOTS];
            if !self.wait_slot(slot, expected, Instant::now() + STEP_TIMEOUT).await {
                incomplete += 1;
            }
            delivered += u64::from(slot.count.load(Ordering::Acquire));
            last_seen = last_seen.max(slot.last.load(Ordering::Acquire));
            if Instant::now() < stop_sending && incomplete == 0 {
                in_flight.push_back(self.send_broadcast().await?.0);
            }
        }
        let secs = (last_seen.saturating_sub(start)) as f64 / 1e9;
        Ok((if secs > 0.0 { delivered as f64 / secs } else { 0.0 }, incomplete))
    }

    /// Whether the server offers targeted messages at all (Tako: the operators' route).
    pub async fn targeted_available(&mut self) -> anyhow::Result<Result<(), String>> {
        if self.target.proto.targeted_frame("x", 0).is_some() {
            return Ok(Ok(()));
        }
        let base = self.target.http_base.clone().ok_or_else(|| anyhow!("no HTTP base"))?;
        // A real message to a real online user: the probe is the first measurement's twin.
        let seq = self.next_seq;
        self.next_seq += 1;
        let status = self.post_message(&base, 0, seq).await?;
        if status.is_success() {
            let slot = &self.shared.targeted[seq as usize % SLOTS];
            let _ = self.wait_slot(slot, 1, Instant::now() + STEP_TIMEOUT).await;
            Ok(Ok(()))
        } else {
            Ok(Err(format!("POST /api/messages answered {status}")))
        }
    }

    async fn post_message(
        &self,
        base: &str,
        index: usize,
        seq: u64,
    ) -> anyhow::Result<reqwest::StatusCode> {
        let body = serde_json::json!({"user_id": user_id(index), "message": format!("t={seq}")});
        let response = self
            .http
            .post(format!("{base}/api/messages"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(STEP_TIMEOUT)
            .send()
            .await?;
        Ok(response.status())
    }

    /// `repeats` messages, one at a time, each to a different online user: send → receipt.
    pub async fn targeted_latency(
        &mut self,
        repeats: usize,
    ) -> anyhow::Result<(Vec<Duration>, usize)> {
        let (samples, lost) = self.targeted_latency_by_user(repeats).await?;
        Ok((samples.into_iter().map(|(_, d)| d).collect(), lost))
    }

    /// As `targeted_latency`, each sample with the index of the user it went to.
    pub async fn targeted_latency_by_user(
        &mut self,
        repeats: usize,
    ) -> anyhow::Result<(Vec<(usize, Duration)>, usize)> {
        let (mut samples, mut lost) = (Vec::new(), 0);
        for k in 0..repeats {
            match self.targeted_once(k).await? {
                Some(sample) => samples.push(sample),
                None => {
                    lost += 1;
                    if lost >= GIVE_UP_AFTER && samples.len() < lost {
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok((samples, lost))
    }

    /// Message number `k` (to online user `(k·7919 + 13) mod n`, so consecutive `k` reach
    /// different users): (user index, send → receipt), or `None` when not received in 10 s.
    pub async fn targeted_once(&mut self, k: usize) -> anyhow::Result<Option<(usize, Duration)>> {
        let index = (k * 7919 + 13) % self.n.max(1);
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = &self.shared.targeted[seq as usize % SLOTS];
        slot.reset();
        let sent = self.shared.now();
        match self.target.proto.targeted_frame(&user_id(index), seq) {
            Some(frame) => {
                self.control.send(frame).await.map_err(|_| anyhow!("control connection gone"))?
            }
            None => {
                let base = self.target.http_base.clone().ok_or_else(|| anyhow!("no HTTP base"))?;
                let status = self.post_message(&base, index, seq).await?;
                if !status.is_success() {
                    bail!("POST /api/messages answered {status}");
                }
            }
        }
        if self.wait_slot(slot, 1, Instant::now() + STEP_TIMEOUT).await {
            Ok(Some((
                index,
                Duration::from_nanos(slot.first.load(Ordering::Acquire).saturating_sub(sent)),
            )))
        } else {
            Ok(None)
        }
    }

    /// Drops every connection (the server sees them close).
    pub async fn close(self) {
        drop(self.control);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.control_task).await;
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
