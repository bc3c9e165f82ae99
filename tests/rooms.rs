//! Protocol v2 through real sockets: rooms and their order, names and presence,
//! direct messages, history and `since`, flood control, kicking, the plain-text
//! clients, and a v1 client that sees v1.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Client, Process, Running, Server, eventually, unthrottled};
use tungstenite::Message;

/// A JSON client that has read its welcome and its own join notification, and
/// kept its welcome.
fn join(server: &Server) -> (Client, Value) {
    let mut client = Client::connect(&server.ws_url("/"));
    let welcome = client.recv_json();
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    client.id = welcome["id"].as_u64();
    client.recv_type("notification");
    (client, welcome)
}

fn send(client: &mut Client, frame: Value) {
    client.send_text(&frame.to_string());
}

/// Moves `client` to `room`; returns the `joined` answer.
fn enter(client: &mut Client, room: &str) -> Value {
    send(client, json!({"type": "join", "room": room}));
    let joined = client.recv_type("joined");
    assert_eq!(joined["room"], room, "{joined}");
    joined
}

/// Everything `client` receives until (and with) the message whose `msg` is `last`.
fn until(client: &mut Client, last: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let frame = client.recv_json();
        let done = frame["type"] == "message" && frame["msg"] == last;
        seen.push(frame);
        if done {
            return seen;
        }
    }
}

fn messages(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["msg"].as_str().unwrap().to_string())
        .collect()
}

/// The next text line a plain-text client receives.
fn line(client: &mut Client) -> String {
    match client.recv() {
        Message::Text(text) => text.to_string(),
        other => panic!("expected a line, got {other:?}"),
    }
}

