//! Building the application from a `Config` and running it until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::accounts::{self, UserStore};
use crate::api::{self, auth::Tokens, AppState};
use crate::config::Config;

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    store: Arc<dyn UserStore>,
}

impl Application {
    /// Opens the database, applies migrations, binds the listener. Nothing is served yet.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let store = open_store(&config).await?;
        let tokens = Tokens { client: config.api_token.clone(), admin: config.admin_token.clone() };
        warn_about_open_access(&tokens);
        let state = AppState { store: store.clone(), tokens: Arc::new(tokens) };
        let router = api::router(state, &config.cors_origins);
        let address = SocketAddr::new(config.bind, config.port);
        let listener = TcpListener::bind(address).await.with_context(|| format!("binding {address}"))?;
        Ok(Application { listener, router, store })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn store(&self) -> Arc<dyn UserStore> {
        self.store.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting and drains.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        tracing::info!(address = %self.local_addr(), backend = self.store.backend(), "tako listening");
        axum::serve(self.listener, self.router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving")?;
        tracing::info!("tako stopped");
        Ok(())
    }
}

pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn UserStore>> {
    let store = accounts::connect(config.database_url())
        .await
        .with_context(|| "opening the database (DATABASE_URL)".to_string())?;
    store.migrate().await.context("applying migrations")?;
    Ok(store)
}

fn warn_about_open_access(tokens: &Tokens) {
    if tokens.client.is_none() {
        tracing::warn!(
            "!!! HOLOQUEST_API_TOKEN is not set: every /api request is accepted without a token. \
             Fine on a laptop; set it (and TAKO_ENV=prod) anywhere else. !!!"
        );
    }
    if tokens.client.is_none() && tokens.admin.is_none() {
        tracing::warn!("!!! TAKO_ADMIN_TOKEN is not set either: operator routes are open to anyone. !!!");
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
