//! The first half of a chat-port connection's thread: the WebSocket handshake.
//!
//! The connection arrives from the acceptor ([`crate::accept`]) holding a handshake
//! place. Here it must finish the handshake within `--handshake-timeout`, a
//! deadline on the whole handshake rather than on each read (a slowloris sending
//! one byte every few seconds would otherwise hold its thread for ever), and pass
//! these checks, in this order:
//!
//! 1. **The path**: `/` is the chat, `/text` the chat in plain text,
//!    `/socket.io/` the chat for Socket.IO clients (Engine.IO 4 over WebSocket
//!    only; anything else gets Engine.IO's own 400), and with `--echo`, `/echo`
//!    the echo endpoint and `/socket.io/` Socket.IO's conformance fixture.
//! 2. **The name** in `Host` is one of this server's ([`crate::hosts`]: DNS
//!    rebinding).
//! 3. **The origin**: a web page on another site must not be able to open a socket
//!    to us with its visitor's browser ([`origin_allowed`]).
//! 4. **A client place** for this address ([`crate::places`]): `503` when the chat
//!    is full or the address has its share.
//!
//! Then it selects the `threadchat.v1` subprotocol when offered (and never one
//! that was not), gives back the handshake place, and becomes the client's reader
//! ([`crate::reader`]), which keeps the client place until its last thread and its
//! socket are gone.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use tungstenite::handshake::HandshakeError;
use tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response};
use tungstenite::http::{self, HeaderMap, StatusCode, header};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{ServerHandshake, WebSocket};

use crate::accept::Connection;
use crate::budget::{Allowance, Budgets};
use crate::event::{Endpoint, Event};
use crate::format::Format;
use crate::hosts::ServerNames;
use crate::logging::{Noisy, Quoting, Untrusted, limited};
use crate::places::{Kind, Place, Places, Refusal};
use crate::protocol::{self, SUBPROTOCOL, SUBPROTOCOL_TEXT, SUBPROTOCOL_V2};
use crate::reader::{self, ClientStream, ReaderSettings};
use crate::socketio;
use crate::stats::{HandshakeEnd, Stats};
use crate::tls;

/// tungstenite's read buffer per client. Its default, 128 KiB, is allocated and
/// zero-filled per connection: 135 KiB of RSS per idle client. Chat messages are
/// small; 1 KiB keeps an idle client near 24 KiB in all.
const READ_BUFFER_SIZE: usize = 1024;

/// What every chat-port thread needs to know, shared by all of them.
pub struct WsSettings {
    /// Deadline for the whole handshake.
    pub handshake_timeout: Duration,
    /// Timeout of one blocked write.
    pub write_timeout: Duration,
    /// `--allow-origin` values (`*` = any).
    pub allowed_origins: Vec<String>,
    /// Names accepted in `Host`.
    pub server_names: ServerNames,
    /// Whether `/echo` is served (`--echo`).
    pub echo: bool,
    /// `--admin-token`: a connection that presents it may kick.
    pub admin_token: Option<String>,
    /// `--token`: every chat client must present it.
    pub access_token: Option<String>,
    /// `--tls-cert`/`--tls-key`: the chat is wss.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Where client places come from.
    pub places: Arc<Places>,
    /// Where handshakes and disconnects are counted.
    pub stats: Arc<Stats>,
    /// What the reader needs once the handshake is done.
    pub reader: ReaderSettings,
    /// Every address's budget, carried across its connections.
    pub budgets: Arc<Budgets>,
    /// The next chat id: the chat port's count, shared with the page port (the
    /// connections it hands over) and the readers (a Socket.IO connection's other
    /// namespaces).
    pub client_ids: Arc<AtomicU64>,
}

/// What the handshake callback found out, for the reader.
struct Admission {
    endpoint: Endpoint,
    format: Format,
    protocol: &'static str,
    name: Option<String>,
    room: Option<String>,
    admin: bool,
    forwarded_for: Option<String>,
    /// The client place, held from now until the client's last thread is gone.
    place: Place,
    /// Its address's budget (none for echo clients, or with budgets off).
    allowance: Option<Arc<Allowance>>,
    /// The access token a Socket.IO client has yet to show.
    token_due: Option<String>,
}

