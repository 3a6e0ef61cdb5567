//! Scenario 7, the rally: V visitors scan S stamps each as fast as they can over HTTP
//! (PostgreSQL, `TAKO_STAMPS=verified`) while N sockets are joined to the event's topic and
//! hear every `collected-broadcast`. Reports scans/s and the latency from a scan's request to
//! its broadcast on a socket (measured on a few observer sockets that read every frame; the
//! others count frames to check that every broadcast reached everyone).
//!
//! The baseline, in the same run on the same server: the same scans of a twin event whose
//! topic nobody joined, i.e. the scan's own cost without the fan-out.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::db_url;
use crate::gen::{open, Target};
use crate::proto::Proto;
use crate::runner::{free_port, log_file, tako_command_with, wait_http, Server, PG_ADMIN};
use crate::stats::{fmt_duration, quantiles};

#[derive(Clone, Copy, Debug)]
pub struct RallyPlan {
    pub visitors: usize,
    pub stamps: usize,
    pub sockets: usize,
    /// Sockets (among `sockets`) that parse every frame to time it.
    pub observers: usize,
}

#[derive(Debug, Default)]
pub struct Phase {
    pub scans: usize,
    pub errors: usize,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
    pub delivered: u64,
    pub expected: u64,
}

impl Phase {
    fn per_sec(&self) -> f64 {
        self.scans as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn post(&self, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/vnd.api+json")
            .body(body.to_string())
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// An event and its printed stamps' codes.
    async fn event(&self, id: &str, topic: &str, stamps: usize) -> anyhow::Result<Vec<String>> {
        let attributes = json!({"name": id, "stamps_required": stamps, "topic": topic});
        let (status, body) = self
            .post(
                "/api/json/events",
                json!({"data": {"type": "event", "id": id, "attributes": attributes}}),
            )
            .await?;
        if status != 201 {
            bail!("creating event {id}: {status} {body}");
        }
        let mut codes = Vec::new();
        for s in 0..stamps {
            let stamp =
                json!({"data": {"type": "stamp", "attributes": {"name": format!("Booth {s}")}}});
            let (status, body) = self.post(&format!("/api/json/events/{id}/stamps"), stamp).await?;
            if status != 201 {
                bail!("creating a stamp: {status} {body}");
            }
            codes.push(body["meta"]["code"].as_str().context("meta.code")?.to_owned());
        }
        Ok(codes)
    }
}

/// Send times of every scan, by visitor and scan number, in nanoseconds since `base`.
struct Sent {
    base: Instant,
    at: Vec<Vec<AtomicU64>>,
}

/// Every visitor scans every code in turn, all visitors at once.
async fn scan_all(api: &Arc<Api>, users: &[String], codes: &[String], sent: &Arc<Sent>) -> Phase {
    let started = Instant::now();
    let tasks: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let (api, user, codes, sent) =
                (api.clone(), user.clone(), codes.to_vec(), sent.clone());
            tokio::spawn(async move {
                let mut errors = Vec::new();
                for (j, code) in codes.iter().enumerate() {
                    let body = json!({"data": {"type": "scan", "attributes": {"code": code}}});
                    sent.at[i][j].store(sent.base.elapsed().as_nanos() as u64, Ordering::Release);
                    match api.post(&format!("/api/json/accounts/users/{user}/scans"), body).await {
                        Ok((201, _)) => {}
                        Ok((status, _)) => errors.push(status),
                        Err(_) => errors.push(0),
                    }
                }
                errors
            })
        })
        .collect();
    let mut statuses: std::collections::BTreeMap<u16, usize> = Default::default();
    for task in tasks {
        for status in task.await.unwrap_or_else(|_| vec![0; codes.len()]) {
            *statuses.entry(status).or_default() += 1;
        }
    }
    if !statuses.is_empty() {
        eprintln!("  failed scans by status (0: no answer): {statuses:?}");
    }
    Phase {
        scans: users.len() * codes.len(),
        errors: statuses.values().sum(),
        elapsed: started.elapsed(),
        ..Phase::default()
    }
}

