//! Test support: the server in this process ([`Server`]) or the real binary
//! ([`Process`]) on loopback ports, real WebSocket clients, raw HTTP, and waiting
//! for events with a deadline.
#![allow(dead_code)] // each test file uses a different part of this module

mod client;
mod http;

pub use client::*;
pub use http::*;

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
