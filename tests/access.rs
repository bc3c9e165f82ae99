//! The access token (`--token`, `--token-file`): who gets in, how a page presents
//! it, that `/stats` asks for it too while nothing open tells counts, and that it
//! never shows in an answer or a log line.

mod support;

use serde_json::Value;
use support::{Client, Process, Running, Server, raw_handshake, run_binary};

const TOKEN: &str = "pi-chat.42_x~";

fn with_protocols(protocols: &str) -> [(&'static str, &str); 1] {
    [("Sec-WebSocket-Protocol", protocols)]
}

fn config_json(server: &impl Running) -> Value {
    let response = support::http_get(server.http_addr(), "/config.json");
    assert_eq!(response.status, 200);
    serde_json::from_slice(&response.body).expect("config.json is JSON")
}

#[test]
fn without_the_token_the_handshake_gets_401() {
    let server = Server::start(&["--token", TOKEN]);
    let refusals = [
        Client::connect_with(&server.ws_url("/"), &[]),
        Client::connect_with(&server.ws_url("/?token=pi-chat.43_x~"), &[]),
        Client::connect_with(&server.ws_url("/?token="), &[]),
        Client::connect_with(
            &server.ws_url("/"),
            &with_protocols("threadchat.v2, token.wrong"),
        ),
        // The token as a bare subprotocol value, or under another prefix, is not it.
        Client::connect_with(&server.ws_url("/"), &with_protocols(TOKEN)),
        Client::connect_with(&server.ws_url("/text"), &[]),
    ];
    for refusal in refusals {
        let refused = refusal.err().expect("refused");
        assert_eq!(refused.status, 401, "{refused:?}");
        assert!(refused.body.contains("access token"), "{refused:?}");
        assert!(!refused.body.contains(TOKEN), "{refused:?}");
    }
    assert_eq!(config_json(&server)["token"], true);
}

#[test]
fn the_token_in_the_query_or_as_a_subprotocol_lets_a_client_in() {
    let server = Server::start(&["--token", TOKEN]);
    let mut by_query = Client::connect(&server.ws_url(&format!("/?token={TOKEN}")));
    assert_eq!(by_query.recv_type("welcome")["protocol"], "threadchat.v1");
    let offer = format!("threadchat.v2, token.{TOKEN}");
    let mut by_protocol = Client::connect_with(&server.ws_url("/"), &with_protocols(&offer))
        .expect("admitted with the token as a subprotocol");
    // The chat subprotocol is selected, never the one carrying the token.
    assert_eq!(by_protocol.protocol.as_deref(), Some("threadchat.v2"));
    by_protocol.recv_type("welcome");
    let mut plain = Client::connect(&server.ws_url(&format!("/text?token={TOKEN}&name=tina")));
    plain.send_text("hello from a plain-text client");
    for client in [&mut by_query, &mut by_protocol] {
        let frame = loop {
            let frame = client.recv_json();
            if frame["type"] == "message" {
                break frame;
            }
        };
        assert_eq!(frame["msg"], "hello from a plain-text client", "{frame}");
    }

    // Offered alone, `token.T` admits the client and nothing is selected: the
    // token is not sent back.
    let (status, head) = raw_handshake(
        server.ws_addr(),
        "/",
        &[&format!("Sec-WebSocket-Protocol: token.{TOKEN}")],
    );
    assert_eq!(status, 101, "{head}");
    assert!(!head.contains(TOKEN), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("sec-websocket-protocol"),
        "{head}"
    );
}

#[test]
fn with_a_token_stats_needs_it_and_what_stays_open_tells_no_counts() {
    let server = Server::start(&["--token", TOKEN]);
    let open_answers = || {
        let health = support::http_get(server.http, "/healthz");
        assert_eq!(health.status, 200);
        (
            String::from_utf8_lossy(&health.body).into_owned(),
            config_json(&server),
        )
    };
    let before = open_answers();
    let mut alice = Client::connect(&server.ws_url(&format!("/?token={TOKEN}")));
    alice.recv_type("welcome");
    alice.send_chat("alice", "counted");
    alice.recv_type("message");

    let refused = [
        support::http_get(server.http, "/stats"),
        support::http_get(server.http, "/stats?token=pi-chat.43_x~"),
        support::http_get(server.http, &format!("/stats?tokens={TOKEN}")),
        support::http_get_with(server.http, "/stats", &["Authorization: Bearer wrong"]),
        support::http_get_with(
            server.http,
            "/stats",
            &[&format!("Authorization: Basic {TOKEN}")],
        ),
    ];
    for answer in refused {
        let body = String::from_utf8_lossy(&answer.body);
        assert_eq!(answer.status, 401, "{}\n{body}", answer.head);
        assert_eq!(answer.header("www-authenticate").as_deref(), Some("Bearer"));
        assert!(
            body.contains("access token") && !body.contains(TOKEN),
            "{body}"
        );
        assert!(
            !body.chars().any(|c| c.is_ascii_digit()),
            "a count in {body}"
        );
    }
    let admitted = [
        support::http_get(server.http, &format!("/stats?token={TOKEN}")),
        support::http_get(
            server.http,
            &format!("/stats?x=1&token={}", "pi-chat.42_x%7E"),
        ),
        support::http_get_with(
            server.http,
            "/stats",
            &[&format!("Authorization: Bearer {TOKEN}")],
        ),
        support::http_get_with(
            server.http,
            "/stats",
            &[&format!("authorization: bearer  {TOKEN}")],
        ),
    ];
    for answer in admitted {
        assert_eq!(answer.status, 200, "{}", answer.head);
        let stats: Value = serde_json::from_slice(&answer.body).expect("/stats is JSON");
        assert_eq!(stats["clients"], 1, "{stats}");
        assert_eq!(stats["messages_relayed"], 1, "{stats}");
    }

    // What anyone may read is the same with a client in and a message relayed as
    // before: it holds no count. `/config.json` holds only what a page needs to connect.
    let (health, config) = open_answers();
    assert_eq!((health.as_str(), &config), (before.0.as_str(), &before.1));
    assert_eq!(health, "ok\n");
    let mut keys: Vec<&str> = config
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["token", "wsPath", "wsPort"], "{config}");
}