#[test]
fn a_v1_client_sees_v1_in_the_lobby() {
    let server = Server::start(&[]);
    let (mut alice, welcome) = join(&server);
    assert_eq!(welcome["protocol"], "threadchat.v1");
    assert_eq!(welcome["room"], "lobby");
    assert!(welcome["epoch"].as_u64().unwrap() > 1_600_000_000_000);
    alice.send_chat("alice", "hi");
    let m = alice.recv_type("message");
    assert_eq!(
        (m["name"].as_str(), m["msg"].as_str()),
        (Some("alice"), Some("hi"))
    );
    assert_eq!(m["room"], "lobby");
    // A message without a name, from a client that said no hello, is still an error.
    alice.send_text(r#"{"msg":"who am I"}"#);
    assert!(
        alice.recv_type("error")["msg"]
            .as_str()
            .unwrap()
            .contains("hello")
    );
}

#[test]
fn the_v2_and_plain_text_subprotocols_are_selected_when_offered() {
    let server = Server::start(&[]);
    let url = server.ws_url("/");
    let mut v2 = Client::connect_with(
        &url,
        &[("sec-websocket-protocol", "threadchat.v1, threadchat.v2")],
    )
    .unwrap();
    assert_eq!(v2.protocol.as_deref(), Some("threadchat.v2"));
    assert_eq!(v2.recv_json()["protocol"], "threadchat.v2");
    let mut text = Client::connect_with(&url, &[("sec-websocket-protocol", "chatting")]).unwrap();
    assert_eq!(text.protocol.as_deref(), Some("chatting"));
    assert!(line(&mut text).starts_with("welcome: you are "));
}

#[test]
fn rooms_keep_their_messages_and_presence_apart() {
    let server = Server::start(&[]);
    let (mut ann, _) = join(&server);
    let (mut bob, _) = join(&server);
    ann.recv_type("notification"); // Bob's join
    send(&mut bob, json!({"type": "hello", "name": "bob"}));
    assert_eq!(bob.recv_type("hello")["name"], "bob");
    let joined = enter(&mut bob, "games");
    assert_eq!(joined["count"], 1);
    // The lobby hears Bob leave, by id and name, with its own count.
    let left = ann.recv_type("notification");
    assert_eq!(left["event"], "leave");
    assert_eq!(
        (left["count"].as_u64(), left["room"].as_str()),
        (Some(1), Some("lobby"))
    );
    assert_eq!(
        (left["id"].as_u64(), left["name"].as_str()),
        (bob.id, Some("bob"))
    );

    send(&mut bob, json!({"msg": "in games"}));
    ann.send_chat("ann", "in the lobby");
    let heard = until(&mut bob, "in games");
    assert_eq!(heard.last().unwrap()["room"], "games");
    assert_eq!(heard.last().unwrap()["name"], "bob", "hello's name");
    assert_eq!(messages(&until(&mut ann, "in the lobby")), ["in the lobby"]);
    // Nothing crossed: each asks again, and the next thing each hears is its answer.
    send(&mut ann, json!({"type": "rooms"}));
    let rooms = ann.recv_json();
    assert_eq!(rooms["type"], "rooms", "Ann heard {rooms}");
    assert_eq!(
        rooms["rooms"],
        json!([{"room": "lobby", "count": 1}, {"room": "games", "count": 1}])
    );
    send(&mut bob, json!({"type": "who"}));
    let who = bob.recv_json();
    assert_eq!(who["type"], "who", "Bob heard {who}");
    assert_eq!(who["members"], json!([{"id": bob.id, "name": "bob"}]));
}

#[test]
fn every_member_of_a_room_sees_its_messages_in_one_order() {
    const EACH: usize = 40;
    let server = Server::start(&["--rate", "100000", "--burst", "100000"]);
    let mut listeners = Vec::new();
    let mut senders = Vec::new();
    for room in ["red", "blue"] {
        for _ in 0..3 {
            let (mut client, _) = join(&server);
            enter(&mut client, room);
            listeners.push((room, client));
        }
        for _ in 0..2 {
            let (mut client, _) = join(&server);
            enter(&mut client, room);
            senders.push((room, client));
        }
    }
    let handles: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(s, (room, mut client))| {
            thread::spawn(move || {
                for k in 0..EACH {
                    client.send_chat(&format!("{room}-{s}"), &format!("{room} {s} {k}"));
                }
                client
            })
        })
        .collect();
    let _senders: Vec<Client> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut orders: Vec<(&str, Vec<(u64, String)>)> = Vec::new();
    for (room, client) in &mut listeners {
        let mut seen = Vec::new();
        while seen.len() < 2 * EACH {
            let m = client.recv_type("message");
            assert_eq!(m["room"], *room, "{m}");
            seen.push((
                m["id"].as_u64().unwrap(),
                m["msg"].as_str().unwrap().to_string(),
            ));
        }
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");
        assert!(
            seen.iter().all(|(_, msg)| msg.starts_with(*room)),
            "only its room"
        );
        orders.push((room, seen));
    }
    for room in ["red", "blue"] {
        let same: Vec<_> = orders.iter().filter(|(r, _)| *r == room).collect();
        assert!(
            same.windows(2).all(|w| w[0].1 == w[1].1),
            "{room}: one order"
        );
    }
}

#[test]
fn except_sender_reaches_everyone_but_the_sender() {
    let server = Server::start(&[]);
    let (mut ann, _) = join(&server);
    let (mut bob, _) = join(&server);
    ann.recv_type("notification");
    send(
        &mut ann,
        json!({"name": "ann", "msg": "not to me", "except_sender": true}),
    );
    ann.send_chat("ann", "to all");
    assert_eq!(
        messages(&until(&mut bob, "to all")),
        ["not to me", "to all"]
    );
    assert_eq!(messages(&until(&mut ann, "to all")), ["to all"]);
}

