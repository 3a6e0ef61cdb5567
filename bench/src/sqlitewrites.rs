//! `bench sqlite-writes [--secs 5] [--writers 32]`: how SQLite takes concurrent writes, for the
//! choice in `crates/tako/src/storage/sqlite.rs` (issue 18). Each writer loops over Tako's
//! write pattern (insert a message; then in one transaction read a user's waiting rows and mark
//! them), while one reader times a query. Three ways, same file settings (WAL, synchronous
//! NORMAL, busy timeout 5 s):
//!
//! - `deferred, 8 connections`: what Tako did (a transaction that reads, then writes);
//! - `BEGIN IMMEDIATE, 8 connections`: the write lock taken up front, waiting in SQLite's busy
//!   handler;
//! - `1 writer + 8 readers`: one writing connection (writers queue in the pool), read-only
//!   connections beside it (what Tako does now).

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use crate::stats::{fmt_duration, percentile};

#[derive(Clone, Copy, Debug)]
enum Way {
    Deferred,
    Immediate,
    OneWriter,
}

async fn pools(file: &std::path::Path, way: Way) -> anyhow::Result<(SqlitePool, SqlitePool)> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", file.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    let writers = if matches!(way, Way::OneWriter) { 1 } else { 8 };
    let writer = SqlitePoolOptions::new()
        .max_connections(writers)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.clone())
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY AUTOINCREMENT,
         user_id INTEGER NOT NULL, body TEXT NOT NULL, delivered_at INTEGER)",
    )
    .execute(&writer)
    .await?;
    let reader = match way {
        Way::OneWriter => {
            SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options.read_only(true))
                .await?
        }
        _ => writer.clone(),
    };
    Ok((writer, reader))
}

async fn one_cycle(writer: &SqlitePool, way: Way, user: i64) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO messages (user_id, body) VALUES (?1, 'hello')")
        .bind(user)
        .execute(writer)
        .await?;
    let mut tx = match way {
        Way::Immediate => writer.begin_with("BEGIN IMMEDIATE").await?,
        _ => writer.begin().await?,
    };
    let seqs: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM messages WHERE user_id = ?1 AND delivered_at IS NULL LIMIT 100",
    )
    .bind(user)
    .fetch_all(&mut *tx)
    .await?;
    for seq in seqs {
        sqlx::query("UPDATE messages SET delivered_at = 1 WHERE seq = ?1")
            .bind(seq)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

async fn measure(way: Way, secs: u64, writers: usize) -> anyhow::Result<String> {
    let dir =
        std::env::temp_dir().join(format!("tako-sqlite-writes-{}-{way:?}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (writer, reader) = pools(&dir.join("w.db"), way).await?;
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (writer, ok, failed) = (writer.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0i64;
            while Instant::now() < until {
                let started = Instant::now();
                match one_cycle(&writer, way, (w as i64) * 1000 + n % 50).await {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        latencies.push(started.elapsed());
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
            latencies
        }));
    }
    let reads = tokio::spawn(async move {
        let mut latencies = Vec::new();
        while Instant::now() < until {
            let started = Instant::now();
            let _: Result<i64, _> =
                sqlx::query_scalar("SELECT count(*) FROM messages WHERE delivered_at IS NULL")
                    .fetch_one(&reader)
                    .await;
            latencies.push(started.elapsed());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies
    });
    let mut writes = Vec::new();
    for task in tasks {
        writes.extend(task.await?);
    }
    let mut reads = reads.await?;
    writes.sort();
    reads.sort();
    let _ = std::fs::remove_dir_all(&dir);
    let p =
        |s: &[Duration], q: f64| percentile(s, q).map(fmt_duration).unwrap_or_else(|| "?".into());
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    Ok(format!(
        "| {} | {:.0} | {} | {} / {} | {} / {} |",
        match way {
            Way::Deferred => "deferred, 8 connections (before)",
            Way::Immediate => "BEGIN IMMEDIATE, 8 connections",
            Way::OneWriter => "1 writer + 8 read-only (now)",
        },
        ok as f64 / secs as f64,
        failed,
        p(&writes, 50.0),
        p(&writes, 99.0),
        p(&reads, 50.0),
        p(&reads, 99.0),
    ))
}

/// `bench sqlite-writes`'s flags.
#[derive(Debug, clap::Args)]
pub struct WritesArgs {
    /// Seconds per way.
    #[arg(long, default_value_t = 5)]
    pub secs: u64,
    /// Concurrent writing tasks.
    #[arg(long, default_value_t = 32)]
    pub writers: usize,
}

pub async fn command(args: &WritesArgs) -> anyhow::Result<()> {
    let (secs, writers) = (args.secs.max(1), args.writers.max(1));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "Command: `cargo run --release -p bench -- sqlite-writes {}` · load average at start: {}\n",
        format_args!("--secs {} --writers {}", args.secs, args.writers),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("| way | write cycles/s | failed cycles | write p50 / p99 | read p50 / p99 |");
    println!("|---|---|---|---|---|");
    for way in [Way::Deferred, Way::Immediate, Way::OneWriter] {
        println!("{}", measure(way, secs, writers).await?);
    }
    Ok(())
}
