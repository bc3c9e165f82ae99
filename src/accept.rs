//! The WebSocket side's front door: the acceptor thread, and the first half of each
//! client thread, the handshake.
//!
//! The acceptor blocks in `accept()` on port 8001 and gives every connection its
//! own named OS thread (`client-<id>`) with a small, explicit stack. That thread
//! performs the handshake here and then becomes the client's reader
//! ([`crate::reader`]). Blocking I/O makes each step of a connection a plain line
//! of code; the price is a thread per client, so this module is also where the
//! thread count is kept within what the machine can carry:
//!
//! * At most `max_clients + HANDSHAKE_SLOTS` connections own a thread at once. Past
//!   that the acceptor answers `503` itself, without a thread, and closes.
//! * A handshake must finish within `--handshake-timeout`, a deadline on the whole
//!   handshake, not on each read (a slowloris sending one byte every few seconds
//!   would otherwise hold its thread forever).
//! * At most `max_clients` handshakes succeed at once; the next one gets `503`.
//! * A failed thread spawn or an `accept` error sheds that one client. `EMFILE`
//!   and friends mean "full for now": the acceptor backs off and retries, as
//!   mini-redis does, instead of spinning or giving up.
//!
//! The handshake also checks `Origin` (a web page on another site must not be able
//! to open a socket to us with its visitor's browser) and selects the
//! `threadchat.v1` subprotocol when offered, and never one that was not.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use rustix::net::SendFlags;
use tungstenite::handshake::HandshakeError;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::{self, HeaderMap, StatusCode, header};
use tungstenite::protocol::WebSocketConfig;

use crate::hub::{Endpoint, Event};
use crate::protocol::SUBPROTOCOL;
use crate::reader::{self, ClientStream, ReaderSettings};

/// Stack of a client thread. Only the pages it touches count towards memory (about
/// 10 KiB for a parked reader), but the reservation is a hard limit: overflowing it
/// aborts the whole process. The test suite passes with 24 KiB in a release build
/// and 40 KiB in a debug build (which uses more stack per call); 64 KiB leaves room
/// for both, and thousands of clients still fit.
pub const CLIENT_STACK_SIZE: usize = 64 * 1024;

/// tungstenite's read buffer per client. Its default, 128 KiB, is allocated and
/// zero-filled per connection: 135 KiB of RSS per idle client. Chat messages are
/// small; 1 KiB keeps an idle client near 24 KiB in all.
const READ_BUFFER_SIZE: usize = 1024;

/// Shortest and longest pause after an `accept` error such as `EMFILE`.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// What every client thread needs to know, shared by all of them.
pub struct WsSettings {
    /// Most WebSocket clients at once (after capacity planning).
    pub max_clients: usize,
    /// Deadline for the whole handshake.
    pub handshake_timeout: Duration,
    /// Timeout of one blocked write.
    pub write_timeout: Duration,
    /// `--allow-origin` values (`*` = any).
    pub allowed_origins: Vec<String>,
    /// What the reader needs once the handshake is done.
    pub reader: ReaderSettings,
}

/// Counts connections that own a thread, so the acceptor can refuse past a limit
/// and shutdown can wait for every client thread to end.
pub struct Connections {
    open: Mutex<usize>,
    changed: Condvar,
    limit: usize,
}

/// One counted connection; dropping it (when its thread ends) frees the slot.
pub struct Slot {
    connections: Arc<Connections>,
}

impl Connections {
    /// A counter that admits at most `limit` connections.
    pub fn new(limit: usize) -> Arc<Connections> {
        Arc::new(Connections {
            open: Mutex::new(0),
            changed: Condvar::new(),
            limit,
        })
    }

    fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if *open >= self.limit {
            return None;
        }
        *open += 1;
        Some(Slot {
            connections: Arc::clone(self),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        *self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until every connection thread has ended, or `timeout` passes. Returns
    /// how many are still open.
    pub fn wait_until_empty(&self, timeout: Duration) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (open, _) = self
            .changed
            .wait_timeout_while(open, timeout, |open| *open > 0)
            .unwrap_or_else(|p| p.into_inner());
        *open
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .connections
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *open -= 1;
        self.connections.changed.notify_all();
    }
}

/// Everything the acceptor thread carries.
struct Acceptor {
    listener: TcpListener,
    settings: Arc<WsSettings>,
    hub: Sender<Event>,
    connections: Arc<Connections>,
    /// Counts WebSocket clients past their handshake (limit: `max_clients`).
    established: Arc<Connections>,
    next_id: AtomicU64,
}

/// Starts the acceptor thread on `listener`.
pub fn spawn(
    listener: TcpListener,
    settings: WsSettings,
    hub: Sender<Event>,
    connections: Arc<Connections>,
) -> io::Result<JoinHandle<()>> {
    let acceptor = Acceptor {
        listener,
        established: Connections::new(settings.max_clients),
        settings: Arc::new(settings),
        hub,
        connections,
        next_id: AtomicU64::new(1),
    };
    thread::Builder::new()
        .name("ws-accept".into())
        .spawn(move || acceptor.run())
}

impl Acceptor {
    fn run(self) {
        let mut backoff = ACCEPT_BACKOFF.0;
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF.0;
                    self.admit(stream, peer);
                }
                Err(e) if is_out_of_resources(&e) => {
                    // Full for now: every slot is taken. Retrying at once would spin;
                    // clients wait in the listen backlog meanwhile.
                    log::warn!("ws accept: {e}; retrying in {backoff:?}");
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                }
                Err(e) => log::debug!("ws accept: {e}"),
            }
        }
    }

    fn admit(&self, stream: TcpStream, peer: SocketAddr) {
        let Some(slot) = self.connections.try_acquire() else {
            log::warn!(
                "connection from {} refused: too many connections",
                peer.ip()
            );
            refuse_without_thread(&stream);
            return;
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let client = Client {
            id,
            peer: peer.ip(),
            settings: Arc::clone(&self.settings),
            hub: self.hub.clone(),
            established: Arc::clone(&self.established),
        };
        let spawned = thread::Builder::new()
            .name(format!("client-{id}"))
            .stack_size(CLIENT_STACK_SIZE)
            .spawn(move || {
                let _slot = slot;
                client.run(stream);
            });
        if let Err(e) = spawned {
            // The closure, with the socket and the slot, is dropped: the connection
            // closes and the slot is free again.
            log::error!(
                "client {id} from {}: cannot start a thread ({e}): refused",
                peer.ip()
            );
        }
    }
}

/// Errors after which `accept` will fail again at once unless something is freed.
fn is_out_of_resources(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let code = e.raw_os_error();
    [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
        .iter()
        .any(|errno| code == Some(errno.raw_os_error()))
}

/// Answers 503 without reading the request or starting a thread: one non-blocking
/// send, then the socket closes.
fn refuse_without_thread(stream: &TcpStream) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\
                          Retry-After: 5\r\nConnection: close\r\n\r\n";
    let _ = rustix::net::send(stream, BUSY, SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
}

/// A connection on its client thread, before and during its handshake.
struct Client {
    id: u64,
    peer: IpAddr,
    settings: Arc<WsSettings>,
    hub: Sender<Event>,
    established: Arc<Connections>,
}

/// What the handshake callback found out, for the reader.
struct Admission {
    endpoint: Endpoint,
    forwarded_for: Option<String>,
    /// Holds one of the `max_clients` places until the client thread ends.
    place: Slot,
}

impl Client {
    #[allow(clippy::result_large_err)] // the callback's error type is tungstenite's
    fn run(self, stream: TcpStream) {
        // Batches are already coalesced by the hub: send each one at once.
        let _ = stream.set_nodelay(true);
        if let Err(e) = stream.set_write_timeout(Some(self.settings.write_timeout)) {
            log::warn!(
                "client {}: cannot set a write timeout ({e}): refused",
                self.id
            );
            return;
        }
        let socket = Arc::new(stream);
        let deadline = Instant::now() + self.settings.handshake_timeout;
        let stream = ClientStream::for_handshake(Arc::clone(&socket), deadline);
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_SIZE)
            .write_buffer_size(0)
            .max_message_size(Some(self.settings.reader.max_message))
            .max_frame_size(Some(self.settings.reader.max_message));

        let mut admission = None;
        let callback =
            |request: &Request, response: Response| self.check(request, response, &mut admission);
        let ws = match tungstenite::accept_hdr_with_config(stream, callback, Some(config)) {
            Ok(ws) => ws,
            Err(HandshakeError::Interrupted(_)) => {
                log::info!("client {} from {}: handshake timed out", self.id, self.peer);
                return;
            }
            Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                log::info!(
                    "client {} from {}: refused with {}: {}",
                    self.id,
                    self.peer,
                    response.status(),
                    String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                        .trim_end()
                );
                return;
            }
            Err(HandshakeError::Failure(e)) => {
                log::info!(
                    "client {} from {}: handshake failed: {e}",
                    self.id,
                    self.peer
                );
                return;
            }
        };
        let Some(admission) = admission else {
            // The callback returned Ok only after filling `admission`.
            log::error!("client {}: handshake finished without admission", self.id);
            return;
        };
        match &admission.forwarded_for {
            Some(xff) => log::info!(
                "client {} connected from {} (X-Forwarded-For: {xff}) to {:?}",
                self.id,
                self.peer,
                admission.endpoint
            ),
            None => log::info!(
                "client {} connected from {} to {:?}",
                self.id,
                self.peer,
                admission.endpoint
            ),
        }
        let _place = admission.place;
        reader::serve(
            reader::Connection {
                id: self.id,
                endpoint: admission.endpoint,
                socket,
                ws,
            },
            &self.settings.reader,
            &self.hub,
        );
    }

    /// The handshake callback: route, origin, capacity, subprotocol, in that order.
    #[allow(clippy::result_large_err)] // the signature is tungstenite's
    fn check(
        &self,
        request: &Request,
        mut response: Response,
        admission: &mut Option<Admission>,
    ) -> Result<Response, ErrorResponse> {
        let endpoint = match request.uri().path() {
            "/" => Endpoint::Chat,
            "/echo" => Endpoint::Echo,
            _ => {
                return Err(refusal(
                    StatusCode::NOT_FOUND,
                    "no WebSocket endpoint here: use / (chat) or /echo",
                ));
            }
        };
        if !origin_allowed(request.headers(), &self.settings.allowed_origins) {
            return Err(refusal(
                StatusCode::FORBIDDEN,
                "this page's origin may not open a chat socket (see --allow-origin)",
            ));
        }
        let Some(place) = self.established.try_acquire() else {
            return Err(refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "the chat is full, try again later",
            ));
        };
        if offers_subprotocol(request.headers(), SUBPROTOCOL) {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        let forwarded_for = request
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        *admission = Some(Admission {
            endpoint,
            forwarded_for,
            place,
        });
        Ok(response)
    }
}

