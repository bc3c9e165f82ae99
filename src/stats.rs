//! Counters the rest of the server updates and `GET /stats` reads.
//!
//! Plain atomics: the hub writes them once per batch, the HTTP workers read them
//! whenever asked, and nobody needs a consistent snapshot of all of them at once.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use serde::Serialize;

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
}

impl Stats {
    /// Counters at zero, uptime from now.
    pub fn new() -> Stats {
        Stats {
            started: Instant::now(),
            clients: AtomicUsize::new(0),
            messages_relayed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        }
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
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}
