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
//! the reader: a close, a network error, the heartbeat timeout, or a panic. Why the
//! client left is a value, [`Disconnect`]: the log says it in words and `/stats`
//! counts it.
//!
//! Heartbeat: the hub pings every client each interval; a live client answers with
//! a pong, so a reader that has seen nothing for two intervals (`SO_RCVTIMEO` on
//! this socket) is talking to a peer that is gone. No thread polls for that: the
//! blocked `read` itself times out.
//!
//! A Socket.IO client's reader runs the same way with Engine.IO's framing and
//! heartbeat between the WebSocket and the chat: its loop is in `socketio.rs`.
//! The stream tungstenite reads and writes through is `stream.rs`.

mod socketio;
mod stream;

use stream::BufferSpent;
pub use stream::ClientStream;

use std::io::Read;
use std::net::{IpAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role};
use tungstenite::{Bytes, Message, WebSocket};

use crate::budget::{Allowance, Spent};
use crate::event::{Acked, Arrival, DirectMessage, Endpoint, Event, Join, Said};
use crate::format::Format;
use crate::logging::{Noisy, Untrusted, limited};
use crate::outbox::{Failure, Outbox};
use crate::places::Place;
use crate::protocol::{self, ChatMessage, ClientId, Incoming, InputError, Outgoing};
use crate::stats::{Disconnect, Stats};
use crate::tls::Session;

/// How long we wait for the peer's answering Close after sending ours.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How far the frames dropped for going over the rate may run ahead of the frames
/// accepted before the connection counts as flooding and is closed (1008). A client
/// that merely bursts loses a few frames and gets an error for each; one that keeps
/// sending many times its rate is cut off, even though a token now and then lets a
/// frame of it through.
const FLOOD_LIMIT: u32 = 100;

/// How often a connection is told that its frames are being dropped: once a
/// second at most, so that telling it costs less than its flood.
const TELL_EVERY: Duration = Duration::from_secs(1);

/// How far the read's timeout may be from the one the reader wants before it is
/// set again (see [`next_message`]).
const TIMEOUT_SLACK: Duration = Duration::from_millis(50);

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
    /// Frames a second a client may send (`--rate`), and in a burst (`--burst`).
    pub rate: u32,
    pub burst: u32,
}

/// A client whose handshake succeeded, as its reader holds it.
pub struct Client {
    /// Its id: the `welcome` frame's, and the log's.
    pub id: ClientId,
    pub endpoint: Endpoint,
    pub format: Format,
    /// Its name (`?name=`, then `hello`), filled into messages that have none.
    pub name: Option<String>,
    /// A first room other than the lobby (`?room=`).
    pub room: Option<String>,
    /// Opened with the admin token: may kick.
    pub admin: bool,
    /// The TCP peer's address: budgets and rooms made are counted per address.
    pub address: IpAddr,
    /// Its address's budget, shared with the address's other connections; `None`
    /// when budgets are off, and for echo clients.
    pub allowance: Option<Arc<Allowance>>,
    /// What `welcome` says it speaks.
    pub protocol: &'static str,
    /// The access token a Socket.IO client did not show in its handshake: it
    /// must, as `auth: {token}`, to join the chat.
    pub token_due: Option<String>,
    /// Where chat ids come from: a Socket.IO connection's other namespaces each
    /// take one.
    pub ids: Arc<AtomicU64>,
    /// The socket; the outbox has the same one, to write.
    pub socket: Arc<TcpStream>,
    pub ws: WebSocket<ClientStream>,
}

/// A token bucket: `rate` frames a second on average, `burst` at once.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a connection may send: its own rate (`--rate`, data frames), and what
/// its address has left of its budgets (every frame). A frame over either is
/// dropped, and the connection is closed when its drops run [`FLOOD_LIMIT`]
/// ahead of what it was allowed. It hears of dropped data frames once a second
/// at most, with how many: telling it must cost less than its flood.
struct Limits {
    own: Bucket,
    allowance: Option<Arc<Allowance>>,
    /// Frames dropped, less frames admitted since (never below zero).
    ahead: u32,
    /// Data frames dropped that the connection has not been told of yet.
    untold: Option<Untold>,
    /// When the connection was last told.
    told_at: Option<Instant>,
}

