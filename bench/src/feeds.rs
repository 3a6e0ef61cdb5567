//! Presence feeds at scale (issue 15): N clients join `notifications` at once (a storm), each
//! asking for `full` presence or for the `count`, on one Tako (`TAKO_PRESENCE=on`).
//!
//! - `full`: every client folds `presence_state` and `presence_diff` into its number of metas
//!   (counted in the frame text: one meta per user here, nobody leaves), as the npm `Presence`
//!   class would into its list; a client is complete when it lists all N. Measured: when the
//!   last join reply arrived, and when the last client became complete (both from the first
//!   connect), with the frames and bytes the clients received.
//! - `count`: every client keeps the `users` of its latest `presence_count`; complete at N.
//!   Measured: from the last join reply to the moment every client's count was right.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use crate::gen::{source_ip, ws_config};
use crate::proto::{user_id, Proto};
use crate::runner::{sqlite_with_users, start, Kind, Paths, Watchdog};
use crate::stats::{fmt_bytes, fmt_duration};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    Full,
    Count,
}

impl Feed {
    fn name(self) -> &'static str {
        match self {
            Feed::Full => "full",
            Feed::Count => "count",
        }
    }
}

#[derive(Debug, Default)]
pub struct FeedRow {
    pub feed: &'static str,
    pub n: usize,
    pub joined: usize,
    pub complete: usize,
    /// From the first connect to the last join reply.
    pub all_joined: Option<Duration>,
    /// From the first connect to the last client complete.
    pub all_complete: Option<Duration>,
    pub frames: u64,
    pub bytes: u64,
    pub largest: u64,
    pub notes: Vec<String>,
}

struct Shared {
    base: Instant,
    n: usize,
    feed: Feed,
    joined: AtomicUsize,
    complete: AtomicUsize,
    last_join: AtomicU64,
    last_complete: AtomicU64,
    frames: AtomicU64,
    bytes: AtomicU64,
    largest: AtomicU64,
    errors: AtomicUsize,
    first_error: std::sync::Mutex<Option<String>>,
    notify: Notify,
}

impl Shared {
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

/// How many metas a presence frame adds to a client's list (joins minus leaves), or `None`
/// for another frame. Counted in the text: every meta is one `"metas":` of its key here.
pub fn metas_delta(text: &str) -> Option<i64> {
    let count = |s: &str| s.matches("\"metas\":").count() as i64;
    if text.starts_with(r#"[null,null,"notifications","presence_state""#) {
        return Some(count(text));
    }
    if text.starts_with(r#"[null,null,"notifications","presence_diff""#) {
        return Some(match text.find("\"leaves\":") {
            Some(at) => count(&text[..at]) - count(&text[at..]),
            None => count(text),
        });
    }
    None
}

/// The `users` of a `presence_count` frame.
pub fn count_users(text: &str) -> Option<u64> {
    if !text.starts_with(r#"[null,null,"notifications","presence_count""#) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v[4]["users"].as_u64()
}

async fn client(shared: Arc<Shared>, addr: SocketAddr, index: usize) {
    if let Err(e) = client_inner(&shared, addr, index).await {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        shared.first_error.lock().unwrap().get_or_insert(format!("client {index}: {e:#}"));
        shared.notify.notify_one();
    }
}

async fn client_inner(shared: &Shared, addr: SocketAddr, index: usize) -> anyhow::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source_ip(index), 0)).context("bind")?;
    let tcp = socket.connect(addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://{addr}{}", Proto::Phoenix.path(&user_id(index)));
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config()))
        .await
        .context("upgrade")?;
    let join =
        format!(r#"["1","1","notifications","phx_join",{{"presence":"{}"}}]"#, shared.feed.name());
    ws.send(Message::text(join)).await?;
    let mut joined = false;
    let mut metas: i64 = 0;
    let mut complete = false;
    let mut beat = tokio::time::interval(Duration::from_secs(20));
    beat.tick().await;
    loop {
        let msg = tokio::select! {
            msg = ws.next() => msg,
            _ = beat.tick() => {
                ws.send(Message::text(r#"[null,"hb","phoenix","heartbeat",{}]"#)).await?;
                continue;
            }
        };
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed"),
        };
        let text = text.as_str();
        let len = text.len() as u64;
        shared.frames.fetch_add(1, Ordering::Relaxed);
        shared.bytes.fetch_add(len, Ordering::Relaxed);
        shared.largest.fetch_max(len, Ordering::Relaxed);
        if !joined {
            if text.starts_with(r#"["1","1","notifications","phx_reply""#) {
                if !text.contains(r#""status":"ok""#) {
                    bail!("join refused: {text}");
                }
                joined = true;
                shared.last_join.fetch_max(shared.now(), Ordering::Relaxed);
                shared.joined.fetch_add(1, Ordering::AcqRel);
                shared.notify.notify_one();
            }
            continue;
        }
        let done = match shared.feed {
            Feed::Full => match metas_delta(text) {
                Some(d) => {
                    metas += d;
                    metas == shared.n as i64
                }
                None => continue,
            },
            Feed::Count => match count_users(text) {
                Some(users) => users == shared.n as u64,
                None => continue,
            },
        };
        if done && !complete {
            complete = true;
            shared.last_complete.fetch_max(shared.now(), Ordering::Relaxed);
            shared.complete.fetch_add(1, Ordering::AcqRel);
            shared.notify.notify_one();
        }
    }
}

/// One run: a fresh Tako, N clients of `feed` at once, until all are complete or `limit`.
pub async fn run(paths: &Paths, n: usize, feed: Feed, limit: Duration) -> anyhow::Result<FeedRow> {
    let db = sqlite_with_users(paths, n, Kind::Tako).await?;
    let server = start(Kind::Tako, paths, &db).await?;
    let watchdog = Watchdog::start(server.pid, paths.max_rss);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr: SocketAddr = ([127, 0, 0, 1], server.port).into();
    let shared = Arc::new(Shared {
        base: Instant::now(),
        n,
        feed,
        joined: AtomicUsize::new(0),
        complete: AtomicUsize::new(0),
        last_join: AtomicU64::new(0),
        last_complete: AtomicU64::new(0),
        frames: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        largest: AtomicU64::new(0),
        errors: AtomicUsize::new(0),
        first_error: std::sync::Mutex::new(None),
        notify: Notify::new(),
    });
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(client(shared.clone(), addr, i))).collect();
    let deadline = Instant::now() + limit;
    loop {
        let done = shared.complete.load(Ordering::Acquire) + shared.errors.load(Ordering::Acquire);
        if done >= n || Instant::now() >= deadline {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), shared.notify.notified()).await;
    }
    let mut row = FeedRow {
        feed: feed.name(),
        n,
        joined: shared.joined.load(Ordering::Acquire),
        complete: shared.complete.load(Ordering::Acquire),
        frames: shared.frames.load(Ordering::Relaxed),
        bytes: shared.bytes.load(Ordering::Relaxed),
        largest: shared.largest.load(Ordering::Relaxed),
        ..Default::default()
    };
    if row.joined == n {
        row.all_joined = Some(Duration::from_nanos(shared.last_join.load(Ordering::Acquire)));
    }
    if row.complete == n {
        row.all_complete = Some(Duration::from_nanos(shared.last_complete.load(Ordering::Acquire)));
    }
    let errors = shared.errors.load(Ordering::Acquire);
    if errors > 0 {
        let first = shared.first_error.lock().unwrap().clone().unwrap_or_default();
        row.notes.push(format!("{errors} clients failed (first: {first})"));
    }
    if row.complete < n {
        row.notes.push(format!("{} of {n} complete within {limit:?}", row.complete));
    }
    for task in tasks {
        task.abort();
    }
    row.notes.extend(watchdog.note());
    server.stop().await;
    eprintln!(
        "  [presence {} n={n}] joined {} in {:?}, complete {} at {:?}",
        row.feed, row.joined, row.all_joined, row.complete, row.all_complete
    );
    Ok(row)
}

