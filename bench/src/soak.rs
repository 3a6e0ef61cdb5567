//! The event-day soak (issue 18): one Tako on SQLite or PostgreSQL under a mid-size convention's
//! load for a while, measuring what drifts and whether every operator message arrives once.
//!
//! Load (rates per second, all scaled by `--scale`): `--sockets` joined sockets of which
//! `--stable` never churn and the others reconnect (`--reconnects` a second in all; half of
//! them leave without a close frame, one session in eight does not read for its first 3 s),
//! `--broadcasts` to `notifications`, `--messages` operator messages to random users among
//! `--users` (online or not) plus `--probe` to one probe user, `--registrations`, and
//! `--leaderboard` reads.
//!
//! At the end every user with a message joins once more, and each message's delivery is
//! checked against what the clients received: duplicates, lost, left waiting after receipt,
//! and written-but-unread just before a client vanished without a close frame (the protocol
//! has no client acknowledgement: counted apart). Reports RSS (after the warm-up, at the end,
//! after the load), open fds, probe latency p50/p99 and every HTTP status.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::gen::{ws_config, Ws};
use crate::runner::{self, Paths};
use crate::stats::{fmt_bytes, fmt_duration, percentile, rss_of};

/// The soak's settings, from the command line.
#[derive(Debug, Clone)]
pub struct Plan {
    pub secs: u64,
    pub postgres: bool,
    pub sockets: usize,
    pub stable: usize,
    pub users: usize,
    pub reconnects: f64,
    pub broadcasts: f64,
    pub messages: f64,
    pub probe: f64,
    pub registrations: f64,
    pub leaderboard: f64,
}

/// `bench soak`'s flags; every rate is per second and multiplied by `--scale`.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// Seconds of load.
    #[arg(long, default_value_t = 180)]
    pub secs: u64,
    /// The database: sqlite (a file in the work directory) or postgres (a fresh database on
    /// 127.0.0.1:5432, dropped after).
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
    pub db: String,
    /// Multiplies every rate (5: issue 18's "5×").
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Joined sockets.
    #[arg(long, default_value_t = 3000)]
    pub sockets: usize,
    /// Of which never churn.
    #[arg(long, default_value_t = 1000)]
    pub stable: usize,
    /// Users messages go to (online or not).
    #[arg(long, default_value_t = 4000)]
    pub users: usize,
    #[arg(long, default_value_t = 30.0)]
    pub reconnects: f64,
    #[arg(long, default_value_t = 5.0)]
    pub broadcasts: f64,
    #[arg(long, default_value_t = 20.0)]
    pub messages: f64,
    /// Messages to the probe user (their latency is measured).
    #[arg(long, default_value_t = 5.0)]
    pub probe: f64,
    #[arg(long, default_value_t = 2.0)]
    pub registrations: f64,
    #[arg(long, default_value_t = 10.0)]
    pub leaderboard: f64,
    /// Keep the work directory (logs, SQLite file).
    #[arg(long)]
    pub keep: bool,
}

impl SoakArgs {
    /// The flags that reproduce this run, every one spelled out (as `OnlineArgs::command_line`).
    pub fn command_line(&self) -> String {
        format!(
            "--secs {} --db {} --scale {} --sockets {} --stable {} --users {} --reconnects {} \
             --broadcasts {} --messages {} --probe {} --registrations {} --leaderboard {}{}",
            self.secs,
            self.db,
            self.scale,
            self.sockets,
            self.stable,
            self.users,
            self.reconnects,
            self.broadcasts,
            self.messages,
            self.probe,
            self.registrations,
            self.leaderboard,
            if self.keep { " --keep" } else { "" }
        )
    }
}

impl Plan {
    pub fn from_args(a: &SoakArgs) -> anyhow::Result<Plan> {
        let plan = Plan {
            secs: a.secs,
            postgres: a.db == "postgres",
            sockets: a.sockets,
            stable: a.stable,
            users: a.users,
            reconnects: a.reconnects * a.scale,
            broadcasts: a.broadcasts * a.scale,
            messages: a.messages * a.scale,
            probe: a.probe * a.scale,
            registrations: a.registrations * a.scale,
            leaderboard: a.leaderboard * a.scale,
        };
        if plan.stable > plan.sockets || plan.sockets > plan.users {
            bail!("need --stable <= --sockets <= --users");
        }
        if plan.sockets > 15_000 {
            bail!("--sockets {}: one process holds at most ~19,900 fds here", plan.sockets);
        }
        Ok(plan)
    }
}

