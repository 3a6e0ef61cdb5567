//! A mounted socket handler: what its transports share (the handler, its hub and presence, the
//! settings) and the gate every new socket passes (shutdown, origin, the node's and the client
//! address's caps). Below the transports, which take it as their state; the [`Endpoint`]
//! (above them) owns it and its shutdown.
//!
//! [`Endpoint`]: crate::Endpoint

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::EndpointConfig;
use crate::hub::Hub;
use crate::limits::{client_ip, Admission, ClientSlot, Refused};
use crate::presence::Presence;
use crate::socket::SocketHandler;

pub(crate) struct Mount<H: SocketHandler> {
    pub(crate) handler: Arc<H>,
    pub(crate) config: EndpointConfig,
    pub(crate) hub: Hub,
    pub(crate) presence: Presence,
    pub(crate) lifecycle: Arc<Lifecycle>,
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

    /// From now on every new socket is refused.
    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Socket tasks alive.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Wakes when the last socket task ends; enable it before reading [`Lifecycle::live`].
    pub(crate) fn idle(&self) -> tokio::sync::futures::Notified<'_> {
        self.idle.notified()
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

impl<H: SocketHandler> Mount<H> {
    pub(crate) fn new(handler: H, config: EndpointConfig, hub: Hub, presence: Presence) -> Self {
        Mount {
            handler: Arc::new(handler),
            config,
            hub,
            presence,
            lifecycle: Arc::default(),
            admission: Arc::default(),
        }
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
        let mount = Arc::downgrade(self);
        let period = (self.config.heartbeat_timeout / 4).max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(mount) = mount.upgrade() else { break };
                if mount.lifecycle.is_shutting_down() {
                    break;
                }
                mount.hub.close_idle(mount.config.heartbeat_timeout);
            }
        });
    }
}
