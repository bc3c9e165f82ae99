//! Budgets per address: one flooding address must not cut honest people off.
//!
//! Each test is a story. An attacker on `127.0.0.2` does, through many
//! connections, something each of them may do, while on `127.0.0.1` two honest
//! people chat: a phone that reads at 1 MB/s through a 16 KiB receive buffer,
//! and a sender who says something every 100 ms and waits to hear it back. In
//! every story the phone is not cut off and hears every honest message, the
//! honest round trip stays under half a second, what the attacker got through
//! stays within its address's budget, and the server's threads, descriptors and
//! memory come back to where they were once the attacker is gone.
//!
//! The defaults are under test here: 50 frames, 128 KiB in and 2 MiB out a
//! second per address, each with four seconds' worth at once.

mod support;

use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{
    Client, Footprint, Process, Running, connect_from, connect_with_receive_buffer_from, eventually,
};
use tungstenite::Message;

const HONEST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// The attacker's connections: `--max-per-host`'s default.
const CONNECTIONS: usize = 32;

/// How long each attack lasts.
const ATTACK: Duration = Duration::from_secs(4);

/// The honest round trip, at most, while under attack.
const ROUND_TRIP: Duration = Duration::from_millis(500);

/// The log may grow by this much during one attack (it lasts 4 s): under any
/// attack, at most a few hundred KB a minute.
const LOG_GROWTH: usize = 32 * 1024;

/// One attack at a time: each uses both cores, and a round trip measured while
/// another test's attack runs would measure that attack.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The default budgets, as the server has them.
const FRAMES_PER_SECOND: u64 = 50;
const BYTES_OUT_PER_SECOND: u64 = 2 * 1024 * 1024;
const BURST_SECONDS: u64 = 4;

/// The most of a budget of `rate` a second an address can use in `elapsed`: its
/// burst, what it earns meanwhile, and one overdraw of `largest`.
fn most(rate: u64, elapsed: Duration, largest: u64) -> u64 {
    rate * BURST_SECONDS + (rate as f64 * elapsed.as_secs_f64()) as u64 + largest
}

/// A phone on Wi-Fi: reads at 1 MB/s through a small receive buffer, and keeps
/// every honest message it hears.
struct Phone {
    reader: JoinHandle<Heard>,
}

/// What the phone heard before it was told to stop.
struct Heard {
    honest: Vec<String>,
    /// Direct messages it was sent.
    directs: u64,
    /// The close code, if the server closed it.
    closed: Option<u16>,
}

const PHONE_BYTES_PER_SECOND: f64 = 1_000_000.0;

impl Phone {
    fn join(server: &Process) -> Phone {
        let stream = connect_with_receive_buffer_from(HONEST, server.ws_addr(), 16 * 1024);
        let mut client = Client::join_over(server, stream);
        let reader = thread::spawn(move || {
            let started = Instant::now();
            let mut read = 0usize;
            let mut heard = Heard {
                honest: Vec::new(),
                directs: 0,
                closed: None,
            };
            loop {
                let Some(message) = client.try_recv(Duration::from_secs(30)) else {
                    return heard;
                };
                read += message.len();
                // Reading at the phone's pace: what it has read may not run ahead of
                // 1 MB/s since it started.
                let due = Duration::from_secs_f64(read as f64 / PHONE_BYTES_PER_SECOND);
                if let Some(ahead) = due.checked_sub(started.elapsed()) {
                    thread::sleep(ahead);
                }
                match message {
                    Message::Close(frame) => {
                        heard.closed = Some(frame.map_or(1005, |f| u16::from(f.code)));
                        return heard;
                    }
                    Message::Text(text) => {
                        let value: Value = serde_json::from_str(&text).unwrap();
                        if value["type"] == "direct" {
                            heard.directs += 1;
                        }
                        if value["name"] == "honest" {
                            let msg = value["msg"].as_str().unwrap().to_string();
                            let done = msg == "done";
                            heard.honest.push(msg);
                            if done {
                                return heard;
                            }
                        }
                    }
                    _ => {}
                }
            }
        });
        Phone { reader }
    }

