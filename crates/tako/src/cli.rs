//! The operators' commands: they call a running server's HTTP API, print what happened, and
//! fail with a clear message (and a non-zero exit) when it did not.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

/// Where the commands find the running server. Global: given before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub struct RemoteServer {
    /// For the commands that call a running server: its URL (`http://…` or `https://…`).
    #[arg(long, env = "TAKO_URL", default_value = "http://127.0.0.1:4000", global = true)]
    pub url: String,
    /// For those commands over HTTPS: a PEM file of certificate authorities to trust besides the
    /// usual public ones (a private CA, a self-signed certificate).
    #[arg(long, env = "TAKO_CA_FILE", value_name = "PEM", global = true)]
    pub ca_file: Option<PathBuf>,
}

/// A running server, as the operators' commands call it.
#[derive(Debug, Clone)]
pub struct Remote {
    url: String,
    admin_token: Option<String>,
    client: reqwest::Client,
}

/// The commands that call a running server's HTTP API.
#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Send a message to one user of a running server (delivered now, or when they next join).
    Send { user_id: String, message: String },
    /// Broadcast an event to a topic of a running server.
    Broadcast {
        topic: String,
        event: String,
        /// A JSON object; `{}` when omitted.
        payload: Option<String>,
    },
    /// The server-wide ping of a running server.
    Ping,
    /// Manage users of a running server.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Register a user (for testing) and print its id.
    Create {
        #[arg(long)]
        nickname: Option<String>,
    },
}

/// What became of a message (`POST /api/messages`' answer).
fn print_message_status(body: &Value) {
    let id = body["id"].as_str().unwrap_or("?");
    if body["delivered"] == Value::Bool(true) {
        println!("delivered live (message {id})");
    } else {
        let expires = body["expires_at"].as_str().unwrap_or("?");
        println!(
            "stored: the user is offline; it waits for their next join until {expires} (message {id})"
        );
    }
}

impl Remote {
    /// HTTPS through rustls (the public roots of `webpki-roots`, plus `ca_file`'s); no OpenSSL.
    pub fn new(server: &RemoteServer, admin_token: Option<String>) -> anyhow::Result<Remote> {
        let url = server.url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&url).with_context(|| format!("TAKO_URL {url:?}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            bail!("TAKO_URL {url:?}: expected http://host:port or https://host");
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30));
        if let Some(path) = &server.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("TAKO_CA_FILE: cannot read {}", path.display()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .with_context(|| {
                    format!("TAKO_CA_FILE: no PEM certificate in {}", path.display())
                })?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder.build().context("setting up the HTTP client")?;
        Ok(Remote { url, admin_token: admin_token.filter(|t| !t.is_empty()), client })
    }

    pub async fn run(&self, command: RemoteCommand) -> anyhow::Result<()> {
        match command {
            RemoteCommand::Send { user_id, message } => self.send(&user_id, &message).await,
            RemoteCommand::Broadcast { topic, event, payload } => {
                self.broadcast(&topic, &event, payload.as_deref()).await
            }
            RemoteCommand::Ping => self.ping().await,
            RemoteCommand::Users { command } => self.users(command).await,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.url);
        let mut request = self.client.request(method, &url).header("accept", "application/json");
        if let Some(token) = self.admin_token.as_deref().filter(|t| !t.is_empty()) {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await.map_err(|error| {
            // reqwest's own message is "error sending request"; the cause (refused, TLS) is
            // what the operator needs.
            let mut cause = String::new();
            let mut source = std::error::Error::source(&error);
            while let Some(inner) = source {
                cause = inner.to_string();
                source = inner.source();
            }
            anyhow::anyhow!(
                "cannot reach {url}: {} (is tako running there? set TAKO_URL; for a private \
                 certificate authority TAKO_CA_FILE)",
                if cause.is_empty() { error.to_string() } else { cause }
            )
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(body);
        }
        let detail = body["errors"][0]["detail"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| body.to_string());
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                bail!("{status}: {detail} (set TAKO_ADMIN_TOKEN to the server's admin token)")
            }
            _ => bail!("{status}: {detail}"),
        }
    }

    pub async fn send(&self, user_id: &str, message: &str) -> anyhow::Result<()> {
        let body = self
            .call(
                Method::POST,
                "/api/messages",
                Some(json!({"user_id": user_id, "message": message})),
            )
            .await?;
        print_message_status(&body);
        Ok(())
    }

    pub async fn broadcast(
        &self,
        topic: &str,
        event: &str,
        payload: Option<&str>,
    ) -> anyhow::Result<()> {
        let payload: Value = match payload {
            None => Value::Object(Map::new()),
            Some(raw) => serde_json::from_str(raw)
                .context("the payload must be a JSON object, e.g. '{\"text\":\"hi\"}'")?,
        };
        if !payload.is_object() {
            bail!("the payload must be a JSON object, e.g. '{{\"text\":\"hi\"}}'");
        }
        let body = self
            .call(
                Method::POST,
                "/api/broadcasts",
                Some(json!({"topic": topic, "event": event, "payload": payload})),
            )
            .await?;
        // A `msg` with a `user_id` went to that user alone, as `tako send` does.
        if body.get("delivered").is_some() {
            print_message_status(&body);
        } else {
            println!("broadcast {event} on {topic} to {} subscriber(s)", body["subscribers"]);
        }
        Ok(())
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        let body = self.call(Method::POST, "/api/ping", None).await?;
        println!("ping sent to {} socket(s)", body["sockets"]);
        Ok(())
    }

    pub async fn users(&self, command: UsersCommand) -> anyhow::Result<()> {
        match command {
            UsersCommand::Create { nickname } => {
                let attributes = match nickname {
                    Some(n) => json!({"nickname": n}),
                    None => json!({}),
                };
                let body = json!({"data": {"type": "user", "attributes": attributes}});
                let created =
                    self.call(Method::POST, "/api/json/accounts/users", Some(body)).await?;
                let id =
                    created["data"]["id"].as_str().context("the server answered without an id")?;
                println!("{id}");
                Ok(())
            }
        }
    }
}