fn nickname_of(frame: &str) -> Option<usize> {
    // ["1",null,"notifications","collected-broadcast",{"nickname":"v123"}]
    let rest = frame.split("\"nickname\":\"v").nth(1)?;
    rest.split('"').next()?.parse().ok()
}

pub async fn run(tako: &Path, work: &Path, plan: RallyPlan) -> anyhow::Result<String> {
    use sqlx::Executor;
    let db = format!("tako_bench_rally_{}", std::process::id());
    let admin = sqlx::PgPool::connect(PG_ADMIN).await.context("PostgreSQL on 127.0.0.1:5432")?;
    admin.execute(format!("CREATE DATABASE {db}").as_str()).await?;
    let result = run_on(tako, work, plan, &db_url(&db)).await;
    admin.execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str()).await?;
    admin.close().await;
    result
}

async fn run_on(tako: &Path, work: &Path, plan: RallyPlan, url: &str) -> anyhow::Result<String> {
    let port = free_port()?;
    let mut cmd = tako_command_with(tako, url);
    cmd.env("PORT", port.to_string())
        .env("TAKO_STAMPS", "verified")
        // Presence on a topic everyone joins costs N² (README): not what this measures.
        .env("TAKO_PRESENCE", "off")
        .stdin(Stdio::null())
        .stdout(log_file(work, "rally-tako")?)
        .stderr(log_file(work, "rally-tako.err")?);
    let mut child = cmd.spawn().context("starting tako")?;
    let pid = child.id().context("pid")?;
    wait_http(port, &mut child).await?;
    let server = Server { child, pid, port };
    let result = measure(port, plan).await;
    server.stop().await;
    result
}

