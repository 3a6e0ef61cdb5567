//! An endpoint: one [`SocketHandler`] mounted, its routes and its shutdown.

use std::sync::Arc;

use axum::routing::get;
use axum::Router;

use crate::bus::{Bus, LocalBus};
use crate::config::EndpointConfig;
use crate::hub::Hub;
use crate::mount::Mount;
use crate::outbox::Close;
use crate::presence::Presence;
use crate::socket::SocketHandler;
use crate::transport;

pub struct Endpoint<H: SocketHandler> {
    mount: Arc<Mount<H>>,
    longpoll: Arc<transport::longpoll::Sessions>,
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
        let mount = Arc::new(Mount::new(handler, config, hub, presence));
        Arc::new(Endpoint { mount, longpoll: Arc::default() })
    }

    pub fn hub(&self) -> Hub {
        self.mount.hub.clone()
    }

    /// Who is on each topic; cluster buses feed other nodes' presences into it.
    pub fn presence(&self) -> Presence {
        self.mount.presence.clone()
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.mount.config
    }

    /// Routes to nest under the mount: `app.nest("/socket", endpoint.routes())` serves
    /// `GET /socket/websocket` and `GET|POST|OPTIONS /socket/longpoll`.
    pub fn routes(self: &Arc<Self>) -> Router {
        use transport::longpoll;
        let websocket = Router::new()
            .route("/websocket", get(transport::websocket::upgrade::<H>))
            .with_state(self.mount.clone());
        let longpoll = Router::new()
            .route(
                "/longpoll",
                get(longpoll::poll::<H>)
                    .post(longpoll::publish::<H>)
                    .options(longpoll::preflight)
                    .fallback(longpoll::other_method),
            )
            .with_state(longpoll::LongPollState::new(self.mount.clone(), self.longpoll.clone()));
        websocket.merge(longpoll)
    }

    /// Live LongPoll sessions.
    pub fn longpoll_sessions(&self) -> usize {
        self.longpoll.len()
    }

    /// Sockets connected over WebSocket (all sockets but the LongPoll sessions).
    pub fn websocket_count(&self) -> usize {
        self.mount.hub.socket_count().saturating_sub(self.longpoll.len())
    }

    /// Once [`Endpoint::shutdown`] has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.mount.lifecycle.is_shutting_down()
    }

    /// Close every socket with 1001 "going away", refuse new ones (503), and wait for the
    /// socket tasks to end, at most `shutdown_timeout`.
    pub async fn shutdown(&self) {
        let mount = &self.mount;
        mount.lifecycle.begin_shutdown();
        let asked = mount.hub.close_all(Close::GOING_AWAY);
        tracing::info!(sockets = asked, "shutting down: closing sockets");
        let deadline = tokio::time::Instant::now() + mount.config.shutdown_timeout;
        loop {
            let idle = mount.lifecycle.idle();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let live = mount.lifecycle.live();
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
