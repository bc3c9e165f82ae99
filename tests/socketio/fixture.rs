//! The conformance fixture: `/socket.io/` on the chat port with `--echo`, as
//! the official test suite's reference server.

use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::Message;

use super::support::*;
use super::*;

/// Joined to `namespace` ("" for the main one): its CONNECT answer and `auth`.
pub fn connect(client: &mut Client, namespace: &str) -> (String, String) {
    client.send_text(&format!("40{namespace}"));
    (packet(client), packet(client))
}

#[test]
fn the_open_packet_gives_the_session_and_its_times() {
    let server = fixture();
    let (_client, open) = open(&server);
    assert!(open["sid"].is_string(), "{open}");
    assert_eq!(open["upgrades"], serde_json::json!([]));
    assert_eq!(open["pingInterval"], 300);
    assert_eq!(open["pingTimeout"], 200);
    assert_eq!(open["maxPayload"], 1_000_000);
    // It says what the server takes: no more than `--max-message`.
    let server = Server::start(&["--echo"]);
    let (_client, open) = self::open(&server);
    assert_eq!(open["maxPayload"], 64 * 1024);
}

#[test]
fn the_server_pings_and_ends_a_session_whose_pong_does_not_come() {
    let server = fixture();
    let (mut client, _) = open(&server);
    connect(&mut client, "");
    for _ in 0..3 {
        assert_eq!(text(&mut client), "2");
        client.send_text("3");
    }
    let silent = server.disconnects("silent");
    let pinged = loop {
        if text(&mut client) == "2" {
            break Instant::now();
        }
    };
    // No pong: the session ends, a ping timeout after the ping.
    assert_eq!(
        close_without_pong(&mut client),
        (1000, "ping timeout".into())
    );
    assert!(pinged.elapsed() >= Duration::from_millis(200));
    eventually("the silent client is counted", || {
        server.disconnects("silent") == silent + 1
    });
}

/// The Close frame's code and reason, pings left unanswered.
fn close_without_pong(client: &mut Client) -> (u16, String) {
    loop {
        match client.recv() {
            Message::Close(Some(frame)) => return (frame.code.into(), frame.reason.to_string()),
            Message::Text(_) => {}
            other => panic!("expected the server's Close, got {other:?}"),
        }
    }
}

#[test]
fn a_client_that_never_connects_a_namespace_is_closed() {
    let server = fixture();
    let (mut client, _) = open(&server);
    let opened = Instant::now();
    // Its pongs keep the heartbeat alive; the CONNECT's wait ends all the same.
    assert_eq!(
        close_of(&mut client),
        (1000, "no namespace joined in time".into())
    );
    assert!(opened.elapsed() >= Duration::from_secs(1));
}

