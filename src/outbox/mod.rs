//! How bytes reach a client's socket: write-through when the kernel takes them, a
//! backlog and a writer thread of the client's own when it does not.
//!
//! Every client has one [`Outbox`]. Two kinds of party put bytes into it:
//!
//! * the hub, with a batch of broadcast frames ([`Outbox::send_shared`]);
//! * the client's reader thread, through tungstenite: pongs, close replies, error
//!   frames, echoes ([`Outbox::send_own`], reached through `Write` on the reader's
//!   stream).
//!
//! # The designs that do not work
//!
//! * *One lock around the list of sockets, written in turn by whichever reader got
//!   a message, with blocking writes.* The first chat server everyone writes, and
//!   runnable here: `examples/naive.rs`, with its rows in `make bench`. One client
//!   that reads slowly holds the lock for as long as its write blocks, and every
//!   sender in the chat waits behind it; two threads may write one socket at once.
//! * *A mutex around the `WebSocket`.* The reader holds it while blocked in `read`,
//!   so a broadcast waits until that client next sends something.
//! * *Polling with a read timeout.* The reader wakes every few milliseconds to look
//!   for outgoing messages: latency up to the timeout, and thousands of idle wake-ups
//!   per second with thousands of clients.
//! * *A writer thread per client, woken for every frame.* Correct, and it was
//!   measured: every delivery costs a futex wake-up, a context switch and a syscall,
//!   and every idle client costs two threads. 1.2x the Node original's throughput.
//! * *The hub writing each socket with a blocking `write`.* One client that stops
//!   reading fills its kernel buffer and then the hub, and so the whole chat, stops.
//!
//! # The design we use
//!
//! The hub writes through: `send(2)` with `MSG_DONTWAIT` returns at once with
//! however many bytes the kernel took, without putting the socket in non-blocking
//! mode (that flag would be shared with the reader's blocking `read`). In the common
//! case the kernel takes everything, and a batch of many frames costs one syscall
//! per client and no wake-up of anyone. Whatever the kernel does not take goes, in
//! order, to the backlog, and a writer thread is started for this client. It blocks
//! in `write` on the client's behalf (bounded by `SO_SNDTIMEO`) until the backlog is
//! empty, and then ends. An idle client therefore costs one thread, its reader; a
//! slow one costs two while it is slow.
//!
//! # Exactly one writer at any moment
//!
//! Frames from two parties must never interleave on the wire, and frames from one
//! party must never be reordered. Both follow from one rule, enforced by the
//! `state` mutex:
//!
//! * While `writer_running` is false, a sender writes the socket itself, and only
//!   while holding the lock. Two senders therefore cannot write at once, and each
//!   writes a whole frame sequence or leaves its unwritten tail as the first item of
//!   the backlog before unlocking.
//! * While `writer_running` is true, the writer thread is the only party that writes
//!   the socket (it does so without the lock, so a slow client blocks nobody else);
//!   every sender only appends to the backlog. The writer sets `writer_running` back
//!   to false under the lock only when it finds the backlog empty, so nothing can be
//!   appended behind its back and then overtaken by a direct write.
//!
//! # What a backlog costs, and its bound
//!
//! A backlog above its limit means the client does not read as fast as the chat
//! talks (a slow consumer). That client alone is cut off: the backlog is dropped
//! (except a chunk that may already be half on the wire), a close frame with 1008
//! is queued behind it, and its reader is woken with `shutdown(Read)`.
//!
//! The limit counts what the backlog really holds, not just its payload: every
//! chunk is charged [`CHUNK_OVERHEAD`] bytes on top of its unwritten bytes (its
//! slot in the queue, the shared buffer's header, the allocator's rounding). A
//! client that sends a thousand pings and reads nothing would otherwise hold a
//! thousand two-byte pongs at some hundred bytes each while being charged two. The
//! reader's own small frames (pongs, error frames) are also appended to the last
//! chunk when it is theirs, so a flood of them costs what its bytes cost.
//!
//! # The end, and the place
//!
//! After a close frame, nothing more may be sent (RFC 6455 §5.5.1). The outbox
//! tracks that with [`Phase`]; the reader moves it forward when the close
//! handshake starts, and the socket is shut down once the last byte is written,
//! or when the drain deadline passes, whichever is first: a client that reads one
//! byte every few seconds must not keep a writer thread for ever after it left.
//!
//! The outbox holds the client's [`Place`] and gives it back when it is dropped,
//! that is when the last of the hub, the reader and the writer thread has let go
//! of it (a few microseconds before that thread has finished exiting; the
//! capacity plan's spare quarter covers the difference). So the places count
//! threads and sockets that really exist, not clients the hub still lists.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use rustix::net::SendFlags;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::frame;
use crate::logging::{Noisy, limited};
use crate::places::Place;
use crate::protocol::ClientId;
use crate::tls::Session;

