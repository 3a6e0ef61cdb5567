//! Scenario 3 at 50,000 online (issue 8): latency of a targeted message to one user while N
//! others are online, N = 1k … 50k, on one cluster layout.
//!
//! One process may hold at most 20,000 open files here (hard limit), servers and generator
//! alike, so 50k online needs several processes on both sides:
//! - `--nodes` Tako nodes in cluster mode (one fresh PostgreSQL database, Redis bus), each
//!   holding N / nodes sockets;
//! - the measuring clients (the recipients, a few hundred, and the control connection) in this
//!   process, so send and receipt are read from one monotonic clock;
//! - the rest of the N online as idle "ballast" sockets held by `bench ballast` child
//!   processes, each under ~19,000 sockets, joined by a minimal WebSocket client (rawws.rs:
//!   the same request, join frame and "ok" check as `gen::open`, at a fraction of its CPU),
//!   spread over the nodes as the recipients are (socket of user i on node i mod nodes).
//!
//! Every size starts fresh nodes, joins the recipients, then the ballast, waits for the joins to
//! settle, checks each node's own count of users online (`/metrics`), and sends `--targeted`
//! messages one at a time through node A's `POST /api/messages`, each to a different recipient:
//! send → receipt on that recipient's socket. Recipients on node A get it from A's hub; those on
//! the other nodes through Redis; both are reported.
//!
//! Presence is off on every node (`TAKO_PRESENCE=off`): with it, every socket on
//! `notifications` is tracked and each join reaches everyone, N² on one topic, which 50k on
//! two shared cores cannot do.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Notify, Semaphore};

use crate::cluster::{fresh_database, start_node_with};
use crate::gen::{node_of, Clients, Target};
use crate::proto::{user_id, Proto};
use crate::rawws;
use crate::runner::{log_file, q, Paths, Server, Watchdog, PG_ADMIN};
use crate::stats::{fmt_bytes, fmt_duration, listen_overflows, quantiles, rss_of, Quantiles};

/// Sockets one process (a node or a ballast child) may hold here: 20,000 files, minus margin.
pub const MAX_PER_PROCESS: usize = 19_000;
/// PostgreSQL connections one Tako node's pool may hold (crates/tako/src/storage/postgres.rs).
const PG_POOL: usize = 16;
/// Messages sent to each cluster before the measured ones (not recorded).
const WARM_UP: usize = 30;
/// One ballast socket's connect + join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

pub struct OnlinePlan {
    pub sizes: Vec<usize>,
    /// The sizes are run this many times, every other round in reverse order (1k, 50k, 50k, 1k,
    /// …), so a drift in the shared machine's load weighs on every N alike; samples are pooled.
    pub rounds: usize,
    /// Every round brings all sizes up at once (separate clusters and databases) and sends
    /// message k to each in turn: a paired comparison under the same background load.
    pub together: bool,
    pub nodes: usize,
    pub recipients: usize,
    pub targeted: usize,
    pub per_child: usize,
    pub concurrency: usize,
    pub join_secs: u64,
    /// Presence on (`TAKO_PRESENCE=on`: everyone tracked, nobody asks for frames): measure
    /// when node A's presence count is exact, and how long a node killed with -9 takes to
    /// leave it.
    pub presence: bool,
}

impl OnlinePlan {
    /// Whether every size fits the per-process limit on both sides.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.nodes == 0 || self.recipients == 0 || self.per_child == 0 || self.rounds == 0 {
            bail!("--nodes, --recipients, --per-child and --rounds must be at least 1");
        }
        if self.per_child > MAX_PER_PROCESS {
            bail!(
                "--per-child {}: one process holds at most {MAX_PER_PROCESS} sockets here",
                self.per_child
            );
        }
        if self.recipients + 1 > MAX_PER_PROCESS {
            bail!("--recipients {}: they all live in this process", self.recipients);
        }
        for &n in &self.sizes {
            if n < self.recipients + 1 {
                bail!("N={n} is below the {} recipients + the control connection", self.recipients);
            }
            if n.div_ceil(self.nodes) > MAX_PER_PROCESS {
                bail!(
                    "N={n} on {} nodes is {} sockets per node, over {MAX_PER_PROCESS}: add --nodes",
                    self.nodes,
                    n.div_ceil(self.nodes)
                );
            }
        }
        Ok(())
    }

    /// The (round, N) runs, grouped by what is up at the same time: one run per group, or with
    /// `together` one group per round.
    pub fn groups(&self) -> Vec<Vec<(usize, usize)>> {
        if self.together {
            (1..=self.rounds).map(|r| self.sizes.iter().map(|&n| (r, n)).collect()).collect()
        } else {
            self.schedule().into_iter().map(|run| vec![run]).collect()
        }
    }

    /// (round, N) in the order they run.
    pub fn schedule(&self) -> Vec<(usize, usize)> {
        (0..self.rounds)
            .flat_map(|r| {
                let mut sizes = self.sizes.clone();
                if r % 2 == 1 {
                    sizes.reverse();
                }
                sizes.into_iter().map(move |n| (r + 1, n))
            })
            .collect()
    }
}

/// Comma-separated `host:port` list.
pub fn parse_targets(s: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let out: Vec<SocketAddr> = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.trim().parse().with_context(|| format!("target {p:?}")))
        .collect::<anyhow::Result<_>>()?;
    if out.is_empty() {
        bail!("no targets");
    }
    Ok(out)
}

/// user + system CPU ticks from the text of `/proc/<pid>/stat` (fields 14 and 15; the command
/// name in field 2 may hold spaces and parentheses, so count from the last `)`).
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .as_deref()
        .and_then(parse_cpu_ticks)
        .unwrap_or(0)
}

