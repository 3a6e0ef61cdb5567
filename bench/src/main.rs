//! Tako's benchmark harness. `cargo run --release -p bench -- all` runs every scenario against
//! every server in turn and prints one table (see BENCHMARKS.md); `bench --help` and
//! `bench <subcommand> --help` list the subcommands and their flags (defined in cli.rs):
//!
//! - `all`: scenarios 1–6; `ws`: 1–4 and 6 (unless `--no-cluster`); `http`: 5; `cluster`: 6
//! - `rally`: scenario 7 (issue 14), scans over HTTP on PostgreSQL broadcast to every joined
//!   socket (see rally.rs)
//! - `online`: scenario 3 (targeted latency) with up to 50k online, on a Tako cluster with the
//!   idle sockets held by `ballast` children (see online.rs)
//! - `soak`: issue 18's event-day soak on one Tako (see soak.rs); `sqlite-writes`: three ways
//!   of taking concurrent SQLite writes (see sqlitewrites.rs)
//! - `leaderboard`: scenario 5's default leaderboard (every ranked user, no `limit`), Tako
//!   against the minimal handler (see leaderboard.rs)
//! - `ballast`, `floor`, `axum-floor`, `http-floor`: the processes the others start
//!
//! Every load is bounded in count and time, on loopback only; every server it starts is
//! stopped (and killed on drop) before it exits.

mod cli;
mod cluster;
mod feeds;
mod floor;
mod gen;
mod httpfloor;
mod leaderboard;
mod online;
mod proto;
mod rally;
mod rawws;
mod runner;
mod soak;
mod sqlitewrites;
mod stats;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use clap::Parser;
use cli::{Cli, OnlineArgs, RunArgs};
use runner::{Kind, Paths};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench/ has a parent").to_path_buf()
}

fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The Tako binary to measure: `TAKO_BIN`, or a release build of the committed `HEAD` (built
/// from `git archive` so that others' uncommitted edits neither break nor blur the run).
fn prepare_tako(work: &Path, rev: &str) -> anyhow::Result<(PathBuf, String)> {
    if rev == "HEAD" {
        if let Ok(bin) = std::env::var("TAKO_BIN") {
            return Ok((PathBuf::from(bin), "TAKO_BIN".into()));
        }
    }
    let root = repo_root();
    let full = sh(Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["rev-parse", &format!("{rev}^{{commit}}")]))?;
    let rev = sh(Command::new("git").arg("-C").arg(&root).args(["rev-parse", "--short", &full]))?;
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| {
        format!("{}/.cache/tako-target", std::env::var("HOME").unwrap_or_default())
    });
    // A commit's build never changes: reuse it (a run, or the baseline, need not rebuild).
    let cached = Path::new(&target).join("bench-bins").join(format!("tako-{full}"));
    let bin = work.join(format!("tako-{rev}"));
    if cached.exists() {
        eprintln!("Tako {rev}: reusing {}", cached.display());
        std::fs::copy(&cached, &bin)?;
        return Ok((bin, rev));
    }
    let src = work.join(format!("src-{rev}"));
    std::fs::create_dir_all(&src)?;
    let archive = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["archive", "--format=tar", &rev])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    // `-m`: the files get the time of extraction, not the commit's. With the commit's (older
    // than the last build in the shared target directory), cargo took the previous build of
    // whatever tree was built last as fresh and the "baseline" was that binary.
    let status = Command::new("tar")
        .arg("-x")
        .arg("-m")
        .arg("-C")
        .arg(&src)
        .stdin(archive.stdout.expect("piped"))
        .status()?;
    if !status.success() {
        bail!("extracting HEAD failed");
    }
    eprintln!("building Tako {rev} (release) …");
    let status = Command::new("cargo")
        .args(["build", "--release", "--quiet", "-p", "tako", "--manifest-path"])
        .arg(src.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .status()?;
    if !status.success() {
        bail!("building Tako at {rev} failed");
    }
    // Copy it out at once: others build into the same target directory.
    std::fs::copy(Path::new(&target).join("release/tako"), &bin)?;
    std::fs::create_dir_all(cached.parent().expect("has a parent"))?;
    let partial = cached.with_extension("partial");
    std::fs::copy(&bin, &partial)?;
    std::fs::rename(&partial, &cached)?;
    Ok((bin, rev))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let kernel = sh(Command::new("uname").arg("-r")).unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem} RAM, Linux {kernel}")
}

