//! The `tako` binary itself: migrate, its flags, start-up errors that name the thing, logs,
//! and the operators' commands over HTTPS.

mod common;

use std::time::{Duration, Instant};

use common::{closed_port, tako, Server};

#[test]
fn migrate_creates_the_sqlite_file_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fresh.db");
    let output = tako()
        .arg("migrate")
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(db.exists());
    assert!(String::from_utf8_lossy(&output.stdout).contains("migrations applied"));
}

#[test]
fn migrate_defaults_to_tako_db_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let output = tako().arg("migrate").current_dir(dir.path()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(dir.path().join("tako.db").exists());
}

#[test]
fn prod_refuses_to_start_without_tokens_and_database() {
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[
                ("TAKO_ADMIN_TOKEN", "a"),
                ("DATABASE_URL", "sqlite://x.db"),
                ("TAKO_ALLOWED_ORIGINS", "*"),
            ],
            "HOLOQUEST_API_TOKEN",
        ),
        (
            &[
                ("HOLOQUEST_API_TOKEN", "c"),
                ("DATABASE_URL", "sqlite://x.db"),
                ("TAKO_ALLOWED_ORIGINS", "*"),
            ],
            "TAKO_ADMIN_TOKEN",
        ),
        (
            &[
                ("HOLOQUEST_API_TOKEN", "c"),
                ("TAKO_ADMIN_TOKEN", "a"),
                ("TAKO_ALLOWED_ORIGINS", "*"),
            ],
            "DATABASE_URL",
        ),
        (
            &[
                ("HOLOQUEST_API_TOKEN", "c"),
                ("TAKO_ADMIN_TOKEN", "a"),
                ("DATABASE_URL", "sqlite://x.db"),
            ],
            "TAKO_ALLOWED_ORIGINS",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (env, missing) in cases {
        let output = tako()
            .env("TAKO_ENV", "prod")
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(missing), "{stderr}");
    }
    assert!(!dir.path().join("x.db").exists(), "nothing was created");
}

#[test]
fn an_unknown_database_scheme_is_a_clear_error() {
    let output = tako().arg("migrate").env("DATABASE_URL", "mysql://localhost/x").output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("sqlite:// or postgres://"));
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn flags_go_before_or_after_the_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let after = dir.path().join("after.db");
    let output = tako()
        .args(["migrate", "--database-url"])
        .arg(format!("sqlite://{}", after.display()))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let before = dir.path().join("before.db");
    let output = tako()
        .arg("--database-url")
        .arg(format!("sqlite://{}", before.display()))
        .arg("migrate")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(after.exists() && before.exists());
    // The operators' commands too: the URL after the subcommand's own arguments.
    let port = closed_port();
    let output = tako()
        .args(["send", "681adb8b-3c8a-4f7e-9d6e-2f1f6a1b2c3d", "hi", "--url"])
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains(&format!("127.0.0.1:{port}")), "{}", stderr(&output));
}

