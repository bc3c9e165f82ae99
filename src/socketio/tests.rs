//! The packet rules and the session's clock, from the spec
//! (github.com/socketio/socket.io-protocol and engine.io-protocol).

use std::time::{Duration, Instant};

use tungstenite::{Bytes, Message};

use super::echo::{self, FIXTURE};
use super::packet::{
    self, EnginePacket, MAX_ATTACHMENTS, Malformed, Packet, PacketType, placeholders_fit,
};
use super::session::{Due, Received, Session, Whole};
use super::{Refusal, is_hub_room, refusal, room_in};

fn decoded(text: &str) -> Packet<'_> {
    Packet::decode(text).unwrap_or_else(|e| panic!("{text:?} is malformed: {e}"))
}

#[test]
fn engine_packets_from_the_client() {
    assert_eq!(EnginePacket::decode("1"), Ok(EnginePacket::Close));
    assert_eq!(EnginePacket::decode("3"), Ok(EnginePacket::Pong));
    assert_eq!(EnginePacket::decode("6"), Ok(EnginePacket::Noop));
    assert_eq!(EnginePacket::decode("40"), Ok(EnginePacket::Message("0")));
    // The server pings in Engine.IO 4; the client opens nothing and upgrades
    // nothing over a WebSocket it opened as one.
    for text in ["", "2", "2probe", "0", "5", "7", "x", "é"] {
        assert!(EnginePacket::decode(text).is_err(), "{text:?}");
    }
}

