//! The chat for Socket.IO clients: `/socket.io/` on the chat port, and on the
//! page port, which hands the connection over.

use serde_json::Value;
use tungstenite::Message;

use super::support::*;
use super::*;

/// A Socket.IO client in the chat's main namespace, its `welcome` read.
fn join_chat(url: &str) -> (Client, Value) {
    let (mut client, open) = open_at(url);
    client.send_text("40");
    let joined = packet(&mut client);
    let sid: Value =
        serde_json::from_str(joined.strip_prefix("40").expect("CONNECT answered")).expect("a sid");
    let (name, welcome) = event(&mut client);
    assert_eq!(name, "welcome");
    // The session, the namespace's sid and the chat id are one number.
    assert_eq!(sid["sid"], welcome["id"].to_string());
    assert_eq!(open["sid"], welcome["id"].to_string());
    client.id = welcome["id"].as_u64();
    (client, welcome)
}

#[test]
fn socket_io_json_and_text_clients_share_one_room_in_one_order() {
    let server = Server::start(&[]);
    let mut json = Client::join(&server);
    let (mut sio, welcome) = join_chat(&server.ws_url(PATH));
    assert_eq!(welcome["count"], 2);
    let mut text = Client::connect(&server.ws_url("/text?name=tex"));
    sio.send_text(r#"42["hello",{"name":"sio"}]"#);
    assert_eq!(event_named(&mut sio, "hello")["name"], "sio");
    sio.send_text(r#"42["message",{"msg":"from socket.io"}]"#);
    json.send_chat("jay", "from json");
    text.send_text("from text");
    let from_json: Vec<(u64, String)> = (0..3)
        .map(|_| {
            let m = json.recv_type("message");
            (
                m["id"].as_u64().unwrap(),
                m["msg"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let from_sio: Vec<(u64, String)> = (0..3)
        .map(|_| {
            let m = event_named(&mut sio, "message");
            (
                m["id"].as_u64().unwrap(),
                m["msg"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(from_sio, from_json, "one order for every format");
    let lines: Vec<String> = std::iter::repeat_with(|| match text.recv() {
        Message::Text(line) => line.to_string(),
        other => panic!("{other:?}"),
    })
    .filter(|line| line.starts_with('['))
    .take(3)
    .collect();
    let names: Vec<&str> = lines.iter().map(|l| &l[1..4]).collect();
    let senders: Vec<&str> = from_json
        .iter()
        .map(|(_, msg)| match msg.as_str() {
            "from socket.io" => "sio",
            "from json" => "jay",
            _ => "tex",
        })
        .collect();
    assert_eq!(names, senders, "{lines:?}");
}

#[test]
fn the_page_port_hands_socket_io_to_the_chat() {
    let server = Server::start(&[]);
    let mut json = Client::join(&server);
    let url = format!("ws://{}{PATH}", server.http);
    let (mut sio, welcome) = join_chat(&url);
    assert_eq!(welcome["count"], 2);
    json.send_chat("jay", "hello page");
    assert_eq!(event_named(&mut sio, "message")["msg"], "hello page");
    // Its id comes from the chat's count: no other client has it.
    assert_ne!(sio.id, json.id);
    let stats = http_get(server.http, "/stats?token=s3cret");
    let stats: Value = serde_json::from_slice(&stats.body).unwrap();
    assert_eq!(stats["clients"], 2);
}

#[test]
fn requests_with_a_callback_get_their_answer_as_the_acknowledgement() {
    let server = Server::start(&[]);
    let (mut sio, _) = join_chat(&server.ws_url(PATH));
    let mut ack = |request: &str| {
        sio.send_text(request);
        loop {
            let text = packet(&mut sio);
            if text.starts_with("43") {
                return text;
            }
        }
    };
    assert_eq!(
        ack(r#"427["hello",{"name":"ann"}]"#),
        r#"437[{"type":"hello","id":1,"name":"ann"}]"#
    );
    assert_eq!(ack(r#"428["ping"]"#), r#"438[{"type":"pong"}]"#);
    assert_eq!(
        ack(r#"429["join",{"room":"games"}]"#),
        r#"439[{"type":"joined","room":"games","count":1}]"#
    );
    let who = ack(r#"4210["who"]"#);
    assert!(
        who.starts_with(r#"4310[{"type":"who","room":"games""#),
        "{who}"
    );
    let said = ack(r#"4211["message",{"msg":"hi"}]"#);
    assert!(
        said.starts_with(r#"4311[{"type":"message","id":1,"#),
        "{said}"
    );
    let error = ack(r#"4212["join",{"room":"no such room!"}]"#);
    assert!(error.starts_with(r#"4312[{"type":"error","#), "{error}");
}

#[test]
fn events_that_are_not_frames_get_an_error_and_the_connection_stays() {
    let server = Server::start(&[]);
    let (mut sio, _) = join_chat(&server.ws_url(PATH));
    for (sent, why) in [
        (r#"42["nope",{}]"#, "unknown message type"),
        (r#"42["message","hi"]"#, "an event has one argument"),
        (r#"42["message",{},{}]"#, "an event has one argument"),
        (r#"42["message",{"msg":"no name yet"}]"#, "name is missing"),
        (r#"42[1,{}]"#, "unknown message type"),
    ] {
        sio.send_text(sent);
        let error = event_named(&mut sio, "error");
        assert!(
            error["msg"].as_str().unwrap().starts_with(why),
            "{sent}: {error}"
        );
    }
    sio.send_text(r#"451-["message",{"_placeholder":true,"num":0}]"#);
    sio.ws.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert!(
        event_named(&mut sio, "error")["msg"]
            .as_str()
            .unwrap()
            .contains("binary")
    );
    sio.send_text(r#"42["ping"]"#);
    assert_eq!(event(&mut sio).0, "pong");
}

#[test]
fn leaving_the_main_namespace_leaves_the_chat() {
    let server = Server::start(&[]);
    let (mut sio, _) = join_chat(&server.ws_url(PATH));
    let mut json = Client::join(&server);
    sio.send_text("41");
    assert_eq!(close_of(&mut sio).0, 1000);
    let left = json.recv_type("notification");
    assert_eq!(
        (left["event"].as_str(), left["id"].as_u64()),
        (Some("leave"), sio.id)
    );
}

#[test]
fn a_namespace_that_is_not_a_name_is_refused_and_the_main_one_goes_on() {
    let server = Server::start(&[]);
    let (mut sio, _) = join_chat(&server.ws_url(PATH));
    sio.send_text("40/no such thing!,");
    let refused = std::iter::repeat_with(|| packet(&mut sio))
        .find(|p| !p.starts_with("42"))
        .unwrap();
    assert_eq!(
        refused,
        r#"44/no such thing!,{"message":"Invalid namespace"}"#
    );
    // Its own join's notification may come after the refusal: the refusal
    // is the reader's answer, the notification the hub's.
    sio.send_text(r#"42["ping"]"#);
    event_named(&mut sio, "pong");
}

#[test]
fn the_client_library_is_served_beside_any_page() {
    let www = std::env::temp_dir().join(format!("threadchat-sio-www-{}", std::process::id()));
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "<p>mine</p>").unwrap();
    for server in [
        Server::start(&[]),
        Server::start(&["--www", www.to_str().unwrap()]),
    ] {
        for path in ["/socket.io/socket.io.js", "/socket.io/socket.io.min.js"] {
            let response =
                http_get_with(server.http, path, &["Accept-Encoding: gzip, deflate, br"]);
            assert_eq!(response.status, 200, "{path}");
            assert!(
                response
                    .header("content-type")
                    .unwrap()
                    .contains("javascript")
            );
            assert_eq!(response.header("content-encoding").as_deref(), Some("gzip"));
            let body = gunzip(&response.body);
            assert!(
                body.starts_with("/*!\n * Socket.IO v4.8.4"),
                "the official client"
            );
            assert!(
                body.contains(r#"transports: ["websocket"]"#),
                "WebSocket by default"
            );
        }
        // Without Accept-Encoding any coding will do; refused, gzip is not sent.
        assert_eq!(http_get(server.http, "/socket.io/socket.io.js").status, 200);
        let refused = http_get_with(
            server.http,
            "/socket.io/socket.io.js",
            &["Accept-Encoding: identity, gzip;q=0"],
        );
        assert_eq!(refused.status, 406);
    }
    std::fs::remove_dir_all(&www).unwrap();
}

/// `bytes` decompressed by gzip.
fn gunzip(bytes: &[u8]) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut gzip = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    gzip.stdin.take().unwrap().write_all(bytes).unwrap();
    String::from_utf8(gzip.wait_with_output().unwrap().stdout).expect("JavaScript is UTF-8")
}

#[test]
fn the_access_token_comes_in_the_query_or_as_auth() {
    let server = Server::start(&["--token", "s3cret"]);
    let (_shown_in_query, _) = join_chat(&server.ws_url(&format!("{PATH}&token=s3cret")));
    let (mut client, _) = open(&server);
    client.send_text(r#"40{"token":"s3cret"}"#);
    assert!(packet(&mut client).starts_with(r#"40{"sid":"#));
    assert_eq!(event(&mut client).0, "welcome");
    for auth in [r#"{"token":"wrong"}"#, "", r#"{"other":1}"#] {
        let (mut client, _) = open(&server);
        client.send_text(&format!("40{auth}"));
        let refused = packet(&mut client);
        assert!(
            refused.starts_with(r#"44{"message":"this chat needs its access token"#),
            "{refused}"
        );
        assert_eq!(close_of(&mut client), (1008, "access token".into()));
    }
    // Other clients show it in the handshake, as before.
    let refused = Client::connect_with(&server.ws_url("/"), &[])
        .err()
        .expect("refused");
    assert_eq!(refused.status, 401);
    let stats = http_get(server.http, "/stats?token=s3cret");
    let stats: Value = serde_json::from_slice(&stats.body).unwrap();
    assert_eq!(stats["clients"], 2);
}

#[test]
fn the_tutorial_page_s_events_work_as_its_server_did() {
    let server = Server::start(&[]);
    let (mut abc, _) = join_chat(&server.ws_url(PATH));
    let (mut xyz, _) = join_chat(&server.ws_url(PATH));
    let mut json = Client::join(&server);
    abc.send_text(r#"42["login",{"name":"abc","userid":"abc@example.com"}]"#);
    // Everyone hears of a login, the page that logged in included.
    assert_eq!(packet_named(&mut abc, "login"), r#"42["login","abc"]"#);
    let login = event_named(&mut xyz, "login");
    assert_eq!(
        (login["type"].as_str(), login["name"].as_str()),
        (Some("login"), Some("abc"))
    );
    assert_eq!(json.recv_type("login")["name"], "abc");
    xyz.send_text(r#"42["login",{"name":"xyz","userid":"xyz@example.com"}]"#);
    assert_eq!(packet_named(&mut abc, "login"), r#"42["login","xyz"]"#);
    assert_eq!(packet_named(&mut xyz, "login"), r#"42["login","xyz"]"#);
    // `chat` goes to everyone but its sender, as `chat` to the pages.
    abc.send_text(r#"42["chat",{"msg":"hi xyz"}]"#);
    assert_eq!(
        packet_named(&mut xyz, "chat"),
        format!(
            r#"42["chat",{{"from":{{"name":"abc","userid":{}}},"msg":"hi xyz"}}]"#,
            abc.id.unwrap()
        )
    );
    json.send_chat("jay", "hi pages");
    let from_json = packet_named(&mut xyz, "chat");
    assert!(from_json.contains(r#""name":"jay""#) && from_json.contains(r#""msg":"hi pages""#));
    assert_eq!(json.recv_type("message")["msg"], "hi xyz");
    let next = packet_named(&mut abc, "chat");
    assert!(
        next.contains("hi pages"),
        "the sender does not get its own chat: {next}"
    );
    // `forceDisconnect`: told, then closed.
    xyz.send_text(r#"42["forceDisconnect"]"#);
    assert_eq!(packet_named(&mut xyz, ""), "41");
    assert_eq!(close_of(&mut xyz), (1000, "forceDisconnect".into()));
}

/// The next packet that is the event `name` (`""`: the next packet not an
/// event), as its text.
fn packet_named(client: &mut Client, name: &str) -> String {
    let prefix = format!(r#"42["{name}""#);
    loop {
        let text = packet(client);
        if (name.is_empty() && !text.starts_with("42"))
            || (!name.is_empty() && text.starts_with(&prefix))
        {
            return text;
        }
    }
}

#[test]
fn a_namespace_is_a_group_of_rooms_of_its_own() {
    let server = Server::start(&[]);
    // The tutorial's rooms page: `/chat` and `/news` on one connection, `chat
    // message` {name, room, msg} to a room of `/chat`, the sender included.
    let join_rooms_page = |server: &Server| {
        let (mut client, _) = open(server);
        client.send_text("40/chat,");
        client.send_text("40/news,");
        // A namespace's `welcome` may come before the other's CONNECT answer.
        let mut joined: Vec<String> = std::iter::repeat_with(|| packet(&mut client))
            .filter(|p| p.starts_with("40/"))
            .take(2)
            .collect();
        joined.sort();
        assert!(joined[0].starts_with(r#"40/chat,{"sid":""#), "{joined:?}");
        assert!(joined[1].starts_with(r#"40/news,{"sid":""#), "{joined:?}");
        client
    };
    let mut a = join_rooms_page(&server);
    let mut b = join_rooms_page(&server);
    let mut c = join_rooms_page(&server);
    let mut json = Client::join(&server);
    let said = |name: &str, room: &str, msg: &str| {
        format!(r#"42/chat,["chat message",{{"name":"{name}","room":"{room}","msg":"{msg}"}}]"#)
    };
    b.send_text(&said("b", "room2", "to room2"));
    assert_eq!(chat_message(&mut b), "to room2");
    c.send_text(&said("c", "room1", "c is here"));
    assert_eq!(chat_message(&mut c), "c is here");
    a.send_text(&said("a", "room1", "to room1"));
    assert_eq!(chat_message(&mut a), "to room1");
    assert_eq!(chat_message(&mut c), "to room1");
    // b's room is another: the next it hears is its own.
    b.send_text(&said("b", "room2", "still room2"));
    assert_eq!(chat_message(&mut b), "still room2");
    // The main namespace's rooms never mix with a namespace's.
    json.send_text(r#"{"type":"join","room":"room1"}"#);
    json.recv_type("joined");
    json.send_chat("jay", "main room1");
    assert_eq!(json.recv_type("message")["msg"], "main room1");
    a.send_text(&said("a", "room1", "only /chat"));
    assert_eq!(chat_message(&mut a), "only /chat");
    // Other events, and unknown names, get an error in the namespace.
    a.send_text(r#"42/chat,["join",{"room":"x"}]"#);
    let error = loop {
        let text = packet(&mut a);
        if let Some(rest) = text.strip_prefix(r#"42/chat,["error","#) {
            break rest.to_owned();
        }
    };
    assert!(error.contains("chat message"), "{error}");
    a.send_text("40/not a namespace,");
    assert!(
        std::iter::repeat_with(|| packet(&mut a))
            .any(|p| p == r#"44/not a namespace,{"message":"Invalid namespace"}"#)
    );
    // Leaving `/chat` leaves its room.
    c.send_text("41/chat,");
    a.send_text(&said("a", "room1", "after c left"));
    assert_eq!(chat_message(&mut a), "after c left");
}

/// The text of the next `chat message` in `/chat`.
fn chat_message(client: &mut Client) -> String {
    loop {
        let text = packet(client);
        if let Some(rest) = text.strip_prefix(r#"42/chat,["chat message","#) {
            return serde_json::from_str(&rest[..rest.len() - 1]).unwrap();
        }
    }
}
