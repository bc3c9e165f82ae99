//! A Socket.IO client's read loop (`/socket.io/`): the same thread, socket,
//! outbox and budgets as any client's, with Engine.IO's framing and heartbeat
//! between the WebSocket and the chat.
//!
//! Engine.IO's heartbeat is the server's to send: a ping (`2`) every
//! `pingInterval`, which the client must answer (`3`) within `pingTimeout`. The
//! read's timeout is this thread's clock here too: it wakes when the
//! [`Session`] says something is due, and the session is asked again after
//! every frame, so a client that talks all the time is pinged all the same.
//! A malformed packet closes the connection, as the spec says, with 1002 and what
//! was wrong.
//!
//! In the chat, the client arrives in the hub when it joins the main namespace
//! (its answer, `40`, goes first), and every event it emits is read as the JSON
//! frame of that `type` (`emit("join", {room})` is `{"type":"join","room":…}`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde_json::value::RawValue;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

use super::{
    Client, Handled, Limits, Outbox, admitted, await_close, close_with, end_after_error, handle,
    next_message, send_reply,
};
use crate::event::{Arrival, Endpoint, Event, Join, Said};
use crate::format::Format;
use crate::logging::{Noisy, limited};
use crate::protocol::{self, ChatMessage, ClientId, Incoming, InputError, LOBBY, Outgoing};
use crate::socketio;
use crate::socketio::echo::{self, FIXTURE, FIXTURE_MAX_PAYLOAD};
use crate::socketio::packet::{self, EventName, MAIN_NAMESPACE, PacketType};
use crate::socketio::session::{Due, Received, Session, Timing, Whole};
use crate::stats::Disconnect;

/// socket.io's own defaults: a ping every 25 s, answered within 20 s, and a
/// namespace joined within 45 s of the open.
pub const CHAT: Timing = Timing {
    ping_interval: Duration::from_secs(25),
    ping_timeout: Duration::from_secs(20),
    connect_timeout: Duration::from_secs(45),
};

/// How long a connection that did not show the access token in its handshake
/// has to show it in its CONNECT (the default `--handshake-timeout`).
const TOKEN_WAIT: Duration = Duration::from_secs(10);

/// A client's Socket.IO session, its open packet sent (or `None` if sending it
/// failed: the read loop then ends at once). `maxPayload` is what the reader
/// takes, `--max-message` (the fixture's 1,000,000 if that is less).
pub(super) fn open(client: &mut Client, max_message: usize) -> Option<Session> {
    let (mut timing, max_payload) = match client.endpoint {
        Endpoint::Echo => (FIXTURE, FIXTURE_MAX_PAYLOAD.min(max_message)),
        Endpoint::Chat => (CHAT, max_message),
    };
    if client.token_due.is_some() {
        // A connection that has shown no token holds a chat place: no longer
        // than a handshake may.
        timing.connect_timeout = TOKEN_WAIT;
    }
    let session = Session::new(timing, max_payload, Instant::now());
    let open = format!("0{}", session.open_packet(&client.id.to_string()));
    client.ws.send(Message::text(open)).ok().map(|()| session)
}

/// What the loop starts with: the session, and a chat client's arrival for the
/// hub, sent when it joins the main namespace.
pub(super) struct Opened {
    pub session: Option<Session>,
    pub arrival: Option<Arrival>,
}