pub fn table(rows: &[FeedRow]) -> String {
    let mut out = String::from(
        "| join payload | N | joined | all joined | every client complete | after the last join | frames received | bytes received | largest frame | target | notes |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    for r in rows {
        let d = |d: Option<Duration>| d.map(fmt_duration).unwrap_or_else(|| "–".into());
        let after = match (r.all_joined, r.all_complete) {
            (Some(j), Some(c)) => Some(c.saturating_sub(j)),
            _ => None,
        };
        let target = match r.feed {
            "full" => match r.all_complete {
                Some(c) => format!(
                    "all listed < 5 s: {}",
                    if c < Duration::from_secs(5) { "met" } else { "**missed**" }
                ),
                None => "all listed < 5 s: **missed**".into(),
            },
            _ => match after {
                Some(a) => format!(
                    "right within 1 s of the last join: {}",
                    if a <= Duration::from_secs(1) { "met" } else { "**missed**" }
                ),
                None => "right within 1 s of the last join: **missed**".into(),
            },
        };
        let _ = writeln!(
            out,
            "| `{{\"presence\":\"{}\"}}` | {} | {} | {} | {} | {} | {} | {} | {} | {target} | {} |",
            r.feed,
            r.n,
            r.joined,
            d(r.all_joined),
            d(r.all_complete),
            d(after),
            r.frames,
            fmt_bytes(r.bytes as f64),
            fmt_bytes(r.largest as f64),
            r.notes.join("; ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_frames_are_counted_from_their_text() {
        let state = r#"[null,null,"notifications","presence_state",{"a":{"metas":[{"phx_ref":"1"}]},"b":{"metas":[{"phx_ref":"2"}]}}]"#;
        assert_eq!(metas_delta(state), Some(2));
        let diff = r#"[null,null,"notifications","presence_diff",{"joins":{"c":{"metas":[{}]}},"leaves":{"a":{"metas":[{}]},"b":{"metas":[{}]}}}]"#;
        assert_eq!(metas_delta(diff), Some(-1));
        assert_eq!(metas_delta(r#"["1","1","notifications","phx_reply",{}]"#), None);
        let count = r#"[null,null,"notifications","presence_count",{"connections":7,"users":5}]"#;
        assert_eq!(count_users(count), Some(5));
        assert_eq!(count_users(state), None);
    }
}
