//! Wire formats: how a frame is spelled for each kind of client.
//!
//! The hub decides what is sent, to whom and in which order, as [`Outgoing`]
//! values; a format decides how that looks on the wire, one file per format
//! (`json.rs`, `text.rs`, `socketio.rs`). A room's batch is spelled once per format some member
//! of the room reads ([`PerFormat`]) and the same bytes go to all of them. Adding
//! a format is a variant here, its file, and the endpoint that selects it; the
//! hub's core does not change.

pub mod json;
pub mod socketio;
pub mod text;

use std::ops::{Index, IndexMut};

use crate::frame;
use crate::protocol::Outgoing;

/// How a chat client wants its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON objects (the protocol).
    Json,
    /// Lines of plain text (`/text`, the `chatting` subprotocol).
    Text,
    /// Socket.IO events (`/socket.io/`): each frame an event named by its type.
    SocketIo,
    /// Socket.IO events as the socket.io tutorial's chat page reads them, for a
    /// client that has emitted its `login`: messages as `chat`, logins as
    /// `login` with the name; every other frame as [`Format::SocketIo`].
    SocketIoTutorial,
}

/// How many formats there are: the length of a [`PerFormat`].
const FORMATS: usize = 4;

impl Format {
    /// Every format, in the order a [`PerFormat`] holds them.
    pub const ALL: [Format; FORMATS] = [
        Format::Json,
        Format::Text,
        Format::SocketIo,
        Format::SocketIoTutorial,
    ];

    /// Whether clients of this format speak Socket.IO (Engine.IO's framing).
    pub fn is_socket_io(self) -> bool {
        matches!(self, Format::SocketIo | Format::SocketIoTutorial)
    }

    /// `frame`'s text in this format, for a client in `room` (whose name says a
    /// Socket.IO client's namespace).
    pub fn spell(self, frame: &Outgoing<'_>, room: &str) -> String {
        match self {
            Format::Json => json::spell(frame),
            Format::Text => text::spell(frame),
            Format::SocketIo => socketio::spell(frame, room),
            Format::SocketIoTutorial => socketio::spell_tutorial(frame, room),
        }
    }

    /// `frame` as one WebSocket text frame in this format, ready to send.
    pub fn frame(self, frame: &Outgoing<'_>, room: &str) -> Vec<u8> {
        frame::text(&self.spell(frame, room))
    }

    /// `frame`'s text as the answer to a request: the acknowledgement a
    /// Socket.IO client asked for with `ack`, else the frame as always.
    pub fn spell_answer(self, frame: &Outgoing<'_>, ack: Option<u64>, room: &str) -> String {
        match (self, ack) {
            (Format::SocketIo | Format::SocketIoTutorial, Some(ack)) => {
                socketio::ack(frame, ack, room)
            }
            _ => self.spell(frame, room),
        }
    }

    /// [`Format::spell_answer`] as one WebSocket text frame, ready to send.
    pub fn answer(self, frame: &Outgoing<'_>, ack: Option<u64>, room: &str) -> Vec<u8> {
        frame::text(&self.spell_answer(frame, ack, room))
    }

    /// A room's history entry (a message frame's JSON, as the history keeps it)
    /// as this format replays it to a client joining: marked as history in JSON
    /// (and in Socket.IO's event), a person's line in text. `None` for an entry that cannot be read back.
    pub fn replay(self, json: &str, room: &str) -> Option<String> {
        match self {
            Format::Json => Some(json::replay(json)),
            Format::Text => text::replay(json),
            // The tutorial's page had no history: a replay is for clients of the
            // protocol's events.
            Format::SocketIo | Format::SocketIoTutorial => socketio::replay(json, room),
        }
    }
}

/// One value for each format, say a batch's buffer in each, or where a frame
/// lies in each of those.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerFormat<T>([T; FORMATS]);

impl<T> PerFormat<T> {
    /// `make`'s value for each format.
    pub fn from_fn(mut make: impl FnMut(Format) -> T) -> PerFormat<T> {
        PerFormat(Format::ALL.map(&mut make))
    }

    /// Each format's value turned by `turn`.
    pub fn map<U>(self, turn: impl FnMut(T) -> U) -> PerFormat<U> {
        PerFormat(self.0.map(turn))
    }
}

impl<T> Index<Format> for PerFormat<T> {
    type Output = T;

    fn index(&self, format: Format) -> &T {
        &self.0[format as usize]
    }
}

impl<T> IndexMut<Format> for PerFormat<T> {
    fn index_mut(&mut self, format: Format) -> &mut T {
        &mut self.0[format as usize]
    }
}