/// A complete HTTP error response: tungstenite writes exactly what we give it.
fn refusal(status: StatusCode, text: &str) -> ErrorResponse {
    let body = format!("{text}\n");
    let mut builder = http::Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::CONNECTION, "close");
    if status == StatusCode::SERVICE_UNAVAILABLE {
        builder = builder.header(header::RETRY_AFTER, "5");
    }
    builder
        .body(Some(body))
        .expect("a status and fixed headers make a valid response")
}

/// Whether the page that opened this socket may use it.
///
/// Browsers send `Origin` on every WebSocket handshake and let any page open a
/// socket to any host, with the visitor's cookies and network position. So a
/// handshake without `Origin` (not a browser) is accepted, one from a page on the
/// same host name as the socket is accepted (the page is on port 8000 and the
/// socket on 8001, so ports are not compared), and any other only when
/// `--allow-origin` names it or is `*`.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim().trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| host_without_port(rest));
    let socket_host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(host_without_port);
    match (origin_host, socket_host) {
        (Some(a), Some(b)) => !a.is_empty() && a.eq_ignore_ascii_case(b),
        _ => false,
    }
}

/// `example.com:8000` → `example.com`, `[::1]:8001` → `[::1]`.
fn host_without_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    authority.split(':').next().unwrap_or(authority)
}

/// Whether any `Sec-WebSocket-Protocol` header lists `wanted`.
fn offers_subprotocol(headers: &HeaderMap, wanted: &str) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, http::HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn no_origin_is_a_non_browser_client_and_is_accepted() {
        assert!(origin_allowed(&headers(&[("host", "chat.lan:8001")]), &[]));
    }

    #[test]
    fn same_host_name_on_another_port_is_accepted() {
        let h = headers(&[
            ("host", "chat.lan:8001"),
            ("origin", "http://chat.lan:8000"),
        ]);
        assert!(origin_allowed(&h, &[]));
        let h = headers(&[("host", "[::1]:8001"), ("origin", "http://[::1]:8000")]);
        assert!(origin_allowed(&h, &[]));
        let h = headers(&[("host", "Chat.LAN:8001"), ("origin", "https://chat.lan")]);
        assert!(origin_allowed(&h, &[]));
    }

    #[test]
    fn foreign_origins_are_refused_unless_allowed() {
        let h = headers(&[("host", "chat.lan:8001"), ("origin", "http://evil.example")]);
        assert!(!origin_allowed(&h, &[]));
        assert!(origin_allowed(&h, &["http://evil.example".into()]));
        assert!(origin_allowed(&h, &["*".into()]));
        assert!(!origin_allowed(&h, &["http://other.example".into()]));
        let h = headers(&[("host", "chat.lan:8001"), ("origin", "null")]);
        assert!(!origin_allowed(&h, &[]));
        // A prefix of the host is not the host.
        let h = headers(&[
            ("host", "chat.lan:8001"),
            ("origin", "http://chat.lan.evil.example"),
        ]);
        assert!(!origin_allowed(&h, &[]));
    }

    #[test]
    fn subprotocol_is_found_among_several_offers() {
        let h = headers(&[("sec-websocket-protocol", "chat, threadchat.v1")]);
        assert!(offers_subprotocol(&h, SUBPROTOCOL));
        let h = headers(&[
            ("sec-websocket-protocol", "chat"),
            ("sec-websocket-protocol", "threadchat.v1"),
        ]);
        assert!(offers_subprotocol(&h, SUBPROTOCOL));
        let h = headers(&[("sec-websocket-protocol", "threadchat.v2")]);
        assert!(!offers_subprotocol(&h, SUBPROTOCOL));
    }
}
