//! What each server expects on the wire for the same job: join, hear a broadcast, hear a
//! message addressed to one user. Pure string work, unit tested.

use crate::stats::number_after;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// Tako: Phoenix Channels v2 JSON frames on the `notifications` topic.
    Phoenix,
    /// The floor (`bench floor`): connecting is joining; text frames, no envelope.
    Raw,
    /// Socket.IO 4 (Engine.IO v4 over the websocket transport, no polling upgrade).
    SocketIo,
}

/// What a handshake frame asks of the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Send(String),
    Joined,
    Wait,
    Refused(String),
}

/// A frame received after the join, as the generator counts it.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Broadcast(u64),
    Targeted(u64),
    /// A server ping that needs this answer (Engine.IO "2" → "3").
    Ping(String),
    Other,
}

pub const BROADCAST_MARK: &str = "\"s\":";
pub const TARGETED_MARK: &str = "t=";

impl Proto {
    /// Path and query of the WebSocket URL for user `uid`.
    pub fn path(self, uid: &str) -> String {
        match self {
            Proto::Phoenix => format!("/socket/websocket?vsn=2.0.0&userToken={uid}"),
            Proto::Raw => format!("/?uid={uid}"),
            Proto::SocketIo => "/socket.io/?EIO=4&transport=websocket".to_owned(),
        }
    }

    /// Frames sent as soon as the WebSocket is open.
    pub fn initial(self) -> Vec<String> {
        match self {
            Proto::Phoenix => vec![r#"["1","1","notifications","phx_join",{}]"#.to_owned()],
            Proto::Raw => vec![],
            Proto::SocketIo => vec!["40".to_owned()],
        }
    }

    /// One step of the join handshake, given a frame from the server.
    pub fn handshake(self, text: &str, uid: &str) -> Step {
        match self {
            Proto::Phoenix => {
                if text.starts_with(r#"["1","1","notifications","phx_reply""#) {
                    if text.contains(r#""status":"ok""#) {
                        Step::Joined
                    } else {
                        Step::Refused(text.to_owned())
                    }
                } else {
                    Step::Wait
                }
            }
            Proto::Raw => {
                if text == "j" {
                    Step::Joined
                } else {
                    Step::Wait
                }
            }
            Proto::SocketIo => {
                if text == "2" {
                    Step::Send("3".to_owned())
                } else if text.starts_with("431") {
                    Step::Joined
                } else if text.starts_with("44") {
                    Step::Refused(text.to_owned())
                } else if text.starts_with("40") {
                    // Connected to the namespace: now the join, with ack id 1.
                    Step::Send(format!(r#"421["join",{{"uid":"{uid}"}}]"#))
                } else {
                    Step::Wait
                }
            }
        }
    }

    pub fn classify(self, text: &str) -> Incoming {
        if self == Proto::SocketIo && text == "2" {
            return Incoming::Ping("3".to_owned());
        }
        if let Some(seq) = number_after(text, BROADCAST_MARK) {
            return Incoming::Broadcast(seq);
        }
        if let Some(seq) = number_after(text, TARGETED_MARK) {
            return Incoming::Targeted(seq);
        }
        Incoming::Other
    }

    /// The frame the control connection sends to have broadcast number `seq` fanned out.
    /// `push_ref` is a fresh ref for protocols with replies.
    pub fn broadcast_frame(self, seq: u64, push_ref: u64) -> String {
        match self {
            Proto::Phoenix => {
                format!(r#"["1","{push_ref}","notifications","shout",{{"s":{seq}}}]"#)
            }
            Proto::Raw => format!(r#"b{{"s":{seq}}}"#),
            Proto::SocketIo => format!(r#"42["shout",{{"s":{seq}}}]"#),
        }
    }

    /// The frame the control connection sends to address user `uid`; `None` when the server
    /// only offers that over HTTP (Tako's operators' route).
    pub fn targeted_frame(self, uid: &str, seq: u64) -> Option<String> {
        match self {
            Proto::Phoenix => None,
            Proto::Raw => Some(format!("t{uid} t={seq}")),
            Proto::SocketIo => Some(format!(r#"42["direct",{{"to":"{uid}","m":"t={seq}"}}]"#)),
        }
    }
}

/// The user of index `i`: a fixed UUID, so every server and database agree.
pub fn user_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phoenix_join_and_frames() {
        let uid = user_id(3);
        assert_eq!(uid, "00000000-0000-4000-8000-000000000003");
        assert_eq!(
            Proto::Phoenix.handshake(
                r#"["1","1","notifications","phx_reply",{"status":"ok","response":{}}]"#,
                &uid
            ),
            Step::Joined
        );
        assert!(matches!(
            Proto::Phoenix.handshake(
                r#"["1","1","notifications","phx_reply",{"status":"error","response":{}}]"#,
                &uid
            ),
            Step::Refused(_)
        ));
        assert_eq!(
            Proto::Phoenix.classify(r#"[null,null,"notifications","shout",{"s":17}]"#),
            Incoming::Broadcast(17)
        );
        assert_eq!(
            Proto::Phoenix.classify(r#"["1",null,"notifications","msg",{"message":"t=9","user_id":"00000000-0000-4000-8000-000000000003"}]"#),
            Incoming::Targeted(9)
        );
        assert_eq!(
            Proto::Phoenix
                .classify(r#"["1","4","notifications","phx_reply",{"status":"ok","response":{}}]"#),
            Incoming::Other
        );
        assert_eq!(
            Proto::Phoenix.broadcast_frame(5, 8),
            r#"["1","8","notifications","shout",{"s":5}]"#
        );
        assert_eq!(Proto::Phoenix.targeted_frame(&uid, 1), None);
    }

    #[test]
    fn socketio_handshake_and_frames() {
        let uid = user_id(1);
        assert_eq!(
            Proto::SocketIo.handshake(r#"0{"sid":"abc","pingInterval":25000}"#, &uid),
            Step::Wait
        );
        assert_eq!(
            Proto::SocketIo.handshake(r#"40{"sid":"def"}"#, &uid),
            Step::Send(format!(r#"421["join",{{"uid":"{uid}"}}]"#))
        );
        assert_eq!(Proto::SocketIo.handshake(r#"431["ok"]"#, &uid), Step::Joined);
        assert_eq!(Proto::SocketIo.handshake("2", &uid), Step::Send("3".into()));
        assert_eq!(Proto::SocketIo.classify("2"), Incoming::Ping("3".into()));
        assert_eq!(Proto::SocketIo.classify(r#"42["shout",{"s":3}]"#), Incoming::Broadcast(3));
        assert_eq!(Proto::SocketIo.classify(r#"42["msg","t=12"]"#), Incoming::Targeted(12));
    }

    #[test]
    fn raw_frames() {
        assert_eq!(Proto::Raw.handshake("j", "u"), Step::Joined);
        assert_eq!(Proto::Raw.broadcast_frame(2, 0), r#"b{"s":2}"#);
        assert_eq!(Proto::Raw.classify(r#"{"s":2}"#), Incoming::Broadcast(2));
        assert_eq!(Proto::Raw.targeted_frame("u7", 4).as_deref(), Some("tu7 t=4"));
        assert_eq!(Proto::Raw.classify("t=4"), Incoming::Targeted(4));
    }
}
