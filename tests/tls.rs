//! https and wss (`--tls-cert`/`--tls-key`): the same chat, page and limits over
//! TLS, with a certificate made in the test and clients that check it.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use support::*;
use tungstenite::Message;

fn start(cert: &TestCert, more: &[&str]) -> Server {
    let args = cert.args();
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(more);
    Server::start(&all)
}

#[test]
fn the_page_is_https_and_the_chat_is_wss() {
    let cert = TestCert::new("chat");
    let server = start(&cert, &unthrottled(&[]));
    let page = cert.get(server.http_addr(), "/");
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("<html"));
    let config = cert.get(server.http_addr(), "/config.json");
    assert_eq!(config.status, 200);

    let mut ann = cert.join(&server);
    let mut bob = cert.join(&server);
    ann.recv_type("notification");
    // Enough to need many records, and a batch now and then.
    for i in 0..200 {
        ann.send_chat("ann", &format!("hello {i} {}", "x".repeat(i * 10)));
    }
    for i in 0..200 {
        let got = bob.recv_type("message");
        assert_eq!(got["msg"], format!("hello {i} {}", "x".repeat(i * 10)));
    }
    assert_eq!(ann.recv_type("message")["name"], "ann");
    bob.ws.close(None).unwrap();
    let _ = bob.recv_close();
    eventually("bob's close is counted", || {
        cert.stats(&server)["disconnects"]["closed"] == 1
    });
}

#[test]
fn echo_works_over_wss_with_large_messages() {
    let cert = TestCert::new("echo");
    let server = start(
        &cert,
        &[
            "--echo",
            "--max-message",
            "2000000",
            "--max-backlog",
            "8000000",
        ],
    );
    let url = format!("wss://localhost:{}/echo", server.ws_addr().port());
    let mut echo = cert.connect(&url).expect("handshake");
    // A megabyte arrives as 16 KiB records far faster than it is read out, 1 KiB
    // at a time: the reader must keep what rustls cannot take yet.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..3 {
        echo.ws.send(Message::binary(big.clone())).unwrap();
        assert_eq!(echo.recv(), Message::binary(big.clone()));
    }
    echo.send_text("short");
    assert_eq!(echo.recv(), Message::text("short"));
}

#[test]
fn a_foreign_origin_is_refused_over_wss() {
    let cert = TestCert::new("origin");
    let server = start(&cert, &[]);
    let url = format!("wss://localhost:{}/", server.ws_addr().port());
    let refused = cert
        .connect_with(&url, &[("origin", "https://evil.example")])
        .err()
        .expect("refused");
    assert_eq!(refused.status, 403);
    let ok = cert.connect_with(&url, &[("origin", "https://localhost:8000")]);
    assert!(ok.is_ok());
}

#[test]
fn an_oversize_message_closes_with_1009_over_wss() {
    let cert = TestCert::new("big");
    let server = start(&cert, &["--max-message", "4096"]);
    let mut big = cert.join(&server);
    let mut other = cert.join(&server);
    big.send_chat("big", &"x".repeat(10_000));
    assert_eq!(big.recv_close(), 1009);
    eventually("the 1009 is counted", || {
        cert.stats(&server)["disconnects"]["too_big"] == 1
    });
    other.send_chat("o", "still here");
    assert_eq!(other.recv_type("message")["msg"], "still here");
}

#[test]
fn shutdown_sends_1001_over_wss() {
    let cert = TestCert::new("stop");
    let server = start(&cert, &[]);
    let mut chat = cert.join(&server);
    let stopping = thread::spawn(move || drop(server));
    assert_eq!(chat.recv_close(), 1001);
    let _ = chat.ws.flush();
    stopping.join().unwrap();
}

#[test]
fn the_heartbeat_drops_a_silent_wss_client_and_keeps_a_live_one() {
    let cert = TestCert::new("heartbeat");
    let server = start(&cert, &["--ping-interval", "1"]);
    let mut live = cert.join(&server);
    // Completes its handshakes, then never reads: it never answers a ping.
    let mut silent = cert.join(&server);
    live.recv_type("notification");
    let left = live.recv_type("notification");
    assert_eq!(left["event"], "leave");
    eventually("the silence is counted", || {
        cert.stats(&server)["disconnects"]["silent"] == 1
    });
    assert!(silent.wait_for_socket_closed());
    live.send_chat("l", "still here");
    assert_eq!(live.recv_type("message")["msg"], "still here");
}

