//! Starts each server in turn, drives it with the generator, and prints one table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::gen::{Clients, Target};
use crate::proto::{user_id, Proto};
use crate::stats::{anon_of, fmt_bytes, fmt_duration, fmt_rate, quantiles, rss_of_tree, Quantiles};

/// How long the harness's HTTP clients keep an idle keep-alive connection: under Tako's
/// `TAKO_HEADER_TIMEOUT` (10 s), after which the server closes it.
pub const CLIENT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// "Tako <rev> (…)" for the baseline build, set once by main.
pub static BASELINE_LABEL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
pub static TAKO_LABEL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
pub static TAKO_NO_PRESENCE_LABEL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
pub static TAKO_PHOENIX_LABEL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tako,
    /// The same build with `TAKO_PRESENCE=off` (nobody tracked: no N² presence traffic).
    TakoNoPresence,
    /// The same build with `TAKO_PRESENCE=phoenix` (every joiner gets the list and every diff,
    /// as Phoenix does).
    TakoPhoenix,
    /// Another build of Tako (`--tako-baseline REV`), for before/after.
    TakoBaseline,
    Floor,
    AxumFloor,
    SocketIo,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "tako" => Some(Kind::Tako),
            "tako-nopresence" => Some(Kind::TakoNoPresence),
            "tako-phoenix" => Some(Kind::TakoPhoenix),
            "floor" | "raw" => Some(Kind::Floor),
            "axum-floor" => Some(Kind::AxumFloor),
            "socketio" | "socket.io" => Some(Kind::SocketIo),
            _ => None,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Kind::Tako => TAKO_LABEL.get().copied().unwrap_or("Tako"),
            Kind::TakoNoPresence => {
                TAKO_NO_PRESENCE_LABEL.get().copied().unwrap_or("Tako, TAKO_PRESENCE=off")
            }
            Kind::TakoPhoenix => {
                TAKO_PHOENIX_LABEL.get().copied().unwrap_or("Tako, TAKO_PRESENCE=phoenix")
            }
            Kind::TakoBaseline => BASELINE_LABEL.get().copied().unwrap_or("Tako baseline"),
            Kind::Floor => "raw floor (tokio-tungstenite)",
            Kind::AxumFloor => "axum floor (axum WebSocketUpgrade)",
            Kind::SocketIo => "Socket.IO 4.8 (Node 20)",
        }
    }
    fn proto(self) -> Proto {
        match self {
            Kind::Tako | Kind::TakoNoPresence | Kind::TakoPhoenix | Kind::TakoBaseline => {
                Proto::Phoenix
            }
            Kind::Floor | Kind::AxumFloor => Proto::Raw,
            Kind::SocketIo => Proto::SocketIo,
        }
    }
}

pub struct Paths {
    pub tako: PathBuf,
    pub tako_baseline: Option<PathBuf>,
    /// A server whose RSS passes this is killed and the phase reported as failed.
    pub max_rss: u64,
    pub bench: PathBuf,
    pub socketio_dir: PathBuf,
    pub work: PathBuf,
}

pub struct Server {
    pub(crate) child: Child,
    pub pid: u32,
    pub port: u16,
}

