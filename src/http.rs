//! The page on port 8000: a small HTTP/1.1 server for `GET` and `HEAD`, one thread
//! per connection, like the chat port.
//!
//! Routes: `GET /healthz` (200 while the hub turns over, else 503), `GET /stats`
//! (JSON), `GET /config.json` (tells the page which port the WebSocket is on), and
//! every other path a file of the page (see [`crate::assets`]), with `ETag` and
//! `Cache-Control: no-cache`: the browser keeps a copy and asks each time whether
//! it is current, and a match costs a `304` with no body. Other methods get 405.
//!
//! With `--token`, `/stats` asks for the chat's token too (`?token=` as on the
//! chat port, or `Authorization: Bearer`), else `401`: its counts tell a stranger
//! how many people are here and how busy they are. What stays open says nothing
//! of the sort: `/healthz` is `ok` or not, and `/config.json` only where the
//! socket is and whether a token is needed, which a page needs before it has one.
//!
//! # The designs that do not hold
//!
//! * *Read a line until its end, then the next.* The classic loop (and
//!   tiny_http's) keeps a header line in memory until its CRLF arrives. One
//!   client that never sends it grows that buffer until the machine runs out:
//!   four connections took a server to 2.9 GiB in 15 s.
//! * *Parse requests as they come, answer them from a queue.* A client may send
//!   thousands of requests without reading an answer (pipelining). The queue grows
//!   without bound, and the worker writing to that client blocks, with every other
//!   visitor's answer behind it.
//! * *A timeout on each read.* A client that sends one byte just inside every
//!   timeout keeps its connection for ever.
//!
//! # The design we use
//!
//! Each connection has its own thread (it holds one of the page's places, see
//! [`crate::places`]) and one fixed-size buffer of [`MAX_HEAD`] bytes. The thread
//! reads into the buffer until it holds a whole request head, which `httparse`
//! parses: request line and at most [`MAX_HEADERS`] header fields within
//! `MAX_HEAD` bytes, or `431` and close. The whole head must arrive within
//! `--http-timeout` (a deadline, not a per-read timeout), or `408` and close; a
//! keep-alive connection with no new request by then is closed silently.
//!
//! Then it answers that request, and only then reads the next: a pipelined
//! request waits in the same buffer (or in the kernel) until its turn, so a client
//! that sends many and reads none stops being read from as soon as its answers
//! fill the socket. Answers are written with a deadline too; a client that does
//! not read them loses its connection at `--http-timeout`, and nothing it held is
//! shared with anyone else. No request body is ever read: a request with one is
//! answered, then its connection is closed.

use std::borrow::Cow;
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Sender;
use rustls::{ServerConfig, ServerConnection};
use serde::Serialize;

use crate::accept::Connection;
use crate::assets::{self, Asset, Page, SOCKET_IO_CLIENT_PATHS, Unavailable};
use crate::event::Event;
use crate::handshake::{self, Handover, WsSettings};
use crate::hosts::ServerNames;
use crate::logging::{Noisy, Quoting, Untrusted, limited};
use crate::places::{Occupancy, Places};
use crate::same_secret;
use crate::socketio;
use crate::stats::{Snapshot, Stats};
use crate::tls::{self, Deadline};

/// Most bytes of one request head (request line and headers). Browsers send 1–2
/// KiB; nginx's default is 8 KiB per line.
pub const MAX_HEAD: usize = 16 * 1024;

/// Most header fields in one request.
pub const MAX_HEADERS: usize = 100;

/// After the last answer on a connection, how long the rest of the client's input
/// is read and dropped before the socket closes. Closing with unread input makes
/// the kernel send a reset, which can destroy the answer before the client reads
/// it (a 431 to a client still sending its endless header, say).
const LINGER: Duration = Duration::from_secs(1);

/// How much is read and dropped while lingering, at most.
const LINGER_BYTES: usize = 64 * 1024;

/// How long `/healthz` waits for the hub to answer.
const HEALTH_DEADLINE: Duration = Duration::from_secs(2);

