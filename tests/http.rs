//! The page side: files with their Content-Type and ETag, the same compiled in and
//! from a folder, nothing outside `www/`, the JSON endpoints, staying up under
//! slow clients, and an IPv6 peer's share of places.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Parser as _;
use support::{Client, Server, WWW, http_get, http_get_with, http_raw, socket_closed_within};

#[test]
fn page_and_assets_are_served_with_their_content_type() {
    let server = Server::start(&[]);
    let index = http_get(server.http, "/");
    assert_eq!(index.status, 200);
    assert_eq!(
        index.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    let body = String::from_utf8(index.body).unwrap();
    assert!(body.contains("id=\"chat\""), "{body}");
    assert_eq!(http_get(server.http, "/index.html").status, 200);

    for (path, content_type) in [
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/favicon.svg", "image/svg+xml"),
    ] {
        let response = http_get(server.http, path);
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(
            response.header("content-type").as_deref(),
            Some(content_type),
            "{path}"
        );
        assert!(!response.body.is_empty(), "{path}");
    }
    assert_eq!(http_get(server.http, "/missing.js").status, 404);
    assert_eq!(http_get(server.http, "/app.js?v=3").status, 200);
}

/// The headers a cache and a browser act on.
const FILE_HEADERS: [&str; 4] = [
    "content-type",
    "etag",
    "cache-control",
    "x-content-type-options",
];

#[test]
fn the_page_is_the_same_compiled_in_and_from_a_folder() {
    let compiled_in = Server::start(&[]);
    let folder = Server::start(&["--www", WWW]);

    for path in ["/", "/index.html", "/app.js", "/style.css", "/favicon.svg"] {
        let a = http_get(compiled_in.http, path);
        let b = http_get(folder.http, path);
        assert_eq!((a.status, b.status), (200, 200), "{path}");
        assert_eq!(a.body, b.body, "{path}");
        for name in FILE_HEADERS {
            assert!(a.header(name).is_some(), "{path}: no {name}");
            assert_eq!(a.header(name), b.header(name), "{path}: {name}");
        }
        assert_eq!(a.header("cache-control").as_deref(), Some("no-cache"));
        let file = if path == "/" { "/index.html" } else { path };
        let on_disk = std::fs::read(format!("{WWW}{file}")).unwrap();
        assert_eq!(a.body, on_disk, "{path}");
    }
    for (server, way) in [(&compiled_in, "compiled in"), (&folder, "folder")] {
        for path in [
            "/missing.js",
            "/../Cargo.toml",
            "/.git/config",
            "/%2e%2e/Cargo.toml",
        ] {
            assert_eq!(http_get(server.http, path).status, 404, "{way}: {path}");
        }
        assert_eq!(http_get(server.http, "/%zz").status, 400, "{way}");
    }
}

#[test]
fn a_current_copy_is_answered_304_both_ways() {
    for args in [&[][..], &["--www", WWW][..]] {
        let server = Server::start(args);
        for path in ["/", "/app.js", "/favicon.svg"] {
            let full = http_get(server.http, path);
            let etag = full.header("etag").expect("an ETag");

            let not_modified =
                http_get_with(server.http, path, &[&format!("If-None-Match: {etag}")]);
            assert_eq!(not_modified.status, 304, "{args:?} {path}");
            assert!(not_modified.body.is_empty(), "{args:?} {path}");
            assert_eq!(not_modified.header("etag"), Some(etag.clone()));
            assert_eq!(
                not_modified.header("cache-control").as_deref(),
                Some("no-cache")
            );
            // A Content-Length on a 304 must be the full response's (RFC 9110, 8.6).
            if let Some(length) = not_modified.header("content-length") {
                assert_eq!(length, full.body.len().to_string(), "{args:?} {path}");
            }

            let weak_in_a_list = format!("If-None-Match: \"old\", W/{etag}");
            assert_eq!(
                http_get_with(server.http, path, &[&weak_in_a_list]).status,
                304
            );
            let stale = http_get_with(server.http, path, &["If-None-Match: \"0-0\""]);
            assert_eq!(stale.status, 200, "{args:?} {path}");
            assert_eq!(stale.body, full.body);
        }
    }
}

#[test]
fn a_folder_is_read_on_every_request() {
    let www = std::env::temp_dir().join(format!("threadchat-edit-{}", std::process::id()));
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "<p>first</p>").unwrap();
    let server = Server::start(&["--www", www.to_str().unwrap()]);

    let first = http_get(server.http, "/");
    assert_eq!(first.body, b"<p>first</p>");
    let first_tag = first.header("etag").unwrap();

    std::fs::write(www.join("index.html"), "<p>edited</p>").unwrap();
    let revalidated = http_get_with(server.http, "/", &[&format!("If-None-Match: {first_tag}")]);
    assert_eq!(revalidated.status, 200);
    assert_eq!(revalidated.body, b"<p>edited</p>");
    assert_ne!(revalidated.header("etag").unwrap(), first_tag);
    std::fs::remove_dir_all(&www).unwrap();
}