#[test]
fn plain_http_to_either_tls_port_is_closed_and_nobody_else_notices() {
    let cert = TestCert::new("plain");
    let server = start(&cert, &[]);
    let mut honest = cert.join(&server);
    for addr in [server.ws_addr(), server.http_addr()] {
        let mut plain = TcpStream::connect(addr).unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\r\n")
            .unwrap();
        // A TLS alert at most, then the end: never an HTTP answer.
        plain.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut got = Vec::new();
        let _ = plain.read_to_end(&mut got);
        assert!(
            !got.starts_with(b"HTTP/"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(got.len() < 64, "{} bytes", got.len());
    }
    eventually("the failed handshake is counted", || {
        cert.stats(&server)["handshakes"]["failed"] == 1
    });
    honest.send_chat("h", "still here");
    assert_eq!(honest.recv_type("message")["msg"], "still here");
}

#[test]
fn a_stalled_tls_handshake_is_closed_by_the_deadline() {
    let cert = TestCert::new("stall");
    let server = start(&cert, &["--handshake-timeout", "1", "--http-timeout", "1"]);
    // One that never sends a ClientHello, and one that stops half way through it
    // (a record header announcing 512 bytes, and 5 of them).
    let half_hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];
    for addr in [server.ws_addr(), server.http_addr()] {
        for bytes in [&[][..], &half_hello[..]] {
            // Before connecting: the server's deadline starts at its accept, so
            // this is sure to measure at least the whole of it.
            let opened = Instant::now();
            let mut stalled = TcpStream::connect(addr).unwrap();
            stalled.write_all(bytes).unwrap();
            assert!(socket_closed_within(&mut stalled, PATIENCE), "never closed");
            let took = opened.elapsed();
            assert!(
                took >= Duration::from_millis(900) && took < Duration::from_secs(5),
                "closed after {took:?}"
            );
        }
    }
    eventually("the chat port's timeouts are counted", || {
        cert.stats(&server)["handshakes"]["timed_out"] == 2
    });
    // A real client is served meanwhile and after.
    let mut chat = cert.join(&server);
    chat.send_chat("c", "fine");
    assert_eq!(chat.recv_type("message")["msg"], "fine");
}

#[test]
fn a_slow_wss_reader_gets_everything_in_order_and_one_that_never_reads_is_cut_off() {
    let cert = TestCert::new("slow");
    let server = start(&cert, &unthrottled(&["--max-backlog", "4000000"]));
    let url = format!("wss://localhost:{}/", server.ws_addr().port());
    let mut sender = cert.join(&server);
    // Small receive buffers, so the server's writes stop early and writer threads
    // take over: those clients' records are then sealed by their writer threads.
    let small = || {
        cert.wrap(
            connect_with_receive_buffer(server.ws_addr(), 4096),
            "localhost",
        )
    };
    let mut slow = Client::handshake_over(small(), &url, &[]).expect("handshake");
    assert_eq!(slow.recv_json()["type"], "welcome");
    let mut never = Client::handshake_over(small(), &url, &[]).expect("handshake");
    sender.recv_type("notification");
    sender.recv_type("notification");

    let stop = Arc::new(AtomicBool::new(false));
    let sending = thread::spawn({
        let stop = Arc::clone(&stop);
        move || {
            let text = "y".repeat(1900);
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                sender.send_chat("s", &format!("{sent} {text}"));
                // Its own copy back every 50: the honest clients stay within reach.
                if sent % 50 == 49 {
                    while sender.recv_type("message")["msg"] != format!("{sent} {text}") {}
                }
                sent += 1;
            }
            // Its own "done" back before it goes: a socket closed with unread input
            // is reset, and a reset can destroy what it sent last.
            sender.send_chat("s", "done");
            while sender.recv_type("message")["msg"] != "done" {}
            sent
        }
    });
    let reading = thread::spawn(move || {
        let mut next = 0;
        loop {
            let got = slow.recv_json();
            if got["type"] != "message" {
                continue;
            }
            let msg = got["msg"].as_str().unwrap();
            if msg == "done" {
                return next;
            }
            assert_eq!(msg.split(' ').next(), Some(next.to_string().as_str()));
            next += 1;
            if next % 500 == 0 {
                thread::sleep(Duration::from_millis(50)); // the slow reader being modelled
            }
        }
    });
    eventually_within(
        Duration::from_secs(60),
        "the one that never reads is cut off",
        || cert.stats(&server)["disconnects"]["slow_consumer"] == 1,
    );
    stop.store(true, Ordering::Relaxed);
    let sent = sending.join().unwrap();
    let read = reading.join().unwrap();
    assert_eq!(read, sent, "the slow reader missed messages");
    assert!(never.wait_for_socket_closed());
}

