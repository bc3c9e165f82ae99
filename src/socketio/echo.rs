//! The conformance fixture (`--echo`): `/socket.io/` on the chat port answers as
//! the reference server of the official socket.io-protocol test suite does, so
//! that the suite can measure this implementation of the protocol apart from the
//! chat. Times are the suite's ([`FIXTURE`]); the namespaces are `/` and
//! `/custom`; on joining one, the client is sent an `auth` event with what it
//! joined with; `message` comes back as `message-back`, and `message-with-ack` is
//! acknowledged, both with the same arguments and attachments.

use std::time::Duration;

use tungstenite::Message;

use super::packet::{self, EventName, MAIN_NAMESPACE, PacketType};
use super::session::{Session, Timing, Whole};

/// The reference server's times.
pub const FIXTURE: Timing = Timing {
    ping_interval: Duration::from_millis(300),
    ping_timeout: Duration::from_millis(200),
    connect_timeout: Duration::from_secs(1),
};

/// The reference server's `maxPayload`: the fixture's, when `--max-message` is
/// at least as large (the suite expects it: `--echo --max-message 1000000`).
pub const FIXTURE_MAX_PAYLOAD: usize = 1_000_000;

/// The namespaces the reference server has.
const NAMESPACES: [&str; 2] = [MAIN_NAMESPACE, "/custom"];

/// How long after its answer to CONNECT the fixture sends the `auth` event.
///
/// The reference server writes a packet only once the one before it is written
/// (engine.io waits for the WebSocket's write callback), so its two packets reach
/// the client in two reads. The suite relies on that: it waits for one message at
/// a time with a listener it adds after the last one fired, and Node's `ws` fires
/// every message of one read at once, so a second packet in the same read is
/// never seen. A few milliseconds apart, the two packets arrive as they do from
/// the reference. This is the fixture's behaviour only; the chat never waits.
pub const AUTH_APART: Duration = Duration::from_millis(20);

/// The fixture's answer to a whole packet: frames to send now, and, on
/// CONNECT, the `auth` event to send [`AUTH_APART`] later.
pub fn answer(session: &mut Session, packet: Whole, sid: &str) -> (Vec<Message>, Option<Message>) {
    let namespace = packet.namespace.as_str();
    let now = match packet.kind {
        PacketType::Connect => return connect(session, &packet, sid),
        PacketType::Disconnect => {
            session.leave(namespace);
            Vec::new()
        }
        PacketType::Event | PacketType::BinaryEvent => {
            let Some((EventName::Text(name), args)) =
                packet::event_of(packet.kind, packet.data.as_deref())
            else {
                return (Vec::new(), None);
            };
            let args: Vec<&str> = args.iter().map(|a| a.get()).collect();
            let (kind, ack, data) = match (name.as_str(), packet.ack) {
                ("message", _) => (
                    packet.kind,
                    None,
                    packet::event_payload("message-back", args),
                ),
                ("message-with-ack", Some(id)) => {
                    let kind = if packet.kind.is_binary() {
                        PacketType::BinaryAck
                    } else {
                        PacketType::Ack
                    };
                    (kind, Some(id), packet::ack_payload(args))
                }
                _ => return (Vec::new(), None),
            };
            let attachments = packet.attachments.len();
            let text = packet::encode(kind, namespace, attachments, ack, &data);
            std::iter::once(Message::text(text))
                .chain(packet.attachments.into_iter().map(Message::Binary))
                .collect()
        }
        PacketType::Ack | PacketType::ConnectError | PacketType::BinaryAck => Vec::new(),
    };
    (now, None)
}

/// CONNECT: joined, with the namespace's sid and then the `auth` event; or
/// refused.
fn connect(session: &mut Session, packet: &Whole, sid: &str) -> (Vec<Message>, Option<Message>) {
    let namespace = packet.namespace.as_str();
    let refuse = |why: &str| {
        (
            vec![Message::text(packet::connect_error(namespace, why))],
            None,
        )
    };
    if !NAMESPACES.contains(&namespace) {
        return refuse("Invalid namespace");
    }
    if !session.join(namespace) {
        return refuse("Too many namespaces");
    }
    let sid = if namespace == MAIN_NAMESPACE {
        sid.to_owned()
    } else {
        format!("{sid}{namespace}")
    };
    let auth = packet::event_payload("auth", [packet.data.as_deref().unwrap_or("{}")]);
    let joined = packet::connected(namespace, &sid);
    let auth = packet::encode(PacketType::Event, namespace, 0, None, &auth);
    (vec![Message::text(joined)], Some(Message::text(auth)))
}