#[test]
fn a_folder_without_a_page_is_refused_at_start() {
    let empty = std::env::temp_dir().join(format!("threadchat-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_threadchat"))
        .args(["--bind", "127.0.0.1", "--http-port", "0", "--ws-port", "0"])
        .arg("--www")
        .arg(&empty)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no index.html"), "{stderr}");
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn methods_other_than_get_and_head_get_405() {
    let server = Server::start(&[]);
    let addr = server.http;
    let post = http_raw(
        addr,
        &format!(
            "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        ),
    );
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow").as_deref(), Some("GET, HEAD"));
    let delete = http_raw(
        addr,
        &format!("DELETE /app.js HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(delete.status, 405);
    let head = http_raw(
        addr,
        &format!("HEAD / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert!(head.body.is_empty());
}

#[test]
fn nothing_outside_www_is_ever_served() {
    // A www folder of our own, with a symlink that points out of it.
    let base = std::env::temp_dir().join(format!("threadchat-www-{}", std::process::id()));
    let www = base.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(base.join("secret.txt"), "TOP SECRET").unwrap();
    std::fs::write(www.join("index.html"), "<p>hello</p>").unwrap();
    let _ = std::fs::remove_file(www.join("leak.txt"));
    std::os::unix::fs::symlink(base.join("secret.txt"), www.join("leak.txt")).unwrap();
    let server = Server::start(&["--www", www.to_str().unwrap()]);

    assert_eq!(http_get(server.http, "/").status, 200);
    for path in [
        "/../secret.txt",
        "/..%2fsecret.txt",
        "/%2e%2e/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/..\\secret.txt",
        "/%5c..%5csecret.txt",
        "/..%5csecret.txt",
        "//etc/passwd",
        "/etc/passwd",
        "/%2fetc%2fpasswd",
        "/leak.txt",
        "/./index.html",
        "/%00",
        "/%",
    ] {
        let response = http_get(server.http, path);
        assert!(
            matches!(response.status, 400 | 404),
            "{path}: {}",
            response.status
        );
        let body = String::from_utf8_lossy(&response.body);
        assert!(
            !body.contains("TOP SECRET") && !body.contains("root:"),
            "{path} leaked: {body}"
        );
    }
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn healthz_stats_and_config() {
    let server = Server::start(&[]);
    let health = http_get(server.http, "/healthz");
    assert_eq!(health.status, 200);

    let config = http_get(server.http, "/config.json");
    assert_eq!(config.status, 200);
    let config: serde_json::Value = serde_json::from_slice(&config.body).unwrap();
    assert_eq!(config["wsPort"], server.ws.port());

    let mut alice = support::Client::join(&server);
    alice.send_chat("alice", "one");
    alice.recv_type("message");
    alice.send_chat("alice", "two");
    alice.recv_type("message");
    let stats = http_get(server.http, "/stats");
    assert_eq!(stats.status, 200);
    assert!(
        stats
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let stats: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    assert_eq!(stats["clients"], 1, "{stats}");
    assert_eq!(stats["messages_relayed"], 2, "{stats}");
    assert!(stats["uptime_seconds"].is_u64(), "{stats}");
}

/// Reads one response from a kept-alive connection: status, head, body (by its
/// Content-Length; none for 304 and for HEAD).
fn read_response(stream: &mut TcpStream, head_only: bool) -> (u16, String, Vec<u8>) {
    stream.set_read_timeout(Some(support::PATIENCE)).unwrap();
    let head = support::read_head(stream);
    let status = support::status_in(&head).unwrap_or_else(|| panic!("no response: {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![
        0u8;
        if head_only || status == 304 {
            0
        } else {
            length
        }
    ];
    stream.read_exact(&mut body).unwrap();
    (status, head, body)
}

#[test]
fn pipelined_requests_on_one_connection_are_answered_in_order() {
    let server = Server::start(&[]);
    let mut stream = TcpStream::connect(server.http).unwrap();
    let host = server.http;
    stream
        .write_all(
            format!(
                "GET /app.js HTTP/1.1\r\nHost: {host}\r\n\r\n\
                 GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n\
                 HEAD / HTTP/1.1\r\nHost: {host}\r\n\r\n\
                 GET /missing HTTP/1.1\r\nHost: {host}\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let (status, head, body) = read_response(&mut stream, false);
    assert_eq!(status, 200);
    assert!(head.contains("text/javascript"), "{head}");
    assert_eq!(body, std::fs::read(format!("{WWW}/app.js")).unwrap());
    assert!(head.to_ascii_lowercase().contains("\r\ndate: "), "{head}");
    let (status, _, body) = read_response(&mut stream, false);
    assert_eq!((status, body.as_slice()), (200, &b"ok\n"[..]));
    let (status, head, _) = read_response(&mut stream, true);
    assert_eq!(status, 200);
    let index = std::fs::read(format!("{WWW}/index.html")).unwrap();
    assert!(
        head.contains(&format!("Content-Length: {}", index.len())),
        "{head}"
    );
    assert_eq!(read_response(&mut stream, false).0, 404);
    // Still open; `Connection: close` ends it after the answer.
    stream
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let (status, head, _) = read_response(&mut stream, false);
    assert_eq!(status, 200);
    assert!(head.contains("Connection: close"), "{head}");
    assert!(socket_closed_within(&mut stream, support::PATIENCE));
}

#[test]
fn an_idle_connection_is_closed_at_the_timeout_and_http10_at_once() {
    let server = Server::start(&["--http-timeout", "1"]);
    let mut idle = TcpStream::connect(server.http).unwrap();
    let host = server.http;
    // Before the request: the idle timeout starts after the answer, so this
    // measures at least the whole of it.
    let waited = Instant::now();
    idle.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut idle, false).0, 200);
    assert!(socket_closed_within(&mut idle, support::PATIENCE));
    assert!(
        waited.elapsed() >= Duration::from_millis(500),
        "{:?}",
        waited.elapsed()
    );

    // HTTP/1.0 is closed after its answer, not at the idle timeout: on a server
    // whose timeout is far beyond the wait, so a slow machine cannot blur the two.
    let patient = Server::start(&["--http-timeout", "60"]);
    let mut old = TcpStream::connect(patient.http).unwrap();
    old.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut old, false).0, 200);
    assert!(socket_closed_within(&mut old, support::PATIENCE));
}

#[test]
fn heads_without_a_host_or_with_too_many_fields_are_refused() {
    let server = Server::start(&[]);
    let no_host = http_raw(server.http, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(no_host.status, 400);
    let fields: String = (0..101).map(|i| format!("X-Field-{i}: y\r\n")).collect();
    let many = http_raw(
        server.http,
        &format!("GET / HTTP/1.1\r\nHost: {}\r\n{fields}\r\n", server.http),
    );
    assert_eq!(many.status, 431);
    let garbage = http_raw(server.http, "\x01\x02 nonsense\r\n\r\n");
    assert_eq!(garbage.status, 400);
    // The refusal's body is there, as long as its Content-Length says.
    assert_eq!(garbage.body, b"Bad Request\n");
    assert_eq!(many.body, b"Request Header Fields Too Large\n");
}

#[test]
fn when_every_page_place_is_taken_a_visitor_waits_for_one() {
    // Two places, both held by kept-alive connections that had one answer each.
    // The third visitor is not refused: it waits in the listen queue until a
    // place is given back.
    let server = Server::start(&["--max-http", "2", "--http-timeout", "60"]);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.http);
    let mut held: Vec<TcpStream> = (0..2)
        .map(|i| {
            let mut stream = support::connect_from(support::lan_host(i), server.http);
            stream.write_all(request.as_bytes()).unwrap();
            assert_eq!(read_response(&mut stream, false).0, 200);
            stream
        })
        .collect();
    let mut visitor = TcpStream::connect(server.http).unwrap();
    visitor.write_all(request.as_bytes()).unwrap();
    visitor
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = visitor.read(&mut byte);
    assert!(
        early
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "answered while every place was taken: {early:?}"
    );
    // One visitor leaves; its place goes to the one waiting.
    drop(held.pop());
    assert_eq!(read_response(&mut visitor, false).0, 200);
}

/// A server in this process on IPv6 loopback, `[::1]`, on ports of the kernel's
/// choosing (`support::Server` binds 127.0.0.1); stopped when dropped.
struct OnIpv6Loopback {
    http: SocketAddr,
    ws: SocketAddr,
    stop: Option<crossbeam_channel::Sender<threadchat::Control>>,
    thread: Option<JoinHandle<()>>,
}

impl OnIpv6Loopback {
    fn start(args: &[&str]) -> OnIpv6Loopback {
        let mut all = vec![
            "threadchat",
            "--bind",
            "::1",
            "--http-port",
            "0",
            "--ws-port",
            "0",
        ];
        all.extend_from_slice(args);
        let config = threadchat::config::Config::try_parse_from(all).expect("valid arguments");
        let listeners = threadchat::Listeners::bind(&config)
            .unwrap_or_else(|e| panic!("this machine has no IPv6 loopback (::1): {e}"));
        let (http, ws) = (
            listeners.http.local_addr().unwrap(),
            listeners.ws.local_addr().unwrap(),
        );
        let (stop, controls) = crossbeam_channel::bounded(1);
        let thread = std::thread::spawn(move || {
            threadchat::run(config, listeners, controls).expect("the server runs");
        });
        OnIpv6Loopback {
            http,
            ws,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for OnIpv6Loopback {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && let Err(panic) = thread.join()
            && !std::thread::panicking()
        {
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn over_ipv6_an_address_has_its_own_share() {
    // The /64 of ::1 holds no other address, so a second host in one /64 and the
    // /64's ceiling are the ledger's unit tests; this is the path a real IPv6
    // peer takes, from the socket's address to the refusal and the counters.
    let server = OnIpv6Loopback::start(&["--max-per-host", "2"]);
    assert!(server.http.is_ipv6() && server.ws.is_ipv6());
    let url = format!("ws://{}/", server.ws);
    let mut admitted: Vec<Client> = (0..2).map(|_| Client::connect(&url)).collect();
    for client in &mut admitted {
        client.recv_type("welcome");
    }
    let refused = Client::connect_with(&url, &[])
        .err()
        .expect("past the share");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(
        refused
            .body
            .contains("your address already has 2 chat clients"),
        "{refused:?}"
    );
    // Page connections are another share: /stats from the same address answers.
    let stats = http_get(server.http, "/stats");
    assert_eq!(stats.status, 200, "{}", stats.head);
    let stats: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    let places = &stats["places"];
    assert_eq!(places["chat"], 2, "{stats}");
    assert_eq!(places["refused_per_host"], 1, "{stats}");
    assert_eq!(places["refused_per_network"], 0, "{stats}");
}
