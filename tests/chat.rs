//! Protocol v1 through real sockets: welcome, broadcast, one total order, presence,
//! echo, bad input, subprotocols, endpoints and origins.

mod support;

use std::thread;

use support::{Client, Process, Running, Server};
use tungstenite::Message;

#[test]
fn a_new_client_is_welcomed_and_everyone_hears_the_join() {
    let server = Server::start(&[]);
    let mut alice = Client::connect(&server.ws_url("/"));
    let welcome = alice.recv_json();
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["count"], 1);
    assert_eq!(welcome["protocol"], "threadchat.v1");
    let alice_id = welcome["id"].as_u64().unwrap();
    let join = alice.recv_json();
    assert_eq!(
        (join["type"].as_str(), join["event"].as_str()),
        (Some("notification"), Some("join"))
    );
    assert_eq!(join["count"], 1);
    assert!(join["msg"].as_str().unwrap().contains('1'), "{join}");

    let mut bob = Client::connect(&server.ws_url("/"));
    let welcome = bob.recv_json();
    assert_eq!(
        (welcome["type"].as_str(), welcome["count"].as_u64()),
        (Some("welcome"), Some(2))
    );
    assert_ne!(welcome["id"].as_u64().unwrap(), alice_id);
    assert_eq!(bob.recv_json()["count"], 2);
    let join = alice.recv_json();
    assert_eq!(
        (join["event"].as_str(), join["count"].as_u64()),
        (Some("join"), Some(2))
    );
}

#[test]
fn a_message_reaches_every_client_including_its_sender() {
    let server = Server::start(&[]);
    let mut clients: Vec<Client> = (0..5).map(|_| Client::join(&server)).collect();
    // Everyone has heard all five joins before anyone speaks.
    for (i, client) in clients.iter_mut().enumerate() {
        for _ in i + 1..5 {
            client.recv_type("notification");
        }
    }
    let clients_2_id = clients[2].id;
    clients[2].send_text(r#"{"name":"carol","msg":"hello <b>all</b> \"quoted\" 안녕 👋"}"#);
    for client in &mut clients {
        let m = client.recv_json();
        assert_eq!(m["type"], "message");
        assert_eq!(m["name"], "carol");
        assert_eq!(
            m["from"].as_u64(),
            clients_2_id,
            "from is the sender's welcome id"
        );
        assert_eq!(m["msg"], "hello <b>all</b> \"quoted\" 안녕 👋");
        assert!(m["id"].as_u64().unwrap() >= 1);
        assert!(m["ts"].as_u64().unwrap() > 1_600_000_000_000);
    }
    // The Node original's exact client shape, with an explicit type, works too.
    clients[0].send_text(r#"{"type":"message","name":"al","msg":"x"}"#);
    for client in &mut clients {
        assert_eq!(client.recv_json()["msg"], "x");
    }
}

#[test]
fn concurrent_senders_are_seen_in_one_order_by_everyone() {
    const SENDERS: usize = 4;
    const EACH: usize = 50;
    // Faster than flood control allows by default: raised for a test of order.
    let server = Server::start(&support::unthrottled(&[]));
    let mut listeners: Vec<Client> = (0..3).map(|_| Client::join(&server)).collect();
    let senders: Vec<Client> = (0..SENDERS).map(|_| Client::join(&server)).collect();
    // Drain the join notifications so each listener starts at the same point.
    for (i, client) in listeners.iter_mut().enumerate() {
        for _ in i + 1..3 + SENDERS {
            client.recv_type("notification");
        }
    }
    let handles: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(s, mut sender)| {
            thread::spawn(move || {
                for k in 0..EACH {
                    sender.send_chat(&format!("s{s}"), &format!("{k}"));
                }
                sender
            })
        })
        .collect();
    let _senders: Vec<Client> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    let mut orders = Vec::new();
    for client in &mut listeners {
        let mut seen = Vec::new();
        while seen.len() < SENDERS * EACH {
            let m = client.recv_type("message");
            seen.push((
                m["id"].as_u64().unwrap(),
                m["name"].to_string(),
                m["msg"].to_string(),
            ));
        }
        // Ids increase along the order, and each sender's messages keep their order.
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "ids out of order");
        for s in 0..SENDERS {
            let mine: Vec<_> = seen
                .iter()
                .filter(|m| m.1 == format!("\"s{s}\""))
                .map(|m| m.2.clone())
                .collect();
            let expected: Vec<_> = (0..EACH).map(|k| format!("\"{k}\"")).collect();
            assert_eq!(mine, expected, "sender {s}'s messages lost or reordered");
        }
        orders.push(seen);
    }
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[0], orders[2]);
}