/// Stack size of a writer thread. It only calls `write`; 64 KiB is ample and keeps
/// a slow client's second thread cheap.
const WRITER_STACK_SIZE: usize = 64 * 1024;

/// What one chunk in a backlog costs beyond its unwritten bytes: the queue slot
/// (24 bytes), the shared buffer's reference counts and `Vec` header (40), and the
/// allocator's header and rounding (up to 32). Charged per chunk so that many tiny
/// chunks cannot hold far more memory than the limit says.
pub const CHUNK_OVERHEAD: usize = 96;

/// The reader's small frames are appended to the backlog's last chunk while it is
/// the reader's own and smaller than this: a burst of pongs or error frames then
/// costs one chunk, not one each.
const COALESCE_UP_TO: usize = 16 * 1024;

/// The smallest backlog limit under which a client that reads normally is never
/// cut off: room for the largest chunk (a batch or a frame) being written while
/// the next one waits, each with its overhead.
pub fn smallest_useful_backlog(largest_chunk: usize) -> usize {
    2 * (largest_chunk + CHUNK_OVERHEAD)
}

/// A run of bytes to write.
#[derive(Clone)]
struct Chunk {
    /// The bytes. A batch is shared: the hub encodes once and every slow client
    /// keeps a reference instead of a copy.
    bytes: Arc<Vec<u8>>,
    /// Where the unwritten part starts.
    start: usize,
    /// Where it ends (a part of a batch shared with others may end before the
    /// batch does).
    end: usize,
    /// Made by this client's reader (pongs, errors, echoes) rather than the hub:
    /// nobody else holds it, so more of the reader's bytes may be appended.
    own: bool,
    /// TLS records, ready for the wire. A TLS client's chunk is plaintext until
    /// whoever writes it seals it (see [`crate::tls`]); a plain client's is never
    /// sealed and always ready.
    sealed: bool,
}

impl Chunk {
    /// TLS records of this client's own.
    fn records(records: Vec<u8>) -> Chunk {
        Chunk {
            end: records.len(),
            bytes: Arc::new(records),
            start: 0,
            own: true,
            sealed: true,
        }
    }

    fn remaining(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// What this chunk counts against the backlog limit.
    fn cost(&self) -> usize {
        self.remaining().len() + CHUNK_OVERHEAD
    }
}

/// Where the client is in the close handshake, as far as writing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Anything may be sent.
    Open,
    /// The close handshake has started on the reader's side: the reader (through
    /// tungstenite) will send its close frame, and nobody else may send one or
    /// anything else.
    Closing,
    /// Our close frame is queued: nothing more may be sent.
    Closed,
}

/// Why an outbox closed its client, when the client did not close first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The backlog passed its limit.
    SlowConsumer,
    /// A write timed out, or no writer thread could be started.
    WriteFailed,
    /// The server is stopping: its close frame went out ([`Outbox::send_close`]).
    Stopped,
    /// An admin closed it (close 4001).
    Kicked,
}

/// Why a send was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The client is closing or gone; the bytes were dropped.
    Closed,
    /// This send pushed the backlog past its limit: the client was cut off.
    SlowConsumer,
}

