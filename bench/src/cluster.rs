//! Scenario 6 (issue 6): broadcast fan-out in Tako's cluster mode. Two `tako` nodes on one fresh
//! PostgreSQL database and one Redis (`TAKO_PUBSUB_URL`, a `TAKO_CLUSTER` name of its own per
//! run and layout). N subscribers either all on node A, or split half and half over A and B; in
//! both layouts the broadcast is pushed by the control connection on node A, and both nodes run,
//! so the only difference is how many of the sockets are reached through the Redis bus. Reported
//! as scenario 2: time to the first and the last delivery p50 / p99, and steady deliveries/s.

use std::fmt::Write as _;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::gen::{node_of, Clients, Target};
use crate::proto::Proto;
use crate::runner::{
    free_port, log_file, q, tako_command_with, wait_http, Paths, Server, Watchdog, WsPlan, PG_ADMIN,
};
use crate::stats::{fmt_rate, quantiles, Quantiles};

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// All N subscribers and the sender on node A; node B runs, with no sockets.
    OneNode,
    /// Subscriber i on node `node_of(i, 2)`: N/2 on A (with the sender), N/2 on B.
    Split,
}

impl Layout {
    pub fn label(self) -> &'static str {
        match self {
            Layout::OneNode => "all N on node A",
            Layout::Split => "N/2 on A + N/2 on B",
        }
    }
    fn nodes(self) -> usize {
        match self {
            Layout::OneNode => 1,
            Layout::Split => 2,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClusterRow {
    pub n: usize,
    pub layout: Layout,
    /// Subscribers joined in all, and as planned on node A and on node B.
    pub joined_total: usize,
    pub joined: [usize; 2],
    pub first: Option<Quantiles>,
    pub last: Option<Quantiles>,
    pub deliveries_per_sec: Option<f64>,
    pub notes: Vec<String>,
}

impl ClusterRow {
    fn new(n: usize, layout: Layout) -> ClusterRow {
        ClusterRow {
            n,
            layout,
            joined_total: 0,
            joined: [0, 0],
            first: None,
            last: None,
            deliveries_per_sec: None,
            notes: Vec::new(),
        }
    }
}

/// How many subscribers each node gets.
pub fn planned(n: usize, layout: Layout) -> [usize; 2] {
    let mut out = [0, 0];
    for i in 0..n {
        out[node_of(i, layout.nodes())] += 1;
    }
    out
}

/// `postgres://…/<db>` next to the admin URL.
pub(crate) fn db_url(db: &str) -> String {
    let base = PG_ADMIN.rsplit_once('/').map(|(b, _)| b).unwrap_or(PG_ADMIN);
    format!("{base}/{db}")
}

/// The users 0..=n (n: the control connection) with the generator's UUIDs (`proto::user_id`).
pub(crate) const INSERT_USERS: &str = "INSERT INTO users (id, nickname, stamps_collected, inserted_at, updated_at, stamps_changed_at)
     SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'bench' || i, 0, now(), now(), now()
     FROM generate_series(0, $1) AS i";

async fn start_node(paths: &Paths, url: &str, cluster: &str, name: &str) -> anyhow::Result<Server> {
    start_node_with(paths, url, cluster, name, &[]).await
}

/// A cluster node with `env` set on top of the harness's settings (e.g. `TAKO_PRESENCE=off`).
pub(crate) async fn start_node_with(
    paths: &Paths,
    url: &str,
    cluster: &str,
    name: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<Server> {
    let port = free_port()?;
    let mut cmd = tako_command_with(&paths.tako, url);
    cmd.envs(env.iter().copied());
    cmd.env("PORT", port.to_string())
        .env("TAKO_PUBSUB_URL", REDIS_URL)
        .env("TAKO_CLUSTER", cluster)
        .stdin(Stdio::null())
        .stdout(log_file(&paths.work, &format!("cluster-{name}-{port}"))?)
        .stderr(log_file(&paths.work, &format!("cluster-{name}-{port}.err"))?);
    let mut child = cmd.spawn().context("starting a cluster node")?;
    let pid = child.id().context("child pid")?;
    if let Err(e) = wait_http(port, &mut child).await {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(e);
    }
    Ok(Server { child, pid, port })
}

/// (Re)creates database `db`, migrated by Tako and holding users 0..=n; returns its URL.
pub(crate) async fn fresh_database(
    admin: &sqlx::PgPool,
    paths: &Paths,
    db: &str,
    n: usize,
) -> anyhow::Result<String> {
    use sqlx::Executor;
    admin.execute(format!("DROP DATABASE IF EXISTS {db}").as_str()).await?;
    admin.execute(format!("CREATE DATABASE {db}").as_str()).await?;
    let url = db_url(db);
    let status =
        tako_command_with(&paths.tako, &url).arg("migrate").stdout(Stdio::null()).status().await?;
    if !status.success() {
        bail!("tako migrate on PostgreSQL failed");
    }
    let pool = sqlx::PgPool::connect(&url).await?;
    sqlx::query(INSERT_USERS).bind(n as i64).execute(&pool).await?;
    pool.execute("VACUUM ANALYZE users").await?;
    pool.close().await;
    Ok(url)
}

/// Scenario 6 for every N in `sizes`, both layouts, Tako HEAD only; the database is created
/// first and dropped at the end whatever happened.
pub async fn run(paths: &Paths, sizes: &[usize], plan: &WsPlan) -> anyhow::Result<Vec<ClusterRow>> {
    use sqlx::Executor;
    let max_n = sizes.iter().copied().max().unwrap_or(0);
    let db = format!("tako_bench_cluster_{}", std::process::id());
    let url = db_url(&db);
    let admin = sqlx::PgPool::connect(PG_ADMIN).await.context("PostgreSQL on 127.0.0.1:5432")?;
    let result = async {
        fresh_database(&admin, paths, &db, max_n).await?;
        let mut rows = Vec::new();
        for &n in sizes {
            for layout in [Layout::OneNode, Layout::Split] {
                eprintln!("cluster N={n} {}", layout.label());
                let mut row = ClusterRow::new(n, layout);
                if let Err(e) = run_one(paths, &url, n, layout, plan, &mut row).await {
                    eprintln!("  cluster N={n} {layout:?} failed: {e:#}");
                    row.notes.push(format!("stopped: {e:#}"));
                }
                rows.push(row);
            }
        }
        Ok(rows)
    }
    .await;
    admin.execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str()).await?;
    admin.close().await;
    result
}

async fn run_one(
    paths: &Paths,
    url: &str,
    n: usize,
    layout: Layout,
    plan: &WsPlan,
    row: &mut ClusterRow,
) -> anyhow::Result<()> {
    // A cluster name of its own: nothing of an earlier run or of another harness is on the bus.
    let cluster = format!(
        "bench-{}-{}-{n}-{layout:?}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    );
    let a = start_node(paths, url, &cluster, "a").await?;
    let b = match start_node(paths, url, &cluster, "b").await {
        Ok(b) => b,
        Err(e) => {
            a.stop().await;
            return Err(e);
        }
    };
    let dogs = [Watchdog::start(a.pid, paths.max_rss), Watchdog::start(b.pid, paths.max_rss)];
    let target = |s: &Server| Target {
        proto: Proto::Phoenix,
        addr: ([127, 0, 0, 1], s.port).into(),
        http_base: Some(format!("http://127.0.0.1:{}", s.port)),
    };
    let targets = match layout {
        Layout::OneNode => vec![target(&a)],
        Layout::Split => vec![target(&a), target(&b)],
    };
    let result = async {
        // Let the nodes hear each other on the bus before anyone joins.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (mut clients, joined) = Clients::connect_spread(targets, n, Some(64)).await?;
        row.joined_total = joined.joined;
        row.joined = planned(n, layout);
        if joined.joined < n {
            row.notes.push(format!("{} of {n} joined ({} errors)", joined.joined, joined.errors));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (firsts, lasts, incomplete) = clients.broadcast_latency(plan.repeats).await?;
        row.first = quantiles(&firsts);
        row.last = quantiles(&lasts);
        if incomplete > 0 {
            row.notes.push(format!(
                "{incomplete} of {} broadcasts did not reach everyone within 10 s",
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
            "  [cluster n={n} {layout:?}] last p50 {:?}, {}",
            row.last.map(|q| q.p50),
            fmt_rate(rate)
        );
        if clients.dropped() > 0 {
            row.notes
                .push(format!("{} sockets closed by a node during the run", clients.dropped()));
        }
        clients.close().await;
        anyhow::Ok(())
    }
    .await;
    for (dog, name) in dogs.into_iter().zip(["A", "B"]) {
        if let Some(note) = dog.note() {
            row.notes.push(format!("node {name}: {note}"));
        }
    }
    a.stop().await;
    b.stop().await;
    result
}

pub fn table(rows: &[ClusterRow], label: &str) -> String {
    let mut out = String::from(
        "| server | N | subscribers | joined (A + B) | first delivery p50 / p99 | last delivery p50 / p99 | deliveries/s (steady) | deliveries/s vs all on A |\n|---|---:|---|---|---|---|---:|---:|\n",
    );
    for r in rows {
        let one = rows
            .iter()
            .find(|o| o.n == r.n && o.layout == Layout::OneNode)
            .and_then(|o| o.deliveries_per_sec);
        let ratio = match (r.layout, r.deliveries_per_sec, one) {
            (Layout::Split, Some(t), Some(o)) if o > 0.0 => format!("{:.0}%", 100.0 * t / o),
            _ => "–".to_owned(),
        };
        let joined = if r.joined_total == r.n {
            format!("{} + {}", r.joined[0], r.joined[1])
        } else {
            format!("{} of {} (planned {} + {})", r.joined_total, r.n, r.joined[0], r.joined[1])
        };
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {joined} | {} | {} | {} | {ratio} |",
            r.n,
            r.layout.label(),
            q(r.first),
            q(r.last),
            r.deliveries_per_sec.map(fmt_rate).unwrap_or_else(|| "–".into()),
        );
    }
    let notes: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            r.notes.iter().map(move |n| format!("- cluster N={} {}: {n}", r.n, r.layout.label()))
        })
        .collect();
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes.join("\n"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_half_and_half() {
        assert_eq!(planned(1000, Layout::OneNode), [1000, 0]);
        assert_eq!(planned(1000, Layout::Split), [500, 500]);
        assert_eq!(planned(7, Layout::Split), [4, 3]);
    }

    #[test]
    fn database_url_next_to_the_admin_one() {
        assert_eq!(db_url("x"), "postgres://postgres@127.0.0.1:5432/x");
    }

    #[test]
    fn table_ratio_against_one_node() {
        let mut one = ClusterRow::new(1000, Layout::OneNode);
        one.deliveries_per_sec = Some(400_000.0);
        one.joined = [1000, 0];
        one.joined_total = 1000;
        let mut split = ClusterRow::new(1000, Layout::Split);
        split.deliveries_per_sec = Some(300_000.0);
        split.joined = [500, 500];
        split.joined_total = 1000;
        split.notes.push("x".into());
        let t = table(&[one, split], "Tako");
        assert!(t.contains("| Tako | 1000 | N/2 on A + N/2 on B | 500 + 500 |"), "{t}");
        assert!(t.contains("| 75% |"), "{t}");
        assert!(t.contains("- cluster N=1000 N/2 on A + N/2 on B: x"), "{t}");
    }
}