/// Dropped data frames, waiting to be told: how many, and why the last was.
struct Untold {
    why: InputError,
    dropped: u32,
}

/// What becomes of one frame.
enum Verdict {
    /// Handle it.
    Admit,
    /// Drop it (the connection hears of it with the next notice).
    Drop,
    /// It keeps on: close it with 1008.
    Close,
}

impl Limits {
    fn new(settings: &ReaderSettings, allowance: Option<Arc<Allowance>>) -> Limits {
        Limits {
            own: Bucket::new(settings.rate, settings.burst),
            allowance,
            ahead: 0,
            untold: None,
            told_at: None,
        }
    }

    /// Decides a frame of `bytes`; `data` frames also count against the
    /// connection's own rate.
    fn check(&mut self, bytes: usize, data: bool) -> Verdict {
        let refused = if data && !self.own.take() {
            Some(InputError::TooFast {
                rate: self.own.rate as u32,
            })
        } else {
            self.allowance
                .as_ref()
                .and_then(|a| a.admit(bytes).err())
                .map(|spent: Spent| InputError::AddressBusy(spent.what()))
        };
        let Some(why) = refused else {
            self.ahead = self.ahead.saturating_sub(1);
            return Verdict::Admit;
        };
        self.ahead += 1;
        if self.ahead >= FLOOD_LIMIT {
            return Verdict::Close;
        }
        // Pings and pongs dropped are not told: nobody reads a notice for them.
        if data {
            let dropped = self.untold.as_ref().map_or(0, |u| u.dropped) + 1;
            self.untold = Some(Untold { why, dropped });
        }
        Verdict::Drop
    }

    /// The notice of what was dropped, if one is due: something is untold, the
    /// last notice was a second ago or more, and the address can pay for it.
    fn notice_due(&mut self) -> Option<Outgoing<'static>> {
        let now = Instant::now();
        self.untold.as_ref()?;
        if self.wait_for_notice(now) > Duration::ZERO {
            return None;
        }
        if !self.allowance.as_ref().is_none_or(|a| a.can_spend()) {
            // The address cannot pay for it now: a second later, with the count.
            self.told_at = Some(now);
            return None;
        }
        let Untold { why, dropped } = self.untold.take()?;
        self.told_at = Some(now);
        Some(Outgoing::Dropped {
            msg: why.to_string(),
            dropped,
        })
    }

    /// How long until a notice may go out.
    fn wait_for_notice(&self, now: Instant) -> Duration {
        self.told_at.map_or(Duration::ZERO, |at| {
            (at + TELL_EVERY).saturating_duration_since(now)
        })
    }

    /// How long the next read may block: until the reader must wake anyway, or,
    /// while a notice waits, until it is due if that is sooner (the read's timeout
    /// is the reader's only clock).
    fn read_timeout(&self, until_wake: Duration) -> Duration {
        match self.untold {
            // At least a millisecond: 0 would mean no timeout at all.
            Some(_) => self
                .wait_for_notice(Instant::now())
                .min(until_wake)
                .max(Duration::from_millis(1)),
            None => until_wake,
        }
    }

    /// The server sends this connection `bytes` of its own answers: its address
    /// pays for them.
    fn spend(&self, bytes: usize) {
        if let Some(allowance) = &self.allowance {
            allowance.spend(bytes);
        }
    }
}

impl From<Failure> for Disconnect {
    fn from(failure: Failure) -> Disconnect {
        match failure {
            Failure::SlowConsumer => Disconnect::SlowConsumer,
            Failure::WriteFailed => Disconnect::WriteFailed,
            Failure::Stopped => Disconnect::ServerStopping,
            Failure::Kicked => Disconnect::Kicked,
        }
    }
}