#[test]
fn a_direct_message_reaches_its_target_only() {
    let server = Server::start(&[]);
    let (mut ann, _) = join(&server);
    let (mut bob, _) = join(&server);
    let (mut cid, _) = join(&server);
    enter(&mut cid, "elsewhere");
    send(&mut ann, json!({"type": "hello", "name": "ann"}));
    ann.recv_type("hello");
    send(
        &mut ann,
        json!({"type": "direct", "to": cid.id, "msg": "psst"}),
    );
    let got = cid.recv_type("direct");
    assert_eq!(
        (got["from"].as_u64(), got["name"].as_str()),
        (ann.id, Some("ann"))
    );
    assert_eq!(
        (got["msg"].as_str(), got.get("delivered")),
        (Some("psst"), None)
    );
    let copy = ann.recv_type("direct");
    assert_eq!(
        (copy["to"].as_u64(), copy["delivered"].as_bool()),
        (cid.id, Some(true))
    );
    // Bob, in the lobby with Ann, got nothing but the next message.
    ann.send_chat("ann", "after");
    let heard = until(&mut bob, "after");
    assert!(heard.iter().all(|f| f["type"] != "direct"), "{heard:?}");
    send(
        &mut ann,
        json!({"type": "direct", "to": 9999, "msg": "anyone?"}),
    );
    assert!(
        ann.recv_type("error")["msg"]
            .as_str()
            .unwrap()
            .contains("9999")
    );
}

#[test]
fn a_joiner_gets_the_history_then_live_messages_without_a_gap_or_a_duplicate() {
    let server = Server::start(&unthrottled(&["--history", "1000"]));
    let (mut talker, _) = join(&server);
    enter(&mut talker, "busy");
    // Some history before the joiner comes (the talker has heard its own tenth
    // message back, so the hub has taken all ten) ...
    for k in 0..10 {
        talker.send_chat("t", &k.to_string());
    }
    until(&mut talker, "9");
    // ... then the talker keeps talking while the joiner arrives, and keeps the
    // second half back until the joiner is in: it lands mid-stream.
    let (joined, go_on) = std::sync::mpsc::channel::<()>();
    let talking = thread::spawn(move || {
        for k in 10..300 {
            if k == 150 {
                go_on.recv().unwrap();
            }
            talker.send_chat("t", &k.to_string());
            if k % 10 == 0 {
                // A sender at a human pace, so that messages are in flight
                // while the joiner's join is.
                thread::sleep(Duration::from_millis(2));
            }
        }
        talker
    });
    let (mut joiner, _) = join(&server);
    enter(&mut joiner, "busy");
    joined.send(()).unwrap();
    let heard = until(&mut joiner, "299");
    talking.join().unwrap();
    let numbers: Vec<u32> = messages(&heard)
        .iter()
        .map(|m| m.parse().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (0..300).collect::<Vec<_>>(),
        "every message once, in order"
    );
    let replayed = heard.iter().filter(|f| f["history"] == true).count();
    assert!(
        replayed > 0 && replayed < 300,
        "it arrived mid-stream: {replayed} replayed"
    );
    // The replay comes first.
    let first_live = heard
        .iter()
        .position(|f| f["type"] == "message" && f.get("history").is_none())
        .unwrap();
    assert!(
        heard[first_live..]
            .iter()
            .all(|f| f.get("history").is_none())
    );
}

