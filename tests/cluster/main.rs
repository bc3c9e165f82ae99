//! Several nodes as one chat (`--redis`): in-process nodes on port 0 and a
//! redis-server of the test's own on a free port (no persistence), stopped at the
//! end. Some of those ask for a password, an ACL user or TLS (Debian's
//! redis-server is built with TLS), as DEPLOY.md tells an operator to.

#[path = "../support/mod.rs"]
mod support;

mod locked;
mod redis_fails;

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use support::*;

/// A redis-server on a free loopback port, killed when dropped.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// On `port` again (a restart): a port taken meanwhile fails the test.
    fn start_on(port: u16) -> Redis {
        Redis::launch(port, &["--port", &port.to_string()])
            .unwrap_or_else(|said| panic!("redis-server on {port} again:\n{said}"))
    }

    /// With `settings` on top (`--requirepass`, `--user`), on plain TCP.
    fn start_with(settings: &[&str]) -> Redis {
        Redis::on_a_free_port(|port| {
            let port = ["--port", &port.to_string()];
            owned(&[&port[..], settings].concat())
        })
    }

    /// On the first port from `redis_port` that redis-server gets: another
    /// process can take a port between our check and its bind.
    fn on_a_free_port(args: impl Fn(u16) -> Vec<String>) -> Redis {
        for _ in 0..10 {
            let port = redis_port();
            let args = args(port);
            match Redis::launch(port, &args.iter().map(String::as_str).collect::<Vec<_>>()) {
                Ok(redis) => return redis,
                Err(said) => eprintln!("redis-server on {port}, another port next:\n{said}"),
            }
        }
        panic!("redis-server found no free port in ten tries");
    }

    /// Speaking TLS only, with `cert`'s certificate, to clients without one of
    /// their own (`tls-auth-clients no`: the password says who they are).
    fn start_tls(cert: &TestCert, settings: &[&str]) -> Redis {
        let (cert, key) = (cert.cert.to_str().unwrap(), cert.key.to_str().unwrap());
        Redis::on_a_free_port(|port| {
            let tls = [
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-ca-cert-file",
                cert,
                "--tls-auth-clients",
                "no",
            ];
            owned(&[&tls[..], settings].concat())
        })
    }

    /// Ready once its own log says it listens: a successful connect alone
    /// could reach another process that took the port, while ours fails to
    /// bind it. `Err` is its log, when it exits instead.
    fn launch(port: u16, args: &[&str]) -> Result<Redis, String> {
        // Its log, to show if it goes away: a test that finds Redis gone says why.
        let log = redis_log(port);
        let out = std::fs::File::create(&log).expect("a log file for redis-server");
        let mut child = Command::new("redis-server")
            .args(args)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package; .ci/run installs it)");
        let mut exited = None;
        eventually("redis-server listens", || {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(format!("exited ({status}):\n{said}"));
            }
            exited.is_some() || said.contains("Ready to accept connections")
        });
        match exited {
            Some(said) => Err(said),
            None => Ok(Redis { port, child }),
        }
    }

    fn url(&self) -> String {
        redis_url(self.port)
    }
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| arg.to_string()).collect()
}

/// A connection to the test's Redis at `url`, as an operator would open one.
fn redis_connection(url: impl AsRef<str>) -> redis::Connection {
    redis::Client::open(url.as_ref())
        .unwrap()
        .get_connection()
        .unwrap()
}

/// Every item of the chat's stream at `url`, with the fields the stream's
/// entries had before a batch became one entry: `kind` (empty for a message),
/// `room`, `from`, `name`, `msg` (a seats item's list as JSON), `to` and the
/// entry's `node`; and an id of its own, `<its message id>-1` for an item that
/// takes one, `<the last id>-2` for one that does not.
fn stream_entries(url: impl AsRef<str>) -> Vec<(String, HashMap<String, String>)> {
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg("threadchat:messages")
        .arg("-")
        .arg("+")
        .query(&mut redis_connection(url))
        .unwrap();
    let mut flat = Vec::new();
    for (id, fields) in entries {
        let last: u64 = id.split('-').next().unwrap().parse().unwrap();
        let said: u64 = fields["said"].parse().unwrap();
        let items: Vec<serde_json::Value> = serde_json::from_str(&fields["items"]).unwrap();
        let mut next = last + 1 - said;
        for item in items {
            let text = |key: &str| item[key].as_str().unwrap_or_default().to_string();
            let kind = text("k");
            let id = if kind.is_empty() || kind == "kick" {
                next += 1;
                format!("{}-1", next - 1)
            } else {
                format!("{}-2", next - 1)
            };
            let msg = match kind.as_str() {
                "seats" => item.get("s").map_or("[]".into(), ToString::to_string),
                _ => text("m"),
            };
            let to = item.get("o").map_or_else(String::new, ToString::to_string);
            let fields = [
                ("kind", kind),
                ("room", text("r")),
                ("from", item["f"].as_u64().unwrap_or(0).to_string()),
                ("name", text("n")),
                ("msg", msg),
                ("to", to),
                ("node", fields["node"].clone()),
            ];
            flat.push((id, fields.map(|(k, v)| (k.to_string(), v)).into()));
        }
    }
    flat
}

/// How many times Redis at `url` has run `command` (`INFO commandstats`).
fn command_calls(url: impl AsRef<str>, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis_connection(url))
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

fn redis_url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}/")
}

