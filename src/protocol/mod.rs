//! Protocol v2 (v1 and more): what clients send, what the server sends back, and
//! the rules that decide whether an incoming frame is accepted.
//!
//! No I/O lives here: a reader thread hands us the text of a WebSocket message and
//! gets back either an [`Incoming`] (read by [`parse`], in `parse.rs`) or an
//! [`InputError`] to report to its sender. What the server sends is an
//! [`Outgoing`] value; how it is spelled on the wire, JSON or a line of plain
//! text, is the `format` module's business. `docs/PROTOCOL.md` is the same
//! contract in prose, with a table of every frame.

use serde::Serialize;

mod parse;

pub use parse::{parse, parse_chat};

/// The subprotocol of v1, selected when a client offers it (and not v2).
pub const SUBPROTOCOL: &str = "threadchat.v1";

/// The subprotocol of v2, selected first when offered. The frames are the same;
/// `welcome` says which one the client asked for.
pub const SUBPROTOCOL_V2: &str = "threadchat.v2";

/// The `websocket` package tutorial's subprotocol: its clients speak plain text.
pub const SUBPROTOCOL_TEXT: &str = "chatting";

/// Longest accepted `name`, in characters (Unicode scalar values), not bytes, so a
/// Korean name gets the same room as a Latin one.
pub const MAX_NAME_CHARS: usize = 32;

/// Longest accepted `msg`, in characters.
pub const MAX_MSG_CHARS: usize = 2_000;

/// Longest room name, in characters (ASCII letters, digits, `-`, `_`).
pub const MAX_ROOM_CHARS: usize = 32;

/// The room every client starts in: the v1 chat.
pub const LOBBY: &str = "lobby";

/// The most bytes one relayed chat message takes on the wire, frame header
/// included: every character of the longest name and text escaped by JSON to six
/// bytes (`\u0001`), the longest room, and the largest ids. The hub's batch bound
/// and the smallest useful `--max-backlog` are worked out from it.
pub const MAX_MESSAGE_FRAME: usize = 13 * 1024;

/// The most bytes one join, leave or kick notification takes on the wire.
pub const MAX_PRESENCE_FRAME: usize = 512;

/// About what one join, leave or kick notification of `name` in `room` takes on
/// the wire: what its address pays for each member it reaches. Its fixed part
/// with the largest numbers, and the name and room with a quote or backslash in
/// every other character; never more than [`MAX_PRESENCE_FRAME`].
pub fn presence_frame_size(name: &str, room: &str) -> usize {
    const FIXED: usize = 240;
    (FIXED + 3 * (name.len() + room.len()) / 2).min(MAX_PRESENCE_FRAME)
}

/// A connection's id: `welcome`'s `id`, a message's `from`, a direct message's
/// `to`. Unique for the server's run (in a cluster: across the cluster, each
/// node's from `node << 32`), and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ClientId(pub u64);

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A client as others see it: its id and its name (`hello`), perhaps empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedClient {
    /// Its connection id.
    pub id: ClientId,
    /// Its name (`hello`), or empty.
    pub name: String,
}

/// A chat message that passed validation, ready for the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Who the sender says they are. Relayed exactly as sent: escaping for display is
    /// the page's job, and JSON encoding on the way out keeps it well-formed.
    pub name: String,
    /// The text, exactly as sent.
    pub msg: String,
}

/// One frame from a client, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A message to the sender's room. `name` is `None` when the frame had none:
    /// the connection's `hello` name is used then.
    Message {
        /// The sender's name, if the frame said it.
        name: Option<String>,
        /// The text, exactly as sent.
        msg: String,
        /// To everyone in the room but the sender.
        except_sender: bool,
    },
    /// Sets the connection's name.
    Hello {
        /// The name.
        name: String,
    },
    /// Moves the connection to a room.
    Join {
        /// The room's name, already checked.
        room: String,
        /// Replay only the messages after this id.
        since: Option<u64>,
        /// The epoch `since` belongs to (`welcome`'s, or the last `cluster`
        /// frame's).
        epoch: Option<u64>,
    },
    /// Which rooms there are.
    Rooms,
    /// Who is in the sender's room.
    Who,
    /// A message to one connection.
    Direct {
        /// The target's connection id.
        to: ClientId,
        /// The text.
        msg: String,
    },
    /// An application-level ping (the `ws` tutorial's heartbeat).
    Ping,
    /// Close connection `id` (admins only).
    Kick {
        /// The connection to close.
        id: ClientId,
    },
}