/// A connection the page port hands over to the chat: its TLS connection (under
/// https), and the request head it read, which the handshake reads again.
/// Socket.IO's clients connect to the page's own origin, so their `/socket.io/`
/// upgrade arrives there.
pub struct Handover {
    pub tls: Option<Box<rustls::ServerConnection>>,
    pub head: Vec<u8>,
}

/// Runs a chat-port connection: the handshake here, then the reader.
pub fn serve(conn: Connection, settings: &WsSettings, hub: &Sender<Event>) {
    serve_from(conn, None, settings, hub);
}

/// Runs a connection the page port hands over (its place is the page's, held
/// until the handshake is done): the handshake, then the reader, as on the chat
/// port. Only the chat: `--echo`'s fixture is the chat port's.
pub fn take_over(conn: Connection, handover: Handover, settings: &WsSettings, hub: &Sender<Event>) {
    serve_from(conn, Some(handover), settings, hub);
}

fn serve_from(
    conn: Connection,
    handover: Option<Handover>,
    settings: &WsSettings,
    hub: &Sender<Event>,
) {
    let Connection {
        id,
        stream,
        peer,
        place: handshake_place,
    } = conn;
    // Batches are already coalesced by the hub: send each one at once.
    let _ = stream.set_nodelay(true);
    if let Err(e) = stream.set_write_timeout(Some(settings.write_timeout)) {
        log::warn!("client {id}: cannot set a write timeout ({e}): refused");
        return;
    }
    let socket = Arc::new(stream);
    let deadline = Instant::now() + settings.handshake_timeout;
    let Some((ws, admission)) = upgrade(id, peer, &socket, deadline, handover, settings) else {
        return;
    };
    drop(handshake_place);
    // The handshake's writes had its deadline; from now on a blocked write gets
    // `--write-timeout`.
    if let Err(e) = socket.set_write_timeout(Some(settings.write_timeout)) {
        log::warn!("client {id}: cannot set a write timeout ({e}): disconnecting");
        return;
    }
    match &admission.forwarded_for {
        Some(xff) => limited!(
            Noisy::Connected,
            "client {id} connected from {peer} (X-Forwarded-For: \"{}\") to {:?}",
            Untrusted(xff),
            admission.endpoint
        ),
        None => limited!(
            Noisy::Connected,
            "client {id} connected from {peer} to {:?}",
            admission.endpoint
        ),
    }
    let client = reader::Client {
        address: peer,
        allowance: admission.allowance,
        format: admission.format,
        name: admission.name,
        room: admission.room,
        admin: admission.admin,
        protocol: admission.protocol,
        id: protocol::ClientId(id),
        endpoint: admission.endpoint,
        token_due: admission.token_due,
        ids: Arc::clone(&settings.client_ids),
        socket,
        ws,
    };
    reader::serve(
        client,
        admission.place,
        &settings.reader,
        hub,
        &settings.stats,
    );
}