struct State {
    /// Bytes the socket has not taken yet, oldest first. Empty whenever
    /// `writer_running` is false.
    backlog: VecDeque<Chunk>,
    /// Sum of `cost()` over `backlog`.
    backlog_cost: usize,
    /// A pong may be in the backlog: further pongs are dropped until it empties.
    pong_waiting: bool,
    /// A writer thread owns the write side of the socket until it finds the
    /// backlog empty. See the module docs.
    writer_running: bool,
    /// What may still be sent.
    phase: Phase,
    /// Set when the reader has finished: shut the socket down once the backlog is
    /// written, and stop writing at this instant even if it is not.
    drain_deadline: Option<Instant>,
    /// Set when the outbox itself closed the client.
    failure: Option<Failure>,
    /// The TLS connection of a wss client, shared with its reader: records are
    /// made under this lock, by whoever writes the socket next.
    tls: Option<Session>,
}

/// The write side of one client connection. Shared (`Arc`) by the hub's registry,
/// the client's reader thread and, while it runs, its writer thread.
pub struct Outbox {
    /// Client id, for thread names and log lines.
    id: ClientId,
    /// The socket. Reads happen on the reader's own handle to the same socket; this
    /// one is only written and shut down.
    socket: Arc<TcpStream>,
    /// Most the backlog may cost before the client counts as a slow consumer.
    limit: usize,
    /// How long writing may go on once the reader has finished.
    drain_timeout: Duration,
    state: Mutex<State>,
    /// The client's place, given back when the outbox is dropped. Declared after
    /// `socket` so that the socket is closed first.
    _place: Place,
}

impl Outbox {
    /// An outbox for `socket`, which should have `SO_SNDTIMEO` set so the writer
    /// thread cannot block for long in one write to a peer that stopped reading.
    pub fn new(
        id: ClientId,
        socket: Arc<TcpStream>,
        limit: usize,
        drain_timeout: Duration,
        place: Place,
        tls: Option<Session>,
    ) -> Arc<Outbox> {
        Arc::new(Outbox {
            id,
            socket,
            limit,
            drain_timeout,
            state: Mutex::new(State {
                backlog: VecDeque::new(),
                backlog_cost: 0,
                pong_waiting: false,
                writer_running: false,
                phase: Phase::Open,
                drain_deadline: None,
                failure: None,
                tls,
            }),
            _place: place,
        })
    }

    /// Sends `bytes[start..]`, a batch shared with other clients (the hub's path).
    /// Refused once the close handshake has begun.
    pub fn send_shared(
        self: &Arc<Self>,
        bytes: &Arc<Vec<u8>>,
        start: usize,
    ) -> Result<(), SendError> {
        self.send_shared_part(bytes, start..bytes.len())
    }

    /// Sends `bytes[part]`: a piece of a shared batch (the client must not get all
    /// of it, its own `except_sender` messages, say).
    pub fn send_shared_part(
        self: &Arc<Self>,
        bytes: &Arc<Vec<u8>>,
        part: std::ops::Range<usize>,
    ) -> Result<(), SendError> {
        let state = self.lock();
        if state.phase != Phase::Open {
            return Err(SendError::Closed);
        }
        let chunk = Chunk {
            bytes: Arc::clone(bytes),
            start: part.start,
            end: part.end,
            own: false,
            sealed: false,
        };
        self.write_or_queue(state, chunk, false)
    }

    /// Sends one frame that tungstenite produced on the reader's thread: a pong, a
    /// close frame, an error frame, an echo. Allowed until our close frame is out.
    ///
    /// tungstenite hands over whole frames, one per call: it runs with a write
    /// buffer of 0 and our `Write` takes every byte it is given (see
    /// [`crate::reader::ClientStream`]). So the first byte tells whether this is a
    /// close frame, after which nothing more may follow.
    pub fn send_own(self: &Arc<Self>, frame: &[u8]) -> Result<(), SendError> {
        let mut state = self.lock();
        if state.phase == Phase::Closed {
            return Err(SendError::Closed);
        }
        let closes = frame::is_close(frame);
        let pong = frame::is_pong(frame);
        if pong && state.pong_waiting {
            // At most one pong per client waits in its backlog, so a client that
            // pings and does not read cannot fill it with answers. RFC 6455 §5.5.3
            // lets an endpoint answer only one of several pings.
            return Ok(());
        }
        // Waiting until written: cleared when it goes through at once, or when
        // the backlog it joins is empty again.
        state.pong_waiting |= pong;
        let coalescable = state.backlog.len() > 1
            && state.backlog.back().is_some_and(|last| {
                last.own
                    && !last.sealed
                    && last.bytes.len() + frame.len() <= COALESCE_UP_TO
                    && Arc::strong_count(&last.bytes) == 1
            });
        if coalescable {
            // Not the front chunk (the only one the writer clones) and nobody else
            // holds it: append instead of queueing one more chunk.
            if state.backlog_cost + frame.len() > self.limit {
                self.cut_off_slow_consumer(state);
                return Err(SendError::SlowConsumer);
            }
            let last = state
                .backlog
                .back_mut()
                .expect("checked: the backlog has 2+ chunks");
            Arc::get_mut(&mut last.bytes)
                .expect("checked: the last chunk's bytes have one owner")
                .extend_from_slice(frame);
            last.end += frame.len();
            state.backlog_cost += frame.len();
            if closes {
                state.phase = Phase::Closed;
            }
            return Ok(());
        }
        let chunk = Chunk {
            end: frame.len(),
            bytes: Arc::new(frame.to_vec()),
            start: 0,
            own: true,
            sealed: false,
        };
        self.write_or_queue(state, chunk, closes)
    }