impl Server {
    pub async fn stop(mut self) {
        // SIGTERM first (Tako drains its sockets), then SIGKILL after a bounded wait.
        let _ = std::process::Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
        if tokio::time::timeout(Duration::from_secs(8), self.child.wait()).await.is_err() {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_tcp(port: u16, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("server exited early: {status}");
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("server on port {port} not ready within 30 s")
}

pub(crate) async fn wait_http(port: u16, child: &mut Child) -> anyhow::Result<()> {
    wait_tcp(port, child).await?;
    let url = format!("http://127.0.0.1:{port}/healthz");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(&url).await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} not 200 within 30 s")
}

pub(crate) fn log_file(work: &Path, name: &str) -> anyhow::Result<Stdio> {
    Ok(Stdio::from(std::fs::File::create(work.join(format!("{name}.log")))?))
}

fn tako_command(paths: &Paths, database_url: &str) -> Command {
    tako_command_with(&paths.tako, database_url)
}

pub(crate) fn tako_command_with(bin: &Path, database_url: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env("DATABASE_URL", database_url)
        .env("TAKO_BIND", "127.0.0.1")
        .env_remove("HOLOQUEST_API_TOKEN")
        .env_remove("TAKO_ADMIN_TOKEN")
        .env_remove("TAKO_PUBSUB_URL")
        .env("TAKO_ENV", "dev")
        .env("TAKO_LOG", "warn")
        // Bench clients send no heartbeats; no phase lasts this long.
        .env("TAKO_HEARTBEAT_TIMEOUT", "3600")
        .env("TAKO_SHUTDOWN_TIMEOUT", "3")
        // Policy limits off, capacity measured: the control socket sends hundreds of pushes a
        // second and wrk registers thousands of users a second, all from one address.
        .env("TAKO_SOCKET_RATE", "0")
        .env("TAKO_REGISTRATIONS_PER_MINUTE", "0")
        .env("TAKO_MAX_CONNECTIONS_PER_IP", "0")
        .env("TAKO_MAX_CONNECTIONS", "0")
        .kill_on_drop(true);
    cmd
}

pub async fn start(kind: Kind, paths: &Paths, database_url: &str) -> anyhow::Result<Server> {
    let port = free_port()?;
    let (mut cmd, http) = match kind {
        Kind::Tako => (tako_command(paths, database_url), true),
        Kind::TakoNoPresence => {
            let mut c = tako_command(paths, database_url);
            c.env("TAKO_PRESENCE", "off");
            (c, true)
        }
        Kind::TakoPhoenix => {
            let mut c = tako_command(paths, database_url);
            c.env("TAKO_PRESENCE", "phoenix");
            (c, true)
        }
        Kind::TakoBaseline => {
            let bin = paths.tako_baseline.as_ref().context("no baseline build")?;
            (tako_command_with(bin, database_url), true)
        }
        Kind::Floor => {
            let mut c = Command::new(&paths.bench);
            c.arg("floor").arg("--port").arg(port.to_string());
            (c, false)
        }
        Kind::AxumFloor => {
            let mut c = Command::new(&paths.bench);
            c.arg("axum-floor").arg("--port").arg(port.to_string());
            (c, false)
        }
        Kind::SocketIo => {
            let mut c = Command::new("node");
            c.arg(paths.socketio_dir.join("server.js")).current_dir(&paths.socketio_dir);
            (c, false)
        }
    };
    cmd.env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(log_file(&paths.work, &format!("{kind:?}-{port}"))?)
        .stderr(log_file(&paths.work, &format!("{kind:?}-{port}.err"))?)
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("starting {kind:?}"))?;
    let pid = child.id().context("child pid")?;
    if http {
        wait_http(port, &mut child).await?;
    } else {
        wait_tcp(port, &mut child).await?;
    }
    Ok(Server { child, pid, port })
}

/// A SQLite database with users 0..=n (n is the control connection), migrated by Tako itself.
pub async fn sqlite_with_users(paths: &Paths, n: usize, kind: Kind) -> anyhow::Result<String> {
    let file = paths.work.join(format!("users-{kind:?}-{n}.db"));
    let url = format!("sqlite://{}", file.display());
    if file.exists() {
        return Ok(url);
    }
    let bin = if kind == Kind::TakoBaseline {
        paths.tako_baseline.clone().context("no baseline")?
    } else {
        paths.tako.clone()
    };
    let status =
        tako_command_with(&bin, &url).arg("migrate").stdout(Stdio::null()).status().await?;
    if !status.success() {
        bail!("tako migrate failed: {status}");
    }
    use sqlx::sqlite::SqlitePoolOptions;
    let pool = SqlitePoolOptions::new().max_connections(1).connect(&url).await?;
    let mut tx = pool.begin().await?;
    let now = chrono::Utc::now().timestamp_micros();
    for chunk in (0..=n).collect::<Vec<_>>().chunks(5000) {
        let mut sql = String::from(
            "INSERT INTO users (id, nickname, stamps_collected, inserted_at, updated_at, stamps_changed_at) VALUES ",
        );
        for (k, i) in chunk.iter().enumerate() {
            if k > 0 {
                sql.push(',');
            }
            write!(sql, "('{}','bench{i}',0,{now},{now},{now})", user_id(*i))?;
        }
        sqlx::query(&sql).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    pool.close().await;
    Ok(url)
}

#[derive(Debug, Default, Clone)]
pub struct Row {
    pub kind: Option<Kind>,
    pub n: usize,
    pub joined: usize,
    pub rss_before: u64,
    pub rss_after: u64,
    pub first: Option<Quantiles>,
    pub last: Option<Quantiles>,
    pub broadcast_incomplete: usize,
    pub deliveries_per_sec: Option<f64>,
    pub targeted: Option<Quantiles>,
    pub targeted_note: Option<String>,
    pub storm: Option<Duration>,
    pub storm_joined: usize,
    pub storm_median: Option<Duration>,
    pub notes: Vec<String>,
}

impl Row {
    /// `None` unless every socket joined and both RSS readings exist (a killed server has none).
    pub fn per_socket(&self) -> Option<f64> {
        (self.joined > 0 && self.joined == self.n && self.rss_before > 0 && self.rss_after > 0)
            .then(|| (self.rss_after as f64 - self.rss_before as f64) / self.joined as f64)
    }
}

pub struct WsPlan {
    pub repeats: usize,
    pub throughput_secs: u64,
    pub window: usize,
    pub targeted_repeats: usize,
    /// Connect storms (scenario 4), each on a fresh server.
    pub storms: usize,
}

/// Clients that connect, join and leave before scenario 1's first reading.
const WARM_UP: usize = 200;

/// Scenarios 1–3 on one fresh server, then scenario 4 on another fresh one.
pub async fn run_ws(kind: Kind, n: usize, paths: &Paths, plan: &WsPlan) -> anyhow::Result<Row> {
    let mut row = Row { kind: Some(kind), n, ..Row::default() };
    let is_tako =
        matches!(kind, Kind::Tako | Kind::TakoNoPresence | Kind::TakoPhoenix | Kind::TakoBaseline);
    // Each Tako build migrates its own copy (a newer build may add tables).
    let db = if is_tako { sqlite_with_users(paths, n, kind).await? } else { String::new() };

    // 1–3: paced connects (64 in flight), so the memory is that of idle joined sockets.
    let server = start(kind, paths, &db).await?;
    let target = Target {
        proto: kind.proto(),
        addr: ([127, 0, 0, 1], server.port).into(),
        http_base: is_tako.then(|| format!("http://127.0.0.1:{}", server.port)),
    };
    let watchdog = Watchdog::start(server.pid, paths.max_rss);
    let result = async {
        // Warm-up: what a server allocates once, on its first connections (caches, database
        // pools, its threads' allocator arenas), is in the "before" reading rather than
        // divided among the N sockets measured.
        let (warm, _) = Clients::connect(target.clone(), WARM_UP.min(n), Some(64)).await?;
        warm.close().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        row.rss_before = rss_of_tree(server.pid).unwrap_or(0);
        let anon_before = anon_of(server.pid).unwrap_or(0);
        let (mut clients, joined) = Clients::connect(target.clone(), n, Some(64)).await?;
        row.joined = joined.joined;
        if joined.errors > 0 {
            row.notes.push(format!("{} of {n} failed to join", joined.errors));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        row.rss_after = rss_of_tree(server.pid).unwrap_or(0);
        let anon_after = anon_of(server.pid).unwrap_or(0);
        eprintln!(
            "  [{kind:?} n={n}] joined {} rss {} → {}; anonymous {} → {} ({} per socket)",
            row.joined,
            fmt_bytes(row.rss_before as f64),
            fmt_bytes(row.rss_after as f64),
            fmt_bytes(anon_before as f64),
            fmt_bytes(anon_after as f64),
            fmt_bytes((anon_after as f64 - anon_before as f64) / row.joined.max(1) as f64)
        );

        let (firsts, lasts, incomplete) = clients.broadcast_latency(plan.repeats).await?;
        row.first = quantiles(&firsts);
        row.last = quantiles(&lasts);
        row.broadcast_incomplete = incomplete;
        if incomplete > 0 {
            row.notes.push(format!(
                "{incomplete} of {} broadcasts did not reach everyone within 15 s",
                plan.repeats
            ));
        }
        let (rate, incomplete) = clients
            .broadcast_throughput(Duration::from_secs(plan.throughput_secs), plan.window)
            .await?;
        row.deliveries_per_sec = Some(rate);
        if incomplete > 0 {
            row.notes.push(format!("steady broadcast: {incomplete} incomplete"));
        }
        eprintln!(
            "  [{kind:?} n={n}] broadcast last p50 {:?}, {}",
            row.last.map(|q| q.p50),
            fmt_rate(rate)
        );

        match clients.targeted_available().await? {
            Ok(()) => {
                let (samples, lost) = clients.targeted_latency(plan.targeted_repeats).await?;
                row.targeted = quantiles(&samples);
                if lost > 0 {
                    row.notes.push(format!("{lost} targeted messages lost"));
                }
            }
            Err(why) => row.targeted_note = Some(why),
        }
        if clients.dropped() > 0 {
            row.notes
                .push(format!("{} sockets closed by the server during the run", clients.dropped()));
        }
        clients.close().await;
        anyhow::Ok(())
    }
    .await;
    end_phase(watchdog, server, &mut row, result, "scenarios 1–3").await;

    // 4: the storm, each on a fresh server; the median storm stands for the row (one storm is
    // at the mercy of a SYN retried a second later).
    let mut storms: Vec<(Duration, usize, Option<Duration>)> = Vec::new();
    for storm in 1..=plan.storms.max(1) {
        let server = start(kind, paths, &db).await?;
        let target = Target { addr: ([127, 0, 0, 1], server.port).into(), ..target.clone() };
        let watchdog = Watchdog::start(server.pid, paths.max_rss);
        let result = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let overflows = crate::stats::listen_overflows();
            let (clients, joined) = Clients::connect(target, n, None).await?;
            if let (Some(a), Some(b)) = (overflows, crate::stats::listen_overflows()) {
                if b > a {
                    row.notes.push(format!(
                        "storm {storm}: the kernel counted {} listen-queue overflows (SYNs dropped, retried by the client after 1 s, 3 s, …)",
                        b - a
                    ));
                }
            }
            let median = crate::stats::percentile(&joined.join_times, 50.0);
            storms.push((joined.all_joined, joined.joined, median));
            eprintln!("  [{kind:?} n={n}] storm {storm}: {} joined in {:?} (median {median:?})", joined.joined, joined.all_joined);
            clients.close().await;
            anyhow::Ok(())
        }
        .await;
        end_phase(watchdog, server, &mut row, result, "storm").await;
    }
    if let Some((all, joined, median)) = median_storm(&storms) {
        (row.storm, row.storm_joined, row.storm_median) = (Some(all), joined, median);
    }
    if storms.len() > 1 {
        let each: Vec<String> =
            storms.iter().map(|(d, j, _)| format!("{j} in {}", fmt_duration(*d))).collect();
        row.notes.push(format!("storms: {}; the table shows the median", each.join(", ")));
    }
    Ok(row)
}

/// The storm that stands for several: the median of their times (the upper one of an even
/// count), with the fewest joined of any (so one storm that did not complete shows).
fn median_storm(
    storms: &[(Duration, usize, Option<Duration>)],
) -> Option<(Duration, usize, Option<Duration>)> {
    let mut sorted = storms.to_vec();
    sorted.sort_by_key(|(all, _, _)| *all);
    let (all, _, median) = *sorted.get(sorted.len() / 2)?;
    let fewest = storms.iter().map(|(_, joined, _)| *joined).min()?;
    Some((all, fewest, median))
}

/// Stops a phase's server and notes how the phase ended (the watchdog's kill, an error).
async fn end_phase(
    watchdog: Watchdog,
    server: Server,
    row: &mut Row,
    result: anyhow::Result<()>,
    phase: &str,
) {
    watchdog.finish(row);
    server.stop().await;
    if let Err(e) = result {
        row.notes.push(format!("{phase} stopped: {e:#}"));
    }
}

/// Kills a server whose RSS passes the limit (the machine is shared), and says so.
pub(crate) struct Watchdog {
    task: tokio::task::JoinHandle<Option<u64>>,
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watchdog {
    pub(crate) fn start(pid: u32, limit: u64) -> Watchdog {
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                match rss_of_tree(pid) {
                    Some(rss) if rss > limit => {
                        let _ = std::process::Command::new("kill")
                            .arg("-KILL")
                            .arg(pid.to_string())
                            .status();
                        return Some(rss);
                    }
                    Some(_) => {}
                    None => return None,
                }
            }
        });
        Watchdog { task }
    }