#[test]
fn join_and_leave_notifications_carry_the_count() {
    let server = Server::start(&[]);
    let mut alice = Client::join(&server);
    let mut bob = Client::join(&server);
    let joined = alice.recv_type("notification");
    assert_eq!(
        (joined["event"].as_str(), joined["count"].as_u64()),
        (Some("join"), Some(2))
    );
    let carol = Client::join(&server);
    assert_eq!(alice.recv_type("notification")["count"], 3);
    assert_eq!(bob.recv_type("notification")["count"], 3);

    drop(carol); // TCP closed without a close handshake
    let left = alice.recv_type("notification");
    assert_eq!(
        (left["event"].as_str(), left["count"].as_u64()),
        (Some("leave"), Some(2))
    );
    assert!(left["msg"].as_str().unwrap().contains('2'), "{left}");
    assert_eq!(bob.recv_type("notification")["count"], 2);

    bob.ws.close(None).unwrap(); // a proper close handshake
    assert_eq!(bob.recv_close(), 1005);
    let left = alice.recv_type("notification");
    assert_eq!(
        (left["event"].as_str(), left["count"].as_u64()),
        (Some("leave"), Some(1))
    );
    support::eventually("the close is counted as one", || {
        server.disconnects("closed") == 1
    });
}

#[test]
fn echo_returns_text_and_binary_unchanged_and_is_not_in_the_chat() {
    let server = Server::start(&["--echo", "--max-message", "262144"]);
    let mut chat = Client::join(&server);
    let mut echo = Client::connect(&server.ws_url("/echo"));
    echo.ws.send(Message::text("héllo 👋")).unwrap();
    assert_eq!(echo.recv(), Message::text("héllo 👋"));
    let bytes: Vec<u8> = (0..=255).collect();
    echo.ws.send(Message::binary(bytes.clone())).unwrap();
    assert_eq!(echo.recv(), Message::binary(bytes));
    let big = "z".repeat(200_000);
    echo.ws.send(Message::text(big.clone())).unwrap();
    assert_eq!(echo.recv(), Message::text(big));
    // The echo client never joined the chat: the chat client heard no notification.
    chat.send_chat("a", "only chat");
    assert_eq!(chat.recv_json()["type"], "message");
    // Echo obeys the same message limit as the chat.
    echo.ws.send(Message::binary(vec![0u8; 262_145])).unwrap();
    assert_eq!(echo.recv_close(), 1009);
}

#[test]
fn echo_is_off_unless_asked_for() {
    let server = Server::start(&[]);
    let refused = Client::connect_with(&server.ws_url("/echo"), &[])
        .err()
        .expect("/echo is off");
    assert_eq!(refused.status, 404);
    assert!(refused.body.contains("--echo"), "{}", refused.body);
    assert_eq!(server.stats()["handshakes"]["refused"], 1);
}

