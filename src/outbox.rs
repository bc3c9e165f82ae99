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
//! A backlog above its byte limit means the client does not read as fast as the
//! chat talks (a slow consumer). That client alone is cut off: the backlog is
//! dropped (except a chunk that may already be half on the wire), a close frame
//! with 1008 is queued behind it, and its reader is woken with `shutdown(Read)`.
//!
//! After a close frame, nothing more may be sent (RFC 6455 §5.5.1). The outbox
//! tracks that with [`Phase`]; the reader moves it forward when the close
//! handshake starts, and the socket is shut down once the last byte is written.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use rustix::net::SendFlags;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::frame;

/// Stack size of a writer thread. It only calls `write`; 64 KiB is ample and keeps
/// a slow client's second thread cheap.
const WRITER_STACK_SIZE: usize = 64 * 1024;

/// A run of bytes to write, shared between every outbox that got the same batch.
#[derive(Clone)]
struct Chunk {
    /// The batch, shared: the hub encodes once and every slow client keeps a
    /// reference instead of a copy.
    bytes: Arc<Vec<u8>>,
    /// Where the unwritten part starts.
    start: usize,
}

impl Chunk {
    fn remaining(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

/// Where the client is in the close handshake, as far as writing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Anything may be sent.
    Open,
    /// The close handshake has started on the reader's side: the reader (through
    /// tungstenite) may still send its close frame and pongs, the hub nothing.
    Closing,
    /// Our close frame is queued: nothing more may be sent.
    Closed,
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
    /// Sum of `remaining()` over `backlog`.
    backlog_bytes: usize,
    /// A writer thread owns the write side of the socket until it finds the
    /// backlog empty. See the module docs.
    writer_running: bool,
    /// What may still be sent.
    phase: Phase,
    /// The reader has finished: shut the socket down once the backlog is written.
    finished: bool,
}

/// The write side of one client connection. Shared (`Arc`) by the hub's registry,
/// the client's reader thread and, while it runs, its writer thread.
pub struct Outbox {
    /// Client id, for thread names and log lines.
    id: u64,
    /// The socket. Reads happen on the reader's own handle to the same socket; this
    /// one is only written and shut down.
    socket: Arc<TcpStream>,
    /// Most bytes the backlog may hold before the client counts as a slow consumer.
    limit: usize,
    state: Mutex<State>,
}

impl Outbox {
    /// An outbox for `socket`, which should have `SO_SNDTIMEO` set so the writer
    /// thread cannot block forever on a peer that stopped reading.
    pub fn new(id: u64, socket: Arc<TcpStream>, limit: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            id,
            socket,
            limit,
            state: Mutex::new(State {
                backlog: VecDeque::new(),
                backlog_bytes: 0,
                writer_running: false,
                phase: Phase::Open,
                finished: false,
            }),
        })
    }

    /// Sends `bytes[start..]`, a batch shared with other clients (the hub's path).
    /// Refused once the close handshake has begun.
    pub fn send_shared(
        self: &Arc<Self>,
        bytes: &Arc<Vec<u8>>,
        start: usize,
    ) -> Result<(), SendError> {
        let state = self.lock();
        if state.phase != Phase::Open {
            return Err(SendError::Closed);
        }
        self.write_or_queue(
            state,
            Chunk {
                bytes: Arc::clone(bytes),
                start,
            },
        )
    }

    /// Sends bytes that tungstenite produced on the reader's thread: pongs, close
    /// frames, error frames, echoes. Allowed until our close frame has gone out.
    pub fn send_own(self: &Arc<Self>, bytes: &[u8]) -> Result<(), SendError> {
        let state = self.lock();
        if state.phase == Phase::Closed {
            return Err(SendError::Closed);
        }
        self.write_or_queue(
            state,
            Chunk {
                bytes: Arc::new(bytes.to_vec()),
                start: 0,
            },
        )
    }

    /// The close handshake has started (the peer sent Close, or the reader is about
    /// to): from now on only the reader's own frames go out.
    pub fn stop_broadcasts(&self) {
        let mut state = self.lock();
        if state.phase == Phase::Open {
            state.phase = Phase::Closing;
        }
    }

    /// Sends a close frame on the server's initiative (shutdown): after it nothing
    /// more is sent, not even the reader's reply to the peer's answering Close.
    pub fn send_close(self: &Arc<Self>, code: CloseCode, reason: &str) {
        let mut state = self.lock();
        if state.phase == Phase::Closed {
            return;
        }
        // Closed before the frame is even written, under the same lock, so nothing
        // can slip in behind it.
        state.phase = Phase::Closed;
        let chunk = Chunk {
            bytes: Arc::new(frame::close(code, reason)),
            start: 0,
        };
        // A close frame may push a backlog over its limit; it goes out regardless.
        let _ = self.write_or_queue_unbounded(state, chunk);
    }

    /// The reader is done with this client: shut the socket down now, or when the
    /// writer thread has written the rest. Wakes nothing; the reader has left.
    pub fn finish(&self) {
        let mut state = self.lock();
        state.phase = Phase::Closed;
        state.finished = true;
        if !state.writer_running {
            drop(state);
            let _ = self.socket.shutdown(Shutdown::Both);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this module; the state is
        // plain data and stays consistent, so keep serving rather than poisoning.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Enforces the backlog bound, then sends or queues. Called with the lock held.
    fn write_or_queue(
        self: &Arc<Self>,
        state: MutexGuard<'_, State>,
        chunk: Chunk,
    ) -> Result<(), SendError> {
        if state.backlog_bytes + chunk.remaining().len() > self.limit {
            self.cut_off_slow_consumer(state);
            return Err(SendError::SlowConsumer);
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
            match rustix::net::send(
                &*self.socket,
                chunk.remaining(),
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            ) {
                Ok(n) if n == chunk.remaining().len() => return Ok(()),
                Ok(n) => chunk.start += n,
                Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    // The peer is gone (reset, broken pipe). The reader sees it too
                    // and reports the leave; nothing more can be sent.
                    log::debug!("client {}: send failed: {e}", self.id);
                    state.phase = Phase::Closed;
                    return Err(SendError::Closed);
                }
            }
        }
        state.backlog_bytes += chunk.remaining().len();
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
        log::warn!(
            "client {}: slow consumer, {} bytes waiting (limit {}): disconnecting",
            self.id,
            state.backlog_bytes,
            self.limit
        );
        // The front chunk may be partly on the wire already (or being written by the
        // writer right now): dropping it would cut a frame in half.
        state.backlog.truncate(1);
        state.backlog_bytes = state.backlog.front().map_or(0, |c| c.remaining().len());
        let close = Chunk {
            bytes: Arc::new(frame::close(CloseCode::Policy, "slow consumer")),
            start: 0,
        };
        state.phase = Phase::Closed;
        state.finished = true;
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
            log::error!(
                "client {}: cannot start a writer thread ({e}): disconnecting",
                self.id
            );
            let mut state = self.lock();
            state.writer_running = false;
            state.backlog.clear();
            state.backlog_bytes = 0;
            state.phase = Phase::Closed;
            drop(state);
            let _ = self.socket.shutdown(Shutdown::Both);
        }
    }

    /// The writer thread: write the backlog front to back, blocking, then end.
    fn run_writer(&self) {
        loop {
            let chunk = {
                let mut state = self.lock();
                match state.backlog.front() {
                    Some(chunk) => chunk.clone(),
                    None => {
                        state.writer_running = false;
                        if state.finished {
                            drop(state);
                            let _ = self.socket.shutdown(Shutdown::Both);
                        }
                        return;
                    }
                }
            };
            // Blocking, without the lock: others append meanwhile, nobody else writes.
            let written = (&*self.socket).write_all(chunk.remaining());
            let mut state = self.lock();
            if let Err(e) = written {
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut {
                    log::warn!("client {}: write timed out: disconnecting", self.id);
                } else {
                    log::debug!("client {}: write failed: {e}", self.id);
                }
                state.backlog.clear();
                state.backlog_bytes = 0;
                state.phase = Phase::Closed;
                state.writer_running = false;
                drop(state);
                let _ = self.socket.shutdown(Shutdown::Both);
                return;
            }
            if let Some(done) = state.backlog.pop_front() {
                state.backlog_bytes -= done.remaining().len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (server, client)
    }

    #[test]
    fn bytes_arrive_in_order_through_write_through_and_the_writer() {
        let (server, mut client) = pair();
        let outbox = Outbox::new(1, Arc::new(server), 64 << 20);
        // Far more than a socket buffer holds, so the writer thread must take over.
        let mut expected = Vec::new();
        for i in 0..2_000u32 {
            let batch: Vec<u8> = (0..1_000).map(|j| ((i * 7 + j) % 251) as u8).collect();
            expected.extend_from_slice(&batch);
            if i % 2 == 0 {
                outbox.send_shared(&Arc::new(batch), 0).unwrap();
            } else {
                outbox.send_own(&batch).unwrap();
            }
        }
        outbox.finish();
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes were reordered or interleaved");
    }

    #[test]
    fn a_backlog_past_its_limit_cuts_the_client_off() {
        let (server, _client_never_reads) = pair();
        let outbox = Outbox::new(2, Arc::new(server), 100_000);
        let batch = Arc::new(vec![0u8; 10_000]);
        let mut result = Ok(());
        for _ in 0..10_000 {
            result = outbox.send_shared(&batch, 0);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SendError::SlowConsumer));
        assert_eq!(outbox.send_shared(&batch, 0), Err(SendError::Closed));
    }

    #[test]
    fn nothing_is_sent_after_close() {
        let (server, mut client) = pair();
        let outbox = Outbox::new(3, Arc::new(server), 1 << 20);
        outbox.send_close(CloseCode::Away, "");
        assert_eq!(outbox.send_own(b"late"), Err(SendError::Closed));
        outbox.finish();
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, frame::close(CloseCode::Away, ""));
    }
}
