//! Scenario 5, the default leaderboard: what HoloQuest's web client asks for on every visit
//! of its leaderboard page (`GET /api/json/leaderboard`, no `limit`), against 100k ranked users
//! in PostgreSQL. Tako serves it from its in-memory snapshot (encoded once, reloaded within a
//! second of a change); the yardstick is the minimal axum+sqlx handler (`httpfloor.rs`) running
//! the same query, for the same 10,000 rows, on every request. Both answers are checked to be
//! the same rows before anything is measured. Target (issue 13): Tako ≥ 3× the handler.

use std::fmt::Write as _;
use std::process::Stdio;

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::process::Command;

use crate::runner::{
    free_port, log_file, parse_wrk, tako_command_with, wait_http, wrk, HttpRow, Paths, Server,
    PG_ADMIN,
};

const DATABASE: &str = "tako_bench_leaderboard";
/// What both servers return without `limit` (Tako's `TAKO_LEADERBOARD_MAX` default).
pub const ROWS: usize = 10_000;
/// Tako must serve at least this many times the handler's requests per second.
pub const TARGET: f64 = 3.0;

fn database_url() -> String {
    format!("postgres://postgres@127.0.0.1:5432/{DATABASE}")
}

/// Tako, then the minimal handler, each driven by wrk for `secs` on the default request.
pub async fn run(paths: &Paths, users: u64, secs: u64) -> anyhow::Result<Vec<HttpRow>> {
    use sqlx::Executor;
    let admin = sqlx::PgPool::connect(PG_ADMIN).await.context("PostgreSQL on 127.0.0.1:5432")?;
    admin.execute(format!("DROP DATABASE IF EXISTS {DATABASE}").as_str()).await?;
    admin.execute(format!("CREATE DATABASE {DATABASE}").as_str()).await?;
    let result = measure(paths, users, secs).await;
    admin.execute(format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)").as_str()).await?;
    admin.close().await;
    result
}

async fn measure(paths: &Paths, users: u64, secs: u64) -> anyhow::Result<Vec<HttpRow>> {
    use sqlx::Executor;
    let url = database_url();
    let status =
        tako_command_with(&paths.tako, &url).arg("migrate").stdout(Stdio::null()).status().await?;
    if !status.success() {
        bail!("tako migrate on PostgreSQL failed");
    }
    let pool = sqlx::PgPool::connect(&url).await?;
    // Every user named and ranked; scores spread so the order is not the insertion order.
    sqlx::query(
        "INSERT INTO users (id, nickname, stamps_collected, inserted_at, updated_at, stamps_changed_at)
         SELECT md5(i::text)::uuid, 'Runner_' || i, (i * 7919) % 5000,
                now() - make_interval(secs => i), now() - make_interval(secs => i),
                now() - make_interval(secs => i)
         FROM generate_series(1, $1) AS i",
    )
    .bind(users as i64)
    .execute(&pool)
    .await?;
    pool.execute("VACUUM ANALYZE users").await?;
    pool.close().await;

    let mut rows = Vec::new();
    let mut first_answer: Option<Value> = None;
    for server in ["Tako", "minimal axum+sqlx"] {
        let port = free_port()?;
        let mut cmd = if server == "Tako" {
            let mut c = tako_command_with(&paths.tako, &url);
            c.env("PORT", port.to_string()).env_remove("TAKO_LEADERBOARD_MAX");
            c
        } else {
            let mut c = Command::new(&paths.bench);
            c.args(["http-floor", "--port", &port.to_string(), "--database-url", &url])
                .kill_on_drop(true);
            c
        };
        cmd.stdin(Stdio::null())
            .stdout(log_file(&paths.work, &format!("leaderboard-{port}"))?)
            .stderr(log_file(&paths.work, &format!("leaderboard-{port}.err"))?);
        let mut child = cmd.spawn()?;
        let pid = child.id().context("pid")?;
        let ready = wait_http(port, &mut child).await;
        let server_proc = Server { child, pid, port };
        if let Err(e) = ready {
            server_proc.stop().await;
            return Err(e);
        }
        let endpoint = format!("http://127.0.0.1:{port}/api/json/leaderboard");
        let checked = same_answer(&endpoint, users, &mut first_answer).await;
        if let Err(e) = checked {
            server_proc.stop().await;
            return Err(e.context(format!("{server}: the default leaderboard")));
        }
        let out = wrk(paths, &endpoint, None, secs).await;
        server_proc.stop().await;
        let out = out?;
        let (rps, p50, p99, errors) =
            parse_wrk(&out).with_context(|| format!("wrk output: {out}"))?;
        eprintln!("  [{server}] default leaderboard: {rps:.0} req/s, p50 {p50}, p99 {p99}, errors {errors}");
        rows.push(HttpRow {
            server: server.to_owned(),
            what: "leaderboard",
            rps,
            p50,
            p99,
            errors,
        });
    }
    Ok(rows)
}

/// The answer has every ranked user up to `ROWS`, and the same rows as the first server's.
async fn same_answer(url: &str, users: u64, first: &mut Option<Value>) -> anyhow::Result<()> {
    let body: Value = reqwest::get(url).await?.error_for_status()?.json().await?;
    let data = body["data"].as_array().context("no data array")?;
    let expected = ROWS.min(users as usize);
    if data.len() != expected {
        bail!("{} rows, expected {expected}", data.len());
    }
    match first {
        None => *first = Some(body),
        Some(first) if *first == body => {}
        Some(_) => bail!("not the same rows as the first server's"),
    }
    Ok(())
}

/// The table and the target line.
pub fn report(rows: &[HttpRow]) -> String {
    let mut out = crate::runner::http_table(rows);
    let tako = rows.iter().find(|r| r.server == "Tako");
    let floor = rows.iter().find(|r| r.server != "Tako");
    if let (Some(t), Some(f)) = (tako, floor) {
        let ratio = t.rps / f.rps;
        let met = ratio >= TARGET && t.errors == 0 && f.errors == 0;
        let _ = writeln!(
            out,
            "\n| target | measured (same run) | verdict |\n|---|---|---|\n| default leaderboard ≥ {TARGET}× the minimal axum+sqlx handler | {:.0} / {:.0} req/s = {ratio:.1}× | {} |",
            t.rps,
            f.rps,
            if met { "met" } else { "**missed**" }
        );
    }
    out
}