/// Why an incoming frame was refused. Its `Display` text is what the sender sees
/// in the `error` frame, so it says what to fix. It never quotes the frame: what a
/// client sent does not come back to it (an error frame stays within
/// [`MAX_ERROR_FRAME`] whatever the input), and nothing of it reaches a log line
/// through an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputError {
    /// Not JSON, or JSON that is not an object.
    Malformed(JsonFault),
    /// A `type` that is not one of the protocol's.
    UnknownType,
    /// A field the frame needs is not there.
    Missing(&'static str),
    /// A field has the wrong kind of value.
    WrongType(&'static str, &'static str),
    /// A field given twice in one frame.
    Repeated(&'static str),
    /// A message without a name, from a connection that has not said `hello`.
    NoName,
    /// `msg` empty or only whitespace.
    EmptyMessage,
    /// `name` longer than [`MAX_NAME_CHARS`].
    NameTooLong(usize),
    /// `msg` longer than [`MAX_MSG_CHARS`].
    MessageTooLong(usize),
    /// A room name that is not 1–32 letters, digits, `-` or `_`.
    BadRoom,
    /// A binary WebSocket frame on the chat endpoint.
    Binary,
    /// A Socket.IO event whose arguments are not one object of a frame's fields.
    EventArguments,
    /// An event in a Socket.IO namespace other than `/` that is not the rooms
    /// page's `chat message`.
    NamespaceEvent,
    /// More frames than the connection's rate allows.
    TooFast {
        /// Frames a second.
        rate: u32,
    },
    /// The sender's address has used up one of its budgets for now (what, in
    /// words): the frame was dropped.
    AddressBusy(&'static str),
    /// A kick from a connection that is not an admin.
    NotAllowed,
    /// A direct message or a kick for a connection that does not exist.
    NoSuchClient(ClientId),
    /// Every room has members: no new one can be made.
    TooManyRooms(usize),
    /// The sender's address made this many rooms, all in use: no more.
    TooManyRoomsFromAddress(usize),
    /// In a cluster: the message could not be handed to Redis, and why.
    NotRelayed(&'static str),
    /// In a cluster cut off from Redis: a direct message or a kick for a
    /// connection that is not on this node.
    Unreachable(ClientId),
    /// In a cluster: the node of a direct message's (or kick's) target did not
    /// say in time whether it got it.
    Unconfirmed(ClientId),
}

/// The most bytes an `error` frame takes on the wire, frame header included,
/// whatever the frame it answers: every [`InputError`] says what is wrong in the
/// server's own words and numbers.
pub const MAX_ERROR_FRAME: usize = 512;

/// What is wrong with a frame that is not a JSON object, and where. In the
/// server's words: serde_json's own text can quote the input (`invalid type:
/// string "…"`), and an error frame must not hand a client's bytes back to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonFault {
    /// What kind of fault.
    pub problem: JsonProblem,
    /// The line it was seen on, counted from 1.
    pub line: usize,
    /// Its column in that line, counted from 1.
    pub column: usize,
}

/// The kinds of [`JsonFault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonProblem {
    /// Not JSON: a character JSON does not allow there.
    Syntax,
    /// The text ends before the JSON does.
    Truncated,
    /// JSON, but not an object.
    NotAnObject,
}

impl From<&serde_json::Error> for JsonFault {
    fn from(e: &serde_json::Error) -> JsonFault {
        use serde_json::error::Category;
        let problem = match e.classify() {
            Category::Eof => JsonProblem::Truncated,
            // The parser's fields take any value (see `Keep`), so the only data
            // error left is the frame itself not being a map.
            Category::Data => JsonProblem::NotAnObject,
            Category::Syntax | Category::Io => JsonProblem::Syntax,
        };
        JsonFault {
            problem,
            line: e.line(),
            column: e.column(),
        }
    }
}

impl std::fmt::Display for JsonFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.problem {
            JsonProblem::Syntax => "not valid JSON",
            JsonProblem::Truncated => "the JSON ends before it is complete",
            JsonProblem::NotAnObject => "a frame must be one JSON object",
        };
        write!(f, "{what} (line {}, column {})", self.line, self.column)
    }
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputError::Malformed(fault) => write!(f, "invalid message: {fault}"),
            InputError::UnknownType => write!(
                f,
                "unknown message type: the types are message, hello, join, rooms, who, \
                 direct, ping and kick"
            ),
            InputError::EventArguments => write!(
                f,
                "an event has one argument, an object of its frame's fields: \
                 emit(\"join\", {{room: \"games\"}})"
            ),
            InputError::NamespaceEvent => write!(
                f,
                "in a namespace other than /, the chat takes \"chat message\" with {{name, room, msg}}"
            ),
            InputError::Missing(field) => write!(f, "{field} is missing"),
            InputError::WrongType(field, kind) => write!(f, "{field} must be {kind}"),
            InputError::Repeated(field) => write!(f, "{field} is given more than once"),
            InputError::NoName => write!(f, "name is missing: send one, or say hello first"),
            InputError::EmptyMessage => write!(f, "msg is empty"),
            InputError::NameTooLong(n) => write!(
                f,
                "name is {n} characters long; at most {MAX_NAME_CHARS} are allowed"
            ),
            InputError::MessageTooLong(n) => write!(
                f,
                "msg is {n} characters long; at most {MAX_MSG_CHARS} are allowed"
            ),
            InputError::BadRoom => write!(
                f,
                "not a room name: 1 to {MAX_ROOM_CHARS} letters, digits, - or _"
            ),
            InputError::Binary => write!(
                f,
                "binary frames are not accepted here: send JSON as a text frame"
            ),
            InputError::TooFast { rate } => write!(
                f,
                "slow down: at most {rate} messages a second; what came faster was dropped"
            ),
            InputError::AddressBusy(what) => write!(
                f,
                "slow down: your address has used its share of {what} for now; what came \
                 over it was dropped"
            ),
            InputError::NotAllowed => write!(f, "only an admin connection may kick"),
            InputError::NoSuchClient(id) => write!(f, "there is no connection {id}"),
            InputError::TooManyRooms(n) => {
                write!(f, "all {n} rooms are in use; join one of them")
            }
            InputError::TooManyRoomsFromAddress(n) => write!(
                f,
                "your address made {n} rooms, all in use: join one of them"
            ),
            InputError::NotRelayed(why) => write!(f, "message not sent: {why}"),
            InputError::Unreachable(id) => write!(
                f,
                "connection {id} is not on this server, and the chat's other servers \
                 cannot be reached: try again in a moment"
            ),
            InputError::Unconfirmed(id) => write!(
                f,
                "whether connection {id} got it could not be confirmed: its server did \
                 not answer in time"
            ),
        }
    }
}

