//! The operators' commands: they call a running server's HTTP API, print what happened, and
//! fail with a clear message (and a non-zero exit) when it did not.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// The server to talk to.
    #[arg(long, env = "TAKO_URL", default_value = "http://127.0.0.1:4000")]
    pub url: String,
    /// The operators' token of that server.
    #[arg(long, env = "TAKO_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
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
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let mut request =
            reqwest::Client::new().request(method, &url).header("accept", "application/json");
        if let Some(token) = self.admin_token.as_deref().filter(|t| !t.is_empty()) {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach {url} (is tako running? set TAKO_URL)"))?;
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
