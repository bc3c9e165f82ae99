//! Counters the rest of the server updates and `GET /stats` reads.
//!
//! Plain atomics: the hub writes them once per batch, the HTTP workers read them
//! whenever asked, and nobody needs a consistent snapshot of all of them at once.
//! The reasons a client leaves ([`Disconnect`]) live here, with their counters:
//! the readers and outboxes that report them sit above this module.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use serde::Serialize;

/// Live figures about the server.
pub struct Stats {
    /// When the server started, for the uptime.
    started: Instant,
    /// Chat clients connected now (the hub's registry size).
    clients: AtomicUsize,
    /// Chat connections speaking Socket.IO now.
    socket_io: AtomicUsize,
    /// Chat messages relayed since start (each counted once, not per recipient).
    messages_relayed: AtomicU64,
    /// Batches the hub has sent out. Messages relayed per batch shows how much the
    /// hub's batching saves: every batch costs one `send` per client.
    batches: AtomicU64,
    /// Clients gone, by why, indexed like [`Disconnect::ALL`].
    disconnects: [AtomicU64; Disconnect::ALL.len()],
    /// Handshakes that did not become clients, by how they ended.
    handshakes: [AtomicU64; HandshakeEnd::ALL.len()],
}

/// A Socket.IO connection counted in `/stats` until dropped.
pub struct SocketIoConnection<'a>(&'a Stats);

impl Drop for SocketIoConnection<'_> {
    fn drop(&mut self) {
        self.0.socket_io.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a handshake ended that did not become a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeEnd {
    /// Not done within `--handshake-timeout`.
    TimedOut,
    /// Answered with an HTTP error: wrong path, name or origin, or no place.
    Refused,
    /// Not a WebSocket handshake, or the connection failed during it.
    Failed,
}

impl HandshakeEnd {
    const ALL: [HandshakeEnd; 3] = [
        HandshakeEnd::TimedOut,
        HandshakeEnd::Refused,
        HandshakeEnd::Failed,
    ];

    fn key(self) -> &'static str {
        match self {
            HandshakeEnd::TimedOut => "timed_out",
            HandshakeEnd::Refused => "refused",
            HandshakeEnd::Failed => "failed",
        }
    }
}

/// What `GET /stats` returns.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// Chat clients connected now.
    pub clients: usize,
    /// Of the chat's connections, those speaking Socket.IO now (counted in
    /// `clients` too once they have joined the main namespace).
    pub socket_io: usize,
    /// Chat messages relayed since start.
    pub messages_relayed: u64,
    /// Whole seconds since start.
    pub uptime_seconds: u64,
    /// Batches the hub has sent to its clients since start.
    pub batches: u64,
    /// Clients gone since start, by why (`closed`, `silent`, `slow_consumer`, …).
    pub disconnects: BTreeMap<&'static str, u64>,
    /// Handshakes that did not become clients: `timed_out`, `refused`, `failed`.
    pub handshakes: BTreeMap<&'static str, u64>,
}

impl Stats {
    /// Counters at zero, uptime from now.
    pub fn new() -> Stats {
        Stats {
            started: Instant::now(),
            clients: AtomicUsize::new(0),
            socket_io: AtomicUsize::new(0),
            messages_relayed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            disconnects: Default::default(),
            handshakes: Default::default(),
        }
    }

