//! Protocol v2 (v1 and more): what clients send, what the server sends back, and
//! the rules that decide whether an incoming frame is accepted.
//!
//! No I/O lives here: a reader thread hands us the text of a WebSocket message and
//! gets back either an [`Incoming`] or an [`InputError`] to report to its sender;
//! the hub turns [`Outgoing`] values into JSON, or into a line of plain text for the
//! plain-text clients ([`Outgoing::text_line`]). `docs/PROTOCOL.md` is the same
//! contract in prose, with a table of every frame.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

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
        to: u64,
        /// The text.
        msg: String,
    },
    /// An application-level ping (the `ws` tutorial's heartbeat).
    Ping,
    /// Close connection `id` (admins only).
    Kick {
        /// The connection to close.
        id: u64,
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
    NoSuchClient(u64),
    /// Every room has members: no new one can be made.
    TooManyRooms(usize),
    /// The sender's address made this many rooms, all in use: no more.
    TooManyRoomsFromAddress(usize),
    /// In a cluster: the message could not be handed to Redis, and why.
    NotRelayed(&'static str),
    /// In a cluster cut off from Redis: a direct message or a kick for a
    /// connection that is not on this node.
    Unreachable(u64),
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
        }
    }
}

impl std::error::Error for InputError {}

/// The longest `type` the protocol has (`message`): a longer one is unknown
/// without being kept.
const MAX_TYPE_CHARS: usize = 7;

/// One field of a client's frame, as the parser keeps it: its kind of value, and
/// a string only while it is short enough to be valid. Arrays and objects are
/// skipped, never built, and a string over its field's limit is counted, not
/// copied: whatever a frame holds, parsing it allocates no more than the strings
/// the protocol can use, and serde_json's buffer for unescaping a string with
/// escapes (up to twice the string; see `tests/parse_cost.rs`).
#[derive(Debug, Default)]
enum Field {
    /// Not in the frame.
    #[default]
    Absent,
    /// `null`: the same as absent, as it was for the Node original.
    Null,
    Bool(bool),
    /// A whole number from 0 to 2^64 - 1.
    Whole(u64),
    /// A string within its field's limit.
    Text(String),
    /// A string over its field's limit, and how many characters it has.
    LongText(usize),
    /// A negative or fractional number, an array or an object.
    Other,
}

impl Field {
    /// A string field's value: `None` when absent or null; `too_long` says what
    /// a string over the field's limit is.
    fn text(
        self,
        field: &'static str,
        too_long: impl FnOnce(usize) -> InputError,
    ) -> Result<Option<String>, InputError> {
        match self {
            Field::Absent | Field::Null => Ok(None),
            Field::Text(text) => Ok(Some(text)),
            Field::LongText(chars) => Err(too_long(chars)),
            Field::Bool(_) | Field::Whole(_) | Field::Other => {
                Err(InputError::WrongType(field, "a string"))
            }
        }
    }

    /// A whole-number field's value: `None` when absent or null.
    fn whole(self, field: &'static str) -> Result<Option<u64>, InputError> {
        match self {
            Field::Absent | Field::Null => Ok(None),
            Field::Whole(n) => Ok(Some(n)),
            _ => Err(InputError::WrongType(field, "a whole number")),
        }
    }

    /// A true-or-false field's value: false when absent or null.
    fn flag(self, field: &'static str) -> Result<bool, InputError> {
        match self {
            Field::Absent | Field::Null => Ok(false),
            Field::Bool(b) => Ok(b),
            _ => Err(InputError::WrongType(field, "true or false")),
        }
    }

    /// `type`'s value: `message` when there is none.
    fn into_kind(self) -> Result<String, InputError> {
        let kind = self.text("type", |_| InputError::UnknownType)?;
        Ok(kind.unwrap_or_else(|| "message".to_string()))
    }

    /// `name`'s value, if there is one, within its limit.
    fn into_name(self) -> Result<Option<String>, InputError> {
        self.text("name", InputError::NameTooLong)
    }