    fn finish(self, row: &mut Row) {
        row.notes.extend(self.note());
    }

    /// Why the server was killed, if it was.
    pub(crate) fn note(self) -> Option<String> {
        let mut this = self;
        match futures_util::FutureExt::now_or_never(&mut this.task) {
            Some(Ok(Some(rss))) => Some(format!(
                "server killed by the harness: RSS {} passed the limit",
                fmt_bytes(rss as f64)
            )),
            _ => None,
        }
    }
}

pub(crate) fn q(q: Option<Quantiles>) -> String {
    match q {
        Some(q) => format!("{} / {}", fmt_duration(q.p50), fmt_duration(q.p99)),
        None => "–".to_owned(),
    }
}

pub fn ws_table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| server | N | joined | RSS before → after | 1. RSS per socket | 2. first delivery p50 / p99 | 2. last delivery p50 / p99 | 2. deliveries/s (steady) | 3. targeted p50 / p99 | 4. storm: all joined (median) |\n");
    out.push_str("|---|---:|---:|---|---:|---|---|---:|---|---|\n");
    for r in rows {
        let kind = r.kind.map(Kind::label).unwrap_or("?");
        let targeted = match (&r.targeted, &r.targeted_note) {
            (Some(t), _) => q(Some(*t)),
            (None, Some(note)) => format!("n/a ({note})"),
            _ => "–".to_owned(),
        };
        let median =
            r.storm_median.map(|m| format!(" (median {})", fmt_duration(m))).unwrap_or_default();
        let storm = match r.storm {
            Some(d) if r.storm_joined == r.n => format!("{}{median}", fmt_duration(d)),
            Some(d) => format!("{} of {} in {}{median}", r.storm_joined, r.n, fmt_duration(d)),
            None => "–".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {kind} | {} | {} | {} → {} | {} | {} | {} | {} | {targeted} | {storm} |",
            r.n,
            r.joined,
            fmt_bytes(r.rss_before as f64),
            fmt_bytes(r.rss_after as f64),
            r.per_socket().map(fmt_bytes).unwrap_or_else(|| "–".into()),
            q(r.first),
            q(r.last),
            r.deliveries_per_sec.map(fmt_rate).unwrap_or_else(|| "–".into()),
        );
    }
    let notes: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            r.notes.iter().map(move |n| {
                format!("- {} N={}: {n}", r.kind.map(Kind::label).unwrap_or("?"), r.n)
            })
        })
        .collect();
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes.join("\n"));
        out.push('\n');
    }
    out
}