/// Membership in the hub, undone on drop: the hub hears `Leave` and the socket is
/// shut down once its last bytes are written, however the reader ends.
struct Registration<'a> {
    id: ClientId,
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
pub fn serve(
    mut client: Client,
    place: Place,
    settings: &ReaderSettings,
    hub: &Sender<Event>,
    stats: &Stats,
) {
    let tls = client.ws.get_mut().take_tls().map(Session::new);
    let encrypted = tls.is_some();
    let outbox = Outbox::new(
        client.id,
        Arc::clone(&client.socket),
        settings.max_backlog,
        settings.drain_timeout,
        place,
        tls,
    );
    client.ws.get_mut().attach(Arc::clone(&outbox), encrypted);
    // Engine.IO's open packet comes first of all, so it goes before the hub knows
    // the client: nothing of the hub's can precede it.
    let session = client
        .format
        .is_socket_io()
        .then(|| socketio::open(&mut client, settings.max_message))
        .flatten();
    if let Err(e) = client.socket.set_read_timeout(Some(settings.idle_timeout)) {
        log::warn!(
            "client {}: cannot set a read timeout ({e}): disconnecting",
            client.id
        );
        outbox.finish();
        return;
    }
    let arrival = arrival_of(&mut client, &outbox);
    // A Socket.IO chat client arrives when it joins the main namespace: before,
    // the hub's frames would have no namespace to go to.
    let arrival = match (client.format, client.endpoint) {
        (Format::SocketIo | Format::SocketIoTutorial, Endpoint::Chat) => Some(arrival),
        _ if hub.send(Event::Connect(arrival)).is_err() => {
            outbox.finish();
            return;
        }
        _ => None,
    };
    let _registration = Registration {
        id: client.id,
        hub,
        outbox: Arc::clone(&outbox),
    };
    let mut limits = Limits::new(settings, client.allowance.clone());
    let _counted = (client.format.is_socket_io() && client.endpoint == Endpoint::Chat)
        .then(|| stats.socket_io_connected());
    let seen = match client.format {
        Format::SocketIo | Format::SocketIoTutorial => socketio::read_until_closed(
            &mut client,
            socketio::Opened { session, arrival },
            &outbox,
            hub,
            &mut limits,
            settings.idle_timeout,
        ),
        Format::Json | Format::Text => read_until_closed(
            &mut client,
            &outbox,
            hub,
            &mut limits,
            settings.idle_timeout,
        ),
    };
    // What the outbox saw (a slow consumer, a failed write) is why the read ended.
    let reason = outbox.failure().map_or(seen, Disconnect::from);
    stats.count_disconnect(reason);
    log_disconnect(client.id, reason);
}

/// What the hub is told of `client` when it arrives.
fn arrival_of(client: &mut Client, outbox: &Arc<Outbox>) -> Arrival {
    Arrival {
        id: client.id,
        outbox: Arc::clone(outbox),
        endpoint: client.endpoint,
        format: client.format,
        name: client.name.clone().unwrap_or_default(),
        room: client.room.take(),
        protocol: client.protocol,
        address: client.address,
        allowance: client.allowance.clone(),
    }
}

/// Says why a client left; a flood of short-lived clients must not become a
/// flood of lines.
fn log_disconnect(id: ClientId, reason: Disconnect) {
    let kind = match reason {
        Disconnect::Flooding => Noisy::Flooding,
        Disconnect::TooBig | Disconnect::InvalidUtf8 | Disconnect::ProtocolError => {
            Noisy::BadFrames
        }
        _ => Noisy::Left,
    };
    limited!(kind, "client {id} disconnected: {reason}");
}

/// The read loop. Returns why the client is gone.
fn read_until_closed(
    client: &mut Client,
    outbox: &Outbox,
    hub: &Sender<Event>,
    limits: &mut Limits,
    idle: Duration,
) -> Disconnect {
    let mut timeout = idle;
    loop {
        let wake_at = Instant::now() + idle;
        let message = match next_message(client, limits, wake_at, &mut timeout) {
            Ok(message) => message,
            Err(e) => return end_after_error(client, outbox, e),
        };
        match admitted(client, outbox, limits, &message) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(closed) => return closed,
        }
        let reply = match (client.endpoint, message) {
            (Endpoint::Chat, Message::Binary(_)) => {
                Some(error_frame(&InputError::Binary, client.format))
            }
            (Endpoint::Chat, Message::Text(text)) => match handle(client, &text, hub, None) {
                Ok(Handled::Sent) => None,
                Ok(Handled::Reply(frame)) => Some(frame),
                Ok(Handled::HubGone) => return Disconnect::ServerStopping,
                Err(e) => Some(error_frame(&e, client.format)),
            },
            (Endpoint::Echo, message @ (Message::Text(_) | Message::Binary(_))) => Some(message),
            (_, Message::Close(_)) => {
                // tungstenite queues the answering Close and sends it at the next
                // read; the hub must send nothing after it.
                outbox.stop_broadcasts();
                None
            }
            // Pings are answered by tungstenite itself (one pong waiting at most:
            // see the outbox); pongs only prove liveness, which the read returning
            // already did.
            (_, Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => None,
        };
        if let Some(reply) = reply
            && let Err(e) = send_reply(client, limits, reply)
        {
            return end_after_error(client, outbox, e);
        }
    }
}