    /// `msg`'s value, which a frame with text must have: not blank, within its
    /// limit.
    fn into_msg(self) -> Result<String, InputError> {
        let msg = self
            .text("msg", InputError::MessageTooLong)?
            .ok_or(InputError::Missing("msg"))?;
        check_text(&msg)?;
        Ok(msg)
    }

    fn is_present(&self) -> bool {
        !matches!(self, Field::Absent)
    }
}

/// Reads any JSON value into a [`Field`], keeping a string only when it has at
/// most this many characters.
struct Keep(usize);

impl<'de> DeserializeSeed<'de> for Keep {
    type Value = Field;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Field, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Keep {
    type Value = Field;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Field, E> {
        Ok(Field::Bool(b))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Field, E> {
        Ok(Field::Whole(n))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Field, E> {
        Ok(u64::try_from(n).map_or(Field::Other, Field::Whole))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Field, E> {
        Ok(Field::Other)
    }

    fn visit_str<E>(self, text: &str) -> Result<Field, E> {
        let chars = text.chars().count();
        Ok(if chars <= self.0 {
            Field::Text(text.to_owned())
        } else {
            Field::LongText(chars)
        })
    }

    fn visit_unit<E>(self) -> Result<Field, E> {
        Ok(Field::Null)
    }

    fn visit_none<E>(self) -> Result<Field, E> {
        Ok(Field::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Other)
    }
}

/// A key of a client's frame. Any other key is `Unknown`, recognised without
/// being copied; its value is skipped.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Key {
    #[serde(rename = "type")]
    Kind,
    Name,
    Msg,
    ExceptSender,
    Room,
    Since,
    Epoch,
    To,
    Id,
    #[serde(other)]
    Unknown,
}

/// The wire shape of a client's frame: every field any frame has, so that one
/// parse serves all of them. `type` is optional because the Node original's
/// clients never send it. Each field is checked by the frame that uses it: a v1
/// client's extra `id` or `room`, of whatever kind, does not make its message an
/// error. Unknown fields are skipped.
#[derive(Default)]
struct IncomingWire {
    /// The first of these fields given twice, if one was.
    repeated: Option<&'static str>,
    kind: Field,
    name: Field,
    msg: Field,
    except_sender: Field,
    room: Field,
    since: Field,
    epoch: Field,
    to: Field,
    id: Field,
}

impl IncomingWire {
    /// Where `key`'s value goes, with its name and how many characters of a
    /// string are worth keeping; `None` for a key the protocol does not have.
    fn slot(&mut self, key: Key) -> Option<(&mut Field, &'static str, usize)> {
        Some(match key {
            Key::Kind => (&mut self.kind, "type", MAX_TYPE_CHARS),
            Key::Name => (&mut self.name, "name", MAX_NAME_CHARS),
            Key::Msg => (&mut self.msg, "msg", MAX_MSG_CHARS),
            Key::ExceptSender => (&mut self.except_sender, "except_sender", 0),
            Key::Room => (&mut self.room, "room", MAX_ROOM_CHARS),
            Key::Since => (&mut self.since, "since", 0),
            Key::Epoch => (&mut self.epoch, "epoch", 0),
            Key::To => (&mut self.to, "to", 0),
            Key::Id => (&mut self.id, "id", 0),
            Key::Unknown => return None,
        })
    }

    /// Parses a frame's text: a JSON object, each of our fields at most once.
    fn read(text: &str) -> Result<IncomingWire, InputError> {
        let mut json = serde_json::Deserializer::from_str(text);
        let parsed = json
            .deserialize_map(WireVisitor)
            .and_then(|wire| json.end().map(|()| wire));
        let wire = parsed.map_err(|e| InputError::Malformed(JsonFault::from(&e)))?;
        match wire.repeated {
            Some(field) => Err(InputError::Repeated(field)),
            None => Ok(wire),
        }
    }
}

/// Fills an [`IncomingWire`] from a JSON object. A field given twice is noted
/// rather than refused here, so that the error names it in our words.
struct WireVisitor;

impl<'de> Visitor<'de> for WireVisitor {
    type Value = IncomingWire;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IncomingWire, A::Error> {
        let mut wire = IncomingWire::default();
        while let Some(key) = map.next_key::<Key>()? {
            let Some((slot, name, keep)) = wire.slot(key) else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let again = slot.is_present();
            *slot = map.next_value_seed(Keep(keep))?;
            if again {
                wire.repeated.get_or_insert(name);
            }
        }
        Ok(wire)
    }
}

/// Parses and validates one text frame from a chat client.
pub fn parse(text: &str) -> Result<Incoming, InputError> {
    let wire = IncomingWire::read(text)?;
    Ok(match wire.kind.into_kind()?.as_str() {
        "message" => Incoming::Message {
            name: wire.name.into_name()?,
            msg: wire.msg.into_msg()?,
            except_sender: wire.except_sender.flag("except_sender")?,
        },
        "hello" => Incoming::Hello {
            name: wire.name.into_name()?.ok_or(InputError::Missing("name"))?,
        },
        "join" => Incoming::Join {
            room: match wire.room.text("room", |_| InputError::BadRoom)? {
                Some(room) => check_room(room)?,
                None => return Err(InputError::Missing("room")),
            },
            since: wire.since.whole("since")?,
            epoch: wire.epoch.whole("epoch")?,
        },
        "rooms" => Incoming::Rooms,
        "who" => Incoming::Who,
        "direct" => Incoming::Direct {
            to: wire.to.whole("to")?.ok_or(InputError::Missing("to"))?,
            msg: wire.msg.into_msg()?,
        },
        "ping" => Incoming::Ping,
        "kick" => Incoming::Kick {
            id: wire.id.whole("id")?.ok_or(InputError::Missing("id"))?,
        },
        _ => return Err(InputError::UnknownType),
    })
}

/// Parses a v1 chat message: a `message` with its `name`. (The v1 contract, kept
/// for v1-only servers such as `examples/naive.rs`.)
pub fn parse_chat(text: &str) -> Result<ChatMessage, InputError> {
    let wire = IncomingWire::read(text)?;
    if wire.kind.into_kind()? != "message" {
        return Err(InputError::UnknownType);
    }
    Ok(ChatMessage {
        name: wire.name.into_name()?.ok_or(InputError::Missing("name"))?,
        msg: wire.msg.into_msg()?,
    })
}

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

fn check_text(msg: &str) -> Result<(), InputError> {
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
pub struct Member<'a> {
    /// Its connection id.
    pub id: u64,
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
        from: u64,
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
        id: Option<u64>,
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
        id: u64,
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
        id: u64,
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
        members: Vec<Member<'a>>,
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
        from: u64,
        /// The sender's name.
        name: &'a str,
        /// The target's connection id.
        to: u64,
        /// The text.
        msg: &'a str,
        /// The sender's own copy.
        #[serde(skip_serializing_if = "is_false")]
        delivered: bool,
    },
    /// The answer to `ping`.
    Pong,
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

    /// The same frame as one line of plain text, for the plain-text clients. A
    /// person's line starts with `[`, the server's never do (see [`person_line`]).
    pub fn text_line(&self) -> String {
        match self {
            Outgoing::Message { name, msg, .. } => person_line(name, "", msg),
            Outgoing::Notification { msg, .. } => msg.clone(),
            Outgoing::Cluster { msg, .. } => msg.to_string(),
            Outgoing::Welcome {
                id, count, room, ..
            } => format!(
                "welcome: you are {id} in {}, {count} here",
                room.unwrap_or(LOBBY)
            ),
            Outgoing::Joined { room, count, gap } => {
                let gap = if *gap {
                    " (some messages were missed)"
                } else {
                    ""
                };
                format!("joined {room}, {count} here{gap}")
            }
            Outgoing::Hello { name, .. } => format!("hello, {}", one_line(name)),
            Outgoing::Rooms { rooms, .. } => {
                let list: Vec<String> = rooms
                    .iter()
                    .map(|r| format!("{} ({})", r.room, r.count))
                    .collect();
                format!("rooms: {}", list.join(", "))
            }
            Outgoing::Who { room, members, .. } => {
                let list: Vec<String> = members
                    .iter()
                    .map(|m| match m.name {
                        "" => m.id.to_string(),
                        name => format!("{} ({})", one_line(name), m.id),
                    })
                    .collect();
                format!("in {room}: {}", list.join(", "))
            }
            Outgoing::Direct { name, msg, .. } => person_line(name, " (direct)", msg),
            Outgoing::Pong => "pong".to_string(),
            Outgoing::Error { msg } => format!("error: {msg}"),
            Outgoing::Dropped { msg, dropped } => format!("error: {msg} ({dropped} dropped)"),
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

/// How a person without a name shows in a plain-text line.
const NO_NAME: &str = "anonymous";

/// A person's message as a plain-text line: `[alice] hi`, `[anonymous] hi`
/// without a name, `[alice (direct)] psst` for a direct message (`tag`).
///
/// The rule that keeps people from speaking as the server: a person's line
/// always starts with `[`, and none of the server's own lines does (`welcome: …`,
/// `user joined [online: 3]`, `error: …`). And it stays one line: line breaks in
/// the name or the text become spaces, and other control characters (a
/// terminal's escape sequences) and the bidirectional-text controls (which can
/// make a line read from its end) become U+FFFD, so nothing sent can start a line
/// of its own or rewrite one already shown. JSON clients get everything as sent.
pub fn person_line(name: &str, tag: &str, msg: &str) -> String {
    let name = if name.is_empty() { NO_NAME } else { name };
    format!("[{}{tag}] {}", one_line(name), one_line(msg))
}

/// `text` safe to show as (part of) one line: see [`person_line`].
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\r' | '\u{b}' | '\u{c}' | '\u{85}' | '\u{2028}' | '\u{2029}' => ' ',
            '\t' => '\t',
            '\u{200e}'
            | '\u{200f}'
            | '\u{61c}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}' => char::REPLACEMENT_CHARACTER,
            c if c.is_control() => char::REPLACEMENT_CHARACTER,
            c => c,
        })
        .collect()
}

/// A message frame's JSON as its history replay: the same, marked
/// `"history":true`.
pub fn as_history(json: &str) -> String {
    let body = json.strip_suffix('}').unwrap_or(json);
    format!("{body},\"history\":true}}")
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
        from: u64::MAX,
        name: &name,
        msg: &msg,
        room: Some(&room),
    }
    .to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_node_original_shape() {
        let m = parse_chat(r#"{"name":"alice","msg":"hi"}"#).unwrap();
        assert_eq!(m.name, "alice");
        assert_eq!(m.msg, "hi");
    }

    #[test]
    fn accepts_explicit_type_and_ignores_extra_fields() {
        let m = parse_chat(r#"{"type":"message","name":"a","msg":"b","extra":[1,2]}"#).unwrap();
        assert_eq!((m.name.as_str(), m.msg.as_str()), ("a", "b"));
        // v2's fields, with values v1 clients might put there, do not get in the way.
        let m = parse_chat(r#"{"name":"a","msg":"b","id":"x","room":7,"to":null}"#).unwrap();
        assert_eq!(m.msg, "b");
        let m =
            parse(r#"{"msg":"b","id":[1,[2]],"room":{"a":[]},"since":-1.5,"epoch":"x","to":true}"#);
        assert_eq!(
            m,
            Ok(Incoming::Message {
                name: None,
                msg: "b".into(),
                except_sender: false
            })
        );
    }

    #[test]
    fn keeps_text_exactly_as_sent() {
        let m = parse_chat(r#"{"name":"김철수 😀","msg":"<img src=x onerror=alert(1)> \"q\"\n"}"#)
            .unwrap();
        assert_eq!(m.name, "김철수 😀");
        assert_eq!(m.msg, "<img src=x onerror=alert(1)> \"q\"\n");
    }

    #[test]
    fn refuses_each_kind_of_bad_input() {
        type Expectation = fn(&InputError) -> bool;
        let cases: &[(&str, Expectation)] = &[
            ("not json", |e| matches!(e, InputError::Malformed(_))),
            ("[1,2]", |e| matches!(e, InputError::Malformed(_))),
            (r#"{"msg":"hi"}"#, |e| *e == InputError::Missing("name")),
            (r#"{"name":"a"}"#, |e| *e == InputError::Missing("msg")),
            (r#"{"name":5,"msg":"hi"}"#, |e| {
                *e == InputError::WrongType("name", "a string")
            }),
            (
                r#"["message","a","hi"]"#,
                |e| matches!(e, InputError::Malformed(f) if f.problem == JsonProblem::NotAnObject),
            ),
            (
                r#"{"name":"a","msg":"hi""#,
                |e| matches!(e, InputError::Malformed(f) if f.problem == JsonProblem::Truncated),
            ),
            (
                r#"{"name":"a","msg":"hi"} x"#,
                |e| matches!(e, InputError::Malformed(f) if f.problem == JsonProblem::Syntax),
            ),
            (r#"{"name":"a","msg":"hi","name":"b"}"#, |e| {
                *e == InputError::Repeated("name")
            }),
            (r#"{"name":"a","msg":null}"#, |e| {
                *e == InputError::Missing("msg")
            }),
            (r#"{"type":"shout","name":"a","msg":"x"}"#, |e| {
                *e == InputError::UnknownType
            }),
            (r#"{"type":7,"name":"a","msg":"x"}"#, |e| {
                *e == InputError::WrongType("type", "a string")
            }),
            (r#"{"name":"a","msg":""}"#, |e| {
                *e == InputError::EmptyMessage
            }),
            (r#"{"name":"a","msg":"  \n"}"#, |e| {
                *e == InputError::EmptyMessage
            }),
        ];
        for (input, expected) in cases {
            let err = parse_chat(input).expect_err(input);
            assert!(expected(&err), "{input}: got {err:?}");
        }
    }

    /// The bytes of `error`'s frame on the wire, in both formats: the longer.
    fn error_frame_bytes(error: &InputError) -> usize {
        let frame = Outgoing::Error {
            msg: error.to_string(),
        };
        let json = crate::frame::text(&frame.to_json()).len();
        json.max(crate::frame::text(&frame.text_line()).len())
    }

    #[test]
    fn errors_never_quote_the_frame_and_stay_short() {
        // Each value starts with a marker no error text has; the long ones are the
        // largest frame a client may send (--max-message's default, 64 KiB).
        let values = [
            format!("ZQJ{}", "\u{ad}".repeat(32 * 1024)),
            format!("ZQJ{}", "\u{1}\n\"\\\u{7f}".repeat(12 * 1024)),
            "ZQJ\u{202e}<script>\r\n\u{0}".to_string(),
        ];
        let keys = [
            "type",
            "name",
            "msg",
            "room",
            "since",
            "epoch",
            "to",
            "id",
            "except_sender",
            "extra",
        ];
        let kinds = ["message", "hello", "join", "direct", "kick", "who", "nope"];
        let mut frames = Vec::new();
        for value in &values {
            let quoted = serde_json::to_string(value).unwrap();
            for key in keys {
                for kind in kinds {
                    frames.push(format!(r#"{{"type":"{kind}",{key:?}:{quoted}}}"#));
                    frames.push(format!(r#"{{{key:?}:{quoted},"type":"{kind}"}}"#));
                }
                frames.push(format!(
                    r#"{{{key:?}:[{quoted},{{"a":{quoted}}}],"name":"a"}}"#
                ));
            }
            frames.push(format!(r#"{{{quoted}:1,"name":"a","msg":"x"}}"#));
            frames.push(quoted.clone());
            frames.push(format!("[{quoted}]"));
            frames.push(format!(r#"{{"name":{quoted}"#));
            frames.push(format!(r#"{{"msg":{quoted},"name":"#));
            frames.push(value.clone());
            frames.push(format!(r#"{{"name":"a","msg":"{value}"}}"#));
            frames.push(format!(r#"{{"name":"a","msg":"x"}}{value}"#));
        }
        let mut refused = 0;
        for frame in &frames {
            for error in [parse(frame).err(), parse_chat(frame).err()]
                .into_iter()
                .flatten()
            {
                refused += 1;
                let text = error.to_string();
                let head: String = frame.chars().take(60).collect();
                assert!(
                    error_frame_bytes(&error) <= MAX_ERROR_FRAME,
                    "{head}: {text}"
                );
                assert!(
                    !text.contains("ZQJ") && !text.contains(['\u{ad}', '\u{1}', '\u{202e}']),
                    "{head}: {text}"
                );
            }
        }
        assert!(
            refused > frames.len(),
            "{refused} of {} frames",
            frames.len()
        );
    }

    #[test]
    fn every_error_fits_its_bound_with_the_largest_numbers() {
        let worst = JsonFault {
            problem: JsonProblem::Truncated,
            line: usize::MAX,
            column: usize::MAX,
        };
        let errors = [
            InputError::Malformed(worst),
            InputError::Malformed(JsonFault {
                problem: JsonProblem::NotAnObject,
                ..worst
            }),
            InputError::UnknownType,
            InputError::Missing("except_sender"),
            InputError::WrongType("except_sender", "a whole number"),
            InputError::Repeated("except_sender"),
            InputError::NoName,
            InputError::EmptyMessage,
            InputError::NameTooLong(usize::MAX),
            InputError::MessageTooLong(usize::MAX),
            InputError::BadRoom,
            InputError::Binary,
            InputError::TooFast { rate: u32::MAX },
            InputError::NotAllowed,
            InputError::NoSuchClient(u64::MAX),
            InputError::TooManyRooms(usize::MAX),
            InputError::NotRelayed("the chat is busy: try again"),
            InputError::Unreachable(u64::MAX),
        ];
        for error in errors {
            assert!(error_frame_bytes(&error) <= MAX_ERROR_FRAME, "{error}");
        }
    }

    #[test]
    fn parses_every_v2_frame() {
        let cases = [
            (
                r#"{"msg":"hi"}"#,
                Incoming::Message {
                    name: None,
                    msg: "hi".into(),
                    except_sender: false,
                },
            ),
            (
                r#"{"name":"a","msg":"hi","except_sender":true}"#,
                Incoming::Message {
                    name: Some("a".into()),
                    msg: "hi".into(),
                    except_sender: true,
                },
            ),
            (
                r#"{"type":"hello","name":"alice"}"#,
                Incoming::Hello {
                    name: "alice".into(),
                },
            ),
            (
                r#"{"type":"join","room":"games-2"}"#,
                Incoming::Join {
                    room: "games-2".into(),
                    since: None,
                    epoch: None,
                },
            ),
            (
                r#"{"type":"join","room":"r","since":41,"epoch":5}"#,
                Incoming::Join {
                    room: "r".into(),
                    since: Some(41),
                    epoch: Some(5),
                },
            ),
            (r#"{"type":"rooms"}"#, Incoming::Rooms),
            (r#"{"type":"who"}"#, Incoming::Who),
            (
                r#"{"type":"direct","to":9,"msg":"psst"}"#,
                Incoming::Direct {
                    to: 9,
                    msg: "psst".into(),
                },
            ),
            (r#"{"type":"ping"}"#, Incoming::Ping),
            (r#"{"type":"kick","id":9}"#, Incoming::Kick { id: 9 }),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn refuses_bad_v2_frames() {
        let cases = [
            (r#"{"type":"join"}"#, InputError::Missing("room")),
            (r#"{"type":"join","room":"a b"}"#, InputError::BadRoom),
            (r#"{"type":"join","room":""}"#, InputError::BadRoom),
            (
                r#"{"type":"join","room":"an-overly-long-room-name-of-33-ch"}"#,
                InputError::BadRoom,
            ),
            (
                r#"{"type":"join","room":["lobby"]}"#,
                InputError::WrongType("room", "a string"),
            ),
            (
                r#"{"type":"join","room":"r","since":-1}"#,
                InputError::WrongType("since", "a whole number"),
            ),
            (r#"{"type":"hello"}"#, InputError::Missing("name")),
            (r#"{"type":"direct","msg":"x"}"#, InputError::Missing("to")),
            (r#"{"type":"direct","to":1}"#, InputError::Missing("msg")),
            (r#"{"type":"kick"}"#, InputError::Missing("id")),
            (
                r#"{"msg":"x","except_sender":"yes"}"#,
                InputError::WrongType("except_sender", "true or false"),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), Err(expected), "{text}");
        }
        let long = "r".repeat(MAX_ROOM_CHARS + 1);
        assert!(check_room(long).is_err());
        assert!(check_room("r".repeat(MAX_ROOM_CHARS)).is_ok());
    }

    #[test]
    fn limits_count_characters_not_bytes() {
        let name = "가".repeat(MAX_NAME_CHARS); // 96 bytes, 32 characters
        assert!(parse_chat(&format!(r#"{{"name":"{name}","msg":"x"}}"#)).is_ok());
        let long_name = "a".repeat(MAX_NAME_CHARS + 1);
        assert_eq!(
            parse_chat(&format!(r#"{{"name":"{long_name}","msg":"x"}}"#)),
            Err(InputError::NameTooLong(MAX_NAME_CHARS + 1))
        );
        let msg = "é".repeat(MAX_MSG_CHARS);
        assert!(parse_chat(&format!(r#"{{"name":"a","msg":"{msg}"}}"#)).is_ok());
        let long_msg = "x".repeat(MAX_MSG_CHARS + 1);
        assert_eq!(
            parse_chat(&format!(r#"{{"name":"a","msg":"{long_msg}"}}"#)),
            Err(InputError::MessageTooLong(MAX_MSG_CHARS + 1))
        );
    }

    #[test]
    fn the_largest_frames_fit_their_bounds() {
        let json = largest_message_json();
        assert!(json.len() > 6 * MAX_MSG_CHARS, "escaped: {}", json.len());
        assert!(crate::frame::text(&json).len() <= MAX_MESSAGE_FRAME);
        let name = "\u{1}".repeat(MAX_NAME_CHARS);
        let room = "r".repeat(MAX_ROOM_CHARS);
        for event in [Presence::Join, Presence::Leave, Presence::Kick] {
            let Outgoing::Notification {
                msg, count, users, ..
            } = Outgoing::presence(event, usize::MAX, usize::MAX)
            else {
                unreachable!("presence makes a notification")
            };
            let json = Outgoing::Notification {
                msg,
                count,
                event,
                users,
                room: Some(&room),
                id: Some(u64::MAX),
                name: Some(&name),
            }
            .to_json();
            assert!(
                crate::frame::text(&json).len() <= MAX_PRESENCE_FRAME,
                "{json}"
            );
        }
    }

    #[test]
    fn what_a_presence_frame_is_charged_covers_its_size() {
        for (name, room) in [("", LOBBY), ("alice", "homework"), ("\"a\\b\"", "r-1")] {
            let Outgoing::Notification {
                msg, count, users, ..
            } = Outgoing::presence(Presence::Leave, usize::MAX, usize::MAX)
            else {
                unreachable!("presence makes a notification")
            };
            let json = Outgoing::Notification {
                msg,
                count,
                event: Presence::Leave,
                users,
                room: Some(room),
                id: Some(u64::MAX),
                name: Some(name),
            }
            .to_json();
            let size = crate::frame::text(&json).len();
            let charged = presence_frame_size(name, room);
            assert!(
                size <= charged && charged < 2 * size,
                "{size} charged {charged}: {json}"
            );
        }
    }

    #[test]
    fn outgoing_frames_keep_the_v1_shape_and_add_v2_fields() {
        let message = |room| Outgoing::Message {
            id: 7,
            ts: 1,
            from: 3,
            name: "a\"b",
            msg: "<b>",
            room,
        };
        assert_eq!(
            message(None).to_json(),
            r#"{"type":"message","id":7,"ts":1,"from":3,"name":"a\"b","msg":"<b>"}"#
        );
        assert_eq!(
            message(Some("lobby")).to_json(),
            r#"{"type":"message","id":7,"ts":1,"from":3,"name":"a\"b","msg":"<b>","room":"lobby"}"#
        );
        assert_eq!(
            as_history(&message(Some("r")).to_json()),
            r#"{"type":"message","id":7,"ts":1,"from":3,"name":"a\"b","msg":"<b>","room":"r","history":true}"#
        );
        let json = Outgoing::presence(Presence::Join, 1, 3).to_json();
        assert_eq!(
            json,
            r#"{"type":"notification","msg":"user joined [online: 3]","count":3,"event":"join","users":1}"#
        );
        let json = Outgoing::presence(Presence::Leave, 4, 10).to_json();
        assert!(
            json.contains(r#""msg":"4 users left [online: 10]""#),
            "{json}"
        );
        let err = Outgoing::Error {
            msg: InputError::EmptyMessage.to_string(),
        };
        assert_eq!(err.to_json(), r#"{"type":"error","msg":"msg is empty"}"#);
        let joined = Outgoing::Joined {
            room: "r",
            count: 2,
            gap: false,
        };
        assert_eq!(
            joined.to_json(),
            r#"{"type":"joined","room":"r","count":2}"#
        );
    }

    #[test]
    fn plain_text_lines() {
        let message = |name| Outgoing::Message {
            id: 1,
            ts: 1,
            from: 1,
            name,
            msg: "hi",
            room: Some("lobby"),
        };
        assert_eq!(message("alice").text_line(), "[alice] hi");
        assert_eq!(message("").text_line(), "[anonymous] hi");
        assert_eq!(
            Outgoing::presence(Presence::Join, 1, 3).text_line(),
            "user joined [online: 3]"
        );
        let welcome = Outgoing::Welcome {
            id: 7,
            count: 3,
            protocol: SUBPROTOCOL,
            room: Some("lobby"),
            epoch: Some(1),
        };
        assert_eq!(welcome.text_line(), "welcome: you are 7 in lobby, 3 here");
        let error = Outgoing::Error {
            msg: "msg is empty".into(),
        };
        assert_eq!(error.text_line(), "error: msg is empty");
        let direct = Outgoing::Direct {
            id: 2,
            ts: 1,
            from: 1,
            name: "bob",
            to: 7,
            msg: "psst\nerror: x",
            delivered: false,
        };
        assert_eq!(direct.text_line(), "[bob (direct)] psst error: x");
    }

    #[test]
    fn the_servers_own_lines_never_start_as_a_persons_do() {
        let room = "r".repeat(MAX_ROOM_CHARS);
        let own = [
            Outgoing::presence(Presence::Kick, 2, 3),
            Outgoing::Cluster {
                msg: "this server lost the rest of the chat",
                count: 1,
                event: "cluster",
                room: &room,
                connected: false,
                gap: true,
                epoch: 1,
            },
            Outgoing::Welcome {
                id: 1,
                count: 1,
                protocol: SUBPROTOCOL_TEXT,
                room: None,
                epoch: None,
            },
            Outgoing::Joined {
                room: &room,
                count: 1,
                gap: true,
            },
            Outgoing::Hello { id: 1, name: "[a]" },
            Outgoing::Rooms {
                rooms: vec![RoomCount {
                    room: &room,
                    count: 1,
                }],
                more: 0,
            },
            Outgoing::Who {
                room: &room,
                members: vec![Member { id: 1, name: "[a]" }],
                more: 0,
            },
            Outgoing::Pong,
            Outgoing::Error {
                msg: InputError::EmptyMessage.to_string(),
            },
        ];
        for frame in own {
            let line = frame.text_line();
            assert!(!line.starts_with('['), "{line}");
        }
        assert_eq!(
            person_line("", "", "\u{202e}x\u{1b}\u{2028}\ty"),
            "[anonymous] \u{fffd}x\u{fffd} \ty"
        );
    }
}