    /// Waits for the phone to hear "done" (or be cut off).
    fn heard(self) -> Heard {
        self.reader.join().expect("the phone's thread")
    }
}

/// What the honest sender did and heard.
struct Said {
    /// Messages before `done`.
    said: usize,
    longest_round_trip: Duration,
    /// Chat messages of the attacker's it heard meanwhile (it reads everything).
    attacker_messages: u64,
}

/// The honest sender: says `honest k` every 100 ms until `stop`, then `done`,
/// waiting each time to hear its own message back.
fn honest_sender(server: &Process, stop: Arc<AtomicBool>) -> JoinHandle<Said> {
    let mut client = Client::join_over(server, connect_from(HONEST, server.ws_addr()));
    thread::spawn(move || {
        let mut longest = Duration::ZERO;
        let mut said = 0;
        let mut attacker_messages = 0;
        let mut say = |client: &mut Client, msg: &str| {
            let sent = Instant::now();
            client.send_chat("honest", msg);
            loop {
                let value = match client.recv() {
                    Message::Text(text) => serde_json::from_str::<Value>(&text).unwrap(),
                    Message::Close(frame) => panic!("the honest sender was closed: {frame:?}"),
                    _ => continue,
                };
                assert_ne!(
                    value["type"], "error",
                    "the honest sender was refused: {value}"
                );
                if value["type"] == "message" && value["name"] == "attack" {
                    attacker_messages += 1;
                }
                if value["name"] == "honest" && value["msg"] == msg {
                    return sent.elapsed();
                }
            }
        };
        while !stop.load(Ordering::Relaxed) {
            longest = longest.max(say(&mut client, &format!("{said}")));
            said += 1;
            thread::sleep(Duration::from_millis(100)); // the pace of a person
        }
        longest = longest.max(say(&mut client, "done"));
        Said {
            said,
            longest_round_trip: longest,
            attacker_messages,
        }
    })
}

/// Runs `attack` on `CONNECTIONS` threads from the attacker's address for
/// [`ATTACK`], while the phone listens and the sender talks; then checks the
/// honest side of the story and that the server comes back to its footprint.
fn while_honest_people_chat(
    server: &Process,
    attack: impl Fn(usize, &AtomicBool) -> u64 + Send + Sync + 'static,
) -> Story {
    let before = settled(server);
    let log_before = server.log_text().len();
    let phone = Phone::join(server);
    let stop = Arc::new(AtomicBool::new(false));
    let attack = Arc::new(attack);
    let attackers: Vec<_> = (0..CONNECTIONS)
        .map(|n| {
            let (attack, stop) = (Arc::clone(&attack), Arc::clone(&stop));
            thread::spawn(move || attack(n, &stop))
        })
        .collect();
    let sender = honest_sender(server, Arc::clone(&stop));
    let started = Instant::now();
    while started.elapsed() < ATTACK {
        thread::sleep(Duration::from_millis(50)); // the attack's length
    }
    stop.store(true, Ordering::Relaxed);
    let Said {
        said,
        longest_round_trip: longest,
        attacker_messages,
    } = sender.join().expect("the honest sender");
    let total = attackers.into_iter().map(|a| a.join().unwrap()).sum();
    let heard = phone.heard();
    assert_eq!(heard.closed, None, "the phone was cut off");
    let expected: Vec<String> = (0..said)
        .map(|k| k.to_string())
        .chain(["done".to_string()])
        .collect();
    assert_eq!(heard.honest, expected, "the phone missed honest messages");
    assert!(said >= 10, "the honest sender said only {said} things");
    assert!(
        longest < ROUND_TRIP,
        "an honest round trip took {longest:?}"
    );
    comes_back(server, before);
    let logged = server.log_text().len() - log_before;
    eprintln!("log grew by {logged} bytes; longest round trip {longest:?}");
    assert!(logged < LOG_GROWTH, "the log grew by {logged} bytes");
    Story {
        attack: total,
        attacker_messages,
        directs_to_the_phone: heard.directs,
    }
}

