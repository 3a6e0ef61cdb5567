//! The protocol state machine of one socket, independent of its transport.
//!
//! A transport hands it decoded-or-not inbound frames; everything it answers goes, encoded, into
//! the socket's outbox, in order. WebSocket uses it now; LongPoll can drive the same session.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};
use smallvec::SmallVec;

use crate::channel::{Channel, ChannelContext, HandleIn, Payload};
use crate::hub::{Hub, SocketShared};
use crate::limits::{InboundBudget, InboundRate, Verdict};
use crate::outbox::Close;
use crate::presence::Presence;
use crate::serializer::{Inbound, Malformed, Status};
use crate::socket::SocketHandler;

struct Joined<A> {
    channel: Arc<dyn Channel<A>>,
    /// Holds the topic and the join_ref of this join.
    ctx: ChannelContext<A>,
}

pub(crate) struct Session<H: SocketHandler> {
    handler: Arc<H>,
    assigns: Arc<H::Assigns>,
    socket: Arc<SocketShared>,
    hub: Hub,
    presence: Presence,
    max_channels: usize,
    /// Few per socket (usually one, held inline): a list is smaller than a map and as fast at
    /// this size.
    channels: SmallVec<[Joined<H::Assigns>; 1]>,
    inbound: Option<InboundBudget>,
}

const PHOENIX: &str = "phoenix";

/// Largest join message (its whole frame) a client may send: join parameters are kept for the
/// channel's life, unlike other messages, so they get a bound of their own below the frame limit.
pub const MAX_JOIN_BYTES: usize = 16 * 1024;

impl<H: SocketHandler> Session<H> {
    pub(crate) fn new(
        handler: Arc<H>,
        assigns: H::Assigns,
        socket: Arc<SocketShared>,
        hub: Hub,
        presence: Presence,
        max_channels: usize,
    ) -> Self {
        Session {
            handler,
            assigns: Arc::new(assigns),
            socket,
            hub,
            presence,
            max_channels,
            channels: SmallVec::new(),
            inbound: None,
        }
    }

    /// Inbound messages over `rate` get error replies, and a socket that persists is closed.
    pub(crate) fn with_inbound_rate(mut self, rate: Option<InboundRate>) -> Self {
        self.inbound = rate.map(InboundBudget::new);
        self
    }

    /// Likewise for bytes: `per_second` on average, bursts of up to `largest` (the frame limit).
    pub(crate) fn with_inbound_bytes(mut self, per_second: Option<u64>, largest: usize) -> Self {
        if let Some(per_second) = per_second {
            let budget = self.inbound.take().unwrap_or_else(InboundBudget::unlimited);
            self.inbound = Some(budget.with_bytes(per_second, largest));
        }
        self
    }

    /// Whether a message may be handled; answers and counts it when not.
    fn within_budget(
        &mut self,
        size: usize,
        event: &str,
        topic: Option<&str>,
        join_ref: Option<&str>,
        reference: Option<&str>,
    ) -> bool {
        let Some(budget) = &mut self.inbound else { return true };
        match budget.check(size) {
            Verdict::Allowed => true,
            verdict => {
                self.hub.observer().inbound(event, false);
                if verdict == Verdict::Close {
                    tracing::info!(
                        conn = self.socket.conn,
                        "socket over its inbound message budget: closing"
                    );
                    self.socket.outbox.close(Close::RATE_LIMITED);
                } else if reference.is_some() {
                    let reason = Payload::Json(json!({ "reason": "rate limited" }));
                    self.reply(
                        join_ref,
                        reference,
                        topic.unwrap_or(PHOENIX),
                        Status::Error,
                        &reason,
                    );
                }
                false
            }
        }
    }

    pub(crate) async fn handle_text(&mut self, text: &str) {
        let decoded = self.socket.serializer.decode_text(text);
        self.handle_decoded(decoded, text.len()).await
    }

    pub(crate) async fn handle_binary(&mut self, data: Bytes) {
        let size = data.len();
        let decoded = self.socket.serializer.decode_binary(data);
        self.handle_decoded(decoded, size).await
    }