/// The read loop. Returns why the client is gone.
pub(super) fn read_until_closed(
    client: &mut Client,
    opened: Opened,
    outbox: &Arc<Outbox>,
    hub: &Sender<Event>,
    limits: &mut Limits,
    idle: Duration,
) -> Disconnect {
    let Opened {
        session: Some(mut session),
        mut arrival,
    } = opened
    else {
        return Disconnect::Failed;
    };
    let mut others = OtherNamespaces {
        hub,
        sockets: Vec::new(),
    };
    let mut timeout = idle;
    loop {
        match next_message(client, limits, session.wake_at(), &mut timeout) {
            Ok(message) => {
                let mut reading = Reading {
                    client: &mut *client,
                    session: &mut session,
                    outbox,
                    others: &mut others,
                    limits: &mut *limits,
                    hub,
                    arrival: &mut arrival,
                };
                if let Some(gone) = reading.one(message) {
                    return gone;
                }
            }
            Err(tungstenite::Error::Io(e)) if crate::is_timeout(&e) => {}
            Err(e) => return end_after_error(client, outbox, e),
        }
        let ending = match session.due(Instant::now()) {
            Due::Nothing => continue,
            Due::Ping => match send_reply(client, limits, Message::text("2")) {
                Ok(()) => continue,
                Err(e) => return end_after_error(client, outbox, e),
            },
            Due::PingTimeout => "ping timeout",
            Due::NoConnect => "no namespace joined in time",
        };
        limited!(Noisy::Left, "client {}: {ending}", client.id);
        close_with(client, outbox, CloseCode::Normal, ending);
        return Disconnect::Silent;
    }
}

/// Everything one frame may touch.
struct Reading<'a, 'h> {
    client: &'a mut Client,
    session: &'a mut Session,
    outbox: &'a Arc<Outbox>,
    others: &'a mut OtherNamespaces<'h>,
    limits: &'a mut Limits,
    hub: &'a Sender<Event>,
    arrival: &'a mut Option<Arrival>,
}

impl Reading<'_, '_> {
    /// Acts on one frame; `Some` with why the client is gone if it ended the
    /// connection.
    fn one(&mut self, message: Message) -> Option<Disconnect> {
        match admitted(self.client, self.outbox, self.limits, &message) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(closed) => return Some(closed),
        }
        let received = match message {
            Message::Text(text) => self.session.text(&text, Instant::now()),
            Message::Binary(bytes) => self.session.binary(bytes),
            Message::Close(_) => {
                // tungstenite answers it at the next read; nothing may follow.
                self.outbox.stop_broadcasts();
                return None;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return None,
        };
        let result = match received {
            Ok(Received::Nothing) => Ok(()),
            Ok(Received::Packet(packet)) => match self.client.endpoint {
                Endpoint::Echo => self.echo(packet),
                Endpoint::Chat => self.chat(packet),
            },
            Ok(Received::Close) => {
                return Some(self.close(CloseCode::Normal, "", Disconnect::Closed));
            }
            Err(malformed) => {
                limited!(
                    Noisy::BadFrames,
                    "client {}: malformed Socket.IO packet: {malformed}",
                    self.client.id
                );
                return Some(self.close(
                    CloseCode::Protocol,
                    malformed.0,
                    Disconnect::ProtocolError,
                ));
            }
        };
        result.err()
    }

    /// Closes with `code` and waits for the answering Close.
    fn close(&mut self, code: CloseCode, reason: &str, why: Disconnect) -> Disconnect {
        close_with(self.client, self.outbox, code, reason);
        await_close(self.client);
        why
    }

    /// Sends the reader's own frame.
    fn send(&mut self, reply: Message) -> Result<(), Disconnect> {
        send_reply(self.client, self.limits, reply)
            .map_err(|e| end_after_error(self.client, self.outbox, e))
    }

    /// The conformance fixture's answer.
    fn echo(&mut self, packet: Whole) -> Result<(), Disconnect> {
        let sid = self.client.id.to_string();
        let (now, later) = echo::answer(self.session, packet, &sid);
        for reply in now {
            self.send(reply)?;
        }
        if let Some(reply) = later {
            // The fixture's pause (see `echo::AUTH_APART`), on an echo client's
            // own thread.
            std::thread::sleep(echo::AUTH_APART);
            self.send(reply)?;
        }
        Ok(())
    }

