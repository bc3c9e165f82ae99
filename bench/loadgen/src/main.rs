//! threadchat's load generator, written like the server: blocking sockets and one
//! thread per client.
//!
//! For each scenario it starts a fresh server on free ports (chosen by the kernel,
//! passed as flags; it is up once `/proc` shows those ports in LISTEN state as its
//! own), opens the clients, waits for the join notifications to settle, drives
//! messages, then checks every delivery: lost, duplicated, out of order, and
//! whether every client saw the same total order. It prints one markdown table, the machine it ran on
//! and the exact command.
//!
//! Every scenario but `rooms` keeps its clients in the lobby. `rooms` spreads them
//! over R rooms of C (client `i` joins room `r{i % R}` once connected and waits for
//! `joined`), with senders in every room; its joins have settled when every client
//! has seen its own room's `count` reach C, and its checks hold per room, plus one
//! more: no client receives a message of another room. Replayed history (`"history":
//! true`) is never counted as a delivery.
//!
//! The `footprint` scenario (see `footprint.rs`) measures what a server costs a
//! small host at rest: binary size, start-up time, memory, and wake-ups while idle;
//! `--server-cmd` points it at any other server for comparison.
//!
//! `--naive` repeats chat and saturate against `examples/naive.rs` (one global
//! lock, blocking writes): its rows show what that design costs, and are checked
//! the same way but never fail the run.
//!
//! `--tls-scenarios` repeats scenarios over wss as `(wss)` rows: the server gets a
//! certificate made at start, and the clients check it. A TLS client here is split
//! between its reader thread and its sender the way the server splits its own
//! (see the server's `src/tls.rs`): the reader does its blocking read with no lock
//! held, then locks the connection to decrypt; the sender locks it to encrypt and
//! write.
//!
//! Every message a sender writes is `"<sender>:<seq>:<ns since start>:xxx…"`, so a
//! receiver knows who sent it, its position, and its one-way latency (sender and
//! receivers share this process's monotonic clock).

mod footprint;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use clap::Parser;
use crossbeam_channel::{Receiver, Sender, bounded};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::{Message, WebSocket};

/// Drive a threadchat server and print what it did.
#[derive(Parser, Debug)]
struct Cli {
    /// The server binary.
    #[arg(long, default_value = "target/release/threadchat")]
    server: String,
    /// Small numbers, a few seconds in all (for `make test`).
    #[arg(long)]
    quick: bool,
    /// Scenarios to run (footprint, chat, fanout, saturate, rooms, idle, storm).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "footprint,chat,fanout,saturate,rooms,idle,storm"
    )]
    scenarios: Vec<String>,
    /// footprint only: measure this shell command instead of `--server`. It gets
    /// `WS_PORT` and `HTTP_PORT` in its environment and should `exec` the server.
    #[arg(long, requires = "name")]
    server_cmd: Option<String>,
    /// footprint only: the name of the `--server-cmd` server in the table.
    #[arg(long)]
    name: Option<String>,
    /// footprint only: the file whose size is reported for `--server-cmd`.
    #[arg(long)]
    binary: Option<String>,
    /// footprint only: the `--server-cmd` server has no HTTP port to wait for.
    #[arg(long)]
    no_http: bool,
    /// footprint only: seconds of the idle window (default 60; 3 with --quick).
    #[arg(long)]
    idle_seconds: Option<u64>,
    /// The naive server (`examples/naive.rs`, built with `cargo build --example
    /// naive`): chat and saturate run against it too, each as a `(naive)` row
    /// after threadchat's. Its deliveries are checked and shown, never failed.
    #[arg(long)]
    naive: Option<String>,
    /// These scenarios again over wss (chat, fanout, saturate, rooms, idle), each
    /// as a `(wss)` row after the plain one, checked the same way.
    #[arg(long, value_delimiter = ',')]
    tls_scenarios: Vec<String>,
    /// These load scenarios again through a cluster (`--redis`, with a
    /// redis-server of the run's own), clients spread over the nodes, as
    /// `(N nodes)` rows, checked the same way: one order on every node.
    #[arg(long, value_delimiter = ',')]
    cluster_scenarios: Vec<String>,
    /// The cluster sizes of those rows.
    #[arg(long, value_delimiter = ',', default_value = "2,3")]
    cluster_nodes: Vec<usize>,
}

/// The scenarios `--naive` repeats against the naive server.
const NAIVE_SCENARIOS: [&str; 2] = ["chat", "saturate"];

/// The clock every latency is measured on.
fn since_start() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

// --- the server under test ---------------------------------------------------------

struct Server {
    child: Child,
    ws: SocketAddr,
}