#[test]
fn bad_certificate_files_stop_the_start_with_a_clear_error() {
    let cert = TestCert::new("bad");
    let other = TestCert::new("other");
    let garbage = cert.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = cert.dir.join("missing.pem");
    let path = |p: &std::path::Path| p.display().to_string();
    let cases: [(Vec<String>, &str); 5] = [
        (
            vec!["--tls-cert".into(), path(&cert.cert)],
            "--tls-cert needs --tls-key",
        ),
        (
            vec!["--tls-key".into(), path(&cert.key)],
            "--tls-key needs --tls-cert",
        ),
        (
            vec![
                "--tls-cert".into(),
                path(&garbage),
                "--tls-key".into(),
                path(&cert.key),
            ],
            "no certificate in it",
        ),
        (
            vec![
                "--tls-cert".into(),
                path(&missing),
                "--tls-key".into(),
                path(&cert.key),
            ],
            "No such file",
        ),
        (
            vec![
                "--tls-cert".into(),
                path(&cert.cert),
                "--tls-key".into(),
                path(&other.key),
            ],
            "is not the key of the certificate",
        ),
    ];
    for (tls_args, expected) in cases {
        let mut args: Vec<&str> = vec!["--bind", "127.0.0.1", "--http-port", "0", "--ws-port", "0"];
        args.extend(tls_args.iter().map(String::as_str));
        let out = run_binary(&args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        // Nothing was listening: the error came before the ports were bound.
        assert!(!stderr.contains("listening"), "{stderr}");
        // The same verdict from --check-config.
        args.push("--check-config");
        let out = run_binary(&args, &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(expected));
    }
    // And a good pair is accepted by --check-config, which says https and wss.
    let args = cert.args();
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.push("--check-config");
    let out = run_binary(&all, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("page https://") && stdout.contains("chat wss://"),
        "{stdout}"
    );
}

#[test]
fn the_page_and_per_host_limits_hold_over_tls_too() {
    let cert = TestCert::new("limits");
    let server = start(
        &cert,
        &["--max-handshakes-per-host", "2", "--max-http-per-host", "2"],
    );
    let attacker: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    // Idle TLS-less connections from one host: its share of handshakes and of page
    // connections is taken, the rest are closed at once.
    for (addr, kept) in [(server.ws_addr(), 2), (server.http_addr(), 2)] {
        let mut idle: Vec<TcpStream> = (0..6).map(|_| connect_from(attacker, addr)).collect();
        let mut closed = 0;
        for stream in &mut idle {
            closed += usize::from(socket_closed_within(stream, Duration::from_secs(1)));
        }
        assert_eq!(closed, 6 - kept, "on {addr}");
    }
    // The honest user on 127.0.0.1 is not that host.
    let mut chat = cert.join(&server);
    chat.send_chat("c", "fine");
    assert_eq!(chat.recv_type("message")["msg"], "fine");
    assert_eq!(cert.get(server.http_addr(), "/healthz").status, 200);

    // A request head that never ends, over https: 431 at 16 KiB, as over http.
    let tcp = TcpStream::connect(server.http_addr()).unwrap();
    let mut tls = cert.wrap(tcp, "localhost");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Long: ")
        .unwrap();
    let filler = vec![b'a'; 1024];
    let mut answer = Vec::new();
    for _ in 0..64 {
        if tls.write_all(&filler).is_err() {
            break;
        }
    }
    let _ = tls.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(80)])
    );
}

#[test]
fn socket_io_clients_chat_over_wss_on_both_ports() {
    let cert = TestCert::new("socketio");
    let server = start(&cert, &[]);
    let path = "/socket.io/?EIO=4&transport=websocket";
    // On the page port, the connection is handed over with its TLS session.
    let mut json = cert.join(&server);
    let mut clients: Vec<Client> = [server.http, server.ws]
        .iter()
        .map(|addr| {
            let url = format!("wss://localhost:{}{path}", addr.port());
            let mut client = cert.connect(&url).expect("a wss handshake");
            let Message::Text(open) = client.recv() else {
                panic!("an open packet");
            };
            assert!(open.starts_with(r#"0{"sid":"#), "{open}");
            client.send_text("40");
            assert!(socket_io_text(&mut client).starts_with(r#"40{"sid":"#));
            client
        })
        .collect();
    clients[0].send_text(r#"42["message",{"name":"sio","msg":"over wss"}]"#);
    assert_eq!(json.recv_type("message")["msg"], "over wss");
    for client in &mut clients {
        let heard = loop {
            let text = socket_io_text(client);
            if text.starts_with(r#"42["message","#) {
                break text;
            }
        };
        assert!(heard.contains(r#""msg":"over wss""#), "{heard}");
    }
}

/// The next text frame of a Socket.IO client.
fn socket_io_text(client: &mut Client) -> String {
    match client.recv() {
        Message::Text(text) => text.to_string(),
        other => panic!("expected a packet, got {other:?}"),
    }
}
