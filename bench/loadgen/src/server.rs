//! The servers a run starts: threadchat (or the naive one), a redis-server for the
//! cluster rows, and a certificate for the wss rows; and a client's wire, plain or
//! TLS.

use super::*;

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) ws: SocketAddr,
}

/// The cluster rows' redis-server: a free port, no persistence, killed at the end.
pub(crate) struct Redis {
    pub(crate) child: Child,
    pub(crate) port: u16,
}

impl Redis {
    pub(crate) fn start() -> Redis {
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

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub(crate) fn cpu(&self) -> Duration {
        cpu_of(self.child.id())
    }

    /// How many times each command has been called so far (`INFO commandstats`),
    /// sorted by name; empty when Redis does not answer.
    pub(crate) fn calls(&self) -> Vec<(String, u64)> {
        use std::io::{BufRead, BufReader, Write};
        let Ok(mut con) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return Vec::new();
        };
        let _ = con.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = con.write_all(b"INFO commandstats\r\nQUIT\r\n");
        // `$<length>`, then `cmdstat_<name>:calls=<n>,usec=...` lines, then `+OK`.
        let mut calls: Vec<(String, u64)> = BufReader::new(con)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| l != "+OK")
            .filter_map(|l| {
                let (name, stats) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let n = stats
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                Some((name.to_string(), n))
            })
            .collect();
        calls.sort();
        calls
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process's CPU time so far (user and system, all threads).
pub(crate) fn cpu_of(pid: u32) -> Duration {
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
pub(crate) struct Tls {
    pub(crate) dir: std::path::PathBuf,
    pub(crate) client: Arc<rustls::ClientConfig>,
}

impl Tls {
    pub(crate) fn new() -> Tls {
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

    pub(crate) fn server_args(&self) -> [String; 4] {
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
pub(crate) enum Wire {
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
    pub(crate) fn connect(server: SocketAddr, tls: Option<&Tls>) -> std::io::Result<Wire> {
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

    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Wire::Plain(socket) | Wire::Tls { socket, .. } => socket,
        }
    }

    pub(crate) fn try_clone(&self) -> std::io::Result<Wire> {
        Ok(match self {
            Wire::Plain(socket) => Wire::Plain(socket.try_clone()?),
            Wire::Tls { socket, conn, .. } => Wire::Tls {
                socket: socket.try_clone()?,
                conn: Arc::clone(conn),
                unread: Vec::new(),
            },
        })
    }

    pub(crate) fn scheme(&self) -> &'static str {
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
pub(crate) const START_PATIENCE: Duration = Duration::from_secs(10);

/// The first bytes of a server's stderr that are kept: enough for why it did not
/// start. The rest is read and dropped, so the pipe never fills up.
pub(crate) const STDERR_KEPT: usize = 64 * 1024;

impl Server {
    /// Starts `binary` on two free ports and waits until it listens on them (the
    /// WebSocket port only, if `http` is false), as `/proc` shows them: the log is
    /// not read for it. Panics, with the server's stderr, if it exits first or is
    /// not listening within [`START_PATIENCE`].
    pub(crate) fn start(
        binary: &str,
        http: bool,
        tls: Option<&Tls>,
        redis: Option<&Redis>,
    ) -> Server {
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
            // caps are off for the bench.
            .envs(UNLIMITED.iter().copied())
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

    pub(crate) fn status(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        footprint::field_of(&text, field)
    }

    /// CPU time the server has used so far (user and system, all threads).
    pub(crate) fn cpu(&self) -> Duration {
        cpu_of(self.child.id())
    }

    pub(crate) fn fds(&self) -> usize {
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
pub(crate) fn drain(
    mut stderr: std::process::ChildStderr,
) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
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

/// What a bench server is started with: every client comes from one address, so
/// threadchat's per-address caps are off; senders go as fast as the server
/// answers, so flood control is off too (each connection's rate, each address's
/// budgets and rooms). Set through the environment, so that a server from before
/// these flags (compared side by side), or another server, ignores them.
pub(crate) const UNLIMITED: &[(&str, &str)] = &[
    ("THREADCHAT_MAX_PER_HOST", "0"),
    ("THREADCHAT_MAX_HANDSHAKES_PER_HOST", "0"),
    ("THREADCHAT_MAX_HTTP_PER_HOST", "0"),
    ("THREADCHAT_RATE", "100000"),
    ("THREADCHAT_BURST", "100000"),
    ("THREADCHAT_HOST_FRAMES", "0"),
    ("THREADCHAT_HOST_BYTES_IN", "0"),
    ("THREADCHAT_HOST_BYTES_OUT", "0"),
    ("THREADCHAT_MAX_ROOMS_PER_HOST", "0"),
];