/// What the request handlers need, shared by every page connection.
pub struct Site {
    /// The page's files.
    pub page: Page,
    /// Counters for `/stats`.
    pub stats: Arc<Stats>,
    /// Places taken, for `/stats`.
    pub places: Arc<Places>,
    /// The hub, which `/healthz` asks whether it is turning over.
    pub hub: Sender<Event>,
    /// The WebSocket port, for `/config.json`.
    pub ws_port: u16,
    /// The chat's access token (`--token`): `/stats` asks for it too, and
    /// `/config.json` says whether there is one, so that the page can say so instead
    /// of failing quietly.
    pub access_token: Option<String>,
    /// Names accepted in `Host`.
    pub server_names: ServerNames,
    /// `--http-timeout`: the deadline of a request head, of an answer, and of an
    /// idle keep-alive connection.
    pub timeout: Duration,
    /// `--tls-cert`/`--tls-key`: the page is https.
    pub tls: Option<Arc<ServerConfig>>,
    /// The chat, for the Socket.IO clients that connect to the page's origin: a
    /// `/socket.io/` upgrade is handed over, socket and all, to the chat's
    /// handshake ([`crate::handshake::take_over`]), with a chat id from the chat
    /// port's count.
    pub chat: Arc<WsSettings>,
}

/// A page connection's socket, with its TLS connection under https. One thread
/// reads and writes it, so the TLS connection needs no sharing (unlike a chat
/// client's, see [`crate::tls`]).
struct PageStream {
    socket: TcpStream,
    tls: Option<Box<ServerConnection>>,
}

/// Plaintext sealed into records at once when writing an answer over https: bounds
/// what a connection holds in ciphertext to about this, whatever the answer's size.
const TLS_WRITE: usize = 16 * 1024;

impl PageStream {
    /// Reads what arrives by `deadline`; under https the TLS handshake happens in the
    /// first read, within the first request's deadline.
    fn read_before(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        let mut socket = Deadline::new(&self.socket, deadline);
        match &mut self.tls {
            Some(conn) => tls::read(conn, &mut socket, buf),
            None => socket.read(buf),
        }
    }

