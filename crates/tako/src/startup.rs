//! Building the application from a `Config` and running it until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::accounts::NicknamePolicy;
use crate::api::leaderboard::LeaderboardCache;
use crate::api::{self, auth::Tokens, ops::HttpLimits, AppState};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::realtime::Realtime;
use crate::storage::{self, Store};

pub struct Application {
    listener: TcpListener,
    router: HttpService,
    store: Arc<dyn Store>,
    realtime: Realtime,
    shutdown_timeout: std::time::Duration,
    limits: crate::server::Limits,
    /// `TAKO_METRICS_BIND`: its own listener, `GET /metrics` without a token.
    metrics_listener: Option<(TcpListener, axum::Router)>,
}

/// The whole HTTP service: the router inside the observability layers.
pub(crate) type HttpService = tower::util::BoxCloneSyncService<
    axum::extract::Request,
    axum::response::Response,
    std::convert::Infallible,
>;

/// Every HTTP request gets an `x-request-id` (the caller's, or a new UUID, echoed in the
/// answer), a span carrying it (see `telemetry::http_span`: no query strings, no UUIDs), an
/// info log line with its status and latency, and its place in the HTTP metrics.
///
/// These layers wrap the router from outside (a tower stack) rather than through
/// `Router::layer`: that one boxes every route once more per layer, and axum clones a route's
/// whole boxed stack on every request (each `from_fn` level once more), so each layer added
/// that way made every request pay for cloning all the layers below it. Only the route
/// template needs the router's match, so `mark_route` stays a route layer.
fn observed(router: axum::Router, metrics: Arc<Metrics>) -> HttpService {
    use axum::middleware::{from_fn, from_fn_with_state};
    use axum::response::IntoResponse;
    use tower::ServiceBuilder;
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    use tower_http::trace::{DefaultOnResponse, TraceLayer};
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    let service = ServiceBuilder::new()
        .map_response(IntoResponse::into_response)
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(crate::telemetry::http_span)
                .on_request(())
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(from_fn_with_state(metrics, crate::metrics::track_http))
        .service(router.route_layer(from_fn(crate::metrics::mark_route)));
    HttpService::new(service)
}

impl Application {
    /// Opens the database, applies migrations, binds the listener. Nothing is served yet.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let store = open_store(&config).await?;
        let tokens = Tokens { client: config.api_token.clone(), admin: config.admin_token.clone() };
        warn_about_open_access(&tokens);
        let metrics = Arc::new(Metrics::new());
        let realtime = Realtime::new(store.clone(), &config, metrics.clone());
        let rally = crate::rally::Rally::open(
            &*store,
            config.rally_secret.as_deref(),
            crate::rally::CodeStep::new(config.code_step_secs).context("TAKO_CODE_STEP")?,
            config.scan_url.clone(),
        )
        .await
        .context("reading the rally secret")?;
        if config.rally_secret.is_none() {
            tracing::info!(
                "TAKO_RALLY_SECRET is not set: stamp codes are keyed with a secret generated \
                 and kept in the database (a leaked database then gives away screen codes; \
                 printed codes stay safe)"
            );
        }
        let state = AppState {
            store: store.clone(),
            tokens: Arc::new(tokens),
            realtime: realtime.clone(),
            metrics: metrics.clone(),
            limits: Arc::new(HttpLimits::new(
                config.registrations_per_minute,
                config.trust_proxy.clone(),
            )),
            nicknames: Arc::new(NicknamePolicy::new(
                config.reserved_nicknames.iter().map(String::as_str),
            )),
            leaderboard: Arc::new(LeaderboardCache::new(config.leaderboard_max)),
            rally: Arc::new(api::scans::RallyState::new(rally, &config)),
        };
        let router = api::router(state.clone(), &config.cors_origins)
            .nest("/socket", realtime.routes())
            .merge(crate::dashboard::routes(state.clone()));
        let router = observed(router, metrics);
        let address = SocketAddr::new(config.bind, config.port);
        let listener = listen(address).with_context(|| format!("binding {address}"))?;
        let metrics_listener = match config.metrics_bind {
            Some(address) => Some((
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("binding TAKO_METRICS_BIND {address}"))?,
                api::ops::metrics_only(state),
            )),
            None => None,
        };
        Ok(Application {
            listener,
            router,
            store,
            realtime,
            shutdown_timeout: config.shutdown_timeout(),
            limits: crate::server::Limits::new(
                Duration::from_secs(config.header_timeout_secs),
                config.max_http_connections,
            ),
            metrics_listener,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    pub fn realtime(&self) -> Realtime {
        self.realtime.clone()
    }

    /// Serves until `shutdown` completes; then stops accepting, closes every socket with 1001
    /// and lets HTTP requests in flight finish, all within the shutdown timeout.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(address = %self.local_addr(), backend = self.store.backend(), "tako listening");
        crate::allocator::spawn_trimmer();
        if let Some((listener, router)) = self.metrics_listener {
            if let Ok(address) = listener.local_addr() {
                tracing::info!(%address, "metrics listening (no token)");
            }
            // Ends with the process; it holds nothing that needs a graceful stop.
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, router).await {
                    tracing::error!(%error, "metrics listener failed");
                }
            });
        }
        let (accepting_tx, accepting_rx) = tokio::sync::watch::channel(true);
        let mut server = tokio::spawn(crate::server::serve(
            self.listener,
            self.router,
            self.limits,
            accepting_rx,
        ));
        let served_early = tokio::select! {
            () = shutdown => false,
            _ = &mut server => true,
        };
        // Sockets are closed with 1001 while the listener still accepts: meanwhile `/readyz`
        // answers 503 (load balancers move on) and new sockets are refused with 503.
        self.realtime.shutdown().await;
        let _ = accepting_tx.send(false);
        if !served_early && tokio::time::timeout(self.shutdown_timeout, &mut server).await.is_err()
        {
            tracing::warn!(
                "HTTP connections still open after the shutdown timeout; exiting anyway"
            );
            server.abort();
        }
        tracing::info!("tako stopped");
        Ok(())
    }
}

/// Connections the kernel queues before accept. After a restart every client reconnects at
/// once; with the usual 128 the kernel drops most of them and they retry seconds later.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let store = storage::connect(config.database_url())
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
        tracing::warn!(
            "!!! TAKO_ADMIN_TOKEN is not set either: operator routes are open to anyone. !!!"
        );
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