/// The TLS handshake (for wss) and the WebSocket one, both by `deadline`: the
/// client's socket and what the handshake found out, or `None` when it failed
/// (counted and logged here).
#[allow(clippy::result_large_err)] // the callback's error type is tungstenite's
fn upgrade(
    id: u64,
    peer: IpAddr,
    socket: &Arc<std::net::TcpStream>,
    deadline: Instant,
    handover: Option<Handover>,
    settings: &WsSettings,
) -> Option<(WebSocket<ClientStream>, Admission)> {
    let handed_over = handover.is_some();
    let echo = settings.echo && !handed_over;
    let (tls, head) = match handover {
        Some(Handover { tls, head }) => (tls, head),
        None => (
            tls_handshake_of(id, peer, socket, deadline, settings)?,
            Vec::new(),
        ),
    };
    let mut handshake_stream = ClientStream::for_handshake(Arc::clone(socket), deadline, tls, head);
    // The page port answers its own requests that are not upgrades.
    if !handed_over {
        refuse_long_polling(id, peer, &mut handshake_stream, socket, settings)?;
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_SIZE)
        .write_buffer_size(0)
        .max_message_size(Some(settings.reader.max_message))
        .max_frame_size(Some(settings.reader.max_message));
    let mut admission = None;
    let callback = |request: &Request, response: Response| {
        let verdict = check(settings, echo, peer, request, response, &mut admission);
        if verdict.is_err() {
            // Counted before tungstenite writes the refusal, so /stats never lags
            // behind what the client has been told.
            settings.stats.count_handshake(HandshakeEnd::Refused);
        }
        verdict
    };
    match tungstenite::accept_hdr_with_config(handshake_stream, callback, Some(config)) {
        // The callback returned Ok only after filling `admission`.
        Ok(ws) => Some((ws, admission.expect("an accepted handshake was admitted"))),
        Err(e) => {
            handshake_failed(id, peer, e, &settings.stats);
            None
        }
    }
}

/// The TLS handshake of a wss connection (`Some(None)` for plain ws), or `None`
/// when it failed (counted and logged here).
fn tls_handshake_of(
    id: u64,
    peer: IpAddr,
    socket: &std::net::TcpStream,
    deadline: Instant,
    settings: &WsSettings,
) -> Option<Option<Box<rustls::ServerConnection>>> {
    let tls = match &settings.tls {
        Some(config) => match tls_handshake(config, socket, deadline) {
            Ok(conn) => Some(conn),
            Err(e) => {
                let end = if crate::is_timeout(&e) {
                    HandshakeEnd::TimedOut
                } else {
                    HandshakeEnd::Failed
                };
                settings.stats.count_handshake(end);
                limited!(
                    Noisy::HandshakeFailed,
                    "client {id} from {peer}: TLS handshake failed: {}",
                    Untrusted(&e)
                );
                return None;
            }
        },
        None => None,
    };
    Some(tls)
}

/// Counts and logs a WebSocket handshake that did not succeed.
fn handshake_failed<C: Callback>(
    id: u64,
    peer: IpAddr,
    error: HandshakeError<ServerHandshake<ClientStream, C>>,
    stats: &Stats,
) {
    match error {
        // A read that timed out is `Interrupted`; the deadline passing between
        // reads is our own `TimedOut` (see `ClientStream`).
        HandshakeError::Interrupted(_) => timed_out(id, peer, stats),
        HandshakeError::Failure(tungstenite::Error::Io(e))
            if e.kind() == std::io::ErrorKind::TimedOut =>
        {
            timed_out(id, peer, stats)
        }
        HandshakeError::Failure(tungstenite::Error::Http(response)) => {
            // Counted when refused.
            log_refusal(id, peer, response.status(), response.body().as_deref());
        }
        HandshakeError::Failure(e) => failed(id, peer, &e, stats),
    }
}

/// Logs a refusal the client has been told of. Its text may quote the request (a
/// Host, a room name).
fn log_refusal(id: u64, peer: IpAddr, status: StatusCode, body: Option<&[u8]>) {
    limited!(
        Noisy::refused(status.as_u16()),
        "client {id} from {peer}: refused with {status}: {}",
        Quoting(String::from_utf8_lossy(body.unwrap_or_default()).trim_end())
    );
}

fn failed(id: u64, peer: IpAddr, error: &dyn std::fmt::Display, stats: &Stats) {
    stats.count_handshake(HandshakeEnd::Failed);
    // tungstenite's errors can quote the request.
    limited!(
        Noisy::HandshakeFailed,
        "client {id} from {peer}: handshake failed: {}",
        Untrusted(error)
    );
}

/// The most of a request head read to find a long-polling request: Engine.IO's
/// clients send short ones, and a longer head is left to tungstenite.
const POLLING_HEAD: usize = 4096;