impl std::error::Error for InputError {}

/// Checks a room name: 1–32 ASCII letters, digits, `-`, `_`. Returns it.
pub fn check_room(room: String) -> Result<String, InputError> {
    if !is_room(&room) {
        return Err(InputError::BadRoom);
    }
    Ok(room)
}

/// Whether `room` is a room name (see [`check_room`]).
pub fn is_room(room: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    !room.is_empty() && room.len() <= MAX_ROOM_CHARS && room.chars().all(allowed)
}

/// Checks a name against [`MAX_NAME_CHARS`].
pub fn check_name(name: &str) -> Result<(), InputError> {
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(InputError::NameTooLong(chars));
    }
    Ok(())
}

/// Checks a message's name and text, as `parse` does (for plain-text clients,
/// whose frames are not parsed).
pub fn check_message(name: &str, msg: &str) -> Result<(), InputError> {
    check_name(name)?;
    check_text(msg)
}

pub(crate) fn check_text(msg: &str) -> Result<(), InputError> {
    if msg.trim().is_empty() {
        return Err(InputError::EmptyMessage);
    }
    let chars = msg.chars().count();
    if chars > MAX_MSG_CHARS {
        return Err(InputError::MessageTooLong(chars));
    }
    Ok(())
}

/// What a notification reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// Someone arrived in the room.
    Join,
    /// Someone left it.
    Leave,
    /// An admin removed someone.
    Kick,
}