/// A TCP relay between one node and Redis that the test can cut, as a network
/// would: while cut, every connection through it is shut down and new ones are
/// closed at once. Its threads end with the test process.
struct Cable {
    addr: std::net::SocketAddr,
    cut: Arc<AtomicBool>,
    /// While set, what the node sends still reaches Redis, but Redis' answers are
    /// lost: the connection is shut as the first one comes back.
    deaf: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Cable {
    fn to(redis: &Redis) -> Cable {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, deaf, open) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(Mutex::new(Vec::new())),
        );
        let (cut_, deaf_, open_, port) = (
            Arc::clone(&cut),
            Arc::clone(&deaf),
            Arc::clone(&open),
            redis.port,
        );
        thread::spawn(move || {
            for near in listener.incoming().flatten() {
                // Under the lock `cut` takes too: a connection is either cut with
                // the others or made after the cable is whole again.
                let mut list = open_.lock().unwrap();
                if cut_.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(far) = TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                list.push(near.try_clone().unwrap());
                list.push(far.try_clone().unwrap());
                let out = (near.try_clone().unwrap(), far.try_clone().unwrap());
                // Whether the node asked something since the cable went deaf:
                // only such a question's answer is lost, so an answer on its way
                // when the cable went deaf still arrives.
                let asked = Arc::new(AtomicBool::new(false));
                let (deaf, asked_) = (Arc::clone(&deaf_), Arc::clone(&asked));
                thread::spawn(move || asks(out.0, out.1, &deaf, &asked_));
                thread::spawn(move || answers(far, near, &asked));
            }
        });
        Cable {
            addr,
            cut,
            deaf,
            open,
        }
    }

    fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    fn cut(&self) {
        let mut open = self.open.lock().unwrap();
        self.cut.store(true, Ordering::SeqCst);
        for stream in open.drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn mend(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.deaf.store(false, Ordering::SeqCst);
    }

    /// From now on Redis does what the node asks, and the node never hears back
    /// (what it asked before still gets its answer, unless it asks more on the
    /// same connection first: the answer to that shuts the connection).
    fn deafen(&self) {
        self.deaf.store(true, Ordering::SeqCst);
    }
}

