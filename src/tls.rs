//! https and wss: one rustls configuration for both ports, and how a TLS connection
//! is shared by a client's reader thread and whoever writes its socket.
//!
//! With `--tls-cert` and `--tls-key` the page is https on the page port and the
//! chat is wss on the chat port; without them nothing here runs.
//!
//! # The problem
//!
//! A plain client's socket is two independent directions: its reader blocks in
//! `read` while the hub (or the client's writer thread) writes, each on its own
//! handle to the same socket (see [`crate::outbox`]). A TLS connection is not: one
//! state machine holds the keys and the record sequence numbers of both
//! directions, and reading can oblige it to write (a key update, an alert, the
//! answer to a close).
//!
//! # The designs that do not work
//!
//! * *A mutex around a TLS stream (`StreamOwned`).* The reader holds it while
//!   blocked in `read`, so a broadcast waits until that client next sends
//!   something: the mutex-around-the-`WebSocket` failure again.
//! * *Two TLS streams on two handles of the socket.* There is one key schedule and
//!   one sequence per direction; two state machines cannot share them.
//! * *The reader writes what reading produces.* Then the socket has two writers,
//!   and a key update or an alert can land in the middle of a record the hub is
//!   writing.
//! * *Non-blocking sockets and a poll loop.* Works, and is the other way to write
//!   a server; this one teaches blocking threads.
//!
//! # The design we use
//!
//! rustls' [`ServerConnection`] does no I/O of its own: bytes go in with
//! `read_tls`, records come out with `write_tls`. So the connection can live in
//! the client's [`crate::outbox::Outbox`], under the same mutex as the backlog,
//! and each thread does its blocking I/O with no lock held:
//!
//! * **Reading** (the reader thread): a blocking `read` of the socket into a
//!   buffer of its own, no lock held; then the lock, briefly, to feed those bytes
//!   in ([`Session::open`]) and take plaintext out.
//! * **Writing**: records are made by whoever writes the socket, at the moment it
//!   writes, under the lock ([`Session::seal`]). That is the hub on the fast path
//!   (the kernel takes the batch at once), and the client's writer thread when it
//!   is behind; a backlog therefore holds plaintext, shared between clients like
//!   a plain backlog, and record order is write order.
//! * **Records that reading causes** (alerts, key updates, close_notify) stay in
//!   the connection until the next write, which sends them first; when no writer
//!   is running the reader hands them to the outbox like any other bytes, so the
//!   socket still has exactly one writer.
//!
//! ## Hub or writer thread?
//!
//! Encryption is per client: the hub encodes a broadcast once, but seals it once
//! per TLS client, on the one thread everybody waits for. The other place to do it
//! is always on the client's own writer thread, kept alive and woken for every
//! batch. Both were built and measured, alternating, three rounds each
//! (`loadgen --scenarios saturate,fanout --tls-scenarios saturate,fanout`, 2-core
//! VM): wss saturate was 0.87–0.94 of plain ws with the hub sealing and 0.77–0.83
//! with the writers sealing, and wss fanout's p99 was 52–74 ms against 128–207 ms.
//! A wake-up and two context switches per client per batch cost more than the
//! sealing itself (0.12 µs of server CPU per 160-byte delivery, measured), so the
//! hub seals: a writer thread still seals whatever it writes, and only while its
//! client is behind.
//!
//! # Before the split
//!
//! The TLS handshake, the WebSocket handshake and every page connection have one
//! thread and nothing shared, so they use the connection directly ([`read`],
//! [`write_all`]) on a socket with one deadline for the whole exchange
//! ([`Deadline`]): a client that opens TCP and never sends a ClientHello, or
//! trickles its handshake a byte at a time, is closed at `--handshake-timeout`
//! (chat) or `--http-timeout` (page), and holds its place and per-host share until
//! then, like any other handshake.

use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

/// Loads the certificate chain and its key (PEM) into the configuration both ports
/// use. Every way these files can be wrong is an error here, at start.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let read = |flag: &str, path: &Path| {
        fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
    };
    let cert_pem = read("--tls-cert", cert)?;
    let key_pem = read("--tls-key", key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)",
            cert.display()
        ));
    }
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "--tls-key {}: no private key in it ({e}; expected PEM: -----BEGIN PRIVATE KEY-----)",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "--tls-key {} is not the key of the certificate in --tls-cert {}",
                key.display(),
                cert.display()
            ),
            other => format!("--tls-cert/--tls-key: {other}"),
        })?;
    // Both ports speak HTTP/1.1 (a WebSocket handshake is an HTTP/1.1 request).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A new server side of a TLS connection.
pub fn accept(config: &Arc<ServerConfig>) -> io::Result<Box<ServerConnection>> {
    let mut conn = ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
    // What waits to be written is bounded by the outbox (chat) or is one answer
    // (page), and is always taken out at once: rustls' own bound would only make a
    // write stop half way.
    conn.set_buffer_limit(None);
    Ok(Box::new(conn))
}