    /// Writes all of `parts` by `deadline`: a client that reads a byte now and then
    /// cannot stretch it.
    fn write_before(&mut self, parts: &mut [IoSlice<'_>], deadline: Instant) -> io::Result<()> {
        let mut socket = Deadline::new(&self.socket, deadline);
        if let Some(conn) = &mut self.tls {
            for part in parts.iter() {
                for piece in part.chunks(TLS_WRITE) {
                    tls::write_all(conn, &mut socket, piece)?;
                }
            }
            return Ok(());
        }
        let mut parts = parts;
        IoSlice::advance_slices(&mut parts, 0);
        while !parts.is_empty() {
            match socket.write_vectored(parts) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut parts, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The parts of a request head that are used, copied out of the buffer so that the
/// buffer can take the next request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    method: String,
    /// The request target as sent (not decoded; may include `?query`).
    target: String,
    /// HTTP/1.1 (true) or HTTP/1.0.
    http11: bool,
    host: Option<String>,
    if_none_match: Option<String>,
    /// `Accept-Encoding`: only socket.io's client, kept compressed, asks.
    accept_encoding: Option<String>,
    /// `Authorization`, which may hold the access token: never logged.
    authorization: Option<String>,
    /// The client wants the connection kept open after this answer.
    keep_alive: bool,
    /// The request announces a body, which is never read.
    has_body: bool,
    /// A WebSocket upgrade's head as read, for the chat's handshake to read
    /// again if the connection is handed over.
    upgrade_head: Option<Vec<u8>>,
}

/// Why no request was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoRequest {
    /// The client closed, or sent nothing before the deadline: close quietly.
    Gone,
    /// Answer this status, then close.
    Refuse(u16),
}

/// One answer.
struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Cow<'static, [u8]>,
    /// Close the connection after this answer.
    close: bool,
}

/// Serves one page connection until it closes. Runs on the connection's own thread.
pub fn serve(conn: Connection, site: &Site) {
    let Connection {
        stream: socket,
        peer,
        place,
        ..
    } = conn;
    // Answers are written whole; waiting for more to coalesce would only delay them.
    let _ = socket.set_nodelay(true);
    let tls = match site.tls.as_ref().map(tls::accept).transpose() {
        Ok(tls) => tls,
        Err(e) => {
            limited!(
                Noisy::HandshakeFailed,
                "page connection from {peer}: {}",
                Untrusted(&e)
            );
            return;
        }
    };
    let mut stream = PageStream { socket, tls };
    let mut input = Vec::with_capacity(MAX_HEAD);
    loop {
        let deadline = Instant::now() + site.timeout;
        let request = match read_request(&mut stream, &mut input, deadline) {
            Ok(request) => request,
            Err(NoRequest::Gone) => break,
            Err(NoRequest::Refuse(status)) => {
                limited!(
                    Noisy::refused(status),
                    "page request from {peer} refused with {status}: {}",
                    reason(status)
                );
                let response = text(status, &format!("{}\n", reason(status))).closing();
                let _ = write_response(&mut stream, &response, false, site.timeout);
                linger(&mut stream);
                break;
            }
        };
        if request.upgrade_head.is_some() && path_of(&request.target) == socketio::PATH {
            let conn = Connection {
                id: site.chat.client_ids.fetch_add(1, Ordering::Relaxed),
                stream: stream.socket,
                peer,
                place,
            };
            let mut head = request.upgrade_head.unwrap_or_default();
            // Nothing should follow an upgrade's head before its answer; if
            // anything did, the handshake reads it after the head.
            head.append(&mut input);
            let handover = Handover {
                tls: stream.tls,
                head,
            };
            return handshake::take_over(conn, handover, &site.chat, &site.hub);
        }
        let mut response = respond_to(&request, site, peer);
        response.close |= !request.keep_alive || request.has_body;
        let head_only = request.method == "HEAD";
        if write_response(&mut stream, &response, head_only, site.timeout).is_err() {
            break;
        }
        if response.close {
            linger(&mut stream);
            break;
        }
    }
    drop(stream);
    drop(place);
}

/// Reads until `input` holds a whole request head, parses it, and removes it from
/// `input` (a pipelined request after it stays there for the next call).
fn read_request(
    stream: &mut PageStream,
    input: &mut Vec<u8>,
    deadline: Instant,
) -> Result<Request, NoRequest> {
    // Bytes left over from the previous request may already hold a whole head.
    let mut fresh = !input.is_empty();
    loop {
        // A head can only be complete once a line has ended, so the (linear) parse
        // runs once per line that arrives, not once per byte.
        if fresh && let Some((request, len)) = parse_head(input)? {
            input.drain(..len);
            return Ok(request);
        }
        if input.len() >= MAX_HEAD {
            return Err(NoRequest::Refuse(431));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(if input.is_empty() {
                NoRequest::Gone
            } else {
                NoRequest::Refuse(408)
            });
        }
        let mut chunk = [0u8; 4096];
        let room = (MAX_HEAD - input.len()).min(chunk.len());
        match stream.read_before(&mut chunk[..room], deadline) {
            Ok(0) => return Err(NoRequest::Gone),
            Ok(n) => {
                input.extend_from_slice(&chunk[..n]);
                fresh = chunk[..n].contains(&b'\n');
            }
            Err(e) if crate::is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {
                fresh = false
            }
            Err(_) => return Err(NoRequest::Gone),
        }
    }
}

/// Parses a request head at the start of `input`: `Ok(None)` while it is
/// incomplete, `Ok(Some((request, length)))` once it is whole.
fn parse_head(input: &[u8]) -> Result<Option<(Request, usize)>, NoRequest> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(NoRequest::Refuse(431)),
        Err(_) => return Err(NoRequest::Refuse(400)),
    };
    let http11 = parsed.version == Some(1);
    let mut hosts = parsed
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let host = hosts
        .next()
        .map(|h| String::from_utf8_lossy(h.value).into_owned());
    if hosts.next().is_some() {
        // Two Host headers: which one a proxy in front of us believed is anyone's
        // guess (RFC 9112 §3.2 asks for a 400).
        return Err(NoRequest::Refuse(400));
    }
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let lengths = parsed
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .count();
    if lengths > 1 {
        // Where this request ends depends on which length one believes: a proxy in
        // front of us and we could disagree (request smuggling; RFC 9112 §6.3).
        return Err(NoRequest::Refuse(400));
    }
    let connection = header("connection")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let has_body = header("transfer-encoding").is_some()
        || header("content-length").is_some_and(|l| l.trim() != "0");
    let websocket = header("upgrade").is_some_and(|u| {
        u.split(',')
            .any(|token| token.trim().eq_ignore_ascii_case("websocket"))
    });
    let request = Request {
        method: parsed.method.unwrap_or_default().to_string(),
        target: parsed.path.unwrap_or_default().to_string(),
        http11,
        keep_alive: http11 && !connection.split(',').any(|t| t.trim() == "close"),
        host,
        if_none_match: header("if-none-match"),
        accept_encoding: header("accept-encoding"),
        authorization: header("authorization"),
        has_body,
        upgrade_head: websocket.then(|| input[..len].to_vec()),
    };
    Ok(Some((request, len)))
}

