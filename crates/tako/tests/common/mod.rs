//! The real `tako` binary for black-box tests: a command with a clean environment, and a
//! server process on a random port whose log is collected.

#![allow(dead_code)] // each test file uses part of it

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every variable the binary reads, removed, so the developer's shell cannot change a test.
const SETTINGS: &[&str] = &[
    "HOLOQUEST_API_TOKEN",
    "TAKO_ADMIN_TOKEN",
    "DATABASE_URL",
    "TAKO_ENV",
    "PORT",
    "TAKO_BIND",
    "TAKO_PUBSUB_URL",
    "TAKO_ALLOWED_ORIGINS",
    "TAKO_URL",
    "TAKO_CA_FILE",
    "TAKO_LOG",
    "TAKO_LOG_FORMAT",
    "NO_COLOR",
    "TAKO_HEARTBEAT_TIMEOUT",
    "TAKO_MAX_FRAME_BYTES",
    "TAKO_MAX_CHANNELS",
    "TAKO_MESSAGE_TTL",
    "TAKO_SHUTDOWN_TIMEOUT",
    "TAKO_LONGPOLL_WINDOW",
    "TAKO_NODE_TIMEOUT",
    "TAKO_SOCKET_RATE",
    "TAKO_SOCKET_BURST",
    "TAKO_PRESENCE",
    "TAKO_METRICS_BIND",
    "TAKO_TRUST_PROXY",
    "TAKO_MAX_QUEUED_BYTES",
    "TAKO_SOCKET_BYTES_PER_SECOND",
    "TAKO_HEADER_TIMEOUT",
    "TAKO_MAX_HTTP_CONNECTIONS",
    "TAKO_PRESENCE_INTERVAL_MS",
    "TAKO_MAX_CONNECTIONS",
    "TAKO_MAX_CONNECTIONS_PER_IP",
    "TAKO_REGISTRATIONS_PER_MINUTE",
    "TAKO_CLUSTER",
    "TAKO_CORS_ORIGINS",
];

pub fn tako() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tako"));
    for var in SETTINGS {
        command.env_remove(var);
    }
    command
}

/// A `tako` server process, killed when dropped.
pub struct Server {
    child: Child,
    pub address: SocketAddr,
    /// Every line it wrote to stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `tako` with PORT=0 and `env`, and waits (at most 60 s) for its "listening" line.
    pub fn start(env: &[(&str, &str)]) -> Server {
        let mut child = tako()
            .env("PORT", "0")
            .env("TAKO_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tako starts");
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let address = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                        continue;
                    };
                    if entry["fields"]["message"] == "tako listening" {
                        let address = entry["fields"]["address"].as_str().expect("an address");
                        break address.parse().expect("a socket address");
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("tako did not start: {:#?}", log.lock().unwrap());
                }
            }
        };
        Server { child, address, log }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// SIGTERM, and waits for the exit (a clean stop checkpoints SQLite's WAL).
    pub fn stop(mut self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "tako exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tako did not stop within 30 s of SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