#[test]
fn since_replays_exactly_what_came_after_or_says_there_is_a_gap() {
    let server = Server::start(&["--history", "3"]);
    let (mut talker, welcome) = join(&server);
    enter(&mut talker, "r");
    let mut ids = Vec::new();
    for k in 1..=5 {
        talker.send_chat("t", &format!("m{k}"));
        ids.push(talker.recv_type("message")["id"].as_u64().unwrap());
    }
    let epoch = welcome["epoch"].as_u64().unwrap();
    let (mut back, _) = join(&server);
    // The history holds m3..m5: from after m2 nothing is missing.
    send(
        &mut back,
        json!({"type": "join", "room": "r", "since": ids[1], "epoch": epoch}),
    );
    let joined = back.recv_type("joined");
    assert_eq!(joined.get("gap"), None, "{joined}");
    assert_eq!(messages(&until(&mut back, "m5")), ["m3", "m4", "m5"]);
    // From after m1, m2 is gone: a gap, and what there is.
    let (mut later, _) = join(&server);
    send(
        &mut later,
        json!({"type": "join", "room": "r", "since": ids[0], "epoch": epoch}),
    );
    assert_eq!(later.recv_type("joined")["gap"], true);
    assert_eq!(messages(&until(&mut later, "m5")), ["m3", "m4", "m5"]);
    // Ids from another run of the server: a gap, and all there is.
    let (mut restarted, _) = join(&server);
    send(
        &mut restarted,
        json!({"type": "join", "room": "r", "since": ids[4], "epoch": 1}),
    );
    assert_eq!(restarted.recv_type("joined")["gap"], true);
    assert_eq!(messages(&until(&mut restarted, "m5")), ["m3", "m4", "m5"]);
}

#[test]
fn an_emptied_room_keeps_its_history_until_its_place_is_needed() {
    let server = Server::start(&["--max-rooms", "3"]);
    let (mut alone, _) = join(&server);
    enter(&mut alone, "mine");
    alone.send_chat("a", "note to self");
    alone.recv_type("message");
    drop(alone);
    let (mut again, _) = join(&server);
    enter(&mut again, "mine");
    assert_eq!(
        messages(&until(&mut again, "note to self")),
        ["note to self"]
    );
    // Three rooms (lobby, mine, other) are all there may be; with each in use, a
    // fourth is refused.
    let (mut other, _) = join(&server);
    enter(&mut other, "other");
    send(&mut other, json!({"type": "join", "room": "fourth"}));
    assert!(
        other.recv_type("error")["msg"]
            .as_str()
            .unwrap()
            .contains("rooms are in use")
    );
    send(&mut other, json!({"type": "join", "room": "no spaces"}));
    assert!(
        other.recv_type("error")["msg"]
            .as_str()
            .unwrap()
            .contains("not a room name")
    );
}

