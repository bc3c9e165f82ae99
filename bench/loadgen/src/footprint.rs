//! The `footprint` scenario: what a server costs a small host when little happens.
//!
//! * **binary**: the size of the server's file.
//! * **start**: from `spawn` until every port is in LISTEN state, the median of
//!   [`START_RUNS`] launches. Read from `/proc/net/tcp*` rather than by
//!   connecting: a probe connection is a visitor and would wake the server.
//!   Reading those tables slows down when they hold thousands of TIME_WAIT
//!   sockets, so the scenario runs first.
//! * **RSS at start**: `VmRSS` once the thread count has been stable for 300 ms.
//! * **idle**: over a window with nobody connected, the server's wake-ups (the sum
//!   of every thread's voluntary and involuntary context switches: each is one
//!   time a thread ran) and its CPU time (`utime + stime`).
//! * **RSS with 100 idle clients**: 100 WebSocket clients connected and reading,
//!   once the frames they receive (join notifications) have stopped for 300 ms.
//!
//! The server is any command: threadchat by default, or `--server-cmd` (run by
//! `bash -c` with `WS_PORT` and `HTTP_PORT` set) to measure another server the
//! same way.
//!
//! The helpers at the end (free ports, LISTEN sockets read from `/proc`, reading
//! `/proc/<pid>/status`, polling) are also how `main.rs` starts its servers.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How to start the server under test.
pub struct Target {
    /// A shell command with `$WS_PORT` / `$HTTP_PORT`; it should `exec` the server
    /// so that the process measured is the server.
    pub command: String,
    /// The file whose size is reported.
    pub binary: Option<String>,
    /// Whether the server opens an HTTP port too (start = both listening).
    pub http: bool,
}

/// What was measured.
pub struct Footprint {
    pub binary_bytes: Option<u64>,
    pub start_ms: f64,
    pub rss_start_kib: u64,
    pub idle_seconds: u64,
    pub wakeups: u64,
    pub cpu_ms: u64,
    pub rss_100_kib: u64,
    pub clients_connected: usize,
}

/// Launches timed for the start-up figure; the median is reported.
pub const START_RUNS: usize = 5;

pub fn measure(target: &Target, idle: Duration) -> Footprint {
    let mut starts: Vec<f64> = (0..START_RUNS).map(|_| time_start(target)).collect();
    starts.sort_by(f64::total_cmp);
    let start_ms = starts[START_RUNS / 2];

    // One more launch: the one whose memory and idle wake-ups are measured.
    let (mut child, ports) = launch(target);
    let listening = poll_until(Duration::from_secs(10), Duration::from_millis(1), || {
        listening(&ports, None)
    });
    let server = Measured { child: &mut child };
    assert!(
        listening,
        "`{}` did not listen on {ports:?}",
        target.command
    );

    let mut last = 0;
    let mut stable_since = Instant::now();
    poll_until(Duration::from_secs(5), Duration::from_millis(20), || {
        let now = server.threads();
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
        stable_since.elapsed() > Duration::from_millis(300)
    });
    let rss_start_kib = server.status("VmRSS");

    let (switches0, cpu0) = (server.context_switches(), server.cpu_ticks());
    thread::sleep(idle); // the measurement window itself
    let (switches1, cpu1) = (server.context_switches(), server.cpu_ticks());
    let ticks_per_s = 100; // USER_HZ on Linux

    let received = Arc::new(AtomicU64::new(0));
    let addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let clients: Vec<TcpStream> = (0..100)
        .filter_map(|_| idle_client(addr, &received))
        .collect();
    let mut last = u64::MAX;
    let mut quiet_since = Instant::now();
    poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let now = received.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
        quiet_since.elapsed() > Duration::from_millis(300)
    });
    let rss_100_kib = server.status("VmRSS");
    for c in &clients {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    drop(server);

    Footprint {
        binary_bytes: target
            .binary
            .as_ref()
            .and_then(|b| std::fs::metadata(b).ok())
            .map(|m| m.len()),
        start_ms,
        rss_start_kib,
        idle_seconds: idle.as_secs(),
        wakeups: switches1.saturating_sub(switches0),
        cpu_ms: cpu1.saturating_sub(cpu0) * 1000 / ticks_per_s,
        rss_100_kib,
        clients_connected: clients.len(),
    }
}