/// How a story went, beyond what every story checks.
struct Story {
    /// What the attack threads returned, added up.
    attack: u64,
    /// The attacker's chat messages the honest sender heard.
    attacker_messages: u64,
    /// Direct messages the phone was sent.
    directs_to_the_phone: u64,
}

/// The server's footprint once nothing is happening.
fn settled(server: &Process) -> Footprint {
    eventually("the server is idle", || {
        server.stats()["clients"].as_u64() == Some(0)
    });
    server.footprint()
}

/// Threads and descriptors come back to `before`, and memory to within 4 MiB.
fn comes_back(server: &Process, before: Footprint) {
    eventually("the attacker's connections are gone", || {
        let now = server.footprint();
        now.threads <= before.threads && now.fds <= before.fds
    });
    let after = server.footprint();
    assert!(
        after.rss_kib < before.rss_kib + 4 * 1024,
        "RSS {} KiB after, {} KiB before",
        after.rss_kib,
        before.rss_kib
    );
}

/// An attacker's chat client: handshake, welcome, nothing read after that.
fn attacker_joins(server_ws: std::net::SocketAddr) -> Option<tungstenite::WebSocket<TcpStream>> {
    attacker_joins_from(ATTACKER, server_ws)
}

/// [`attacker_joins`] from another of the attacker's hosts.
fn attacker_joins_from(
    host: IpAddr,
    server_ws: std::net::SocketAddr,
) -> Option<tungstenite::WebSocket<TcpStream>> {
    let stream = connect_from(host, server_ws);
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let url = format!("ws://{server_ws}/");
    // Refused (the address's places, its handshakes): try again next round.
    let (ws, _) = tungstenite::client(url, stream).ok()?;
    Some(ws)
}

/// The server, on its defaults, and the right to attack it alone.
fn start() -> (Process, MutexGuard<'static, ()>) {
    let alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    (Process::start(&[]), alone)
}

#[test]
fn reconnecting_refills_nothing() {
    let (server, _alone) = start();
    let ws = server.ws_addr();
    let started = Instant::now();
    // Each connection sends its burst of 20 and goes; another comes at once.
    let Story {
        attack: sent,
        attacker_messages: heard,
        ..
    } = while_honest_people_chat(&server, move |n, stop| {
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            let Some(mut ws) = attacker_joins(ws) else {
                continue;
            };
            for k in 0..20 {
                let text = json!({"name": "attack", "msg": format!("{n}/{k}")}).to_string();
                if ws.send(Message::text(text)).is_err() {
                    break;
                }
                sent += 1;
            }
        }
        sent
    });
    let elapsed = started.elapsed();
    assert!(
        heard <= most(FRAMES_PER_SECOND, elapsed, 1),
        "{heard} of the attacker's {sent} messages got through in {elapsed:?}"
    );
    assert!(sent > heard * 5, "the attack sent only {sent}");
}

#[test]
fn direct_messages_at_one_victim_do_not_cut_it_off() {
    let (server, _alone) = start();
    let ws = server.ws_addr();
    // The victim is the phone, the next client to connect after this one.
    let scout = Client::join_over(&server, connect_from(HONEST, ws))
        .id
        .unwrap();
    let victim = Arc::new(AtomicU64::new(scout + 1));
    let text = "x".repeat(2_000);
    let started = Instant::now();
    let story = while_honest_people_chat(&server, move |_, stop| {
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            let Some(mut ws) = attacker_joins(ws) else {
                continue;
            };
            let to = victim.load(Ordering::Relaxed);
            let frame = json!({"type": "direct", "to": to, "msg": text}).to_string();
            for _ in 0..20 {
                if ws.send(Message::text(frame.clone())).is_err() {
                    break;
                }
                sent += 1;
            }
        }
        sent
    });
    let elapsed = started.elapsed();
    // The attack reached its victim, as much as its address may pay for: each
    // direct message costs two copies (the victim's and the sender's).
    let directs = story.directs_to_the_phone;
    assert!(directs > 0, "no direct message reached the phone");
    assert!(
        directs * 2 * 2_000 <= most(BYTES_OUT_PER_SECOND, elapsed, 4 * 1024),
        "{directs} of the attacker's {} direct messages reached the phone in {elapsed:?}",
        story.attack
    );
}