    /// A chat client's packet: joining and leaving the main namespace, and its
    /// events as frames of the protocol.
    fn chat(&mut self, packet: Whole) -> Result<(), Disconnect> {
        let namespace = packet.namespace.as_str();
        match packet.kind {
            PacketType::Connect if namespace != MAIN_NAMESPACE => {
                self.join_namespace(namespace, packet.data.as_deref())
            }
            PacketType::Connect => self.arrive(packet.data.as_deref()),
            PacketType::Disconnect if namespace != MAIN_NAMESPACE => {
                self.leave_namespace(namespace);
                Ok(())
            }
            // Leaving the main namespace is leaving the chat.
            PacketType::Disconnect => Err(self.close(CloseCode::Normal, "", Disconnect::Closed)),
            PacketType::Event if namespace != MAIN_NAMESPACE => {
                self.namespace_event(namespace, packet.data.as_deref())
            }
            PacketType::Event => self.event(packet.data.as_deref(), packet.ack),
            PacketType::BinaryEvent => {
                let refused = error_answer(&InputError::Binary, packet.ack, namespace);
                self.send(refused)
            }
            PacketType::Ack | PacketType::BinaryAck | PacketType::ConnectError => Ok(()),
        }
    }

    /// With `--token`, a connection that did not show it in its handshake shows it
    /// when it first joins a namespace, or is refused and closed.
    fn check_token(&mut self, namespace: &str, auth: Option<&str>) -> Result<(), Disconnect> {
        let Some(token) = &self.client.token_due else {
            return Ok(());
        };
        if shows_token(auth, token) {
            self.client.token_due = None;
            return Ok(());
        }
        let why = "this chat needs its access token: auth: {token}";
        self.send(Message::text(packet::connect_error(namespace, why)))?;
        Err(self.close(CloseCode::Policy, "access token", Disconnect::Closed))
    }

    /// Joins another namespace: a chat client of its own in the hub, with an id
    /// of its own, sharing this connection's outbox, in the namespace's lobby.
    fn join_namespace(&mut self, namespace: &str, auth: Option<&str>) -> Result<(), Disconnect> {
        let refuse = |why: &str| Message::text(packet::connect_error(namespace, why));
        if !valid_namespace(namespace) {
            return self.send(refuse("Invalid namespace"));
        }
        if let Some(socket) = self.others.get(namespace) {
            let joined = packet::connected(namespace, &socket.id.to_string());
            return self.send(Message::text(joined));
        }
        if !self.session.join(namespace) {
            return self.send(refuse("Too many namespaces"));
        }
        self.check_token(namespace, auth)?;
        let id = ClientId(self.client.ids.fetch_add(1, Ordering::Relaxed));
        let lobby = socketio::room_in(namespace, LOBBY);
        let arrival = Arrival {
            id,
            room: Some(lobby.clone()),
            name: String::new(),
            ..super::arrival_of(self.client, self.outbox)
        };
        self.send(Message::text(packet::connected(namespace, &id.to_string())))?;
        self.others.sockets.push(NamespaceSocket {
            namespace: namespace.to_owned(),
            id,
            room: lobby,
        });
        self.hub
            .send(Event::Connect(arrival))
            .map_err(|_| Disconnect::ServerStopping)
    }

    /// Leaves another namespace: its socket leaves the hub.
    fn leave_namespace(&mut self, namespace: &str) {
        self.session.leave(namespace);
        if let Some(at) = self
            .others
            .sockets
            .iter()
            .position(|s| s.namespace == namespace)
        {
            let socket = self.others.sockets.remove(at);
            let _ = self.hub.send(Event::Leave { id: socket.id });
        }
    }

