//! Engine.IO 4 and Socket.IO 5 packets as text, both ways. No I/O.
//!
//! Over a WebSocket, Engine.IO is one packet per frame: a text frame starts with
//! its type digit (`1` close, `2` ping, `3` pong, `4` message, `6` noop), and a
//! binary frame is a message whose data is bytes. A Socket.IO packet rides in an
//! Engine.IO message, written as socket.io-parser writes it:
//!
//! ```text
//! <type>[<attachments>-][<namespace>,][<ack id>][<JSON payload>]
//! 2     /chat,           12           ["chat message","hi"]
//! ```
//!
//! and read the way it reads it, with the same checks: a type digit, a count
//! before `-` for the binary types, a namespace that starts with `/`, an ack id
//! of digits, and a payload of the shape its type needs (an object to CONNECT, an
//! array with an event name to EVENT, an array to ACK, nothing to DISCONNECT).
//! Anything else is [`Malformed`], and the spec closes the connection for it.

use std::fmt;

use serde_json::value::RawValue;

/// The namespace a client is in unless it names another.
pub const MAIN_NAMESPACE: &str = "/";

/// The most binary attachments one packet may announce (socket.io-parser's own
/// default): each is a frame the reader must collect before the packet is whole.
pub const MAX_ATTACHMENTS: usize = 10;

/// Event names the protocol keeps for itself: a client may not emit them.
const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// An Engine.IO packet from the client, in a text frame.
#[derive(Debug, PartialEq, Eq)]
pub enum EnginePacket<'a> {
    /// `1`: the client is going.
    Close,
    /// `3`: the answer to our ping.
    Pong,
    /// `4…`: a Socket.IO packet.
    Message(&'a str),
    /// `6`: nothing.
    Noop,
}

impl EnginePacket<'_> {
    /// Reads a text frame. An open or an upgrade from the client, or a ping (the
    /// server pings in Engine.IO 4), is malformed, as is any other type.
    pub fn decode(text: &str) -> Result<EnginePacket<'_>, Malformed> {
        let mut chars = text.chars();
        match chars.next() {
            Some('1') => Ok(EnginePacket::Close),
            Some('3') => Ok(EnginePacket::Pong),
            Some('4') => Ok(EnginePacket::Message(chars.as_str())),
            Some('6') => Ok(EnginePacket::Noop),
            Some('2') => Err(Malformed("a ping from the client (the server pings)")),
            _ => Err(Malformed("not an Engine.IO packet type")),
        }
    }
}

/// Socket.IO's packet types, by their digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

impl PacketType {
    fn from_digit(c: char) -> Option<PacketType> {
        Some(match c {
            '0' => PacketType::Connect,
            '1' => PacketType::Disconnect,
            '2' => PacketType::Event,
            '3' => PacketType::Ack,
            '4' => PacketType::ConnectError,
            '5' => PacketType::BinaryEvent,
            '6' => PacketType::BinaryAck,
            _ => return None,
        })
    }

    fn digit(self) -> char {
        match self {
            PacketType::Connect => '0',
            PacketType::Disconnect => '1',
            PacketType::Event => '2',
            PacketType::Ack => '3',
            PacketType::ConnectError => '4',
            PacketType::BinaryEvent => '5',
            PacketType::BinaryAck => '6',
        }
    }

    /// Whether binary attachments follow a packet of this type.
    pub fn is_binary(self) -> bool {
        matches!(self, PacketType::BinaryEvent | PacketType::BinaryAck)
    }
}

/// A Socket.IO packet as read, borrowing the frame's text.
#[derive(Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub kind: PacketType,
    /// `/` unless the packet names another.
    pub namespace: &'a str,
    /// How many binary frames follow (binary types only).
    pub attachments: usize,
    /// The id the sender wants an ACK with.
    pub ack: Option<u64>,
    /// The payload's JSON text, checked for its type's shape.
    pub data: Option<&'a str>,
}

/// Why a packet cannot be read: the spec closes the connection for it. The text
/// is ours, never the client's, so it may be logged and sent as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Malformed {}

impl<'a> Packet<'a> {
    /// Reads a Socket.IO packet: the text of an Engine.IO message.
    pub fn decode(text: &'a str) -> Result<Packet<'a>, Malformed> {
        let kind = text
            .chars()
            .next()
            .and_then(PacketType::from_digit)
            .ok_or(Malformed("unknown packet type"))?;
        let mut rest = &text[1..];
        let mut attachments = 0;
        if kind.is_binary() {
            let (count, after) = rest
                .split_once('-')
                .ok_or(Malformed("illegal attachments"))?;
            attachments = digits(count)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or(Malformed("illegal attachments"))?;
            if attachments > MAX_ATTACHMENTS {
                return Err(Malformed("too many attachments"));
            }
            rest = after;
        }
        let mut namespace = MAIN_NAMESPACE;
        if rest.starts_with('/') {
            let end = rest.find(',').unwrap_or(rest.len());
            namespace = &rest[..end];
            rest = rest.get(end + 1..).unwrap_or("");
        }
        let id_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let ack = match &rest[..id_end] {
            "" => None,
            id => Some(digits(id).ok_or(Malformed("invalid ack id"))?),
        };
        rest = &rest[id_end..];
        let data = if rest.is_empty() {
            None
        } else {
            check_payload(kind, rest)?;
            Some(rest)
        };
        Ok(Packet {
            kind,
            namespace,
            attachments,
            ack,
            data,
        })
    }
}

/// An EVENT's name and its arguments' JSON texts, from its type and payload.
pub fn event_of(kind: PacketType, data: Option<&str>) -> Option<(EventName, Vec<&RawValue>)> {
    if !matches!(kind, PacketType::Event | PacketType::BinaryEvent) {
        return None;
    }
    let mut items: Vec<&RawValue> = serde_json::from_str(data?).ok()?;
    if items.is_empty() {
        return None;
    }
    let name = EventName::read(items.remove(0))?;
    Some((name, items))
}

/// An event's name: a string, or a number (socket.io-parser accepts both).
#[derive(Debug, PartialEq)]
pub enum EventName {
    Text(String),
    Number,
}

impl EventName {
    /// A JSON value as an event's name, if it is one.
    fn read(value: &RawValue) -> Option<EventName> {
        let text = value.get();
        if text.starts_with('"') {
            serde_json::from_str(text).ok().map(EventName::Text)
        } else {
            serde_json::from_str::<f64>(text)
                .ok()
                .map(|_| EventName::Number)
        }
    }
}

/// A number written in ASCII digits that fits JavaScript's safe integers, as an
/// ack id or a count must to mean the same at both ends.
fn digits(text: &str) -> Option<u64> {
    const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|&n| n <= MAX_SAFE_INTEGER)
}