/// Routes one request.
fn respond_to(request: &Request, site: &Site, peer: IpAddr) -> Response {
    let path = path_of(&request.target);
    let query = request
        .target
        .split_once('?')
        .map_or("", |(_, query)| query);
    if path == socketio::PATH {
        return engineio_refusal(query);
    }
    if request.method != "GET" && request.method != "HEAD" {
        return text(405, "method not allowed\n")
            .with("Allow", "GET, HEAD")
            .closing();
    }
    match &request.host {
        Some(host) if !site.server_names.accepts(host) => {
            let why = ServerNames::refusal(host);
            limited!(
                Noisy::Misdirected,
                "page request from {peer} refused with 421: {}",
                Quoting(&why)
            );
            return text(421, &format!("{why}\n")).closing();
        }
        None if request.http11 => return text(400, "an HTTP/1.1 request needs a Host\n").closing(),
        _ => {}
    }
    match path {
        "/healthz" if hub_answers(&site.hub) => text(200, "ok\n"),
        "/healthz" => text(503, "the hub is not answering\n"),
        "/stats" if !presents_token(request, site.access_token.as_deref()) => text(
            401,
            "/stats needs the chat's access token: ?token=… or Authorization: Bearer …\n",
        )
        .with("WWW-Authenticate", "Bearer"),
        "/stats" => json(&StatsBody {
            stats: site.stats.snapshot(),
            places: site.places.occupancy(),
        }),
        p if SOCKET_IO_CLIENT_PATHS.contains(&p) => socket_io_client(request),
        "/config.json" => json(&serde_json::json!({
            "wsPort": site.ws_port,
            "wsPath": "/",
            "token": site.access_token.is_some(),
        })),
        _ => file(request, &site.page, path),
    }
}

/// A request target's path: what comes before its query.
fn path_of(target: &str) -> &str {
    target.split(['?', '#']).next().unwrap_or("")
}

/// Socket.IO's path on the page port: Engine.IO's own 400 (socket.io's clients
/// fall back to it from long-polling, which is not served, whatever the method).
fn engineio_refusal(query: &str) -> Response {
    let query = query.split('#').next().unwrap_or("");
    let why = socketio::refusal(query, false).unwrap_or(socketio::Refusal::BadRequest);
    Response {
        status: 400,
        headers: vec![("Content-Type", "application/json".into())],
        body: Cow::Owned(why.body().into_bytes()),
        close: false,
    }
}

/// Whether `request` carries the access token, when there is one: as the query key
/// `token` (as a chat handshake may) or as `Authorization: Bearer <it>` (what a
/// monitoring tool sends). Compared in constant time, as on the chat port.
fn presents_token(request: &Request, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let query = request.target.split_once('?').map_or("", |(_, q)| q);
    let query = query.split('#').next().unwrap_or("");
    let in_query = query.split('&').filter_map(|pair| {
        let value = pair.strip_prefix("token=")?;
        crate::static_files::percent_decode(value).ok()
    });
    let bearer = request.authorization.as_deref().and_then(|value| {
        let (scheme, credentials) = value.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| credentials.trim().to_owned())
    });
    in_query
        .chain(bearer)
        .any(|given| same_secret(token.as_bytes(), given.as_bytes()))
}

/// What `GET /stats` returns: the counters, and the places taken.
#[derive(Serialize)]
struct StatsBody {
    #[serde(flatten)]
    stats: Snapshot,
    places: Occupancy,
}

/// Whether the hub takes an event and answers it within [`HEALTH_DEADLINE`]. The
/// probe waits behind every event already queued, so a hub that is stuck, gone or
/// hopelessly behind fails it; an idle hub answers at once (and is woken only by
/// the probe itself: nothing ticks to prove it alive).
pub fn hub_answers(hub: &Sender<Event>) -> bool {
    let deadline = Instant::now() + HEALTH_DEADLINE;
    let (answer, answered) = crossbeam_channel::bounded(1);
    hub.send_deadline(Event::Probe { answer }, deadline).is_ok()
        && answered.recv_deadline(deadline).is_ok()
}

