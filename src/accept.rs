//! The front door of both ports: an acceptor thread per listening socket, which
//! gives every connection a place ([`crate::places`]) and its own named OS thread.
//!
//! Blocking I/O makes each step of a connection a plain line of code; the price is
//! a thread per connection, so this is also where the count is kept within what
//! the machine can carry:
//!
//! * **Before `accept`**, the acceptor waits until a place of its kind is free in
//!   all. While the server is full, new connections wait in the kernel's listen
//!   queue (and are served as places free up) instead of being accepted only to be
//!   turned away. mini-redis does the same with its semaphore.
//! * **After `accept`** it knows the peer's address and takes the place for it. An
//!   address that already holds its share is answered `503` at once, by this
//!   thread, with one non-blocking send and no thread of its own: refusing must
//!   cost the attacker more than it costs us.
//! * A failed thread spawn sheds that one connection. `EMFILE` and friends mean
//!   "full for now": the acceptor sleeps and tries again, doubling the pause up to
//!   a second, and never gives up. (mini-redis gives up after 64 s and ends its
//!   server; on a host nobody watches, that would need a person to restart it.)
//!
//! What the connection's thread then does is the port's business:
//! [`crate::http::serve`] on the page port, [`crate::handshake::serve`] on the
//! chat port.

use std::io;
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rustix::net::{RecvFlags, SendFlags};

use crate::backoff::Backoff;
use crate::logging::{Noisy, limited};
use crate::places::{Kind, Place, Places, Refusal};

/// Stack of a connection thread. Only the pages it touches count towards memory
/// (about 10 KiB for a parked reader), but the reservation is a hard limit:
/// overflowing it aborts the whole process. The test suite passes with 24 KiB in a
/// release build and 40 KiB in a debug build (which uses more stack per call);
/// 64 KiB leaves room for both, and thousands of clients still fit.
pub const CONNECTION_STACK_SIZE: usize = 64 * 1024;

/// Pauses after an `accept` error such as `EMFILE`: 5 ms, doubling up to a second,
/// for as long as the errors last.
const ACCEPT_BACKOFF: Backoff = Backoff::new(Duration::from_millis(5), Duration::from_secs(1));

/// A connection that has a place and a thread of its own.
pub struct Connection {
    /// Unique per port: the chat's client id, or the page connection's number.
    pub id: u64,
    pub stream: TcpStream,
    /// The TCP peer's address (never a header's).
    pub peer: IpAddr,
    /// Its place; the connection gives it back by dropping it.
    pub place: Place,
}

/// What an acceptor needs: which port it serves and what each connection does.
pub struct Door {
    /// The acceptor thread's name (`ws-accept`, `http-accept`).
    pub name: &'static str,
    /// Connection threads are named `<prefix>-<id>`.
    pub prefix: &'static str,
    /// The kind of place a new connection takes.
    pub kind: Kind,
    /// The ledger shared with everyone else.
    pub places: Arc<Places>,
    /// The next connection's id, counting up. In a cluster each node's chat
    /// starts at its own `node << 32`, so ids are unique across nodes; the page
    /// port takes chat ids from the same count for the connections it hands over
    /// to the chat (Socket.IO's).
    pub ids: Arc<AtomicU64>,
}

/// A running acceptor thread.
pub struct Acceptor {
    /// The listening socket, shared with the thread, to wake it from `accept`.
    listener: Arc<TcpListener>,
    stopping: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Acceptor {
    /// Stops accepting: the listening socket refuses new connections from now on,
    /// and the thread ends as soon as it wakes (at once, unless it is pausing after
    /// an `accept` error). Connections already accepted go on until their own end.
    /// Waking a thread blocked on the ledger is the ledger's part
    /// ([`Places::close`]).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        // On Linux a blocked `accept` returns (EINVAL) once its socket is shut down.
        let _ = rustix::net::shutdown(&*self.listener, rustix::net::Shutdown::Both);
    }

