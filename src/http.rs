//! The web page on port 8000: tiny_http, a dispatcher thread and a few workers.
//!
//! Routes: `GET /healthz`, `GET /stats` (JSON), `GET /config.json` (tells the page
//! which port the WebSocket is on), and every other `GET`/`HEAD` a file of the page
//! (see [`crate::assets`]), with `ETag` and `Cache-Control: no-cache`: the browser
//! keeps a copy and asks each time whether it is current, and a match costs a `304`
//! with no body. Other methods get 405.
//!
//! # Keeping tiny_http within bounds
//!
//! tiny_http 0.12 is simple and small, and has three gaps for a server that must
//! not fall over: it has no timeouts (a client that sends half a request holds a
//! pool thread for ever), its pool grows a thread per connection without bound, and
//! its accept thread treats any `accept` error as fatal (it ends, and port 8000
//! silently stops answering). Rather than fork it, we close each gap from outside:
//!
//! * **Time.** `SO_RCVTIMEO` and `SO_SNDTIMEO` set on the *listening* socket are
//!   inherited by every socket it accepts (Linux). So every read or write on an
//!   HTTP connection gives up after `--http-timeout`, and a stalled or idle client
//!   loses its connection and frees its thread. This bounds each wait, not a whole
//!   request: a client that trickles a byte just inside every timeout keeps its
//!   connection, and is bounded by the count below instead.
//! * **Count.** Each HTTP connection costs two descriptors, and the process's soft
//!   `RLIMIT_NOFILE` is set at start to what the capacity plan allows (see
//!   [`crate::capacity`]). A flood of connections hits `EMFILE` long before its
//!   threads could reach the thread ceiling.
//! * **A dead accept thread.** The listener's timeout also makes the idle `accept()`
//!   time out, and `EMFILE` is an accept error too: both end tiny_http's accept
//!   thread, and `recv()` returns the error. The dispatcher then starts a fresh
//!   `Server` on a clone of the same listening socket (once a client is waiting:
//!   see the next section). The socket itself never
//!   closes, so a client connecting meanwhile waits in the listen backlog instead of
//!   being refused. The old server's idle pool threads exit within 5 s. tiny_http
//!   also `unwrap`s a `try_clone` in its accept thread, which panics under
//!   `EMFILE`; a panic hook notices panics from tiny_http's code and unblocks the
//!   dispatcher, which restarts the server the same way.
//!
//! # Sleeping while nobody visits
//!
//! The listener's timeout also ends the idle accept: with nobody visiting,
//! tiny_http's accept thread would die and be restarted once per `--http-timeout`,
//! for ever, and a small host would never sleep. So the dispatcher does not
//! restart it straight away: it blocks in `poll()` on the listening socket until a
//! client is waiting in the backlog, and only then starts the next server. A
//! server that nobody visits costs no wake-up at all; a visit costs one more, a
//! timeout after the last connection.
//!
//! That is also when the dead server is dropped: tiny_http's `Drop` connects to its
//! own port to unblock an accept thread that is already gone. Dropped while nobody
//! is visiting, that goodbye connection would sit in the backlog and wake the
//! dispatcher at once; dropped after a real client arrived, it is one more
//! connection the new server reads to its end.
//!
//! One window remains: a keep-alive connection accepted by the old server stays
//! with the old server's pool, and a request on it that is parsed just after the
//! switch lands in a queue nobody reads; its connection ends at its read timeout
//! (browsers retry such a request on a new connection). It takes a connection idle
//! for almost exactly the timeout to hit that window.

use std::io::{self, Cursor};
use std::net::TcpListener;
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};
use rustix::event::{PollFd, PollFlags, poll};
use rustix::net::sockopt::{Timeout, set_socket_timeout};
use tiny_http::{Header, Method, Request, Response, Server, StatusCode};

use crate::assets::{Page, Unavailable};
use crate::stats::Stats;

/// Threads that answer requests. tiny_http's pool reads and parses requests; these
/// only write responses, each bounded by the write timeout.
const WORKERS: usize = 4;

/// Requests parsed but not yet picked up by a worker.
const QUEUE: usize = 64;

/// Shortest and longest pause before restarting tiny_http after an error other
/// than the idle timeout.
const RESTART_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// What the request handlers need.
pub struct Site {
    /// The page's files.
    pub page: Page,
    /// Counters for `/stats`.
    pub stats: Arc<Stats>,
    /// The WebSocket port, for `/config.json`.
    pub ws_port: u16,
}

/// The server being served from now, so the panic hook can unblock it.
type Current = Arc<Mutex<Weak<Server>>>;

/// Starts the HTTP side on `listener`: the dispatcher thread `http` and workers
/// `http-1`..`http-4`.
pub fn start(listener: TcpListener, timeout: Duration, site: Site) -> io::Result<()> {
    set_socket_timeout(&listener, Timeout::Recv, Some(timeout))?;
    set_socket_timeout(&listener, Timeout::Send, Some(timeout))?;
    let site = Arc::new(site);
    let (requests, work) = bounded::<Request>(QUEUE);
    for n in 1..=WORKERS {
        let work = work.clone();
        let site = Arc::clone(&site);
        thread::Builder::new()
            .name(format!("http-{n}"))
            .spawn(move || serve_requests(&work, &site))?;
    }
    let current: Current = Arc::new(Mutex::new(Weak::new()));
    watch_for_tiny_http_panics(Arc::clone(&current));
    thread::Builder::new()
        .name("http".into())
        .spawn(move || dispatch(&listener, &requests, &current))?;
    Ok(())
}

