//! Running as a service: settings from the environment, `--check-config`, JSON log
//! lines, SIGHUP, and the files in `dist/` agreeing with the binary.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use rustix::process::Signal;
use support::{Client, Ports, Process, TestCert, WWW, http_get, run_binary};

const DIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dist");

/// The `THREADCHAT_*` variables `--help` lists, one per flag.
fn variables_in_help() -> BTreeSet<String> {
    let help = run_binary(&["--help"], &[]);
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    let flags_with_values = help
        .lines()
        .filter(|l| l.trim_start().starts_with("--") && l.contains('<'))
        .count();
    let variables: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| rest.split('=').next().unwrap().to_string())
        .collect();
    assert_eq!(
        variables.len(),
        flags_with_values,
        "every flag that takes a value has a variable:\n{help}"
    );
    variables
}

/// `NAME=value` lines of `dist/threadchat.env`, commented out or not.
fn example_settings() -> Vec<(String, String)> {
    let example = std::fs::read_to_string(format!("{DIST}/threadchat.env")).unwrap();
    example
        .lines()
        .map(|l| l.strip_prefix('#').unwrap_or(l))
        .filter_map(|l| l.split_once('='))
        .filter(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        })
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

#[test]
fn every_flag_has_a_variable_and_the_example_file_lists_each() {
    let variables = variables_in_help();
    assert!(variables.contains("THREADCHAT_WS_PORT"), "{variables:?}");
    let listed: BTreeSet<String> = example_settings().into_iter().map(|(n, _)| n).collect();
    for variable in &variables {
        assert!(
            listed.contains(variable),
            "dist/threadchat.env lacks {variable}"
        );
    }
}

#[test]
fn the_example_file_with_every_line_uncommented_checks_out() {
    let settings = example_settings();
    let token_file = std::env::temp_dir().join(format!("threadchat-env-{}", std::process::id()));
    std::fs::write(&token_file, "from-the-example\n").unwrap();
    let cert = TestCert::new("env");
    let env: Vec<(&str, &str)> = settings
        .iter()
        .map(|(name, value)| match name.as_str() {
            // The example's folder and files exist only on a host that made them.
            "THREADCHAT_WWW" => (name.as_str(), WWW),
            "THREADCHAT_TOKEN_FILE" => (name.as_str(), token_file.to_str().unwrap()),
            "THREADCHAT_TLS_CERT" => (name.as_str(), cert.cert.to_str().unwrap()),
            "THREADCHAT_TLS_KEY" => (name.as_str(), cert.key.to_str().unwrap()),
            _ => (name.as_str(), value.as_str()),
        })
        .collect();
    let output = run_binary(&["--check-config"], &env);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("configuration ok"), "{stdout}");
    std::fs::remove_file(&token_file).unwrap();
}

#[test]
fn check_config_reports_and_exits() {
    let fine = run_binary(&["--check-config"], &[]);
    assert!(fine.status.success());
    let report = String::from_utf8(fine.stdout).unwrap();
    for expected in [
        "page: compiled in",
        "listen: page http://0.0.0.0:8000/, chat ws://0.0.0.0:8001/",
        "configuration ok",
    ] {
        assert!(report.contains(expected), "{expected:?} not in {report}");
    }

    let from_env = run_binary(&["--check-config"], &[("THREADCHAT_HTTP_PORT", "8080")]);
    let report = String::from_utf8(from_env.stdout).unwrap();
    assert!(report.contains("page http://0.0.0.0:8080/"), "{report}");
    let flag_wins = run_binary(
        &["--check-config", "--http-port", "9090"],
        &[("THREADCHAT_HTTP_PORT", "8080")],
    );
    let report = String::from_utf8(flag_wins.stdout).unwrap();
    assert!(report.contains("page http://0.0.0.0:9090/"), "{report}");

    for (args, env, says) in [
        (&["--max-message", "10"][..], &[][..], "--max-message"),
        (
            &["--www", "/nonexistent"][..],
            &[][..],
            "--www /nonexistent",
        ),
        (&[][..], &[("THREADCHAT_WWW", "/tmp")][..], "no index.html"),
        (&["--bind", "192.0.2.1"][..], &[][..], "--bind 192.0.2.1"),
        (&[][..], &[("THREADCHAT_MAX_CLIENTS", "lots")][..], "lots"),
        // Below two of the hub's largest batches, every client would be cut off.
        (
            &["--max-backlog", "100000"][..],
            &[][..],
            "--max-backlog (100000) must be",
        ),
        (&["--max-http", "0"][..], &[][..], "--max-http"),
    ] {
        let mut all = vec!["--check-config"];
        all.extend_from_slice(args);
        let bad = run_binary(&all, env);
        assert!(!bad.status.success(), "{args:?} {env:?}");
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert!(stderr.contains(says), "{args:?} {env:?}: {stderr}");
        assert!(!String::from_utf8_lossy(&bad.stdout).contains("configuration ok"));
    }
}

