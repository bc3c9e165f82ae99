//! The plain-text format (`/text`, the `chatting` subprotocol): every frame one
//! line a person can read, for `websocat` and the `websocket` package's terminal
//! clients. Nothing a client sends can pass for the server's own lines.

use crate::protocol::{LOBBY, Outgoing};

/// A frame as one line of plain text. A person's line starts with `[`, the
/// server's never do (see [`person_line`]).
pub fn spell(frame: &Outgoing<'_>) -> String {
    match frame {
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
        Outgoing::Login { name, .. } => format!("{} has joined", one_line(name)),
        Outgoing::Error { msg } => format!("error: {msg}"),
        Outgoing::Dropped { msg, dropped } => format!("error: {msg} ({dropped} dropped)"),
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

/// A history entry (a message's JSON) replayed as a line. Rare (a plain-text
/// client joining): the line is read back from the JSON rather than a second copy
/// of every message kept.
pub fn replay(json: &str) -> Option<String> {
    let line = serde_json::from_str::<HistoryLine>(json).ok()?;
    Some(person_line(&line.name, "", &line.msg))
}

/// What a plain-text history line needs of a message's JSON.
#[derive(serde::Deserialize)]
struct HistoryLine {
    name: String,
    msg: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        ClientId, InputError, MAX_ROOM_CHARS, Presence, RoomCount, SUBPROTOCOL, SUBPROTOCOL_TEXT,
        WhoEntry,
    };

    #[test]
    fn plain_text_lines() {
        let message = |name| Outgoing::Message {
            id: 1,
            ts: 1,
            from: ClientId(1),
            name,
            msg: "hi",
            room: Some("lobby"),
        };
        assert_eq!(spell(&message("alice")), "[alice] hi");
        assert_eq!(spell(&message("")), "[anonymous] hi");
        assert_eq!(
            spell(&Outgoing::presence(Presence::Join, 1, 3)),
            "user joined [online: 3]"
        );
        let welcome = Outgoing::Welcome {
            id: ClientId(7),
            count: 3,
            protocol: SUBPROTOCOL,
            room: Some("lobby"),
            epoch: Some(1),
        };
        assert_eq!(spell(&welcome), "welcome: you are 7 in lobby, 3 here");
        let error = Outgoing::Error {
            msg: "msg is empty".into(),
        };
        assert_eq!(spell(&error), "error: msg is empty");
        let direct = Outgoing::Direct {
            id: 2,
            ts: 1,
            from: ClientId(1),
            name: "bob",
            to: ClientId(7),
            msg: "psst\nerror: x",
            delivered: false,
        };
        assert_eq!(spell(&direct), "[bob (direct)] psst error: x");
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
                id: ClientId(1),
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
            Outgoing::Hello {
                id: ClientId(1),
                name: "[a]",
            },
            Outgoing::Rooms {
                rooms: vec![RoomCount {
                    room: &room,
                    count: 1,
                }],
                more: 0,
            },
            Outgoing::Who {
                room: &room,
                members: vec![WhoEntry {
                    id: ClientId(1),
                    name: "[a]",
                }],
                more: 0,
            },
            Outgoing::Pong,
            Outgoing::Error {
                msg: InputError::EmptyMessage.to_string(),
            },
        ];
        for frame in own {
            let line = spell(&frame);
            assert!(!line.starts_with('['), "{line}");
        }
        assert_eq!(
            person_line("", "", "\u{202e}x\u{1b}\u{2028}\ty"),
            "[anonymous] \u{fffd}x\u{fffd} \ty"
        );
    }
}