/// A file of the page, or 304 when the browser's copy is current.
fn file(request: &Request, page: &Page, path: &str) -> Response {
    match page.get(path) {
        Ok(asset) => answer_with(request, asset),
        Err(Unavailable::BadRequest) => text(400, "bad request\n"),
        Err(Unavailable::NotFound) => text(404, "not found\n"),
        Err(Unavailable::TooLarge) => text(500, "file too large to serve\n"),
    }
}

/// socket.io's client, gzip-compressed as it is kept: to any request that
/// accepts gzip, or says nothing of encodings (RFC 9110 §12.5.3: then any is
/// acceptable); `406` to one that refuses it.
fn socket_io_client(request: &Request) -> Response {
    let accepts_gzip = request.accept_encoding.as_deref().is_none_or(|codings| {
        codings.split(',').any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            !refused && (name.eq_ignore_ascii_case("gzip") || name == "*")
        })
    });
    if !accepts_gzip {
        return text(
            406,
            "this file is served gzip-compressed: ask with Accept-Encoding: gzip\n",
        );
    }
    answer_with(request, assets::socket_io_client())
        .with("Content-Encoding", "gzip")
        .with("Vary", "Accept-Encoding")
}

/// `asset`, or `304` when the request's `If-None-Match` holds its tag.
fn answer_with(request: &Request, asset: Asset) -> Response {
    let current = request
        .if_none_match
        .as_deref()
        .is_some_and(|tags| etag_matches(tags, &asset.etag));
    let response = Response {
        status: if current { 304 } else { 200 },
        headers: Vec::new(),
        body: if current {
            Cow::Borrowed(&[])
        } else {
            asset.bytes
        },
        close: false,
    }
    .with("ETag", &asset.etag)
    .with("Cache-Control", "no-cache");
    if current {
        return response;
    }
    response
        .with("Content-Type", &asset.content_type)
        .with("X-Content-Type-Options", "nosniff")
}

/// `If-None-Match`: `*`, or a list of tags compared weakly (a `W/` prefix is
/// ignored), as RFC 9110 asks for this header.
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.trim() == "*"
        || if_none_match
            .split(',')
            .map(|tag| tag.trim().trim_start_matches("W/"))
            .any(|tag| tag == etag)
}

impl Response {
    fn with(mut self, name: &'static str, value: &str) -> Response {
        self.headers.push((name, value.to_string()));
        self
    }

    fn closing(mut self) -> Response {
        self.close = true;
        self
    }
}

fn text(status: u16, body: &str) -> Response {
    Response {
        status,
        headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
        body: Cow::Owned(body.as_bytes().to_vec()),
        close: false,
    }
}

fn json(value: &impl Serialize) -> Response {
    let body = serde_json::to_vec(value).expect("plain data serialises");
    Response {
        status: 200,
        headers: vec![
            ("Content-Type", "application/json".into()),
            ("Cache-Control", "no-store".into()),
        ],
        body: Cow::Owned(body),
        close: false,
    }
}

/// Writes one answer (only its head for `HEAD`), all of it within `timeout`.
fn write_response(
    stream: &mut PageStream,
    response: &Response,
    head_only: bool,
    timeout: Duration,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nDate: {}\r\n",
        response.status,
        reason(response.status),
        httpdate::fmt_http_date(SystemTime::now())
    );
    // A 304 has no body, and its length, if sent, would have to be the 200's.
    if response.status != 304 {
        out += &format!("Content-Length: {}\r\n", response.body.len());
    }
    for (name, value) in &response.headers {
        out += &format!("{name}: {value}\r\n");
    }
    if response.close {
        out += "Connection: close\r\n";
    }
    out += "\r\n";
    let body: &[u8] = if head_only { &[] } else { &response.body };
    // Head and body in one write, without copying the body next to the head.
    let mut parts = [IoSlice::new(out.as_bytes()), IoSlice::new(body)];
    stream.write_before(&mut parts, Instant::now() + timeout)
}