    async fn handle_decoded(&mut self, decoded: Result<Inbound, Malformed>, size: usize) {
        match decoded {
            Ok(msg) => {
                let heartbeat = msg.topic == PHOENIX && msg.event == "heartbeat";
                if !heartbeat
                    && !self.within_budget(
                        size,
                        &msg.event,
                        Some(&msg.topic),
                        msg.join_ref.as_deref(),
                        msg.reference.as_deref(),
                    )
                {
                    return;
                }
                self.hub.observer().inbound(&msg.event, true);
                if msg.event == "phx_join" && size > MAX_JOIN_BYTES {
                    self.error_reply(
                        msg.join_ref.as_deref(),
                        msg.reference.as_deref(),
                        &msg.topic,
                        "join payload too large",
                    );
                    return;
                }
                self.handle(msg).await
            }
            Err(bad) => {
                if self.within_budget(
                    size,
                    "malformed",
                    bad.topic.as_deref(),
                    bad.join_ref.as_deref(),
                    bad.reference.as_deref(),
                ) {
                    self.malformed(bad)
                }
            }
        }
    }

    fn malformed(&self, bad: Malformed) {
        tracing::debug!(conn = self.socket.conn, reason = bad.reason, "malformed frame");
        if bad.reference.is_some() {
            let topic = bad.topic.as_deref().unwrap_or(PHOENIX);
            self.reply(
                bad.join_ref.as_deref(),
                bad.reference.as_deref(),
                topic,
                Status::Error,
                &Payload::Json(json!({
                    "reason": if bad.public { bad.reason } else { "malformed message" }
                })),
            );
        }
    }

    async fn handle(&mut self, msg: Inbound) {
        match (msg.topic.as_str(), msg.event.as_str()) {
            (PHOENIX, "heartbeat") => {
                self.reply(
                    None,
                    msg.reference.as_deref(),
                    PHOENIX,
                    Status::Ok,
                    &Payload::Json(json!({})),
                );
            }
            (_, "phx_join") => self.join(msg).await,
            (_, "phx_leave") => self.leave(msg).await,
            _ => self.event(msg).await,
        }
    }

    async fn join(&mut self, msg: Inbound) {
        let Inbound { join_ref, reference, topic, payload, .. } = msg;
        if let Some(index) = self.find(&topic) {
            tracing::debug!(
                conn = self.socket.conn,
                topic,
                "duplicate join: closing the existing channel first"
            );
            let old = self.channels.swap_remove(index);
            self.close_channel(old, Some(("phx_close", json!({})))).await;
        } else if self.channels.len() >= self.max_channels {
            self.error_reply(
                join_ref.as_deref(),
                reference.as_deref(),
                &topic,
                "too many channels joined",
            );
            return;
        }
        let Some(channel) = self.handler.channel(&topic) else {
            self.error_reply(join_ref.as_deref(), reference.as_deref(), &topic, "unmatched topic");
            return;
        };
        let ctx = ChannelContext::new(
            topic.clone(),
            join_ref.clone(),
            self.assigns.clone(),
            self.socket.clone(),
            self.hub.clone(),
            self.presence.clone(),
        );
        match channel.join(&topic, payload, &ctx).await {
            Ok(response) => {
                self.hub.subscribe(&self.socket, &topic);
                self.channels.push(Joined { channel, ctx: ctx.clone() });
                self.reply(
                    join_ref.as_deref(),
                    reference.as_deref(),
                    &topic,
                    Status::Ok,
                    &Payload::Json(response),
                );
                // After the reply: the presence frames this join asked for, if any.
                ctx.joined();
            }
            Err(response) => {
                ctx.close();
                self.reply(
                    join_ref.as_deref(),
                    reference.as_deref(),
                    &topic,
                    Status::Error,
                    &Payload::Json(response),
                );
            }
        }
    }

