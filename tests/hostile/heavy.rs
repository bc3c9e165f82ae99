//! Attacks that cost the server bytes or handshakes: TLS handshakes left half
//! done, heads of huge headers (and the log lines they cause), the largest
//! frames.

use super::*;

#[test]
fn half_finished_tls_handshakes_from_a_few_hosts_are_bounded_and_closed() {
    // With TLS on both ports, three hosts open 200 connections each to each port
    // and send the first 10 bytes of a ClientHello, then nothing.
    let cert = TestCert::new("hostile");
    let tls = cert.args();
    let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
    args.extend(["--handshake-timeout", "2", "--http-timeout", "2"]);
    let server = Process::start(&args);
    let honest_user_is_served = || {
        assert_eq!(cert.get(server.http, "/").status, 200);
        let mut client = cert.join(&server);
        client.send_chat("honest", "still here");
        assert_eq!(client.recv_type("message")["msg"], "still here");
    };
    honest_user_is_served();
    let base = settled(&server);
    let peak = Peak::watch(&server);
    let half_hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];
    let mut stalled = Vec::new();
    for host in 0..3 {
        for port in [server.ws, server.http] {
            for _ in 0..200 {
                let mut s = connect_from(attacker(host), port);
                let _ = s.write_all(&half_hello);
                stalled.push(s);
            }
        }
    }
    // Each host keeps its share (8 handshakes, 16 page connections); the rest are
    // refused without a thread.
    eventually("the extra connections are refused", || {
        cert.stats(&server)["places"]["refused_per_host"].as_u64() >= Some(3 * (192 + 184))
    });
    honest_user_is_served();
    // The kept ones are closed at their deadline, TLS handshake unfinished.
    for s in &mut stalled {
        assert!(
            socket_closed_within(s, PATIENCE),
            "a stalled connection stayed open"
        );
    }
    drop(stalled);
    assert_within(
        peak.stop(),
        base,
        8 * 1024,
        3 * (8 + 16) + 10,
        3 * (8 + 16) + 10,
    );
    back_to(&server, base, 4 * 1024);
    honest_user_is_served();
}

#[test]
fn an_attack_with_huge_headers_writes_a_few_kilobytes_of_log() {
    // Refusals of requests with a 60 KB Host, each logged whole (the name twice),
    // once wrote 848 MB of log in 10 s: a Raspberry Pi's SD card full in minutes.
    // Now client text is escaped and cut, and each kind of refusal writes ten
    // lines at once, then one a second with a count of the rest.
    const REQUESTS: usize = 2_000;
    const LONGEST_LINE: usize = 512;
    const LOG_BOUND: usize = 64 * 1024;
    const ATTACK: Duration = Duration::from_secs(5);
    let server = Process::start_with_env(&[], &[("RUST_LOG", "info")]);
    honest_user_is_served(&server);
    let before = server.log_lines().len();
    let claimed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let server = Arc::new(server);
    // Four connections at a time, within the per-address caps: refusals for
    // what the requests say, none for how many there are.
    let attackers: Vec<_> = (0..4)
        .map(|_| {
            let (server, claimed) = (Arc::clone(&server), Arc::clone(&claimed));
            thread::spawn(move || {
                let mut answers = Vec::new();
                loop {
                    let n = claimed.fetch_add(1, Ordering::Relaxed);
                    if n >= REQUESTS || started.elapsed() > ATTACK {
                        return answers;
                    }
                    // Every other page request has the 60 KB Host too, which the
                    // page port refuses for its size.
                    let request = match HugeRequest::MIX[n % 10] {
                        HugeRequest::PageHost if n % 20 == 9 => HugeRequest::PageHead,
                        request => request,
                    };
                    answers.push((request, request.send(&server)));
                }
            })
        })
        .collect();
    honest_user_is_served(&server);
    let answers: Vec<_> = attackers
        .into_iter()
        .flat_map(|attacker| attacker.join().unwrap())
        .collect();
    let attack = started.elapsed();
    let requests = answers.len();
    let wrong: Vec<_> = answers
        .iter()
        .filter(|(request, status)| *status != Some(request.status()))
        .collect();
    assert!(wrong.is_empty(), "unexpected answers: {wrong:?}");
    // Enough of each kind to run through its burst of lines.
    assert!(requests >= 100, "only {requests} requests in {attack:?}");
    // Every refusal's line was written before its connection closed; the log is
    // read through a pipe, in order: once a later line has arrived, all have.
    let marker = Client::join_over(&*server, connect_from(HONEST, server.ws));
    server.wait_for_log(&format!("client {} connected", marker.id.unwrap()));

    let lines = &server.log_lines()[before..];
    let bytes: usize = lines.iter().map(|line| line.len() + 1).sum();
    eprintln!(
        "{requests} requests in {attack:?}: {} log lines, {bytes} bytes",
        lines.len()
    );
    let longest = lines.iter().max_by_key(|line| line.len()).unwrap();
    assert!(
        longest.len() <= LONGEST_LINE,
        "a line of {} bytes: {longest}",
        longest.len()
    );
    assert!(
        bytes < LOG_BOUND,
        "{bytes} bytes of log for {requests} requests:\n{}",
        lines.join("\n")
    );
    // Nothing silently lost: the lines held back are counted.
    assert!(
        lines
            .iter()
            .any(|line| line.contains(" more refusals with 421 since ")),
        "no count of held-back lines:\n{}",
        lines.join("\n")
    );
    // The room's refusal is logged without the room (errors never quote what the
    // client sent), so nothing of the forged line reaches the log at all.
    assert!(
        lines.iter().any(|line| line.contains("refused with 400")),
        "no 400 refusal logged:\n{}",
        lines.join("\n")
    );
    assert!(
        lines.iter().all(|line| !line.contains(FORGED)),
        "a forged line:\n{}",
        lines.join("\n")
    );
    // A host that is no host name is not repeated (in the answer nor in the
    // line), only its length.
    assert!(
        lines
            .iter()
            .any(|line| line.contains("(60000 bytes, not a host name it would quote)")),
        "{}",
        lines.join("\n")
    );
    assert!(
        lines.iter().all(|line| !line.contains(&"a".repeat(40))),
        "{}",
        lines.join("\n")
    );

    // The attack's last refusals: the flood left the kind no lines to spend, and
    // it earns one a second, far fewer than these twenty, so some are held back.
    // No refusal of that kind follows to carry their count: a line of its own
    // says it.
    let after = server.log_lines().len();
    for _ in 0..20 {
        let refused = Client::handshake(
            connect_from(ATTACKER, server.ws),
            &server.ws_url("/"),
            &[("host", "attacker.example")],
        );
        assert_eq!(refused.err().map(|r| r.status), Some(421));
    }
    eventually("a line of its own counts the last refusals", || {
        server.log_lines()[after..].iter().any(|line| {
            line.contains("] … and ") && line.contains(" more refusals with 421 since ")
        })
    });
}

