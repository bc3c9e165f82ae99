//! The naive chat server: the first design `src/outbox/mod.rs` argues against, kept as a
//! lesson and as the `(naive)` rows of `make bench`. Read it as the contrast to
//! `src/hub/mod.rs` and `src/outbox/mod.rs`.
//!
//! It is how a first chat server is usually written:
//!
//! * one thread per client, which reads with tungstenite;
//! * one global `Mutex<Vec<Peer>>` holding every client's write side: a second
//!   `WebSocket` over a `try_clone` of the same socket;
//! * on each message the reader locks that list and writes the frame to every
//!   client in turn, with blocking writes, dropping the ones whose write fails.
//!
//! It speaks protocol v1 with threadchat's own `protocol` module (welcome, join and
//! leave notifications, messages with one increasing id), so the load generator
//! drives both the same way; only the threads differ. Why it breaks:
//!
//! * **One slow client stalls everybody.** A blocking write to a client that does
//!   not read waits until that client's kernel buffer drains: a slow reader makes
//!   it slow, a stalled one makes it wait for ever. The lock is held all the while,
//!   so every other sender, every join and every leave waits behind it: the chat
//!   runs at the pace of its slowest reader, and one stalled client freezes it.
//!   threadchat's hub never blocks: an outbox takes what the kernel takes at once
//!   (`MSG_DONTWAIT`) and leaves the rest to that client's own writer thread, with
//!   a cap on the backlog (close 1008) and a deadline.
//! * **Two writers on one socket.** tungstenite answers a ping with a pong (and a
//!   close with a close) from the reader's `WebSocket`, and the error reply below
//!   is written there too, while another thread may be writing a broadcast on the
//!   clone: the bytes of two frames can interleave. In threadchat each socket is
//!   written only through its outbox, by one party at a time.
//! * **Every message costs one blocking write per client, one after the other,
//!   under the lock.** The hub encodes a batch of messages once and delivers it to
//!   each client with one `send`.
//!
//! Nothing is bounded either: no cap on clients, no heartbeat, no deadlines.
//!
//! `cargo run --example naive -- --ws-port 8001`, then any WebSocket client on
//! `ws://127.0.0.1:8001/` (there is no page). Other `--flag value` pairs that
//! threadchat takes (`--http-port`, `--max-clients`...) are accepted and ignored.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use threadchat::protocol::{ClientId, Outgoing, Presence, SUBPROTOCOL, parse_chat};
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

/// One client's write side.
struct Peer {
    id: ClientId,
    ws: WebSocket<TcpStream>,
}

/// Everyone connected, in join order. Every broadcast is written with it locked.
static PEERS: Mutex<Vec<Peer>> = Mutex::new(Vec::new());
/// Connection ids.
static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);
/// Message ids, taken with `PEERS` locked so that they follow the one order.
static NEXT_MESSAGE: AtomicU64 = AtomicU64::new(1);

fn main() {
    let (mut bind, mut port) = ("127.0.0.1".to_string(), 8001);
    let mut args = std::env::args().skip(1);
    while let (Some(flag), Some(value)) = (args.next(), args.next()) {
        match flag.as_str() {
            "--bind" => bind = value,
            "--ws-port" => port = value.parse().expect("--ws-port takes a port number"),
            _ => {} // a threadchat flag this server does not have
        }
    }
    let listener = TcpListener::bind((bind.as_str(), port)).expect("cannot listen");
    eprintln!("naive: ws://{}/", listener.local_addr().expect("bound"));
    for stream in listener.incoming().flatten() {
        thread::spawn(move || serve(stream));
    }
}

/// A client's thread: join, relay its messages, leave.
fn serve(stream: TcpStream) {
    let Ok(write_side) = stream.try_clone() else {
        return;
    };
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    let id = ClientId(NEXT_CLIENT.fetch_add(1, Ordering::Relaxed));
    {
        let mut peers = PEERS.lock().unwrap();
        let mut me = WebSocket::from_raw_socket(write_side, Role::Server, None);
        let count = peers.len() + 1;
        let welcome = Outgoing::Welcome {
            id,
            count,
            protocol: SUBPROTOCOL,
            room: None,
            epoch: None,
        };
        if me.send(Message::text(welcome.to_json())).is_err() {
            return;
        }
        peers.push(Peer { id, ws: me });
        broadcast(&mut peers, Outgoing::presence(Presence::Join, 1, count));
    }
    while let Ok(message) = ws.read() {
        let Message::Text(text) = message else {
            continue; // pings were answered inside read(), on this socket
        };
        match parse_chat(&text) {
            Ok(chat) => {
                let mut peers = PEERS.lock().unwrap();
                let message = Outgoing::Message {
                    id: NEXT_MESSAGE.fetch_add(1, Ordering::Relaxed),
                    ts: now_ms(),
                    from: id,
                    name: &chat.name,
                    msg: &chat.msg,
                    room: None,
                };
                broadcast(&mut peers, message);
            }
            Err(why) => {
                // Not under the lock: a second writer on this socket (see above).
                let error = Outgoing::Error {
                    msg: why.to_string(),
                };
                let _ = ws.send(Message::text(error.to_json()));
            }
        }
    }
    let mut peers = PEERS.lock().unwrap();
    peers.retain(|peer| peer.id != id);
    let count = peers.len();
    broadcast(&mut peers, Outgoing::presence(Presence::Leave, 1, count));
}

/// Writes one frame to every client in turn, each write blocking until that
/// client's socket takes it; drops (and shuts) the clients whose write fails.
fn broadcast(peers: &mut Vec<Peer>, frame: Outgoing) {
    let message = Message::text(frame.to_json());
    peers.retain_mut(|peer| {
        let sent = peer.ws.send(message.clone()).is_ok();
        if !sent {
            let _ = peer.ws.get_ref().shutdown(Shutdown::Both); // ends its reader too
        }
        sent
    });
}

fn now_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH);
    since_epoch.map_or(0, |d| d.as_millis() as u64)
}
