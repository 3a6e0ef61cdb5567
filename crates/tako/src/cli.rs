//! The operators' commands: they call a running server's HTTP API, print what happened, and
//! fail with a clear message (and a non-zero exit) when it did not.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

use crate::booths;
use crate::qr_sheet::{self, Card, CardCode};

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
    /// Manage the rally's events of a running server.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Manage the stamps (booths) of an event of a running server.
    Stamps {
        #[command(subcommand)]
        command: StampsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Create an event; its id (a-z, 0-9 and `-`, e.g. dokomi-2025) is how links name it.
    Create {
        id: String,
        #[arg(long)]
        name: String,
        /// Distinct stamps that complete the rally.
        #[arg(long)]
        required: u32,
        /// Scans count from then (RFC 3339, e.g. 2025-06-06T10:00:00+02:00).
        #[arg(long)]
        opens_at: Option<String>,
        /// Scans count until then (RFC 3339).
        #[arg(long)]
        closes_at: Option<String>,
        /// Where its announcements go: `notifications` (default) or `notifications:<name>`.
        #[arg(long)]
        topic: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Create it hidden from visitors.
        #[arg(long)]
        hidden: bool,
    },
    /// Draw prize winners among those who completed the event and were not drawn before
    /// (recorded for good: drawing again draws other people).
    Draw {
        id: String,
        #[arg(long, default_value_t = 1)]
        winners: u32,
    },
    /// List the event's past draws and their winners.
    Draws { id: String },
    /// Print who completed the event as CSV (nickname, completed_at), in the order they did.
    Completers {
        id: String,
        /// Add a user_id column (a user's id is their login secret: share the file with care).
        #[arg(long)]
        user_ids: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum StampsCommand {
    /// Create or update an event's stamps from a CSV of booths, and write the QR codes of the
    /// printed ones (SVG, PNG and a printable index.html) into a folder.
    Import {
        /// Columns: name, booth_id (required), description, external_url, image_url, nsfw,
        /// visible, mode (`printed` or `screen`).
        file: PathBuf,
        #[arg(long)]
        event: String,
        /// The folder for the QR codes (created when missing).
        #[arg(long, default_value = "qr")]
        out: PathBuf,
    },
    /// Print a new booth link for a `screen` booth (an earlier link of it stops working), or
    /// revoke it: the page shows the booth's changing code as a full-screen QR code.
    BoothLink {
        booth_id: String,
        #[arg(long)]
        event: String,
        /// Revoke the booth's link instead: its page stops showing codes.
        #[arg(long)]
        revoke: bool,
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
            RemoteCommand::Events { command } => self.events(command).await,
            RemoteCommand::Stamps { command } => self.stamps(command).await,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let body = body.map(|b| ("application/json", b.to_string().into_bytes()));
        let bytes = self.request(method, path, "application/json", body).await?;
        let text = String::from_utf8_lossy(&bytes);
        Ok(serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.into_owned())))
    }

    /// One request; a refusal becomes an error naming every problem the server listed.
    async fn request(
        &self,
        method: Method,
        path: &str,
        accept: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> anyhow::Result<bytes::Bytes> {
        let url = format!("{}{path}", self.url);
        let mut request = self.client.request(method, &url).header("accept", accept);
        if let Some(token) = self.admin_token.as_deref().filter(|t| !t.is_empty()) {
            request = request.bearer_auth(token);
        }
        if let Some((content_type, body)) = body {
            request = request.header("content-type", content_type).body(body);
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
        let bytes = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            return Ok(bytes);
        }
        let text = String::from_utf8_lossy(&bytes);
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.into_owned()));
        let details: Vec<&str> = body["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["detail"].as_str())
            .collect();
        let detail = if details.is_empty() { body.to_string() } else { details.join("\n  ") };
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

/// An existing stamp of the event, as the import matches it.
struct Existing {
    id: String,
    mode: String,
}

fn path_segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// One draw: its time and count, then a line per winner (`user id<TAB>nickname`, ready for
/// `tako send`).
fn print_draw(draw: &Value) {
    let a = &draw["attributes"];
    let winners = a["winners"].as_array().cloned().unwrap_or_default();
    println!(
        "draw {} at {}: {} of {} asked",
        draw["id"].as_str().unwrap_or("?"),
        a["drawn_at"].as_str().unwrap_or("?"),
        winners.len(),
        a["requested"]
    );
    for winner in &winners {
        println!(
            "{}\t{}",
            winner["user_id"].as_str().unwrap_or("?"),
            winner["nickname"].as_str().unwrap_or("(no nickname)")
        );
    }
}

impl Remote {
    pub async fn events(&self, command: EventsCommand) -> anyhow::Result<()> {
        match command {
            EventsCommand::Create {
                id,
                name,
                required,
                opens_at,
                closes_at,
                topic,
                description,
                hidden,
            } => {
                let mut attributes = json!({"name": name, "stamps_required": required});
                for (key, value) in [
                    ("opens_at", opens_at),
                    ("closes_at", closes_at),
                    ("topic", topic),
                    ("description", description),
                ] {
                    if let Some(value) = value {
                        attributes[key] = Value::String(value);
                    }
                }
                if hidden {
                    attributes["visible"] = Value::Bool(false);
                }
                let body = json!({"data": {"type": "event", "id": id, "attributes": attributes}});
                let created = self.call(Method::POST, "/api/json/events", Some(body)).await?;
                let id = created["data"]["id"].as_str().unwrap_or("?");
                println!("created event {id}");
                Ok(())
            }
            EventsCommand::Draw { id, winners } => {
                let path = format!("/api/json/events/{}/draws", path_segment(&id));
                let body = json!({"data": {"type": "draw", "attributes": {"winners": winners}}});
                let drawn = self.call(Method::POST, &path, Some(body)).await?;
                print_draw(&drawn["data"]);
                Ok(())
            }
            EventsCommand::Completers { id, user_ids } => {
                // The server writes the CSV (crate::prize_csv), as for the dashboard's download.
                let path =
                    format!("/api/events/{}/completers.csv?user_ids={user_ids}", path_segment(&id));
                let csv = self.request(Method::GET, &path, "text/csv", None).await?;
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                out.write_all(&csv)?;
                out.flush()?;
                Ok(())
            }
            EventsCommand::Draws { id } => {
                let path = format!("/api/json/events/{}/draws", path_segment(&id));
                let listed = self.call(Method::GET, &path, None).await?;
                let draws = listed["data"].as_array().cloned().unwrap_or_default();
                if draws.is_empty() {
                    println!("no draws yet");
                }
                for draw in &draws {
                    print_draw(draw);
                }
                Ok(())
            }
        }
    }

    pub async fn stamps(&self, command: StampsCommand) -> anyhow::Result<()> {
        match command {
            StampsCommand::Import { file, event, out } => self.import(&file, &event, &out).await,
            StampsCommand::BoothLink { booth_id, event, revoke } => {
                self.booth_link(&booth_id, &event, revoke).await
            }
        }
    }

    /// The event's stamps by booth id (hidden ones too), and the event's name.
    async fn event_stamps(
        &self,
        event: &str,
    ) -> anyhow::Result<(String, std::collections::HashMap<String, Existing>)> {
        let path = format!("/api/json/events/{}?include=stamps", path_segment(event));
        let shown = self.call(Method::GET, &path, None).await.map_err(|e| {
            anyhow::anyhow!("event {event:?}: {e} (create it first: tako events create)")
        })?;
        let event_name = shown["data"]["attributes"]["name"].as_str().unwrap_or(event).to_owned();
        let mut existing = std::collections::HashMap::new();
        for stamp in shown["included"].as_array().into_iter().flatten() {
            let attributes = &stamp["attributes"];
            if let (Some(booth), Some(id)) = (attributes["booth_id"].as_str(), stamp["id"].as_str())
            {
                let mode = attributes["mode"].as_str().unwrap_or("printed").to_owned();
                existing.insert(booth.to_owned(), Existing { id: id.to_owned(), mode });
            }
        }
        Ok((event_name, existing))
    }

    async fn booth_link(&self, booth_id: &str, event: &str, revoke: bool) -> anyhow::Result<()> {
        let (_, stamps) = self.event_stamps(event).await?;
        let Some(stamp) = stamps.get(booth_id) else {
            bail!("event {event:?} has no booth {booth_id:?}");
        };
        if stamp.mode != "screen" {
            bail!("booth {booth_id:?} is a {} stamp: only screen booths have a link", stamp.mode);
        }
        let path = format!("/api/json/stamps/{}/booth-key", path_segment(&stamp.id));
        if revoke {
            self.call(Method::DELETE, &path, None).await?;
            println!("revoked: the page of booth {booth_id} stops showing codes");
        } else {
            let made = self.call(Method::POST, &path, None).await?;
            let page = made["path"].as_str().context("the server gave no path")?;
            println!("{}{page}", self.url);
        }
        Ok(())
    }

    /// Sends the CSV to the server, which checks the whole file and the event's stamps before
    /// writing anything, then updates the booths it knows (by booth id) and creates the others
    /// (crate::stamp_import, as for the dashboard's upload); writes each new printed stamp's QR
    /// files from the answer (its code is shown only then) and the printable index.
    async fn import(
        &self,
        file: &std::path::Path,
        event: &str,
        out: &std::path::Path,
    ) -> anyhow::Result<()> {
        let size = std::fs::metadata(file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .len();
        if size > booths::MAX_CSV_BYTES as u64 {
            bail!(
                "{}: {size} bytes; at most {} are accepted",
                file.display(),
                booths::MAX_CSV_BYTES
            );
        }
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        std::fs::create_dir_all(out)
            .with_context(|| format!("cannot create the folder {}", out.display()))?;
        // A code is shown once: make sure it can be written before any stamp is created.
        let probe = out.join(".tako-write-check");
        std::fs::write(&probe, b"").with_context(|| {
            format!("cannot write into {}; nothing was imported", out.display())
        })?;
        let _ = std::fs::remove_file(&probe);

        let path = format!("/api/events/{}/stamps/import", path_segment(event));
        let answer = self
            .request(Method::POST, &path, "application/json", Some(("text/csv", bytes)))
            .await
            .map_err(|e| {
                let text = e.to_string();
                if text.starts_with("404") {
                    anyhow::anyhow!("event {event:?}: {text} (create it first: tako events create)")
                } else if text.starts_with("400") {
                    anyhow::anyhow!("{}: nothing was imported:\n  {}", file.display(), text)
                } else {
                    anyhow::anyhow!("{}: {text}", file.display())
                }
            })?;
        let answer: Value =
            serde_json::from_slice(&answer).context("the server's answer is not JSON")?;
        let a = &answer["data"]["attributes"];
        let event_name = a["event_name"].as_str().unwrap_or(event).to_owned();
        let mut cards = Vec::new();
        for booth in a["booths"].as_array().into_iter().flatten() {
            let booth_id = booth["booth_id"].as_str().unwrap_or_default().to_owned();
            let stamp_id = booth["stamp_id"].as_str().unwrap_or_default();
            let stem = qr_sheet::file_stem(&booth_id, stamp_id);
            if let Some(qr) = booth["qr"].as_str() {
                qr_sheet::write_qr(out, &stem, qr).with_context(|| {
                    format!(
                        "booth {booth_id:?} was created but its QR code could not be written \
                         (delete that stamp and import again for a new code)"
                    )
                })?;
            }
            let code = if booth["mode"] == "screen" {
                CardCode::Screen
            } else if out.join(format!("{stem}.svg")).exists() {
                CardCode::Printed { stem }
            } else {
                CardCode::Elsewhere
            };
            cards.push(Card {
                name: booth["name"].as_str().unwrap_or_default().to_owned(),
                booth_id,
                code,
            });
        }
        let index = qr_sheet::write_index(out, &event_name, &cards)?;
        let elsewhere = cards.iter().filter(|c| c.code == CardCode::Elsewhere).count();
        println!(
            "{} stamp(s) created, {} updated; print {}",
            a["created"],
            a["updated"],
            index.display()
        );
        if elsewhere > 0 {
            println!(
                "{elsewhere} printed booth(s) got their code from an earlier import into another \
                 folder: their QR files are there (codes are shown only when a stamp is created)"
            );
        }
        Ok(())
    }
}
