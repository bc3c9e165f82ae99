//! One Socket.IO connection's state, without I/O: the heartbeat's clock, the
//! namespaces it has joined, and a binary packet waiting for its attachments.
//!
//! The reader feeds it every frame and asks it the time; it answers with what the
//! frame amounted to and when the reader must next wake. Everything the spec
//! closes a connection for is an error here, which is why this is testable
//! without a socket.

use std::time::{Duration, Instant};

use tungstenite::Bytes;

use super::packet::{EnginePacket, Malformed, Packet, PacketType, placeholders_fit};

/// The heartbeat's and the handshake's times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The server pings this long after the last pong (or the open).
    pub ping_interval: Duration,
    /// A ping unanswered this long ends the connection.
    pub ping_timeout: Duration,
    /// A connection that has joined no namespace this long after its open ends.
    pub connect_timeout: Duration,
}

/// A Socket.IO packet read whole: its binary attachments have all arrived.
#[derive(Debug, PartialEq, Eq)]
pub struct Whole {
    pub kind: PacketType,
    pub namespace: String,
    pub ack: Option<u64>,
    pub data: Option<String>,
    pub attachments: Vec<Bytes>,
}

impl Whole {
    fn from_packet(packet: &Packet<'_>) -> Whole {
        Whole {
            kind: packet.kind,
            namespace: packet.namespace.to_owned(),
            ack: packet.ack,
            data: packet.data.map(str::to_owned),
            attachments: Vec::new(),
        }
    }

    /// Bytes held: the packet's text and its attachments so far.
    fn size(&self) -> usize {
        let text = self.namespace.len() + self.data.as_ref().map_or(0, String::len);
        text + self.attachments.iter().map(Bytes::len).sum::<usize>()
    }
}

/// A binary packet whose attachments are still coming.
#[derive(Debug)]
struct Assembling {
    packet: Whole,
    /// How many attachments it announced.
    expected: usize,
}

/// What a frame amounted to.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Nothing to act on: a pong, a noop, an attachment of a packet not yet whole,
    /// or a packet for a namespace the connection is not in (the spec ignores it).
    Nothing,
    /// The client closes the Engine.IO session.
    Close,
    /// A Socket.IO packet, whole.
    Packet(Whole),
}

/// What the clock says the reader must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing yet.
    Nothing,
    /// Send a ping (`2`).
    Ping,
    /// The last ping went unanswered.
    PingTimeout,
    /// No namespace was joined in time.
    NoConnect,
}

/// Where the heartbeat is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heartbeat {
    /// The next ping goes out then.
    PingAt(Instant),
    /// A ping went out; its pong must come by then.
    PongBy(Instant),
}

/// One connection's Socket.IO state.
#[derive(Debug)]
pub struct Session {
    timing: Timing,
    heartbeat: Heartbeat,
    /// Until a namespace is first joined: when the connection gives up waiting.
    connect_by: Option<Instant>,
    /// The namespaces joined, `/` and others.
    joined: Vec<String>,
    /// A binary packet and the attachments that have come so far.
    assembling: Option<Assembling>,
    /// The most bytes a packet and its attachments may hold together.
    max_payload: usize,
}

/// The most namespaces one connection may join: each is a name held for its life.
pub const MAX_NAMESPACES: usize = 8;

impl Session {
    /// A session opened at `now`.
    pub fn new(timing: Timing, max_payload: usize, now: Instant) -> Session {
        Session {
            timing,
            heartbeat: Heartbeat::PingAt(now + timing.ping_interval),
            connect_by: Some(now + timing.connect_timeout),
            joined: Vec::new(),
            assembling: None,
            max_payload,
        }
    }

    /// The Engine.IO open packet's text: the session's id and its times.
    pub fn open_packet(&self, sid: &str) -> String {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Open<'a> {
            sid: &'a str,
            upgrades: [&'a str; 0],
            ping_interval: u64,
            ping_timeout: u64,
            max_payload: usize,
        }
        let open = Open {
            sid,
            upgrades: [],
            ping_interval: self.timing.ping_interval.as_millis() as u64,
            ping_timeout: self.timing.ping_timeout.as_millis() as u64,
            max_payload: self.max_payload,
        };
        serde_json::to_string(&open).expect("plain data serialises")
    }