    /// Counts a client gone, for `reason`.
    pub fn count_disconnect(&self, reason: Disconnect) {
        let at = Disconnect::ALL.iter().position(|r| *r == reason);
        if let Some(at) = at {
            self.disconnects[at].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a handshake that did not become a client.
    pub fn count_handshake(&self, end: HandshakeEnd) {
        self.handshakes[end as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Records the number of connected chat clients.
    pub fn set_clients(&self, n: usize) {
        self.clients.store(n, Ordering::Relaxed);
    }

    /// Counts a chat connection speaking Socket.IO for as long as the guard
    /// lives.
    pub fn socket_io_connected(&self) -> SocketIoConnection<'_> {
        self.socket_io.fetch_add(1, Ordering::Relaxed);
        SocketIoConnection(self)
    }

    /// Counts one batch sent out, holding `messages` chat messages.
    pub fn add_batch(&self, messages: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.messages_relayed.fetch_add(messages, Ordering::Relaxed);
    }

    /// The current figures.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            clients: self.clients.load(Ordering::Relaxed),
            socket_io: self.socket_io.load(Ordering::Relaxed),
            messages_relayed: self.messages_relayed.load(Ordering::Relaxed),
            uptime_seconds: self.started.elapsed().as_secs(),
            batches: self.batches.load(Ordering::Relaxed),
            disconnects: Disconnect::ALL
                .iter()
                .zip(&self.disconnects)
                .map(|(reason, n)| (reason.key(), n.load(Ordering::Relaxed)))
                .collect(),
            handshakes: HandshakeEnd::ALL
                .iter()
                .zip(&self.handshakes)
                .map(|(end, n)| (end.key(), n.load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

/// Why a client left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// The close handshake: the client's Close, answered.
    Closed,
    /// Nothing heard for two heartbeat intervals.
    Silent,
    /// The connection ended without a close handshake.
    Dropped,
    /// A network error.
    Failed,
    /// A message over `--max-message`: closed with 1009.
    TooBig,
    /// Invalid UTF-8 in a text message: closed with 1007.
    InvalidUtf8,
    /// A WebSocket protocol error: closed with 1002.
    ProtocolError,
    /// It did not read as fast as the chat talks: its outbox cut it off with 1008.
    SlowConsumer,
    /// A write to it timed out or failed, and its outbox closed it.
    WriteFailed,
    /// The server is stopping.
    ServerStopping,
    /// An admin kicked it: closed with 4001.
    Kicked,
    /// Too many frames over its rate in a row: closed with 1008.
    Flooding,
}

impl Disconnect {
    /// Every reason, in the order `/stats` lists them.
    pub const ALL: [Disconnect; 12] = [
        Disconnect::Closed,
        Disconnect::Silent,
        Disconnect::Dropped,
        Disconnect::Failed,
        Disconnect::TooBig,
        Disconnect::InvalidUtf8,
        Disconnect::ProtocolError,
        Disconnect::SlowConsumer,
        Disconnect::WriteFailed,
        Disconnect::ServerStopping,
        Disconnect::Kicked,
        Disconnect::Flooding,
    ];

    /// Its name in `/stats`.
    pub fn key(self) -> &'static str {
        match self {
            Disconnect::Closed => "closed",
            Disconnect::Silent => "silent",
            Disconnect::Dropped => "dropped",
            Disconnect::Failed => "failed",
            Disconnect::TooBig => "too_big",
            Disconnect::InvalidUtf8 => "invalid_utf8",
            Disconnect::ProtocolError => "protocol_error",
            Disconnect::SlowConsumer => "slow_consumer",
            Disconnect::WriteFailed => "write_failed",
            Disconnect::ServerStopping => "server_stopping",
            Disconnect::Kicked => "kicked",
            Disconnect::Flooding => "flooding",
        }
    }
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Disconnect::Closed => "closed by client",
            Disconnect::Silent => "silent for two heartbeat intervals",
            Disconnect::Dropped => "connection dropped without a close",
            Disconnect::Failed => "connection error",
            Disconnect::TooBig => "closed with 1009: message too big",
            Disconnect::InvalidUtf8 => "closed with 1007: invalid UTF-8 in a text message",
            Disconnect::ProtocolError => "closed with 1002: protocol error",
            Disconnect::SlowConsumer => "cut off with 1008: does not read as fast as the chat",
            Disconnect::WriteFailed => "a write to it timed out or failed",
            Disconnect::ServerStopping => "server stopping",
            Disconnect::Kicked => "kicked by an admin (4001)",
            Disconnect::Flooding => "closed with 1008: flooding",
        })
    }
}
