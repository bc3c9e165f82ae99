//! A client's reader: the second half of each client thread, after the handshake.
//!
//! The thread blocks in tungstenite's `read()` until the client sends something,
//! turns what arrives into hub events (chat) or replies (echo, errors), and ends
//! when the client goes. It is the only thread that reads this socket, and it never
//! writes the socket itself: tungstenite's own replies (pongs, the answering
//! Close, error frames, echoes) go through [`ClientStream`]'s `Write`, which hands
//! them to the client's [`Outbox`], the single owner of the write side.
//!
//! Leaving is a `Drop` ([`Registration`]), so the hub hears about it whatever ends
//! the reader: a close, a network error, the heartbeat timeout, or a panic.
//!
//! Heartbeat: the hub pings every client each interval; a live client answers with
//! a pong, so a reader that has seen nothing for two intervals (`SO_RCVTIMEO` on
//! this socket) is talking to a peer that is gone. No thread polls for that: the
//! blocked `read` itself times out.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use crate::hub::{Endpoint, Event};
use crate::outbox::{Outbox, SendError};
use crate::places::Place;
use crate::protocol::{self, InputError, Outgoing};

/// How long we wait for the peer's answering Close after sending ours.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The reader's view of the socket, given to tungstenite as its stream.
///
/// Reading is plain blocking `read` on the socket (with a deadline during the
/// handshake). Writing goes to the socket directly only during the handshake, when
/// no other party knows the socket yet; afterwards every byte goes to the outbox,
/// so that the socket has one writer.
pub struct ClientStream {
    socket: Arc<TcpStream>,
    /// Set during the handshake: every read gets only the time that is left.
    handshake_deadline: Option<Instant>,
    /// Set after the handshake: where writes go.
    outbox: Option<Arc<Outbox>>,
}

impl ClientStream {
    /// A stream for the handshake, which must be over by `deadline`.
    pub fn for_handshake(socket: Arc<TcpStream>, deadline: Instant) -> ClientStream {
        ClientStream {
            socket,
            handshake_deadline: Some(deadline),
            outbox: None,
        }
    }

    /// The handshake is done: from now on write through `outbox`, read without a
    /// deadline (the socket's idle timeout applies instead).
    fn attach(&mut self, outbox: Arc<Outbox>) {
        self.handshake_deadline = None;
        self.outbox = Some(outbox);
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(deadline) = self.handshake_deadline {
            // SO_RCVTIMEO limits each read, not their sum: shrink it every time so the
            // whole handshake has one deadline.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "handshake deadline passed",
                ));
            }
            self.socket.set_read_timeout(Some(left))?;
        }
        (&*self.socket).read(buf)
    }
}

/// After the handshake, every call takes all of `buf`, so tungstenite (which runs
/// with a write buffer of 0) hands over exactly one whole frame per call; the
/// outbox relies on that to see a close frame go by.
impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.outbox {
            None => (&*self.socket).write(buf),
            Some(outbox) => match outbox.send_own(buf) {
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

/// The limits a reader applies, the same on both endpoints.
#[derive(Debug, Clone)]
pub struct ReaderSettings {
    /// Largest message in bytes: tungstenite buffers at most this much of a frame
    /// and of a message.
    pub max_message: usize,
    /// What may wait for a slow client, in bytes as [`Outbox`] counts them.
    pub max_backlog: usize,
    /// A client silent this long is dropped (two heartbeat intervals).
    pub idle_timeout: Duration,
    /// How long the writer may go on after the reader has ended.
    pub drain_timeout: Duration,
}

/// A client whose handshake succeeded.
pub struct Connection {
    /// The client's id.
    pub id: u64,
    /// Chat or echo.
    pub endpoint: Endpoint,
    /// The socket, shared with the outbox.
    pub socket: Arc<TcpStream>,
    /// tungstenite's state machine over our stream.
    pub ws: WebSocket<ClientStream>,
}

/// Membership in the hub, undone on drop: the hub hears `Leave` and the socket is
/// shut down once its last bytes are written, however the reader ends.
struct Registration<'a> {
    id: u64,
    hub: &'a Sender<Event>,
    outbox: Arc<Outbox>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let _ = self.hub.send(Event::Leave { id: self.id });
        self.outbox.finish();
    }
}