    /// An event in another namespace: the socket.io tutorial's rooms page's
    /// `chat message` {name, room, msg}, which joins `room` of the namespace and
    /// says `msg` there, to everyone in it, the sender included.
    fn namespace_event(&mut self, namespace: &str, data: Option<&str>) -> Result<(), Disconnect> {
        let said = match read_rooms_page_message(data) {
            Ok(said) => said,
            Err(e) => return self.send(error_answer(&e, None, namespace)),
        };
        let socket = self
            .others
            .get_mut(namespace)
            .expect("a joined namespace has its socket");
        let (id, room) = (socket.id, socketio::room_in(namespace, &said.room));
        let mut events = Vec::with_capacity(2);
        if socket.room != room {
            socket.room = room.clone();
            events.push(Event::Join(Join {
                id,
                room,
                since: None,
                epoch: None,
            }));
        }
        events.push(Event::Message(Said {
            from: id,
            message: ChatMessage {
                name: said.name,
                msg: said.msg,
            },
            except_sender: false,
        }));
        for event in events {
            self.hub
                .send(event)
                .map_err(|_| Disconnect::ServerStopping)?;
        }
        Ok(())
    }

    /// An event: a frame of the protocol, or one of the socket.io tutorial's chat
    /// page's own.
    fn event(&mut self, data: Option<&str>, ack: Option<u64>) -> Result<(), Disconnect> {
        let answer = match read_event(data) {
            Ok(Emitted::Frame(frame)) => handle(self.client, &frame, self.hub, ack),
            Ok(Emitted::Login(hello)) => self.login(&hello),
            Ok(Emitted::ForceDisconnect) => {
                // DISCONNECT first: the client is told it was let go, and does
                // not reconnect as it would after a transport that closed.
                let disconnect =
                    packet::encode(PacketType::Disconnect, MAIN_NAMESPACE, 0, None, "");
                self.send(Message::text(disconnect))?;
                return Err(self.close(CloseCode::Normal, "forceDisconnect", Disconnect::Closed));
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok(Handled::Sent) => Ok(()),
            Ok(Handled::Reply(reply)) => self.send(reply),
            Ok(Handled::HubGone) => Err(Disconnect::ServerStopping),
            Err(e) => self.send(error_answer(&e, ack, MAIN_NAMESPACE)),
        }
    }

    /// The tutorial page's `login`, read as the `hello` it stands for: the name,
    /// and the room told (its `userid` is not kept).
    fn login(&mut self, hello: &str) -> Result<Handled, InputError> {
        let Incoming::Hello { name } = protocol::parse(hello)? else {
            unreachable!("a hello frame reads as hello")
        };
        self.client.name = Some(name.clone());
        let login = Event::Login {
            id: self.client.id,
            name,
        };
        Ok(super::sent(self.hub, login))
    }

    /// Joins the main namespace with `auth`: its answer first, then the hub's
    /// `welcome`. With `--token`, `auth` must hold it if the handshake did not.
    fn arrive(&mut self, auth: Option<&str>) -> Result<(), Disconnect> {
        if self.arrival.is_none() {
            return Ok(()); // joined already
        }
        self.check_token(MAIN_NAMESPACE, auth)?;
        let arrival = self.arrival.take().expect("checked above");
        self.session.join(MAIN_NAMESPACE);
        let joined = packet::connected(MAIN_NAMESPACE, &self.client.id.to_string());
        self.send(Message::text(joined))?;
        self.hub
            .send(Event::Connect(arrival))
            .map_err(|_| Disconnect::ServerStopping)
    }
}

/// Whether a CONNECT's `auth` is `{"token": <token>, …}`.
fn shows_token(auth: Option<&str>, token: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Auth {
        token: String,
    }
    auth.and_then(|auth| serde_json::from_str::<Auth>(auth).ok())
        .is_some_and(|auth| crate::same_secret(token.as_bytes(), auth.token.as_bytes()))
}

/// An error frame in `namespace`, as the acknowledgement `ack` if the request
/// awaits one.
fn error_answer(e: &InputError, ack: Option<u64>, namespace: &str) -> Message {
    let error = Outgoing::Error { msg: e.to_string() };
    let room = match namespace {
        MAIN_NAMESPACE => LOBBY.to_owned(),
        other => socketio::room_in(other, LOBBY),
    };
    Message::text(Format::SocketIo.spell_answer(&error, ack, &room))
}

/// Whether `namespace` may be joined: `/` and up to 32 letters, digits, `-` or
/// `_`, as a room's name.
fn valid_namespace(namespace: &str) -> bool {
    namespace
        .strip_prefix('/')
        .is_some_and(|name| protocol::check_room(name.to_owned()).is_ok())
}

/// The rooms page's `chat message` {name, room, msg}, checked as a message and
/// a room are.
fn read_rooms_page_message(data: Option<&str>) -> Result<RoomsPageMessage, InputError> {
    let Some((EventName::Text(name), args)) = packet::event_of(PacketType::Event, data) else {
        return Err(InputError::UnknownType);
    };
    let [arg] = args.as_slice() else {
        return Err(InputError::EventArguments);
    };
    if name != "chat message" {
        return Err(InputError::NamespaceEvent);
    }
    let said: RoomsPageMessage =
        serde_json::from_str(arg.get()).map_err(|_| InputError::NamespaceEvent)?;
    protocol::check_message(&said.name, &said.msg)?;
    let room = protocol::check_room(said.room)?;
    Ok(RoomsPageMessage { room, ..said })
}

/// What the rooms page sends.
#[derive(serde::Deserialize)]
struct RoomsPageMessage {
    name: String,
    room: String,
    msg: String,
}

/// A socket of this connection in a namespace other than `/`: a chat client of
/// its own in the hub, sharing the connection's outbox, in the namespace's rooms.
struct NamespaceSocket {
    namespace: String,
    id: ClientId,
    /// The hub's name of the room it is in.
    room: String,
}

/// The connection's sockets in other namespaces. Each leaves the hub when the
/// connection ends, however it ends.
struct OtherNamespaces<'a> {
    hub: &'a Sender<Event>,
    sockets: Vec<NamespaceSocket>,
}