#[test]
fn the_unit_file_allows_what_the_capacity_rule_needs() {
    let unit = std::fs::read_to_string(format!("{DIST}/threadchat.service")).unwrap();
    let setting = |name: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in the unit"))
            .to_string()
    };
    let report = run_binary(&["--check-config"], &[]);
    let report = String::from_utf8(report.stdout).unwrap();
    let needs = format!(
        "a service needs: LimitNOFILE={} TasksMax={}",
        setting("LimitNOFILE"),
        setting("TasksMax")
    );
    assert!(report.contains(&needs), "unit: {needs}; binary: {report}");
    for hardening in [
        "User=threadchat",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "KillSignal=SIGTERM",
        "EnvironmentFile=-/etc/default/threadchat",
        "ExecStart=/usr/bin/threadchat",
    ] {
        assert!(
            unit.lines().any(|l| l == hardening),
            "unit lacks {hardening}"
        );
    }
}

#[test]
fn the_environment_alone_configures_a_running_server_with_json_logs() {
    let ports = Ports::pick();
    let (http, ws) = (ports.http.to_string(), ports.ws.to_string());
    let server = Process::start_program(
        env!("CARGO_BIN_EXE_threadchat"),
        &[],
        &[
            ("THREADCHAT_BIND", "127.0.0.1"),
            ("THREADCHAT_HTTP_PORT", &http),
            ("THREADCHAT_WS_PORT", &ws),
            ("THREADCHAT_MAX_CLIENTS", "1"),
            ("THREADCHAT_LOG_FORMAT", "json"),
        ],
    );
    // The environment, not a flag, chose the ports.
    assert_eq!(
        (server.http.port(), server.ws.port()),
        (ports.http, ports.ws)
    );
    assert_eq!(http_get(server.http, "/").status, 200);
    let mut first = Client::join(&server);
    first.send_chat("ann", "hi");
    first.recv_type("message");
    let (status, _) = support::raw_handshake(server.ws, "/", &[]);
    assert_eq!(status, 503, "THREADCHAT_MAX_CLIENTS=1 lets one client in");

    let log = server.log_text();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 4, "{log}");
    for line in lines {
        let record: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        let mut keys: Vec<&str> = record
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort();
        assert_eq!(keys, ["level", "msg", "target", "ts"], "{line}");
        assert!(
            line.starts_with(r#"{"ts":"#),
            "time first, for people reading: {line}"
        );
        assert!(record["ts"].as_str().unwrap().ends_with('Z'), "{line}");
    }
}

/// Ctrl-Z and `fg` (or `kill -STOP`, `-CONT`): Linux ends every blocked read
/// that has a timeout with `EINTR` when the process goes on, and that is not
/// the clients' doing. They stay, and chat on.
#[test]
fn a_server_stopped_and_continued_keeps_its_clients() {
    let server = Process::start(&[]);
    let (mut ann, mut bob) = (Client::join(&server), Client::join(&server));
    assert_eq!(ann.recv_type("notification")["event"], "join");
    server.signal(Signal::STOP);
    support::eventually("the server stopped", || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid())).unwrap();
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T'))
    });
    server.signal(Signal::CONT);
    ann.send_chat("ann", "still here");
    for client in [&mut ann, &mut bob] {
        assert_eq!(client.recv_type("message")["msg"], "still here");
    }
    assert!(
        !server.log_text().contains("connection error"),
        "{}",
        server.log_text()
    );
}

#[test]
fn sighup_logs_a_status_line_and_changes_nothing() {
    let mut server = Process::start(&["--log-format", "json"]);
    let mut ann = Client::join(&server);
    let before = server.log_lines().len();
    server.signal(Signal::HUP);
    // A status line from the shutdown module, which does not shut down.
    support::eventually("a status line", || {
        server.log_lines()[before..].iter().any(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .is_ok_and(|r| r["target"] == "threadchat::shutdown" && r["level"] == "INFO")
        })
    });
    ann.send_chat("ann", "still here");
    assert_eq!(ann.recv_type("message")["msg"], "still here");
    assert_eq!(http_get(server.http, "/healthz").status, 200);

    server.signal(Signal::TERM);
    assert_eq!(ann.recv_close(), 1001);
    let status = server.wait_exit(Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status:?}");
}
