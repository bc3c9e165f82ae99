//! Several nodes as one chat (`--redis`): in-process nodes on port 0 and a
//! redis-server of the test's own on a free port (no persistence), stopped at the
//! end.

mod support;

use std::collections::HashSet;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::thread;

use support::*;

/// A redis-server on a free loopback port, killed when dropped.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start() -> Redis {
        Redis::start_on(redis_port())
    }

    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package; .ci/run installs it)");
        eventually("redis-server listens", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Redis { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

/// A free port below the kernel's ephemeral range (32768 and up), where no
/// `bind(0)` of another test lands: a test that stops its Redis and starts it
/// again on the same port must find it free, not taken by another test's.
fn redis_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = (std::process::id() % 600) as u16 * 16;
    loop {
        let port = 20_000 + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % 10_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(redis: &Redis) -> Server {
    Server::start(&[
        "--redis",
        &redis.url(),
        "--rate",
        "100000",
        "--burst",
        "100000",
    ])
}

/// The messages `client` receives until it has `n`, as (id, msg).
fn messages(client: &mut Client, n: usize) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = client.recv_type("message");
        got.push((
            m["id"].as_u64().unwrap(),
            m["msg"].as_str().unwrap().to_string(),
        ));
    }
    got
}

#[test]
fn clients_on_two_nodes_see_one_chat_in_one_order() {
    one_chat_in_one_order(2);
}

#[test]
fn clients_on_three_nodes_see_one_chat_in_one_order() {
    one_chat_in_one_order(3);
}

/// Three clients and two concurrent senders on each of `n` nodes: every client
/// sees every message, in one order, with increasing ids.
fn one_chat_in_one_order(n: usize) {
    let redis = Redis::start();
    let nodes: Vec<Server> = (0..n).map(|_| node(&redis)).collect();
    let mut clients: Vec<Client> = nodes
        .iter()
        .flat_map(|at| (0..3).map(|_| Client::join(at)).collect::<Vec<_>>())
        .collect();
    // Client ids are the cluster's: no two alike across the nodes.
    let ids: HashSet<u64> = clients.iter().map(|c| c.id.unwrap()).collect();
    assert_eq!(ids.len(), 3 * n, "{ids:?}");

    // Two senders on each node, all at once.
    let per_sender = 100;
    let senders: Vec<_> = (0..2 * n)
        .map(|s| {
            let at = &nodes[s % n];
            let mut sender = Client::join(at);
            thread::spawn(move || {
                for i in 0..per_sender {
                    sender.send_chat(&format!("s{s}"), &format!("{s}:{i}"));
                }
                sender
            })
        })
        .collect();
    let total = 2 * n * per_sender;
    let reference = messages(&mut clients[0], total);
    // Ids increase along the one order, and each sender's messages keep theirs.
    assert!(
        reference.windows(2).all(|w| w[0].0 < w[1].0),
        "ids out of order"
    );
    for s in 0..2 * n {
        let mine: Vec<&String> = reference
            .iter()
            .map(|(_, m)| m)
            .filter(|m| m.starts_with(&format!("{s}:")))
            .collect();
        let expected: Vec<String> = (0..per_sender).map(|i| format!("{s}:{i}")).collect();
        assert_eq!(mine, expected.iter().collect::<Vec<_>>());
    }
    for client in clients.iter_mut().skip(1) {
        assert_eq!(messages(client, total), reference, "another order");
    }
    for s in senders {
        s.join().unwrap();
    }
}

#[test]
fn a_room_spans_the_nodes_and_stays_apart_from_the_others() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let join_room = |server: &Server| {
        let mut c = Client::join(server);
        c.send_text(r#"{"type":"join","room":"games"}"#);
        c.recv_type("joined");
        c
    };
    let mut player_a = join_room(&a);
    let mut player_b = join_room(&b);
    let mut lobby_b = Client::join(&b);
    player_a.send_chat("ann", "your move");
    let got = player_b.recv_type("message");
    assert_eq!(
        (got["room"].as_str(), got["msg"].as_str()),
        (Some("games"), Some("your move"))
    );
    assert_eq!(player_a.recv_type("message")["msg"], "your move");
    // The lobby on either node hears nothing of it, and its own chat goes on.
    lobby_b.send_chat("bob", "anyone?");
    let next = lobby_b.recv_type("message");
    assert_eq!(
        (next["room"].as_str(), next["msg"].as_str()),
        (Some("lobby"), Some("anyone?"))
    );
}

#[test]
fn without_redis_clients_are_told_and_kept_and_the_cluster_heals_when_it_is_back() {
    let redis = Redis::start();
    let port = redis.port;
    let (a, b) = (node(&redis), node(&redis));
    let mut ann = Client::join(&a);
    let mut amy = Client::join(&a);
    let mut bob = Client::join(&b);
    ann.send_chat("ann", "before");
    let before = bob.recv_type("message");
    assert_eq!(before["msg"], "before");

    drop(redis);
    // Every client hears that the other nodes cannot be reached; none is cut off.
    for client in [&mut ann, &mut amy, &mut bob] {
        let note = client.recv_type("cluster");
        assert_eq!(note["connected"], false, "{note}");
    }
    // A message now would have no place in the cluster's order: it is refused,
    // with a reason, and the connection goes on.
    ann.send_chat("ann", "into the void");
    let refused = ann.recv_type("error");
    assert!(
        refused["msg"]
            .as_str()
            .unwrap()
            .starts_with("message not sent"),
        "{refused}"
    );
    ann.send_text(r#"{"type":"ping"}"#);
    ann.recv_type("pong");

    let _redis = Redis::start_on(port);
    for client in [&mut ann, &mut amy, &mut bob] {
        let note = client.recv_type("cluster");
        assert_eq!(note["connected"], true, "{note}");
    }
    // One chat again: the next message reaches both nodes, once, with an id past
    // everything before (Redis started empty: the counter was raised).
    ann.send_chat("ann", "after");
    let heard = bob.recv_type("message");
    assert_eq!(heard["msg"], "after");
    assert!(
        heard["id"].as_u64() > before["id"].as_u64(),
        "{heard} after {before}"
    );
    let mine = amy.recv_type("message");
    assert_eq!(
        (mine["msg"].as_str(), mine["id"].as_u64()),
        (Some("after"), heard["id"].as_u64())
    );
    ann.send_chat("ann", "and again");
    assert_eq!(bob.recv_type("message")["msg"], "and again");
}

#[test]
fn counts_who_and_direct_messages_cover_the_cluster() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let mut ann = Client::join(&a);
    ann.send_text(r#"{"type":"hello","name":"ann"}"#);
    ann.recv_type("hello");
    let mut bob = Client::join(&b);
    bob.send_text(r#"{"type":"hello","name":"bob"}"#);
    bob.recv_type("hello");
    let bob_id = bob.id.unwrap();
    // Ann hears of bob, on the other node, with the cluster's count.
    let joined = loop {
        let note = ann.recv_type("notification");
        if note["event"] == "join" && note["id"] == bob_id {
            break note;
        }
    };
    assert_eq!(joined["count"], 2, "{joined}");
    eventually("ann's who lists bob", || {
        ann.send_text(r#"{"type":"who"}"#);
        let who = ann.recv_type("who");
        who["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == bob_id && m["name"] == "bob")
    });
    // A direct message crosses nodes: bob gets it, ann her copy, with one id.
    ann.send_text(&format!(
        r#"{{"type":"direct","to":{bob_id},"msg":"psst"}}"#
    ));
    let got = bob.recv_type("direct");
    assert_eq!(got["msg"], "psst");
    assert_ne!(got["delivered"], true, "{got}");
    let copy = ann.recv_type("direct");
    assert_eq!(
        (copy["delivered"].as_bool(), copy["id"].as_u64()),
        (Some(true), got["id"].as_u64())
    );
    // Nobody anywhere has this id.
    ann.send_text(r#"{"type":"direct","to":12345,"msg":"hello?"}"#);
    assert!(
        ann.recv_type("error")["msg"]
            .as_str()
            .unwrap()
            .contains("12345")
    );
}

#[test]
fn a_node_killed_without_a_word_leaves_everyone_s_presence() {
    let redis = Redis::start();
    let a = node(&redis);
    let url = redis.url();
    let b = Process::start(&["--redis", &url]);
    let mut ann = Client::join(&a);
    let bob = Client::join(&b);
    let bob_id = bob.id.unwrap();
    loop {
        let note = ann.recv_type("notification");
        if note["event"] == "join" && note["id"] == bob_id {
            break;
        }
    }
    b.signal(rustix::process::Signal::KILL);
    // Its presence expires (5 s) and the next reading (every second) finds it gone.
    let left = loop {
        let note = ann.recv_type("notification");
        if note["event"] == "leave" {
            break note;
        }
    };
    assert_eq!(
        (left["id"].as_u64(), left["count"].as_u64()),
        (Some(bob_id), Some(1)),
        "{left}"
    );
    drop(bob);
}

#[test]
fn history_and_since_come_from_any_node_and_survive_a_restart() {
    let redis = Redis::start();
    let a = node(&redis);
    let mut ann = Client::join(&a);
    let epoch = {
        let mut probe = Client::connect(&a.ws_url("/"));
        probe.recv_type("welcome")["epoch"].as_u64().unwrap()
    };
    for i in 1..=5 {
        ann.send_chat("ann", &format!("said {i}"));
    }
    let ids: Vec<u64> = (0..5)
        .map(|_| ann.recv_type("message")["id"].as_u64().unwrap())
        .collect();
    // A node started after all that: its first client hears the lobby's history.
    let b = node(&redis);
    let mut bob = Client::connect(&b.ws_url("/"));
    let welcome = bob.recv_type("welcome");
    assert_eq!(
        welcome["epoch"].as_u64(),
        Some(epoch),
        "one epoch for the cluster"
    );
    let replayed: Vec<String> = (0..5)
        .map(|_| {
            let m = bob.recv_type("message");
            assert_eq!(m["history"], true, "{m}");
            m["msg"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        replayed,
        (1..=5).map(|i| format!("said {i}")).collect::<Vec<_>>()
    );
    // `since` from an id another node gave: only what came after it, no gap.
    bob.send_text(&format!(
        r#"{{"type":"join","room":"lobby","since":{},"epoch":{epoch}}}"#,
        ids[2]
    ));
    let joined = bob.recv_type("joined");
    assert_ne!(joined["gap"], true, "{joined}");
    let after: Vec<u64> = (0..2)
        .map(|_| bob.recv_type("message")["id"].as_u64().unwrap())
        .collect();
    assert_eq!(after, ids[3..]);
    // The node that said it all restarts: its history is back.
    drop(ann);
    drop(a);
    let a = node(&redis);
    let mut again = Client::connect(&a.ws_url("/"));
    again.recv_type("welcome");
    let first = again.recv_type("message");
    assert_eq!(
        (first["msg"].as_str(), first["history"].as_bool()),
        (Some("said 1"), Some(true))
    );
}
