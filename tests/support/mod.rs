//! Test support: the server in this process ([`Server`]) or the real binary
//! ([`Process`]) on loopback ports, real WebSocket clients, raw HTTP, and waiting
//! for events with a deadline.
#![allow(dead_code)] // each test file uses a different part of this module

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser as _;
use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// How long any single expected event may take before a test fails. Generous: a
/// loaded CI machine is slow, and a passing test never waits this long.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// What a test needs of a running server, in this process or as the binary.
pub trait Running {
    fn http_addr(&self) -> SocketAddr;
    fn ws_addr(&self) -> SocketAddr;

    /// `ws://127.0.0.1:<port><path>`.
    fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.ws_addr())
    }

    /// `GET /stats` as JSON: the counters a test observes instead of log lines.
    fn stats(&self) -> Value {
        let response = http_get(self.http_addr(), "/stats");
        assert_eq!(response.status, 200);
        serde_json::from_slice(&response.body).expect("/stats is JSON")
    }

    /// How many clients have left for `reason` (`closed`, `silent`, …).
    fn disconnects(&self, reason: &str) -> u64 {
        self.stats()["disconnects"][reason]
            .as_u64()
            .unwrap_or_else(|| panic!("no disconnect reason {reason:?}"))
    }
}

/// The server in this test process, as mini-redis's tests start theirs: the
/// library's `run` on listeners bound to port 0 of 127.0.0.1, stopped when this is
/// dropped. No process, no log: ports come from the listeners, and what happened
/// from `/stats`. (The test process's `THREADCHAT_*` variables apply, as they would
/// to the binary.)
pub struct Server {
    pub http: SocketAddr,
    pub ws: SocketAddr,
    stop: Option<crossbeam_channel::Sender<threadchat::Control>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    /// Starts a server with `args` on top of `--bind 127.0.0.1` and port 0 for both.
    pub fn start(args: &[&str]) -> Server {
        let mut all = vec![
            "threadchat",
            "--bind",
            "127.0.0.1",
            "--http-port",
            "0",
            "--ws-port",
            "0",
        ];
        all.extend_from_slice(args);
        let config = threadchat::config::Config::try_parse_from(all)
            .unwrap_or_else(|e| panic!("bad arguments {args:?}: {e}"));
        let listeners = threadchat::Listeners::bind(&config).expect("bind port 0");
        let http = listeners.http.local_addr().unwrap();
        let ws = listeners.ws.local_addr().unwrap();
        let (stop, controls) = crossbeam_channel::bounded(1);
        let thread = thread::spawn(move || {
            threadchat::run(config, listeners, controls).expect("the server runs");
        });
        Server {
            http,
            ws,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Running for Server {
    fn http_addr(&self) -> SocketAddr {
        self.http
    }
    fn ws_addr(&self) -> SocketAddr {
        self.ws
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Dropping the sender is the stop; `run` returns within its grace period.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && let Err(panic) = thread.join()
            && !thread::panicking()
        {
            // `run` failed: that, not whatever the test saw next, is the error.
            std::panic::resume_unwind(panic);
        }
    }
}

/// Two free ports on 127.0.0.1: bound, read, released. Only for a test that must
/// choose a server's ports itself (to see that a setting chose them); anything
/// else starts the server on port 0 and reads back the ports it got, since a
/// port released here can be taken by another test before the server binds it.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub http: u16,
    pub ws: u16,
}

impl Ports {
    pub fn pick() -> Ports {
        // Both held at once, so the kernel cannot hand out the same port twice.
        let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let (http, ws) = (bind(), bind());
        let port = |l: &std::net::TcpListener| l.local_addr().unwrap().port();
        Ports {
            http: port(&http),
            ws: port(&ws),
        }
    }
}

/// The real `threadchat` binary, for what only it has: signals, the environment,
/// exit codes, its own `/proc` figures, its log. It listens on ports it got from
/// the kernel (port 0), read back from its `listening:` log lines, and is ready
/// when it has both in LISTEN state (read from `/proc`) and answers `/healthz`,
/// which it can only once its hub and acceptors run.
pub struct Process {
    child: Child,
    /// Every line the server logged, shared with the thread that reads its stderr.
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
    pub http: SocketAddr,
    pub ws: SocketAddr,
}

impl Process {
    /// Starts the binary on 127.0.0.1, ports of the kernel's choosing and the
    /// compiled-in page, plus `args`.
    pub fn start(args: &[&str]) -> Process {
        Process::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut all = vec!["--bind", "127.0.0.1", "--http-port", "0", "--ws-port", "0"];
        all.extend_from_slice(args);
        Process::start_program(env!("CARGO_BIN_EXE_threadchat"), &all, env)
    }

    /// Starts `program` (the binary, or a shell that `exec`s it) with exactly `args`
    /// and `env` (plus `RUST_LOG=info` unless `env` sets it); together they must
    /// make it listen on 127.0.0.1, on ports of their choosing or the kernel's.
    pub fn start_program(program: &str, args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut command = Command::new(program);
        command
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("THREADCHAT_TEST_RUST_LOG").unwrap_or("info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start the threadchat binary");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("THREADCHAT_TEST_LOG").is_some() {
                    eprintln!("server: {line}");
                }
                sink.0.lock().unwrap().push(line);
                sink.1.notify_all();
            }
        });
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut process = Process {
            child,
            log,
            http: unbound,
            ws: unbound,
        };
        let deadline = Instant::now() + PATIENCE;
        let still_starting = |process: &mut Process, waiting_for: &str| {
            if let Some(status) = process.child.try_wait().unwrap() {
                panic!("the server exited ({status}):\n{}", process.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "{waiting_for} within {PATIENCE:?}:\n{}",
                process.log_text()
            );
        };
        // The server logs where it listens once both ports are bound.
        let listens_at = |process: &Process, what: &str| {
            let line = process.try_wait_for_log(what, Duration::from_millis(50))?;
            Some(address_in(&line, what))
        };
        let (http, ws) = loop {
            if let (Some(http), Some(ws)) = (
                listens_at(&process, "listening: page "),
                listens_at(&process, "listening: chat "),
            ) {
                break (http, ws);
            }
            still_starting(&mut process, "no `listening:` log lines");
        };
        (process.http, process.ws) = (http, ws);
        let pid = process.pid();
        // Over TLS the plain probe cannot answer; the ports queue connections until
        // the acceptors take them, so listening is enough.
        let tls = args.contains(&"--tls-cert");
        let ready = |process: &Process| {
            listening(pid, http.port())
                && listening(pid, ws.port())
                && (tls
                    || try_http_get(process.http, "/healthz", PATIENCE)
                        .is_ok_and(|r| r.status == 200))
        };
        while !ready(&process) {
            still_starting(&mut process, "not listening");
            // Polling a table the kernel keeps: there is no event to wait for.
            thread::sleep(Duration::from_millis(5));
        }
        process
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_for_log(&self, needle: &str) -> String {
        self.try_wait_for_log(needle, PATIENCE).unwrap_or_else(|| {
            panic!(
                "no log line with {needle:?} within {PATIENCE:?}:\n{}",
                self.log_text()
            )
        })
    }

    pub fn try_wait_for_log(&self, needle: &str, patience: Duration) -> Option<String> {
        let deadline = Instant::now() + patience;
        let (lines, changed) = &*self.log;
        let mut lines = lines.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().find(|l| l.contains(needle)) {
                return Some(line.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            lines = changed.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Waits until the log has more than `lines` lines; returns how many it has.
    pub fn wait_for_lines_beyond(&self, lines: usize) -> usize {
        let deadline = Instant::now() + PATIENCE;
        let (log, changed) = &*self.log;
        let mut log = log.lock().unwrap();
        while log.len() <= lines {
            let left = deadline
                .checked_duration_since(Instant::now())
                .expect("a new log line within the deadline");
            log = changed.wait_timeout(log, left).unwrap().0;
        }
        log.len()
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.0.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.log.0.lock().unwrap().join("\n")
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid =
            rustix::process::Pid::from_raw(self.child.id() as i32).expect("a live child has a pid");
        rustix::process::kill_process(pid, signal).expect("signal the server");
    }

    /// Waits for the process to exit, up to `patience`.
    pub fn wait_exit(&mut self, patience: Duration) -> Option<ExitStatus> {
        wait_for_exit(&mut self.child, patience)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Number of threads of the server process now.
    pub fn threads(&self) -> usize {
        self.footprint().threads
    }

    pub fn footprint(&self) -> Footprint {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap()
        };
        Footprint {
            rss_kib: field("VmRSS:"),
            threads: field("Threads:") as usize,
            fds: std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
                .unwrap()
                .count(),
        }
    }
}

impl Running for Process {
    fn http_addr(&self) -> SocketAddr {
        self.http
    }
    fn ws_addr(&self) -> SocketAddr {
        self.ws
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in a `listening:` log line after `what`, as in
/// `listening: page http://127.0.0.1:41234/` (plain or JSON logs alike).
fn address_in(line: &str, what: &str) -> SocketAddr {
    let after = &line[line.find(what).unwrap() + what.len()..];
    let authority = after
        .split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    authority
        .parse()
        .unwrap_or_else(|e| panic!("{authority:?} in {line:?}: {e}"))
}

/// Whether process `pid` listens on 127.0.0.1:`port`: a LISTEN socket in the
/// kernel's table whose inode is one of the process's descriptors (a port chosen
/// by a test may have been taken by another process meanwhile).
fn listening(pid: u32, port: u16) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let sockets: Vec<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 9
            && fields[1] == local
            && fields[3] == "0A"
            && sockets.contains(&fields[9].to_string())
    })
}

/// Waits for a child process to exit, up to `patience`.
pub fn wait_for_exit(child: &mut Child, patience: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // Polling the exit status of a child process: std offers no wait with a
        // timeout. This checks a condition; it does not stand in for one.
        thread::sleep(Duration::from_millis(10));
    }
}

/// Flags that turn each address's budgets off, for tests about something else
/// that send more than a person would.
pub const NO_BUDGETS: &[&str] = &[
    "--host-frames",
    "0",
    "--host-bytes-in",
    "0",
    "--host-bytes-out",
    "0",
];

/// Flags that take each connection's rate out of the way; with [`NO_BUDGETS`],
/// all of flood control ([`unthrottled`]).
const NO_RATE_LIMIT: &[&str] = &["--rate", "100000", "--burst", "100000"];

/// `args`, then flags that take flood control out of the way (each connection's
/// rate and each address's budgets), for tests of order and throughput that send
/// faster than any person.
pub fn unthrottled<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [args, NO_RATE_LIMIT, NO_BUDGETS].concat()
}

/// Polls `condition` until it holds or `PATIENCE` passes.
pub fn eventually(what: &str, condition: impl FnMut() -> bool) {
    eventually_within(PATIENCE, what, condition)
}

/// Polls `condition` until it holds or `patience` passes.
pub fn eventually_within(patience: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A client's connection: plain TCP, or TLS over it (wss, https).
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }

    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_mut(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A certificate for `localhost` and 127.0.0.1 made for one test, its files in a
/// folder of the test's own, and a client configuration that trusts it (and only
/// it): the clients check the server's certificate as a browser would.
pub struct TestCert {
    pub dir: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub client: Arc<rustls::ClientConfig>,
}

impl TestCert {
    pub fn new(label: &str) -> TestCert {
        let made = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .expect("a test certificate");
        let dir =
            std::env::temp_dir().join(format!("threadchat-tls-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(made.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TestCert {
            dir,
            cert,
            key,
            client: Arc::new(client),
        }
    }

    /// The server flags that serve with it.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }

    /// TLS to `addr` over `tcp`, the handshake done, checking the certificate for
    /// `name`.
    pub fn wrap(&self, tcp: TcpStream, name: &str) -> Stream {
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let conn = rustls::ClientConnection::new(Arc::clone(&self.client), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .unwrap_or_else(|e| panic!("TLS handshake failed: {e}"));
        }
        Stream::Tls(Box::new(tls))
    }

    /// A wss client, its handshake done (`url` is `wss://localhost:<port>/...`).
    pub fn connect(&self, url: &str) -> Result<Client, Refused> {
        self.connect_with(url, &[])
    }

    pub fn connect_with(
        &self,
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Client, Refused> {
        let request = url.into_client_request().unwrap();
        let host = request.uri().host().unwrap().to_string();
        let port = request.uri().port_u16().unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        Client::handshake_over(self.wrap(tcp, &host), url, headers)
    }

    /// A wss chat client that has read its welcome and its own join notification.
    pub fn join(&self, server: &impl Running) -> Client {
        let url = format!("wss://localhost:{}/", server.ws_addr().port());
        let mut client = self.connect(&url).expect("handshake");
        let welcome = client.recv_json();
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client.id = welcome["id"].as_u64();
        client.recv_type("notification");
        client
    }

    /// `GET path` over https with `Connection: close`.
    pub fn get(&self, addr: SocketAddr, path: &str) -> HttpResponse {
        let tcp = TcpStream::connect(addr).expect("connect");
        let mut stream = self.wrap(tcp, "localhost");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
            addr.port()
        );
        stream.write_all(request.as_bytes()).expect("write");
        let mut raw = Vec::new();
        match stream.read_to_end(&mut raw) {
            Ok(_) => {}
            // A server that closes without close_notify: the answer is still whole.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => panic!("https read: {e}"),
        }
        parse_response(&raw).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `/stats` over https.
    pub fn stats(&self, server: &impl Running) -> Value {
        let response = self.get(server.http_addr(), "/stats");
        assert_eq!(response.status, 200);
        serde_json::from_slice(&response.body).expect("/stats is JSON")
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A WebSocket client on a blocking socket with a short read timeout, so every
/// receive can be bounded by a deadline.
pub struct Client {
    pub ws: WebSocket<Stream>,
    /// The subprotocol the server selected, if any.
    pub protocol: Option<String>,
    /// This client's id from its welcome frame, once read by [`Client::join`].
    pub id: Option<u64>,
}

/// How a handshake went when it was refused.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

impl Client {
    /// Connects and completes the handshake, or panics.
    pub fn connect(url: &str) -> Client {
        Client::connect_with(url, &[]).unwrap_or_else(|r| panic!("handshake refused: {r:?}"))
    }

    /// Connects with extra request headers; `Err` carries a refusal's status.
    pub fn connect_with(url: &str, headers: &[(&'static str, &str)]) -> Result<Client, Refused> {
        let request = url.into_client_request().unwrap();
        let addr = request.uri().authority().unwrap().as_str().to_string();
        let stream = TcpStream::connect(addr).expect("connect");
        Client::handshake(stream, url, headers)
    }

    /// Handshake over an already connected stream.
    pub fn handshake(
        stream: TcpStream,
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Client, Refused> {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Client::handshake_over(Stream::Plain(stream), url, headers)
    }

    /// Handshake over a plain or TLS stream.
    pub fn handshake_over(
        stream: Stream,
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Client, Refused> {
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            // Insert, not append: a test's Host replaces the one from the URL.
            request
                .headers_mut()
                .insert(*name, HeaderValue::from_str(value).unwrap());
        }
        match tungstenite::client(request, stream) {
            Ok((ws, response)) => {
                ws.get_ref()
                    .tcp()
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                let protocol = response
                    .headers()
                    .get("sec-websocket-protocol")
                    .map(|v| v.to_str().unwrap().to_string());
                Ok(Client {
                    ws,
                    protocol,
                    id: None,
                })
            }
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                Err(Refused {
                    status: response.status().as_u16(),
                    body: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                        .into(),
                })
            }
            Err(e) => panic!("handshake failed: {e}"),
        }
    }

    /// A chat client that has read its welcome and its own join notification.
    pub fn join(server: &impl Running) -> Client {
        Client::join_over(
            server,
            TcpStream::connect(server.ws_addr()).expect("connect"),
        )
    }

    /// [`Client::join`] over a given stream.
    pub fn join_over(server: &impl Running, stream: TcpStream) -> Client {
        let mut client = Client::handshake(stream, &server.ws_url("/"), &[]).expect("handshake");
        let welcome = client.recv_json();
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client.id = welcome["id"].as_u64();
        client.recv_type("notification");
        client
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    pub fn send_chat(&mut self, name: &str, msg: &str) {
        self.send_text(&serde_json::json!({ "name": name, "msg": msg }).to_string());
    }

    /// The next data or close message, within `PATIENCE`. Pings are answered by
    /// tungstenite on the way.
    pub fn recv(&mut self) -> Message {
        self.try_recv(PATIENCE)
            .expect("a message within the deadline")
    }

    /// The next data or close message, or `None` if `patience` passes first.
    pub fn try_recv(&mut self, patience: Duration) -> Option<Message> {
        let deadline = Instant::now() + patience;
        loop {
            match self.ws.read() {
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(message) => return Some(message),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
                Err(e) => panic!("connection failed while waiting for a message: {e}"),
            }
        }
    }

    /// The next text message, as JSON.
    pub fn recv_json(&mut self) -> Value {
        match self.recv() {
            Message::Text(text) => serde_json::from_str(&text).expect("the server sends JSON"),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Skips messages until one of type `kind` arrives.
    pub fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let value = self.recv_json();
            if value["type"] == kind {
                return value;
            }
        }
    }

    /// Reads until the server's Close frame; returns its code (1005 if none).
    pub fn recv_close(&mut self) -> u16 {
        loop {
            match self.recv() {
                Message::Close(frame) => {
                    return frame.map_or(1005, |f: CloseFrame| u16::from(f.code));
                }
                _ => continue,
            }
        }
    }

    /// Whether the server has closed the TCP connection (EOF or reset), waiting up
    /// to `PATIENCE`. Reads raw bytes, so use it on a client that stopped reading
    /// WebSocket frames.
    pub fn wait_for_socket_closed(&mut self) -> bool {
        socket_closed_within(self.ws.get_mut().tcp_mut(), PATIENCE)
    }
}

/// Reads and discards until the peer closes `stream`; false if `patience` passes.
pub fn socket_closed_within(stream: &mut TcpStream, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if Instant::now() >= deadline {
                    return false;
                }
            }
            Err(_) => return true, // reset
        }
    }
}

/// A raw HTTP exchange: sends `request` as written and reads the whole response
/// (the request should say `Connection: close`).
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

pub fn http_raw(addr: SocketAddr, request: &str) -> HttpResponse {
    try_http_raw(addr, request, PATIENCE).unwrap_or_else(|e| panic!("HTTP exchange failed: {e}"))
}

/// [`http_raw`], with failures as values (for a server that may be refusing) and a
/// read timeout of its own.
pub fn try_http_raw(
    addr: SocketAddr,
    request: &str,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    parse_response(&raw)
}

/// A whole HTTP response, head and body.
fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no header end in {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status code")?;
    Ok(HttpResponse {
        status,
        head,
        body: raw[split + 4..].to_vec(),
    })
}

/// `GET path` with `Connection: close`.
pub fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    http_raw(addr, &get_request(addr, path))
}

/// [`http_get`], with failures as values and a read timeout of its own.
pub fn try_http_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    try_http_raw(addr, &get_request(addr, path), timeout)
}

/// `GET path` with extra header lines (`"If-None-Match: ..."`).
pub fn http_get_with(addr: SocketAddr, path: &str, headers: &[&str]) -> HttpResponse {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    http_raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"),
    )
}

/// Runs the binary to completion (`--check-config`, `--help`) with `args` and `env`,
/// and without any `THREADCHAT_*` variable of the caller's.
pub fn run_binary(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_threadchat"));
    for (name, _) in std::env::vars() {
        if name.starts_with("THREADCHAT_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run the threadchat binary")
}

/// The `www/` folder of this checkout.
pub const WWW: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/www");

fn get_request(addr: SocketAddr, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
}

/// Sends a WebSocket upgrade request by hand and returns the response's status and
/// head; for checking what tungstenite's client would refuse to look at.
pub fn raw_handshake(addr: SocketAddr, path: &str, extra_headers: &[&str]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for header in extra_headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let head = read_head(&mut stream);
    (status_in(&head).unwrap_or(0), head)
}

/// Reads an HTTP response head byte by byte (so nothing after it is consumed),
/// up to its blank line or until the server closes; empty if it sent nothing.
pub fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// The status code in a response head.
pub fn status_in(head: &str) -> Option<u16> {
    head.split(' ').nth(1).and_then(|s| s.parse().ok())
}

/// A TCP connection whose receive buffer is set to `bytes` before connecting (set
/// afterwards, the window already advertised would not shrink).
pub fn connect_with_receive_buffer(addr: SocketAddr, bytes: usize) -> TcpStream {
    use rustix::net::{connect, sockopt};
    let fd = test_socket();
    sockopt::set_socket_recv_buffer_size(&fd, bytes).expect("SO_RCVBUF");
    connect(&fd, &addr).expect("connect");
    TcpStream::from(fd)
}

/// A TCP connection to `addr` from the loopback address `source` (all of 127/8
/// answers on Linux): how a test plays several hosts, an attacker on `127.0.0.2`
/// beside an honest user on `127.0.0.1`.
pub fn connect_from(source: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    use rustix::net::{bind, connect};
    let fd = test_socket();
    bind(&fd, &SocketAddr::new(source, 0)).expect("bind the source address");
    connect(&fd, &addr).expect("connect");
    TcpStream::from(fd)
}

/// The loopback address of the `n`th device of a LAN (127.0.1.1, 127.0.1.2, …).
pub fn lan_host(n: usize) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(
        127,
        0,
        1 + (n / 250) as u8,
        1 + (n % 250) as u8,
    ))
}

/// What the server process holds now, from `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub rss_kib: u64,
    pub threads: usize,
    pub fds: usize,
}

/// [`connect_with_receive_buffer`] from the loopback address `source`.
pub fn connect_with_receive_buffer_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
    bytes: usize,
) -> TcpStream {
    use rustix::net::{bind, connect, sockopt};
    let fd = test_socket();
    sockopt::set_socket_recv_buffer_size(&fd, bytes).expect("SO_RCVBUF");
    bind(&fd, &SocketAddr::new(source, 0)).expect("bind the source address");
    connect(&fd, &addr).expect("connect");
    TcpStream::from(fd)
}

/// A TCP socket that a server this test starts does not inherit: without
/// close-on-exec, every socket open in any test thread would land in the child
/// process and count against its open-files limit.
fn test_socket() -> rustix::fd::OwnedFd {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socket_with};
    socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socket")
}