#[test]
fn a_refused_postgres_connection_names_host_and_port_at_once() {
    let port = closed_port();
    let started = Instant::now();
    let output = tako()
        .arg("migrate")
        .env("DATABASE_URL", format!("postgres://nobody@127.0.0.1:{port}/x"))
        .output()
        .unwrap();
    // It used to retry for the pool's 5 s and then say "pool timed out".
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(output.status.code(), Some(1));
    let stderr = stderr(&output);
    assert!(stderr.contains(&format!("PostgreSQL at 127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.to_lowercase().contains("connection refused"), "{stderr}");
}

#[test]
fn a_missing_sqlite_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir");
    let file = missing.join("x.db");
    let output =
        tako().env("DATABASE_URL", format!("sqlite://{}", file.display())).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = stderr(&output);
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    assert!(
        stderr.contains(&format!("the directory {} does not exist", missing.display())),
        "{stderr}"
    );
}

#[test]
fn prod_names_every_missing_setting_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let output = tako().env("TAKO_ENV", "prod").current_dir(dir.path()).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = stderr(&output);
    for name in ["HOLOQUEST_API_TOKEN", "TAKO_ADMIN_TOKEN", "TAKO_ALLOWED_ORIGINS", "DATABASE_URL"]
    {
        assert!(stderr.contains(name), "{name} in {stderr}");
    }
    assert_eq!(stderr.lines().count(), 1, "one message: {stderr}");
}

#[test]
fn settings_that_make_no_sense_are_refused_naming_the_variable() {
    let cases = [
        ("TAKO_HEARTBEAT_TIMEOUT", "0"),
        ("TAKO_HEARTBEAT_TIMEOUT", "-1"),
        ("TAKO_MAX_FRAME_BYTES", "0"),
        ("TAKO_MAX_FRAME_BYTES", "-5"),
        ("TAKO_MAX_CHANNELS", "0"),
        ("TAKO_MESSAGE_TTL", "0s"),
        ("TAKO_SHUTDOWN_TIMEOUT", "0"),
        ("TAKO_LONGPOLL_WINDOW", "0"),
        ("TAKO_NODE_TIMEOUT", "0"),
        ("TAKO_SOCKET_BURST", "0"),
        ("TAKO_HEADER_TIMEOUT", "0"),
        ("TAKO_MAX_QUEUED_BYTES", "0"),
        ("TAKO_TRUST_PROXY", "sometimes"),
        ("TAKO_HEARTBEAT_TIMEOUT", "99999999999999999999"),
        ("TAKO_PRESENCE", "maybe"),
        ("PORT", "70000"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, value) in cases {
        let output =
            tako().arg("migrate").env(name, value).current_dir(dir.path()).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{name}={value}: {}", stderr(&output));
        let stderr = stderr(&output);
        assert!(stderr.contains(&format!("{name}={value}")), "{name}={value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Both at once are both named, and nothing was opened or created.
    let output = tako()
        .arg("migrate")
        .env("TAKO_HEARTBEAT_TIMEOUT", "0")
        .env("TAKO_MAX_FRAME_BYTES", "0")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = stderr(&output);
    assert!(
        stderr.contains("TAKO_HEARTBEAT_TIMEOUT=0") && stderr.contains("TAKO_MAX_FRAME_BYTES=0")
    );
    assert!(!dir.path().join("tako.db").exists());
    // The documented special values stay valid.
    let output = tako()
        .arg("migrate")
        .env("TAKO_SOCKET_RATE", "0")
        .env("TAKO_SOCKET_BURST", "0")
        .env("TAKO_PRESENCE_INTERVAL_MS", "0")
        .env("TAKO_MAX_CONNECTIONS", "0")
        .env("TAKO_SOCKET_BYTES_PER_SECOND", "0")
        .env("TAKO_MAX_HTTP_CONNECTIONS", "0")
        .env("TAKO_TRUST_PROXY", "1")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn logs_to_a_pipe_are_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("x.db").display());
    // Debug level: sqlx logs every statement, and the missing tokens are warned about.
    let output =
        tako().arg("migrate").env("DATABASE_URL", &db).env("TAKO_LOG", "debug").output().unwrap();
    assert!(output.status.success());
    assert!(output.stderr.len() > 100, "some log lines: {}", stderr(&output));
    assert!(!output.stderr.contains(&0x1b), "an ESC byte in: {}", stderr(&output));
    // JSON as before: one object per line.
    let output = tako()
        .arg("migrate")
        .env("DATABASE_URL", &db)
        .env("TAKO_LOG", "debug")
        .env("TAKO_LOG_FORMAT", "json")
        .output()
        .unwrap();
    let text = stderr(&output);
    assert!(text.lines().count() > 1);
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
}

/// At a terminal the text log is coloured, unless `NO_COLOR` is set. `script` (util-linux)
/// gives the command a terminal.
#[test]
fn logs_at_a_terminal_are_coloured_unless_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("x.db").display());
    let at_a_terminal = |no_color: Option<&str>| {
        let mut command = std::process::Command::new("script");
        command
            .args(["-qec", &format!("{} migrate", env!("CARGO_BIN_EXE_tako")), "/dev/null"])
            .env("DATABASE_URL", &db)
            .env("TAKO_LOG", "debug")
            .env_remove("TAKO_LOG_FORMAT")
            .env_remove("NO_COLOR");
        if let Some(value) = no_color {
            command.env("NO_COLOR", value);
        }
        let output = command.output().expect("script(1) from util-linux");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
        output.stdout
    };
    assert!(at_a_terminal(None).contains(&0x1b), "coloured at a terminal");
    assert!(!at_a_terminal(Some("1")).contains(&0x1b), "NO_COLOR=1 turns colour off");
}

/// `tako ping`/`users create` against a server behind TLS: a local TLS terminator with a
/// self-signed certificate in front of the real server, trusted through `TAKO_CA_FILE`.
#[test]
fn the_cli_speaks_https() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("x.db").display());
    let server =
        Server::start(&[("DATABASE_URL", db.as_str()), ("TAKO_ADMIN_TOKEN", "admin-secret")]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, certified.cert.pem()).unwrap();
    let tls_port = runtime.block_on(tls_terminator(certified, server.address));
    let url = format!("https://127.0.0.1:{tls_port}");

    // Flags after the subcommand, the CA from a flag.
    let output = tako()
        .args(["users", "create", "--nickname", "Tls_Tester", "--url", &url, "--ca-file"])
        .arg(&ca_file)
        .env("TAKO_ADMIN_TOKEN", "admin-secret")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().to_string(), id);

    // Flags before it, the CA from the environment.
    let output = tako()
        .args(["--url", &url, "ping"])
        .env("TAKO_CA_FILE", &ca_file)
        .env("TAKO_ADMIN_TOKEN", "admin-secret")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("ping sent to 0 socket(s)"));

    // Without the CA the certificate is refused, and the message says why.
    let output = tako().args(["ping", "--url", &url]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).to_lowercase().contains("certificate"), "{}", stderr(&output));

    // A CA file that is not PEM is a clear error.
    let output = tako()
        .args(["ping", "--url", &url])
        .env("TAKO_CA_FILE", dir.path().join("x.db"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("TAKO_CA_FILE"), "{}", stderr(&output));
    server.stop();
}

/// Accepts TLS on a random loopback port and forwards the plain bytes to `backend`.
async fn tls_terminator(certified: rcgen::CertifiedKey, backend: std::net::SocketAddr) -> u16 {
    use std::sync::Arc;
    use tokio_rustls::rustls;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    // ring is the only provider compiled in (no aws-lc, no OpenSSL): the process default.
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to forward.
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}