/// The cluster rows' redis-server: a free port, no persistence, killed at the end.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let [port] = footprint::free_ports();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server: {e} (apt install redis-server)")
            });
        let pid = child.id();
        assert!(
            footprint::poll_until(START_PATIENCE, Duration::from_millis(1), || {
                footprint::listening(&[port], Some(pid))
            }),
            "redis-server was not listening on {port}"
        );
        Redis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn cpu(&self) -> Duration {
        cpu_of(self.child.id())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process's CPU time so far (user and system, all threads).
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields 14 and 15 (utime, stime), counted after the `(comm)` field.
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().skip(11).take(2))
        .into_iter()
        .flatten()
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    Duration::from_secs_f64(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// The wss rows' certificate: files for the server, a configuration for clients
/// that trusts it and nothing else.
struct Tls {
    dir: std::path::PathBuf,
    client: Arc<rustls::ClientConfig>,
}

impl Tls {
    fn new() -> Tls {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("a certificate");
        let dir = std::env::temp_dir().join(format!("threadchat-loadgen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        std::fs::write(dir.join("cert.pem"), made.cert.pem()).expect("write cert.pem");
        std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem())
            .expect("write key.pem");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(made.cert.der().clone()).expect("the certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Tls {
            dir,
            client: Arc::new(client),
        }
    }

    fn server_args(&self) -> [String; 4] {
        [
            "--tls-cert".into(),
            self.dir.join("cert.pem").display().to_string(),
            "--tls-key".into(),
            self.dir.join("key.pem").display().to_string(),
        ]
    }
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client's connection, plain or TLS; clones share one TLS connection.
enum Wire {
    Plain(TcpStream),
    Tls {
        socket: TcpStream,
        conn: Arc<Mutex<rustls::ClientConnection>>,
        /// Ciphertext read but not yet taken: rustls takes no more while it holds
        /// 16 KiB of plaintext. Only the reading clone uses it.
        unread: Vec<u8>,
    },
}

impl Wire {
    /// Connects to `server`; over TLS, with the TLS handshake done.
    fn connect(server: SocketAddr, tls: Option<&Tls>) -> std::io::Result<Wire> {
        let socket = TcpStream::connect(server)?;
        socket.set_nodelay(true)?;
        let Some(tls) = tls else {
            return Ok(Wire::Plain(socket));
        };
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
        let mut conn = rustls::ClientConnection::new(Arc::clone(&tls.client), name)
            .map_err(std::io::Error::other)?;
        let mut io = &socket;
        while conn.is_handshaking() {
            conn.complete_io(&mut io)?;
        }
        Ok(Wire::Tls {
            socket,
            conn: Arc::new(Mutex::new(conn)),
            unread: Vec::new(),
        })
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Wire::Plain(socket) | Wire::Tls { socket, .. } => socket,
        }
    }

    fn try_clone(&self) -> std::io::Result<Wire> {
        Ok(match self {
            Wire::Plain(socket) => Wire::Plain(socket.try_clone()?),
            Wire::Tls { socket, conn, .. } => Wire::Tls {
                socket: socket.try_clone()?,
                conn: Arc::clone(conn),
                unread: Vec::new(),
            },
        })
    }

    fn scheme(&self) -> &'static str {
        match self {
            Wire::Plain(_) => "ws",
            Wire::Tls { .. } => "wss",
        }
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (mut socket, conn, unread) = match self {
            Wire::Plain(socket) => return socket.read(buf),
            Wire::Tls {
                socket,
                conn,
                unread,
            } => (&*socket, conn, unread),
        };
        loop {
            {
                let mut conn = conn.lock().unwrap();
                // Feed what is left over until a record yields plaintext.
                let mut input = &unread[..];
                while !input.is_empty() && conn.wants_read() {
                    conn.read_tls(&mut input)?;
                    conn.process_new_packets().map_err(std::io::Error::other)?;
                }
                let taken = unread.len() - input.len();
                unread.drain(..taken);
                // What reading made it send, under the lock: one writer at a time.
                while conn.wants_write() {
                    conn.write_tls(&mut socket)?;
                }
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
            }
            // Blocking, with no lock held: the sender encrypts meanwhile.
            let mut ciphertext = [0u8; 16 * 1024];
            let n = socket.read(&mut ciphertext)?;
            if n == 0 {
                return Ok(0);
            }
            unread.extend_from_slice(&ciphertext[..n]);
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (mut socket, conn) = match self {
            Wire::Plain(socket) => return socket.write(buf),
            Wire::Tls { socket, conn, .. } => (&*socket, conn),
        };
        let mut conn = conn.lock().unwrap();
        conn.writer().write_all(buf)?;
        while conn.wants_write() {
            conn.write_tls(&mut socket)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How long a server may take from `spawn` to listening on its ports.
const START_PATIENCE: Duration = Duration::from_secs(10);

/// The first bytes of a server's stderr that are kept: enough for why it did not
/// start. The rest is read and dropped, so the pipe never fills up.
const STDERR_KEPT: usize = 64 * 1024;

impl Server {
    /// Starts `binary` on two free ports and waits until it listens on them (the
    /// WebSocket port only, if `http` is false), as `/proc` shows them: the log is
    /// not read for it. Panics, with the server's stderr, if it exits first or is
    /// not listening within [`START_PATIENCE`].
    fn start(binary: &str, http: bool, tls: Option<&Tls>, redis: Option<&Redis>) -> Server {
        let [ws_port, http_port] = footprint::free_ports();
        let mut command = Command::new(binary);
        if let Some(tls) = tls {
            command.args(tls.server_args());
        }
        if let Some(redis) = redis {
            command.args(["--redis", &redis.url()]);
        }
        let mut child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--http-port", &http_port.to_string()])
            .args(["--ws-port", &ws_port.to_string()])
            .args(["--max-clients", "100000", "--ping-interval", "3600"])
            // Thousands of clients from 127.0.0.1 are one address: the per-address
            // caps are off for the bench. Set through the environment, so that a
            // server from before these flags (compared side by side) ignores them.
            .env("THREADCHAT_MAX_PER_HOST", "0")
            .env("THREADCHAT_MAX_HANDSHAKES_PER_HOST", "0")
            .env("THREADCHAT_MAX_HTTP_PER_HOST", "0")
            // Senders go as fast as the server answers: flood control would drop them.
            .env("THREADCHAT_RATE", "100000")
            .env("THREADCHAT_BURST", "100000")
            // The same for the per-address budgets and the rooms an address may make.
            .env("THREADCHAT_HOST_FRAMES", "0")
            .env("THREADCHAT_HOST_BYTES_IN", "0")
            .env("THREADCHAT_HOST_BYTES_OUT", "0")
            .env("THREADCHAT_MAX_ROOMS_PER_HOST", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary}: {e} (build it with `cargo build --release`)")
            });
        let stderr = drain(child.stderr.take().expect("piped"));
        let ports = if http {
            vec![ws_port, http_port]
        } else {
            vec![ws_port]
        };
        let pid = child.id();
        let mut exited = None;
        let up = footprint::poll_until(START_PATIENCE, Duration::from_millis(1), || {
            exited = child.try_wait().ok().flatten();
            exited.is_some() || footprint::listening(&ports, Some(pid))
        });
        let server = Server {
            child,
            ws: SocketAddr::from(([127, 0, 0, 1], ws_port)),
        };
        if up && exited.is_none() {
            return server;
        }
        let why = match exited {
            Some(status) => {
                // It has exited: its stderr ends (EOF) as soon as the pipe is read out.
                footprint::poll_until(Duration::from_secs(1), Duration::from_millis(5), || {
                    stderr.1.is_finished()
                });
                format!("exited ({status}) before listening")
            }
            None => format!("was not listening within {START_PATIENCE:?}"),
        };
        let log = String::from_utf8_lossy(&stderr.0.lock().unwrap()).into_owned();
        panic!("{binary} {why} on ports {ports:?}; its stderr:\n{log}");
    }

    fn status(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        footprint::field_of(&text, field)
    }

    /// CPU time the server has used so far (user and system, all threads).
    fn cpu(&self) -> Duration {
        cpu_of(self.child.id())
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |d| d.count())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a child's stderr until it ends, keeping the first [`STDERR_KEPT`] bytes:
/// the server must never block on a full pipe, and its start-up errors are shown.
fn drain(mut stderr: std::process::ChildStderr) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let kept = Arc::new(Mutex::new(Vec::new()));
    let keeper = Arc::clone(&kept);
    let reader = thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            let n = match stderr.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let mut kept = keeper.lock().unwrap();
            let room = STDERR_KEPT.saturating_sub(kept.len());
            kept.extend_from_slice(&chunk[..n.min(room)]);
        }
    });
    (kept, reader)
}