/// Ends the sending side, then reads and drops what the client still sends for a
/// moment (see [`LINGER`]).
fn linger(stream: &mut PageStream) {
    // One deadline for close_notify and the drain after it.
    let deadline = Instant::now() + LINGER;
    if let Some(conn) = &mut stream.tls {
        tls::close(conn, &mut Deadline::new(&stream.socket, deadline));
    }
    let stream = &stream.socket;
    let _ = stream.shutdown(Shutdown::Write);
    let mut dropped = 0;
    let mut sink = [0u8; 4096];
    while dropped < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match (&*stream).read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => dropped += n,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        let tag = "\"5-00aa\"";
        assert!(etag_matches("\"5-00aa\"", tag));
        assert!(etag_matches("W/\"5-00aa\"", tag));
        assert!(etag_matches("\"x\", \"5-00aa\"", tag));
        assert!(etag_matches(" * ", tag));
        assert!(!etag_matches("\"5-00ab\"", tag));
        assert!(!etag_matches("5-00aa", tag));
        assert!(!etag_matches("", tag));
    }

    #[test]
    fn healthz_is_the_hub_answering() {
        use crate::stats::Stats;
        // A hub that turns over answers.
        let (hub, events) = crossbeam_channel::bounded(16);
        let settings = crate::hub::HubSettings {
            ping_interval: Duration::from_secs(30),
            history: 10,
            max_rooms: 10,
            max_rooms_per_host: 0,
            epoch: 1,
        };
        crate::hub::spawn(events, settings, None, Arc::new(Stats::new()), Vec::new()).unwrap();
        assert!(hub_answers(&hub));
        // A hub whose thread is gone fails at once.
        let (gone, events) = crossbeam_channel::bounded::<Event>(16);
        drop(events);
        assert!(!hub_answers(&gone));
        // A hub that never takes the probe fails at the deadline.
        let (stuck, _events_never_taken) = crossbeam_channel::bounded::<Event>(16);
        let asked = Instant::now();
        assert!(!hub_answers(&stuck));
        assert!(asked.elapsed() >= HEALTH_DEADLINE);
    }

    #[test]
    fn the_token_comes_in_the_query_or_as_a_bearer() {
        let request = |target: &str, authorization: Option<&str>| Request {
            method: "GET".into(),
            target: target.into(),
            http11: true,
            host: None,
            if_none_match: None,
            accept_encoding: None,
            authorization: authorization.map(str::to_owned),
            keep_alive: true,
            has_body: false,
            upgrade_head: None,
        };
        assert!(presents_token(&request("/stats", None), None));
        let admits = |target: &str, authorization: Option<&str>| {
            presents_token(&request(target, authorization), Some("s3cret~"))
        };
        assert!(!admits("/stats", None));
        assert!(admits("/stats?token=s3cret~", None));
        assert!(admits("/stats?a=b&token=s3cret%7E", None));
        assert!(!admits("/stats?token=s3cret", None));
        assert!(!admits("/stats?xtoken=s3cret~", None));
        assert!(!admits("/stats?token=%zz", None));
        assert!(admits("/stats", Some("Bearer s3cret~")));
        assert!(admits("/stats", Some("bearer   s3cret~ ")));
        assert!(!admits("/stats", Some("Basic s3cret~")));
        assert!(!admits("/stats", Some("s3cret~")));
        assert!(!admits("/stats", Some("Bearer")));
    }

    #[test]
    fn a_head_is_parsed_only_once_whole() {
        let head =
            b"GET /app.js?v=1 HTTP/1.1\r\nHost: pi:8000\r\nIf-None-Match: \"x\"\r\n\r\nGET /";
        for cut in 0..head.len() - 5 {
            assert_eq!(parse_head(&head[..cut]), Ok(None), "cut at {cut}");
        }
        let (request, len) = parse_head(head).unwrap().unwrap();
        assert_eq!(len, head.len() - 5, "the pipelined request stays");
        assert_eq!(request.method, "GET");
        assert_eq!(request.target, "/app.js?v=1");
        assert_eq!(request.host.as_deref(), Some("pi:8000"));
        assert_eq!(request.if_none_match.as_deref(), Some("\"x\""));
        assert!(request.http11 && request.keep_alive && !request.has_body);
    }

    #[test]
    fn connection_close_http10_and_bodies_end_the_connection() {
        let parse = |head: &str| parse_head(head.as_bytes()).unwrap().unwrap().0;
        assert!(!parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!parse("GET / HTTP/1.1\r\nConnection: TE, Close\r\n\r\n").keep_alive);
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(parse("POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n").has_body);
        assert!(parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").has_body);
        assert!(!parse("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").has_body);
    }

    #[test]
    fn malformed_and_oversized_heads_are_refused() {
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"),
            Err(NoRequest::Refuse(400))
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(NoRequest::Refuse(400))
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n"),
            Err(NoRequest::Refuse(400))
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            parse_head(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Err(NoRequest::Refuse(431))
        );
    }
}