fn find(rows: &[Row], kind: Kind, n: usize) -> Option<&Row> {
    rows.iter().find(|r| r.kind == Some(kind) && r.n == n)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

/// The issue's targets, each as a ratio between rows of this run, for each Tako build measured.
pub fn targets(rows: &[Row], http: &[HttpRow]) -> String {
    let mut out = String::from(
        "| Tako build | target | measured (same run) | verdict |\n|---|---|---|---|\n",
    );
    let sizes: Vec<usize> = {
        let mut s: Vec<usize> = rows.iter().map(|r| r.n).collect();
        s.sort_unstable();
        s.dedup();
        s
    };
    // Issue 15: tracking everyone costs the storm little when nobody asks for frames.
    for &n in &sizes {
        let storm =
            |kind| find(rows, kind, n).filter(|r| r.storm_joined >= n).and_then(|r| r.storm);
        let Some(off) = storm(Kind::TakoNoPresence) else { continue };
        for build in [Kind::Tako, Kind::TakoPhoenix] {
            let label = build.label();
            match storm(build) {
                Some(t) => {
                    let ratio = t.as_secs_f64() / off.as_secs_f64().max(1e-9);
                    let _ = writeln!(
                        out,
                        "| {label} | storm of N={n} within 1.25× of TAKO_PRESENCE=off | {} / {} = {ratio:.2}× | {} |",
                        fmt_duration(t),
                        fmt_duration(off),
                        verdict(ratio <= 1.25)
                    );
                }
                None if find(rows, build, n).is_some() => {
                    let _ = writeln!(
                        out,
                        "| {label} | storm of N={n} within 1.25× of TAKO_PRESENCE=off | not all joined | {} |",
                        verdict(false)
                    );
                }
                None => {}
            }
        }
    }
    for build in [Kind::Tako, Kind::TakoNoPresence, Kind::TakoPhoenix, Kind::TakoBaseline] {
        if !rows.iter().any(|r| r.kind == Some(build)) {
            continue;
        }
        let b = build.label();
        for &n in &sizes {
            let Some(tako) = find(rows, build, n) else { continue };
            let sio = find(rows, Kind::SocketIo, n);
            let floor = find(rows, Kind::Floor, n);
            match tako.per_socket() {
                Some(t) => {
                    let _ = writeln!(
                        out,
                        "| {b} | memory per idle joined socket ≤ 4 KiB (N={n}) | {} | {} |",
                        fmt_bytes(t),
                        verdict(t <= 4096.0)
                    );
                    if let Some(a) = find(rows, Kind::AxumFloor, n).and_then(Row::per_socket) {
                        let _ = writeln!(
                            out,
                            "| {b} | (analysis) minus the axum floor = Tako's own state per socket (N={n}) | {} − {} = {} | – |",
                            fmt_bytes(t),
                            fmt_bytes(a),
                            fmt_bytes(t - a)
                        );
                    }
                    if let Some(s) = sio.and_then(Row::per_socket) {
                        let _ = writeln!(
                            out,
                            "| {b} | memory < ⅓ of Socket.IO's (N={n}) | {} / {} = {:.2} | {} |",
                            fmt_bytes(t),
                            fmt_bytes(s),
                            t / s,
                            verdict(t < s / 3.0)
                        );
                    }
                }
                None => {
                    let _ = writeln!(out, "| {b} | memory per idle joined socket (N={n}) | not measured: {} of {n} joined{} | **missed** |",
                        tako.joined, if tako.rss_after == 0 { ", server killed" } else { "" });
                }
            }
            match tako.deliveries_per_sec {
                // Fewer subscribers, with the rest still joining: no ratio against full rows.
                Some(t) if tako.joined < n => {
                    let _ = writeln!(
                        out,
                        "| {b} | deliveries/s (N={n}) | {} to {} of {n} subscribers, joins still arriving | not comparable |",
                        fmt_rate(t),
                        tako.joined
                    );
                }
                Some(t) => {
                    if let Some(s) = sio.and_then(|r| r.deliveries_per_sec) {
                        let _ = writeln!(
                            out,
                            "| {b} | deliveries/s ≥ 3× Socket.IO's (N={n}) | {} / {} = {:.2}× | {} |",
                            fmt_rate(t),
                            fmt_rate(s),
                            t / s,
                            verdict(t >= 3.0 * s)
                        );
                    }
                    if let Some(f) = floor.and_then(|r| r.deliveries_per_sec) {
                        let _ = writeln!(
                            out,
                            "| {b} | deliveries/s ≥ 80% of the raw floor (N={n}) | {} / {} = {:.0}% | {} |",
                            fmt_rate(t),
                            fmt_rate(f),
                            100.0 * t / f,
                            verdict(t >= 0.8 * f)
                        );
                    }
                }
                None => {
                    let _ =
                        writeln!(out, "| {b} | deliveries/s (N={n}) | not measured | **missed** |");
                }
            }
            if let Some(d) = tako.storm {
                if n >= 10_000 {
                    let ok = tako.storm_joined == n && d < Duration::from_secs(5);
                    let _ = writeln!(
                        out,
                        "| {b} | connect storm of {n}: all joined < 5 s | {} of {n} in {} | {} |",
                        tako.storm_joined,
                        fmt_duration(d),
                        verdict(ok)
                    );
                }
            }
        }
        let with_targeted: Vec<&Row> = sizes
            .iter()
            .filter_map(|&n| find(rows, build, n))
            .filter(|r| r.targeted.is_some() && r.joined == r.n)
            .collect();
        if let (Some(lo), Some(hi)) = (with_targeted.first(), with_targeted.last()) {
            if hi.n > lo.n {
                let (a, c) = (lo.targeted.unwrap(), hi.targeted.unwrap());
                let r50 = c.p50.as_secs_f64() / a.p50.as_secs_f64();
                let r99 = c.p99.as_secs_f64() / a.p99.as_secs_f64();
                let _ = writeln!(
                    out,
                    "| {b} | targeted latency at N={} within 1.5× of N={} (issue: 50k vs 1k) | p50 {} → {} = {r50:.2}×, p99 {} → {} = {r99:.2}× | {} |",
                    hi.n, lo.n, fmt_duration(a.p50), fmt_duration(c.p50), fmt_duration(a.p99), fmt_duration(c.p99),
                    verdict(r50 <= 1.5 && r99 <= 1.5)
                );
            }
        } else if let Some(why) =
            rows.iter().filter(|r| r.kind == Some(build)).find_map(|r| r.targeted_note.clone())
        {
            let _ =
                writeln!(out, "| {b} | targeted latency within 1.5× | not measured: {why} | – |");
        }
    }
    for pair in ["leaderboard", "registrations"] {
        let t = http.iter().find(|h| h.server == "Tako" && h.what == pair);
        let m = http.iter().find(|h| h.server != "Tako" && h.what == pair);
        if let (Some(t), Some(m)) = (t, m) {
            let _ = writeln!(
                out,
                "| {} | HTTP {pair} ≥ 80% of minimal axum+sqlx | {:.0} / {:.0} req/s = {:.0}% | {} |",
                Kind::Tako.label(),
                t.rps,
                m.rps,
                100.0 * t.rps / m.rps,
                verdict(t.rps >= 0.8 * m.rps && t.errors == 0)
            );
        }
    }
    out
}

#[derive(Debug, Clone)]
pub struct HttpRow {
    pub server: String,
    pub what: &'static str,
    pub rps: f64,
    pub p50: String,
    pub p99: String,
    pub errors: u64,
}

/// `Requests/sec`, latency percentiles and non-2xx count from wrk's output.
pub fn parse_wrk(out: &str) -> Option<(f64, String, String, u64)> {
    let rps: f64 =
        out.lines().find_map(|l| l.trim().strip_prefix("Requests/sec:"))?.trim().parse().ok()?;
    let pct = |p: &str| {
        out.lines()
            .find_map(|l| {
                let l = l.trim();
                l.strip_prefix(p)
                    .filter(|_| l.ends_with(|c: char| c.is_ascii_alphabetic()))
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let errors = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum::<u64>()
        + out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Socket errors:"))
            .map(|v| {
                v.split(',')
                    .filter_map(|kv| kv.split_whitespace().last()?.parse::<u64>().ok())
                    .sum::<u64>()
            })
            .sum::<u64>();
    Some((rps, pct("50%"), pct("99%"), errors))
}

pub fn http_table(rows: &[HttpRow]) -> String {
    let mut out = String::from(
        "| server | request | req/s | p50 | p99 | errors |\n|---|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} | {} |",
            r.server, r.what, r.rps, r.p50, r.p99, r.errors
        );
    }
    out
}

pub(crate) const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const PG_BENCH: &str = "postgres://postgres@127.0.0.1:5432/tako_bench";

pub(crate) async fn wrk(
    paths: &Paths,
    url: &str,
    lua: Option<&str>,
    secs: u64,
) -> anyhow::Result<String> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c16", &format!("-d{secs}s"), "--latency", "--timeout", "5s"]);
    if let Some(lua) = lua {
        let script = paths.work.join("post.lua");
        std::fs::write(&script, lua)?;
        cmd.arg("-s").arg(script);
    }
    cmd.arg(url).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(secs + 30), cmd.output())
        .await
        .context("wrk hung")??;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const REGISTER_LUA: &str = r#"wrk.method = "POST"
wrk.body = '{"data":{"type":"user","attributes":{"nickname":"bench_user"}}}'
wrk.headers["Content-Type"] = "application/vnd.api+json"
wrk.headers["Accept"] = "application/vnd.api+json"
"#;

/// Scenario 5 on PostgreSQL with `users` users: Tako, then the minimal handler.
pub async fn run_http(paths: &Paths, users: u64, secs: u64) -> anyhow::Result<Vec<HttpRow>> {
    use sqlx::Executor;
    let admin = sqlx::PgPool::connect(PG_ADMIN).await.context("PostgreSQL on 127.0.0.1:5432")?;
    admin.execute("DROP DATABASE IF EXISTS tako_bench").await?;
    admin.execute("CREATE DATABASE tako_bench").await?;
    let result = async {
        let status = tako_command(paths, PG_BENCH).arg("migrate").stdout(Stdio::null()).status().await?;
        if !status.success() {
            bail!("tako migrate on PostgreSQL failed");
        }
        let started = Instant::now();
        let pool = sqlx::PgPool::connect(PG_BENCH).await?;
        sqlx::query(
            "INSERT INTO users (id, nickname, stamps_collected, inserted_at, updated_at, stamps_changed_at)
             SELECT md5(i::text)::uuid, 'user' || i, (i * 7919) % 5000,
                    now() - make_interval(secs => i), now() - make_interval(secs => i), now() - make_interval(secs => i)
             FROM generate_series(1, $1) AS i",
        )
        .bind(users as i64)
        .execute(&pool)
        .await?;
        pool.execute("VACUUM ANALYZE users").await?;
        pool.close().await;
        eprintln!("  PostgreSQL: {users} users inserted in {:?}", started.elapsed());

        let mut rows = Vec::new();
        for server in ["Tako", "minimal axum+sqlx"] {
            let port = free_port()?;
            let mut cmd = if server == "Tako" {
                let mut c = tako_command(paths, PG_BENCH);
                c.env("PORT", port.to_string());
                c
            } else {
                let mut c = Command::new(&paths.bench);
                c.args(["http-floor", "--port", &port.to_string(), "--database-url", PG_BENCH]).kill_on_drop(true);
                c
            };
            cmd.stdin(Stdio::null())
                .stdout(log_file(&paths.work, &format!("http-{port}"))?)
                .stderr(log_file(&paths.work, &format!("http-{port}.err"))?);
            let mut child = cmd.spawn()?;
            let pid = child.id().context("pid")?;
            let ready = wait_http(port, &mut child).await;
            let server_proc = Server { child, pid, port };
            if let Err(e) = ready {
                server_proc.stop().await;
                return Err(e);
            }
            let base = format!("http://127.0.0.1:{port}");
            let probe = reqwest::Client::new()
                .post(format!("{base}/api/json/accounts/users"))
                .header("content-type", "application/vnd.api+json")
                .header("accept", "application/vnd.api+json")
                .body(r#"{"data":{"type":"user","attributes":{"nickname":"bench_user"}}}"#)
                .send()
                .await?
                .status();
            if probe.as_u16() != 201 {
                server_proc.stop().await;
                bail!("{server}: registration probe answered {probe}");
            }
            for (what, url, lua) in [
                ("leaderboard", format!("{base}/api/json/leaderboard"), None),
                ("registrations", format!("{base}/api/json/accounts/users"), Some(REGISTER_LUA)),
            ] {
                let out = wrk(paths, &url, lua, secs).await?;
                let (rps, p50, p99, errors) = parse_wrk(&out).with_context(|| format!("wrk output: {out}"))?;
                eprintln!("  [{server}] {what}: {rps:.0} req/s, p50 {p50}, p99 {p99}, errors {errors}");
                rows.push(HttpRow { server: server.to_owned(), what, rps, p50, p99, errors });
            }
            server_proc.stop().await;
        }
        Ok(rows)
    }
    .await;
    admin.execute("DROP DATABASE IF EXISTS tako_bench WITH (FORCE)").await?;
    admin.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_storms_stand_as_their_median_with_the_fewest_joined() {
        let ms = Duration::from_millis;
        assert_eq!(median_storm(&[]), None);
        let one = [(ms(900), 10, Some(ms(400)))];
        assert_eq!(median_storm(&one), Some((ms(900), 10, Some(ms(400)))));
        let three =
            [(ms(2000), 10, Some(ms(1))), (ms(800), 10, Some(ms(2))), (ms(1100), 9, Some(ms(3)))];
        assert_eq!(median_storm(&three), Some((ms(1100), 9, Some(ms(3)))));
        let two = [(ms(700), 10, None), (ms(300), 10, None)];
        assert_eq!(median_storm(&two), Some((ms(700), 10, None)));
    }

    const WRK: &str = "Running 2s test @ http://127.0.0.1:4000/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms  300.00us   5.00ms   90.00%
  Latency Distribution
     50%    0.98ms
     75%    1.10ms
     90%    1.30ms
     99%    2.50ms
  31234 requests in 2.00s, 10.00MB read
  Non-2xx or 3xx responses: 12
Requests/sec:  15617.00
Transfer/sec:      5.00MB
";

    #[test]
    fn wrk_output() {
        let (rps, p50, p99, errors) = parse_wrk(WRK).unwrap();
        assert_eq!(rps, 15617.0);
        assert_eq!((p50.as_str(), p99.as_str()), ("0.98ms", "2.50ms"));
        assert_eq!(errors, 12);
        assert!(parse_wrk("garbage").is_none());
    }

    #[test]
    fn partial_join_is_not_compared() {
        let tako = Row {
            kind: Some(Kind::Tako),
            n: 19000,
            joined: 12977,
            deliveries_per_sec: Some(250_000.0),
            ..Row::default()
        };
        let floor = Row {
            kind: Some(Kind::Floor),
            n: 19000,
            joined: 19000,
            deliveries_per_sec: Some(200_000.0),
            ..Row::default()
        };
        let t = targets(&[tako, floor], &[]);
        assert!(
            t.contains("12977 of 19000 subscribers, joins still arriving | not comparable |"),
            "{t}"
        );
        assert!(!t.contains("80% of the raw floor"), "{t}");
    }

    #[test]
    fn per_socket_memory() {
        let row = Row {
            n: 1000,
            joined: 1000,
            rss_before: 10_000_000,
            rss_after: 13_000_000,
            ..Row::default()
        };
        assert_eq!(row.per_socket(), Some(3000.0));
        assert_eq!(Row::default().per_socket(), None);
        // A server killed before the second reading, or a run where not everyone joined.
        assert_eq!(Row { rss_after: 0, ..row.clone() }.per_socket(), None);
        assert_eq!(Row { joined: 900, ..row }.per_socket(), None);
    }
}