    /// When the reader must next look at the clock, whatever it reads meanwhile.
    pub fn wake_at(&self) -> Instant {
        let beat = match self.heartbeat {
            Heartbeat::PingAt(at) | Heartbeat::PongBy(at) => at,
        };
        self.connect_by.map_or(beat, |by| by.min(beat))
    }

    /// What is due at `now`. A ping is due only once: the pong's wait starts.
    pub fn due(&mut self, now: Instant) -> Due {
        if self.connect_by.is_some_and(|by| now >= by) {
            return Due::NoConnect;
        }
        match self.heartbeat {
            Heartbeat::PingAt(at) if now >= at => {
                self.heartbeat = Heartbeat::PongBy(now + self.timing.ping_timeout);
                Due::Ping
            }
            Heartbeat::PongBy(by) if now >= by => Due::PingTimeout,
            _ => Due::Nothing,
        }
    }

    /// Reads a text frame.
    pub fn text(&mut self, text: &str, now: Instant) -> Result<Received, Malformed> {
        if self.assembling.is_some() {
            return Err(Malformed("a text frame while a packet's attachments come"));
        }
        let message = match EnginePacket::decode(text)? {
            EnginePacket::Close => return Ok(Received::Close),
            EnginePacket::Noop => return Ok(Received::Nothing),
            EnginePacket::Pong => {
                if let Heartbeat::PongBy(_) = self.heartbeat {
                    self.heartbeat = Heartbeat::PingAt(now + self.timing.ping_interval);
                }
                return Ok(Received::Nothing);
            }
            EnginePacket::Message(message) => message,
        };
        let packet = Packet::decode(message)?;
        if packet.kind.is_binary() {
            if packet
                .data
                .is_some_and(|data| !placeholders_fit(data, packet.attachments))
            {
                return Err(Malformed("illegal attachments"));
            }
            if packet.attachments > 0 {
                self.assembling = Some(Assembling {
                    packet: Whole::from_packet(&packet),
                    expected: packet.attachments,
                });
                return Ok(Received::Nothing);
            }
        }
        Ok(self.arrived(Whole::from_packet(&packet)))
    }

    /// Reads a binary frame: the next attachment of the packet being assembled.
    pub fn binary(&mut self, bytes: Bytes) -> Result<Received, Malformed> {
        let Some(assembling) = self.assembling.as_mut() else {
            return Err(Malformed("a binary frame with no packet to attach it to"));
        };
        assembling.packet.attachments.push(bytes);
        if assembling.packet.size() > self.max_payload {
            return Err(Malformed("a packet and its attachments over maxPayload"));
        }
        if assembling.packet.attachments.len() < assembling.expected {
            return Ok(Received::Nothing);
        }
        let whole = self.assembling.take().expect("checked above").packet;
        Ok(self.arrived(whole))
    }

    /// A whole packet: passed on if its namespace is joined, or if it asks to
    /// join one.
    fn arrived(&self, packet: Whole) -> Received {
        if packet.kind == PacketType::Connect || self.has_joined(&packet.namespace) {
            Received::Packet(packet)
        } else {
            Received::Nothing
        }
    }

    /// Whether the connection is in `namespace`.
    pub fn has_joined(&self, namespace: &str) -> bool {
        self.joined.iter().any(|n| n == namespace)
    }

    /// The connection joins `namespace`; false if it is in too many already.
    pub fn join(&mut self, namespace: &str) -> bool {
        self.connect_by = None;
        if self.has_joined(namespace) {
            return true;
        }
        if self.joined.len() >= MAX_NAMESPACES {
            return false;
        }
        self.joined.push(namespace.to_owned());
        true
    }

    /// The connection leaves `namespace`.
    pub fn leave(&mut self, namespace: &str) {
        self.joined.retain(|n| n != namespace);
    }
}
