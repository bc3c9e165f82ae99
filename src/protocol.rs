//! Protocol v1: what clients send, what the server sends back, and the rules that
//! decide whether an incoming chat message is accepted.
//!
//! No I/O lives here: a reader thread hands us the text of a WebSocket message and
//! gets back either a [`ChatMessage`] or an [`InputError`] to report to its sender;
//! the hub turns [`Outgoing`] values into JSON. `docs/PROTOCOL.md` is the same
//! contract in prose.

use serde::{Deserialize, Serialize};

/// The subprotocol we select when a client offers it (`Sec-WebSocket-Protocol`).
pub const SUBPROTOCOL: &str = "threadchat.v1";

/// Longest accepted `name`, in characters (Unicode scalar values), not bytes, so a
/// Korean name gets the same room as a Latin one.
pub const MAX_NAME_CHARS: usize = 32;

/// Longest accepted `msg`, in characters.
pub const MAX_MSG_CHARS: usize = 2_000;

/// The most bytes one relayed chat message takes on the wire, frame header
/// included: every character of the longest name and text escaped by JSON to six
/// bytes (`\u0001`), and the largest ids. The hub's batch bound and the smallest
/// useful `--max-backlog` are worked out from it.
pub const MAX_MESSAGE_FRAME: usize = 13 * 1024;

/// The most bytes one join or leave notification takes on the wire.
pub const MAX_PRESENCE_FRAME: usize = 256;

/// A chat message that passed validation, ready for the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Who the sender says they are. Relayed exactly as sent: escaping for display is
    /// the page's job, and JSON encoding on the way out keeps it well-formed.
    pub name: String,
    /// The text, exactly as sent.
    pub msg: String,
}

/// Why an incoming message was refused. Its `Display` text is what the sender sees
/// in the `error` frame, so it says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputError {
    /// Not JSON, or JSON of the wrong shape (missing field, wrong type).
    Malformed(String),
    /// `type` present but not `"message"`.
    UnknownType(String),
    /// `msg` empty or only whitespace.
    EmptyMessage,
    /// `name` longer than [`MAX_NAME_CHARS`].
    NameTooLong(usize),
    /// `msg` longer than [`MAX_MSG_CHARS`].
    MessageTooLong(usize),
    /// A binary WebSocket frame on the chat endpoint.
    Binary,
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputError::Malformed(why) => write!(f, "invalid message: {why}"),
            InputError::UnknownType(kind) => {
                write!(
                    f,
                    "unknown message type {kind:?}: only \"message\" is accepted"
                )
            }
            InputError::EmptyMessage => write!(f, "msg is empty"),
            InputError::NameTooLong(n) => {
                write!(
                    f,
                    "name is {n} characters long; at most {MAX_NAME_CHARS} are allowed"
                )
            }
            InputError::MessageTooLong(n) => {
                write!(
                    f,
                    "msg is {n} characters long; at most {MAX_MSG_CHARS} are allowed"
                )
            }
            InputError::Binary => {
                write!(
                    f,
                    "binary frames are not accepted here: send JSON as a text frame"
                )
            }
        }
    }
}

impl std::error::Error for InputError {}

/// The wire shape of a client's message. `type` is optional because the Node
/// original's clients never send it; unknown extra fields are ignored.
#[derive(Deserialize)]
struct IncomingWire {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    name: String,
    msg: String,
}

/// Parses and validates one text message from a chat client.
pub fn parse_chat(text: &str) -> Result<ChatMessage, InputError> {
    let wire: IncomingWire =
        serde_json::from_str(text).map_err(|e| InputError::Malformed(e.to_string()))?;
    if let Some(kind) = wire.kind
        && kind != "message"
    {
        return Err(InputError::UnknownType(kind));
    }
    let name_chars = wire.name.chars().count();
    if name_chars > MAX_NAME_CHARS {
        return Err(InputError::NameTooLong(name_chars));
    }
    if wire.msg.trim().is_empty() {
        return Err(InputError::EmptyMessage);
    }
    let msg_chars = wire.msg.chars().count();
    if msg_chars > MAX_MSG_CHARS {
        return Err(InputError::MessageTooLong(msg_chars));
    }
    Ok(ChatMessage {
        name: wire.name,
        msg: wire.msg,
    })
}