    /// The close handshake has started (the peer sent Close, or the reader is about
    /// to): from now on only the reader's own frames go out.
    pub fn stop_broadcasts(&self) {
        let mut state = self.lock();
        if state.phase == Phase::Open {
            state.phase = Phase::Closing;
        }
    }

    /// Sends a close frame on the server's initiative (shutdown, a kick), `why`
    /// being what the reader will report: after it nothing more is sent, not even
    /// the reader's reply to the peer's answering Close. Does nothing once the close
    /// handshake has begun: then the reader's own close frame is already out or on
    /// its way, and a second one would be a protocol error.
    pub fn send_close(self: &Arc<Self>, code: CloseCode, reason: &str, why: Failure) {
        let mut state = self.lock();
        if state.phase != Phase::Open {
            return;
        }
        // Closed before the frame is even written, under the same lock, so nothing
        // can slip in behind it.
        state.phase = Phase::Closed;
        state.failure.get_or_insert(why);
        let close = frame::close(code, reason);
        let chunk = Chunk {
            end: close.len(),
            bytes: Arc::new(close),
            start: 0,
            own: false,
            sealed: false,
        };
        // A close frame may push a backlog over its limit; it goes out regardless.
        let _ = self.write_or_queue_unbounded(state, chunk);
    }

    /// [`Outbox::send_close`], then wakes the reader (`shutdown(Read)`), so that a
    /// client that ignores the Close is gone all the same: for a kick.
    pub fn close_and_wake(self: &Arc<Self>, code: CloseCode, reason: &str, why: Failure) {
        self.send_close(code, reason, why);
        let _ = self.socket.shutdown(Shutdown::Read);
    }

    /// The reader is done with this client: shut the socket down now, or when the
    /// writer thread has written the rest, or at the drain deadline.
    pub fn finish(self: &Arc<Self>) {
        let mut state = self.lock();
        state.phase = Phase::Closed;
        self.set_drain_deadline(&mut state);
        if state.writer_running {
            // It shuts the socket down after the backlog (and close_notify, see
            // `seal_next`).
            return;
        }
        let close_notify = state.tls.as_mut().and_then(|tls| {
            tls.close_notify();
            tls.take_records()
        });
        match close_notify {
            Some(records) => {
                // Through the one write path: if the kernel does not take it all, a
                // writer finishes it (by the drain deadline) and shuts down.
                let _ = self.write_or_queue_unbounded(state, Chunk::records(records));
                if self.lock().writer_running {
                    return;
                }
            }
            None => drop(state),
        }
        let _ = self.socket.shutdown(Shutdown::Both);
    }