async fn all(args: &RunArgs, ws: bool, http: bool, cluster: bool) -> anyhow::Result<()> {
    let sizes = args.sizes.clone();
    if let Some(&n) = sizes.iter().find(|&&n| n > 19_000) {
        bail!("N={n}: one process holds at most ~19,900 sockets here (hard fd limit 20,000), servers included");
    }
    let servers = args.servers.clone();
    let http_users = args.http_users;
    let http_secs = args.http_secs;
    let plan = args.plan();

    let work = std::env::temp_dir().join(format!("tako-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = async {
        let (tako, rev) = prepare_tako(&work, "HEAD")?;
        let _ = runner::TAKO_LABEL.set(Box::leak(format!("Tako {rev} (HEAD)").into_boxed_str()));
        let _ = runner::TAKO_NO_PRESENCE_LABEL
            .set(Box::leak(format!("Tako {rev} (HEAD), TAKO_PRESENCE=off").into_boxed_str()));
        let _ = runner::TAKO_PHOENIX_LABEL
            .set(Box::leak(format!("Tako {rev} (HEAD), TAKO_PRESENCE=phoenix").into_boxed_str()));
        let mut servers = servers.clone();
        let tako_baseline = match &args.tako_baseline {
            Some(base) => {
                let (bin, base_rev) = prepare_tako(&work, base)?;
                let _ = runner::BASELINE_LABEL.set(Box::leak(format!("Tako {base_rev} (baseline)").into_boxed_str()));
                if let Some(i) = servers.iter().position(|k| *k == Kind::Tako) {
                    servers.insert(i + 1, Kind::TakoBaseline);
                }
                Some(bin)
            }
            None => None,
        };
        let max_rss_mib = args.max_rss_mib;
        let paths = Paths {
            tako,
            tako_baseline,
            max_rss: max_rss_mib * 1024 * 1024,
            bench: std::env::current_exe()?,
            socketio_dir: repo_root().join("bench/socketio"),
            work: work.clone(),
        };
        if ws && servers.contains(&Kind::SocketIo) && !paths.socketio_dir.join("node_modules/socket.io").exists() {
            bail!("run `npm install` in bench/socketio first");
        }
        let started = chrono::Utc::now();
        let mut rows = Vec::new();
        if ws {
            for &n in &sizes {
                for &kind in &servers {
                    eprintln!("{kind:?} N={n}");
                    match runner::run_ws(kind, n, &paths, &plan).await {
                        Ok(row) => rows.push(row),
                        Err(e) => {
                            eprintln!("  {kind:?} N={n} failed: {e:#}");
                            rows.push(runner::Row { kind: Some(kind), n, notes: vec![format!("failed: {e:#}")], ..Default::default() });
                        }
                    }
                }
            }
        }
        let mut cluster_rows = Vec::new();
        let cluster_sizes = &args.cluster_sizes;
        if cluster {
            eprintln!("cluster: two Tako nodes on PostgreSQL and Redis, N = {cluster_sizes:?}");
            match cluster::run(&paths, cluster_sizes, &plan).await {
                Ok(r) => cluster_rows = r,
                Err(e) => eprintln!("  cluster scenario failed: {e:#}"),
            }
        }
        let mut http_rows = Vec::new();
        if http {
            eprintln!("HTTP on PostgreSQL with {http_users} users");
            match runner::run_http(&paths, http_users, http_secs).await {
                Ok(r) => http_rows = r,
                Err(e) => eprintln!("  HTTP scenario failed: {e:#}"),
            }
        }
        println!("Date: {} · Tako {rev} · machine: {}", started.format("%Y-%m-%d %H:%M UTC"), machine());
        println!(
            "Plan: N = {sizes:?}{}; broadcast latency over {} broadcasts one at a time; steady broadcast {} s with {} in flight; {} targeted messages\n",
            if cluster { format!(" (cluster: {cluster_sizes:?})") } else { String::new() },
            plan.repeats, plan.throughput_secs, plan.window, plan.targeted_repeats
        );
        if ws {
            println!("{}", runner::ws_table(&rows));
        }
        if !cluster_rows.is_empty() {
            println!(
                "Scenario 6, cluster: two Tako nodes ({}, one PostgreSQL database, Redis bus), broadcast sent on node A:\n",
                runner::TAKO_LABEL.get().copied().unwrap_or("Tako")
            );
            println!("{}", cluster::table(&cluster_rows, runner::TAKO_LABEL.get().copied().unwrap_or("Tako")));
        }
        if !http_rows.is_empty() {
            println!("Scenario 5, HTTP on PostgreSQL with {http_users} users (wrk -t1 -c16 -d{http_secs}s):\n");
            println!("{}", runner::http_table(&http_rows));
        }
        if ws || http {
            println!("Targets:\n");
            println!("{}", runner::targets(&rows, &http_rows));
        }
        anyhow::Ok(())
    }
    .await;
    clean_up(args.keep, &work);
    result
}

/// Removes the work directory unless `--keep`.
fn clean_up(keep: bool, work: &Path) {
    if keep {
        eprintln!("kept {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(work);
    }
}

/// `bench presence`: the presence feeds at scale (see feeds.rs).
async fn presence_cmd(args: &cli::PresenceArgs) -> anyhow::Result<()> {
    if let Some(&n) = args.full.iter().chain(&args.count).find(|&&n| n > 19_000) {
        bail!("N={n}: one process holds at most ~19,900 sockets here");
    }
    let work = std::env::temp_dir().join(format!("tako-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = async {
        let (tako, rev) = prepare_tako(&work, "HEAD")?;
        let paths = Paths {
            tako,
            tako_baseline: None,
            max_rss: args.max_rss_mib * 1024 * 1024,
            bench: std::env::current_exe()?,
            socketio_dir: repo_root().join("bench/socketio"),
            work: work.clone(),
        };
        let started = chrono::Utc::now();
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let limit = std::time::Duration::from_secs(args.limit_secs);
        let mut rows = Vec::new();
        let runs = args.full.iter().map(|&n| (feeds::Feed::Full, n));
        for (feed, n) in runs.chain(args.count.iter().map(|&n| (feeds::Feed::Count, n))) {
            if n == 0 {
                continue;
            }
            eprintln!("presence {feed:?} N={n}");
            match feeds::run(&paths, n, feed, limit).await {
                Ok(row) => rows.push(row),
                Err(e) => eprintln!("  presence {feed:?} N={n} failed: {e:#}"),
            }
        }
        println!(
            "Date: {} · Tako {rev} (TAKO_PRESENCE=on) · machine: {} · load average at start: {}",
            started.format("%Y-%m-%d %H:%M UTC"),
            machine(),
            load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        );
        let sizes = |v: &[usize]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",");
        println!(
            "Command: `cargo run --release -p bench -- presence --full {} --count {} --limit-secs {}`\n",
            sizes(&args.full),
            sizes(&args.count),
            args.limit_secs
        );
        println!("{}", feeds::table(&rows));
        anyhow::Ok(())
    }
    .await;
    clean_up(args.keep, &work);
    result
}

/// `bench rally`: scenario 7 (see rally.rs).
async fn rally_cmd(args: &cli::RallyArgs) -> anyhow::Result<()> {
    let plan = rally::RallyPlan {
        visitors: args.visitors,
        stamps: args.stamps,
        sockets: args.sockets,
        observers: args.observers,
    };
    let work = std::env::temp_dir().join(format!("tako-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = async {
        let (tako, rev) = prepare_tako(&work, "HEAD")?;
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let report = rally::run(&tako, &work, plan).await?;
        println!(
            "Date: {} · Tako {rev} · machine: {} · load average at start: {}",
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
            machine(),
            load.trim()
        );
        println!(
            "Command: `cargo run --release -p bench -- rally --visitors {} --stamps {} --sockets {} --observers {}`\n",
            plan.visitors, plan.stamps, plan.sockets, plan.observers
        );
        println!("{report}");
        anyhow::Ok(())
    }
    .await;
    clean_up(args.keep, &work);
    result
}

/// `bench online`: scenario 3 at up to 50k online (see online.rs).
async fn online_cmd(args: &OnlineArgs) -> anyhow::Result<()> {
    let plan = online::OnlinePlan {
        sizes: args.sizes.clone(),
        rounds: args.rounds,
        together: args.together,
        nodes: args.nodes,
        recipients: args.recipients,
        targeted: args.targeted,
        per_child: args.per_child,
        concurrency: args.concurrency,
        join_secs: args.join_secs,
        presence: args.presence,
    };
    plan.check()?;
    let work = std::env::temp_dir().join(format!("tako-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = async {
        let (tako, rev) = prepare_tako(&work, "HEAD")?;
        // TAKO_BIN: name the file (a harness build is `tako-<commit>`).
        let label = match std::env::var("TAKO_BIN") {
            Ok(bin) => format!("Tako `{}`", Path::new(&bin).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or(bin)),
            Err(_) => format!("Tako {rev}"),
        };
        let paths = Paths {
            tako,
            tako_baseline: None,
            max_rss: args.max_rss_mib * 1024 * 1024,
            bench: std::env::current_exe()?,
            socketio_dir: repo_root().join("bench/socketio"),
            work: work.clone(),
        };
        let started = chrono::Utc::now();
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let rows = online::run(&paths, &plan).await?;
        let ended = chrono::Utc::now();
        println!(
            "Date: {}–{} · {label} · machine: {} · load average at start: {}",
            started.format("%Y-%m-%d %H:%M"),
            ended.format("%H:%M UTC"),
            machine(),
            load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        );
        println!("Command: `{}cargo run --release -p bench -- online {}`", if std::env::var("TAKO_BIN").is_ok() { "TAKO_BIN=… " } else { "" }, args.command_line());
        println!(
            "Plan: N online = {:?} on {} nodes, {} rounds {}; {} recipients in the measuring process; {} targeted messages per run, one at a time (POST /api/messages on node A → the recipient's socket); ballast children of at most {} sockets, {} joins in flight each\n",
            plan.sizes,
            plan.nodes,
            plan.rounds,
            if plan.together {
                "(each round: one cluster per N, all up at once, message k sent to each in turn)"
            } else {
                "(one cluster at a time, every other round in reverse order)"
            },
            plan.recipients, plan.targeted, plan.per_child, plan.concurrency
        );
        println!("Scenario 3 at up to 50k online (issue 8):\n");
        println!("{}", online::table(&rows, &label, plan.nodes));
        if plan.presence {
            println!("Presence on every node (issue 15): node A's count and a node killed with -9:\n");
            println!("{}", online::presence_table(&rows, &label, std::time::Duration::from_secs(5)));
        }
        anyhow::Ok(())
    }
    .await;
    clean_up(args.keep, &work);
    result
}

async fn leaderboard_cmd(args: &cli::LeaderboardArgs) -> anyhow::Result<()> {
    let work = std::env::temp_dir().join(format!("tako-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = async {
        let (tako, rev) = prepare_tako(&work, "HEAD")?;
        let paths = Paths {
            tako,
            tako_baseline: None,
            max_rss: 4096 * 1024 * 1024,
            bench: std::env::current_exe()?,
            socketio_dir: repo_root().join("bench/socketio"),
            work: work.clone(),
        };
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let started = chrono::Utc::now();
        let rows = leaderboard::run(&paths, args.users, args.secs).await?;
        println!(
            "Date: {} · Tako {rev} · machine: {} · load average at start: {}",
            started.format("%Y-%m-%d %H:%M UTC"),
            machine(),
            load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        );
        println!(
            "Command: `cargo run --release -p bench -- leaderboard --users {} --secs {}`",
            args.users, args.secs
        );
        println!(
            "Scenario 5, default leaderboard (no limit: {} rows) on PostgreSQL with {} ranked users (wrk -t1 -c16 -d{}s):\n",
            leaderboard::ROWS, args.users, args.secs
        );
        println!("{}", leaderboard::report(&rows));
        anyhow::Ok(())
    }
    .await;
    clean_up(args.keep, &work);
    result
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().into_command() {
        cli::Command::All { run, no_http, no_cluster } => {
            all(&run, true, !no_http, !no_cluster).await
        }
        cli::Command::Ws { run, no_cluster } => all(&run, true, false, !no_cluster).await,
        cli::Command::Http(run) => all(&run, false, true, false).await,
        cli::Command::Cluster(run) => all(&run, false, false, true).await,
        cli::Command::Online(args) => online_cmd(&args).await,
        cli::Command::Rally(args) => rally_cmd(&args).await,
        cli::Command::Presence(args) => presence_cmd(&args).await,
        cli::Command::Leaderboard(args) => leaderboard_cmd(&args).await,
        cli::Command::Ballast(b) => {
            let targets = online::parse_targets(&b.targets)?;
            let deadline = std::time::Duration::from_secs(b.deadline_secs);
            online::ballast(targets, b.first_index, b.count, b.concurrency, deadline).await
        }
        cli::Command::Floor(p) => floor::serve_raw(p.port).await,
        cli::Command::AxumFloor(p) => floor::serve_axum(p.port).await,
        cli::Command::HttpFloor { port, database_url } => {
            httpfloor::serve(port, &database_url).await
        }
        cli::Command::Soak(args) => soak::command(&args).await,
        cli::Command::SqliteWrites(args) => sqlitewrites::command(&args).await,
    }
}