/// Whether a chat client's frame is within its budgets: handled (true), or
/// dropped (false); closed for flooding when it keeps on. Budgets come first, for
/// every frame but Close: one over them costs the server a few counters, and one
/// notice a second at most. Echo clients have none.
fn admitted(
    client: &mut Client,
    outbox: &Outbox,
    limits: &mut Limits,
    message: &Message,
) -> Result<bool, Disconnect> {
    if client.endpoint != Endpoint::Chat || matches!(message, Message::Close(_)) {
        return Ok(true);
    }
    let data = matches!(message, Message::Text(_) | Message::Binary(_));
    match limits.check(message.len(), data) {
        Verdict::Admit => Ok(true),
        Verdict::Drop => Ok(false),
        Verdict::Close => {
            close_with(client, outbox, CloseCode::Policy, "flooding");
            await_close(client);
            Err(Disconnect::Flooding)
        }
    }
}

/// The next message from the client, meanwhile telling it what was dropped when
/// that is due, and giving back a read buffer a large message grew. A timeout
/// error means `wake_at` has come with nothing read.
///
/// The blocking read's timeout is the reader's only clock: until `wake_at`
/// normally (the idle timeout; a Socket.IO client's next heartbeat), shorter while
/// a notice waits for its second to pass. It is set only when it would wake the
/// reader late, or far too early (`timeout` is what the socket has), so the
/// common case costs no system call. Waking early (for a notice) does not move
/// `wake_at`: a client silent for its idle timeout since its last frame is gone,
/// notice or not.
fn next_message(
    client: &mut Client,
    limits: &mut Limits,
    wake_at: Instant,
    timeout: &mut Duration,
) -> tungstenite::Result<Message> {
    loop {
        if let Some(notice) = limits.notice_due() {
            send_reply(client, limits, frame_in(&notice, client.format))?;
        }
        // At least a millisecond: 0 would mean no timeout at all.
        let until_wake = wake_at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let wanted = limits.read_timeout(until_wake);
        // While a notice waits, the wanted timeout shrinks with every frame read:
        // set anew only when it is off by more than the slack (a notice 50 ms
        // late costs nothing; a system call per frame of a flood does).
        if *timeout > wanted + TIMEOUT_SLACK || *timeout < wanted / 2 {
            client.socket.set_read_timeout(Some(wanted))?;
            *timeout = wanted;
        }
        match client.ws.read() {
            Ok(message) => {
                // A large message grew tungstenite's read buffer: it is given back
                // at the next read, if that finds it empty.
                let spent = large_payload(&message, client.ws.get_config().read_buffer_size);
                client.ws.get_mut().keep_spent(spent);
                return Ok(message);
            }
            Err(e) if is_buffer_spent(&e) => renew_after_large_message(client),
            // Woken early (tungstenite keeps a frame half read, if any).
            Err(tungstenite::Error::Io(e)) if crate::is_timeout(&e) && Instant::now() < wake_at => {
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sends the reader's own answer, paid for by the client's address.
fn send_reply(client: &mut Client, limits: &Limits, reply: Message) -> tungstenite::Result<()> {
    limits.spend(reply.len());
    client.ws.send(reply)
}

/// A data message's bytes, if it is large enough to have grown tungstenite's read
/// buffer from its `read_buffer_size`: a frame is read whole into that buffer,
/// which doubles when it grows.
fn large_payload(message: &Message, read_buffer_size: usize) -> Option<Bytes> {
    let bytes: &Bytes = match message {
        Message::Text(text) => text.as_ref(),
        Message::Binary(bytes) => bytes,
        _ => return None,
    };
    (bytes.len() > read_buffer_size / 2).then(|| bytes.clone())
}

fn is_buffer_spent(error: &tungstenite::Error) -> bool {
    matches!(error, tungstenite::Error::Io(e)
        if e.get_ref().is_some_and(|inner| inner.is::<BufferSpent>()))
}

/// Gives back tungstenite's read buffer after a large message. tungstenite reserves
/// a whole frame in it and keeps the buffer at that size for the connection's life
/// (a 64 KiB frame left 70 KiB per idle client, measured); it has no way to shrink
/// it, so the WebSocket is made anew over the same stream. That is safe only with
/// nothing in the buffer, which the stream checked ([`BufferSpent`]): no frame
/// half read, no message half joined, no pong waiting (tungstenite sends those
/// before it reads). What is left is the state, open, which a new one starts in.
/// A message sent in fragments is joined in a buffer of its own, and so is not
/// checked: the read buffer stays at its largest fragment, within the per-client
/// bound of [`crate::capacity`].
fn renew_after_large_message(client: &mut Client) {
    if !client.ws.can_write() {
        // Closing: the state matters now, and the buffer goes with the client soon.
        return;
    }
    let config = *client.ws.get_config();
    // Holds the WebSocket's place while the stream moves; never read or written.
    let stand_in =
        ClientStream::for_handshake(Arc::clone(&client.socket), Instant::now(), None, Vec::new());
    let old = std::mem::replace(
        &mut client.ws,
        WebSocket::from_raw_socket(stand_in, Role::Server, Some(config)),
    );
    client.ws = WebSocket::from_raw_socket(old.into_inner(), Role::Server, Some(config));
}

/// What became of one frame from a chat client.
enum Handled {
    /// An event went to the hub.
    Sent,
    /// The reader answers it itself.
    Reply(Message),
    /// The hub is gone: the server is stopping.
    HubGone,
}

/// Turns one text frame into a hub event, or into the reader's own answer; a
/// Socket.IO client's answer comes as acknowledgement `ack` when it asked for one.
fn handle(
    client: &mut Client,
    text: &str,
    hub: &Sender<Event>,
    ack: Option<u64>,
) -> Result<Handled, InputError> {
    let incoming = match client.format {
        // Plain text: every frame is a message, under the connection's name.
        Format::Text => Incoming::Message {
            name: None,
            msg: text.to_string(),
            except_sender: false,
        },
        // A Socket.IO client's event is read as the JSON frame it stands for.
        Format::Json | Format::SocketIo | Format::SocketIoTutorial => protocol::parse(text)?,
    };
    act_on(client, incoming, hub, ack)
}

/// Hands what a chat client sent to the hub, or answers it.
fn act_on(
    client: &mut Client,
    incoming: Incoming,
    hub: &Sender<Event>,
    ack: Option<u64>,
) -> Result<Handled, InputError> {
    let id = client.id;
    let event = match incoming {
        Incoming::Message {
            name,
            msg,
            except_sender,
        } => {
            let name = match (name, &client.name, client.format) {
                (Some(name), _, _) => name,
                (None, Some(name), _) => name.clone(),
                (None, None, Format::Text) => String::new(),
                (None, None, _) => return Err(InputError::NoName),
            };
            if client.format == Format::Text {
                // What `parse` checks of a JSON client's message.
                protocol::check_message(&name, &msg)?;
            }
            Event::Message(Said {
                from: id,
                message: ChatMessage { name, msg },
                except_sender,
            })
        }
        Incoming::Hello { name } => return hello(client, name, hub, ack),
        Incoming::Join { room, since, epoch } => Event::Join(Join {
            id,
            room,
            since,
            epoch,
        }),
        Incoming::Rooms => Event::Rooms { id },
        Incoming::Who => Event::Who { id },
        Incoming::Direct { to, msg } => Event::Direct(DirectMessage {
            from: id,
            name: client.name.clone().unwrap_or_default(),
            to,
            msg,
        }),
        Incoming::Ping => {
            return Ok(Handled::Reply(answer_in(
                &Outgoing::Pong,
                client.format,
                ack,
            )));
        }
        Incoming::Kick { id: target } if client.admin => Event::Kick { target, by: id },
        Incoming::Kick { .. } => return Err(InputError::NotAllowed),
    };
    let event = match ack {
        Some(ack) => Event::Acked(Acked {
            id,
            ack,
            event: Box::new(event),
        }),
        None => event,
    };
    Ok(sent(hub, event))
}

/// `hello`: the reader keeps the name for messages without one, the hub learns
/// it, and the reader answers.
fn hello(
    client: &mut Client,
    name: String,
    hub: &Sender<Event>,
    ack: Option<u64>,
) -> Result<Handled, InputError> {
    let id = client.id;
    client.name = Some(name.clone());
    let answer = answer_in(&Outgoing::Hello { id, name: &name }, client.format, ack);
    Ok(match sent(hub, Event::Hello { id, name }) {
        Handled::Sent => Handled::Reply(answer),
        gone => gone,
    })
}

/// Hands `event` to the hub.
fn sent(hub: &Sender<Event>, event: Event) -> Handled {
    match hub.send(event) {
        Ok(()) => Handled::Sent,
        Err(_) => Handled::HubGone,
    }
}

fn error_frame(e: &InputError, format: Format) -> Message {
    frame_in(&Outgoing::Error { msg: e.to_string() }, format)
}

/// A frame of the reader's own, in the client's format (a Socket.IO client's
/// main namespace: the reader answers only there).
fn frame_in(frame: &Outgoing<'_>, format: Format) -> Message {
    Message::text(format.spell(frame, protocol::LOBBY))
}

/// The reader's own answer to a request, as acknowledgement `ack` if awaited.
fn answer_in(frame: &Outgoing<'_>, format: Format, ack: Option<u64>) -> Message {
    Message::text(format.spell_answer(frame, ack, protocol::LOBBY))
}

/// Decides how to end after `read` or `send` failed, closing with the right code
/// where the protocol asks for one.
fn end_after_error(client: &mut Client, outbox: &Outbox, error: tungstenite::Error) -> Disconnect {
    use tungstenite::Error;
    use tungstenite::error::ProtocolError;
    match error {
        Error::ConnectionClosed | Error::AlreadyClosed => Disconnect::Closed,
        Error::Io(e) if crate::is_timeout(&e) => Disconnect::Silent,
        Error::Io(e) => {
            log::debug!("client {}: {}", client.id, Untrusted(&e));
            Disconnect::Failed
        }
        Error::Capacity(e) => {
            log::debug!("client {}: {}", client.id, Untrusted(&e));
            close_with(client, outbox, CloseCode::Size, "message too big");
            // tungstenite cannot read on after a capacity error (it is mid-frame),
            // so the peer's answering Close cannot be parsed: linger instead.
            linger(&client.socket);
            Disconnect::TooBig
        }
        Error::Utf8(_) => {
            close_with(client, outbox, CloseCode::Invalid, "invalid UTF-8");
            await_close(client);
            Disconnect::InvalidUtf8
        }
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Disconnect::Dropped,
        Error::Protocol(e) => {
            log::debug!("client {}: {}", client.id, Untrusted(&e));
            close_with(client, outbox, CloseCode::Protocol, "protocol error");
            await_close(client);
            Disconnect::ProtocolError
        }
        other => {
            log::debug!("client {}: {}", client.id, Untrusted(&other));
            Disconnect::Failed
        }
    }
}

/// Sends a Close with `code`; nothing from the hub follows it.
fn close_with(client: &mut Client, outbox: &Outbox, code: CloseCode, reason: &str) {
    outbox.stop_broadcasts();
    // The buffer is not renewed while closing: reads go on to the peer's Close.
    client.ws.get_mut().keep_spent(None);
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = client.ws.close(Some(frame));
}

/// Waits, briefly, for the peer's answering Close. Whatever it sends before that is
/// dropped; its Close, an error or the deadline ends the wait.
fn await_close(client: &mut Client) {
    let deadline = Instant::now() + CLOSE_WAIT;
    let _ = client.socket.set_read_timeout(Some(CLOSE_WAIT));
    while Instant::now() < deadline {
        if client.ws.read().is_err() {
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
