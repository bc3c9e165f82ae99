//! Socket.IO 5 over Engine.IO 4, on a WebSocket: the protocol socket.io's clients
//! speak, as a wire format at the edge (`docs/PROTOCOL.md`, "Socket.IO").
//!
//! Two layers ride on the WebSocket. Engine.IO opens a session (the open packet
//! gives its id and the heartbeat's times), pings from the server, and carries
//! messages; Socket.IO's packets ride in those messages and add namespaces,
//! events, acknowledgements and binary attachments. Only the WebSocket transport
//! is served: HTTP long-polling, and the upgrade from it, would need a session
//! that outlives a connection, which a thread per connection does not have (see
//! [`refusal`]).
//!
//! Nothing here does I/O: [`packet`] reads and writes packets, [`session`] keeps
//! one connection's state (heartbeat, namespaces, attachments), and [`echo`] is the
//! conformance fixture's behaviour. The reader's `socketio` file runs them on a
//! socket.

pub mod echo;
pub mod packet;
pub mod session;

/// The hub's name for `room` of `namespace` (other than the main one): its rooms
/// never mix with the main namespace's, whose names cannot hold `/` or `#`, nor
/// with another's.
pub fn room_in(namespace: &str, room: &str) -> String {
    format!("{namespace}#{room}")
}

/// Whether `room` is a name the hub gives rooms: a room's name (the main
/// namespace's), or a room of another namespace ([`room_in`]). What crosses a
/// cluster is checked against it.
pub fn is_hub_room(room: &str) -> bool {
    match room.split_once('#') {
        Some((namespace, room)) => {
            namespace
                .strip_prefix('/')
                .is_some_and(crate::protocol::is_room)
                && crate::protocol::is_room(room)
        }
        None => crate::protocol::is_room(room),
    }
}

/// The namespace a room of the hub's belongs to: `/` for every room but those of
/// [`room_in`].
pub fn namespace_of(room: &str) -> &str {
    match room.split_once('#') {
        Some((namespace, _)) if namespace.starts_with('/') => namespace,
        _ => packet::MAIN_NAMESPACE,
    }
}

/// The path socket.io's clients use unless told otherwise.
pub const PATH: &str = "/socket.io/";

/// Why a request to [`PATH`] is refused, as Engine.IO says it: its error code and
/// message, in the JSON body socket.io's own server answers with (status 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A transport other than `websocket` (long-polling is not served).
    TransportUnknown,
    /// A `sid`: an upgrade from a long-polling session, which cannot exist here.
    SessionIdUnknown,
    /// A WebSocket transport asked for by a request that is not an upgrade.
    BadRequest,
    /// `EIO` other than 4.
    UnsupportedProtocolVersion,
}

impl Refusal {
    /// The JSON body: `{"code":…,"message":…}`.
    pub fn body(self) -> String {
        let (code, message) = match self {
            Refusal::TransportUnknown => (0, "Transport unknown"),
            Refusal::SessionIdUnknown => (1, "Session ID unknown"),
            Refusal::BadRequest => (3, "Bad request"),
            Refusal::UnsupportedProtocolVersion => (5, "Unsupported protocol version"),
        };
        #[derive(serde::Serialize)]
        struct Body<'a> {
            code: u8,
            message: &'a str,
        }
        serde_json::to_string(&Body { code, message }).expect("plain data serialises")
    }
}

/// Checks a request to [`PATH`] by its query: Engine.IO 4 over WebSocket, with no
/// session to upgrade, in the order socket.io's server checks them. `upgrade`
/// says whether the request asks for a WebSocket.
pub fn refusal(query: &str, upgrade: bool) -> Option<Refusal> {
    let mut eio = None;
    let mut transport = None;
    let mut sid = false;
    for pair in query.split('&') {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("EIO", value) => eio = Some(value),
            ("transport", value) => transport = Some(value),
            ("sid", _) => sid = true,
            _ => {}
        }
    }
    if transport != Some("websocket") {
        Some(Refusal::TransportUnknown)
    } else if sid {
        Some(Refusal::SessionIdUnknown)
    } else if !upgrade {
        Some(Refusal::BadRequest)
    } else if eio != Some("4") {
        Some(Refusal::UnsupportedProtocolVersion)
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