/// A socket with one deadline for a whole exchange: every read and write is given
/// only what is left of it, and fails with `TimedOut` once it has passed.
pub struct Deadline<'a> {
    socket: &'a TcpStream,
    at: Instant,
}

impl<'a> Deadline<'a> {
    /// `socket`, until `at`.
    pub fn new(socket: &'a TcpStream, at: Instant) -> Deadline<'a> {
        Deadline { socket, at }
    }

    fn left(&self) -> io::Result<std::time::Duration> {
        let left = self.at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        Ok(left)
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.set_read_timeout(Some(self.left()?))?;
        (&*self.socket).read(buf)
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.set_write_timeout(Some(self.left()?))?;
        (&*self.socket).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs the TLS handshake to its end on `io`.
pub fn handshake(conn: &mut ServerConnection, io: &mut Deadline<'_>) -> io::Result<()> {
    while conn.is_handshaking() {
        conn.complete_io(io)?;
    }
    // What the handshake's end queued (session tickets) goes out now.
    flush(conn, io)
}

/// Reads plaintext, reading and writing `io` as the connection needs: for a thread
/// that has the connection to itself. `Ok(0)` is the end (close_notify or EOF).
pub fn read(
    conn: &mut ServerConnection,
    io: &mut Deadline<'_>,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match conn.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // EOF without close_notify: for HTTP and WebSocket, which frame their own
            // messages, an end like any other.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        if conn.read_tls(io)? == 0 {
            return Ok(0);
        }
        let processed = conn.process_new_packets();
        // Whatever it produced (handshake messages, an alert) goes out first.
        flush(conn, io)?;
        processed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
}

/// Writes all of `buf` as records on `io`: for a thread that has the connection to
/// itself.
pub fn write_all(conn: &mut ServerConnection, io: &mut Deadline<'_>, buf: &[u8]) -> io::Result<()> {
    conn.writer().write_all(buf)?;
    flush(conn, io)
}

/// Sends close_notify, best effort: the peer learns the end was meant.
pub fn close(conn: &mut ServerConnection, io: &mut Deadline<'_>) {
    conn.send_close_notify();
    let _ = flush(conn, io);
}

fn flush(conn: &mut ServerConnection, io: &mut Deadline<'_>) -> io::Result<()> {
    while conn.wants_write() {
        conn.write_tls(io)?;
    }
    Ok(())
}

/// A client's TLS connection once its reader and writers share it: kept in the
/// outbox's state, used only under the outbox's lock, never with a blocking call.
pub struct Session {
    conn: Box<ServerConnection>,
}

impl Session {
    /// Shares `conn`, after both handshakes.
    pub fn new(conn: Box<ServerConnection>) -> Session {
        Session { conn }
    }

    /// Encrypts `plaintext`; returns it as records, behind any records the
    /// connection already had waiting (which must reach the wire first).
    pub fn seal(&mut self, plaintext: &[u8]) -> Vec<u8> {
        // Cannot fail: the buffer has no limit. After a fatal alert rustls drops the
        // plaintext and only the alert comes back; and nothing is sealed after
        // close_notify, which is sent once the outbox's phase is `Closed`.
        let _ = self.conn.writer().write_all(plaintext);
        self.take_records().unwrap_or_default()
    }

    /// Records the connection made on its own (an alert, a key update,
    /// close_notify), if any wait.
    pub fn take_records(&mut self) -> Option<Vec<u8>> {
        if !self.conn.wants_write() {
            return None;
        }
        let mut records = Vec::new();
        while self.conn.wants_write() {
            // Writing into a `Vec` cannot fail.
            if self.conn.write_tls(&mut records).is_err() {
                break;
            }
        }
        Some(records)
    }

    /// Queues close_notify; it goes out with the next [`Session::take_records`].
    pub fn close_notify(&mut self) {
        self.conn.send_close_notify();
    }

    /// Reads plaintext into `buf`, feeding in what the socket gave (`input`,
    /// advanced past what was taken) only while there is none: `Some(n)` bytes (0
    /// is close_notify), or `None` when all of `input` is in and more is needed. A
    /// record that fails to decrypt is an `InvalidData` error, and the alert saying
    /// so waits in [`Session::take_records`].
    ///
    /// rustls refuses input while it holds 16 KiB of plaintext, so plaintext is
    /// always read out first, and what is left of `input` is the caller's to keep
    /// for the next call.
    pub fn open(&mut self, input: &mut &[u8], buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if input.is_empty() {
                return Ok(None);
            }
            if self.conn.read_tls(input)? == 0 {
                return Err(io::Error::other("TLS input not taken"));
            }
            self.conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }
}