#[test]
fn large_frames_get_short_errors_and_leave_no_buffer_behind() {
    // From one host, 32 clients each send the largest frame twice: 64 KiB of U+00AD
    // as a `type`, and 64 KiB of `[0,0,…]` in a field nobody reads. Before, the
    // first came back as a 229 KB error frame (the value, escaped), parsing the
    // second built a 1 MiB tree, and every reader kept 519 KiB while idle after.
    //
    // One malloc arena: glibc otherwise keeps freed memory in an arena per thread
    // (up to 8 per core) for reuse, so RSS would show how many arenas the machine
    // has rather than what the readers hold.
    // The address's budgets would drop most of 4 MiB in a second: this story is
    // about what a frame costs once read, so they are off.
    let server = Process::start_with_env(support::NO_BUDGETS, &[("MALLOC_ARENA_MAX", "1")]);
    let base = baseline(&server);
    let mut theirs: Vec<Client> = (0..32)
        .map(|_| Client::join_over(&server, connect_from(ATTACKER, server.ws)))
        .collect();
    let idle = settled(&server);
    let peak = Peak::watch(&server);
    let soft_hyphens = largest_frame(r#"{"type":""#, "\u{ad}", r#""}"#);
    let zeros = largest_frame(r#"{"pad":["#, "0,", "0]}");
    // One client after the other, so that what the allocator keeps of frames
    // parsed at the same moment does not hide what a reader keeps.
    for (n, client) in theirs.iter_mut().enumerate() {
        client.send_text(&soft_hyphens);
        client.send_text(&zeros);
        short_error(client);
        short_error(client);
        if n == 16 {
            honest_user_is_served(&server);
        }
    }
    let after = settled(&server);
    let each = |now: Footprint, from: Footprint| now.rss_kib.saturating_sub(from.rss_kib) / 32;
    eprintln!(
        "an idle client: {} KiB; after its large frames: {} KiB more",
        each(idle, base),
        each(after, idle)
    );
    // Each reader held a 64 KiB frame while it parsed it, and gave its buffer back
    // after: 7–11 KiB more per client were measured, fragments of the allocator's;
    // a reader that keeps its buffer holds 68 KiB more.
    assert!(
        after.rss_kib <= idle.rss_kib + 32 * 40,
        "idle clients hold {} KiB more after their large frames",
        after.rss_kib - idle.rss_kib
    );
    for client in &mut theirs {
        client.send_text(r#"{"type":"ping"}"#);
        assert_eq!(client.recv_type("pong")["type"], "pong");
    }
    // 32 clients (about 40 KiB each, idle), the two frames of one of them read
    // and parsed at a time, and what the allocator keeps of them.
    assert_within(peak.stop(), base, 32 * 40 + 2 * 1024, 36, 36);
    drop(theirs);
    back_to(&server, base, 2 * 1024);
}

/// The largest frame a client may send by default (`--max-message`), of `unit`
/// repeated between `head` and `tail`.
fn largest_frame(head: &str, unit: &str, tail: &str) -> String {
    let times = (64 * 1024 - head.len() - tail.len()) / unit.len();
    format!("{head}{}{tail}", unit.repeat(times))
}

/// Reads an attacker's next `error` frame, skipping the others, and checks it is
/// short and says nothing of what was sent.
fn short_error(client: &mut Client) {
    loop {
        let Message::Text(text) = client.recv() else {
            panic!("a text frame")
        };
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
        if frame["type"] != "error" {
            continue;
        }
        let wire = text.len() + if text.len() < 126 { 2 } else { 4 };
        assert!(wire <= 512, "a {wire}-byte error frame: {text}");
        assert!(!text.contains(['\u{ad}', '[']), "the error quotes: {text}");
        return;
    }
}