/// Busy CPU ticks of the whole machine (all cores) from the first line of `/proc/stat`: user,
/// nice, system, irq, softirq and steal (not idle, not iowait).
pub fn parse_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().map(|f| f.parse().ok()).collect::<Option<_>>()?;
    Some([0, 1, 2, 5, 6, 7].iter().map(|&i| v.get(i).copied().unwrap_or(0)).sum())
}

fn busy_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(parse_busy_ticks).unwrap_or(0)
}

/// Where the CPU went between the first join and the last ballast child's `ready`, in ticks
/// (USER_HZ, 100 a second): each node, each ballast child, this process, the whole machine.
#[derive(Debug, Clone, Default)]
pub struct JoinCpu {
    pub nodes: Vec<u64>,
    pub children: Vec<u64>,
    pub parent: u64,
    pub machine: u64,
    pub wall: Duration,
    /// The kernel's `ListenOverflows` over the same span (SYNs dropped, retried after 1 s).
    pub overflows: Option<u64>,
}

impl JoinCpu {
    /// One line for the table's notes, in CPU seconds.
    pub fn describe(&self) -> String {
        let s = |t: u64| format!("{:.2}", t as f64 / 100.0);
        let list = |v: &[u64]| v.iter().map(|&t| s(t)).collect::<Vec<_>>().join(" + ");
        let (nodes, children): (u64, u64) = (self.nodes.iter().sum(), self.children.iter().sum());
        let rest = self.machine.saturating_sub(nodes + children + self.parent);
        format!(
            "CPU s during the joins ({} wall): nodes {} = {}, ballast children {} = {}, this process {}, rest of the machine (PostgreSQL, Redis, others) {}; machine busy {}; listen-queue overflows {}",
            fmt_duration(self.wall),
            list(&self.nodes),
            s(nodes),
            list(&self.children),
            s(children),
            s(self.parent),
            s(rest),
            s(self.machine),
            self.overflows.map(|o| o.to_string()).unwrap_or_else(|| "?".into()),
        )
    }
}

/// Waits until the processes together used at most 5% of one core over one second (joins
/// settled: Redis subscriptions, the mailbox's queries), at most `limit`; the time it took,
/// or `None` when they were still busy at the limit.
async fn settle(pids: &[u32], limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let ticks_per_sec = 100; // USER_HZ on Linux
    while started.elapsed() < limit {
        let before: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
        if after.saturating_sub(before) * 100 <= 5 * ticks_per_sec {
            return Some(started.elapsed());
        }
    }
    None
}

/// `count` ballast sockets from user index `first` split over as few children as hold at most
/// `per_child` each, evenly: (first index, count) per child.
pub fn split_children(first: usize, count: usize, per_child: usize) -> Vec<(usize, usize)> {
    if count == 0 {
        return Vec::new();
    }
    let children = count.div_ceil(per_child.max(1));
    let (base, extra) = (count / children, count % children);
    let mut out = Vec::with_capacity(children);
    let mut next = first;
    for c in 0..children {
        let k = base + usize::from(c < extra);
        out.push((next, k));
        next += k;
    }
    out
}

/// A ballast child's report line: `ready <joined> <errors>` or `status <open> <dropped>`.
pub fn parse_report(line: &str, word: &str) -> Option<(usize, usize)> {
    let mut parts = line.split_whitespace();
    if parts.next()? != word {
        return None;
    }
    let a = parts.next()?.parse().ok()?;
    let b = parts.next()?.parse().ok()?;
    Some((a, b))
}

/// Sum of every series of `name` (any labels) in Prometheus text; `None` when absent.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        // `name{…} v`, `name v`; not `name_total …` or another name sharing the prefix.
        let value = if rest.starts_with('{') {
            rest.rsplit_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None
        };
        if let Some(v) =
            value.and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// The child: `bench ballast --targets A,B,C --count K --first-index I`.

struct Held {
    joined: AtomicUsize,
    errors: AtomicUsize,
    dropped: AtomicUsize,
    cancelled: AtomicBool,
    notify: Notify,
    first_error: std::sync::Mutex<Option<String>>,
}

async fn hold(held: Arc<Held>, target: Target, index: usize, gate: Arc<Semaphore>) {
    let permit = gate.acquire_owned().await.expect("semaphore open");
    if held.cancelled.load(Ordering::Acquire) {
        return;
    }
    // The generator's own share of a join's CPU is kept small (rawws.rs): the request in one
    // write, the join frame in one more once the `101` is read, the reply read without a
    // WebSocket library.
    let uid = user_id(index);
    let opening = rawws::opening(target.addr, &target.proto.path(&uid), &target.proto.initial());
    let joined = rawws::open(&target, index, &uid, &opening);
    let (tcp, rest) = match tokio::time::timeout(JOIN_TIMEOUT, joined).await {
        Ok(Ok(open)) => open,
        Ok(Err(e)) => return held.error(format!("user {index}: {e:#}")),
        Err(_) => return held.error(format!("user {index}: join timed out")),
    };
    drop(permit);
    held.joined.fetch_add(1, Ordering::AcqRel);
    held.notify.notify_one();
    // Idle: read and drop whatever arrives (nothing, with presence off) until the socket closes.
    rawws::idle(tcp, rest).await;
    held.dropped.fetch_add(1, Ordering::AcqRel);
}

impl Held {
    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::AcqRel);
        self.first_error.lock().unwrap().get_or_insert(e);
        self.notify.notify_one();
    }
}

