//! The reader's view of a client's socket, given to tungstenite as its stream:
//! during the handshake, this thread's alone (with one deadline, and the head the
//! page port read, if it handed the connection over); after it, reads from the
//! socket (decrypted through the outbox for wss) and every write through the
//! outbox, the socket's one writer.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use rustls::ServerConnection;
use tungstenite::Bytes;

use crate::outbox::{Outbox, SendError};
use crate::tls::{self, Deadline};

/// The reader's view of the socket, given to tungstenite as its stream.
pub struct ClientStream {
    socket: Arc<TcpStream>,
    stage: Stage,
}

/// Where a connection is, as far as its stream goes.
enum Stage {
    /// In its handshake: no other party knows the socket yet, so this thread has it
    /// (and its TLS connection, for wss) to itself, and every read and write gets
    /// only what is left of one deadline. `head` is what reads give first: the
    /// request head the page port read before handing the connection over.
    Handshake {
        deadline: Instant,
        tls: Option<Box<ServerConnection>>,
        head: Vec<u8>,
    },
    /// Past it: reads block (the socket's idle timeout applies), and every write
    /// goes to the outbox, so that the socket has one writer. A wss client's TLS
    /// connection is in the outbox too, and reads are decrypted there; `unread`
    /// holds ciphertext read but not yet taken (rustls takes no more while it holds
    /// plaintext we have not read), empty and unallocated while the client idles.
    /// `spent` is the last large message, kept until tungstenite next asks for
    /// input (see [`renew_after_large_message`]).
    Attached {
        outbox: Arc<Outbox>,
        tls: bool,
        unread: Vec<u8>,
        spent: Option<Bytes>,
    },
}

/// What the stream answers a read with, instead of reading, when tungstenite's
/// read buffer has been grown by a large message and holds nothing now: the reader
/// then replaces the buffer (see [`renew_after_large_message`]).
#[derive(Debug)]
pub(super) struct BufferSpent;

impl fmt::Display for BufferSpent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the read buffer holds nothing and can be given back")
    }
}

impl std::error::Error for BufferSpent {}

/// Ciphertext read from the socket at once, at most: on the reader's stack.
const TLS_READ: usize = 4096;

impl ClientStream {
    /// A stream for the handshake, which must be over by `deadline`; `tls` is the
    /// wss client's connection, its TLS handshake done; `head`, bytes read
    /// already, which reads give first.
    pub fn for_handshake(
        socket: Arc<TcpStream>,
        deadline: Instant,
        tls: Option<Box<ServerConnection>>,
        head: Vec<u8>,
    ) -> ClientStream {
        ClientStream {
            socket,
            stage: Stage::Handshake {
                deadline,
                tls,
                head,
            },
        }
    }

    /// Gives bytes read back to the handshake, which reads them first.
    pub fn read_again(&mut self, bytes: Vec<u8>) {
        if let Stage::Handshake { head, .. } = &mut self.stage {
            debug_assert!(
                head.is_empty(),
                "bytes given back before the last were read"
            );
            *head = bytes;
        }
    }

    /// The handshake is done: from now on write through `outbox`, which owns the
    /// TLS connection if `tls`.
    pub(super) fn attach(&mut self, outbox: Arc<Outbox>, tls: bool) {
        self.stage = Stage::Attached {
            outbox,
            tls,
            unread: Vec::new(),
            spent: None,
        };
    }

    /// Keeps `message`'s bytes (a large one's) until tungstenite next asks for
    /// input, or lets the last one go (`None`).
    pub(super) fn keep_spent(&mut self, message: Option<Bytes>) {
        if let Stage::Attached { spent, .. } = &mut self.stage {
            *spent = message;
        }
    }