#[test]
fn namespaces_connect_with_their_auth_and_unknown_ones_are_refused() {
    let server = fixture();
    let (mut client, open) = open(&server);
    let (joined, auth) = connect(&mut client, "");
    let sid: Value = serde_json::from_str(joined.strip_prefix("40").unwrap()).unwrap();
    assert!(
        sid["sid"].is_string() && sid.as_object().unwrap().len() == 1,
        "{joined}"
    );
    assert_eq!(auth, r#"42["auth",{}]"#);
    let (joined, auth) = connect(&mut client, r#"/custom,{"token":"abc"}"#);
    assert!(joined.starts_with(r#"40/custom,{"sid":""#), "{joined}");
    assert_eq!(auth, r#"42/custom,["auth",{"token":"abc"}]"#);
    client.send_text("40/random");
    assert_eq!(
        packet(&mut client),
        r#"44/random,{"message":"Invalid namespace"}"#
    );
    // The connection is still there, in both namespaces.
    client.send_text(r#"42["message","main"]"#);
    assert_eq!(packet(&mut client), r#"42["message-back","main"]"#);
    client.send_text(r#"42/custom,["message","custom"]"#);
    assert_eq!(
        packet(&mut client),
        r#"42/custom,["message-back","custom"]"#
    );
    assert!(open["sid"].is_string());
}

#[test]
fn a_namespace_left_hears_nothing_more_and_the_others_go_on() {
    let server = fixture();
    let (mut client, _) = open(&server);
    connect(&mut client, "");
    connect(&mut client, "/custom,");
    client.send_text("41/custom,");
    client.send_text(r#"42/custom,["message","gone"]"#);
    client.send_text(r#"42["message","here"]"#);
    assert_eq!(packet(&mut client), r#"42["message-back","here"]"#);
}

#[test]
fn events_come_back_and_acks_answer_with_the_same_arguments() {
    let server = fixture();
    let (mut client, _) = open(&server);
    connect(&mut client, "");
    client.send_text(r#"42["message",1,"2",{"3":[true]}]"#);
    assert_eq!(
        packet(&mut client),
        r#"42["message-back",1,"2",{"3":[true]}]"#
    );
    client.send_text(r#"42456["message-with-ack",1,"2",{"3":[false]}]"#);
    assert_eq!(packet(&mut client), r#"43456[1,"2",{"3":[false]}]"#);
}

#[test]
fn binary_attachments_come_back_after_their_packet() {
    let server = fixture();
    let (mut client, _) = open(&server);
    connect(&mut client, "");
    let placeholders = r#"{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}"#;
    for (sent, answer) in [
        (
            format!(r#"452-["message",{placeholders}]"#),
            format!(r#"452-["message-back",{placeholders}]"#),
        ),
        (
            format!(r#"452-789["message-with-ack",{placeholders}]"#),
            format!("462-789[{placeholders}]"),
        ),
    ] {
        client.send_text(&sent);
        client.ws.send(Message::binary(vec![1, 2, 3])).unwrap();
        client.ws.send(Message::binary(vec![4, 5, 6])).unwrap();
        assert_eq!(packet(&mut client), answer);
        assert_eq!(client.recv(), Message::binary(vec![1, 2, 3]));
        assert_eq!(client.recv(), Message::binary(vec![4, 5, 6]));
    }
}

#[test]
fn every_malformed_packet_closes_the_connection() {
    let server = fixture();
    let cases: &[(&str, &str)] = &[
        ("4abc", "unknown packet type"),
        ("42{}", "invalid payload"),
        (r#"42abc["message-with-ack",1]"#, "invalid payload"),
        (r#"42["disconnect"]"#, "invalid payload"),
        ("41{}", "invalid payload"),
        (r#"45["a"]"#, "illegal attachments"),
        (r#"4511-["a"]"#, "too many attachments"),
        (
            r#"451-["a",{"_placeholder":true,"num":1}]"#,
            "illegal attachments",
        ),
        ("2", "a ping from the client (the server pings)"),
        ("5", "not an Engine.IO packet type"),
        ("", "not an Engine.IO packet type"),
    ];
    let protocol_errors = server.disconnects("protocol_error");
    for (sent, why) in cases {
        let (mut client, _) = open(&server);
        connect(&mut client, "");
        client.send_text(sent);
        assert_eq!(close_of(&mut client), (1002, (*why).into()), "{sent:?}");
    }
    // Binary with no packet to attach it to, and text where an attachment is due.
    let (mut client, _) = open(&server);
    connect(&mut client, "");
    client.ws.send(Message::binary(vec![1])).unwrap();
    assert_eq!(close_of(&mut client).0, 1002);
    let (mut client, _) = open(&server);
    connect(&mut client, "");
    client.send_text(r#"451-["message",{"_placeholder":true,"num":0}]"#);
    client.send_text(r#"42["message","too soon"]"#);
    assert_eq!(close_of(&mut client).0, 1002);
    // Before any CONNECT too.
    let (mut client, _) = open(&server);
    client.send_text("4abc");
    assert_eq!(close_of(&mut client).0, 1002);
    eventually("each is counted as a protocol error", || {
        server.disconnects("protocol_error") == protocol_errors + cases.len() as u64 + 3
    });
}

#[test]
fn attachments_beyond_max_payload_close_the_connection() {
    let server = fixture();
    let (mut client, _) = open(&server);
    connect(&mut client, "");
    client.send_text(
        r#"452-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
    );
    client.ws.send(Message::binary(vec![0; 600_000])).unwrap();
    client.ws.send(Message::binary(vec![0; 600_000])).unwrap();
    assert_eq!(
        close_of(&mut client),
        (1002, "a packet and its attachments over maxPayload".into())
    );
}

#[test]
fn the_client_closing_the_engine_io_session_is_answered_with_a_close() {
    let server = fixture();
    let (mut client, _) = open(&server);
    client.send_text("1");
    assert_eq!(close_of(&mut client).0, 1000);
}

#[test]
fn long_polling_and_other_versions_get_engine_io_s_own_refusals() {
    let server = fixture();
    let transport_unknown = r#"{"code":0,"message":"Transport unknown"}"#;
    // Long-polling, on either port (the chat port reads the head before
    // tungstenite, which would drop the request unanswered).
    for port in [server.http, server.ws] {
        let response = http_get(port, "/socket.io/?EIO=4&transport=polling");
        assert_eq!(response.status, 400);
        assert_eq!(
            response.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(String::from_utf8_lossy(&response.body), transport_unknown);
        let post = http_raw(
            port,
            "POST /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\n\r\n1",
        );
        assert_eq!(
            (
                post.status,
                String::from_utf8_lossy(&post.body).into_owned()
            ),
            (400, transport_unknown.into())
        );
        // A GET for the WebSocket transport that is no upgrade.
        let plain = http_get(port, "/socket.io/?EIO=4&transport=websocket");
        assert_eq!(
            (
                plain.status,
                String::from_utf8_lossy(&plain.body).into_owned()
            ),
            (400, r#"{"code":3,"message":"Bad request"}"#.into())
        );
    }
    for (query, body) in [
        (
            "EIO=3&transport=websocket",
            r#"{"code":5,"message":"Unsupported protocol version"}"#,
        ),
        (
            "transport=websocket",
            r#"{"code":5,"message":"Unsupported protocol version"}"#,
        ),
        (
            "EIO=4&transport=websocket&sid=x",
            r#"{"code":1,"message":"Session ID unknown"}"#,
        ),
        ("EIO=4", transport_unknown),
        ("EIO=4&transport=polling", transport_unknown),
    ] {
        let refused = Client::connect_with(&server.ws_url(&format!("/socket.io/?{query}")), &[])
            .err()
            .unwrap_or_else(|| panic!("{query} is refused"));
        assert_eq!(
            (refused.status, refused.body.as_str()),
            (400, body),
            "{query}"
        );
    }
}