/// Joins `count` idle sockets (users `first..first+count`, user i on `targets[i mod len]`),
/// prints `ready <joined> <errors>` once all are done or `deadline` passed, answers each
/// `status` line on stdin with `status <open> <dropped>`, and exits when stdin closes.
pub async fn ballast(
    targets: Vec<SocketAddr>,
    first: usize,
    count: usize,
    concurrency: usize,
    deadline: Duration,
) -> anyhow::Result<()> {
    if count > MAX_PER_PROCESS {
        bail!("--count {count}: one process holds at most {MAX_PER_PROCESS} sockets here");
    }
    let held = Arc::new(Held {
        joined: AtomicUsize::new(0),
        errors: AtomicUsize::new(0),
        dropped: AtomicUsize::new(0),
        cancelled: AtomicBool::new(false),
        notify: Notify::new(),
        first_error: std::sync::Mutex::new(None),
    });
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let targets: Vec<Target> = targets
        .into_iter()
        .map(|addr| Target { proto: Proto::Phoenix, addr, http_base: None })
        .collect();
    let tasks: Vec<_> = (first..first + count)
        .map(|i| {
            tokio::spawn(hold(
                held.clone(),
                targets[node_of(i, targets.len())].clone(),
                i,
                gate.clone(),
            ))
        })
        .collect();
    let until = Instant::now() + deadline;
    loop {
        let done = held.joined.load(Ordering::Acquire) + held.errors.load(Ordering::Acquire);
        let left = until.saturating_duration_since(Instant::now());
        if done >= count || left.is_zero() {
            break;
        }
        let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), held.notify.notified())
            .await;
    }
    held.cancelled.store(true, Ordering::Release);
    let (joined, errors) =
        (held.joined.load(Ordering::Acquire), held.errors.load(Ordering::Acquire));
    if let Some(e) = held.first_error.lock().unwrap().clone() {
        eprintln!("ballast {first}+{count}: first error: {e}");
    }
    println!("ready {joined} {errors}");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() == "status" {
            let dropped = held.dropped.load(Ordering::Acquire);
            println!("status {} {dropped}", held.joined.load(Ordering::Acquire) - dropped);
        }
    }
    for t in &tasks {
        t.abort();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The parent.

struct Ballast {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    pid: u32,
    count: usize,
}

impl Ballast {
    async fn spawn(
        paths: &Paths,
        targets: &str,
        first: usize,
        count: usize,
        concurrency: usize,
        join_secs: u64,
    ) -> anyhow::Result<Ballast> {
        let mut child = Command::new(&paths.bench)
            .args(["ballast", "--targets", targets])
            .args(["--first-index", &first.to_string(), "--count", &count.to_string()])
            .args([
                "--concurrency",
                &concurrency.to_string(),
                "--deadline-secs",
                &join_secs.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file(&paths.work, &format!("ballast-{first}"))?)
            .kill_on_drop(true)
            .spawn()
            .context("starting a ballast child")?;
        let pid = child.id().context("ballast pid")?;
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().context("ballast stdout")?).lines();
        Ok(Ballast { child, stdin, lines, pid, count })
    }

    async fn report(&mut self, word: &str, within: Duration) -> anyhow::Result<(usize, usize)> {
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .with_context(|| format!("ballast {} said nothing within {within:?}", self.pid))??
            .with_context(|| format!("ballast {} exited", self.pid))?;
        parse_report(&line, word)
            .with_context(|| format!("ballast {}: unexpected {line:?}", self.pid))
    }

    async fn status(&mut self) -> anyhow::Result<(usize, usize)> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        stdin.write_all(b"status\n").await?;
        stdin.flush().await?;
        self.report("status", Duration::from_secs(10)).await
    }

    /// Closes stdin (the child lets its sockets go and exits); killed if it lingers.
    async fn stop(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct OnlineRow {
    pub round: usize,
    pub n: usize,
    /// Recipients joined (in this process) and ballast joined (in the children).
    pub recipients: usize,
    pub ballast: usize,
    pub children: usize,
    /// Each node's own count of users online (`tako_users_online`), after the joins.
    pub node_online: Vec<Option<u64>>,
    pub node_rss: Vec<u64>,
    pub all: Option<Quantiles>,
    /// Recipients on node A (which takes the POST) / on the other nodes (through Redis).
    pub local: Option<Quantiles>,
    pub remote: Option<Quantiles>,
    /// (recipient on node A, latency) of every message received.
    pub samples: Vec<(bool, Duration)>,
    pub lost: usize,
    pub settled: Option<Duration>,
    pub join_time: Option<Duration>,
    pub loadavg: Option<String>,
    /// Presence on: from the first join to node A's presence count equal to N.
    pub presence_exact: Option<Duration>,
    /// Presence on: the last node killed with -9: its users, and how long until node A's
    /// presence count no longer held them.
    pub presence_heal: Option<(usize, Duration)>,
    pub join_cpu: Option<JoinCpu>,
    pub notes: Vec<String>,
}

impl OnlineRow {
    /// Every planned socket joined and still open when the messages were sent.
    pub fn complete(&self) -> bool {
        self.recipients + 1 + self.ballast == self.n
            && self.notes.iter().all(|n| !n.starts_with("incomplete"))
    }
}

fn loadavg() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

async fn presences(port: u16) -> Option<u64> {
    let text = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    metric_sum(&text, "tako_presences").map(|v| v as u64)
}

/// Polls node A's presence count (`tako_presences`, every node's users as A sees them) until
/// `done` holds; how long that took, or `None` past `limit`.
async fn presence_until(
    port: u16,
    limit: Duration,
    done: impl Fn(u64) -> bool,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if presences(port).await.is_some_and(&done) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

async fn users_online(port: u16) -> Option<u64> {
    let text = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    metric_sum(&text, "tako_users_online").map(|v| v as u64)
}

/// Scenario 3 for every group of `plan.groups()`: fresh nodes for every run, a PostgreSQL
/// database per N for the whole command (dropped at the end whatever happened).
pub async fn run(paths: &Paths, plan: &OnlinePlan) -> anyhow::Result<Vec<OnlineRow>> {
    use sqlx::Executor;
    plan.check()?;
    let mut sizes = plan.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let db = |n: usize| format!("tako_bench_online_{}_{n}", std::process::id());
    let admin = sqlx::PgPool::connect(PG_ADMIN).await.context("PostgreSQL on 127.0.0.1:5432")?;
    let result = async {
        let mut urls = std::collections::HashMap::new();
        for &n in &sizes {
            // Each N its own database: clusters that run at the same time share nothing but
            // the PostgreSQL and Redis servers.
            urls.insert(n, fresh_database(&admin, paths, &db(n), n).await?);
        }
        let mut rows = Vec::new();
        for group in plan.groups() {
            rows.extend(run_group(paths, &admin, &urls, plan, &group).await);
        }
        Ok(rows)
    }
    .await;
    for &n in &sizes {
        let _ =
            admin.execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db(n)).as_str()).await;
    }
    admin.close().await;
    result
}

/// One N's cluster, up and joined.
struct Up {
    nodes: Vec<Server>,
    dogs: Vec<Watchdog>,
    children: Vec<Ballast>,
    clients: Option<Clients>,
    row: OnlineRow,
    lost_in_a_row: usize,
}

impl Up {
    async fn tear_down(mut self) -> OnlineRow {
        if let Some(clients) = self.clients.take() {
            clients.close().await;
        }
        for child in self.children {
            child.stop().await;
        }
        for (k, dog) in self.dogs.into_iter().enumerate() {
            if let Some(note) = dog.note() {
                self.row.notes.push(format!("node {}: {note}", (b'A' + k as u8) as char));
            }
        }
        for s in self.nodes {
            s.stop().await;
        }
        self.row
    }
}

/// Brings up every (round, N) of `group` one after another, waits until all are idle, then
/// sends the messages: in a group of several, message k goes to each cluster in turn (the
/// order rotating with k), so every N is measured under the same background load.
async fn run_group(
    paths: &Paths,
    admin: &sqlx::PgPool,
    urls: &std::collections::HashMap<usize, String>,
    plan: &OnlinePlan,
    group: &[(usize, usize)],
) -> Vec<OnlineRow> {
    let mut ups: Vec<Up> = Vec::new();
    for &(round, n) in group {
        eprintln!(
            "online round {round} N={n} on {} nodes{}",
            plan.nodes,
            if group.len() > 1 { " (up together with the group's other sizes)" } else { "" }
        );
        let mut up = Up {
            nodes: Vec::new(),
            dogs: Vec::new(),
            children: Vec::new(),
            clients: None,
            row: OnlineRow { round, n, ..Default::default() },
            lost_in_a_row: 0,
        };
        // Each node's pool may open 16 PostgreSQL connections; PostgreSQL here allows 100, shared
        // with the other clusters of the group and with whoever else uses the server.
        let free: Result<(i64, i64), _> = sqlx::query_as(
            "SELECT current_setting('max_connections')::bigint, (SELECT count(*) FROM pg_stat_activity)",
        )
        .fetch_one(admin)
        .await;
        let pg_full = match free {
            Ok((max, used)) if max - used < (plan.nodes * PG_POOL) as i64 => Some(format!(
                "PostgreSQL has {} of {max} connections free; {} nodes may open {PG_POOL} each",
                max - used,
                plan.nodes
            )),
            _ => None,
        };
        let brought = match pg_full {
            Some(why) => Err(anyhow::anyhow!(why)),
            None => bring_up(paths, &urls[&n], plan, &mut up).await,
        };
        if let Err(e) = brought {
            eprintln!("  online round {round} N={n} failed: {e:#}");
            up.row.notes.push(format!("stopped: {e:#}"));
            if let Some(clients) = up.clients.take() {
                clients.close().await;
            }
        } else if group.len() > 1 {
            // PostgreSQL here allows 100 connections and each node's pool keeps up to 16 that
            // the joins opened: close this cluster's idle ones so the next cluster can start.
            // (The pools fill up again during the messages: two clusters of 3 fit, three do not.)
            let db = urls[&n].rsplit('/').next().unwrap_or_default().to_owned();
            let closed: Result<i64, _> = sqlx::query_scalar(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND state = 'idle' AND pid <> pg_backend_pid()",
            )
            .bind(&db)
            .fetch_one(admin)
            .await;
            match closed {
                Ok(k) => eprintln!("  [online round {round} n={n}] closed {k} idle PostgreSQL connections of its nodes"),
                Err(e) => up.row.notes.push(format!("closing idle PostgreSQL connections failed: {e}")),
            }
        }
        ups.push(up);
    }
    // Joins settle (the nodes' Redis subscriptions, the mailbox's queries) before measuring.
    let pids: Vec<u32> = ups
        .iter()
        .flat_map(|u| u.nodes.iter().map(|s| s.pid).chain(u.children.iter().map(|c| c.pid)))
        .collect();
    let settled = settle(&pids, Duration::from_secs(30)).await;
    let load = loadavg();
    for up in &mut ups {
        up.row.settled = settled;
        up.row.loadavg = load.clone();
        if settled.is_none() {
            up.row.notes.push(
                "the nodes still used over 5% of a core 30 s after the joins; measured anyway"
                    .into(),
            );
        }
        for s in &up.nodes {
            up.row.node_online.push(users_online(s.port).await);
            up.row.node_rss.push(rss_of(s.pid).unwrap_or(0));
        }
    }
    let live: Vec<usize> = (0..ups.len()).filter(|&i| ups[i].clients.is_some()).collect();
    // A group measured without one of its sizes is no paired comparison: not pooled.
    if live.len() < ups.len() && ups.len() > 1 {
        let missing: Vec<String> =
            ups.iter().filter(|u| u.clients.is_none()).map(|u| u.row.n.to_string()).collect();
        for &i in &live {
            ups[i].row.notes.push(format!(
                "incomplete: unpaired (N={} of this round did not come up)",
                missing.join(", ")
            ));
        }
    }
    // Warm-up, not recorded: connections (HTTP, the nodes' database pools) opened again.
    for k in 0..WARM_UP {
        for &i in &live {
            if let Some(clients) = ups[i].clients.as_mut() {
                let _ = clients.targeted_once(k).await;
            }
        }
    }
    for k in 0..plan.targeted {
        for j in 0..live.len() {
            let up = &mut ups[live[(j + k) % live.len()]];
            let Some(clients) = up.clients.as_mut() else { continue };
            if up.lost_in_a_row >= 2 {
                continue;
            }
            match clients.targeted_once(k).await {
                Ok(Some((index, d))) => {
                    up.row.samples.push((node_of(index, plan.nodes) == 0, d));
                    up.lost_in_a_row = 0;
                }
                Ok(None) => {
                    up.row.lost += 1;
                    up.lost_in_a_row += 1;
                }
                Err(e) => {
                    up.row.notes.push(format!("stopped: {e:#}"));
                    up.lost_in_a_row = usize::MAX;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let mut rows = Vec::new();
    for mut up in ups {
        let row = &mut up.row;
        (row.all, row.local, row.remote) = split_quantiles(&row.samples);
        if row.lost > 0 {
            row.notes.push(format!("{} targeted messages not received within 10 s", row.lost));
        }
        if up.lost_in_a_row >= 2 && up.lost_in_a_row != usize::MAX {
            row.notes.push("incomplete: stopped after two messages in a row were lost".into());
        }
        // Everyone still online at the end?
        if let Some(clients) = &up.clients {
            let mut gone = clients.dropped();
            for child in up.children.iter_mut() {
                match child.status().await {
                    Ok((_, dropped)) => gone += dropped,
                    Err(e) => row.notes.push(format!("incomplete: {e:#}")),
                }
            }
            if gone > 0 {
                row.notes.push(format!(
                    "incomplete: {gone} sockets were closed by a node during the run"
                ));
            }
        }
        eprintln!(
            "  [online round {} n={}] targeted {} (node A {}, via Redis {}), load {}",
            row.round,
            row.n,
            q(row.all),
            q(row.local),
            q(row.remote),
            row.loadavg.clone().unwrap_or_default()
        );
        if plan.presence && up.nodes.len() > 1 && up.clients.is_some() {
            // The last node dies without a word: its users leave presence on node A once the
            // node timeout passes.
            let victim = up.nodes.len() - 1;
            let on_victim = (0..up.row.n)
                .filter(|&i| i != plan.recipients && node_of(i, plan.nodes) == victim)
                .count();
            let before = presences(up.nodes[0].port).await.unwrap_or(0);
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(up.nodes[victim].pid.to_string())
                .status();
            let left = presence_until(up.nodes[0].port, Duration::from_secs(60), |c| {
                c + on_victim as u64 <= before
            })
            .await;
            match left {
                Some(d) => up.row.presence_heal = Some((on_victim, d)),
                None => up.row.notes.push(format!(
                    "the {on_victim} users of the killed node did not leave node A's presence within 60 s"
                )),
            }
            eprintln!(
                "  [online round {} n={}] node killed: {on_victim} users left in {left:?}",
                up.row.round, up.row.n
            );
        }
        rows.push(up.tear_down().await);
    }
    rows
}

async fn bring_up(paths: &Paths, url: &str, plan: &OnlinePlan, up: &mut Up) -> anyhow::Result<()> {
    let (round, n) = (up.row.round, up.row.n);
    let cluster = format!(
        "bench-online-{}-{}-{round}-{n}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    );
    for k in 0..plan.nodes {
        let name = format!("online-{round}-{n}-{}", (b'a' + k as u8) as char);
        let env: &[(&str, &str)] =
            if plan.presence { &[("TAKO_PRESENCE", "on")] } else { &[("TAKO_PRESENCE", "off")] };
        let node = start_node_with(paths, url, &cluster, &name, env).await?;
        up.dogs.push(Watchdog::start(node.pid, paths.max_rss));
        up.nodes.push(node);
    }
    let targets: Vec<Target> = up
        .nodes
        .iter()
        .map(|s| Target {
            proto: Proto::Phoenix,
            addr: ([127, 0, 0, 1], s.port).into(),
            http_base: Some(format!("http://127.0.0.1:{}", s.port)),
        })
        .collect();
    // Let the nodes hear each other on the bus before anyone joins.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let node_cpu: Vec<u64> = up.nodes.iter().map(|s| cpu_ticks(s.pid)).collect();
    let (parent_cpu, machine_cpu) = (cpu_ticks(std::process::id()), busy_ticks());
    let overflows = listen_overflows();
    let started = Instant::now();
    // The recipients (users 0..R, user i on node i mod nodes) and the control connection
    // (user R, node A), in this process.
    let (mut clients, joined) =
        Clients::connect_spread(targets.clone(), plan.recipients, Some(64)).await?;
    up.row.recipients = joined.joined;
    if joined.joined < plan.recipients {
        up.row.notes.push(format!(
            "incomplete: {} of {} recipients joined ({} errors)",
            joined.joined, plan.recipients, joined.errors
        ));
    }
    match clients.targeted_available().await? {
        Ok(()) => {}
        Err(why) => bail!("targeted messages: {why}"),
    }
    up.clients = Some(clients);
    // The ballast: users R+1 .. N-1, in children of at most `per_child` sockets, all at once.
    let list = targets.iter().map(|t| t.addr.to_string()).collect::<Vec<_>>().join(",");
    for (first, count) in
        split_children(plan.recipients + 1, n - plan.recipients - 1, plan.per_child)
    {
        up.children.push(
            Ballast::spawn(paths, &list, first, count, plan.concurrency, plan.join_secs).await?,
        );
    }
    up.row.children = up.children.len();
    for child in up.children.iter_mut() {
        let (ok, errors) = child.report("ready", Duration::from_secs(plan.join_secs + 30)).await?;
        up.row.ballast += ok;
        if ok < child.count {
            up.row.notes.push(format!(
                "incomplete: ballast child {}: {ok} of {} joined ({errors} errors; see its log)",
                child.pid, child.count
            ));
        }
    }
    up.row.join_time = Some(started.elapsed());
    let cpu = JoinCpu {
        nodes: up
            .nodes
            .iter()
            .zip(&node_cpu)
            .map(|(s, &b)| cpu_ticks(s.pid).saturating_sub(b))
            .collect(),
        // Started after the first join: all they used is the joins (and their own start).
        children: up.children.iter().map(|c| cpu_ticks(c.pid)).collect(),
        parent: cpu_ticks(std::process::id()).saturating_sub(parent_cpu),
        machine: busy_ticks().saturating_sub(machine_cpu),
        wall: started.elapsed(),
        overflows: overflows.zip(listen_overflows()).map(|(a, b)| b.saturating_sub(a)),
    };
    eprintln!("  [online round {round} n={n}] {}", cpu.describe());
    up.row.join_cpu = Some(cpu);
    if plan.presence {
        let exact =
            presence_until(up.nodes[0].port, Duration::from_secs(60), |c| c == n as u64).await;
        match exact {
            Some(_) => up.row.presence_exact = Some(started.elapsed()),
            None => up.row.notes.push(format!(
                "node A's presence count never reached {n} (last: {:?})",
                presences(up.nodes[0].port).await
            )),
        }
    }
    eprintln!(
        "  [online round {round} n={n}] {} recipients + {} ballast joined in {:?}",
        up.row.recipients,
        up.row.ballast,
        started.elapsed()
    );
    Ok(())
}

/// All, recipient on node A, recipient elsewhere.
fn split_quantiles(
    samples: &[(bool, Duration)],
) -> (Option<Quantiles>, Option<Quantiles>, Option<Quantiles>) {
    let pick = |f: &dyn Fn(bool) -> bool| {
        samples.iter().filter(|(a, _)| f(*a)).map(|(_, d)| *d).collect::<Vec<_>>()
    };
    (quantiles(&pick(&|_| true)), quantiles(&pick(&|a| a)), quantiles(&pick(&|a| !a)))
}

fn ratio(a: Duration, b: Duration) -> f64 {
    b.as_secs_f64() / a.as_secs_f64()
}

/// One N's samples pooled over its complete runs.
#[derive(Debug, Clone, Copy)]
pub struct Pooled {
    pub n: usize,
    pub runs: usize,
    pub all: Option<Quantiles>,
    pub local: Option<Quantiles>,
    pub remote: Option<Quantiles>,
}

pub fn pooled(rows: &[OnlineRow]) -> Vec<Pooled> {
    let mut sizes: Vec<usize> = rows.iter().map(|r| r.n).collect();
    sizes.sort_unstable();
    sizes.dedup();
    sizes
        .into_iter()
        .map(|n| {
            let runs: Vec<&OnlineRow> = rows.iter().filter(|r| r.n == n && r.complete()).collect();
            let samples: Vec<(bool, Duration)> =
                runs.iter().flat_map(|r| r.samples.iter().copied()).collect();
            let (all, local, remote) = split_quantiles(&samples);
            Pooled { n, runs: runs.len(), all, local, remote }
        })
        .collect()
}

/// Presence on: how soon node A's count was exact, and how soon a killed node's users left.
pub fn presence_table(rows: &[OnlineRow], label: &str, node_timeout: Duration) -> String {
    let mut out = String::from(
        "| server | round | N online | all joined | node A's presence count = N | killed node's users | left node A's presence after the kill (node timeout) |\n|---|---:|---:|---:|---:|---:|---|\n",
    );
    let d = |d: Option<Duration>| d.map(fmt_duration).unwrap_or_else(|| "–".into());
    for r in rows {
        let (users, heal) = match r.presence_heal {
            Some((u, h)) => {
                (u.to_string(), format!("{} ({})", fmt_duration(h), fmt_duration(node_timeout)))
            }
            None => ("–".into(), "–".into()),
        };
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {users} | {heal} |",
            r.round,
            r.n,
            d(r.join_time),
            d(r.presence_exact)
        );
    }
    out
}

pub fn table(rows: &[OnlineRow], label: &str, nodes: usize) -> String {
    let mut out = String::from(
        "| server | round | N online | joined: recipients + ballast (children) | users online per node (each node's count) | node RSS | targeted p50 / p99 | recipient on node A (the POST's node) | recipient on another node (via Redis) | load avg when measured |\n|---|---:|---:|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let counts = r
            .node_online
            .iter()
            .map(|c| c.map(|c| c.to_string()).unwrap_or_else(|| "?".into()))
            .collect::<Vec<_>>()
            .join(" + ");
        let rss = r.node_rss.iter().map(|&b| fmt_bytes(b as f64)).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} + {} ({}){} | {} | {} | {} | {} | {} | {} |",
            r.round,
            r.n,
            r.recipients,
            r.ballast,
            r.children,
            if r.complete() { "" } else { " **incomplete**" },
            if counts.is_empty() { "–".into() } else { counts },
            if rss.is_empty() { "–".into() } else { rss },
            q(r.all),
            q(r.local),
            q(r.remote),
            r.loadavg.as_deref().unwrap_or("?"),
        );
    }
    let pooled = pooled(rows);
    let _ = writeln!(
        out,
        "\nPooled over the rounds (complete runs only):\n\n| server | N online | runs | messages | targeted p50 / p99 | recipient on node A | via Redis | p50 / p99 vs N={} |\n|---|---:|---:|---:|---|---|---|---|",
        pooled.first().map(|p| p.n).unwrap_or(0)
    );
    let base = pooled.iter().find_map(|p| Some((p.n, p.all?)));
    for &Pooled { n, runs, all, local, remote } in &pooled {
        let vs = match (base, all) {
            (Some((bn, b)), Some(a)) if bn != n => {
                format!("{:.2}× / {:.2}×", ratio(b.p50, a.p50), ratio(b.p99, a.p99))
            }
            (Some((bn, _)), Some(_)) if bn == n => "1 (base)".to_owned(),
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {label} | {n} | {runs} | {} | {} | {} | {} | {vs} |",
            all.map(|a| a.n).unwrap_or(0),
            q(all),
            q(local),
            q(remote)
        );
    }
    if rows.iter().any(|r| r.presence_exact.is_some() || r.presence_heal.is_some()) {
        let _ = writeln!(
            out,
            "\n- {nodes} Tako nodes in cluster mode (one PostgreSQL database, Redis bus), fresh for each run, all with **`TAKO_PRESENCE=on`**: everyone is tracked and replicated to every node, and the N online sockets ask for no presence frame."
        );
    } else {
        let _ = writeln!(
            out,
            "\n- {nodes} Tako nodes in cluster mode (one PostgreSQL database, Redis bus), fresh for each run, all with **`TAKO_PRESENCE=off`**: nobody is tracked, so the N online are sockets joined on `notifications` that get no presence traffic (with presence on, every join reaches all N: N² on one topic)."
        );
    }
    let _ = writeln!(
        out,
        "- With several N up at once (`--together`): the clusters share the machine's kernel (socket tables), PostgreSQL and Redis, so the paired comparison shows what grows with N inside Tako's nodes. Each node's pool fills to 16 PostgreSQL connections during the messages (PostgreSQL here allows 100): two sizes of 3 nodes hold 96 of them while they run, three do not fit. Each cluster's idle connections are closed once its joins are done (so the next one can start), and every run starts with 30 unrecorded messages per cluster.\n- N online = recipients (this process) + the control connection (node A) + idle ballast sockets held by `bench ballast` child processes; the socket of user i is on node i mod {nodes}. \"users online per node\" is each node's `tako_users_online` after the joins."
    );
    if let Some((bn, b)) = base {
        for (n, c) in pooled.iter().filter(|p| p.n > bn).filter_map(|p| Some((p.n, p.all?))) {
            let (r50, r99) = (ratio(b.p50, c.p50), ratio(b.p99, c.p99));
            let _ = writeln!(
                out,
                "- Target \"targeted latency at {n} online within 1.5× of {bn}\" (pooled): p50 {} → {} = {r50:.2}×, p99 {} → {} = {r99:.2}×: {}",
                fmt_duration(b.p50),
                fmt_duration(c.p50),
                fmt_duration(b.p99),
                fmt_duration(c.p99),
                if r50 <= 1.5 && r99 <= 1.5 { "met" } else { "**missed**" }
            );
        }
    }
    for r in rows {
        let settled = match r.settled {
            Some(d) => format!(", nodes idle {} later", fmt_duration(d)),
            None => String::new(),
        };
        if let Some(t) = r.join_time {
            let _ = writeln!(
                out,
                "- round {} N={}: all joined in {}{settled}",
                r.round,
                r.n,
                fmt_duration(t)
            );
        }
        if let Some(cpu) = &r.join_cpu {
            let _ = writeln!(out, "- round {} N={}: {}", r.round, r.n, cpu.describe());
        }
        for note in &r.notes {
            let _ = writeln!(out, "- round {} N={}: {note}", r.round, r.n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_sizes() {
        let t = parse_targets("127.0.0.1:4001, 127.0.0.1:4002,").unwrap();
        assert_eq!(t, vec!["127.0.0.1:4001".parse().unwrap(), "127.0.0.1:4002".parse().unwrap()]);
        assert!(parse_targets("").is_err());
        assert!(parse_targets("localhost").is_err());
    }

    #[test]
    fn children_split_evenly_under_the_limit() {
        assert_eq!(split_children(301, 0, 16_000), vec![]);
        assert_eq!(split_children(301, 699, 16_000), vec![(301, 699)]);
        let split = split_children(301, 49_699, 16_000);
        assert_eq!(split.len(), 4);
        assert_eq!(split.iter().map(|c| c.1).sum::<usize>(), 49_699);
        assert!(split.iter().all(|c| c.1 <= 16_000 && c.1 >= 12_424));
        // Contiguous, no user twice.
        for w in split.windows(2) {
            assert_eq!(w[0].0 + w[0].1, w[1].0);
        }
        assert_eq!(split_children(0, 32_000, 16_000), vec![(0, 16_000), (16_000, 16_000)]);
    }

    #[test]
    fn report_lines() {
        assert_eq!(parse_report("ready 12424 0", "ready"), Some((12424, 0)));
        assert_eq!(parse_report("status 12000 424\n", "status"), Some((12000, 424)));
        assert_eq!(parse_report("status 1 2", "ready"), None);
        assert_eq!(parse_report("ready 5", "ready"), None);
        assert_eq!(parse_report("", "ready"), None);
    }

    #[test]
    fn metrics_summed_over_labels() {
        let text = "# HELP tako_users_online Distinct users\n# TYPE tako_users_online gauge\ntako_users_online 16567\n\
                    tako_sockets{transport=\"websocket\"} 16500\ntako_sockets{transport=\"longpoll\"} 3\ntako_sockets_x 9\n# EOF\n";
        assert_eq!(metric_sum(text, "tako_users_online"), Some(16567.0));
        assert_eq!(metric_sum(text, "tako_sockets"), Some(16503.0));
        assert_eq!(metric_sum(text, "tako_missing"), None);
    }

    #[test]
    fn plan_limits_and_schedule() {
        let plan = |sizes: Vec<usize>, nodes| OnlinePlan {
            sizes,
            rounds: 3,
            together: false,
            nodes,
            recipients: 300,
            targeted: 200,
            per_child: 16_000,
            concurrency: 64,
            join_secs: 120,
            presence: false,
        };
        assert!(plan(vec![1000, 50_000], 3).check().is_ok());
        assert!(plan(vec![50_000], 2).check().is_err());
        assert!(plan(vec![200], 3).check().is_err());
        assert_eq!(
            plan(vec![1000, 20_000, 50_000], 3).schedule(),
            vec![
                (1, 1000),
                (1, 20_000),
                (1, 50_000),
                (2, 50_000),
                (2, 20_000),
                (2, 1000),
                (3, 1000),
                (3, 20_000),
                (3, 50_000)
            ]
        );
        assert_eq!(plan(vec![1000, 50_000], 3).groups().len(), 6);
        let together = OnlinePlan { rounds: 2, together: true, ..plan(vec![1000, 50_000], 3) };
        assert_eq!(
            together.groups(),
            vec![vec![(1, 1000), (1, 50_000)], vec![(2, 1000), (2, 50_000)]]
        );
    }

    #[test]
    fn cpu_ticks_from_proc_stat() {
        let stat = "1234 (tako (x) y) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 31 0 0 20 0 12 0 100 1000 2000";
        assert_eq!(parse_cpu_ticks(stat), Some(281));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert!(cpu_ticks(std::process::id()) < u64::MAX);
    }

    #[test]
    fn machine_busy_ticks_and_join_cpu() {
        let stat = "cpu  100 5 50 9000 40 3 2 1 0 0\ncpu0 50 2 25 4500 20 1 1 0 0 0\n";
        assert_eq!(parse_busy_ticks(stat), Some(161));
        assert_eq!(parse_busy_ticks("cpu0 1 2 3\n"), None);
        assert!(busy_ticks() > 0);
        let cpu = JoinCpu {
            nodes: vec![100, 150, 50],
            children: vec![200, 250],
            parent: 30,
            machine: 1000,
            wall: Duration::from_secs(5),
            overflows: Some(0),
        };
        let line = cpu.describe();
        assert!(line.contains("nodes 1.00 + 1.50 + 0.50 = 3.00"), "{line}");
        assert!(line.contains("ballast children 2.00 + 2.50 = 4.50"), "{line}");
        assert!(
            line.contains(
                "this process 0.30, rest of the machine (PostgreSQL, Redis, others) 2.20"
            ),
            "{line}"
        );
        assert!(line.contains("overflows 0"), "{line}");
    }

    #[test]
    fn table_pools_complete_runs_only() {
        let ms = Duration::from_millis;
        let samples =
            |v: &[u64]| v.iter().enumerate().map(|(k, &m)| (k % 3 == 0, ms(m))).collect::<Vec<_>>();
        let row = |round, n, ballast, v: &[u64]| {
            let samples = samples(v);
            let (all, local, remote) = split_quantiles(&samples);
            OnlineRow {
                round,
                n,
                recipients: 300,
                ballast,
                children: 1,
                samples,
                all,
                local,
                remote,
                ..Default::default()
            }
        };
        let rows = [
            row(1, 1000, 699, &[1, 1, 2]),
            row(1, 50_000, 49_699, &[1, 2, 4]),
            row(2, 50_000, 10_000, &[9, 9, 9]),
            row(2, 1000, 699, &[2, 2, 2]),
        ];
        let t = table(&rows, "Tako", 3);
        assert!(t.contains("| Tako | 1 | 1000 | 300 + 699 (1) |"), "{t}");
        assert!(t.contains("| 2 | 50000 | 300 + 10000 (1) **incomplete** |"), "{t}");
        // 1000: six samples 1,1,2,2,2,2 → p50 2, p99 2; 50000: the complete run only, 1,2,4.
        assert!(t.contains("| Tako | 1000 | 2 | 6 | 2.00 ms / 2.00 ms |"), "{t}");
        assert!(t.contains("| Tako | 50000 | 1 | 3 | 2.00 ms / 4.00 ms |"), "{t}");
        assert!(t.contains("p99 2.00 ms → 4.00 ms = 2.00×: **missed**"), "{t}");
        assert!(t.contains("TAKO_PRESENCE=off"), "{t}");
    }
}