/// Starts the server on free ports; returns it and the ports it should open.
fn launch(target: &Target) -> (Child, Vec<u16>) {
    let [ws_port, http_port] = free_ports();
    let child = Command::new("bash")
        .args(["-c", &target.command])
        .env("WS_PORT", ws_port.to_string())
        .env("HTTP_PORT", http_port.to_string())
        // 100 clients from one address: threadchat's per-address caps off (other
        // servers ignore these).
        .envs(crate::server::UNLIMITED.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", target.command));
    let ports = if target.http {
        vec![ws_port, http_port]
    } else {
        vec![ws_port]
    };
    (child, ports)
}

/// Milliseconds from `spawn` until every port is in LISTEN state.
fn time_start(target: &Target) -> f64 {
    let started = Instant::now();
    let (mut child, ports) = launch(target);
    let server = Measured { child: &mut child };
    let up = poll_until(Duration::from_secs(10), Duration::from_micros(500), || {
        listening(&ports, None)
    });
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    drop(server);
    assert!(up, "`{}` did not listen on {ports:?}", target.command);
    ms
}

/// The server process, killed (with its process) when dropped.
struct Measured<'a> {
    child: &'a mut Child,
}

impl Measured<'_> {
    fn proc(&self, file: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id())).unwrap_or_default()
    }

    fn status(&self, field: &str) -> u64 {
        field_of(&self.proc("status"), field)
    }

    fn threads(&self) -> u64 {
        self.status("Threads")
    }

    /// Every thread's context switches, summed: each is one time a thread ran.
    fn context_switches(&self) -> u64 {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) else {
            return 0;
        };
        tasks
            .flatten()
            .map(|task| {
                let status =
                    std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
                field_of(&status, "voluntary_ctxt_switches")
                    + field_of(&status, "nonvoluntary_ctxt_switches")
            })
            .sum()
    }

    /// `utime + stime` of the whole process, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = self.proc("stat");
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<u64> = after_name
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // Fields 14 and 15 of /proc/pid/stat; 0-based 11 and 12 after the name.
        fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)
    }
}

impl Drop for Measured<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebSocket client that connects and reads whatever comes, counting frames.
fn idle_client(addr: SocketAddr, received: &Arc<AtomicU64>) -> Option<TcpStream> {
    let stream = TcpStream::connect(addr).ok()?;
    let (mut ws, _) =
        tungstenite::client(format!("ws://{addr}/"), stream.try_clone().ok()?).ok()?;
    let received = Arc::clone(received);
    thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || {
            while ws.read().is_ok() {
                received.fetch_add(1, Ordering::Relaxed);
            }
        })
        .ok()?;
    Some(stream)
}

// --- shared with main.rs: ports, /proc, polling ---------------------------------------

/// A field of a `/proc/<pid>/status` text, such as `VmRSS` (in kB) or `Threads`;
/// 0 when absent.
pub fn field_of(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// `N` distinct ports nobody listens on right now: the kernel picks them, all
/// held at once (so no two are the same), then released for the server to take.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("a bound port").port())
}

/// Whether every port has a socket in LISTEN state: anyone's (`owner: None`), or
/// one of process `owner`'s own (its descriptors are matched to the sockets'
/// inodes, so another program that took the port does not count). Reads each
/// table once for all ports: the reads are most of the cost of a poll.
pub fn listening(ports: &[u16], owner: Option<u32>) -> bool {
    // (port, socket inode) of every listening TCP socket on this machine.
    let mut sockets: Vec<(u16, u64)> = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let mut fields = line.split_whitespace();
            let local = fields.nth(1).unwrap_or("");
            if fields.nth(1) != Some("0A") {
                continue;
            }
            let port = local.rsplit(':').next().unwrap_or("");
            let inode = fields.nth(5).unwrap_or("");
            if let (Ok(port), Ok(inode)) = (u16::from_str_radix(port, 16), inode.parse()) {
                sockets.push((port, inode));
            }
        }
    }
    if !ports.iter().all(|p| sockets.iter().any(|s| s.0 == *p)) {
        return false;
    }
    let Some(pid) = owner else {
        return true;
    };
    // Only once every port is up: the process's descriptors, as `socket:[inode]`.
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let owned: Vec<u64> = fds
        .flatten()
        .filter_map(|fd| {
            let link = std::fs::read_link(fd.path()).ok()?;
            let link = link.to_str()?;
            link.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    ports.iter().all(|p| {
        sockets
            .iter()
            .any(|(port, inode)| port == p && owned.contains(inode))
    })
}

/// Checks `done` every `every` until it holds or `patience` passes.
pub fn poll_until(patience: Duration, every: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(every);
    }
}