/// Socket.IO's clients first try HTTP long-polling unless told otherwise, with
/// a request to `/socket.io/` that is not an upgrade. tungstenite drops those
/// without a word, so the head's first bytes are read here: such a request gets
/// Engine.IO's own 400 ("Transport unknown"), which tells its client what to
/// change; any other is given back to the stream for the handshake to read
/// (`None` when the connection is over, counted and logged here).
///
/// A request whose first line is not for `/socket.io/` costs one read, which
/// tungstenite would have made anyway.
fn refuse_long_polling(
    id: u64,
    peer: IpAddr,
    stream: &mut ClientStream,
    socket: &std::net::TcpStream,
    settings: &WsSettings,
) -> Option<()> {
    let head = match read_polling_head(stream) {
        Ok(PollingHead::Refused(response)) => {
            settings.stats.count_handshake(HandshakeEnd::Refused);
            log_refusal(
                id,
                peer,
                response.status(),
                response.body().as_deref().map(str::as_bytes),
            );
            if let Err(e) = write_response(stream, &response) {
                log::debug!("client {id} from {peer}: refusal not sent: {e}");
            }
            let _ = socket.shutdown(std::net::Shutdown::Write);
            return None;
        }
        Ok(PollingHead::Other(head)) => head,
        Err(e) if crate::is_timeout(&e) => {
            timed_out(id, peer, &settings.stats);
            return None;
        }
        Err(e) => {
            failed(id, peer, &e, &settings.stats);
            return None;
        }
    };
    stream.read_again(head);
    Some(())
}

/// What the first bytes of a chat-port request turned out to be.
enum PollingHead {
    /// A `/socket.io/` request that is not an upgrade, and its answer.
    Refused(ErrorResponse),
    /// Anything else: the bytes read, for the handshake.
    Other(Vec<u8>),
}

fn read_polling_head(stream: &mut ClientStream) -> std::io::Result<PollingHead> {
    use std::io::Read;
    let mut head = vec![0; POLLING_HEAD];
    let mut filled = 0;
    loop {
        let n = match stream.read(&mut head[filled..]) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            read => read?,
        };
        filled += n;
        let seen = &head[..filled];
        if n == 0 || filled == POLLING_HEAD || !may_be_socket_io(seen) {
            break;
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(seen) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(_)) if !is_upgrade(request.headers) => {
                let query = request.path.and_then(|p| p.split_once('?'));
                let query = query.map_or("", |(_, query)| query);
                let why = socketio::refusal(query, false).unwrap_or(socketio::Refusal::BadRequest);
                return Ok(PollingHead::Refused(engineio_refusal(why)));
            }
            // An upgrade, or not HTTP: tungstenite answers it.
            Ok(httparse::Status::Complete(_)) | Err(_) => break,
        }
    }
    head.truncate(filled);
    Ok(PollingHead::Other(head))
}

/// Whether the request's first line, as far as it has come, may be for
/// `/socket.io/` (whatever the method).
fn may_be_socket_io(seen: &[u8]) -> bool {
    let Some(space) = seen.iter().position(|&b| b == b' ') else {
        return seen.len() < 16; // no method is longer
    };
    let target = &seen[space + 1..];
    let path = socketio::PATH.as_bytes();
    let n = target.len().min(path.len());
    target[..n] == path[..n]
}