/// A room and how many are in it, for `rooms`.
#[derive(Debug, Serialize)]
pub struct RoomCount<'a> {
    /// The room's name.
    pub room: &'a str,
    /// Its members now.
    pub count: usize,
}

/// A member of a room, for `who`.
#[derive(Debug, Serialize)]
pub struct WhoEntry<'a> {
    /// Its connection id.
    pub id: ClientId,
    /// Its name (`hello`), or empty.
    pub name: &'a str,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Everything the server sends to chat clients. Serialised with a `type` tag, so
/// `Outgoing::Message { .. }` becomes `{"type":"message",...}`. The fields v2
/// added are left out when empty, so a v1-only server (`examples/naive.rs`) sends
/// exactly v1.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Outgoing<'a> {
    /// A chat message, to its room.
    Message {
        /// Position in the one order every member of the room sees.
        id: u64,
        /// Milliseconds since the Unix epoch when the hub relayed it.
        ts: u64,
        /// The sender's connection id (its `welcome` id), so a page can tell its own
        /// messages from others' even when two people pick the same name.
        from: ClientId,
        /// The sender's name.
        name: &'a str,
        /// The text, as sent.
        msg: &'a str,
        /// The room it was sent in.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
    },
    /// People joined or left; `count` is how many are in the room now.
    Notification {
        /// Human-readable, with the count in it (as the Node original did).
        msg: String,
        /// Members after this event.
        count: usize,
        /// `join`, `leave` or `kick`.
        event: Presence,
        /// How many joined or left at once (a storm of joins is announced in runs).
        users: usize,
        /// The room.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
        /// The one client it is about, when it is about one.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<ClientId>,
        /// That client's name.
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<&'a str>,
    },
    /// In a cluster: this node lost Redis (`connected: false`, it chats on alone)
    /// or has it again. A notification (`"event":"cluster"`), so that a client
    /// that shows notifications, the tutorials' included, shows this one too.
    #[serde(rename = "notification")]
    Cluster {
        /// Says it in words.
        msg: &'a str,
        /// Members of the room now.
        count: usize,
        /// Always `"cluster"`.
        event: &'static str,
        /// The room.
        room: &'a str,
        /// Whether the other nodes hear this node's clients now.
        connected: bool,
        /// Some of what the others said will never reach this node (the stream
        /// no longer holds it).
        #[serde(skip_serializing_if = "is_false")]
        gap: bool,
        /// The epoch of the messages from now on (as `welcome`'s): this node's
        /// own while cut off, the cluster's again after.
        epoch: u64,
    },
    /// First frame a new client gets: who it is and how many are here.
    Welcome {
        /// This connection's id (also in the server's log lines).
        id: ClientId,
        /// Members of its room, this one included.
        count: usize,
        /// Protocol version spoken on this connection.
        protocol: &'static str,
        /// The room it is in.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
        /// This server run, for `join`'s `since`.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
    },
    /// The answer to `join`, before the room's history.
    Joined {
        /// The room now.
        room: &'a str,
        /// Its members, this one included.
        count: usize,
        /// The history did not reach back to `since`: some messages are lost.
        #[serde(skip_serializing_if = "is_false")]
        gap: bool,
    },
    /// The answer to `hello`.
    Hello {
        /// This connection's id.
        id: ClientId,
        /// Its name now.
        name: &'a str,
    },
    /// The answer to `rooms`.
    Rooms {
        /// Rooms with members, and the lobby.
        rooms: Vec<RoomCount<'a>>,
        /// Rooms not listed (an answer lists at most 200).
        #[serde(skip_serializing_if = "is_zero")]
        more: usize,
    },
    /// The answer to `who`.
    Who {
        /// The room.
        room: &'a str,
        /// Its members, in the order they joined it.
        members: Vec<WhoEntry<'a>>,
        /// Members not listed (an answer lists at most 200).
        #[serde(skip_serializing_if = "is_zero")]
        more: usize,
    },
    /// A direct message, to its target and (marked `delivered`) its sender.
    Direct {
        /// From the same sequence as message ids.
        id: u64,
        /// Milliseconds since the Unix epoch when the hub relayed it.
        ts: u64,
        /// The sender's connection id.
        from: ClientId,
        /// The sender's name.
        name: &'a str,
        /// The target's connection id.
        to: ClientId,
        /// The text.
        msg: &'a str,
        /// The sender's own copy.
        #[serde(skip_serializing_if = "is_false")]
        delivered: bool,
    },
    /// The answer to `ping`.
    Pong,
    /// A Socket.IO chat page's `login` (the socket.io tutorial's): to the
    /// sender's room, the sender included.
    Login {
        /// The sender's connection id.
        id: ClientId,
        /// The name it logged in with.
        name: &'a str,
    },
    /// Frames of the client's dropped for going over its rate or its address's
    /// budgets since it was last told: an `error` that says how many (told once a
    /// second at most).
    #[serde(rename = "error")]
    Dropped {
        /// Why.
        msg: String,
        /// How many.
        dropped: u32,
    },
    /// The sender's last frame was refused; the connection stays open.
    Error {
        /// What was wrong.
        msg: String,
    },
}