    async fn leave(&mut self, msg: Inbound) {
        let Some(index) = self.find(&msg.topic) else {
            // The server may have dropped the channel already; leaving it is still fine.
            self.reply(
                msg.join_ref.as_deref(),
                msg.reference.as_deref(),
                &msg.topic,
                Status::Ok,
                &Payload::Json(json!({})),
            );
            return;
        };
        if self.is_stale(index, &msg) {
            return;
        }
        let joined = self.channels.swap_remove(index);
        self.reply(
            msg.join_ref.as_deref(),
            msg.reference.as_deref(),
            &msg.topic,
            Status::Ok,
            &Payload::Json(json!({})),
        );
        self.close_channel(joined, Some(("phx_close", json!({})))).await;
    }

    async fn event(&mut self, msg: Inbound) {
        let Some(index) = self.find(&msg.topic) else {
            self.error_reply(
                msg.join_ref.as_deref(),
                msg.reference.as_deref(),
                &msg.topic,
                "unmatched topic",
            );
            return;
        };
        if self.is_stale(index, &msg) {
            return;
        }
        let Inbound { join_ref, reference, topic, event, payload } = msg;
        let joined = &self.channels[index];
        let (channel, ctx) = (joined.channel.clone(), joined.ctx.clone());
        match channel.handle_in(&event, payload, &ctx).await {
            HandleIn::Reply(Ok(response)) => {
                self.reply(join_ref.as_deref(), reference.as_deref(), &topic, Status::Ok, &response)
            }
            HandleIn::Reply(Err(response)) => self.reply(
                join_ref.as_deref(),
                reference.as_deref(),
                &topic,
                Status::Error,
                &response,
            ),
            HandleIn::NoReply => {}
            HandleIn::Stop { reason } => {
                tracing::info!(conn = self.socket.conn, topic, reason, "channel stopped");
                if let Some(index) = self.find(&topic) {
                    let joined = self.channels.swap_remove(index);
                    self.close_channel(joined, Some(("phx_error", json!({ "reason": reason }))))
                        .await;
                }
            }
        }
    }

    /// A message carrying the join_ref of an earlier join of the same topic is ignored.
    fn is_stale(&self, index: usize, msg: &Inbound) -> bool {
        let current = self.channels[index].ctx.join_ref();
        let stale = msg.join_ref.is_some() && msg.join_ref.as_deref() != current;
        if stale {
            tracing::debug!(
                conn = self.socket.conn,
                topic = msg.topic,
                event = msg.event,
                "stale join_ref: ignored"
            );
        }
        stale
    }

    fn find(&self, topic: &str) -> Option<usize> {
        self.channels.iter().position(|j| j.ctx.topic() == topic)
    }

    /// Unsubscribe, tell the client (`[jr, jr, topic, event, payload]`) if asked, terminate.
    async fn close_channel(&self, joined: Joined<H::Assigns>, notice: Option<(&str, Value)>) {
        let ctx = &joined.ctx;
        ctx.close();
        self.hub.unsubscribe(&self.socket, ctx.topic());
        if let Some((event, payload)) = notice {
            let jr = ctx.join_ref();
            let frame = self.socket.serializer.encode_json(jr, jr, ctx.topic(), event, &payload);
            self.socket.send(frame);
        }
        joined.channel.terminate(ctx).await;
    }

    /// The socket is gone: terminate every channel.
    pub(crate) async fn terminate_all(&mut self) {
        for joined in std::mem::take(&mut self.channels) {
            self.close_channel(joined, None).await;
        }
    }

    fn error_reply(
        &self,
        join_ref: Option<&str>,
        reference: Option<&str>,
        topic: &str,
        reason: &str,
    ) {
        self.reply(
            join_ref,
            reference,
            topic,
            Status::Error,
            &Payload::Json(json!({ "reason": reason })),
        );
    }

    fn reply(
        &self,
        join_ref: Option<&str>,
        reference: Option<&str>,
        topic: &str,
        status: Status,
        response: &Payload,
    ) {
        match self.socket.serializer.encode_reply(join_ref, reference, topic, status, response) {
            Some(frame) => {
                if self.socket.send(frame) {
                    self.hub.observer().outbound("phx_reply", 1);
                }
            }
            None => tracing::warn!(
                conn = self.socket.conn,
                topic,
                "reply not expressible for this client (binary on vsn 1, or header over 255 bytes); dropped"
            ),
        }
    }
}