/// Whether a head asks for a WebSocket upgrade, as tungstenite decides it.
fn is_upgrade(headers: &[httparse::Header]) -> bool {
    let value = |name: &str| {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value))
    };
    let connection_upgrade = value("connection").is_some_and(|v| {
        v.split([' ', ','])
            .any(|token| token.eq_ignore_ascii_case("upgrade"))
    });
    connection_upgrade && value("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Writes a refusal as tungstenite would have.
fn write_response(
    stream: &mut impl std::io::Write,
    response: &ErrorResponse,
) -> std::io::Result<()> {
    let mut text = format!("HTTP/1.1 {}\r\n", response.status());
    for (name, value) in response.headers() {
        text.push_str(name.as_str());
        text.push_str(": ");
        text.push_str(&String::from_utf8_lossy(value.as_bytes()));
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    text.push_str(response.body().as_deref().unwrap_or_default());
    stream.write_all(text.as_bytes())
}

fn timed_out(id: u64, peer: IpAddr, stats: &Stats) {
    stats.count_handshake(HandshakeEnd::TimedOut);
    limited!(
        Noisy::HandshakeTimedOut,
        "client {id} from {peer}: handshake timed out"
    );
}

/// The server side of a new TLS connection on `socket`, its handshake done by
/// `deadline`. A client that sends something other than TLS (plain HTTP, say) gets
/// an alert and is closed here.
fn tls_handshake(
    config: &Arc<rustls::ServerConfig>,
    socket: &std::net::TcpStream,
    deadline: Instant,
) -> std::io::Result<Box<rustls::ServerConnection>> {
    let mut conn = tls::accept(config)?;
    tls::handshake(&mut conn, &mut tls::Deadline::new(socket, deadline))?;
    Ok(conn)
}

/// The handshake callback: path, Host, origin, token, name and room, place,
/// budget, subprotocol, in that order (cheapest and least telling first).
#[allow(clippy::result_large_err)] // the signature is tungstenite's
fn check(
    settings: &WsSettings,
    echo: bool,
    peer: IpAddr,
    request: &Request,
    mut response: Response,
    admission: &mut Option<Admission>,
) -> Result<Response, ErrorResponse> {
    let (endpoint, kind, format) = endpoint_of(request.uri(), echo)?;
    check_host(request.headers(), &settings.server_names)?;
    if !origin_allowed(request.headers(), &settings.allowed_origins) {
        return Err(refusal(
            StatusCode::FORBIDDEN,
            "this page's origin may not open a chat socket (see --allow-origin)",
        ));
    }
    // The query: the admin token, and what a plain-text client cannot send as a
    // frame. Never logged: it may hold the token.
    let query = Query::parse(request.uri().query().unwrap_or(""));
    // A Socket.IO client may show it when it joins the chat instead, as
    // `auth: {token}`: the reader checks it then.
    let token_due = match check_access_token(settings, request.headers(), &query) {
        Err(_) if format == Format::SocketIo && endpoint == Endpoint::Chat => {
            settings.access_token.clone()
        }
        shown => shown.map(|()| None)?,
    };
    let admin = match (&settings.admin_token, &query.admin) {
        (Some(token), Some(given)) => crate::same_secret(token.as_bytes(), given.as_bytes()),
        _ => false,
    };
    if let Some(name) = &query.name {
        protocol::check_name(name).map_err(|e| refusal(StatusCode::BAD_REQUEST, &e.to_string()))?;
    }
    let room = match query.room {
        Some(room) if room != protocol::LOBBY => Some(
            protocol::check_room(room)
                .map_err(|e| refusal(StatusCode::BAD_REQUEST, &e.to_string()))?,
        ),
        _ => None,
    };
    let (place, allowance) = claim_place(settings, peer, kind, endpoint)?;
    // Socket.IO has no subprotocol: its packets say what they are.
    let chosen = match format {
        Format::SocketIo | Format::SocketIoTutorial => None,
        Format::Json | Format::Text => choose_subprotocol(request.headers(), &mut response),
    };
    let forwarded_for = request
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    *admission = Some(Admission {
        endpoint,
        format: if chosen == Some(SUBPROTOCOL_TEXT) {
            Format::Text
        } else {
            format
        },
        protocol: if chosen == Some(SUBPROTOCOL_V2) {
            SUBPROTOCOL_V2
        } else {
            SUBPROTOCOL
        },
        name: query.name,
        room,
        admin,
        forwarded_for,
        place,
        allowance,
        token_due,
    });
    Ok(response)
}

/// Which endpoint `uri` is, the kind of place it takes, and the format its
/// clients read (before any subprotocol says otherwise).
#[allow(clippy::result_large_err)] // tungstenite's refusal type
fn endpoint_of(uri: &http::Uri, echo: bool) -> Result<(Endpoint, Kind, Format), ErrorResponse> {
    match uri.path() {
        "/" => Ok((Endpoint::Chat, Kind::Chat, Format::Json)),
        "/text" => Ok((Endpoint::Chat, Kind::Chat, Format::Text)),
        "/echo" if echo => Ok((Endpoint::Echo, Kind::Echo, Format::Json)),
        "/echo" => Err(refusal(
            StatusCode::NOT_FOUND,
            "the echo endpoint is off (start the server with --echo)",
        )),
        socketio::PATH => {
            if let Some(why) = socketio::refusal(uri.query().unwrap_or(""), true) {
                return Err(engineio_refusal(why));
            }
            // With `--echo`, the chat port's is the conformance fixture (the page
            // port's is the chat still).
            if echo {
                Ok((Endpoint::Echo, Kind::Echo, Format::SocketIo))
            } else {
                Ok((Endpoint::Chat, Kind::Chat, Format::SocketIo))
            }
        }
        _ => Err(refusal(
            StatusCode::NOT_FOUND,
            "no WebSocket endpoint here: the chat is at / (and as plain text at /text)",
        )),
    }
}

/// One `Host` header, naming this server.
#[allow(clippy::result_large_err)] // tungstenite's refusal type
fn check_host(headers: &HeaderMap, server_names: &ServerNames) -> Result<(), ErrorResponse> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next().and_then(|h| h.to_str().ok()).unwrap_or("");
    if hosts.next().is_some() {
        // Which of two names a proxy in front of us believed is anyone's guess.
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "more than one Host header",
        ));
    }
    if !server_names.accepts(host) {
        // Logged with its text (which names the flag to use) by `serve`.
        return Err(refusal(
            StatusCode::MISDIRECTED_REQUEST,
            &ServerNames::refusal(host),
        ));
    }
    Ok(())
}