/// The node's side of a cable: copied to Redis, marked `asked` once the cable
/// is `deaf` (before it goes on, so that its answer finds the mark).
fn asks(mut near: TcpStream, mut far: TcpStream, deaf: &AtomicBool, asked: &AtomicBool) {
    use std::io::Write;
    let mut buffer = [0u8; 16 * 1024];
    while let Ok(n @ 1..) = near.read(&mut buffer) {
        if deaf.load(Ordering::SeqCst) {
            asked.store(true, Ordering::SeqCst);
        }
        if far.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = far.shutdown(std::net::Shutdown::Both);
}

/// Redis' side of a cable: copied to the node, unless the node `asked` it
/// something since the cable went deaf, which shuts the connection instead.
fn answers(mut far: TcpStream, mut near: TcpStream, asked: &AtomicBool) {
    use std::io::Write;
    let mut buffer = [0u8; 16 * 1024];
    while let Ok(n @ 1..) = far.read(&mut buffer) {
        if asked.load(Ordering::SeqCst) || near.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = near.shutdown(std::net::Shutdown::Both);
    let _ = far.shutdown(std::net::Shutdown::Both);
}

/// Asks `who` until the answer lists client `id` (by `name`, if given): the
/// other nodes' members arrive with the next presence reading.
fn wait_until_who_lists(client: &mut Client, id: u64, name: Option<&str>) {
    eventually("who lists the other node's client", || {
        client.send_text(r#"{"type":"who"}"#);
        let who = client.recv_type("who");
        who["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id && name.is_none_or(|n| m["name"] == n))
    });
}

/// The next error `client` gets names client `id`.
fn assert_refused_for(client: &mut Client, id: u64) {
    let error = client.recv_type("error");
    assert!(
        error["msg"].as_str().unwrap().contains(&id.to_string()),
        "{error}"
    );
}

/// The next error `client` gets says there is no connection `id`, exactly (not
/// that delivery could not be confirmed).
fn assert_no_such_connection(client: &mut Client, id: u64) {
    let error = client.recv_type("error");
    assert_eq!(
        error["msg"],
        format!("there is no connection {id}"),
        "{error}"
    );
}

/// The next notification that the node lost Redis or has it again.
fn recv_cluster(client: &mut Client) -> serde_json::Value {
    loop {
        let note = client.recv_type("notification");
        if note["event"] == "cluster" {
            return note;
        }
    }
}

/// The epoch a node's clients are told in `welcome`.
fn epoch_of(server: &Server) -> u64 {
    let mut probe = Client::connect(&server.ws_url("/"));
    probe.recv_type("welcome")["epoch"].as_u64().unwrap()
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

/// Where the test's redis-server on `port` writes its log.
fn redis_log(port: u16) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("threadchat-redis-{port}.log"))
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what its Redis said (a node that could not
        // reach it, or a reply it refused).
        if thread::panicking() {
            let said = std::fs::read_to_string(redis_log(self.port)).unwrap_or_default();
            eprintln!("redis-server on {}, its log:\n{said}", self.port);
        }
    }
}

/// A node for tests of order and presence: flood control and the budgets per
/// address are off (every client is on 127.0.0.1).
fn node(redis: &Redis) -> Server {
    Server::start(&unthrottled(&["--redis", &redis.url()]))
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
/// sees every message, in one order, with consecutive ids; each message is
/// appended once, and the messages that wait while a batch is on its way to
/// Redis go together in one call of the script.
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
    // Ids follow each other along the one order (a batch takes its ids as a
    // block), and each sender's messages keep theirs.
    assert!(
        reference.windows(2).all(|w| w[0].0 + 1 == w[1].0),
        "ids out of order or with gaps"
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
    // Every sender sends without waiting for its messages to come back, so
    // many wait for each round trip to Redis.
    let appended = stream_entries(redis.url())
        .into_iter()
        .filter(|(_, fields)| fields.get("kind").is_none_or(String::is_empty))
        .count();
    assert_eq!(appended, total, "each message appended once");
    // And each batch is one entry, which every node reads once. (Counted
    // before the calls: the senders' leaves may still be on their way.)
    let entries: u64 = redis::cmd("XLEN")
        .arg("threadchat:messages")
        .query(&mut redis_connection(redis.url()))
        .unwrap();
    let calls = command_calls(redis.url(), "evalsha");
    assert!(
        calls < total as u64 / 2,
        "{calls} calls for {total} messages"
    );
    assert!(entries <= calls, "{entries} entries for {calls} batches");
}

#[test]
fn socket_io_clients_on_two_nodes_are_in_one_chat() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let mut on_a = socket_io_client(&a);
    let mut on_b = socket_io_client(&b);
    let mut json = Client::join(&b);
    on_a.send_text(r#"42["message",{"name":"sio-a","msg":"across the nodes"}]"#);
    let heard = socket_io_event(&mut on_b, "message");
    assert_eq!(
        (heard["name"].as_str(), heard["msg"].as_str()),
        (Some("sio-a"), Some("across the nodes"))
    );
    assert_eq!(json.recv_type("message")["id"], heard["id"]);
    on_b.send_text(r#"42["message",{"name":"sio-b","msg":"and back"}]"#);
    // Its own message first, in the one order, then the answer.
    assert_eq!(
        socket_io_event(&mut on_a, "message")["msg"],
        "across the nodes"
    );
    assert_eq!(socket_io_event(&mut on_a, "message")["msg"], "and back");
}

/// The socket.io tutorial's chat page, on two nodes: a login is heard on every
/// node, the page's own included, in the cluster's one order (before anything
/// the page says after it), and `chat` reaches everyone but its sender.
#[test]
fn the_tutorial_s_logins_cross_the_nodes_in_the_one_order() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let mut abc = socket_io_client(&a);
    let mut xyz = socket_io_client(&b);
    let mut json = Client::join(&b);
    abc.send_text(r#"42["login",{"name":"abc","userid":"abc@example.com"}]"#);
    xyz.send_text(r#"42["login",{"name":"xyz","userid":"xyz@example.com"}]"#);
    xyz.send_text(r#"42["chat",{"msg":"hi from b"}]"#);
    abc.send_text(r#"42["chat",{"msg":"hi from a"}]"#);
    let heard_by_abc = tutorial_events(&mut abc, 3);
    let heard_by_xyz = tutorial_events(&mut xyz, 3);
    // Both logins, in one order, on both nodes; each hears the other's chat.
    let logins = |heard: &[String]| -> Vec<String> {
        heard
            .iter()
            .filter(|e| e.starts_with(r#"42["login""#))
            .cloned()
            .collect()
    };
    assert_eq!(logins(&heard_by_abc), logins(&heard_by_xyz));
    let mut names = logins(&heard_by_abc);
    names.sort();
    assert_eq!(names, [r#"42["login","abc"]"#, r#"42["login","xyz"]"#]);
    let chat_position = |heard: &[String], text: &str| {
        heard
            .iter()
            .position(|e| e.starts_with(r#"42["chat""#) && e.contains(text))
    };
    let login_position = |heard: &[String], name: &str| {
        heard
            .iter()
            .position(|e| *e == format!(r#"42["login","{name}"]"#))
    };
    // On A, xyz's login comes before xyz's chat; on B the other way round.
    assert!(
        login_position(&heard_by_abc, "xyz") < chat_position(&heard_by_abc, "hi from b"),
        "{heard_by_abc:?}"
    );
    assert!(chat_position(&heard_by_abc, "hi from b").is_some());
    assert!(
        login_position(&heard_by_xyz, "abc") < chat_position(&heard_by_xyz, "hi from a"),
        "{heard_by_xyz:?}"
    );
    assert!(chat_position(&heard_by_xyz, "hi from a").is_some());
    // A JSON client in the room hears both logins too.
    let mut json_logins = [json.recv_type("login"), json.recv_type("login")]
        .map(|frame| frame["name"].as_str().unwrap().to_owned());
    json_logins.sort();
    assert_eq!(json_logins, ["abc", "xyz"]);
}

/// The tutorial's rooms page on two nodes: a room of a namespace spans the
/// nodes, as the main namespace's rooms do.
#[test]
fn a_namespace_s_rooms_span_the_nodes() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let rooms_page = |node: &Server| {
        let mut client = Client::connect(&node.ws_url("/socket.io/?EIO=4&transport=websocket"));
        client.send_text("40/chat,");
        loop {
            if let tungstenite::Message::Text(text) = client.recv()
                && text.starts_with(r#"40/chat,{"sid":"#)
            {
                return client;
            }
        }
    };
    let (mut on_a, mut on_b) = (rooms_page(&a), rooms_page(&b));
    let said = |name: &str, msg: &str| {
        format!(r#"42/chat,["chat message",{{"name":"{name}","room":"room1","msg":"{msg}"}}]"#)
    };
    on_b.send_text(&said("b", "b is in room1"));
    assert_eq!(chat_message(&mut on_b), "b is in room1");
    on_a.send_text(&said("a", "from a"));
    // A page's join takes effect on its own node at once, before its node has
    // read what was said in the room just before: it may hear that too.
    let mut heard_on_a = chat_message(&mut on_a);
    if heard_on_a == "b is in room1" {
        heard_on_a = chat_message(&mut on_a);
    }
    assert_eq!(heard_on_a, "from a");
    assert_eq!(chat_message(&mut on_b), "from a");
}

/// The text of the next `chat message` in `/chat`.
fn chat_message(client: &mut Client) -> String {
    loop {
        if let tungstenite::Message::Text(text) = client.recv()
            && let Some(rest) = text.strip_prefix(r#"42/chat,["chat message","#)
        {
            return serde_json::from_str(&rest[..rest.len() - 1]).expect("a JSON string");
        }
    }
}

/// The next `n` of the tutorial's events (`login` and `chat`) `client` hears, as
/// their text.
fn tutorial_events(client: &mut Client, n: usize) -> Vec<String> {
    let mut heard = Vec::new();
    while heard.len() < n {
        if let tungstenite::Message::Text(text) = client.recv()
            && (text.starts_with(r#"42["login""#) || text.starts_with(r#"42["chat""#))
        {
            heard.push(text.to_string());
        }
    }
    heard
}

/// A Socket.IO client of `node`'s chat, joined to the main namespace.
fn socket_io_client(node: &Server) -> Client {
    let mut client = Client::connect(&node.ws_url("/socket.io/?EIO=4&transport=websocket"));
    client.send_text("40");
    socket_io_event(&mut client, "welcome");
    client
}

/// The argument of the next Socket.IO event `name` (`42["name",{…}]`).
fn socket_io_event(client: &mut Client, name: &str) -> serde_json::Value {
    let prefix = format!(r#"42["{name}","#);
    loop {
        if let tungstenite::Message::Text(text) = client.recv()
            && let Some(rest) = text.strip_prefix(&prefix)
        {
            return serde_json::from_str(&rest[..rest.len() - 1]).expect("an event's argument");
        }
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

/// The frames `client` receives up to the first that `last` holds for, that one
/// included.
fn frames_until(
    client: &mut Client,
    last: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let mut frames = Vec::new();
    loop {
        let frame = client.recv_json();
        let done = last(&frame);
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// The `error` frames among `frames`.
fn errors_in(frames: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    frames.iter().filter(|f| f["type"] == "error").collect()
}

/// The ids under which `frames` hold message `msg`.
fn copies_of(frames: &[serde_json::Value], msg: &str) -> Vec<Option<u64>> {
    frames
        .iter()
        .filter(|f| f["type"] == "message" && f["msg"] == msg)
        .map(|f| f["id"].as_u64())
        .collect()
}

/// Node a (the binary, for its log) reaches Redis through `cable`, as `url`;
/// node b straight. Ann, on a, says "before", then "answer lost" with the cable
/// deaf: Redis takes it (Bob, on b, hears it), and a never hears back. Returns
/// once a's log shows four tries at it failed (the pause before the fifth is
/// 800 ms), or that a gave up on it.
fn answer_lost(
    redis: &Redis,
    cable: &Cable,
    url: &str,
) -> (Process, Server, Client, Client, serde_json::Value) {
    let a = Process::start(&["--redis", url]);
    let b = node(redis);
    let mut ann = Client::join(&a);
    let mut bob = Client::join(&b);
    ann.send_chat("ann", "before");
    assert_eq!(bob.recv_type("message")["msg"], "before");
    assert_eq!(ann.recv_type("message")["msg"], "before");

    cable.deafen();
    ann.send_chat("ann", "answer lost");
    let taken = bob.recv_type("message");
    assert_eq!(taken["msg"], "answer lost", "Redis took it: {taken}");
    eventually("four failed appends", || {
        a.log_lines().iter().any(|line| {
            (line.contains("append failed") && line.contains("800ms"))
                || line.contains("not appended")
        })
    });
    // Its next read loses its answer too (within the read's block, 1 s).
    a.wait_for_log("Redis does not answer");
    (a, b, ann, bob, taken)
}

/// After the cable is whole again: Ann hears "answer lost" once, with the id
/// Bob heard, and no error (before or after); the chat goes on with the next id.
fn assert_delivered_once_and_never_called_unsent(
    ann: &mut Client,
    bob: &mut Client,
    taken: &serde_json::Value,
    mut heard: Vec<serde_json::Value>,
) {
    ann.send_chat("ann", "after");
    heard.extend(frames_until(ann, |f| f["msg"] == "after"));
    let errors = errors_in(&heard);
    assert!(errors.is_empty(), "Ann was told {errors:?}");
    assert_eq!(
        copies_of(&heard, "answer lost"),
        [taken["id"].as_u64()],
        "once, with its id: {heard:?}"
    );
    // Nobody got it twice: Bob's next message is "after", with the next id.
    let next = bob.recv_type("message");
    assert_eq!(
        (next["msg"].as_str(), next["id"].as_u64()),
        (Some("after"), Some(taken["id"].as_u64().unwrap() + 1))
    );
}

#[test]
fn an_admin_on_one_node_kicks_a_client_of_another() {
    let redis = Redis::start();
    let url = redis.url();
    let args = [
        "--redis",
        &url,
        "--admin-token",
        "s3cret",
        "--rate",
        "1000",
        "--burst",
        "1000",
    ];
    let (a, b) = (Server::start(&args), Server::start(&args));
    let mut admin = Client::connect(&a.ws_url("/?admin=s3cret"));
    admin.recv_type("welcome");
    let mut victim = Client::join(&b);
    let victim_id = victim.id.unwrap();
    let mut witness = Client::join(&b);
    // The admin's node must know of the victim (presence, within a second).
    wait_until_who_lists(&mut admin, victim_id, None);
    admin.send_text(&format!(r#"{{"type":"kick","id":{victim_id}}}"#));
    assert_eq!(victim.recv_close(), 4001);
    let removed = loop {
        let note = witness.recv_type("notification");
        if note["id"] == victim_id {
            break note;
        }
    };
    assert_eq!(removed["event"], "kick", "{removed}");
    // A client that got its welcome on b a moment ago: a's node has not read
    // its seat yet, but b has it, and closes it.
    let mut newcomer = Client::connect(&b.ws_url("/"));
    let newcomer_id = newcomer.recv_type("welcome")["id"].as_u64().unwrap();
    admin.send_text(&format!(r#"{{"type":"kick","id":{newcomer_id}}}"#));
    assert_eq!(newcomer.recv_close(), 4001);
    // An id of b's that nobody has: b says so, and the admin hears it.
    let nobody = (victim_id >> 32 << 32) | 999_999;
    admin.send_text(&format!(r#"{{"type":"kick","id":{nobody}}}"#));
    assert_no_such_connection(&mut admin, nobody);
    // An id no node has is an error, as on one node.
    admin.send_text(r#"{"type":"kick","id":12345}"#);
    assert_refused_for(&mut admin, 12345);
}

#[test]
fn a_flooding_client_is_held_to_its_rate_before_anything_reaches_redis() {
    let redis = Redis::start();
    let url = redis.url();
    // The default flood control: 10 frames a second, bursts of 20.
    let a = Server::start(&["--redis", &url]);
    let b = node(&redis);
    let mut honest_here = Client::join(&a);
    let mut honest_there = Client::join(&b);
    let mut flooder = Client::join(&a);
    let flooder_id = flooder.id.unwrap();
    let started = std::time::Instant::now();
    // As fast as the socket takes them, never reading: cut off with 1008 once the
    // dropped frames run 100 ahead of the accepted ones.
    let mut sent = 0;
    while sent < 5_000 {
        let frame = serde_json::json!({"name": "flood", "msg": format!("{sent:0>500}")});
        if flooder
            .ws
            .send(tungstenite::Message::text(frame.to_string()))
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    assert!(flooder.wait_for_socket_closed(), "the flooder is cut off");
    let elapsed = started.elapsed().as_secs_f64();
    // Meanwhile the chat goes on across both nodes.
    honest_there.send_chat("bob", "still here");
    loop {
        let m = honest_here.recv_type("message");
        if m["msg"] == "still here" {
            break;
        }
    }
    // Redis holds only what the rate let through: the burst, and 10 a second.
    let entries = stream_entries(&url);
    let flooded = entries
        .iter()
        .filter(|(_, fields)| fields.get("from") == Some(&flooder_id.to_string()))
        .count();
    let allowed = 20 + (10.0 * (elapsed + 1.0)) as usize;
    assert!(
        flooded <= allowed,
        "{flooded} of {sent} frames reached Redis in {elapsed:.1} s"
    );
    assert!(flooded >= 1, "the burst went through");
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
    wait_until_who_lists(&mut ann, bob_id, Some("bob"));
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
    // Nobody anywhere has this id (no node numbers its clients from 0).
    ann.send_text(r#"{"type":"direct","to":12345,"msg":"hello?"}"#);
    assert_refused_for(&mut ann, 12345);
    // Nobody on b has this one: b's receipt says so.
    let nobody = (bob_id >> 32 << 32) | 999_999;
    ann.send_text(&format!(
        r#"{{"type":"direct","to":{nobody},"msg":"hello?"}}"#
    ));
    assert_no_such_connection(&mut ann, nobody);
    let answered = stream_entries(redis.url()).into_iter().any(|(_, fields)| {
        fields.get("kind").map(String::as_str) == Some("undelivered")
            && fields.get("from") == Some(&nobody.to_string())
    });
    assert!(answered, "b answered with a receipt");
}

/// A client that got its `welcome` on another node a moment ago is reachable
/// at once: its sender's node may not have read its seat yet, but the message
/// goes through the stream all the same, and the sender's copy comes with the
/// target node's receipt, `delivered` because it was. (b starts first: a
/// takes it for alive from its seat hash, read when a joins; the other tests
/// start the sender's node first, which reads the target's node's first entry.)
#[test]
fn a_direct_message_right_after_a_welcome_on_another_node_arrives() {
    let redis = Redis::start();
    let b = node(&redis);
    let a = node(&redis);
    let mut ann = Client::join(&a);
    for round in 0..20 {
        let mut newcomer = Client::connect(&b.ws_url("/"));
        let id = newcomer.recv_type("welcome")["id"].as_u64().unwrap();
        let msg = format!("welcome {round}");
        let direct = serde_json::json!({"type": "direct", "to": id, "msg": msg});
        ann.send_text(&direct.to_string());
        let got = newcomer.recv_type("direct");
        assert_eq!(got["msg"], msg.as_str(), "{got}");
        let heard = frames_until(&mut ann, |f| f["type"] == "direct");
        assert!(errors_in(&heard).is_empty(), "round {round}: {heard:?}");
        let copy = heard.last().unwrap();
        assert_eq!(
            (
                copy["delivered"].as_bool(),
                copy["id"].as_u64(),
                copy["to"].as_u64()
            ),
            (Some(true), got["id"].as_u64(), Some(id)),
            "{copy}"
        );
    }
}

/// What a Redis is sent, as `MONITOR` shows it: every command of every
/// connection, one line each, in the order Redis runs them.
struct Monitor {
    lines: std::io::Lines<std::io::BufReader<TcpStream>>,
}

impl Monitor {
    fn watch(port: u16) -> Monitor {
        use std::io::{BufRead, Write};
        let mut monitor = TcpStream::connect(("127.0.0.1", port)).unwrap();
        monitor.write_all(b"MONITOR\r\n").unwrap();
        monitor.set_read_timeout(Some(PATIENCE)).unwrap();
        Monitor {
            lines: std::io::BufReader::new(monitor).lines(),
        }
    }

    /// Reads on until two connections (each node's heartbeat has one of its
    /// own, while it does not reconnect) have sent a command whose line holds
    /// every one of `words`; scripts' own calls do not count.
    fn until_two_connections_send(&mut self, words: &[&str]) {
        let mut senders = HashSet::new();
        for line in &mut self.lines {
            let line = line.expect("MONITOR shows it within PATIENCE");
            // `+<time> [<db> <address>] "<command>" "<argument>"…`
            let Some(address) = line.split(['[', ']']).nth(1) else {
                continue;
            };
            if !address.ends_with(" lua") && words.iter().all(|w| line.contains(w)) {
                senders.insert(address.to_string());
                if senders.len() == 2 {
                    return;
                }
            }
        }
        panic!("MONITOR ended");
    }
}

/// A node dies as Redis loses what said it existed (its hash and its place on
/// the node list, as after a restart without persistence): no node can let it
/// go when its hash expires. Each node that saw it listed finds it off the
/// list for 15 s and lets it go, through the stream, once: its client leaves
/// every node at the same place among the messages around it.
#[test]
fn a_node_that_died_off_the_list_leaves_every_node_once_at_one_place_in_the_stream() {
    let redis = Redis::start();
    let url = redis.url();
    let (a, c) = (node(&redis), node(&redis));
    let mut b = Process::start(&["--redis", &url]);
    let mut ann = Client::join(&a);
    let mut cid = Client::join(&c);
    let mut dan = Client::join(&a);
    let bob = Client::join(&b);
    let bob_id = bob.id.unwrap();
    for client in [&mut ann, &mut cid] {
        wait_until_who_lists(client, bob_id, None);
    }
    let node_b = bob_id >> 32;
    // Only a node that has seen b listed looks for it off the list: both
    // check its hash (`EXISTS`) at a heartbeat.
    let mut monitor = Monitor::watch(redis.port);
    let hash_b = format!("\"threadchat:presence:{node_b}\"");
    monitor.until_two_connections_send(&["\"EXISTS\"", &hash_b]);
    b.signal(rustix::process::Signal::KILL);
    // Gone for sure: a heartbeat of its on the way would list it again.
    b.wait_exit(PATIENCE).expect("a killed node exits");
    // Off the list first: with a hash gone and still listed, the usual
    // let-go (an expired hash) would find it.
    redis::pipe()
        .atomic()
        .cmd("SREM")
        .arg("threadchat:presence-nodes")
        .arg(node_b)
        .cmd("DEL")
        .arg(format!("threadchat:presence:{node_b}"))
        .query::<()>(&mut redis_connection(&url))
        .unwrap();
    // Dan chatters every 20 ms meanwhile: a leave applied at each node's own
    // time would land between different messages on a and c.
    let stop = Arc::new(AtomicBool::new(false));
    let chatter = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                dan.send_chat("dan", &format!("tick {n}"));
                thread::sleep(std::time::Duration::from_millis(20)); // a pace, not a sync
            }
        })
    };
    // The last message each client heard before bob left, and whether it
    // hears him leave again.
    let mut before_leave = Vec::new();
    for client in [&mut ann, &mut cid] {
        let mut last = None;
        let left = loop {
            let frame = client.recv_json();
            match frame["type"].as_str() {
                Some("message") => last = frame["id"].as_u64(),
                Some("notification") if frame["event"] == "leave" => break frame,
                _ => {}
            }
        };
        assert_eq!(left["id"].as_u64(), Some(bob_id), "{left}");
        before_leave.push(last.expect("dan spoke before bob left"));
    }
    assert_eq!(
        before_leave[0], before_leave[1],
        "bob left a and c at different places"
    );
    stop.store(true, Ordering::Relaxed);
    chatter.join().unwrap();
    // Both nodes have tried to let it go (the second a beat later, perhaps)
    // before the stream is counted.
    let mark_b = format!("\"threadchat:let-go:{node_b}\"");
    monitor.until_two_connections_send(&["\"EVAL\"", &mark_b]);
    let let_go: Vec<_> = stream_entries(&url)
        .into_iter()
        .filter(|(_, fields)| {
            fields.get("kind").map(String::as_str) == Some("gone")
                && fields.get("node") == Some(&node_b.to_string())
        })
        .collect();
    assert_eq!(let_go.len(), 1, "let go once: {let_go:?}");
    // And neither hears him leave again (dan's own leave, as his thread
    // ended, may come first).
    let probe = |client: &mut Client| {
        client.send_text(r#"{"type":"who"}"#);
        loop {
            let frame = client.recv_json();
            if frame["event"] == "leave" && frame["id"].as_u64() == Some(bob_id) {
                panic!("bob left again: {frame}");
            }
            if frame["type"] == "who" {
                return frame;
            }
        }
    };
    for client in [&mut ann, &mut cid] {
        let who = probe(client);
        assert!(!who.to_string().contains(&bob_id.to_string()), "{who}");
    }
    drop(bob);
}

#[test]
fn a_node_killed_without_a_word_leaves_everyone_s_presence_once() {
    let redis = Redis::start();
    let (a, c) = (node(&redis), node(&redis));
    let url = redis.url();
    let b = Process::start(&["--redis", &url]);
    let mut ann = Client::join(&a);
    let mut cid = Client::join(&c);
    let bob = Client::join(&b);
    let bob_id = bob.id.unwrap();
    // (Joins heard in one turn are told as one: `who` names each.)
    for client in [&mut ann, &mut cid] {
        wait_until_who_lists(client, bob_id, None);
    }
    b.signal(rustix::process::Signal::KILL);
    // Its hash expires (5 s), and the first node to find it gone (within a
    // second) lets its seats go, for everyone at one place in the stream.
    for client in [&mut ann, &mut cid] {
        let left = loop {
            let note = client.recv_type("notification");
            if note["event"] == "leave" {
                break note;
            }
        };
        assert_eq!(
            (left["id"].as_u64(), left["count"].as_u64()),
            (Some(bob_id), Some(2)),
            "{left}"
        );
    }
    let released: Vec<_> = stream_entries(&url)
        .into_iter()
        .filter(|(_, fields)| {
            fields.get("kind").map(String::as_str) == Some("gone")
                && fields.get("node") == Some(&(bob_id >> 32).to_string())
        })
        .collect();
    assert_eq!(released.len(), 1, "let go once: {released:?}");
    // A direct message to it is refused, by name: its node is gone, and no
    // answer will come from it.
    ann.send_text(&format!(
        r#"{{"type":"direct","to":{bob_id},"msg":"there?"}}"#
    ));
    assert_no_such_connection(&mut ann, bob_id);
    drop(bob);
}

/// Who is where travels in the stream's one order: a join on one node is
/// heard on every other before anything the newcomer says, `welcome`'s count
/// covers every node, and `who` lists the same members in the same order
/// everywhere.
#[test]
fn presence_is_in_the_stream_s_one_order_on_three_nodes() {
    let redis = Redis::start();
    let nodes: Vec<Server> = (0..3).map(|_| node(&redis)).collect();
    let mut ann = Client::join(&nodes[0]);
    let mut eve = Client::join(&nodes[1]);
    let mut cid = Client::join(&nodes[2]);
    // A client's seat goes before anything it says, on its node's one queue to
    // Redis: once every client has heard every other's message, every node has
    // read every seat.
    for (client, msg) in [(&mut ann, "ann"), (&mut eve, "eve"), (&mut cid, "cid")] {
        client.send_chat(msg, msg);
    }
    for client in [&mut ann, &mut eve, &mut cid] {
        let mut heard: Vec<String> = (0..3)
            .map(|_| {
                client.recv_type("message")["msg"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        heard.sort();
        assert_eq!(heard, ["ann", "cid", "eve"]);
    }
    // Bob joins node 1 and speaks at once: everyone hears his join first.
    let mut bob = Client::connect(&nodes[1].ws_url("/"));
    let welcome = bob.recv_type("welcome");
    assert_eq!(welcome["count"], 4, "ann, cid, eve and bob: {welcome}");
    let bob_id = welcome["id"].as_u64().unwrap();
    bob.send_chat("bob", "bob here");
    for client in [&mut ann, &mut cid] {
        let mut heard_join = false;
        loop {
            let frame = client.recv_json();
            if frame["event"] == "join" && frame["id"] == bob_id {
                assert_eq!(frame["count"], 4, "{frame}");
                heard_join = true;
            }
            if frame["type"] == "message" && frame["msg"] == "bob here" {
                break;
            }
        }
        assert!(heard_join, "the join came before bob's message");
    }
    // `who`, on every node: the same members, in the same order.
    let lists: Vec<serde_json::Value> = [&mut ann, &mut bob, &mut cid]
        .into_iter()
        .map(|client| {
            client.send_text(r#"{"type":"who"}"#);
            client.recv_type("who")["members"].clone()
        })
        .collect();
    assert_eq!(lists[0].as_array().unwrap().len(), 4, "{lists:?}");
    assert!(lists.iter().all(|list| *list == lists[0]), "{lists:?}");
}

/// A client that notes the id of the last message it heard.
struct Observer {
    client: Client,
    last: u64,
}

impl Observer {
    /// The id of the last message heard before the notification `event` (join
    /// or leave) about client `id`, reading on until it.
    fn last_message_before(&mut self, event: &str, id: u64) -> u64 {
        loop {
            let frame = self.client.recv_json();
            if frame["type"] == "message" {
                self.last = frame["id"].as_u64().unwrap();
            }
            if frame["event"] == event && frame["id"] == id {
                return self.last;
            }
        }
    }
}

/// A client that joins while another client chatters is seated at one place
/// among the messages, the same on its own node as on the other: its own
/// node's clients hear its join and leave after the same message as the other
/// node's, its history ends there and the first message it hears live is the
/// next.
#[test]
fn a_join_and_a_leave_are_heard_at_the_same_place_on_their_own_node_as_on_another() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let observe = |node: &Server| Observer {
        client: Client::join(node),
        last: 0,
    };
    let (mut ann, mut mia) = (observe(&a), observe(&b));
    // Dan chatters on the joiner's own node: some of what he said is always
    // waiting there to be appended, before the joiner's seat.
    let mut dan = Client::join(&b);
    let stop = Arc::new(AtomicBool::new(false));
    let chatter = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            // Batches wait up to 20 ms at this pace.
            for n in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                dan.send_chat("dan", &n.to_string());
                thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    // Until B has seen Dan's pace and gathers his messages in batches.
    for observer in [&mut ann, &mut mia] {
        loop {
            let said = observer.client.recv_type("message");
            observer.last = said["id"].as_u64().unwrap();
            if said["msg"] == "100" {
                break;
            }
        }
    }
    for round in 0..5 {
        let mut xia = Client::connect(&b.ws_url("/"));
        let welcome = xia.recv_type("welcome");
        let id = welcome["id"].as_u64().unwrap();
        // Its history, then its own join; the first message after is live.
        let mut history_ends = 0;
        let first_live = loop {
            let frame = xia.recv_json();
            if frame["type"] == "message" {
                history_ends = frame["id"].as_u64().unwrap();
            }
            if frame["event"] == "join" && frame["id"] == id {
                break xia.recv_type("message")["id"].as_u64().unwrap();
            }
        };
        drop(xia);
        let on_a = ann.last_message_before("join", id);
        let on_b = mia.last_message_before("join", id);
        assert_eq!(
            on_a, on_b,
            "round {round}: heard joining after {on_a} on A, {on_b} on B"
        );
        assert_eq!(history_ends, on_a, "round {round}: its history");
        assert!(
            first_live > on_a,
            "round {round}: {first_live} heard live after {on_a}"
        );
        let on_a = ann.last_message_before("leave", id);
        let on_b = mia.last_message_before("leave", id);
        assert_eq!(
            on_a, on_b,
            "round {round}: heard leaving after {on_a} on A, {on_b} on B"
        );
    }
    stop.store(true, Ordering::Relaxed);
    chatter.join().unwrap();
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
    // And in a room of its own, after the lobby's.
    let mut gus = Client::join(&a);
    gus.send_text(r#"{"type":"join","room":"games"}"#);
    gus.recv_type("joined");
    for i in 1..=3 {
        gus.send_chat("gus", &format!("game {i}"));
    }
    let games: Vec<u64> = (0..3)
        .map(|_| gus.recv_type("message")["id"].as_u64().unwrap())
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
    // Bob joins `room` from `since`: no gap, then the ids of the next two.
    let mut resume = |room: &str, since: u64| {
        bob.send_text(&format!(
            r#"{{"type":"join","room":"{room}","since":{since},"epoch":{epoch}}}"#
        ));
        let joined = bob.recv_type("joined");
        assert_ne!(joined["gap"], true, "{joined}");
        (0..2)
            .map(|_| bob.recv_type("message")["id"].as_u64().unwrap())
            .collect::<Vec<u64>>()
    };
    // `since` from an id another node gave: only what came after it, no gap.
    assert_eq!(resume("lobby", ids[2]), ids[3..]);
    // The same in a room the new node made for the history it started with.
    assert_eq!(resume("games", games[0]), games[1..]);
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

/// Two nodes are one chat: what is said on either is heard on both, and each
/// node's `who` lists the other's client (presence goes through Redis too). That
/// takes every kind of command a node sends (those at start, the append script,
/// the blocking read, the presence transaction), so a Redis that lets a node in
/// but refuses it one of those fails this.
fn assert_one_chat(a: &Server, b: &Server) {
    let (mut ann, mut bob) = (Client::join(a), Client::join(b));
    ann.send_chat("ann", "hello from a");
    assert_eq!(bob.recv_type("message")["msg"], "hello from a");
    bob.send_chat("bob", "hello from b");
    assert_eq!(ann.recv_type("message")["msg"], "hello from a");
    assert_eq!(ann.recv_type("message")["msg"], "hello from b");
    wait_until_who_lists(&mut ann, bob.id.unwrap(), None);
    wait_until_who_lists(&mut bob, ann.id.unwrap(), None);
}

/// A node of the Redis at `url`, `more` flags on top, with the flood control
/// out of the way of `who` asked in a loop.
fn node_at(url: &str, more: &[&str]) -> Server {
    let flags = ["--redis", url, "--rate", "100000", "--burst", "100000"];
    Server::start(&[&flags[..], more].concat())
}

/// Starts the binary as one node of `url`, given as `THREADCHAT_REDIS` (as the
/// settings file gives it), and expects it to give up at start: what it logged.
fn refused_at_start(url: &str, more: &[&str]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_threadchat"));
    for (name, _) in std::env::vars() {
        if name.starts_with("THREADCHAT_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(["--bind", "127.0.0.1", "--http-port", "0", "--ws-port", "0"])
        .args(more)
        .env("THREADCHAT_REDIS", url)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the threadchat binary");
    let Some(status) = wait_for_exit(&mut child, PATIENCE) else {
        let _ = child.kill();
        panic!("a node of {url} started");
    };
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(!status.success(), "{status}: {log}");
    log
}

/// The error of a node refused at start: it names the Redis, password hidden,
/// says why (`because`, any case), and never shows `secret`.
fn assert_refused(log: &str, shown: &str, because: &str, secret: &str) {
    assert!(log.contains(&format!("--redis {shown}: ")), "{log}");
    assert!(log.to_lowercase().contains(because), "{log}");
    assert!(!log.contains(secret), "the password in the log: {log}");
}

/// The ACL user DEPLOY.md gives the nodes: the chat's keys and its one channel,
/// the commands that read and write them, run its scripts and follow the
/// channel, nothing dangerous.
const CHAT_USER: &[&str] = &[
    "threadchat",
    "on",
    ">user-s3cret",
    "~threadchat:*",
    "resetchannels",
    "&threadchat:live",
    "-@all",
    "+@read",
    "+@write",
    "+@scripting",
    "+@transaction",
    "+publish",
    "+subscribe",
    "+ping",
    "-@dangerous",
];