/// Whether a notification reports people arriving or leaving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// Someone connected.
    Join,
    /// Someone disconnected.
    Leave,
}

/// Everything the server sends to chat clients. Serialised with a `type` tag, so
/// `Outgoing::Message { .. }` becomes `{"type":"message",...}`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Outgoing<'a> {
    /// A chat message, to everyone including its sender.
    Message {
        /// Position in the one total order every client sees (starts at 1).
        id: u64,
        /// Milliseconds since the Unix epoch when the hub relayed it.
        ts: u64,
        /// The sender's connection id (its `welcome` id), so a page can tell its own
        /// messages from others' even when two people pick the same name.
        from: u64,
        /// The sender's name, as sent.
        name: &'a str,
        /// The text, as sent.
        msg: &'a str,
    },
    /// People joined or left; `count` is how many chat clients are connected now.
    Notification {
        /// Human-readable, with the count in it (as the Node original did).
        msg: String,
        /// Connected chat clients after this event.
        count: usize,
        /// `join` or `leave`.
        event: Presence,
        /// How many joined or left at once (a storm of joins is announced in runs).
        users: usize,
    },
    /// First frame a new client gets: who it is and how many are here.
    Welcome {
        /// This connection's id (also in the server's log lines).
        id: u64,
        /// Connected chat clients, this one included.
        count: usize,
        /// Protocol version spoken on this connection.
        protocol: &'static str,
    },
    /// The sender's last message was refused; the connection stays open.
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

    /// A notification that `users` people joined (or left), leaving `count`
    /// connected, with the count in its text.
    pub fn presence(event: Presence, users: usize, count: usize) -> Outgoing<'static> {
        let verb = match event {
            Presence::Join => "joined",
            Presence::Leave => "left",
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
        }
    }
}

/// The longest message frame's JSON: every character of the longest name and text
/// one that JSON escapes to six bytes, and the largest ids.
#[cfg(test)]
pub(crate) fn largest_message_json() -> String {
    let name = "\u{1}".repeat(MAX_NAME_CHARS);
    let msg = "\u{1}".repeat(MAX_MSG_CHARS);
    Outgoing::Message {
        id: u64::MAX,
        ts: u64::MAX,
        from: u64::MAX,
        name: &name,
        msg: &msg,
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
            (r#"{"msg":"hi"}"#, |e| matches!(e, InputError::Malformed(_))),
            (r#"{"name":"a"}"#, |e| matches!(e, InputError::Malformed(_))),
            (r#"{"name":5,"msg":"hi"}"#, |e| {
                matches!(e, InputError::Malformed(_))
            }),
            (r#"{"name":"a","msg":null}"#, |e| {
                matches!(e, InputError::Malformed(_))
            }),
            (r#"{"type":"join","name":"a","msg":"x"}"#, |e| {
                matches!(e, InputError::UnknownType(_))
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
        for event in [Presence::Join, Presence::Leave] {
            let json = Outgoing::presence(event, usize::MAX, usize::MAX).to_json();
            assert!(
                crate::frame::text(&json).len() <= MAX_PRESENCE_FRAME,
                "{json}"
            );
        }
    }

    #[test]
    fn outgoing_frames_have_the_v1_shape() {
        let json = Outgoing::Message {
            id: 7,
            ts: 1,
            from: 3,
            name: "a\"b",
            msg: "<b>",
        }
        .to_json();
        assert_eq!(
            json,
            r#"{"type":"message","id":7,"ts":1,"from":3,"name":"a\"b","msg":"<b>"}"#
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
    }
}