    /// Takes a wss client's TLS connection out of the handshake, for its outbox.
    pub(super) fn take_tls(&mut self) -> Option<Box<ServerConnection>> {
        match &mut self.stage {
            Stage::Handshake { tls, .. } => tls.take(),
            Stage::Attached { .. } => None,
        }
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Stage::Attached { spent, .. } = &mut self.stage
            && let Some(message) = spent.take()
            && buf.as_ptr() == message.as_ptr().wrapping_add(message.len())
        {
            // The first read since tungstenite returned the message: its buffer
            // holds what followed the message then, and it reads in just past
            // that. Reading in where the message ended, it holds nothing. (Had
            // anything followed, those bytes would still be in the buffer the
            // message shares, which is alive while we keep the message: no other
            // buffer can begin there.)
            return Err(io::Error::other(BufferSpent));
        }
        match &mut self.stage {
            Stage::Handshake { head, .. } if !head.is_empty() => {
                let n = head.len().min(buf.len());
                buf[..n].copy_from_slice(&head[..n]);
                head.drain(..n);
                Ok(n)
            }
            Stage::Handshake { deadline, tls, .. } => {
                // SO_RCVTIMEO limits each read, not their sum: `Deadline` shrinks it
                // every time so that the whole handshake has one deadline.
                let mut socket = Deadline::new(&self.socket, *deadline);
                match tls {
                    Some(conn) => tls::read(conn, &mut socket, buf),
                    None => socket.read(buf),
                }
            }
            Stage::Attached { tls: false, .. } => read_on(&self.socket, buf),
            Stage::Attached {
                outbox,
                tls: true,
                unread,
                ..
            } => read_decrypted(&self.socket, outbox, unread, buf),
        }
    }
}

/// A read of `socket` that goes on after `EINTR`. Linux ends a blocking read
/// that has a timeout (`SO_RCVTIMEO`, which every reader sets) that way when the
/// process is stopped and continued (Ctrl-Z and `fg`, `kill -STOP` and `-CONT`),
/// with no signal handler involved (signal(7)): nothing the client did, and no
/// reason to drop it.
fn read_on(socket: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match (&*socket).read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            read => return read,
        }
    }
}

/// A wss client's read: plaintext already decrypted comes first, then ciphertext
/// left over from the last read; then a blocking read with no lock held, and a
/// short lock to decrypt what it brought.
///
/// A function of its own, never inlined: its 4 KiB buffer would otherwise be part
/// of every reader's stack frame, and a plain client's parked thread would touch
/// one more page of stack (4 KiB more per idle client, measured).
#[inline(never)]
fn read_decrypted(
    socket: &TcpStream,
    outbox: &Arc<Outbox>,
    unread: &mut Vec<u8>,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut ciphertext = [0u8; TLS_READ];
    let mut fresh = 0;
    loop {
        let opened = if unread.is_empty() {
            let mut input = &ciphertext[..fresh];
            let opened = outbox.open_tls(&mut input, buf)?;
            unread.extend_from_slice(input);
            opened
        } else {
            unread.extend_from_slice(&ciphertext[..fresh]);
            let mut input = &unread[..];
            let opened = outbox.open_tls(&mut input, buf)?;
            let taken = unread.len() - input.len();
            unread.drain(..taken);
            if unread.is_empty() {
                *unread = Vec::new();
            }
            opened
        };
        if let Some(n) = opened {
            return Ok(n);
        }
        fresh = read_on(socket, &mut ciphertext)?;
        if fresh == 0 {
            return Ok(0);
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.stage {
            Stage::Handshake { deadline, tls, .. } => {
                let mut socket = Deadline::new(&self.socket, *deadline);
                match tls {
                    Some(conn) => tls::write_all(conn, &mut socket, buf).map(|()| buf.len()),
                    None => socket.write(buf),
                }
            }
            Stage::Attached { outbox, .. } => match outbox.send_own(buf) {
                // After our Close nothing may be sent: dropping the bytes is the
                // protocol's rule, not an error.
                Ok(()) | Err(SendError::Closed) => Ok(buf.len()),
                Err(SendError::SlowConsumer) => Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "client does not read: disconnected",
                )),
            },
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