    /// A TLS client's reader hands over what it read from the socket (`input`) and
    /// gets plaintext back into `buf`: `Some(n)` bytes, 0 being close_notify, or
    /// `None` when more input is needed. Records that reading made the connection
    /// send go out through the same rule as every other write: now if no writer
    /// runs, else the writer sends them before its next chunk.
    pub fn open_tls(
        self: &Arc<Self>,
        input: &mut &[u8],
        buf: &mut [u8],
    ) -> io::Result<Option<usize>> {
        let mut state = self.lock();
        let Some(tls) = &mut state.tls else {
            return Err(io::Error::other("not a TLS client"));
        };
        let opened = tls.open(input, buf);
        if !state.writer_running
            && let Some(records) = state.tls.as_mut().and_then(Session::take_records)
        {
            let _ = self.write_or_queue_unbounded(state, Chunk::records(records));
        }
        opened
    }

    /// Why the outbox closed its client, if it did.
    pub fn failure(&self) -> Option<Failure> {
        self.lock().failure
    }

    /// Unwritten bytes and chunks in the backlog, with their overhead.
    #[cfg(test)]
    fn backlog_cost(&self) -> (usize, usize) {
        let state = self.lock();
        (state.backlog_cost, state.backlog.len())
    }

    fn set_drain_deadline(&self, state: &mut State) {
        if state.drain_deadline.is_none() {
            state.drain_deadline = Some(Instant::now() + self.drain_timeout);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock(&self.state)
    }

    /// Enforces the backlog bound, then sends or queues; a close frame that is
    /// accepted (`closes`) ends what may be sent. Called with the lock held.
    fn write_or_queue(
        self: &Arc<Self>,
        mut state: MutexGuard<'_, State>,
        chunk: Chunk,
        closes: bool,
    ) -> Result<(), SendError> {
        if state.backlog_cost + chunk.cost() > self.limit {
            self.cut_off_slow_consumer(state);
            return Err(SendError::SlowConsumer);
        }
        if closes {
            state.phase = Phase::Closed;
        }
        self.write_or_queue_unbounded(state, chunk)
    }

    /// The one place that decides who writes: this caller, now, without blocking,
    /// if no writer thread owns the socket; otherwise the writer, later, in order.
    /// Called with the lock held; starts the writer thread when it is first needed.
    fn write_or_queue_unbounded(
        self: &Arc<Self>,
        mut state: MutexGuard<'_, State>,
        mut chunk: Chunk,
    ) -> Result<(), SendError> {
        if !state.writer_running {
            // Nobody else may write while we hold the lock and no writer runs: try to
            // hand everything to the kernel now, without blocking.
            if let Some(tls) = &mut state.tls
                && !chunk.sealed
            {
                chunk = Chunk::records(tls.seal(chunk.remaining()));
            }
            match rustix::net::send(
                &*self.socket,
                chunk.remaining(),
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            ) {
                Ok(n) if n == chunk.remaining().len() => {
                    // Nothing is queued, so no pong waits.
                    state.pong_waiting = false;
                    return Ok(());
                }
                // Records sealed for this client alone: keep only what is left of
                // them, which is all the backlog is charged for.
                Ok(n) if chunk.sealed => chunk = Chunk::records(chunk.remaining()[n..].to_vec()),
                Ok(n) => chunk.start += n,
                Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    // The peer is gone (reset, broken pipe). The reader sees it too
                    // and reports the leave; nothing more can be sent (and over TLS
                    // nothing more could be read by the peer: these records' sequence
                    // numbers are spent), so the socket is closed now.
                    log::debug!("client {}: send failed: {e}", self.id);
                    state.phase = Phase::Closed;
                    let _ = self.socket.shutdown(Shutdown::Both);
                    return Err(SendError::Closed);
                }
            }
        }
        state.backlog_cost += chunk.cost();
        state.backlog.push_back(chunk);
        if !state.writer_running {
            state.writer_running = true;
            drop(state);
            self.start_writer();
        }
        Ok(())
    }