#[derive(Default)]
struct Tally {
    /// Per user index: message id -> times received.
    received: HashMap<usize, HashMap<String, u32>>,
    /// Users whose socket vanished without a close frame at least once.
    abrupt: std::collections::HashSet<usize>,
    /// HTTP status -> count (0: the request failed).
    statuses: HashMap<u16, u64>,
    /// Sent message id -> user index.
    sent: HashMap<String, usize>,
    probe_sent: HashMap<String, Instant>,
    probe_latency: Vec<Duration>,
    /// Broadcasts accepted (202), and received by the stable sockets in all.
    broadcasts_sent: u64,
    broadcasts_received: u64,
}

type Shared = Arc<Mutex<Tally>>;

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

async fn open(port: u16, uid: &str) -> anyhow::Result<Ws> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://127.0.0.1:{port}/socket/websocket?userToken={uid}&vsn=2.0.0");
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config())).await?;
    ws.send(Message::text(r#"["1","1","notifications","phx_join",{}]"#)).await?;
    Ok(ws)
}

/// Reads `ws` until it closes or `until` passes, recording `msg`s and checking broadcasts.
async fn read(ws: &mut Ws, user: usize, tally: &Shared, until: Option<Instant>, stable: bool) {
    loop {
        let next = match until {
            Some(at) => match tokio::time::timeout_at(at.into(), ws.next()).await {
                Ok(next) => next,
                Err(_) => return,
            },
            None => ws.next().await,
        };
        let Some(Ok(Message::Text(text))) = next else {
            if matches!(next, Some(Ok(_))) {
                continue;
            }
            return;
        };
        let Ok(Value::Array(frame)) = serde_json::from_str::<Value>(&text) else { continue };
        let event = frame.get(3).and_then(Value::as_str).unwrap_or_default();
        let payload = frame.get(4).cloned().unwrap_or(Value::Null);
        match event {
            "msg" => {
                let id = payload["id"].as_str().unwrap_or_default().to_owned();
                let mut t = lock(tally);
                if let Some(sent) = payload["message"].as_str().and_then(|m| t.probe_sent.remove(m))
                {
                    t.probe_latency.push(sent.elapsed());
                }
                *t.received.entry(user).or_default().entry(id).or_default() += 1;
            }
            // Counted, not sequenced: concurrent POSTs may reach the server in either order.
            "announce" if stable => lock(tally).broadcasts_received += 1,
            _ => {}
        }
    }
}

fn uid(ids: &[String], i: usize) -> &str {
    &ids[i]
}

/// Runs `task` `rate` times a second until `until`, each in its own task.
async fn every<F, Fut>(rate: f64, until: Instant, task: F)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if rate <= 0.0 {
        return;
    }
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    let mut n = 0;
    while Instant::now() < until {
        tokio::spawn(task(n));
        n += 1;
        next += gap;
        tokio::time::sleep_until(next.into()).await;
    }
}

fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

pub async fn run(paths: &Paths, plan: &Plan) -> anyhow::Result<String> {
    let (database_url, pg_name) = if plan.postgres {
        let name = format!("tako_bench_soak_{}", std::process::id());
        let admin = sqlx::PgPool::connect(runner::PG_ADMIN).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&admin)
            .await?;
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
        let server = runner::PG_ADMIN.rsplit_once('/').map_or(runner::PG_ADMIN, |(s, _)| s);
        (format!("{server}/{name}"), Some((admin, name)))
    } else {
        (format!("sqlite://{}", paths.work.join("soak.db").display()), None)
    };
    let result = soak(paths, plan, &database_url).await;
    if let Some((admin, name)) = pg_name {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&admin)
            .await;
    }
    result
}