#[test]
fn the_spec_examples_decode() {
    let p = decoded("0");
    assert_eq!(
        (p.kind, p.namespace, p.ack, p.data),
        (PacketType::Connect, "/", None, None)
    );
    let p = decoded(r#"0/admin,{"token":"123"}"#);
    assert_eq!(
        (p.namespace, p.data),
        ("/admin", Some(r#"{"token":"123"}"#))
    );
    assert_eq!(decoded("1/admin,").namespace, "/admin");
    // A namespace with nothing after it needs no comma.
    assert_eq!(decoded("1/custom").namespace, "/custom");
    let p = decoded(r#"2["foo"]"#);
    assert_eq!((p.kind, p.ack), (PacketType::Event, None));
    let p = decoded(r#"2/admin,456["project:delete",123]"#);
    assert_eq!((p.namespace, p.ack), ("/admin", Some(456)));
    let p = decoded(r#"3/admin,456[]"#);
    assert_eq!(
        (p.kind, p.ack, p.data),
        (PacketType::Ack, Some(456), Some("[]"))
    );
    let p = decoded(r#"4{"message":"Not authorized"}"#);
    assert_eq!(p.kind, PacketType::ConnectError);
    let p = decoded(r#"51-["baz",{"_placeholder":true,"num":0}]"#);
    assert_eq!((p.kind, p.attachments), (PacketType::BinaryEvent, 1));
    let p = decoded(r#"61-/admin,456[{"_placeholder":true,"num":0}]"#);
    assert_eq!(
        (p.kind, p.attachments, p.namespace, p.ack),
        (PacketType::BinaryAck, 1, "/admin", Some(456))
    );
    // A number names an event too.
    assert_eq!(decoded("2[1,2]").kind, PacketType::Event);
}

#[test]
fn malformed_packets_are_refused() {
    let cases = [
        ("", "unknown packet type"),
        ("abc", "unknown packet type"),
        ("7", "unknown packet type"),
        ("2{}", "invalid payload"),
        ("2[]", "invalid payload"),
        ("2[{}]", "invalid payload"),
        ("2[null]", "invalid payload"),
        (r#"2["connect"]"#, "invalid payload"),
        (r#"2["disconnect",1]"#, "invalid payload"),
        (r#"2abc["message-with-ack",1]"#, "invalid payload"),
        (r#"2["unterminated"#, "invalid payload"),
        ("0[]", "invalid payload"),
        ("0\"token\"", "invalid payload"),
        ("1{}", "invalid payload"),
        ("3{}", "invalid payload"),
        ("4[]", "invalid payload"),
        (r#"5["a"]"#, "illegal attachments"),
        (r#"5x-["a"]"#, "illegal attachments"),
        (r#"5-["a"]"#, "illegal attachments"),
        (r#"511-["a"]"#, "too many attachments"),
        (r#"29007199254740992["a"]"#, "invalid ack id"),
    ];
    for (text, why) in cases {
        assert_eq!(Packet::decode(text), Err(Malformed(why)), "{text:?}");
    }
    // The largest safe integer is an ack id still.
    assert_eq!(
        decoded(r#"29007199254740991["a"]"#).ack,
        Some((1 << 53) - 1)
    );
    assert_eq!(
        decoded(&format!("5{MAX_ATTACHMENTS}-[\"a\"]")).attachments,
        MAX_ATTACHMENTS
    );
}

#[test]
fn packets_encode_as_socket_io_parser_writes_them() {
    let event = packet::event_payload("message-back", ["1", r#""2""#]);
    assert_eq!(
        packet::encode(PacketType::Event, "/", 0, None, &event),
        r#"42["message-back",1,"2"]"#
    );
    assert_eq!(
        packet::encode(
            PacketType::ConnectError,
            "/random",
            0,
            None,
            r#"{"message":"Invalid namespace"}"#
        ),
        r#"44/random,{"message":"Invalid namespace"}"#
    );
    assert_eq!(
        packet::encode(
            PacketType::BinaryAck,
            "/admin",
            2,
            Some(789),
            &packet::ack_payload(["1", "2"])
        ),
        "462-/admin,789[1,2]"
    );
    assert_eq!(packet::ack_payload([]), "[]");
    // What is encoded decodes to the same.
    let text = packet::encode(
        PacketType::Event,
        "/chat",
        0,
        Some(12),
        r#"["chat message","hi"]"#,
    );
    let again = decoded(&text[1..]);
    assert_eq!(
        (again.namespace, again.ack, again.data),
        ("/chat", Some(12), Some(r#"["chat message","hi"]"#))
    );
}

#[test]
fn placeholders_must_name_an_attachment() {
    let one = r#"["a",{"_placeholder":true,"num":0}]"#;
    assert!(placeholders_fit(one, 1));
    assert!(!placeholders_fit(one, 0));
    assert!(!placeholders_fit(
        r#"["a",{"x":[{"_placeholder":true,"num":3}]}]"#,
        2
    ));
    assert!(!placeholders_fit(
        r#"["a",{"_placeholder":true,"num":"0"}]"#,
        1
    ));
    assert!(placeholders_fit(r#"["a",{"_placeholder":false}]"#, 0));
}

#[test]
fn the_engine_io_refusals_are_socket_io_s_own() {
    assert_eq!(refusal("EIO=4&transport=websocket", true), None);
    assert_eq!(
        refusal("EIO=4&transport=polling", false),
        Some(Refusal::TransportUnknown)
    );
    assert_eq!(refusal("EIO=4", true), Some(Refusal::TransportUnknown));
    assert_eq!(
        refusal("EIO=4&transport=websocket&sid=abc", true),
        Some(Refusal::SessionIdUnknown)
    );
    assert_eq!(
        refusal("EIO=4&transport=websocket", false),
        Some(Refusal::BadRequest)
    );
    assert_eq!(
        refusal("EIO=3&transport=websocket", true),
        Some(Refusal::UnsupportedProtocolVersion)
    );
    assert_eq!(
        refusal("transport=websocket", true),
        Some(Refusal::UnsupportedProtocolVersion)
    );
    assert_eq!(
        Refusal::TransportUnknown.body(),
        r#"{"code":0,"message":"Transport unknown"}"#
    );
}

fn session(now: Instant) -> Session {
    Session::new(FIXTURE, 1_000, now)
}

#[test]
fn the_server_pings_and_a_missing_pong_ends_the_session() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let interval = FIXTURE.ping_interval;
    assert!(s.join("/"));
    assert_eq!(s.wake_at(), t0 + interval);
    assert_eq!(s.due(t0 + interval / 2), Due::Nothing);
    assert_eq!(s.due(t0 + interval), Due::Ping);
    // Once: the pong's wait has started.
    assert_eq!(s.due(t0 + interval), Due::Nothing);
    let answered = t0 + interval + Duration::from_millis(10);
    assert_eq!(s.text("3", answered), Ok(Received::Nothing));
    // The next ping is an interval after the pong.
    assert_eq!(s.wake_at(), answered + interval);
    assert_eq!(s.due(answered + interval), Due::Ping);
    let by = answered + interval + FIXTURE.ping_timeout;
    assert_eq!(s.wake_at(), by);
    assert_eq!(s.due(by - Duration::from_millis(1)), Due::Nothing);
    assert_eq!(s.due(by), Due::PingTimeout);
}

#[test]
fn a_client_that_never_connects_is_given_up() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let by = t0 + FIXTURE.connect_timeout;
    // Pongs keep the heartbeat alive, not the wait for a CONNECT.
    let mut now = t0;
    while now + FIXTURE.ping_interval < by {
        now += FIXTURE.ping_interval;
        assert_eq!(s.due(now), Due::Ping);
        assert_eq!(s.text("3", now), Ok(Received::Nothing));
    }
    assert_eq!(s.due(by), Due::NoConnect);
    // Joined once, it is never asked again, even after leaving.
    let mut s = session(t0);
    assert!(s.join("/"));
    s.leave("/");
    assert_eq!(s.wake_at(), t0 + FIXTURE.ping_interval);
}

#[test]
fn packets_for_a_namespace_not_joined_are_ignored() {
    let now = Instant::now();
    let mut s = session(now);
    assert_eq!(s.text(r#"42["message"]"#, now), Ok(Received::Nothing));
    let Ok(Received::Packet(connect)) = s.text("40/custom,", now) else {
        panic!("CONNECT is passed on");
    };
    assert_eq!(
        (connect.kind, connect.namespace.as_str()),
        (PacketType::Connect, "/custom")
    );
    assert!(s.join("/custom"));
    assert!(matches!(
        s.text(r#"42/custom,["message"]"#, now),
        Ok(Received::Packet(_))
    ));
    assert_eq!(s.text(r#"42["message"]"#, now), Ok(Received::Nothing));
}

#[test]
fn a_connection_joins_a_bounded_number_of_namespaces() {
    let mut s = session(Instant::now());
    for n in 0..super::session::MAX_NAMESPACES {
        assert!(s.join(&format!("/n{n}")));
    }
    assert!(s.join("/n0"), "joining again is no new name");
    assert!(!s.join("/one-too-many"));
}

#[test]
fn attachments_complete_a_binary_packet_in_order() {
    let now = Instant::now();
    let mut s = session(now);
    s.join("/");
    let header = r#"452-7["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#;
    assert_eq!(s.text(header, now), Ok(Received::Nothing));
    // A text frame cannot come between a packet and its attachments.
    let mut interrupted = session(now);
    interrupted.join("/");
    interrupted.text(header, now).unwrap();
    assert!(interrupted.text("3", now).is_err());
    assert_eq!(
        s.binary(Bytes::from_static(b"\x01\x02")),
        Ok(Received::Nothing)
    );
    let Ok(Received::Packet(whole)) = s.binary(Bytes::from_static(b"\x03")) else {
        panic!("two attachments make the packet whole");
    };
    assert_eq!(whole.ack, Some(7));
    assert_eq!(
        whole.attachments,
        [Bytes::from_static(b"\x01\x02"), Bytes::from_static(b"\x03")]
    );
    // With no packet waiting, a binary frame is malformed.
    assert!(s.binary(Bytes::from_static(b"x")).is_err());
}

#[test]
fn attachments_over_max_payload_are_refused() {
    let now = Instant::now();
    let mut s = session(now);
    s.join("/");
    s.text(
        r#"452-["m",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
        now,
    )
    .unwrap();
    assert_eq!(s.binary(Bytes::from(vec![0; 600])), Ok(Received::Nothing));
    assert!(s.binary(Bytes::from(vec![0; 600])).is_err());
    // Placeholders past the attachments are refused at once.
    let mut s = session(now);
    s.join("/");
    assert!(
        s.text(r#"451-["m",{"_placeholder":true,"num":1}]"#, now)
            .is_err()
    );
}

fn texts(frames: &[Message]) -> Vec<String> {
    frames
        .iter()
        .map(|m| m.to_text().unwrap_or("<binary>").to_owned())
        .collect()
}

fn whole(text: &str) -> Whole {
    let p = decoded(text);
    Whole {
        kind: p.kind,
        namespace: p.namespace.to_owned(),
        ack: p.ack,
        data: p.data.map(str::to_owned),
        attachments: Vec::new(),
    }
}

#[test]
fn the_fixture_answers_as_the_reference_server() {
    let mut s = session(Instant::now());
    let (now, later) = echo::answer(&mut s, whole(r#"0/custom,{"token":"abc"}"#), "9");
    assert_eq!(texts(&now), [r#"40/custom,{"sid":"9/custom"}"#]);
    assert_eq!(
        texts(&later.into_iter().collect::<Vec<_>>()),
        [r#"42/custom,["auth",{"token":"abc"}]"#]
    );
    let (now, later) = echo::answer(&mut s, whole("0/random"), "9");
    assert_eq!(
        texts(&now),
        [r#"44/random,{"message":"Invalid namespace"}"#]
    );
    assert!(later.is_none());
    let (now, _) = echo::answer(
        &mut s,
        whole(r#"2/custom,["message",1,"2",{"3":[true]}]"#),
        "9",
    );
    assert_eq!(
        texts(&now),
        [r#"42/custom,["message-back",1,"2",{"3":[true]}]"#]
    );
    let (now, _) = echo::answer(
        &mut s,
        whole(r#"2/custom,456["message-with-ack",{"b":1,"a":2}]"#),
        "9",
    );
    assert_eq!(
        texts(&now),
        [r#"43/custom,456[{"b":1,"a":2}]"#],
        "arguments are sent back as they came"
    );
    let (now, _) = echo::answer(&mut s, whole(r#"2["other"]"#), "9");
    assert!(now.is_empty());
}

#[test]
fn a_namespace_s_rooms_are_rooms_of_the_hub_and_nothing_else_is() {
    assert!(is_hub_room("lobby"));
    assert!(is_hub_room(&room_in("/chat", "room1")));
    for not_a_room in [
        "",
        "/chat",
        "chat#room1",
        "/#room1",
        "/chat#",
        "/a b#c",
        "/c#a#b",
    ] {
        assert!(!is_hub_room(not_a_room), "{not_a_room}");
    }
}