    /// Cuts a slow consumer off: keep only what may already be half written, queue
    /// a 1008 close behind it, and wake the reader so the client leaves the chat now
    /// rather than when the writer gives up.
    fn cut_off_slow_consumer(self: &Arc<Self>, mut state: MutexGuard<'_, State>) {
        if state.phase == Phase::Closed {
            return;
        }
        limited!(
            Noisy::SlowConsumer,
            "client {}: slow consumer, {} bytes waiting in {} chunks (limit {}): disconnecting",
            self.id,
            state.backlog_cost,
            state.backlog.len(),
            self.limit
        );
        // The front chunk may be partly on the wire already (or being written by the
        // writer right now): dropping it would cut a frame in half.
        state.backlog.truncate(1);
        state.backlog_cost = state.backlog.front().map_or(0, Chunk::cost);
        let frame = frame::close(CloseCode::Policy, "slow consumer");
        let close = Chunk {
            end: frame.len(),
            bytes: Arc::new(frame),
            start: 0,
            own: false,
            sealed: false,
        };
        state.phase = Phase::Closed;
        state.failure = Some(Failure::SlowConsumer);
        self.set_drain_deadline(&mut state);
        let _ = self.write_or_queue_unbounded(state, close);
        let _ = self.socket.shutdown(Shutdown::Read);
    }

    fn start_writer(self: &Arc<Self>) {
        let outbox = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name(format!("writer-{}", self.id))
            .stack_size(WRITER_STACK_SIZE)
            .spawn(move || outbox.run_writer());
        if let Err(e) = spawned {
            // Out of threads: this client cannot be served without blocking the hub,
            // so it is shed. Its reader wakes up and reports the leave.
            limited!(
                Noisy::NoThread,
                "client {}: cannot start a writer thread ({e}): disconnecting",
                self.id
            );
            self.give_up(self.lock(), Some(Failure::WriteFailed));
        }
    }

    /// The writer thread: write the backlog front to back, blocking, then end.
    fn run_writer(&self) {
        loop {
            let chunk = {
                let mut state = self.lock();
                seal_next(&mut state);
                match state.backlog.front() {
                    Some(chunk) => chunk.clone(),
                    None => {
                        state.writer_running = false;
                        state.pong_waiting = false;
                        if state.drain_deadline.is_some() {
                            drop(state);
                            let _ = self.socket.shutdown(Shutdown::Both);
                        }
                        return;
                    }
                }
            };
            // Blocking, without the lock: others append meanwhile, nobody else writes.
            if let Err(e) = self.write_chunk(chunk.remaining()) {
                let why = match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        limited!(
                            Noisy::SlowConsumer,
                            "client {}: {e}: disconnecting",
                            self.id
                        );
                        Some(Failure::WriteFailed)
                    }
                    // The peer is gone (reset, broken pipe): its reader sees that
                    // too and says why.
                    _ => {
                        log::debug!("client {}: write failed: {e}", self.id);
                        None
                    }
                };
                self.give_up(self.lock(), why);
                return;
            }
            let mut state = self.lock();
            if let Some(done) = state.backlog.pop_front() {
                state.backlog_cost -= done.cost();
            }
        }
    }

    /// Writes `bytes` with blocking writes, each bounded by `SO_SNDTIMEO`, and stops
    /// at the drain deadline once there is one.
    fn write_chunk(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let deadline = self.lock().drain_deadline;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "still writing at the drain deadline",
                ));
            }
            match (&*self.socket).write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(e.kind(), "write timed out"));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Seals the writer's next chunk, if this is a TLS client and it is plaintext; with
/// an empty backlog, takes whatever records the connection made on its own (and
/// close_notify once the reader is done) as a chunk to write. Under the lock.
fn seal_next(state: &mut State) {
    let Some(tls) = &mut state.tls else {
        return;
    };
    match state.backlog.front_mut() {
        Some(front) if !front.sealed => {
            let sealed = Chunk::records(tls.seal(front.remaining()));
            state.backlog_cost = state.backlog_cost - front.cost() + sealed.cost();
            *front = sealed;
        }
        Some(_) => {}
        None => {
            if state.drain_deadline.is_some() {
                tls.close_notify();
            }
            if let Some(records) = tls.take_records() {
                let chunk = Chunk::records(records);
                state.backlog_cost += chunk.cost();
                state.backlog.push_back(chunk);
            }
        }
    }
}

impl Outbox {
    /// Nothing more can be written: drop the backlog and close the socket.
    fn give_up(&self, mut state: MutexGuard<'_, State>, why: Option<Failure>) {
        if let Some(why) = why {
            state.failure.get_or_insert(why);
        }
        state.backlog.clear();
        state.backlog_cost = 0;
        state.phase = Phase::Closed;
        state.writer_running = false;
        drop(state);
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests;
