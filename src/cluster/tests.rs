//! The bridge's own tests: what needs no Redis.

use std::collections::HashMap;
use std::path::Path;

use super::access::redacted;
use super::*;
use crate::event::{DirectMessage, Location, RelayedMessage};
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

#[test]
fn an_entry_outside_the_protocol_s_bounds_is_not_a_message() {
    let good = [
        ("room", "lobby"),
        ("from", "7"),
        ("name", "ann"),
        ("msg", "hi"),
        ("ts", "1"),
        ("except", "0"),
        ("to", ""),
        ("kick", "0"),
    ];
    assert!(matches!(
        relayed("5-1", &entry(&good)),
        Some(Event::Relayed(RelayedMessage { id: 5, .. }))
    ));
    let long = "x".repeat(protocol::MAX_MSG_CHARS + 1);
    for (key, bad) in [
        ("msg", long.as_str()),
        ("msg", " "),
        ("name", &"n".repeat(protocol::MAX_NAME_CHARS + 1)),
        ("room", "no spaces"),
        ("room", ""),
        ("from", "seven"),
    ] {
        let mut fields = entry(&good);
        fields.insert(key.to_string(), bad.to_string());
        assert!(relayed("5-1", &fields).is_none(), "{key} = {bad:?}");
    }
    assert!(relayed("not-an-id", &entry(&good)).is_none());
    // Id 0, which no node gives, would underflow the hub's arithmetic.
    assert!(relayed("0-1", &entry(&good)).is_none());
    // Nor one a page cannot read exactly, which would overflow it too.
    assert!(relayed("9007199254740992-1", &entry(&good)).is_none());
    assert!(relayed("9007199254740991-1", &entry(&good)).is_some());
    // A direct message (no room) is checked the same way; a kick has no text.
    // Both as `append` writes them.
    let mut direct = entry(&good);
    direct.insert("to".into(), "9".into());
    direct.insert("room".into(), String::new());
    assert!(matches!(
        relayed("6-1", &direct),
        Some(Event::RelayedDirect {
            direct: DirectMessage {
                to: ClientId(9),
                ..
            },
            ..
        })
    ));
    direct.insert("msg".into(), long.clone());
    assert!(relayed("6-1", &direct).is_none());
    let kick = entry(&[
        ("room", ""),
        ("from", "7"),
        ("name", ""),
        ("msg", ""),
        ("ts", "1"),
        ("except", "0"),
        ("to", "9"),
        ("kind", "kick"),
    ]);
    assert!(matches!(
        relayed("7-1", &kick),
        Some(Event::RelayedKick {
            id: 7,
            target: ClientId(9),
            by: ClientId(7)
        })
    ));
}

#[test]
fn receipts_and_a_dead_node_s_entry_are_read_as_the_scripts_write_them() {
    let receipt = |kind: &str, of: &str| {
        entry(&[
            ("room", ""),
            ("from", "8589934593"),
            ("name", ""),
            ("msg", of),
            ("ts", "1"),
            ("except", "0"),
            ("to", "4294967297"),
            ("kind", kind),
            ("node", "2"),
        ])
    };
    let read = |kind: &str, of: &str| match relayed("12-3", &receipt(kind, of)) {
        Some(Event::RelayedReceipt { entry: 12, receipt }) => Some(receipt),
        _ => None,
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
    // RELEASE's entry: a node gone.
    let gone = entry(&[
        ("room", ""),
        ("from", "0"),
        ("name", ""),
        ("msg", "[]"),
        ("ts", "1"),
        ("except", "0"),
        ("to", ""),
        ("kind", "gone"),
        ("node", "3"),
    ]);
    assert!(matches!(
        relayed("12-4", &gone),
        Some(Event::RelayedGone { entry: 12, node: 3 })
    ));
}

#[test]
fn seat_entries_are_read_within_the_protocol_s_bounds() {
    let seat = |room: &str, name: &str| {
        entry(&[
            ("room", room),
            ("from", "8589934593"),
            ("name", name),
            ("msg", ""),
            ("ts", "1"),
            ("kind", "seat"),
            ("node", "2"),
        ])
    };
    let Some(Event::RelayedSeat {
        entry: 9,
        id: ClientId(8_589_934_593),
        seat: Some(Location { room, name }),
    }) = relayed("9-1", &seat("lobby", "bob"))
    else {
        panic!("a seat in the lobby")
    };
    assert_eq!((room.as_str(), name.as_str()), ("lobby", "bob"));
    assert!(matches!(
        relayed("9-1", &seat("", "")),
        Some(Event::RelayedSeat { seat: None, .. })
    ));
    assert!(relayed("9-1", &seat("no room!", "bob")).is_none());
    assert!(relayed("9-1", &seat("lobby", &"x".repeat(100))).is_none());
    // A seats entry: the ones out of bounds left out, the rest kept.
    let seats = |list: &str| {
        entry(&[
            ("room", ""),
            ("from", "0"),
            ("name", ""),
            ("msg", list),
            ("ts", "1"),
            ("kind", "seats"),
            ("node", "2"),
        ])
    };
    let Some(Event::RelayedSeats {
        node: 2,
        seats: read,
        ..
    }) = relayed(
        "10-1",
        &seats(r#"[[8589934593,"lobby","bob"],[8589934594,"no room!","x"]]"#),
    )
    else {
        panic!("a seats entry")
    };
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].0, ClientId(8_589_934_593));
    assert!(relayed("10-1", &seats("not a list")).is_none());
    assert!(relayed("10-1", &seats("[]")).is_some());
}
