//! The bridge's own tests: what needs no Redis.

use std::collections::HashMap;
use std::path::Path;

use super::access::redacted;
use super::*;
use crate::event::{DirectMessage, Location, Publish, RelayedMessage};
use crate::protocol::{self, ClientId};

fn entry(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_redis_url_is_shown_without_its_password() {
    for (url, shown) in [
        (
            "redis://:s3cret@10.0.0.5:6379/",
            "redis://:***@10.0.0.5:6379/",
        ),
        (
            "redis://chat:s3cret@redis:6379/2",
            "redis://chat:***@redis:6379/2",
        ),
        ("rediss://chat:s3cret@redis/", "rediss://chat:***@redis/"),
        // Unescaped `@`, `/`, `:` and `?` in the password: the last `@` ends it.
        ("redis://chat:s3/c@r:e?t@redis/", "redis://chat:***@redis/"),
        // A password without its `:` is a user name to the URL, but hidden too.
        ("redis://s3cret@redis/", "redis://***@redis/"),
        ("s3cret@redis:6379", "***@redis:6379"),
        (
            "redis+unix:///run/redis.sock?user=chat&pass=s3cret&db=1",
            "redis+unix:///run/redis.sock?user=chat&pass=***&db=1",
        ),
        ("redis://10.0.0.5:6379/", "redis://10.0.0.5:6379/"),
        (
            "rediss://redis:6379/#insecure",
            "rediss://redis:6379/#insecure",
        ),
    ] {
        assert_eq!(redacted(url), shown, "{url}");
    }
}

#[test]
fn a_bad_redis_url_or_ca_is_an_error_that_hides_the_password() {
    let access = |url: &str, ca: Option<&Path>| RedisAccess::new(url, ca).err().unwrap();
    for url in [
        "redis://:s3cret@redis:port/",
        "redis://:s3cret@redis/not-a-db",
        "http://:s3cret@redis/",
    ] {
        let error = access(url, None);
        assert!(error.starts_with("--redis "), "{error}");
        assert!(error.contains(":***@redis"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
    }
    let dir = std::env::temp_dir().join(format!("threadchat-redis-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("not-pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let error = access("rediss://:s3cret@redis/", Some(&not_pem));
    assert!(error.contains("no PEM certificate"), "{error}");
    let missing = dir.join("missing.pem");
    let error = access("rediss://:s3cret@redis/", Some(&missing));
    assert!(error.starts_with("--redis-ca "), "{error}");
    let ca = dir.join("ca.pem");
    let made = rcgen::generate_simple_self_signed(vec!["redis".to_string()]).unwrap();
    std::fs::write(&ca, made.cert.pem()).unwrap();
    assert!(RedisAccess::new("rediss://:s3cret@redis/", Some(&ca)).is_ok());
    // Roots for a URL without TLS: a mistake, said so.
    let error = access("redis://:s3cret@redis/", Some(&ca));
    assert!(error.contains("rediss://"), "{error}");
    assert!(!error.contains("s3cret"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Entry `id` of node 2 whose items took `taken` ids, holding `items` (JSON).
fn batch(id: &str, taken: u64, items: &str) -> Option<Vec<Event>> {
    let fields = entry(&[
        ("node", "2"),
        ("said", &taken.to_string()),
        ("items", items),
    ]);
    entry::events(id, &fields)
}

const HI: &str = r#"{"r":"lobby","f":7,"n":"ann","m":"hi","t":1}"#;

#[test]
fn a_batch_s_items_take_its_ids_in_their_order() {
    // Three ids up to 12: 10, 11 and 12; the seat between them takes none.
    let seat = r#"{"k":"seat","r":"lobby","f":8589934593,"n":"bob"}"#;
    let kick = r#"{"k":"kick","f":7,"o":9}"#;
    let items = format!("[{HI},{seat},{HI},{kick}]");
    let events = batch("12-1", 3, &items).expect("a batch");
    let numbers: Vec<u64> = events
        .iter()
        .map(|event| match event {
            Event::Relayed(RelayedMessage { id, .. }) => *id,
            Event::RelayedSeat { entry, .. } => *entry,
            Event::RelayedKick { id, .. } => *id,
            _ => panic!("a message, a seat or a kick"),
        })
        .collect();
    assert_eq!(numbers, [10, 10, 11, 12]);
    assert!(matches!(
        events[3],
        Event::RelayedKick {
            id: 12,
            target: ClientId(9),
            by: ClientId(7)
        }
    ));
    // What `said` says must be what the items take.
    assert!(batch("12-1", 2, &items).is_none());
    assert!(batch("12-1", 4, &items).is_none());
    // Items that take no id follow the last id given.
    let Some(events) = batch("12-2", 0, &format!("[{seat}]")) else {
        panic!("a seat")
    };
    assert!(matches!(events[..], [Event::RelayedSeat { entry: 12, .. }]));
}

#[test]
fn what_a_node_appends_is_what_the_others_read() {
    let publish = [
        Publish::message(
            "lobby",
            ClientId(7),
            protocol::ChatMessage {
                name: "ann".into(),
                msg: "hi \"there\"".into(),
            },
            true,
            1,
        ),
        Publish::seats(
            vec![(
                ClientId(8_589_934_593),
                Location {
                    room: "games".into(),
                    name: "bob".into(),
                },
            )],
            2,
            7,
        ),
    ];
    let items = entry::items_of(&publish);
    let Some(events) = batch("5-1", 1, &items) else {
        panic!("{items}")
    };
    let [
        Event::Relayed(message),
        Event::RelayedSeats {
            node: 2,
            seats,
            offer: 7,
            ..
        },
    ] = &events[..]
    else {
        panic!("a message and a seats item")
    };
    assert_eq!(
        (message.id, message.msg.as_str(), message.except_sender),
        (5, "hi \"there\"", true)
    );
    assert_eq!(seats[0].1.room, "games");
}

#[test]
fn an_entry_outside_the_protocol_s_bounds_is_not_a_message() {
    assert!(matches!(
        batch("5-1", 1, &format!("[{HI}]")).as_deref(),
        Some([Event::Relayed(RelayedMessage { id: 5, .. })])
    ));
    let long = "x".repeat(protocol::MAX_MSG_CHARS + 1);
    for (key, bad) in [
        ("m", serde_json::json!(long)),
        ("m", serde_json::json!(" ")),
        (
            "n",
            serde_json::json!("n".repeat(protocol::MAX_NAME_CHARS + 1)),
        ),
        ("r", serde_json::json!("no spaces")),
        ("r", serde_json::json!("")),
        ("f", serde_json::json!("seven")),
    ] {
        let mut item: serde_json::Value = serde_json::from_str(HI).unwrap();
        item[key] = bad.clone();
        // One bad item and the whole entry is suspect.
        let items = format!("[{HI},{item}]");
        assert!(batch("6-1", 2, &items).is_none(), "{key} = {bad}");
    }
    let items = format!("[{HI}]");
    assert!(batch("not-an-id", 1, &items).is_none());
    assert!(batch("5-1", 1, "not json").is_none());
    // Id 0, which no node gives, would underflow the hub's arithmetic.
    assert!(batch("0-1", 1, &items).is_none());
    // Nor one a page cannot read exactly, which would overflow it too.
    assert!(batch("9007199254740992-1", 1, &items).is_none());
    assert!(batch("9007199254740991-1", 1, &items).is_some());
    // A direct message (no room) is checked the same way.
    let direct = r#"[{"f":7,"n":"ann","m":"psst","t":1,"o":9}]"#;
    assert!(matches!(
        batch("6-1", 1, direct).as_deref(),
        Some([Event::RelayedDirect {
            direct: DirectMessage {
                to: ClientId(9),
                ..
            },
            ..
        }])
    ));
    let direct = direct.replace("psst", &long);
    assert!(batch("6-1", 1, &direct).is_none());
}

#[test]
fn seat_items_are_read_within_the_protocol_s_bounds() {
    let seat = |room: &str, name: &str| {
        let item = serde_json::json!({"k": "seat", "r": room, "f": 8_589_934_593u64, "n": name});
        batch("9-2", 0, &format!("[{item}]"))
    };
    let in_lobby = seat("lobby", "bob");
    let Some(
        [
            Event::RelayedSeat {
                entry: 9,
                id: ClientId(8_589_934_593),
                seat: Some(Location { room, name }),
                offer: 0,
            },
        ],
    ) = in_lobby.as_deref()
    else {
        panic!("a seat in the lobby")
    };
    assert_eq!((room.as_str(), name.as_str()), ("lobby", "bob"));
    assert!(matches!(
        seat("", "").as_deref(),
        Some([Event::RelayedSeat { seat: None, .. }])
    ));
    assert!(seat("no room!", "bob").is_none());
    assert!(seat("lobby", &"x".repeat(100)).is_none());
    // A seats item: the ones out of bounds left out, the rest kept.
    let seats = r#"[{"k":"seats","s":[[8589934593,"lobby","bob"],[8589934594,"no room!","x"]]}]"#;
    let read = batch("10-2", 0, seats);
    let Some(
        [
            Event::RelayedSeats {
                node: 2,
                seats: read,
                ..
            },
        ],
    ) = read.as_deref()
    else {
        panic!("a seats entry")
    };
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].0, ClientId(8_589_934_593));
    assert!(batch("10-2", 0, r#"[{"k":"seats","s":"not a list"}]"#).is_none());
    // As a node says it joined: nobody yet.
    assert!(matches!(
        batch("10-2", 0, r#"[{"k":"seats","t":1}]"#).as_deref(),
        Some([Event::RelayedSeats { seats, .. }]) if seats.is_empty()
    ));
}

#[test]
fn receipts_and_a_dead_node_s_entry_are_read_as_the_scripts_write_them() {
    let read = |kind: &str, of: &str| {
        let item = serde_json::json!({"k": kind, "f": 8_589_934_593u64, "m": of, "t": 1, "o": 4_294_967_297u64});
        match batch("12-3", 0, &format!("[{item}]")).as_deref() {
            Some([Event::RelayedReceipt { entry: 12, receipt }]) => Some(receipt.clone()),
            _ => None,
        }
    };
    let answer = crate::event::Receipt {
        of: 11,
        target: ClientId(8_589_934_593),
        sender: ClientId(4_294_967_297),
        delivered: true,
    };
    assert_eq!(read("delivered", "11"), Some(answer.clone()));
    let missed = crate::event::Receipt {
        delivered: false,
        ..answer
    };
    assert_eq!(read("undelivered", "11"), Some(missed));
    // The id of the message it answers is one the cluster gives.
    for bad in ["", "0", "eleven", "9007199254740992"] {
        assert_eq!(read("delivered", bad), None, "{bad:?}");
    }
    // What a node appends reads back the same.
    let items = entry::items_of(&[Publish::receipt(&answer, 1)]);
    assert!(matches!(
        batch("12-3", 0, &items).as_deref(),
        Some([Event::RelayedReceipt { receipt, .. }]) if *receipt == answer
    ));
    // LET_GO's entry: a node gone (the entry's node).
    assert!(matches!(
        batch("12-4", 0, r#"[{"k":"gone","t":1}]"#).as_deref(),
        Some([Event::RelayedGone { entry: 12, node: 2 }])
    ));
}

#[test]
fn a_published_entry_is_its_id_and_fields_and_nothing_else_is() {
    let items = r#"[{"r":"lobby","f":7,"n":"ann","m":"two\nlines","t":1}]"#;
    let payload = format!("5-1\n2\n1\n{items}");
    let Some((id, fields)) = entry::published(payload.as_bytes()) else {
        panic!("{payload}")
    };
    assert_eq!(id, "5-1");
    assert_eq!(
        fields,
        entry(&[("node", "2"), ("said", "1"), ("items", items)])
    );
    assert!(entry::events(&id, &fields).is_some());
    for not_ours in ["", "5-1", "5-1\n2\n1", "\u{0}\u{ff}"] {
        assert_eq!(entry::published(not_ours.as_bytes()), None, "{not_ours:?}");
    }
    assert_eq!(
        entry::published(&[0xff, b'\n', b'1', b'\n', b'1', b'\n']),
        None
    );
}