// --- one client ----------------------------------------------------------------------

/// What one client's reader saw.
#[derive(Default)]
struct Seen {
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    /// Highest seq seen per sender (-1: none).
    last_seq: Vec<i64>,
    /// (sender << 24 | seq) in arrival order, measured messages only.
    order: Vec<u32>,
    /// One-way latencies in µs, measured messages only.
    latencies: Vec<u32>,
    /// Largest `count` in a notification so far (of its own room, in `rooms`).
    max_count: u64,
    /// Messages of another room than the client's: each one a failure.
    foreign: u64,
}

/// Shared between the scenario and every reader.
struct Shared {
    senders: usize,
    /// 0: everyone stays in the lobby. Else client `i` (sender `i` too, as senders
    /// are the first clients) is in room `i % rooms`.
    rooms: usize,
    /// Only messages with `measured_from[sender] <= seq < measured_to[sender]`
    /// count; each sender sets its own bounds as it passes them.
    measured_from: Vec<AtomicU64>,
    measured_to: Vec<AtomicU64>,
    /// Messages received in the measured window, by all clients.
    received: AtomicU64,
    /// Clients whose notifications have reached the expected count.
    settled: AtomicU64,
    expected_count: AtomicU64,
    /// Each sender's echo: wakes its writer in the closed loop.
    echoes: Vec<Sender<()>>,
    keep_latencies: AtomicBool,
}

impl Shared {
    /// The room client (or sender) `i` joins, if it leaves the lobby.
    fn room_of(&self, i: usize) -> Option<usize> {
        (self.rooms > 0).then(|| i % self.rooms)
    }
}

fn room_name(room: usize) -> String {
    format!("r{room}")
}

/// How long a client waits for the answer to its `join`.
const JOIN_PATIENCE: Duration = Duration::from_secs(10);

struct Client {
    socket: Wire,
    reader: JoinHandle<Seen>,
}

fn connect(
    server: SocketAddr,
    index: usize,
    shared: &Arc<Shared>,
    tls: Option<&Tls>,
) -> std::io::Result<Client> {
    let stream = Wire::connect(server, tls)?;
    let url = format!("{}://localhost:{}/", stream.scheme(), server.port());
    let (mut ws, _) = tungstenite::client(url, stream.try_clone()?)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let room = match shared.room_of(index) {
        Some(room) => Some(join(&mut ws, stream.tcp(), &room_name(room))?),
        None => None,
    };
    let shared = Arc::clone(shared);
    let reader = thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || read_all(ws, index, room, &shared))?;
    Ok(Client {
        socket: stream,
        reader,
    })
}