async fn soak(paths: &Paths, plan: &Plan, database_url: &str) -> anyhow::Result<String> {
    let server = runner::start(runner::Kind::Tako, paths, database_url).await?;
    let (port, pid) = (server.port, server.pid);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().pool_max_idle_per_host(64)
        // Tako closes keep-alive connections idle for TAKO_HEADER_TIMEOUT (10 s); a client
        // that keeps them longer races the close and loses requests (status 0).
        .pool_idle_timeout(crate::runner::CLIENT_IDLE_TIMEOUT).build()?;
    let tally: Shared = Arc::default();

    // Users (the last one is the probe).
    eprintln!("soak: registering {} users", plan.users + 1);
    let mut ids = Vec::with_capacity(plan.users + 1);
    for chunk in (0..=plan.users).collect::<Vec<_>>().chunks(64) {
        let batch = chunk.iter().map(|_| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let res = http
                    .post(format!("{base}/api/json/accounts/users"))
                    .header("content-type", "application/vnd.api+json")
                    .body(r#"{"data":{"type":"user","attributes":{}}}"#)
                    .send()
                    .await?;
                let body: Value = res.json().await?;
                body["data"]["id"].as_str().map(str::to_owned).context("no id")
            }
        });
        for id in futures_util::future::join_all(batch).await {
            ids.push(id?);
        }
    }
    let ids = Arc::new(ids);
    let probe = plan.users;

    eprintln!("soak: opening {} sockets ({} stable)", plan.sockets, plan.stable);
    let started = Instant::now();
    let until = started + Duration::from_secs(plan.secs);
    let mut readers = Vec::new();
    for i in (0..plan.stable).chain(std::iter::once(probe)) {
        let mut ws = open(port, uid(&ids, i)).await.with_context(|| format!("socket {i}"))?;
        let tally = tally.clone();
        readers.push(tokio::spawn(async move {
            read(&mut ws, i, &tally, Some(until + Duration::from_secs(2)), true).await;
            let _ = ws.close(None).await;
        }));
    }
    // Churners: each user's sessions one after the other, lasting sockets/reconnects seconds
    // on average.
    let churners = plan.sockets - plan.stable;
    let mean_life = if plan.reconnects > 0.0 { churners as f64 / plan.reconnects } else { 1e9 };
    let churn: Vec<_> = (plan.stable..plan.sockets)
        .map(|i| {
            let (ids, tally) = (ids.clone(), tally.clone());
            tokio::spawn(async move {
                let mut session = 0u64;
                // Spread the first connects over the first mean lifetime.
                let offset = mean_life * (i as f64 * 0.618_034).fract();
                tokio::time::sleep(Duration::from_secs_f64(offset.min(5.0))).await;
                while Instant::now() < until {
                    session += 1;
                    let Ok(mut ws) = open(port, uid(&ids, i)).await else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    let life = mean_life * (0.5 + (session as f64 * 0.754_877 + i as f64).fract());
                    let end = (Instant::now() + Duration::from_secs_f64(life)).min(until);
                    if (i as u64 + session).is_multiple_of(8) {
                        tokio::time::sleep(Duration::from_secs(3).min(end - Instant::now())).await;
                    }
                    read(&mut ws, i, &tally, Some(end), false).await;
                    if (i as u64 + session).is_multiple_of(2) {
                        lock(&tally).abrupt.insert(i);
                        drop(ws);
                    } else {
                        let _ = ws.close(None).await;
                    }
                }
            })
        })
        .collect();

    let status = |tally: &Shared, s: Option<u16>| {
        *lock(tally).statuses.entry(s.unwrap_or(0)).or_default() += 1;
    };
    let rng = Arc::new(AtomicU64::new(0x2545_f491_4f6c_dd1d));
    let random = move |n: usize| {
        // xorshift: the users messaged, reproducible across runs.
        let mut x = rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        rng.store(x, Ordering::Relaxed);
        (x % n as u64) as usize
    };
    let send = {
        let (http, base, tally, ids) = (http.clone(), base.clone(), tally.clone(), ids.clone());
        move |user: usize, text: String| {
            let (http, base, tally, ids) = (http.clone(), base.clone(), tally.clone(), ids.clone());
            async move {
                if user == probe {
                    lock(&tally).probe_sent.insert(text.clone(), Instant::now());
                }
                let res = http
                    .post(format!("{base}/api/messages"))
                    .header("content-type", "application/json")
                    .header("idempotency-key", format!("soak-{text}"))
                    .body(json!({"user_id": ids[user], "message": text}).to_string())
                    .send()
                    .await;
                let code = res.as_ref().ok().map(|r| r.status().as_u16());
                status(&tally, code);
                if let Ok(res) = res {
                    if let Ok(body) = res.json::<Value>().await {
                        if let Some(id) = body["id"].as_str() {
                            lock(&tally).sent.insert(id.to_owned(), user);
                        }
                    }
                }
            }
        }
    };
    let mut rss_warm = None;
    let sampler = tokio::spawn(async move {
        tokio::time::sleep(
            Duration::from_secs(10).min(Duration::from_secs(plan_secs_quarter(until))),
        )
        .await;
        rss_of(pid)
    });
    let users = plan.users;
    let s1 = send.clone();
    let (h1, b1, t1) = (http.clone(), base.clone(), tally.clone());
    let (h2, b2, t2) = (http.clone(), base.clone(), tally.clone());
    let (h3, b3, t3) = (http.clone(), base.clone(), tally.clone());
    tokio::join!(
        every(plan.messages, until, move |n| s1(random(users), format!("m{n}"))),
        every(plan.probe, until, move |n| send(probe, format!("probe{n}"))),
        every(plan.broadcasts, until, move |n| {
            let (http, base, tally) = (h1.clone(), b1.clone(), t1.clone());
            async move {
                let body =
                    json!({"topic": "notifications", "event": "announce", "payload": {"n": n}});
                let res = http
                    .post(format!("{base}/api/broadcasts"))
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
                let code = res.ok().map(|r| r.status().as_u16());
                if code == Some(202) {
                    lock(&tally).broadcasts_sent += 1;
                }
                status(&tally, code);
            }
        }),
        every(plan.registrations, until, move |_| {
            let (http, base, tally) = (h2.clone(), b2.clone(), t2.clone());
            async move {
                let res = http
                    .post(format!("{base}/api/json/accounts/users"))
                    .header("content-type", "application/vnd.api+json")
                    .body(r#"{"data":{"type":"user","attributes":{}}}"#)
                    .send()
                    .await;
                status(&tally, res.ok().map(|r| r.status().as_u16()));
            }
        }),
        every(plan.leaderboard, until, move |_| {
            let (http, base, tally) = (h3.clone(), b3.clone(), t3.clone());
            async move {
                let res = http.get(format!("{base}/api/json/leaderboard")).send().await;
                status(&tally, res.ok().map(|r| r.status().as_u16()));
            }
        }),
    );
    if let Ok(rss) = sampler.await {
        rss_warm = rss;
    }
    let rss_end = rss_of(pid);
    let fds_end = fds_of(pid);
    for task in churn {
        let _ = task.await;
    }
    for task in readers {
        let _ = task.await;
    }
    // In-flight sends answer.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Everyone with a message joins once more and gets what waits.
    let waiting_users: Vec<usize> = {
        let t = lock(&tally);
        let mut users: Vec<usize> = t.sent.values().copied().collect();
        users.sort_unstable();
        users.dedup();
        users
    };
    eprintln!("soak: {} users join to collect what waits", waiting_users.len());
    // All at once (they are at most --users sockets), each reading until what was sent to it
    // arrived, or 10 s.
    let expected: HashMap<usize, usize> = {
        let t = lock(&tally);
        let mut per_user = HashMap::new();
        for user in t.sent.values() {
            *per_user.entry(*user).or_insert(0) += 1;
        }
        per_user
    };
    let mut finals = Vec::new();
    for &i in &waiting_users {
        let Ok(mut ws) = open(port, uid(&ids, i)).await else {
            continue;
        };
        let (tally, want) = (tally.clone(), expected.get(&i).copied().unwrap_or(0));
        finals.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let step = (Instant::now() + Duration::from_millis(200)).min(deadline);
                read(&mut ws, i, &tally, Some(step), false).await;
                let got = lock(&tally).received.get(&i).map_or(0, HashMap::len);
                if got >= want {
                    // Anything more would be a duplicate: give it a moment to show.
                    read(
                        &mut ws,
                        i,
                        &tally,
                        Some(Instant::now() + Duration::from_millis(300)),
                        false,
                    )
                    .await;
                    break;
                }
            }
            let _ = ws.close(None).await;
        }));
    }
    for task in finals {
        let _ = task.await;
    }

    // Each message's state against what arrived.
    let sent: Vec<(String, usize)> =
        lock(&tally).sent.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let (mut duplicates, mut lost, mut left_waiting, mut unread) = (0u64, 0u64, 0u64, 0u64);
    for chunk in sent.chunks(64) {
        let checks = chunk.iter().map(|(id, user)| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let res = http.get(format!("{base}/api/messages/{id}")).send().await.ok()?;
                let body: Value = res.json().await.ok()?;
                Some((id.clone(), *user, body["delivered"].as_bool().unwrap_or(false)))
            }
        });
        for (id, user, delivered) in
            futures_util::future::join_all(checks).await.into_iter().flatten()
        {
            let t = lock(&tally);
            let times = t.received.get(&user).and_then(|m| m.get(&id)).copied().unwrap_or(0);
            duplicates += u64::from(times > 1);
            left_waiting += u64::from(times >= 1 && !delivered);
            if times == 0 {
                if delivered && t.abrupt.contains(&user) {
                    unread += 1;
                } else {
                    lost += 1;
                }
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss_of(pid);
    let fds_idle = fds_of(pid);
    server.stop().await;

    let t = lock(&tally);
    let mut latency = t.probe_latency.clone();
    latency.sort();
    let fivexx: u64 = t.statuses.iter().filter(|(s, _)| **s >= 500).map(|(_, c)| c).sum();
    let failed = t.statuses.get(&0).copied().unwrap_or(0);
    let mut statuses: Vec<_> = t.statuses.iter().collect();
    statuses.sort();
    let mib = |b: Option<u64>| b.map(|b| fmt_bytes(b as f64)).unwrap_or_else(|| "?".into());
    let drift = match (rss_warm, rss_end) {
        (Some(a), Some(b)) => format!("{:+.1} MiB", (b as f64 - a as f64) / 1048576.0),
        _ => "?".into(),
    };
    let p = |q: f64| percentile(&latency, q).map(fmt_duration).unwrap_or_else(|| "?".into());
    Ok(format!(
        "| {} | {} s | {} | {} | {} | {} | {} | {} | {} | {} | {} → {} → {} ({drift}) | {} → {} | {} / {} | {} |\n\nHTTP statuses: {:?}",
        if plan.postgres { "PostgreSQL" } else { "SQLite" },
        plan.secs,
        format_args!(
            "{}/s msgs, {}/s probe, {}/s reconnects",
            plan.messages, plan.probe, plan.reconnects
        ),
        sent.len(),
        duplicates,
        lost,
        left_waiting,
        unread,
        fivexx,
        failed,
        mib(rss_warm),
        mib(rss_end),
        mib(rss_idle),
        fds_end,
        fds_idle,
        p(50.0),
        p(99.0),
        // Expected minus received over the stable sockets (and the probe's, which never
        // churns either): missed (or, negative, twice).
        (t.broadcasts_sent * (plan.stable as u64 + 1)) as i64 - t.broadcasts_received as i64,
        statuses,
    ))
}

/// A quarter of the time left until `until`, in seconds (the warm-up before the first RSS).
fn plan_secs_quarter(until: Instant) -> u64 {
    until.saturating_duration_since(Instant::now()).as_secs() / 4
}

pub const HEADER: &str = "| database | duration | rates | messages | duplicates | lost | left waiting | unread after abrupt close | 5xx | failed requests | RSS warm → end → idle (drift) | fds end → idle | probe p50 / p99 | broadcasts missed by stable sockets |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

/// `bench soak`: prints one row of BENCHMARKS.md's soak table.
pub async fn command(args: &SoakArgs) -> anyhow::Result<()> {
    let plan = Plan::from_args(args)?;
    let work = std::env::temp_dir().join(format!("tako-bench-soak-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = async {
        let (tako, rev) = crate::prepare_tako(&work, "HEAD")?;
        let paths = Paths {
            tako,
            tako_baseline: None,
            max_rss: 4096 * 1024 * 1024,
            bench: std::env::current_exe()?,
            socketio_dir: crate::repo_root().join("bench/socketio"),
            work: work.clone(),
        };
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let started = chrono::Utc::now();
        let row = run(&paths, &plan).await?;
        println!(
            "Date: {} · Tako {rev} · machine: {} · load average at start: {}",
            started.format("%Y-%m-%d %H:%M UTC"),
            crate::machine(),
            load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        );
        println!("Command: `cargo run --release -p bench -- soak {}`\n", args.command_line());
        println!("{HEADER}\n{row}");
        anyhow::Ok(())
    }
    .await;
    if args.keep {
        eprintln!("kept {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}
