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
    let m = parse(r#"{"msg":"b","id":[1,[2]],"room":{"a":[]},"since":-1.5,"epoch":"x","to":true}"#);
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
    let m =
        parse_chat(r#"{"name":"김철수 😀","msg":"<img src=x onerror=alert(1)> \"q\"\n"}"#).unwrap();
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
    json.max(crate::frame::text(&crate::format::text::spell(&frame)).len())
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
        InputError::NoSuchClient(ClientId(u64::MAX)),
        InputError::TooManyRooms(usize::MAX),
        InputError::NotRelayed("the chat is busy: try again"),
        InputError::Unreachable(ClientId(u64::MAX)),
        InputError::Unconfirmed(ClientId(u64::MAX)),
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
                to: ClientId(9),
                msg: "psst".into(),
            },
        ),
        (r#"{"type":"ping"}"#, Incoming::Ping),
        (
            r#"{"type":"kick","id":9}"#,
            Incoming::Kick { id: ClientId(9) },
        ),
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
            id: Some(ClientId(u64::MAX)),
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
            id: Some(ClientId(u64::MAX)),
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
        from: ClientId(3),
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
        crate::format::json::replay(&message(Some("r")).to_json()),
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