#[test]
fn fan_out_within_every_connection_s_rate_is_held_to_the_address_s_budget() {
    let (server, _alone) = start();
    let ws = server.ws_addr();
    let started = Instant::now();
    // 12 KB on the wire each way: 2,000 control characters, escaped by JSON.
    let text = "\u{1}".repeat(2_000);
    let Story {
        attack: received, ..
    } = while_honest_people_chat(&server, move |_, stop| {
        let Some(mut ws) = attacker_joins(ws) else {
            return 0;
        };
        // Short enough to keep the 105 ms pace, long enough not to spin.
        ws.get_mut()
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let frame = Message::text(json!({"name": "attack", "msg": text}).to_string());
        let mut received = 0u64;
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            // 9.5 a second: inside `--rate`, which is per connection.
            if Instant::now() >= next {
                if ws.send(frame.clone()).is_err() {
                    break;
                }
                next += Duration::from_millis(105);
            }
            // Read everything the server sends it, as fast as it comes.
            match ws.read() {
                Ok(message) => received += message.len() as u64,
                Err(tungstenite::Error::Io(_)) => {}
                Err(_) => break,
            }
        }
        received
    });
    let elapsed = started.elapsed();
    // What the server sent the attacker is at most what its address may make the
    // server send (the honest people's messages to it aside: small).
    let allowed = most(BYTES_OUT_PER_SECOND, elapsed, 13 * 1024 * 40);
    eprintln!("the attacker received {received} bytes in {elapsed:?}, {allowed} allowed");
    assert!(
        received <= allowed,
        "the attacker received {received} bytes in {elapsed:?}"
    );
}

#[test]
fn a_ping_flood_does_not_slow_the_honest_round_trip() {
    let (server, _alone) = start();
    let ws = server.ws_addr();
    let Story { attack: pongs, .. } = while_honest_people_chat(&server, move |_, stop| {
        let mut pongs = 0;
        while !stop.load(Ordering::Relaxed) {
            let Some(mut ws) = attacker_joins(ws) else {
                continue;
            };
            ws.get_mut()
                .set_read_timeout(Some(Duration::from_millis(1)))
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                if ws.send(Message::Ping(vec![0; 8].into())).is_err() {
                    break;
                }
                match ws.read() {
                    Ok(Message::Pong(_)) => pongs += 1,
                    Ok(Message::Close(_)) => break,
                    Ok(_) | Err(tungstenite::Error::Io(_)) => {}
                    Err(_) => break,
                }
            }
        }
        pongs
    });
    let flooding = server.disconnects("flooding");
    assert!(
        flooding > 0,
        "no pinging connection was closed ({pongs} pongs)"
    );
}