impl OtherNamespaces<'_> {
    fn get(&self, namespace: &str) -> Option<&NamespaceSocket> {
        self.sockets.iter().find(|s| s.namespace == namespace)
    }

    fn get_mut(&mut self, namespace: &str) -> Option<&mut NamespaceSocket> {
        self.sockets.iter_mut().find(|s| s.namespace == namespace)
    }
}

impl Drop for OtherNamespaces<'_> {
    fn drop(&mut self) {
        for socket in &self.sockets {
            let _ = self.hub.send(Event::Leave { id: socket.id });
        }
    }
}

/// What an event asks for.
enum Emitted {
    /// A frame of the protocol, as its JSON text.
    Frame(String),
    /// The tutorial page's `login`, as the `hello` frame it stands for.
    Login(String),
    /// The tutorial page's `forceDisconnect`: the server closes the connection.
    ForceDisconnect,
}

/// An event as what it asks for. A frame's type is the event's name, and the
/// event's one argument, an object, the frame's other fields (none for `who`).
/// The tutorial page's events stand for frames too: `login` for `hello` (with its
/// `userid` ignored), `chat` for a message to everyone but the sender.
fn read_event(data: Option<&str>) -> Result<Emitted, InputError> {
    let Some((EventName::Text(name), args)) = packet::event_of(PacketType::Event, data) else {
        return Err(InputError::UnknownType);
    };
    let fields = match args.as_slice() {
        [] => "}",
        [object] => object_fields(object).ok_or(InputError::EventArguments)?,
        _ => return Err(InputError::EventArguments),
    };
    let frame = |kind: &str, extra: &str| {
        let kind = serde_json::to_string(kind).expect("a string serialises");
        let comma = if fields == "}" { "" } else { "," };
        format!("{{\"type\":{kind}{extra}{comma}{fields}")
    };
    Ok(match name.as_str() {
        "login" => Emitted::Login(frame("hello", "")),
        "chat" => Emitted::Frame(frame("message", ",\"except_sender\":true")),
        "forceDisconnect" => Emitted::ForceDisconnect,
        _ => Emitted::Frame(frame(&name, "")),
    })
}

/// An object's text after its `{`: its fields and the closing `}`.
fn object_fields(value: &RawValue) -> Option<&str> {
    value.get().strip_prefix('{').map(str::trim_start)
}
