//! threadchat: a WebSocket chat server written the plain way, with blocking I/O and
//! one OS thread per connection.
//!
//! The README's first screen has the picture of the threads and the channels
//! between them, and a table of where to read each idea; `docs/DESIGN.md` has the
//! capacity plan and the limits. In one paragraph: an acceptor thread per port
//! gives every connection a place (`places`) and a thread of its own; a chat
//! client's thread (`reader`) turns what it reads into events for the hub
//! (`hub`), the one thread that owns the list of clients and decides who gets
//! what, in which order; the hub hands each batch of frames to every client's
//! outbox (`outbox`), which writes it straight to the socket when the kernel
//! takes it and starts a writer thread for that client when it does not.
//!
//! # Entry points
//!
//! * [`run`] serves on listeners the caller bound, until a [`Control::Stop`] (or
//!   until every sender of the control channel is gone). It has no process-wide
//!   side effects: tests start it in-process on port 0, several at once.
//! * [`run_until_signalled`] is what `main` calls. It binds the configured ports,
//!   sets the process's open-files limit to the capacity plan, and turns SIGINT and
//!   SIGTERM into a stop and SIGHUP into a status line.
//! * [`check`] is `--check-config`.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | flags and environment, every limit with its reason |
//! | [`logging`] | log lines: human, or JSON for journald; client text escaped and cut; lines a client can cause, limited per kind |
//! | `capacity` | thread, descriptor and memory ceilings; how many of each connection fit |
//! | `places` | the ledger of places: in all and per address |
//! | `budget` | what one address may send and make the server send, across its connections |
//! | `accept` | both ports' acceptor threads: a place, then a thread per connection |
//! | `hosts` | which `Host` names we answer to (DNS rebinding) |
//! | `http` | a page connection: bounded heads, deadlines, routes |
//! | `assets` | the page's files: compiled in, or a folder; Content-Type, ETag |
//! | [`static_files`] | request path → file under `www/`, and nothing outside it |
//! | `handshake` | a chat-port connection's handshake: path, name, origin, place |
//! | `reader` | a client's thread after the handshake: read loop → hub events (a Socket.IO client's in `reader/socketio.rs`) |
//! | `event` | what the threads tell the hub, and the hub the cluster's threads: the types both ends of a channel use |
//! | `hub` | the fan-out thread: who is where, ids, one order, batches (a folder: its `mod.rs` is the loop) |
//! | [`format`] | how a frame is spelled for each kind of client: JSON, plain text, Socket.IO events |
//! | `socketio` | Engine.IO 4 and Socket.IO 5 packets, a connection's session (heartbeat, namespaces, attachments), the conformance fixture; no I/O |
//! | `outbox` | the write path: write-through, backlog, the writer thread |
//! | `frame` | server frames as bytes, encoded once |
//! | `tls` | https and wss: one rustls configuration; a TLS connection shared by two threads |
//! | [`protocol`] | the protocol's frames, ids and validation; no I/O |
//! | `stats` | counters for `/stats` |
//! | `server` | `run` in its steps: the plan, the cluster, the hub, the chat port, the page port, the stop |
//! | `shutdown` | signals → stop; the stop → close 1001 → return |
//! | `cluster` | several nodes as one chat: the bridge to Redis (`--redis`) |
//!
//! Only what another crate uses is public: the entry points, the configuration and
//! logging (for `main`), and the protocol parser, the plain-text format and the
//! path resolver (for the fuzz targets, the property tests and `examples/naive.rs`).

#![deny(missing_docs)]

mod accept;
mod assets;
mod backoff;
mod budget;
mod capacity;
mod cluster;
pub mod config;
mod event;
pub mod format;
mod frame;
mod handshake;
mod hosts;
mod http;
mod hub;
pub mod logging;
mod outbox;
mod places;
pub mod protocol;
mod reader;
mod server;
mod shutdown;
mod socketio;
pub mod static_files;
mod stats;
mod tls;

use std::sync::{Mutex, MutexGuard};

pub use crate::server::{Listeners, check, run, run_until_signalled};
pub use crate::shutdown::Control;

/// Locks `mutex` even if a thread panicked while holding it. Every mutex here
/// guards plain counters and queues that each update leaves whole, so a panic
/// elsewhere (a bug) must not take every other client down with it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether a read or write ended at its timeout (`SO_RCVTIMEO` and `SO_SNDTIMEO`
/// say `WouldBlock` on Linux, `TimedOut` elsewhere).
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Compares two secrets in time that depends only on their lengths, so that how
/// long a wrong guess takes to be refused says nothing about how much of it was
/// right. The page's `/stats` uses it too.
fn same_secret(expected: &[u8], given: &[u8]) -> bool {
    if expected.len() != given.len() {
        return false;
    }
    expected
        .iter()
        .zip(given)
        .fold(0u8, |differ, (a, b)| differ | (a ^ b))
        == 0
}