#[test]
fn joining_one_s_own_room_replays_nothing_and_a_replay_is_paid_for() {
    let (server, _alone) = start();
    let ws = server.ws_addr();
    // A lobby with a history of 100 messages of 400 bytes.
    let mut filler = Client::join_over(&server, connect_from(HONEST, ws));
    for k in 0..100 {
        filler.send_chat("filler", &format!("{k:0>400}"));
        filler.recv_type("message");
        if k % 15 == 14 {
            // Within the connection's own rate: the fill is honest.
            let resume = Instant::now() + Duration::from_millis(1_600);
            while Instant::now() < resume {
                filler.try_recv(Duration::from_millis(100));
            }
        }
    }
    drop(filler);
    let started = Instant::now();
    let Story {
        attack: received, ..
    } = while_honest_people_chat(&server, move |n, stop| {
        let Some(mut ws) = attacker_joins(ws) else {
            return 0;
        };
        ws.get_mut()
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        // Half without `since` (nothing to replay), half with (the whole history).
        let join = match n % 2 {
            0 => json!({"type": "join", "room": "lobby"}),
            _ => json!({"type": "join", "room": "lobby", "since": 0}),
        };
        let join = Message::text(join.to_string());
        let mut received = 0;
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                if ws.send(join.clone()).is_err() {
                    break;
                }
                next += Duration::from_millis(105);
            }
            match ws.read() {
                Ok(message) => received += message.len() as u64,
                Err(tungstenite::Error::Io(_)) => {}
                Err(_) => break,
            }
        }
        received
    });
    let elapsed = started.elapsed();
    // 43 KB of history per replay, 16 × 9.5 replays a second asked for: 26 MB
    // without a budget.
    assert!(
        received <= most(BYTES_OUT_PER_SECOND, elapsed, 64 * 1024 * 16),
        "the attacker received {received} bytes in {elapsed:?}"
    );
}

#[test]
fn one_address_s_new_rooms_do_not_evict_a_room_others_use() {
    let (server, _alone) = start();
    let ws = server.ws_addr();
    // An honest room with history, empty for now (its people are away).
    let mut honest = Client::join_over(&server, connect_from(HONEST, ws));
    honest.send_text(r#"{"type":"join","room":"homework"}"#);
    honest.recv_type("joined");
    let mut first = 0;
    for k in 0..5 {
        honest.send_chat("honest", &format!("homework {k}"));
        let id = honest.recv_type("message")["id"].as_u64().unwrap();
        if k == 0 {
            first = id;
        }
    }
    drop(honest);
    // The attacker churns through 120 new rooms from 12 connections on 4 hosts
    // (127.0.0.2–5): once every room place was theirs.
    while_honest_people_chat(&server, move |n, stop| {
        if n >= 12 {
            return 0;
        }
        let host = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (n % 4) as u8));
        let Some(mut ws) = attacker_joins_from(host, ws) else {
            return 0;
        };
        for k in 0..10 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let room = format!("spam-{n}-{k}");
            // 30 rooms each from 4 hosts: 120, more than `--max-rooms` allows.
            let join = json!({"type": "join", "room": room}).to_string();
            if ws.send(Message::text(join)).is_err() {
                break;
            }
            loop {
                match ws.read() {
                    Ok(Message::Text(t)) if t.contains("\"joined\"") || t.contains("error") => {
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => return 0,
                }
            }
        }
        0
    });
    // The honest people come back: the history is whole, and a new room is theirs.
    let mut back = Client::join_over(&server, connect_from(HONEST, ws));
    let join = json!({"type": "join", "room": "homework", "since": first - 1});
    back.send_text(&join.to_string());
    let joined = back.recv_type("joined");
    assert_eq!(
        joined["gap"],
        Value::Null,
        "the history was evicted: {joined}"
    );
    for k in 0..5 {
        assert_eq!(back.recv_type("message")["msg"], format!("homework {k}"));
    }
    back.send_text(r#"{"type":"join","room":"reading"}"#);
    assert_eq!(back.recv_type("joined")["room"], "reading");
}

#[test]
fn an_address_over_its_budget_is_refused_with_429_and_told_when_to_come_back() {
    // One frame a second: four connections at once, then one a second.
    let server = Process::start(&["--host-frames", "1"]);
    let mut statuses = Vec::new();
    let head = loop {
        let (status, head) = support::raw_handshake(server.ws_addr(), "/", &[]);
        statuses.push(status);
        if status != 101 || statuses.len() > 8 {
            break head;
        }
    };
    assert_eq!(statuses, [101, 101, 101, 101, 429], "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1\r\n"),
        "{head}"
    );
}