/// The dispatcher: wait for a visitor, run a tiny_http server on the listener,
/// hand its requests to the workers, and when it dies go back to waiting.
fn dispatch(listener: &TcpListener, requests: &Sender<Request>, current: &Current) {
    let mut backoff = RESTART_BACKOFF.0;
    let mut retired: Option<Arc<Server>> = None;
    loop {
        if let Err(e) = wait_for_a_client(listener) {
            log::warn!("http: cannot wait for connections ({e}); retrying in {backoff:?}");
            thread::sleep(backoff);
            backoff = (backoff * 2).min(RESTART_BACKOFF.1);
            continue;
        }
        // Its goodbye connection now lands behind the client that woke us.
        drop(retired.take());
        let server = match listener.try_clone() {
            Ok(clone) => Server::from_listener(clone, None).map(Arc::new),
            Err(e) => Err(e.into()),
        };
        let server = match server {
            Ok(server) => server,
            Err(e) => {
                log::warn!("http: cannot start ({e}); retrying in {backoff:?}");
                thread::sleep(backoff);
                backoff = (backoff * 2).min(RESTART_BACKOFF.1);
                continue;
            }
        };
        *current.lock().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(&server);
        loop {
            match server.recv() {
                Ok(request) => {
                    backoff = RESTART_BACKOFF.0;
                    if requests.send(request).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    log::debug!(
                        "http: no new connection within the timeout; sleeping until the next one"
                    );
                    break;
                }
                Err(e) => {
                    log::warn!("http: accept thread ended ({e}); restarting in {backoff:?}");
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(RESTART_BACKOFF.1);
                    break;
                }
            }
        }
        retired = Some(server);
    }
}

/// Blocks, with no timeout, until a connection waits in the listen backlog.
fn wait_for_a_client(listener: &TcpListener) -> io::Result<()> {
    let mut fds = [PollFd::new(listener, PollFlags::IN)];
    loop {
        match poll(&mut fds, None) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Makes a panic in tiny_http's own threads (its accept thread `unwrap`s) restart
/// the HTTP side instead of leaving port 8000 dead. Other panics go to the
/// previous hook as usual.
fn watch_for_tiny_http_panics(current: Current) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_tiny_http = info
            .location()
            .is_some_and(|l| l.file().contains("tiny_http"));
        if !in_tiny_http {
            previous(info);
            return;
        }
        log::warn!("http: a tiny_http thread panicked ({info}); restarting the HTTP side");
        let server = current.lock().ok().and_then(|weak| weak.upgrade());
        if let Some(server) = server {
            server.unblock();
        }
    }));
}

fn serve_requests(work: &Receiver<Request>, site: &Site) {
    for request in work {
        let response = respond_to(&request, site);
        if let Err(e) = request.respond(response) {
            log::debug!("http: response not sent: {e}");
        }
    }
}

/// Routes one request.
fn respond_to(request: &Request, site: &Site) -> Response<Box<dyn io::Read + Send>> {
    if !matches!(request.method(), Method::Get | Method::Head) {
        return text(405, "method not allowed\n").with_header(header("Allow", "GET, HEAD"));
    }
    let path = request.url().split(['?', '#']).next().unwrap_or("");
    match path {
        "/healthz" => text(200, "ok\n"),
        "/stats" => json(&site.stats.snapshot()),
        "/config.json" => json(&serde_json::json!({ "wsPort": site.ws_port, "wsPath": "/" })),
        _ => file(request, &site.page, path),
    }
}

/// A file of the page, or 304 when the browser's copy is current.
fn file(request: &Request, page: &Page, path: &str) -> Response<Box<dyn io::Read + Send>> {
    let asset = match page.get(path) {
        Ok(asset) => asset,
        Err(Unavailable::BadRequest) => return text(400, "bad request\n"),
        Err(Unavailable::NotFound) => return text(404, "not found\n"),
        Err(Unavailable::TooLarge) => return text(500, "file too large to serve\n"),
    };
    let validators = vec![
        header("ETag", &asset.etag),
        header("Cache-Control", "no-cache"),
    ];
    let if_none_match = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("If-None-Match"));
    if if_none_match.is_some_and(|h| etag_matches(h.value.as_str(), &asset.etag)) {
        // No body; a Content-Length, if any, must be the 200's (RFC 9110, 8.6).
        let empty: Box<dyn io::Read + Send> = Box::new(io::empty());
        let length = Some(asset.bytes.len());
        return Response::new(StatusCode(304), validators, empty, length, None);
    }
    let length = asset.bytes.len();
    let mut headers = validators;
    headers.push(header("Content-Type", &asset.content_type));
    headers.push(header("X-Content-Type-Options", "nosniff"));
    let body: Box<dyn io::Read + Send> = Box::new(Cursor::new(asset.bytes));
    Response::new(StatusCode(200), headers, body, Some(length), None)
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

fn text(status: u16, body: &str) -> Response<Box<dyn io::Read + Send>> {
    Response::from_string(body)
        .with_status_code(StatusCode(status))
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
        .boxed()
}

fn json(value: &impl serde::Serialize) -> Response<Box<dyn io::Read + Send>> {
    let body = serde_json::to_string(value).expect("plain data serialises");
    Response::from_string(body)
        .with_header(header("Content-Type", "application/json"))
        .with_header(header("Cache-Control", "no-store"))
        .boxed()
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("header names and values here are ASCII written by us")
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
}