#[test]
fn bad_input_gets_an_error_frame_and_the_connection_stays() {
    let server = Server::start(&[]);
    let mut alice = Client::join(&server);
    let long_name = "n".repeat(33);
    let long_msg = "m".repeat(2001);
    let cases: Vec<(Message, &str)> = vec![
        (Message::text("not json"), "invalid message"),
        (Message::text(r#"{"msg":"hi"}"#), "name"),
        (Message::text(r#"{"name":"a"}"#), "msg"),
        (
            Message::text(r#"{"name":1,"msg":"hi"}"#),
            "name must be a string",
        ),
        (
            Message::text(r#"{"name":"a","msg":["x"]}"#),
            "msg must be a string",
        ),
        (
            Message::text(r#"{"name":"a","msg":"x","name":"b"}"#),
            "name is given more than once",
        ),
        (Message::text(r#""just a string""#), "one JSON object"),
        (Message::text(r#"{"name":"a","msg":""}"#), "empty"),
        (
            Message::text(format!(r#"{{"name":"{long_name}","msg":"x"}}"#)),
            "name is 33 characters",
        ),
        (
            Message::text(format!(r#"{{"name":"a","msg":"{long_msg}"}}"#)),
            "msg is 2001 characters",
        ),
        (
            Message::text(r#"{"type":"nope","name":"a","msg":"x"}"#),
            "unknown message type",
        ),
        (Message::binary(vec![1, 2, 3]), "binary"),
    ];
    for (input, expected) in cases {
        alice.ws.send(input.clone()).unwrap();
        let reply = alice.recv_json();
        assert_eq!(reply["type"], "error", "{input:?}: {reply}");
        let text = reply["msg"].as_str().unwrap();
        assert!(
            text.contains(expected),
            "{input:?}: {text:?} lacks {expected:?}"
        );
    }
    // Still connected and chatting.
    alice.send_chat("alice", "still here");
    let m = alice.recv_json();
    assert_eq!(
        (m["type"].as_str(), m["msg"].as_str()),
        (Some("message"), Some("still here"))
    );
}

#[test]
fn errors_go_to_the_sender_only() {
    let server = Server::start(&[]);
    let mut alice = Client::join(&server);
    let mut bob = Client::join(&server);
    alice.recv_type("notification");
    alice.send_text("garbage");
    assert_eq!(alice.recv_json()["type"], "error");
    alice.send_chat("alice", "after");
    // Bob's next frame is the message: he never saw Alice's error.
    assert_eq!(bob.recv_json()["msg"], "after");
}

#[test]
fn subprotocol_is_selected_only_when_offered() {
    let server = Server::start(&[]);
    let url = server.ws_url("/");
    let offered =
        Client::connect_with(&url, &[("sec-websocket-protocol", "threadchat.v1")]).unwrap();
    assert_eq!(offered.protocol.as_deref(), Some("threadchat.v1"));
    let among =
        Client::connect_with(&url, &[("sec-websocket-protocol", "other, threadchat.v1")]).unwrap();
    assert_eq!(among.protocol.as_deref(), Some("threadchat.v1"));
    // Offered only unknown ones: accepted, none selected. (tungstenite's client, like
    // Chrome, then gives up on its side, so this one is a raw handshake.)
    let (status, head) =
        support::raw_handshake(server.ws, "/", &["Sec-WebSocket-Protocol: mqtt, v2.chat"]);
    assert_eq!(status, 101, "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("sec-websocket-protocol"),
        "{head}"
    );
    let none = Client::connect_with(&url, &[]).unwrap();
    assert_eq!(none.protocol, None);
}

#[test]
fn unknown_paths_get_404_at_the_handshake() {
    let server = Server::start(&[]);
    for path in ["/chat", "/echo/x", "/index.html"] {
        let refused = Client::connect_with(&server.ws_url(path), &[])
            .err()
            .expect(path);
        assert_eq!(refused.status, 404, "{path}");
    }
    // The query string does not change the endpoint.
    assert!(Client::connect_with(&server.ws_url("/?room=a"), &[]).is_ok());
}

#[test]
fn origin_is_checked_by_host_name() {
    let server = Server::start(&[]);
    let url = server.ws_url("/");
    // Same host name, the page's port: accepted.
    let page = format!("http://127.0.0.1:{}", server.http.port());
    assert!(Client::connect_with(&url, &[("origin", &page)]).is_ok());
    // Another site: refused with 403.
    let refused = Client::connect_with(&url, &[("origin", "http://evil.example")])
        .err()
        .unwrap();
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("origin"), "{}", refused.body);
    // A look-alike host is another site.
    let refused = Client::connect_with(&url, &[("origin", "http://127.0.0.1.evil.example")])
        .err()
        .unwrap();
    assert_eq!(refused.status, 403);
}

#[test]
fn allow_origin_widens_the_check() {
    let server = Server::start(&[
        "--allow-origin",
        "http://chat.example:8000",
        "--allow-origin",
        "https://other.example",
    ]);
    let url = server.ws_url("/");
    assert!(Client::connect_with(&url, &[("origin", "http://chat.example:8000")]).is_ok());
    assert!(Client::connect_with(&url, &[("origin", "https://other.example")]).is_ok());
    assert_eq!(
        Client::connect_with(&url, &[("origin", "http://evil.example")])
            .err()
            .unwrap()
            .status,
        403
    );

    let any = Server::start(&["--allow-origin", "*"]);
    assert!(Client::connect_with(&any.ws_url("/"), &[("origin", "http://evil.example")]).is_ok());
}

#[test]
fn connects_are_logged_with_the_forwarded_for_address() {
    // What the log is for: behind a proxy, a connect line names both addresses.
    let server = Process::start(&[]);
    let _client =
        Client::connect_with(&server.ws_url("/"), &[("x-forwarded-for", "203.0.113.9")]).unwrap();
    let line = server.wait_for_log("203.0.113.9");
    assert!(line.contains("127.0.0.1"), "{line}");
}

#[test]
fn a_join_storm_is_announced_in_runs_with_exact_counts() {
    // A classroom connecting at once: every device has an address of its own, so
    // no per-address cap is in the way.
    const STORM: usize = 60;
    let server = Server::start(&[]);
    let mut observer = Client::join(&server);
    let joiners: Vec<_> = (0..STORM)
        .map(|i| {
            let (addr, url) = (server.ws, server.ws_url("/"));
            thread::spawn(move || {
                let stream = support::connect_from(support::lan_host(i), addr);
                Client::handshake(stream, &url, &[]).expect("handshake")
            })
        })
        .collect();
    let mut joiners: Vec<Client> = joiners.into_iter().map(|h| h.join().unwrap()).collect();
    // The observer hears every join exactly once, folded into runs.
    let (mut announced, mut last_count) = (0, 0);
    while announced < STORM {
        let note = observer.recv_type("notification");
        assert_eq!(note["event"], "join", "{note}");
        let users = note["users"].as_u64().unwrap() as usize;
        announced += users;
        last_count = note["count"].as_u64().unwrap();
        assert!(
            note["msg"]
                .as_str()
                .unwrap()
                .contains(&format!("[online: {last_count}]")),
            "{note}"
        );
    }
    assert_eq!(announced, STORM);
    assert_eq!(last_count, STORM as u64 + 1);
    // Every joiner got its welcome first, then a notification that counts it.
    for joiner in &mut joiners {
        let welcome = joiner.recv_json();
        assert_eq!(welcome["type"], "welcome");
        let note = joiner.recv_json();
        assert_eq!(note["type"], "notification");
        assert!(
            note["count"].as_u64() >= welcome["count"].as_u64(),
            "{welcome} then {note}"
        );
    }
}