#[test]
fn a_burst_over_the_rate_is_told_once_a_second_with_how_many_were_dropped() {
    let server = Server::start(&[]); // 10 a second, bursts of 20
    let (mut hasty, _) = join(&server);
    let started = Instant::now();
    for k in 0..30 {
        hasty.send_chat("h", &format!("{k}"));
    }
    // Then nothing: the second notice comes by itself, when its second is up, and
    // counts what the first did not.
    let (mut relayed, mut notices) = (0, Vec::new());
    while notices.iter().sum::<u64>() + relayed < 30 {
        let frame = hasty.recv_json();
        match frame["type"].as_str() {
            Some("message") => relayed += 1,
            Some("error") => notices.push(frame["dropped"].as_u64().unwrap()),
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    assert!(relayed >= 20, "{relayed} relayed");
    assert_eq!(notices.iter().sum::<u64>() + relayed, 30, "{notices:?}");
    assert_eq!(notices[0], 1, "the first drop is told at once: {notices:?}");
    // The rest in one notice a second at most (one error per dropped frame
    // before: ten), the last of them after the burst, by itself.
    assert!(notices.len() >= 2, "{notices:?}");
    assert!(
        notices.len() as u64 <= 2 + elapsed.as_secs(),
        "{notices:?} in {elapsed:?}"
    );
}

#[test]
fn a_flooder_is_cut_off_and_a_quiet_client_is_not() {
    let server = Server::start(&[]); // 10 a second, bursts of 20
    let (mut quiet, _) = join(&server);
    let (mut flooder, _) = join(&server);
    quiet.recv_type("notification");
    let flooding = thread::spawn(move || {
        let (mut errors, mut sent) = (0, 0);
        while sent < 1000
            && flooder
                .ws
                .send(Message::text(r#"{"name":"f","msg":"x"}"#))
                .is_ok()
        {
            sent += 1;
        }
        // Until the server closes it: errors for the dropped, then 1008.
        loop {
            match flooder.recv() {
                Message::Text(text) if text.contains("slow down") => errors += 1,
                Message::Close(frame) => return (errors, frame.map(|f| u16::from(f.code))),
                _ => {}
            }
        }
    });
    let (errors, code) = flooding.join().unwrap();
    assert_eq!(code, Some(1008));
    // Told once a second at most: telling costs less than the flood.
    assert!((1..=3).contains(&errors), "{errors} errors");
    eventually("the flood is counted", || {
        server.disconnects("flooding") == 1
    });
    // The quiet client, at its own pace, is served as ever.
    for k in 0..5 {
        quiet.send_chat("q", &format!("quiet {k}"));
        let heard = until(&mut quiet, &format!("quiet {k}"));
        assert!(heard.iter().all(|f| f["type"] != "error"), "{heard:?}");
    }
}

#[test]
fn binary_frames_take_tokens_too() {
    let server = Server::start(&[]); // 10 a second, bursts of 20
    let (mut flooder, _) = join(&server);
    let mut sent = 0;
    while sent < 1000 && flooder.ws.send(Message::binary(vec![0u8; 8])).is_ok() {
        sent += 1;
    }
    assert_eq!(flooder.recv_close(), 1008);
    eventually("the flood is counted", || {
        server.disconnects("flooding") == 1
    });
}

#[test]
fn only_an_admin_connection_may_kick() {
    let server = Server::start(&["--admin-token", "s3cret"]);
    let (mut victim, _) = join(&server);
    let mut admin = Client::connect(&server.ws_url("/?admin=s3cret"));
    admin.recv_type("welcome");
    let mut pretender = Client::connect(&server.ws_url("/?admin=wrong"));
    pretender.recv_type("welcome");
    send(&mut pretender, json!({"type": "kick", "id": victim.id}));
    assert!(
        pretender.recv_type("error")["msg"]
            .as_str()
            .unwrap()
            .contains("admin")
    );
    send(&mut admin, json!({"type": "kick", "id": victim.id}));
    // The victim ignores the Close (never answers it): it is gone all the same.
    assert_eq!(victim.recv_close(), 4001);
    let note = loop {
        let note = pretender.recv_type("notification");
        if note["event"] == "kick" {
            break note;
        }
    };
    assert_eq!(note["id"].as_u64(), victim.id);
    eventually("the kick is counted", || server.disconnects("kicked") == 1);
    // No second notification when the kicked client's reader ends.
    pretender.send_chat("p", "after");
    let heard = until(&mut pretender, "after");
    assert!(
        heard.iter().all(|f| f["type"] != "notification"),
        "{heard:?}"
    );
}

#[test]
fn the_admin_token_never_reaches_the_log() {
    let server = Process::start_with_env(
        &[],
        &[
            ("THREADCHAT_ADMIN_TOKEN", "tok-5ecret-xyz"),
            ("RUST_LOG", "trace"),
        ],
    );
    let mut admin = Client::connect(&server.ws_url("/?admin=tok-5ecret-xyz"));
    admin.recv_type("welcome");
    let (_, _) = (
        Client::connect(&server.ws_url("/?admin=tok-5ecret-xyq")),
        Client::connect_with(&server.ws_url("/nowhere?admin=tok-5ecret-xyz"), &[]).err(),
    );
    send(&mut admin, json!({"type": "kick", "id": 424242}));
    admin.recv_type("error");
    support::http_get(server.http, "/?admin=tok-5ecret-xyz");
    // The whole log, the trace of every frame and request above included: the
    // server's last line is written after everything else.
    server.signal(rustix::process::Signal::TERM);
    server.wait_for_log("bye");
    let log = server.log_text();
    assert!(!log.contains("5ecret"), "the token is in the log:\n{log}");
}

#[test]
fn plain_text_clients_talk_with_json_clients() {
    let server = Server::start(&[]);
    let (mut ann, _) = join(&server);
    let mut tina = Client::connect(&server.ws_url("/text?name=tina"));
    assert!(
        line(&mut tina).starts_with("welcome: you are "),
        "a welcome line"
    );
    assert_eq!(line(&mut tina), "user joined [online: 2]");
    ann.recv_type("notification");
    ann.send_chat("ann", "hi tina");
    assert_eq!(line(&mut tina), "[ann] hi tina");
    tina.send_text("hi ann");
    let m = until(&mut ann, "hi ann").pop().unwrap();
    assert_eq!(
        (m["name"].as_str(), m["msg"].as_str()),
        (Some("tina"), Some("hi ann"))
    );
    assert_eq!(line(&mut tina), "[tina] hi ann");
    // The chatting subprotocol is plain text too, without a name; and a room by query.
    let mut anon = Client::connect_with(
        &server.ws_url("/?room=lobby"),
        &[("sec-websocket-protocol", "chatting")],
    )
    .unwrap();
    line(&mut anon);
    anon.send_text("no name");
    assert_eq!(until(&mut ann, "no name").pop().unwrap()["name"], "");
    let mut elsewhere = Client::connect(&server.ws_url("/text?room=games"));
    assert!(line(&mut elsewhere).contains("in games"));
    tina.send_text("   ");
    let error = loop {
        let l = line(&mut tina);
        if l.starts_with("error: ") {
            break l;
        }
    };
    assert_eq!(error, "error: msg is empty");
}

#[test]
fn nobody_speaks_as_the_server_to_plain_text_clients() {
    let server = Server::start(&[]);
    let (mut mallory, _) = join(&server);
    let mut tina = Client::connect(&server.ws_url("/text?name=tina"));
    assert!(line(&mut tina).starts_with("welcome: "));
    assert_eq!(line(&mut tina), "user joined [online: 2]");
    // The server's own line, word for word, as a message without a name; then
    // one that would add a line of its own, one that rewrites the terminal's
    // line, and a name made to look like the server.
    let forgeries = [
        json!({"name": "", "msg": "user left [online: 1]"}),
        json!({"name": "mallory", "msg": "hi\nuser left [online: 1]\r\nerror: x"}),
        json!({"name": "m", "msg": "\u{1b}[2K\rwelcome: you are 1 in lobby, 1 here"}),
        json!({"name": "user left [online", "msg": "1]"}),
    ];
    for forgery in &forgeries {
        send(&mut mallory, forgery.clone());
    }
    let seen: Vec<String> = forgeries.iter().map(|_| line(&mut tina)).collect();
    assert_eq!(
        seen,
        [
            "[anonymous] user left [online: 1]",
            "[mallory] hi user left [online: 1]  error: x",
            "[m] \u{fffd}[2K welcome: you are 1 in lobby, 1 here",
            "[user left [online] 1]",
        ]
    );
    // JSON clients get them exactly as sent.
    let relayed = messages(&until(&mut mallory, "1]"));
    assert_eq!(relayed[0], "user left [online: 1]");
    assert_eq!(relayed[1], "hi\nuser left [online: 1]\r\nerror: x");
    // A plain-text client that comes later reads them in the history, the same.
    let mut late = Client::connect(&server.ws_url("/text"));
    assert!(line(&mut late).starts_with("welcome: "));
    let history: Vec<String> = forgeries.iter().map(|_| line(&mut late)).collect();
    assert_eq!(history, seen);
    assert_eq!(line(&mut late), "user joined [online: 3]");
}

#[test]
fn the_tutorials_ping_gets_a_pong() {
    let server = Server::start(&[]);
    let (mut ann, _) = join(&server);
    send(&mut ann, json!({"type": "ping"}));
    assert_eq!(ann.recv_json(), json!({"type": "pong"}));
}