    /// Waits for the thread to end, after [`Acceptor::stop`].
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Starts the acceptor thread on `listener`; `serve` runs on each connection's own
/// thread.
pub fn spawn<F>(listener: TcpListener, door: Door, serve: F) -> io::Result<Acceptor>
where
    F: Fn(Connection) + Send + Sync + 'static,
{
    let serve = Arc::new(serve);
    let stopping = Arc::new(AtomicBool::new(false));
    let listener = Arc::new(listener);
    let (own, stop) = (Arc::clone(&listener), Arc::clone(&stopping));
    let thread = thread::Builder::new()
        .name(door.name.into())
        .spawn(move || run(&own, &door, &serve, &stop))?;
    Ok(Acceptor {
        listener,
        stopping,
        thread,
    })
}

fn run<F>(listener: &TcpListener, door: &Door, serve: &Arc<F>, stopping: &AtomicBool)
where
    F: Fn(Connection) + Send + Sync + 'static,
{
    let mut backoff = ACCEPT_BACKOFF;
    loop {
        // As long as it takes: places are given back by connection threads, each of
        // which ends within its own deadlines. False: the server is stopping.
        if !door.places.wait_for_room(door.kind) {
            return;
        }
        let accepted = listener.accept();
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_out_of_resources(&e) => {
                // Retrying at once would spin; clients wait in the listen queue.
                let pause = backoff.pause();
                limited!(
                    Noisy::AcceptFailed,
                    "{}: {e}; retrying in {pause:?}",
                    door.name
                );
                thread::sleep(pause);
                continue;
            }
            Err(e) => {
                log::debug!("{}: {e}", door.name);
                continue;
            }
        };
        backoff.reset();
        let peer = peer.ip();
        let place = match door.places.take(door.kind, peer) {
            Ok(place) => place,
            Err(refusal) => {
                log_refusal(door, peer, &refusal);
                refuse_without_thread(&stream, refusal);
                continue;
            }
        };
        let id = door.ids.fetch_add(1, Ordering::Relaxed);
        let serve = Arc::clone(serve);
        let connection = Connection {
            id,
            stream,
            peer,
            place,
        };
        let spawned = thread::Builder::new()
            .name(format!("{}-{id}", door.prefix))
            .stack_size(CONNECTION_STACK_SIZE)
            .spawn(move || serve(connection));
        if let Err(e) = spawned {
            // The closure, with the socket and the place, is dropped: the
            // connection closes and the place is free again.
            limited!(
                Noisy::NoThread,
                "{}: cannot start a thread for a connection from {peer} ({e}): refused",
                door.name
            );
        }
    }
}

/// Logs a connection refused a place. One host can be refused thousands of
/// times a second, so each kind of line is limited. Past a /64's ceiling the
/// refused address is only the latest of many: the line names those that hold
/// the places (looked up, a walk of every place, only for a line that will be
/// written).
fn log_refusal(door: &Door, peer: IpAddr, refusal: &Refusal) {
    match refusal {
        Refusal::Full(_) => limited!(
            Noisy::Full,
            "{}: connection from {peer} refused: {refusal}",
            door.name
        ),
        Refusal::HostFull(..) => limited!(
            Noisy::AddressFull,
            "{}: connection from {peer} refused: {refusal}",
            door.name
        ),
        Refusal::NetworkFull(kind, _, network) => limited!(
            Noisy::AddressFull,
            "{}: connection from {peer} refused: {refusal}; {}",
            door.name,
            door.places.holders(*kind, *network)
        ),
    }
}

/// Errors after which `accept` will fail again at once unless something is freed.
fn is_out_of_resources(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let code = e.raw_os_error();
    [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
        .iter()
        .any(|errno| code == Some(errno.raw_os_error()))
}

/// Answers `503` without waiting for the request or starting a thread: one
/// non-blocking send, then the socket closes. Both ports speak HTTP first, so the
/// same answer fits both.
fn refuse_without_thread(stream: &TcpStream, refusal: Refusal) {
    let body = format!("{refusal}\n");
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nRetry-After: 5\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = rustix::net::send(
        stream,
        response.as_bytes(),
        SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
    );
    let _ = stream.shutdown(Shutdown::Write);
    // Closing with unread input makes the kernel answer with a reset, which can
    // destroy the 503 before the client reads it: take what has already arrived,
    // without waiting for more.
    let mut sink = [0u8; 4096];
    let _ = rustix::net::recv(stream, &mut sink[..], RecvFlags::DONTWAIT);
}
