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
