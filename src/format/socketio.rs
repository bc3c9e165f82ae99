//! The Socket.IO format: every frame of the protocol as an event in the main
//! namespace, named by the frame's `type`, with the frame's JSON object as its one
//! argument (`42["message",{"type":"message",…}]`). A socket.io client listens
//! with `socket.on("message", frame => …)`; the object is the one a JSON client
//! gets, so one page of `docs/PROTOCOL.md` serves both. A request emitted with
//! a callback gets its answer as the acknowledgement instead ([`ack`]).

use crate::protocol::{ClientId, Outgoing};
use crate::socketio::packet::{self, MAIN_NAMESPACE, PacketType};

use super::json;

/// A frame as an Engine.IO message holding a Socket.IO event.
pub fn spell(frame: &Outgoing<'_>) -> String {
    event(frame.kind(), &frame.to_json())
}

/// A frame as the socket.io tutorial's chat page reads it: a message as its
/// `chat` event (`{from: {name, userid}, msg}`, the sender's id as `userid`), a
/// login as its `login` event with the name; anything else as [`spell`] has it.
pub fn spell_tutorial(frame: &Outgoing<'_>) -> String {
    match frame {
        Outgoing::Message {
            from, name, msg, ..
        } => chat_event(*from, name, msg),
        Outgoing::Login { name, .. } => event(
            "login",
            &serde_json::to_string(name).expect("a string serialises"),
        ),
        other => spell(other),
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
    event(
        "chat",
        &serde_json::to_string(&chat).expect("strings and a number serialise"),
    )
}

/// A frame as the acknowledgement of request `ack`: the frame's JSON object is
/// the callback's one argument (`43<ack>[{…}]`).
pub fn ack(frame: &Outgoing<'_>, ack: u64) -> String {
    let payload = packet::ack_payload([frame.to_json().as_str()]);
    packet::encode(PacketType::Ack, MAIN_NAMESPACE, 0, Some(ack), &payload)
}

/// A history entry as the event a JSON client's replay would be.
pub fn replay(json: &str) -> String {
    event("message", &json::replay(json))
}

fn event(name: &str, json: &str) -> String {
    let payload = packet::event_payload(name, [json]);
    packet::encode(PacketType::Event, MAIN_NAMESPACE, 0, None, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_an_event_named_by_its_type_with_the_json_object() {
        let frame = Outgoing::Hello {
            id: ClientId(7),
            name: "Ann",
        };
        assert_eq!(
            spell(&frame),
            r#"42["hello",{"type":"hello","id":7,"name":"Ann"}]"#
        );
        assert!(spell(&Outgoing::Pong).starts_with(r#"42["pong","#));
    }

    #[test]
    fn the_tutorial_page_reads_chat_and_login_events() {
        let message = Outgoing::Message {
            id: 3,
            ts: 1,
            from: ClientId(7),
            name: "xyz",
            msg: "hi",
            room: Some("lobby"),
        };
        assert_eq!(
            spell_tutorial(&message),
            r#"42["chat",{"from":{"name":"xyz","userid":7},"msg":"hi"}]"#
        );
        let login = Outgoing::Login {
            id: ClientId(7),
            name: "xyz",
        };
        assert_eq!(spell_tutorial(&login), r#"42["login","xyz"]"#);
        assert_eq!(
            spell(&login),
            r#"42["login",{"type":"login","id":7,"name":"xyz"}]"#
        );
        assert_eq!(spell_tutorial(&Outgoing::Pong), spell(&Outgoing::Pong));
    }

    #[test]
    fn an_answer_awaited_is_an_acknowledgement() {
        assert_eq!(ack(&Outgoing::Pong, 12), r#"4312[{"type":"pong"}]"#);
    }

    #[test]
    fn a_replayed_message_is_marked_as_history() {
        let json = r#"{"type":"message","id":1,"name":"a","msg":"hi"}"#;
        assert_eq!(
            replay(json),
            r#"42["message",{"type":"message","id":1,"name":"a","msg":"hi","history":true}]"#
        );
    }
}