/// With `--token`: the access token, in the query or as a subprotocol value
/// `token.<it>` (a page cannot set headers; it can offer subprotocols). Never
/// echoed back: the chosen subprotocol is always one of ours.
#[allow(clippy::result_large_err)] // tungstenite's refusal type
fn check_access_token(
    settings: &WsSettings,
    headers: &HeaderMap,
    query: &Query,
) -> Result<(), ErrorResponse> {
    let Some(token) = &settings.access_token else {
        return Ok(());
    };
    let offered = offered_subprotocols(headers)
        .filter_map(|p| p.strip_prefix(TOKEN_PREFIX).map(str::to_owned))
        .chain(query.token.clone());
    if offered
        .into_iter()
        .any(|given| crate::same_secret(token.as_bytes(), given.as_bytes()))
    {
        Ok(())
    } else {
        Err(refusal(
            StatusCode::UNAUTHORIZED,
            "this chat needs its access token: open the page from the link with #token=…",
        ))
    }
}

/// The client's place, and its address's budget.
///
/// A connection costs its address a frame, and its join and leave reach the
/// whole room: an address that has spent its budget does not get one until it
/// has earned some back, so reconnecting refills nothing. Echo clients serve
/// conformance tools (`--echo` only, 16 at most), which send megabytes on
/// purpose: budgets are the chat's. After the place, so that a connection
/// refused a place leaves nothing in the table of budgets.
#[allow(clippy::result_large_err)] // tungstenite's refusal type
fn claim_place(
    settings: &WsSettings,
    peer: IpAddr,
    kind: Kind,
    endpoint: Endpoint,
) -> Result<(Place, Option<Arc<Allowance>>), ErrorResponse> {
    let place = settings.places.take(kind, peer).map_err(|why| {
        // The refusal's text (logged by `serve`) is the client's; who else in its
        // /64 holds the places is for the log alone.
        if let Refusal::NetworkFull(kind, _, network) = why {
            limited!(
                Noisy::AddressFull,
                "chat place refused to {peer}: {}",
                settings.places.holders(kind, network)
            );
        }
        refusal(StatusCode::SERVICE_UNAVAILABLE, &why.to_string())
    })?;
    let allowance = match endpoint {
        Endpoint::Chat => settings.budgets.of(crate::places::host_of(peer)),
        Endpoint::Echo => None,
    };
    if let Some(Err(spent)) = allowance.as_ref().map(|a| a.admit(0)) {
        let why = format!(
            "your address has used its share of {} for now: try again in a few seconds",
            spent.what()
        );
        return Err(refusal(StatusCode::TOO_MANY_REQUESTS, &why));
    }
    Ok((place, allowance))
}

