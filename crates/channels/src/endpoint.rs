//! An endpoint: one [`SocketHandler`], its hub, its routes and its shutdown.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio::sync::Notify;

use crate::bus::{Bus, LocalBus};
use crate::config::EndpointConfig;
use crate::hub::Hub;
use crate::limits::{client_ip, Admission, ClientSlot, Refused};
use crate::outbox::Close;
use crate::presence::Presence;
use crate::socket::SocketHandler;
use crate::transport;

pub struct Endpoint<H: SocketHandler> {
    pub(crate) handler: Arc<H>,
    pub(crate) config: EndpointConfig,
    pub(crate) hub: Hub,
    pub(crate) presence: Presence,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) longpoll: transport::longpoll::Sessions,
    admission: Arc<Admission>,
}

/// Whether the endpoint accepts sockets, and how many socket tasks are alive.
#[derive(Default)]
pub(crate) struct Lifecycle {
    shutting_down: AtomicBool,
    sweeper_started: AtomicBool,
    live: AtomicUsize,
    idle: Notify,
}

impl Lifecycle {
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Counts a socket task as alive until the guard drops.
    pub(crate) fn track(self: &Arc<Self>) -> LiveGuard {
        self.live.fetch_add(1, Ordering::SeqCst);
        LiveGuard { lifecycle: self.clone() }
    }

    /// As `track`, unless `max` are alive already.
    fn try_track(self: &Arc<Self>, max: usize) -> Option<LiveGuard> {
        self.live
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| LiveGuard { lifecycle: self.clone() })
    }
}

/// A socket's place on this endpoint, from before its connect callback until its task ends.
pub(crate) struct Admitted {
    _live: LiveGuard,
    _client: Option<ClientSlot>,
}

pub(crate) struct LiveGuard {
    lifecycle: Arc<Lifecycle>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.lifecycle.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.lifecycle.idle.notify_waiters();
        }
    }
}

impl<H: SocketHandler> Endpoint<H> {
    /// A single-node endpoint (in-process bus).
    pub fn new(handler: H, config: EndpointConfig) -> Arc<Self> {
        Self::with_bus(handler, config, Arc::new(LocalBus))
    }

    /// An endpoint whose deliveries travel through `bus` (e.g. to other nodes).
    pub fn with_bus(handler: H, config: EndpointConfig, bus: Arc<dyn Bus>) -> Arc<Self> {
        let hub = Hub::with_observer(bus, config.observer.clone());
        let presence = Presence::new(hub.clone(), config.presence_interval);
        Arc::new(Endpoint {
            handler: Arc::new(handler),
            config,
            hub,
            presence,
            lifecycle: Arc::default(),
            longpoll: Default::default(),
            admission: Arc::default(),
        })
    }

    pub fn hub(&self) -> Hub {
        self.hub.clone()
    }

    /// Who is on each topic; cluster buses feed other nodes' presences into it.
    pub fn presence(&self) -> Presence {
        self.presence.clone()
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// Routes to nest under the mount: `app.nest("/socket", endpoint.routes())` serves
    /// `GET /socket/websocket` and `GET|POST|OPTIONS /socket/longpoll`.
    pub fn routes(self: &Arc<Self>) -> Router {
        use transport::longpoll;
        Router::new()
            .route("/websocket", get(transport::websocket::upgrade::<H>))
            .route(
                "/longpoll",
                get(longpoll::poll::<H>)
                    .post(longpoll::publish::<H>)
                    .options(longpoll::preflight)
                    .fallback(longpoll::other_method),
            )
            .with_state(self.clone())
    }

    /// Live LongPoll sessions.
    pub fn longpoll_sessions(&self) -> usize {
        self.longpoll.len()
    }

    /// Sockets connected over WebSocket (all sockets but the LongPoll sessions).
    pub fn websocket_count(&self) -> usize {
        self.hub.socket_count().saturating_sub(self.longpoll.len())
    }

    /// Once [`Endpoint::shutdown`] has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.lifecycle.is_shutting_down()
    }

    /// The checks before a new socket's connect callback: origin (403), the node's cap (503),
    /// the client address's cap (429).
    pub(crate) fn admit(
        &self,
        headers: &axum::http::HeaderMap,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<Admitted, Refused> {
        self.check_origin(headers)?;
        let live = match self.config.max_connections {
            Some(max) => self.lifecycle.try_track(max).ok_or(Refused::Full)?,
            None => self.lifecycle.track(),
        };
        let client = match self.config.max_connections_per_client {
            Some(max) => match client_ip(headers, peer, &self.config.trusted_proxies) {
                // A loopback peer is a local proxy or load generator, not one client.
                Some(ip) if !ip.is_loopback() => {
                    Some(self.admission.take(ip, max).ok_or(Refused::TooManyFromClient)?)
                }
                _ => None,
            },
            None => None,
        };
        Ok(Admitted { _live: live, _client: client })
    }

    pub(crate) fn check_origin(&self, headers: &axum::http::HeaderMap) -> Result<(), Refused> {
        if self.config.check_origin.allows(headers) {
            Ok(())
        } else {
            tracing::info!(origin = ?headers.get(axum::http::header::ORIGIN), "socket refused: origin not allowed");
            Err(Refused::Origin)
        }
    }

    /// Starts (once, from inside the runtime) the task that closes silent sockets. It checks
    /// every quarter of the heartbeat timeout and ends with the endpoint or its shutdown.
    pub(crate) fn start_sweeper(self: &Arc<Self>) {
        if self.lifecycle.sweeper_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let endpoint = Arc::downgrade(self);
        let period = (self.config.heartbeat_timeout / 4).max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(endpoint) = endpoint.upgrade() else { break };
                if endpoint.lifecycle.is_shutting_down() {
                    break;
                }
                endpoint.hub.close_idle(endpoint.config.heartbeat_timeout);
            }
        });
    }

    /// Close every socket with 1001 "going away", refuse new ones (503), and wait for the
    /// socket tasks to end, at most `shutdown_timeout`.
    pub async fn shutdown(&self) {
        self.lifecycle.shutting_down.store(true, Ordering::SeqCst);
        let asked = self.hub.close_all(Close::GOING_AWAY);
        tracing::info!(sockets = asked, "shutting down: closing sockets");
        let deadline = tokio::time::Instant::now() + self.config.shutdown_timeout;
        loop {
            let idle = self.lifecycle.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let live = self.lifecycle.live.load(Ordering::SeqCst);
            if live == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                tracing::warn!(sockets = live, "shutdown timeout passed with sockets still open");
                break;
            }
        }
    }
}
