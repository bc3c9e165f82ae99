//! A Redis locked as DEPLOY.md says: a password, an ACL user, TLS only; and
//! `--check-config` showing the URL without its password.

use super::*;

#[test]
fn a_redis_with_a_password_takes_nodes_that_give_it_and_refuses_the_others() {
    let redis = Redis::start_with(&["--requirepass", "chat-s3cret"]);
    let url = |password: &str| format!("redis://:{password}@127.0.0.1:{}/", redis.port);
    let (a, b) = (
        node_at(&url("chat-s3cret"), &[]),
        node_at(&url("chat-s3cret"), &[]),
    );
    assert_one_chat(&a, &b);
    let shown = url("***");
    let log = refused_at_start(&url("not-the-s3cret"), &[]);
    assert_refused(&log, &shown, "authentication", "not-the-s3cret");
    let log = refused_at_start(&redis.url(), &[]);
    assert_refused(&log, &redis.url(), "authentication", "chat-s3cret");
}

#[test]
fn an_acl_user_with_only_the_chat_s_keys_and_commands_carries_the_chat() {
    let user = [&["--user", "default", "off", "--user"][..], CHAT_USER].concat();
    let redis = Redis::start_with(&user);
    let url = |who: &str| format!("redis://{who}@127.0.0.1:{}/", redis.port);
    let good = url("threadchat:user-s3cret");
    let (a, b) = (node_at(&good, &[]), node_at(&good, &[]));
    assert_one_chat(&a, &b);
    // The right password as the default user, which is off.
    let log = refused_at_start(&url(":user-s3cret"), &[]);
    assert_refused(&log, &url(":***"), "authentication", "user-s3cret");
}

#[test]
fn nodes_chat_through_a_redis_that_speaks_only_tls_with_a_certificate_they_check() {
    let cert = TestCert::new("redis");
    let redis = Redis::start_tls(&cert, &["--requirepass", "tls-s3cret"]);
    let url = format!("rediss://:tls-s3cret@127.0.0.1:{}/", redis.port);
    let ca = cert.cert.to_str().unwrap();
    let (a, b) = (
        node_at(&url, &["--redis-ca", ca]),
        node_at(&url, &["--redis-ca", ca]),
    );
    assert_one_chat(&a, &b);
    // Without the CA the certificate is a stranger's: no node, and no password
    // in the error either.
    let shown = format!("rediss://:***@127.0.0.1:{}/", redis.port);
    let log = refused_at_start(&url, &[]);
    assert_refused(&log, &shown, "certificate", "tls-s3cret");
}

#[test]
fn check_config_shows_the_redis_url_without_its_password_and_checks_its_ca() {
    let cert = TestCert::new("redis-check");
    let ca = cert.cert.to_str().unwrap();
    let check = |args: &[&str]| {
        let output = run_binary(&[&["--check-config"][..], args].concat(), &[]);
        let said = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(!said.contains("s3cret"), "the password in: {said}");
        (output.status.success(), said)
    };
    let (ok, said) = check(&[
        "--redis",
        "rediss://chat:s3cret@redis:6379/",
        "--redis-ca",
        ca,
    ]);
    assert!(ok, "{said}");
    assert!(
        said.contains("through rediss://chat:***@redis:6379/"),
        "{said}"
    );
    // Roots for a Redis without TLS, or for no Redis: mistakes, said so.
    let (ok, said) = check(&["--redis", "redis://:s3cret@redis/", "--redis-ca", ca]);
    assert!(!ok && said.contains("rediss://"), "{said}");
    let (ok, said) = check(&["--redis-ca", ca]);
    assert!(!ok && said.contains("--redis-ca needs --redis"), "{said}");
    let (ok, said) = check(&[
        "--redis",
        "rediss://:s3cret@redis/",
        "--redis-ca",
        "/nonexistent",
    ]);
    assert!(!ok && said.contains("--redis-ca /nonexistent"), "{said}");
}

/// A user of an older DEPLOY.md, without the chat's channel: the node cannot
/// publish what it appends, and says so at start rather than chat half-deaf.
#[test]
fn a_user_without_the_chat_s_channel_is_refused_at_start_saying_why() {
    let no_channel: Vec<&str> = CHAT_USER
        .iter()
        .copied()
        .filter(|rule| !rule.starts_with('&') && !["+publish", "+subscribe"].contains(rule))
        .collect();
    let user = [&["--user", "default", "off", "--user"][..], &no_channel].concat();
    let redis = Redis::start_with(&user);
    let url = |who: &str| format!("redis://{who}@127.0.0.1:{}/", redis.port);
    let log = refused_at_start(&url("threadchat:user-s3cret"), &[]);
    assert_refused(
        &log,
        &url("threadchat:***"),
        "channel threadchat:live",
        "user-s3cret",
    );
}

/// Redis drops a node's subscription (here its user loses the channel; a
/// subscriber that falls behind is dropped the same way) while another node
/// chats on. The node is cut off until it can subscribe again, and then hears
/// from the stream what it missed, once and in order, before what comes live.
#[test]
fn a_node_whose_subscription_is_dropped_catches_up_from_the_stream_once() {
    let redis = Redis::start_with(&[&["--user"][..], CHAT_USER].concat());
    let follower = format!("redis://threadchat:user-s3cret@127.0.0.1:{}/", redis.port);
    let (a, b) = (node_at(&follower, &[]), node(&redis));
    let (mut ann, mut bob) = (Client::join(&a), Client::join(&b));
    bob.send_chat("bob", "before");
    assert_eq!(ann.recv_type("message")["msg"], "before");

    let mut admin = redis_connection(redis.url());
    let mut acl = |rules: &[&str]| {
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("threadchat")
            .arg(rules)
            .query(&mut admin)
            .unwrap();
    };
    acl(&["resetchannels"]);
    assert_eq!(recv_cluster(&mut ann)["connected"], false);
    let missed: Vec<String> = (0..3).map(|n| format!("missed {n}")).collect();
    for text in &missed {
        bob.send_chat("bob", text);
    }
    // In the stream: b heard them back.
    assert_eq!(messages(&mut bob, 4).len(), 4);
    acl(&["&threadchat:live"]);
    assert_eq!(recv_cluster(&mut ann)["connected"], true);
    bob.send_chat("bob", "live");
    let heard: Vec<String> = messages(&mut ann, 4).into_iter().map(|m| m.1).collect();
    assert_eq!(heard, [&missed[..], &["live".to_string()]].concat());
}