/// Serves one client until it leaves. Runs on the client's own thread.
///
/// `place` is the client's place: the outbox keeps it, so it is given back only
/// when the last of the client's threads (reader, writer) has let go of the socket.
pub fn serve(mut conn: Connection, place: Place, settings: &ReaderSettings, hub: &Sender<Event>) {
    let outbox = Outbox::new(
        conn.id,
        Arc::clone(&conn.socket),
        settings.max_backlog,
        settings.drain_timeout,
        place,
    );
    conn.ws.get_mut().attach(Arc::clone(&outbox));
    if let Err(e) = conn.socket.set_read_timeout(Some(settings.idle_timeout)) {
        log::warn!(
            "client {}: cannot set a read timeout ({e}): disconnecting",
            conn.id
        );
        outbox.finish();
        return;
    }
    let joined = hub.send(Event::Join {
        id: conn.id,
        outbox: Arc::clone(&outbox),
        endpoint: conn.endpoint,
    });
    if joined.is_err() {
        outbox.finish();
        return;
    }
    let _registration = Registration {
        id: conn.id,
        hub,
        outbox: Arc::clone(&outbox),
    };
    let reason = read_until_closed(&mut conn, &outbox, hub);
    log::info!("client {} disconnected: {reason}", conn.id);
}

/// The read loop. Returns why the client is gone, for the log.
fn read_until_closed(conn: &mut Connection, outbox: &Outbox, hub: &Sender<Event>) -> String {
    loop {
        let message = match conn.ws.read() {
            Ok(message) => message,
            Err(e) => return end_after_error(conn, outbox, e),
        };
        let reply = match (conn.endpoint, message) {
            (Endpoint::Chat, Message::Text(text)) => match protocol::parse_chat(&text) {
                Ok(message) => {
                    let event = Event::Message {
                        from: conn.id,
                        message,
                    };
                    if hub.send(event).is_err() {
                        return "server shutting down".into();
                    }
                    None
                }
                Err(e) => Some(error_frame(&e)),
            },
            (Endpoint::Chat, Message::Binary(_)) => Some(error_frame(&InputError::Binary)),
            (Endpoint::Echo, message @ (Message::Text(_) | Message::Binary(_))) => Some(message),
            (_, Message::Close(_)) => {
                // tungstenite queues the answering Close and sends it at the next
                // read; the hub must send nothing after it.
                outbox.stop_broadcasts();
                None
            }
            // Pings are answered by tungstenite itself; pongs only prove liveness,
            // which the read returning already did.
            (_, Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => None,
        };
        if let Some(reply) = reply
            && let Err(e) = conn.ws.send(reply)
        {
            return end_after_error(conn, outbox, e);
        }
    }
}

fn error_frame(e: &InputError) -> Message {
    Message::text(Outgoing::Error { msg: e.to_string() }.to_json())
}

/// Decides how to end after `read` or `send` failed, closing with the right code
/// where the protocol asks for one.
fn end_after_error(conn: &mut Connection, outbox: &Outbox, error: tungstenite::Error) -> String {
    use tungstenite::Error;
    use tungstenite::error::ProtocolError;
    match error {
        Error::ConnectionClosed | Error::AlreadyClosed => "closed by client".into(),
        Error::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            "silent for two heartbeat intervals".into()
        }
        Error::Io(e) => format!("connection error: {e}"),
        Error::Capacity(e) => {
            close_with(conn, outbox, CloseCode::Size, "message too big");
            // tungstenite cannot read on after a capacity error (it is mid-frame),
            // so the peer's answering Close cannot be parsed: linger instead.
            linger(&conn.socket);
            format!("closed with 1009: {e}")
        }
        Error::Utf8(_) => {
            close_with(conn, outbox, CloseCode::Invalid, "invalid UTF-8");
            await_close(conn);
            "closed with 1007: invalid UTF-8 in a text message".into()
        }
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            "connection dropped without a close".into()
        }
        Error::Protocol(e) => {
            close_with(conn, outbox, CloseCode::Protocol, "protocol error");
            await_close(conn);
            format!("closed with 1002: {e}")
        }
        other => format!("error: {other}"),
    }
}

/// Sends a Close with `code`; nothing from the hub follows it.
fn close_with(conn: &mut Connection, outbox: &Outbox, code: CloseCode, reason: &str) {
    outbox.stop_broadcasts();
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = conn.ws.close(Some(frame));
}

/// Waits, briefly, for the peer's answering Close. Whatever it sends before that is
/// dropped; its Close, an error or the deadline ends the wait.
fn await_close(conn: &mut Connection) {
    let deadline = Instant::now() + CLOSE_WAIT;
    let _ = conn.socket.set_read_timeout(Some(CLOSE_WAIT));
    while Instant::now() < deadline {
        if conn.ws.read().is_err() {
            break;
        }
    }
}

/// Reads and drops raw bytes until the peer closes, goes quiet, or `CLOSE_WAIT`
/// passes. Closing a socket with unread input makes the kernel send a reset, which
/// can destroy our Close frame before the peer reads it; draining first avoids that.
fn linger(socket: &TcpStream) {
    let deadline = Instant::now() + CLOSE_WAIT;
    let _ = socket.set_read_timeout(Some(Duration::from_millis(500)));
    let mut sink = [0u8; 4096];
    while Instant::now() < deadline {
        match (&*socket).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}
