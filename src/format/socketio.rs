//! The Socket.IO format: every frame of the protocol as an event in the main
//! namespace, named by the frame's `type`, with the frame's JSON object as its one
//! argument (`42["message",{"type":"message",…}]`). A socket.io client listens
//! with `socket.on("message", frame => …)`; the object is the one a JSON client
//! gets, so one page of `docs/PROTOCOL.md` serves both. A request emitted with
//! a callback gets its answer as the acknowledgement instead ([`ack`]).
//!
//! A room of another namespace (see [`crate::socketio::room_in`]) is spelled in
//! that namespace, as the socket.io tutorial's rooms page reads it: a message is
//! `chat message` with its text (`42/chat,["chat message","hi"]`), every other
//! frame an event of its type as above.

use crate::protocol::{ClientId, Outgoing};
use crate::socketio::namespace_of;
use crate::socketio::packet::{self, MAIN_NAMESPACE, PacketType};

use super::json;

/// A frame for a client in `room`, as an Engine.IO message holding a Socket.IO
/// event.
pub fn spell(frame: &Outgoing<'_>, room: &str) -> String {
    match (namespace_of(room), frame) {
        (MAIN_NAMESPACE, _) => event(MAIN_NAMESPACE, frame.kind(), &frame.to_json()),
        (namespace, Outgoing::Message { msg, .. }) => event(namespace, "chat message", &text(msg)),
        (namespace, _) => event(namespace, frame.kind(), &frame.to_json()),
    }
}

/// A string as JSON.
fn text(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// A frame as the socket.io tutorial's chat page reads it: a message as its
/// `chat` event (`{from: {name, userid}, msg}`, the sender's id as `userid`), a
/// login as its `login` event with the name; anything else as [`spell`] has it.
pub fn spell_tutorial(frame: &Outgoing<'_>, room: &str) -> String {
    match frame {
        Outgoing::Message {
            from, name, msg, ..
        } => chat_event(*from, name, msg),
        Outgoing::Login { name, .. } => event(MAIN_NAMESPACE, "login", &text(name)),
        other => spell(other, room),
    }
}

fn chat_event(from: ClientId, name: &str, msg: &str) -> String {
    #[derive(serde::Serialize)]
    struct Sender<'a> {
        name: &'a str,
        userid: ClientId,
    }
    #[derive(serde::Serialize)]
    struct Chat<'a> {
        from: Sender<'a>,
        msg: &'a str,
    }
    let chat = Chat {
        from: Sender { name, userid: from },
        msg,
    };
    let chat = serde_json::to_string(&chat).expect("strings and a number serialise");
    event(MAIN_NAMESPACE, "chat", &chat)
}

/// A frame as the acknowledgement of request `ack` of a client in `room`: the
/// frame's JSON object is the callback's one argument (`43<ack>[{…}]`).
pub fn ack(frame: &Outgoing<'_>, ack: u64, room: &str) -> String {
    let payload = packet::ack_payload([frame.to_json().as_str()]);
    packet::encode(PacketType::Ack, namespace_of(room), 0, Some(ack), &payload)
}

/// A history entry of `room` as the event a JSON client's replay would be. None
/// in another namespace: the rooms page's server had no history, and its page
/// could not tell a replay from what is said now.
pub fn replay(json: &str, room: &str) -> Option<String> {
    (namespace_of(room) == MAIN_NAMESPACE)
        .then(|| event(MAIN_NAMESPACE, "message", &json::replay(json)))
}

fn event(namespace: &str, name: &str, json: &str) -> String {
    let payload = packet::event_payload(name, [json]);
    packet::encode(PacketType::Event, namespace, 0, None, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::LOBBY;

    #[test]
    fn a_frame_is_an_event_named_by_its_type_with_the_json_object() {
        let frame = Outgoing::Hello {
            id: ClientId(7),
            name: "Ann",
        };
        assert_eq!(
            spell(&frame, LOBBY),
            r#"42["hello",{"type":"hello","id":7,"name":"Ann"}]"#
        );
        assert!(spell(&Outgoing::Pong, LOBBY).starts_with(r#"42["pong","#));
    }

    /// Message 3 from client 7, `xyz`, saying `hi` in `room`.
    fn message_in(room: &str) -> Outgoing<'_> {
        Outgoing::Message {
            id: 3,
            ts: 1,
            from: ClientId(7),
            name: "xyz",
            msg: "hi",
            room: Some(room),
        }
    }

    #[test]
    fn the_tutorial_page_reads_chat_and_login_events() {
        let message = message_in("lobby");
        assert_eq!(
            spell_tutorial(&message, LOBBY),
            r#"42["chat",{"from":{"name":"xyz","userid":7},"msg":"hi"}]"#
        );
        let login = Outgoing::Login {
            id: ClientId(7),
            name: "xyz",
        };
        assert_eq!(spell_tutorial(&login, LOBBY), r#"42["login","xyz"]"#);
        assert_eq!(
            spell(&login, LOBBY),
            r#"42["login",{"type":"login","id":7,"name":"xyz"}]"#
        );
        assert_eq!(
            spell_tutorial(&Outgoing::Pong, LOBBY),
            spell(&Outgoing::Pong, LOBBY)
        );
    }

    #[test]
    fn an_answer_awaited_is_an_acknowledgement() {
        assert_eq!(ack(&Outgoing::Pong, 12, LOBBY), r#"4312[{"type":"pong"}]"#);
        assert_eq!(
            ack(&Outgoing::Pong, 12, "/chat#r1"),
            r#"43/chat,12[{"type":"pong"}]"#
        );
    }

    #[test]
    fn a_replayed_message_is_marked_as_history() {
        let json = r#"{"type":"message","id":1,"name":"a","msg":"hi"}"#;
        assert_eq!(
            replay(json, LOBBY).unwrap(),
            r#"42["message",{"type":"message","id":1,"name":"a","msg":"hi","history":true}]"#
        );
        assert_eq!(replay(json, "/chat#r1"), None);
    }

    #[test]
    fn in_another_namespace_a_message_is_its_chat_message() {
        let message = message_in("/chat#r1");
        assert_eq!(
            spell(&message, "/chat#r1"),
            r#"42/chat,["chat message","hi"]"#
        );
        assert!(spell(&Outgoing::Pong, "/chat#r1").starts_with(r#"42/chat,["pong",{"#));
    }
}