/// The first of ours the client offers, in this order (never one it did not),
/// named in `response`.
fn choose_subprotocol(headers: &HeaderMap, response: &mut Response) -> Option<&'static str> {
    let chosen = [SUBPROTOCOL_V2, SUBPROTOCOL, SUBPROTOCOL_TEXT]
        .into_iter()
        .find(|p| offers_subprotocol(headers, p))?;
    response.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static(chosen),
    );
    Some(chosen)
}

/// What the handshake's query string says. Unknown keys are ignored.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    admin: Option<String>,
    token: Option<String>,
    name: Option<String>,
    room: Option<String>,
}

impl Query {
    fn parse(query: &str) -> Query {
        let mut parsed = Query::default();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            // `+` is a space in a form-encoded query (URLSearchParams writes it).
            let Ok(value) = crate::static_files::percent_decode(&value.replace('+', " ")) else {
                continue;
            };
            match key {
                "admin" => parsed.admin = Some(value),
                "token" => parsed.token = Some(value),
                "name" => parsed.name = Some(value),
                "room" => parsed.room = Some(value),
                _ => {}
            }
        }
        parsed
    }
}

/// A complete HTTP error response: tungstenite writes exactly what we give it.
fn refusal(status: StatusCode, text: &str) -> ErrorResponse {
    error_response(status, "text/plain; charset=utf-8", format!("{text}\n"))
}

/// Engine.IO's refusal, as socket.io's own server words it: 400 and a JSON body.
fn engineio_refusal(why: socketio::Refusal) -> ErrorResponse {
    error_response(StatusCode::BAD_REQUEST, "application/json", why.body())
}

/// Never inlined: a handshake has a dozen ways to be refused, and a copy of the
/// builder at each would cost the binary kilobytes for what happens rarely.
#[inline(never)]
fn error_response(status: StatusCode, content_type: &str, body: String) -> ErrorResponse {
    let mut builder = http::Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::CONNECTION, "close");
    // Seconds: the chat full takes a while to change; an address's budget earns
    // back a connection's cost within one.
    match status {
        StatusCode::SERVICE_UNAVAILABLE => builder = builder.header(header::RETRY_AFTER, "5"),
        StatusCode::TOO_MANY_REQUESTS => builder = builder.header(header::RETRY_AFTER, "1"),
        _ => {}
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
/// `--allow-origin` names it or is `*`. This alone does not stop DNS rebinding,
/// where both names are the attacker's: the `Host` check before it does.
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

/// A subprotocol value that carries the access token: `token.<it>`.
const TOKEN_PREFIX: &str = "token.";

/// Every value the `Sec-WebSocket-Protocol` headers offer.
fn offered_subprotocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether any `Sec-WebSocket-Protocol` header lists `wanted`.
fn offers_subprotocol(headers: &HeaderMap, wanted: &str) -> bool {
    offered_subprotocols(headers).any(|p| p == wanted)
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
    fn the_query_gives_name_room_and_admin_token() {
        assert_eq!(
            Query::parse("name=Ann+Lee&room=games&admin=s%3Dcret&x=1"),
            Query {
                admin: Some("s=cret".into()),
                token: None,
                name: Some("Ann Lee".into()),
                room: Some("games".into()),
            }
        );
        assert_eq!(Query::parse(""), Query::default());
        assert_eq!(Query::parse("name=%zz").name, None);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(crate::same_secret(b"token", b"token"));
        assert!(!crate::same_secret(b"token", b"tokem"));
        assert!(!crate::same_secret(b"token", b"toke"));
        assert!(!crate::same_secret(b"token", b""));
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