#[test]
fn without_a_token_anyone_may_connect() {
    let server = Server::start(&[]);
    let mut client = Client::connect(&server.ws_url("/?token=whatever"));
    client.recv_type("welcome");
    assert_eq!(config_json(&server)["token"], false);
}

#[test]
fn the_token_can_come_from_a_file() {
    let dir = std::env::temp_dir().join(format!("threadchat-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, format!("{TOKEN}\nthe rest is ignored\n")).unwrap();
    let server = Server::start(&["--token-file", file.to_str().unwrap()]);
    let refused = Client::connect_with(&server.ws_url("/"), &[]).err();
    assert_eq!(refused.map(|r| r.status), Some(401));
    let mut client = Client::connect(&server.ws_url(&format!("/?token={TOKEN}")));
    client.recv_type("welcome");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_says_whether_a_token_is_needed_and_rejects_bad_ones() {
    let dir = std::env::temp_dir().join(format!("threadchat-token-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (good, empty) = (dir.join("good"), dir.join("empty"));
    std::fs::write(&good, "from-a-file\n").unwrap();
    std::fs::write(&empty, "\n").unwrap();
    let report = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["--check-config"];
        all.extend_from_slice(args);
        let output = run_binary(&all, env);
        let text = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    };

    let (ok, text) = report(&["--token", "s3cret"], &[]);
    assert!(
        ok && text.contains("must present the access token"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
    let (ok, text) = report(&[], &[("THREADCHAT_TOKEN", "s3cret")]);
    assert!(
        ok && text.contains("must present the access token"),
        "{text}"
    );
    let (ok, text) = report(&["--token-file", good.to_str().unwrap()], &[]);
    assert!(
        ok && text.contains("must present the access token"),
        "{text}"
    );
    // An empty variable, as in the commented settings file, means no token.
    let (ok, text) = report(&[], &[("THREADCHAT_TOKEN", "")]);
    assert!(ok && text.contains("open to anyone"), "{text}");

    let (ok, text) = report(
        &["--token", "a", "--token-file", good.to_str().unwrap()],
        &[],
    );
    assert!(!ok && text.contains("not both"), "{text}");
    let (ok, text) = report(&["--token-file", empty.to_str().unwrap()], &[]);
    assert!(!ok && text.contains("empty"), "{text}");
    let (ok, text) = report(&["--token-file", dir.join("absent").to_str().unwrap()], &[]);
    assert!(!ok && text.contains("--token-file"), "{text}");
    let (ok, text) = report(&["--token", "two words"], &[]);
    assert!(!ok && text.contains("letters, digits"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_access_token_never_reaches_the_log() {
    let server = Process::start_with_env(
        &[],
        &[
            ("THREADCHAT_TOKEN", "tok-5ecret-xyz"),
            ("RUST_LOG", "trace"),
        ],
    );
    support::http_get(server.http, "/?token=tok-5ecret-xyz");
    for wrong in ["/stats?token=tok-5ecret-xyq", "/stats?token=tok-5ecret-xyz"] {
        support::http_get(server.http, wrong);
    }
    support::http_get_with(
        server.http,
        "/stats",
        &["Authorization: Bearer tok-5ecret-xyq"],
    );
    let mut by_query = Client::connect(&server.ws_url("/?token=tok-5ecret-xyz"));
    by_query.recv_type("welcome");
    let mut by_protocol = Client::connect_with(
        &server.ws_url("/"),
        &with_protocols("threadchat.v1, token.tok-5ecret-xyz"),
    )
    .expect("admitted");
    by_protocol.recv_type("welcome");
    let wrong = [
        Client::connect_with(&server.ws_url("/?token=tok-5ecret-xyq"), &[]).err(),
        Client::connect_with(
            &server.ws_url("/"),
            &with_protocols("threadchat.v1, token.tok-5ecret-xyq"),
        )
        .err(),
    ];
    assert!(
        wrong
            .iter()
            .all(|r| r.as_ref().map(|r| r.status) == Some(401))
    );
    drop((by_query, by_protocol));
    // The client reads its 401 before the server writes the line: wait for both.
    support::eventually("both refusals and both leaves are logged", || {
        let log = server.log_text();
        log.matches("refused with 401").count() == 2 && log.matches("disconnected").count() == 2
    });
    let log = server.log_text();
    assert!(!log.contains("5ecret"), "the token is in the log:\n{log}");
}
