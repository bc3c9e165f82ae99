//! The page side: files with their Content-Type and ETag, the same compiled in and
//! from a folder, nothing outside `www/`, the JSON endpoints, and staying up under
//! slow clients.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{Server, WWW, http_get, http_get_with, http_raw, socket_closed_within};

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
    compiled_in.wait_for_log("page: compiled in (4 files)");
    folder.wait_for_log("page: folder ");

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

#[test]
fn stalled_http_clients_neither_block_the_page_nor_stay_forever() {
    let server = Server::start(&["--http-timeout", "2"]);
    // 200 clients that send half a request and stall.
    let mut stalled: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(server.http).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();

    let started = Instant::now();
    let page = http_get(server.http, "/");
    let took = started.elapsed();
    assert_eq!(page.status, 200);
    assert!(
        took < Duration::from_secs(1),
        "GET / took {took:?} with 200 stalled clients"
    );

    // Each stalled connection is closed by the server within its timeout (2 s),
    // with margin for a slow machine.
    let deadline = Instant::now() + Duration::from_secs(8);
    for (i, s) in stalled.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            socket_closed_within(s, left),
            "stalled client {i} still open after the timeout"
        );
    }
    assert_eq!(http_get(server.http, "/").status, 200);
}

#[test]
fn the_http_side_comes_back_after_its_accept_thread_ends() {
    // With a 1 s timeout the idle accept() times out and tiny_http's accept thread
    // ends, as it would on EMFILE; the dispatcher sleeps until the next visitor and
    // then starts a new one, each time.
    let server = Server::start_with_env(
        &["--http-timeout", "1"],
        &[("RUST_LOG", "info,threadchat::http=debug")],
    );
    assert_eq!(http_get(server.http, "/healthz").status, 200);
    server.wait_for_log("sleeping until the next one");
    assert_eq!(http_get(server.http, "/healthz").status, 200);
    support::eventually("a second sleep", || {
        server.count_log("sleeping until the next one") >= 2
    });
    assert_eq!(http_get(server.http, "/").status, 200);
    assert_eq!(http_get(server.http, "/app.js").status, 200);
}