impl Outgoing<'_> {
    /// The JSON text of this frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("Outgoing holds only strings and integers")
    }

    /// The frame's `type`, as its JSON names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Outgoing::Message { .. } => "message",
            Outgoing::Notification { .. } | Outgoing::Cluster { .. } => "notification",
            Outgoing::Welcome { .. } => "welcome",
            Outgoing::Joined { .. } => "joined",
            Outgoing::Hello { .. } => "hello",
            Outgoing::Rooms { .. } => "rooms",
            Outgoing::Who { .. } => "who",
            Outgoing::Direct { .. } => "direct",
            Outgoing::Pong => "pong",
            Outgoing::Login { .. } => "login",
            Outgoing::Dropped { .. } | Outgoing::Error { .. } => "error",
        }
    }

    /// A notification that `users` people joined (left, were kicked), leaving
    /// `count` in the room, with the count in its text (the v1 shape).
    pub fn presence(event: Presence, users: usize, count: usize) -> Outgoing<'static> {
        let verb = match event {
            Presence::Join => "joined",
            Presence::Leave => "left",
            Presence::Kick => "was removed",
        };
        let who = if users == 1 {
            "user".to_string()
        } else {
            format!("{users} users")
        };
        Outgoing::Notification {
            msg: format!("{who} {verb} [online: {count}]"),
            count,
            event,
            users,
            room: None,
            id: None,
            name: None,
        }
    }
}

/// Milliseconds since the Unix epoch: messages' `ts`, and the server run's epoch.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The longest message frame's JSON: every character of the longest name and text
/// one that JSON escapes to six bytes, the longest room, and the largest ids.
#[cfg(test)]
pub(crate) fn largest_message_json() -> String {
    let name = "\u{1}".repeat(MAX_NAME_CHARS);
    let msg = "\u{1}".repeat(MAX_MSG_CHARS);
    let room = "r".repeat(MAX_ROOM_CHARS);
    Outgoing::Message {
        id: u64::MAX,
        ts: u64::MAX,
        from: ClientId(u64::MAX),
        name: &name,
        msg: &msg,
        room: Some(&room),
    }
    .to_json()
}

#[cfg(test)]
mod tests;