async fn measure(port: u16, plan: RallyPlan) -> anyhow::Result<String> {
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().pool_max_idle_per_host(plan.visitors)
        // Tako closes keep-alive connections idle for TAKO_HEADER_TIMEOUT (10 s); a client
        // that keeps them longer races the close and loses requests (status 0).
        .pool_idle_timeout(crate::runner::CLIENT_IDLE_TIMEOUT).build()?;
    let api = Arc::new(Api { http, base: base.clone() });
    let quiet = api.event("quiet", "notifications:quiet", plan.stamps).await?;
    let loud = api.event("loud", "notifications", plan.stamps).await?;
    let mut users = Vec::with_capacity(plan.visitors);
    for i in 0..plan.visitors {
        let body =
            json!({"data": {"type": "user", "attributes": {"nickname": format!("v{i:05}")}}});
        let (status, body) = api.post("/api/json/accounts/users", body).await?;
        if status != 201 {
            bail!("registering: {status} {body}");
        }
        users.push(body["data"]["id"].as_str().context("id")?.to_owned());
    }
    let fresh_sent = || {
        Arc::new(Sent {
            base: Instant::now(),
            at: (0..plan.visitors)
                .map(|_| (0..plan.stamps).map(|_| AtomicU64::new(0)).collect())
                .collect(),
        })
    };

    // Baseline: scans of the twin event, whose topic nobody joined.
    let baseline = scan_all(&api, &users, &quiet, &fresh_sent()).await;
    eprintln!("  baseline: {:.0} scans/s ({} errors)", baseline.per_sec(), baseline.errors);

    // The sockets: `observers` of them time every broadcast, all count them.
    let target = Target {
        proto: Proto::Phoenix,
        addr: ([127, 0, 0, 1], port).into(),
        http_base: Some(base),
    };
    let sent = fresh_sent();
    let delivered = Arc::new(AtomicU64::new(0));
    let latencies =
        Arc::new(Mutex::new(Vec::with_capacity(plan.observers * plan.visitors * plan.stamps)));
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut readers = Vec::with_capacity(plan.sockets);
    let (joined_tx, mut joined_rx) = tokio::sync::mpsc::channel::<bool>(plan.sockets);
    for k in 0..plan.sockets {
        let (target, uid, gate) = (target.clone(), users[k % users.len()].clone(), gate.clone());
        let (delivered, latencies, sent, joined_tx) =
            (delivered.clone(), latencies.clone(), sent.clone(), joined_tx.clone());
        let observer = k < plan.observers;
        let visitors = plan.visitors;
        readers.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let ws = tokio::time::timeout(Duration::from_secs(20), open(&target, k, &uid)).await;
            drop(permit);
            let Ok(Ok(mut ws)) = ws else {
                let _ = joined_tx.send(false).await;
                return;
            };
            let _ = joined_tx.send(true).await;
            let mut seen: HashMap<usize, usize> =
                HashMap::with_capacity(if observer { visitors } else { 0 });
            while let Some(Ok(message)) = ws.next().await {
                let Message::Text(text) = message else { continue };
                if !text.contains("\"collected-broadcast\"") {
                    continue;
                }
                delivered.fetch_add(1, Ordering::Relaxed);
                if observer {
                    let now = sent.base.elapsed().as_nanos() as u64;
                    if let Some(v) = nickname_of(&text) {
                        let j = seen.entry(v).or_default();
                        if let Some(at) = sent.at.get(v).and_then(|s| s.get(*j)) {
                            let at = at.load(Ordering::Acquire);
                            latencies
                                .lock()
                                .unwrap()
                                .push(Duration::from_nanos(now.saturating_sub(at)));
                        }
                        *j += 1;
                    }
                }
            }
        }));
    }
    drop(joined_tx);
    // Each socket task says once whether it joined (and keeps its sender while it reads).
    let mut joined = 0;
    for _ in 0..plan.sockets {
        let Some(ok) = joined_rx.recv().await else { break };
        joined += usize::from(ok);
    }
    eprintln!("  {joined} of {} sockets joined", plan.sockets);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut loud_phase = scan_all(&api, &users, &loud, &sent).await;
    let expected = (loud_phase.scans - loud_phase.errors) as u64 * joined as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_delivered = sent.base.elapsed();
    loud_phase.delivered = delivered.load(Ordering::Relaxed);
    loud_phase.expected = expected;
    loud_phase.latencies = latencies.lock().unwrap().clone();
    for reader in readers {
        reader.abort();
    }
    let q = quantiles(&loud_phase.latencies);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = String::new();
    out.push_str(&format!(
        "Rally: {} visitors × {} stamps over HTTP (PostgreSQL, TAKO_STAMPS=verified, TAKO_PRESENCE=off), {joined} sockets joined to the event's topic ({} observers timing)\n\n",
        plan.visitors, plan.stamps, plan.observers.min(joined)
    ));
    out.push_str("| phase | scans | errors | time | scans/s | ratio | scan → broadcast p50 | p99 | broadcasts delivered |\n|---|---|---|---|---|---|---|---|---|\n");
    out.push_str(&format!(
        "| baseline: nobody on the topic | {} | {} | {} | {:.0} | 1.00 | – | – | – |\n",
        baseline.scans,
        baseline.errors,
        fmt_duration(baseline.elapsed),
        baseline.per_sec()
    ));
    out.push_str(&format!(
        "| {joined} sockets hear every scan | {} | {} | {} | {:.0} | {:.2} | {} | {} | {} of {} |\n",
        loud_phase.scans,
        loud_phase.errors,
        fmt_duration(loud_phase.elapsed),
        loud_phase.per_sec(),
        loud_phase.per_sec() / baseline.per_sec().max(1e-9),
        q.map(|q| fmt_duration(q.p50)).unwrap_or_else(|| "–".into()),
        q.map(|q| fmt_duration(q.p99)).unwrap_or_else(|| "–".into()),
        loud_phase.delivered,
        loud_phase.expected,
    ));
    out.push_str(&format!(
        "\nlast broadcast delivered {} after the loud phase began; load average at the end: {}",
        fmt_duration(all_delivered),
        load.trim()
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicknames_of_broadcast_frames() {
        let frame = r#"[null,null,"notifications","collected-broadcast",{"nickname":"v123"}]"#;
        assert_eq!(nickname_of(frame), Some(123));
        assert_eq!(nickname_of(r#"[null,null,"n","collected-broadcast",{"nickname":"x"}]"#), None);
    }
}