/// Whether `data` is JSON of the shape a packet of `kind` carries.
fn check_payload(kind: PacketType, data: &str) -> Result<(), Malformed> {
    const INVALID: Malformed = Malformed("invalid payload");
    let value: &RawValue = serde_json::from_str(data).map_err(|_| INVALID)?;
    let text = value.get();
    let fits = match kind {
        PacketType::Connect => text.starts_with('{'),
        PacketType::Disconnect => false,
        PacketType::ConnectError => text.starts_with('{') || text.starts_with('"'),
        PacketType::Ack | PacketType::BinaryAck => text.starts_with('['),
        PacketType::Event | PacketType::BinaryEvent => {
            let first = serde_json::from_str::<Vec<&RawValue>>(text)
                .ok()
                .and_then(|items| items.first().copied());
            match first.and_then(EventName::read) {
                Some(EventName::Text(name)) => !RESERVED_EVENTS.contains(&name.as_str()),
                Some(EventName::Number) => true,
                None => false,
            }
        }
    };
    if fits { Ok(()) } else { Err(INVALID) }
}

/// A Socket.IO packet as an Engine.IO message's text (`4…`), ready to send.
/// `data` is JSON already; a binary type's attachments go in frames of their own
/// after it.
pub fn encode(
    kind: PacketType,
    namespace: &str,
    attachments: usize,
    ack: Option<u64>,
    data: &str,
) -> String {
    let mut text = String::with_capacity(8 + namespace.len() + data.len());
    text.push('4');
    text.push(kind.digit());
    if kind.is_binary() {
        text.push_str(&format!("{attachments}-"));
    }
    if namespace != MAIN_NAMESPACE {
        text.push_str(namespace);
        text.push(',');
    }
    if let Some(id) = ack {
        text.push_str(&id.to_string());
    }
    text.push_str(data);
    text
}

/// An event with its arguments (each JSON already) as a packet's payload:
/// `["name",arg,…]`.
pub fn event_payload<'s>(name: &str, args: impl IntoIterator<Item = &'s str>) -> String {
    let name = serde_json::to_string(name).expect("a string serialises");
    let args: Vec<&str> = args.into_iter().collect();
    array(std::iter::once(name.as_str()).chain(args))
}

/// A CONNECT's answer: the namespace's socket id, as `40{"sid":"…"}` says it.
pub fn connected(namespace: &str, sid: &str) -> String {
    #[derive(serde::Serialize)]
    struct Sid<'a> {
        sid: &'a str,
    }
    let data = serde_json::to_string(&Sid { sid }).expect("a string serialises");
    encode(PacketType::Connect, namespace, 0, None, &data)
}

/// A CONNECT refused, with why: `44{"message":"…"}`.
pub fn connect_error(namespace: &str, message: &str) -> String {
    #[derive(serde::Serialize)]
    struct Refused<'a> {
        message: &'a str,
    }
    let data = serde_json::to_string(&Refused { message }).expect("a string serialises");
    encode(PacketType::ConnectError, namespace, 0, None, &data)
}

/// Arguments (each JSON already) as an ACK's payload: `[arg,…]`.
pub fn ack_payload<'s>(args: impl IntoIterator<Item = &'s str>) -> String {
    array(args)
}

/// JSON texts as the JSON array of them.
fn array<'s>(items: impl IntoIterator<Item = &'s str>) -> String {
    let mut text = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(item);
    }
    text.push(']');
    text
}

/// Whether every `{"_placeholder":true,"num":n}` in `data` names one of the
/// packet's `attachments` (socket.io-parser refuses a packet whose placeholders
/// point past them).
pub fn placeholders_fit(data: &str, attachments: usize) -> bool {
    use serde_json::Value;
    fn fits(value: &Value, attachments: usize) -> bool {
        match value {
            Value::Object(map)
                if map.get("_placeholder").and_then(Value::as_bool) == Some(true) =>
            {
                let num = map.get("num").and_then(Value::as_u64);
                num.is_some_and(|n| n < attachments as u64)
            }
            Value::Object(map) => map.values().all(|v| fits(v, attachments)),
            Value::Array(items) => items.iter().all(|v| fits(v, attachments)),
            _ => true,
        }
    }
    serde_json::from_str(data).is_ok_and(|value| fits(&value, attachments))
}
