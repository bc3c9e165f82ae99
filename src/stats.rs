//! Counters the rest of the server updates and `GET /stats` reads.
//!
//! Plain atomics: the hub writes them once per batch, the HTTP workers read them
//! whenever asked, and nobody needs a consistent snapshot of all of them at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::reader::Disconnect;

/// Live figures about the server.
pub struct Stats {
    /// When the server started, for the uptime.
    started: Instant,
    /// Chat clients connected now (the hub's registry size).
    clients: AtomicUsize,
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

    /// Counts one batch sent out, holding `messages` chat messages.
    pub fn add_batch(&self, messages: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.messages_relayed.fetch_add(messages, Ordering::Relaxed);
    }

    /// The current figures.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            clients: self.clients.load(Ordering::Relaxed),
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
