//! Starts the real application on a random port, against SQLite always and PostgreSQL when
//! `TAKO_TEST_DATABASE_URL` names a server (each test gets a fresh database on it).

use std::future::IntoFuture;

use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::{json, Value};
use tako::config::Config;
use tako::startup::Application;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const JSONAPI: &str = "application/vnd.api+json";

#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

/// Every backend the suite was told about. PostgreSQL needs `TAKO_TEST_DATABASE_URL`; the
/// project's test command always sets it, and a server it names must answer.
pub fn backends() -> Vec<Backend> {
    let mut backends = vec![Backend::Sqlite];
    match postgres_admin_url() {
        Some(url) => backends.push(Backend::Postgres(url)),
        None => eprintln!("note: TAKO_TEST_DATABASE_URL is not set; PostgreSQL variants not run"),
    }
    backends
}

pub fn postgres_admin_url() -> Option<String> {
    std::env::var("TAKO_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty())
}

/// A database made for one test, dropped when this goes out of scope (also when the test
/// fails: the drop runs while the panic unwinds).
pub struct TempDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

/// Creates a fresh database on the server of `admin_url`. Its name starts with the admin
/// database's (`scripts/test` drops `<its run database>*` at the end, whatever happened).
pub async fn fresh_postgres_database(admin_url: &str) -> TempDatabase {
    use sqlx::Connection;
    let (base, admin_db) = admin_url.rsplit_once('/').expect("a postgres URL with a database path");
    let admin_db = admin_db.split('?').next().unwrap_or_default();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    // PostgreSQL names are at most 63 bytes.
    let prefix: String = admin_db.chars().take(63 - 1 - 16).collect();
    let name = format!("{prefix}_{}", &suffix[..16]);
    let mut conn = sqlx::PgConnection::connect(admin_url).await.unwrap_or_else(|e| {
        panic!("TAKO_TEST_DATABASE_URL is set but PostgreSQL does not answer: {e}")
    });
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let _ = conn.close().await;
    TempDatabase { url: format!("{base}/{name}"), admin_url: admin_url.to_owned(), name }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own.
        let dropped = std::thread::spawn(move || {
            use sqlx::Connection;
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                sqlx::query(&sql).execute(&mut conn).await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("warning: test database {} was not dropped", self.name);
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub client: Client,
    pub database_url: String,
    pub backend: Backend,
    pub token: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
    /// Dropped after the server was told to stop (fields drop after `Drop::drop`).
    _database: Option<TempDatabase>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        TestApp::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> TestApp {
        let (database_url, dir, database) = match &backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                (format!("sqlite://{}", dir.path().join("tako.db").display()), Some(dir), None)
            }
            Backend::Postgres(admin) => {
                let database = fresh_postgres_database(admin).await;
                (database.url.clone(), None, Some(database))
            }
        };
        let mut config = Config::for_database(&database_url);
        configure(&mut config);
        let token = config.api_token.clone();
        let mut app = TestApp::start(config, backend, database_url, dir, token).await;
        app._database = database;
        app
    }

    /// A server on an existing database (e.g. to restart on the same SQLite file).
    pub async fn start_config(config: Config, backend: Backend, database_url: String) -> TestApp {
        let token = config.api_token.clone();
        TestApp::start(config, backend, database_url, None, token).await
    }

    async fn start(
        config: Config,
        backend: Backend,
        database_url: String,
        dir: Option<tempfile::TempDir>,
        token: Option<String>,
    ) -> TestApp {
        let app = Application::build(config).await.expect("application builds");
        let address = format!("http://{}", app.local_addr());
        let (tx, rx) = oneshot::channel();
        let server = tokio::spawn(app.run(async {
            let _ = rx.await;
        }));
        TestApp {
            address,
            client: Client::new(),
            database_url,
            backend,
            token,
            shutdown: Some(tx),
            server: Some(server),
            _dir: dir,
            _database: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A request as the web client sends it: JSON:API media types and the client token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self.client.request(method, self.url(path)).header("accept", JSONAPI);
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    pub async fn post_json(&self, path: &str, body: &str) -> Response {
        self.request(Method::POST, path)
            .header("content-type", JSONAPI)
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    pub async fn patch_json(&self, path: &str, body: &str) -> Response {
        self.request(Method::PATCH, path)
            .header("content-type", JSONAPI)
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.unwrap()
    }

    /// Registers a user (optionally with a nickname) and returns its document.
    pub async fn register(&self, nickname: Option<&str>) -> Value {
        let attributes = match nickname {
            Some(n) => json!({"nickname": n}),
            None => json!({}),
        };
        let body = json!({"data": {"type": "user", "attributes": attributes}}).to_string();
        let response = self.post_json("/api/json/accounts/users/", &body).await;
        assert_eq!(response.status(), 201, "registering on {:?}", self.backend);
        response.json().await.unwrap()
    }

    pub async fn register_id(&self, nickname: Option<&str>) -> String {
        self.register(nickname).await["data"]["id"].as_str().unwrap().to_owned()
    }

    pub async fn set_stamps(&self, id: &str, stamps: i64) -> Value {
        let body = json!({"data": {"type": "user", "attributes": {"stamps_collected": stamps}}})
            .to_string();
        let response = self.patch_json(&format!("/api/json/accounts/users/{id}"), &body).await;
        assert_eq!(response.status(), 200, "set stamps on {:?}", self.backend);
        response.json().await.unwrap()
    }

    /// Stops the server and waits until it has stopped.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.into_future().await.expect("server task").expect("server ran cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Asserts a JSON:API error document with this status and code; returns its first error.
pub async fn assert_error(response: Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status, "status");
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, JSONAPI);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["jsonapi"]["version"], "1.0", "{body}");
    let error = body["errors"][0].clone();
    assert_eq!(error["status"], status.to_string(), "{body}");
    assert_eq!(error["code"], code, "{body}");
    assert!(
        error["id"].is_string() && error["title"].is_string() && error["detail"].is_string(),
        "{body}"
    );
    error
}

pub fn update_body(attributes: Value) -> String {
    json!({"data": {"type": "user", "attributes": attributes}}).to_string()
}

/// A minimal Phoenix v2 client over tokio-tungstenite, for asserting bytes on the wire.
pub struct WsClient {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_ref: u64,
}

impl WsClient {
    pub async fn connect(app: &TestApp, user_id: &str) -> WsClient {
        let url = format!(
            "{}/socket/websocket?vsn=2.0.0&userToken={user_id}",
            app.address.replace("http://", "ws://")
        );
        let (stream, _) = tokio_tungstenite::connect_async(url).await.expect("socket connects");
        WsClient { stream, next_ref: 0 }
    }

    pub async fn send(&mut self, frame: Value) {
        use futures_util::SinkExt;
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    /// Joins `topic` and waits for the ok reply.
    pub async fn join(&mut self, topic: &str) {
        self.next_ref += 1;
        let r = self.next_ref.to_string();
        self.send(json!([r, r, topic, "phx_join", {}])).await;
        let reply = self.next_event("phx_reply").await;
        assert_eq!(reply[4]["status"], "ok", "join {topic}: {reply}");
    }

    /// The next frame with this event (others are skipped), within 5 s.
    pub async fn next_event(&mut self, event: &str) -> Value {
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                let frame = self
                    .next_frame()
                    .await
                    .unwrap_or_else(|| panic!("socket closed waiting for {event}"));
                if frame[3] == event {
                    return frame;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {event} within 5 s"))
    }

    /// The next text frame, or None when the socket closed.
    pub async fn next_frame(&mut self) -> Option<Value> {
        use futures_util::StreamExt;
        while let Some(message) = self.stream.next().await {
            match message.ok()? {
                tokio_tungstenite::tungstenite::Message::Text(text) => {
                    return Some(serde_json::from_str(&text).unwrap())
                }
                tokio_tungstenite::tungstenite::Message::Close(_) => return None,
                _ => {}
            }
        }
        None
    }

    /// Asserts nothing with this event arrives within `ms`.
    pub async fn assert_no_event(&mut self, event: &str, ms: u64) {
        let wait = tokio::time::timeout(std::time::Duration::from_millis(ms), async {
            while let Some(frame) = self.next_frame().await {
                if frame[3] == event {
                    return frame;
                }
            }
            Value::Null
        });
        if let Ok(frame) = wait.await {
            assert!(frame.is_null(), "unexpected {event}: {frame}");
        }
    }
}