/// Moves a freshly connected client from the lobby to `room`: sends `join` and reads
/// (and drops: the lobby's frames) until its `joined`. Returns the room and the
/// `joined` count, which is where the reader's count starts.
fn join(
    ws: &mut WebSocket<Wire>,
    stream: &TcpStream,
    room: &str,
) -> std::io::Result<(String, u64)> {
    let fail = |e: String| std::io::Error::other(format!("join {room}: {e}"));
    stream.set_read_timeout(Some(JOIN_PATIENCE))?;
    let frame = serde_json::json!({ "type": "join", "room": room }).to_string();
    ws.send(Message::text(frame))
        .map_err(|e| fail(e.to_string()))?;
    let count = loop {
        let Message::Text(text) = ws.read().map_err(|e| fail(e.to_string()))? else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        match value["type"].as_str() {
            Some("joined") if value["room"] == room => {
                break value["count"].as_u64().unwrap_or(0);
            }
            Some("error") => return Err(fail(value["msg"].to_string())),
            _ => {}
        }
    };
    stream.set_read_timeout(None)?;
    Ok((room.to_string(), count))
}

/// Reads one client's frames until its socket closes. `room`: the room it joined
/// and that `joined`'s count; `None` for a client in the lobby, whose frames are
/// then taken as they come, as from a server without rooms.
fn read_all(
    mut ws: WebSocket<Wire>,
    index: usize,
    room: Option<(String, u64)>,
    shared: &Shared,
) -> Seen {
    let mut seen = Seen {
        last_seq: vec![-1; shared.senders],
        ..Seen::default()
    };
    let mut settled = false;
    let mut count = |seen: &mut Seen, n: u64| {
        seen.max_count = seen.max_count.max(n);
        if !settled && seen.max_count >= shared.expected_count.load(Ordering::Relaxed) {
            settled = true;
            shared.settled.fetch_add(1, Ordering::Relaxed);
        }
    };
    let room = room.map(|(room, joined)| {
        count(&mut seen, joined);
        room
    });
    // Whether a frame is of this client's room (any frame, in the lobby).
    let mine = |value: &serde_json::Value| room.as_ref().is_none_or(|r| value["room"] == **r);
    while let Ok(message) = ws.read() {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        match value["type"].as_str() {
            Some("notification") | Some("welcome") if mine(&value) => {
                count(&mut seen, value["count"].as_u64().unwrap_or(0));
            }
            // A joiner's replay of what was said before it came: not a delivery.
            Some("message") if value["history"] == true => {}
            Some("message") if !mine(&value) => seen.foreign += 1,
            Some("message") => record(
                &mut seen,
                value["msg"].as_str().unwrap_or(""),
                index,
                shared,
            ),
            _ => {}
        }
    }
    seen
}

fn record(seen: &mut Seen, msg: &str, me: usize, shared: &Shared) {
    let mut parts = msg.splitn(4, ':');
    let (Some(s), Some(q), Some(t)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let (Ok(sender), Ok(seq), Ok(sent_ns)) =
        (s.parse::<usize>(), q.parse::<i64>(), t.parse::<u64>())
    else {
        return;
    };
    if sender >= shared.senders {
        return;
    }
    if shared.room_of(sender) != shared.room_of(me) {
        seen.foreign += 1; // said in another room than this client's
        return;
    }
    if me == sender {
        let _ = shared.echoes[sender].try_send(());
    }
    let last = &mut seen.last_seq[sender];
    if seq == *last {
        seen.duplicates += 1;
        return;
    }
    if seq < *last {
        seen.out_of_order += 1;
        return;
    }
    *last = seq;
    let from = shared.measured_from[sender].load(Ordering::SeqCst);
    let to = shared.measured_to[sender].load(Ordering::SeqCst);
    if (seq as u64) < from || seq as u64 >= to {
        return;
    }
    seen.received += 1;
    shared.received.fetch_add(1, Ordering::Relaxed);
    seen.order
        .push(((sender as u32) << 24) | (seq as u32 & 0xFF_FFFF));
    if shared.keep_latencies.load(Ordering::Relaxed) {
        seen.latencies
            .push((since_start().saturating_sub(sent_ns) / 1000) as u32);
    }
}

/// A client's text frame, masked as RFC 6455 requires of clients.
fn client_frame(payload: &str) -> Vec<u8> {
    const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x9e];
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        mask: Some(MASK),
        ..FrameHeader::default()
    };
    let mut out = Vec::with_capacity(payload.len() + 14);
    header
        .format(payload.len() as u64, &mut out)
        .expect("a Vec takes it");
    out.extend(payload.bytes().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

fn chat_message(sender: usize, seq: u64, size: usize) -> String {
    let head = format!("{sender}:{seq}:{}:", since_start());
    let text = format!("{head}{}", "x".repeat(size.saturating_sub(head.len())));
    serde_json::json!({ "name": format!("s{sender}"), "msg": text }).to_string()
}

// --- scenarios ---------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Drive {
    /// Open loop: each sender sends `rate` per second on a fixed schedule.
    Rate(f64),
    /// Closed loop: each sender keeps `window` of its messages unechoed.
    Window(usize),
}

struct Load {
    /// Every client, in all rooms.
    clients: usize,
    /// Every sender, in all rooms (spread over them as `i % rooms`).
    senders: usize,
    /// 0: everyone in the lobby; else `clients / rooms` clients in each room.
    rooms: usize,
    drive: Drive,
    warmup: Duration,
    duration: Duration,
    size: usize,
}

struct Outcome {
    clients: usize,
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    expected: u64,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    same_order: bool,
    /// Messages received by a client of another room (never in lobby scenarios).
    foreign: u64,
    settle_s: f64,
    /// The server's CPU time (user and system) in the measured window, per
    /// delivery: what one delivered message costs it (all nodes together).
    cpu_us_per_delivery: f64,
    /// Redis' CPU time likewise, in a cluster.
    redis_cpu_us_per_delivery: Option<f64>,
}

