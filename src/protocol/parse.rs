//! Reading a client's frame: JSON text into an [`Incoming`], checked against the
//! protocol's bounds while it is read, so a hostile frame costs no more than a
//! valid one (see [`Field`]).

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{
    ChatMessage, ClientId, Incoming, InputError, JsonFault, MAX_MSG_CHARS, MAX_NAME_CHARS,
    MAX_ROOM_CHARS, check_room, check_text,
};

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
            to: ClientId(wire.to.whole("to")?.ok_or(InputError::Missing("to"))?),
            msg: wire.msg.into_msg()?,
        },
        "ping" => Incoming::Ping,
        "kick" => Incoming::Kick {
            id: ClientId(wire.id.whole("id")?.ok_or(InputError::Missing("id"))?),
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