/// Opens `n` clients, client `i` on `addrs[i % addrs.len()]`.
fn open_clients(
    addrs: &[SocketAddr],
    n: usize,
    shared: &Arc<Shared>,
    tls: Option<&Arc<Tls>>,
) -> Result<Vec<Client>, String> {
    // One connect at a time per opener thread, so the accept backlog is not overrun.
    let openers = 8;
    let next = Arc::new(AtomicU64::new(0));
    let clients = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let handles: Vec<_> = (0..openers)
        .map(|_| {
            let (next, clients, shared, addrs, tls) = (
                next.clone(),
                clients.clone(),
                shared.clone(),
                addrs.to_vec(),
                tls.cloned(),
            );
            thread::spawn(move || -> Result<(), String> {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= n {
                        return Ok(());
                    }
                    let client = connect(addrs[i % addrs.len()], i, &shared, tls.as_deref())
                        .map_err(|e| format!("client {i}: {e}"))?;
                    clients.lock().unwrap().push((i, client));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("opener")?;
    }
    let mut clients = Arc::try_unwrap(clients)
        .ok()
        .expect("openers done")
        .into_inner()
        .unwrap();
    clients.sort_by_key(|(i, _)| *i);
    Ok(clients.into_iter().map(|(_, c)| c).collect())
}

fn wait_until(deadline: Duration, done: impl FnMut() -> bool) -> bool {
    footprint::poll_until(deadline, Duration::from_millis(5), done)
}

/// One load scenario against a fresh server. An `Err` is a run that could not be
/// measured (a client could not connect, the joins never settled).
/// `nodes`: 0 for one server on its own; else that many nodes of one cluster,
/// through a redis-server of the run's own.
fn run_load(
    binary: &str,
    http: bool,
    load: &Load,
    tls: Option<&Arc<Tls>>,
    nodes: usize,
) -> Result<Outcome, String> {
    let groups = load.rooms.max(1);
    assert!(
        load.clients.is_multiple_of(groups) && load.senders >= groups,
        "every room as many clients, and a sender"
    );
    let members = load.clients / groups;
    let redis = (nodes > 0).then(Redis::start);
    let servers: Vec<Server> = (0..nodes.max(1))
        .map(|_| Server::start(binary, http, tls.map(|t| &**t), redis.as_ref()))
        .collect();
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.ws).collect();
    let (echo_tx, echo_rx): (Vec<_>, Vec<_>) =
        (0..load.senders).map(|_| bounded::<()>(1 << 16)).unzip();
    let shared = Arc::new(Shared {
        senders: load.senders,
        rooms: load.rooms,
        measured_from: (0..load.senders)
            .map(|_| AtomicU64::new(u64::MAX))
            .collect(),
        measured_to: (0..load.senders)
            .map(|_| AtomicU64::new(u64::MAX))
            .collect(),
        received: AtomicU64::new(0),
        settled: AtomicU64::new(0),
        expected_count: AtomicU64::new(members as u64),
        echoes: echo_tx,
        keep_latencies: AtomicBool::new(true),
    });
    let started = Instant::now();
    let clients = open_clients(&addrs, load.clients, &shared, tls)?;
    let settled = wait_until(Duration::from_secs(60), || {
        shared.settled.load(Ordering::Relaxed) == load.clients as u64
    });
    if !settled {
        return Err(format!(
            "join notifications did not settle: {} of {} clients saw them all",
            shared.settled.load(Ordering::Relaxed),
            load.clients
        ));
    }
    let settle_s = started.elapsed().as_secs_f64();

    // Senders are the first clients; each writes on its own clone of its socket.
    let t0 = Instant::now() + Duration::from_millis(100);
    let end = t0 + load.warmup + load.duration;
    let measure_from = t0 + load.warmup;
    let sent_counts: Vec<_> = (0..load.senders)
        .zip(echo_rx)
        .map(|(s, echoes)| {
            let socket = clients[s].socket.try_clone().expect("clone");
            let (drive, size, shared) = (load.drive, load.size, Arc::clone(&shared));
            thread::spawn(move || {
                send_loop(
                    socket,
                    s,
                    &shared,
                    drive,
                    size,
                    t0,
                    measure_from,
                    end,
                    &echoes,
                )
            })
        })
        .collect();
    // The servers' and Redis' CPU time over the measured window.
    let cpu_at = |at: Instant| {
        thread::sleep(at.saturating_duration_since(Instant::now())); // a clock, not a sync
        let servers: Duration = servers.iter().map(Server::cpu).sum();
        (servers, redis.as_ref().map(Redis::cpu))
    };
    let cpu_from = cpu_at(measure_from);
    let cpu_to = cpu_at(end);
    let windows: Vec<(u64, u64)> = sent_counts
        .into_iter()
        .map(|h| h.join().expect("sender"))
        .collect();
    // Each sender's measured messages reach every member of its room (all clients,
    // in the lobby).
    let measured: u64 = windows.iter().map(|w| w.1 - w.0).sum();
    let expected = measured * members as u64;
    let mut last = 0;
    let mut last_change = Instant::now();
    wait_until(Duration::from_secs(30), || {
        let now = shared.received.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
        now >= expected || last_change.elapsed() > Duration::from_secs(1)
    });
    for c in &clients {
        let _ = c.socket.tcp().shutdown(Shutdown::Both);
    }
    let seen: Vec<Seen> = clients
        .into_iter()
        .map(|c| c.reader.join().expect("reader"))
        .collect();
    let mut outcome = summarize(
        load.clients,
        groups,
        seen,
        expected,
        load.duration,
        settle_s,
    );
    let per_delivery = |d: Duration| d.as_secs_f64() * 1e6 / outcome.received.max(1) as f64;
    outcome.cpu_us_per_delivery = per_delivery(cpu_to.0 - cpu_from.0);
    outcome.redis_cpu_us_per_delivery = cpu_to
        .1
        .zip(cpu_from.1)
        .map(|(to, from)| per_delivery(to - from));
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
fn send_loop(
    mut socket: Wire,
    me: usize,
    shared: &Shared,
    drive: Drive,
    size: usize,
    t0: Instant,
    measure_from: Instant,
    end: Instant,
    echoes: &Receiver<()>,
) -> (u64, u64) {
    let (mut seq, mut first_measured) = (0u64, None);
    let mut in_flight = 0usize;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        match drive {
            Drive::Rate(rate) => {
                let offset = me as f64 / shared.senders as f64;
                let due = t0 + Duration::from_secs_f64((offset + seq as f64) / rate);
                if due >= end {
                    break;
                }
                if due > now {
                    thread::sleep(due - now); // the schedule: an open-loop load
                }
            }
            Drive::Window(window) => {
                while in_flight >= window {
                    match echoes.recv_timeout(Duration::from_secs(1)) {
                        Ok(()) => in_flight -= 1,
                        Err(_) => in_flight = 0, // an echo lost: free the slot anyway
                    }
                    if Instant::now() >= end {
                        break;
                    }
                }
                while echoes.try_recv().is_ok() {
                    in_flight = in_flight.saturating_sub(1);
                }
                if Instant::now() >= end {
                    break;
                }
            }
        }
        if first_measured.is_none() && Instant::now() >= measure_from {
            // Published before the message it names is written.
            shared.measured_from[me].store(seq, Ordering::SeqCst);
            first_measured = Some(seq);
        }
        if socket
            .write_all(&client_frame(&chat_message(me, seq, size)))
            .is_err()
        {
            break;
        }
        seq += 1;
        in_flight += 1;
    }
    shared.measured_to[me].store(seq, Ordering::SeqCst);
    (first_measured.unwrap_or(seq), seq)
}

/// `groups`: the rooms (1: the lobby); client `i` is in room `i % groups`.
fn summarize(
    clients: usize,
    groups: usize,
    seen: Vec<Seen>,
    expected: u64,
    duration: Duration,
    settle_s: f64,
) -> Outcome {
    let received: u64 = seen.iter().map(|s| s.received).sum();
    let duplicates = seen.iter().map(|s| s.duplicates).sum();
    let out_of_order = seen.iter().map(|s| s.out_of_order).sum();
    let foreign = seen.iter().map(|s| s.foreign).sum();
    // Every client must hold its room's reference order (its first member's)
    // restricted to what it got.
    let same_order = seen.iter().enumerate().all(|(i, s)| {
        let reference = &seen[i % groups].order;
        let mine: std::collections::HashSet<u32> = s.order.iter().copied().collect();
        let restricted: Vec<u32> = reference
            .iter()
            .copied()
            .filter(|m| mine.contains(m))
            .collect();
        restricted == s.order
    });
    let mut latencies: Vec<u32> = seen.into_iter().flat_map(|s| s.latencies).collect();
    latencies.sort_unstable();
    let pick = |q: f64| {
        if latencies.is_empty() {
            return 0.0;
        }
        latencies[((latencies.len() - 1) as f64 * q) as usize] as f64 / 1000.0
    };
    Outcome {
        clients,
        deliveries_per_s: received as f64 / duration.as_secs_f64(),
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
        max_ms: pick(1.0),
        expected,
        received,
        duplicates,
        out_of_order,
        same_order,
        foreign,
        settle_s,
        cpu_us_per_delivery: 0.0,
        redis_cpu_us_per_delivery: None,
    }
}

struct Idle {
    clients: usize,
    kib_per_client: f64,
    threads: (u64, u64, u64),
    fds: (usize, usize, usize),
    settle_s: f64,
}

fn run_idle(binary: &str, n: usize, tls: Option<&Arc<Tls>>) -> Idle {
    let server = Server::start(binary, true, tls.map(|t| &**t), None);
    let (echo_tx, _echo_rx) = bounded(1);
    let shared = Arc::new(Shared {
        senders: 1,
        rooms: 0,
        measured_from: vec![AtomicU64::new(u64::MAX)],
        measured_to: vec![AtomicU64::new(u64::MAX)],
        received: AtomicU64::new(0),
        settled: AtomicU64::new(0),
        expected_count: AtomicU64::new(n as u64),
        echoes: vec![echo_tx],
        keep_latencies: AtomicBool::new(false),
    });
    // The baseline once the server has finished starting its own threads.
    let mut last = (0, 0);
    let mut stable_since = Instant::now();
    wait_until(Duration::from_secs(5), || {
        let now = (server.status("Threads"), server.fds() as u64);
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
        stable_since.elapsed() > Duration::from_millis(300)
    });
    let (rss0, threads0, fds0) = (
        server.status("VmRSS"),
        server.status("Threads"),
        server.fds(),
    );
    let started = Instant::now();
    let clients = open_clients(&[server.ws], n, &shared, tls).expect("clients connect");
    wait_until(Duration::from_secs(120), || {
        shared.settled.load(Ordering::Relaxed) == n as u64
    });
    let settle_s = started.elapsed().as_secs_f64();
    let (rss1, threads1, fds1) = (
        server.status("VmRSS"),
        server.status("Threads"),
        server.fds(),
    );
    for c in &clients {
        let _ = c.socket.tcp().shutdown(Shutdown::Both);
    }
    for c in clients {
        let _ = c.reader.join();
    }
    wait_until(Duration::from_secs(10), || {
        server.status("Threads") <= threads0 && server.fds() <= fds0
    });
    Idle {
        clients: n,
        kib_per_client: (rss1.saturating_sub(rss0)) as f64 / n as f64,
        threads: (threads0, threads1, server.status("Threads")),
        fds: (fds0, fds1, server.fds()),
        settle_s,
    }
}

/// The footprint scenario as a table of its own, with the targets threadchat
/// holds itself to (marked, not failed: the bench fails on wrong deliveries only).
fn run_footprint(cli: &Cli) -> String {
    let target = match &cli.server_cmd {
        Some(command) => footprint::Target {
            command: command.clone(),
            binary: cli.binary.clone(),
            http: !cli.no_http,
        },
        None => footprint::Target {
            command: format!(
                "exec '{}' --bind 127.0.0.1 --http-port \"$HTTP_PORT\" --ws-port \"$WS_PORT\"",
                cli.server
            ),
            binary: Some(cli.server.clone()),
            http: true,
        },
    };
    let idle = Duration::from_secs(cli.idle_seconds.unwrap_or(if cli.quick { 3 } else { 60 }));
    let f = footprint::measure(&target, idle);
    let ours = cli.server_cmd.is_none();
    let mark = |ok: bool| {
        if !ours {
            ""
        } else if ok {
            " ✓"
        } else {
            " ⚠"
        }
    };
    let mib = |kib: u64| kib as f64 / 1024.0;
    let binary = f.binary_bytes.map_or("–".to_string(), |b| {
        format!("{:.2} MiB{}", b as f64 / 1048576.0, mark(b <= 4 << 20))
    });
    let mut table = format!(
        "| footprint | binary | start → ports listening (median of 5) | RSS at start | RSS, {} idle clients | wake-ups, {} s idle | CPU, {} s idle |\n|---|---|---|---|---|---|---|\n",
        f.clients_connected, f.idle_seconds, f.idle_seconds
    );
    table += &format!(
        "| {} | {binary} | {:.1} ms{} | {:.1} MiB{} | {:.1} MiB | {} ({:.2}/s){} | {} ms |\n",
        cli.name.as_deref().unwrap_or("threadchat"),
        f.start_ms,
        mark(f.start_ms <= 100.0),
        mib(f.rss_start_kib),
        mark(f.rss_start_kib <= 4096),
        mib(f.rss_100_kib),
        f.wakeups,
        f.wakeups as f64 / f.idle_seconds.max(1) as f64,
        mark(f.wakeups == 0),
        f.cpu_ms
    );
    if ours {
        table += "| target (release build) | ≤ 4 MiB, page, TLS and Redis client inside | ≤ 100 ms | ≤ 4 MiB | | 0 | |\n";
    }
    table
}

/// Prints one load scenario's row; returns whether it went wrong: deliveries lost,
/// duplicated, reordered or received in another room (said in the same-order cell),
/// or no measurement at all. A row that is not `judged` (the naive server's) says so
/// in its first cell when it went wrong.
fn print_load_row(label: &str, outcome: &Result<Outcome, String>, judged: bool) -> bool {
    let mark = if judged { "" } else { " ⚠ not judged" };
    let o = match outcome {
        Ok(o) => o,
        Err(why) => {
            println!("| {label}{mark} | {why} ⚠ | | | | | | | | | |");
            return true;
        }
    };
    let lost = o.expected.saturating_sub(o.received);
    let bad = lost > 0 || o.duplicates > 0 || o.out_of_order > 0 || !o.same_order || o.foreign > 0;
    let foreign = if o.foreign > 0 {
        format!("; {} from another room ⚠", o.foreign)
    } else {
        String::new()
    };
    println!(
        "| {label}{} | {} | {:.0} | {:.2} / {:.2} / {:.2} | {} | {lost} | {} | {} | {}{foreign} | {:.2} | {:.2}{} |",
        if bad { mark } else { "" },
        o.clients,
        o.deliveries_per_s,
        o.p50_ms,
        o.p99_ms,
        o.max_ms,
        o.expected,
        o.duplicates,
        o.out_of_order,
        if o.same_order { "yes" } else { "no ⚠" },
        o.settle_s,
        o.cpu_us_per_delivery,
        o.redis_cpu_us_per_delivery
            .map_or_else(String::new, |r| format!(" + Redis {r:.2}"))
    );
    bad
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {}", kernel.trim())
}

/// Two descriptors per client (the socket and the sender's clone): raise the soft
/// open-files limit to the hard one, as far as this process is allowed.
fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
}

fn main() {
    let cli = Cli::parse();
    raise_open_files_limit();
    since_start();
    let q = cli.quick;
    let secs = |full: u64, quick: u64| Duration::from_secs(if q { quick } else { full });
    println!("threadchat load generator — {}", machine());
    println!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!();
    if cli.scenarios.iter().any(|s| s != "footprint") {
        println!(
            "| scenario | clients | deliveries/s | p50 / p99 / max ms | expected | lost | dup | out of order | same order | joins settled s | server CPU µs per delivery |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
    }
    let mut failed = false;
    let mut bad_scenarios = 0;
    let (mut naive_rows, mut naive_bad) = (0, 0);
    let mut footprint = None;
    let tls = (!cli.tls_scenarios.is_empty()).then(|| Arc::new(Tls::new()));
    for name in &cli.scenarios {
        // The plain row, then the wss one if asked for.
        let mut variants = vec![(None, "")];
        if cli.tls_scenarios.contains(name) {
            variants.push((tls.as_ref(), " (wss)"));
        }
        let load = match name.as_str() {
            "footprint" => {
                footprint = Some(run_footprint(&cli));
                continue;
            }
            "chat" => Load {
                clients: if q { 20 } else { 100 },
                senders: if q { 4 } else { 10 },
                rooms: 0,
                drive: Drive::Rate(20.0),
                warmup: secs(2, 1),
                duration: secs(10, 2),
                size: 64,
            },
            "fanout" => Load {
                clients: if q { 100 } else { 1000 },
                senders: 5,
                rooms: 0,
                drive: Drive::Rate(20.0),
                warmup: secs(2, 1),
                duration: secs(10, 2),
                size: 64,
            },
            "saturate" => Load {
                clients: if q { 40 } else { 200 },
                senders: 4,
                rooms: 0,
                drive: Drive::Window(8),
                warmup: secs(2, 1),
                duration: secs(10, 2),
                size: 64,
            },
            // 1,000 msg/s in all (20,000 deliveries/s): well within a 2-core
            // machine, so that a failure is the rooms' and not an overload's.
            "rooms" => {
                let (rooms, per_room, senders) = if q { (5, 8, 2) } else { (50, 20, 2) };
                Load {
                    clients: rooms * per_room,
                    senders: rooms * senders,
                    rooms,
                    drive: Drive::Rate(10.0),
                    warmup: secs(2, 1),
                    duration: secs(10, 2),
                    size: 64,
                }
            }
            "idle" | "storm" => {
                let n = if q { 200 } else { 2000 };
                for (tls, suffix) in &variants {
                    let idle = run_idle(&cli.server, n, *tls);
                    let leak = idle.threads.2 > idle.threads.0 || idle.fds.2 > idle.fds.0;
                    failed |= leak;
                    bad_scenarios += usize::from(leak);
                    if name == "idle" {
                        println!(
                            "| idle{suffix} | {} | {:.1} KiB RSS per connection; threads {} → {} → {}, fds {} → {} → {}{} | | | | | | | |",
                            idle.clients,
                            idle.kib_per_client,
                            idle.threads.0,
                            idle.threads.1,
                            idle.threads.2,
                            idle.fds.0,
                            idle.fds.1,
                            idle.fds.2,
                            if leak { " ⚠ leak" } else { "" }
                        );
                    } else {
                        println!(
                            "| storm{suffix} | {} | | | | | | | | {:.2} | |",
                            idle.clients, idle.settle_s
                        );
                    }
                }
                continue;
            }
            other => {
                eprintln!("unknown scenario {other}");
                std::process::exit(2);
            }
        };
        let label = if load.rooms > 0 {
            format!("{name} ({} × {})", load.rooms, load.clients / load.rooms)
        } else {
            name.clone()
        };
        for (tls, suffix) in &variants {
            let outcome = run_load(&cli.server, true, &load, *tls, 0);
            let bad = print_load_row(&format!("{label}{suffix}"), &outcome, true);
            failed |= bad;
            bad_scenarios += usize::from(bad);
        }
        if cli.cluster_scenarios.contains(name) {
            for &nodes in &cli.cluster_nodes {
                let outcome = run_load(&cli.server, true, &load, None, nodes);
                let bad = print_load_row(&format!("{label} ({nodes} nodes)"), &outcome, true);
                failed |= bad;
                bad_scenarios += usize::from(bad);
            }
        }
        if let Some(naive) = &cli.naive
            && NAIVE_SCENARIOS.contains(&name.as_str())
        {
            let outcome = run_load(naive, false, &load, None, 0);
            naive_rows += 1;
            naive_bad += usize::from(print_load_row(&format!("{name} (naive)"), &outcome, false));
        }
    }
    if naive_rows > 0 {
        println!();
        println!(
            "(naive): naive (examples/naive.rs), {}: the design threadchat is the \
             answer to (one global lock, blocking writes), same load; shown, never failed: \
             {} of {naive_rows} delivered everything once, in one order",
            cli.naive.as_deref().unwrap_or(""),
            naive_rows - naive_bad
        );
    }
    if let Some(table) = footprint {
        println!();
        print!("{table}");
    }
    println!();
    let rows = cli.scenarios.len()
        + cli
            .tls_scenarios
            .iter()
            .filter(|s| cli.scenarios.contains(s))
            .count()
        + cli
            .cluster_scenarios
            .iter()
            .filter(|s| cli.scenarios.contains(s))
            .count()
            * cli.cluster_nodes.len();
    println!("{} passed, {bad_scenarios} failed", rows - bad_scenarios);
    if failed {
        eprintln!(
            "some deliveries were lost, duplicated, reordered, crossed rooms, or something leaked"
        );
        std::process::exit(1);
    }
}
