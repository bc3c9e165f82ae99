//! A load scenario: open the clients, drive the senders, and judge what every
//! client saw; and the idle scenario.

use super::*;

#[derive(Clone, Copy)]
pub(crate) enum Drive {
    /// Open loop: each sender sends `rate` per second on a fixed schedule.
    Rate(f64),
    /// Closed loop: each sender keeps `window` of its messages unechoed.
    Window(usize),
}

#[derive(Clone, Copy)]
pub(crate) struct Load {
    /// Every client, in all rooms.
    pub(crate) clients: usize,
    /// Every sender, in all rooms (spread over them as `i % rooms`).
    pub(crate) senders: usize,
    /// 0: everyone in the lobby; else `clients / rooms` clients in each room.
    pub(crate) rooms: usize,
    pub(crate) drive: Drive,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    pub(crate) size: usize,
    /// What the clients speak.
    pub(crate) dialect: Dialect,
}

pub(crate) struct Outcome {
    pub(crate) clients: usize,
    pub(crate) deliveries_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) expected: u64,
    pub(crate) received: u64,
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
    pub(crate) same_order: bool,
    /// Messages received by a client of another room (never in lobby scenarios).
    pub(crate) foreign: u64,
    pub(crate) settle_s: f64,
    /// The server's CPU time (user and system) in the measured window, per
    /// delivery: what one delivered message costs it (all nodes together).
    pub(crate) cpu_us_per_delivery: f64,
    /// Redis' CPU time likewise, in a cluster.
    pub(crate) redis_cpu_us_per_delivery: Option<f64>,
    /// In a cluster, the Redis commands called in the measured window per
    /// message sent in it, by name (most first): what the CPU time is spent on.
    pub(crate) redis_calls_per_message: Vec<(String, f64)>,
}

/// Opens `n` clients, client `i` on `addrs[i % addrs.len()]`.
pub(crate) fn open_clients(
    addrs: &[SocketAddr],
    n: usize,
    shared: &Arc<Shared>,
    tls: Option<&Arc<Tls>>,
) -> Result<Vec<Client>, String> {
    // One connect at a time per opener thread, so the accept backlog is not overrun.
    let openers = 8;
    let next = Arc::new(AtomicU64::new(0));
    let clients = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let handles: Vec<_> = (0..openers)
        .map(|_| {
            let (next, clients, shared, addrs, tls) = (
                next.clone(),
                clients.clone(),
                shared.clone(),
                addrs.to_vec(),
                tls.cloned(),
            );
            thread::spawn(move || -> Result<(), String> {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= n {
                        return Ok(());
                    }
                    let client = connect(addrs[i % addrs.len()], i, &shared, tls.as_deref())
                        .map_err(|e| format!("client {i}: {e}"))?;
                    clients.lock().unwrap().push((i, client));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("opener")?;
    }
    let mut clients = Arc::try_unwrap(clients)
        .ok()
        .expect("openers done")
        .into_inner()
        .unwrap();
    clients.sort_by_key(|(i, _)| *i);
    Ok(clients.into_iter().map(|(_, c)| c).collect())
}

pub(crate) fn wait_until(deadline: Duration, done: impl FnMut() -> bool) -> bool {
    footprint::poll_until(deadline, Duration::from_millis(5), done)
}

/// One load scenario against a fresh server. An `Err` is a run that could not be
/// measured (a client could not connect, the joins never settled).
/// `nodes`: 0 for one server on its own; else that many nodes of one cluster,
/// through a redis-server of the run's own.
pub(crate) fn run_load(
    binary: &str,
    http: bool,
    load: &Load,
    tls: Option<&Arc<Tls>>,
    nodes: usize,
) -> Result<Outcome, String> {
    let groups = load.rooms.max(1);
    assert!(
        load.clients.is_multiple_of(groups) && load.senders >= groups,
        "every room as many clients, and a sender"
    );
    let members = load.clients / groups;
    let redis = (nodes > 0).then(Redis::start);
    let servers: Vec<Server> = (0..nodes.max(1))
        .map(|_| Server::start(binary, http, tls.map(|t| &**t), redis.as_ref()))
        .collect();
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.ws).collect();
    let (echo_tx, echo_rx): (Vec<_>, Vec<_>) =
        (0..load.senders).map(|_| bounded::<()>(1 << 16)).unzip();
    let shared = shared_for(load, members, echo_tx);
    let started = Instant::now();
    let clients = open_clients(&addrs, load.clients, &shared, tls)?;
    let settled = wait_until(Duration::from_secs(60), || {
        shared.settled.load(Ordering::Relaxed) == load.clients as u64
    });
    if !settled {
        return Err(format!(
            "join notifications did not settle: {} of {} clients saw them all",
            shared.settled.load(Ordering::Relaxed),
            load.clients
        ));
    }
    let settle_s = started.elapsed().as_secs_f64();

    // Senders are the first clients; each writes on its own clone of its socket.
    let schedule = Schedule::starting(Instant::now() + Duration::from_millis(100), load);
    let (measure_from, end) = (schedule.measure_from, schedule.end);
    let sent_counts = start_senders(&clients, load, &shared, echo_rx, schedule);
    // The servers' and Redis' CPU time over the measured window.
    let cpu_at = |at: Instant| {
        thread::sleep(at.saturating_duration_since(Instant::now())); // a clock, not a sync
        let servers: Duration = servers.iter().map(Server::cpu).sum();
        let calls = redis.as_ref().map(Redis::calls).unwrap_or_default();
        (servers, redis.as_ref().map(Redis::cpu), calls)
    };
    let cpu_from = cpu_at(measure_from);
    let cpu_to = cpu_at(end);
    let windows: Vec<(u64, u64)> = sent_counts
        .into_iter()
        .map(|h| h.join().expect("sender"))
        .collect();
    // Each sender's measured messages reach every member of its room (all clients,
    // in the lobby).
    let measured: u64 = windows.iter().map(|w| w.1 - w.0).sum();
    let expected = measured * members as u64;
    wait_for_deliveries(&shared, expected);
    for c in &clients {
        let _ = c.socket.tcp().shutdown(Shutdown::Both);
    }
    let seen: Vec<Seen> = clients
        .into_iter()
        .map(|c| c.reader.join().expect("reader"))
        .collect();
    let mut outcome = summarize(
        load.clients,
        groups,
        seen,
        expected,
        load.duration,
        settle_s,
    );
    let per_delivery = |d: Duration| d.as_secs_f64() * 1e6 / outcome.received.max(1) as f64;
    outcome.cpu_us_per_delivery = per_delivery(cpu_to.0 - cpu_from.0);
    outcome.redis_cpu_us_per_delivery = cpu_to
        .1
        .zip(cpu_from.1)
        .map(|(to, from)| per_delivery(to - from));
    outcome.redis_calls_per_message = calls_per_message(&cpu_from.2, &cpu_to.2, measured);
    Ok(outcome)
}

/// The commands called between `from` and `to`, per message of `messages`, most
/// first (the window's own calls of `INFO` left out).
fn calls_per_message(
    from: &[(String, u64)],
    to: &[(String, u64)],
    messages: u64,
) -> Vec<(String, f64)> {
    let before = |name: &str| from.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c);
    let mut calls: Vec<(String, f64)> = to
        .iter()
        .filter(|(name, _)| name != "info")
        .map(|(name, n)| {
            (
                name.clone(),
                (n - before(name)) as f64 / messages.max(1) as f64,
            )
        })
        .filter(|(_, per)| *per > 0.0)
        .collect();
    calls.sort_by(|a, b| b.1.total_cmp(&a.1));
    calls
}

/// What the clients' readers share, for a load of `members` per room.
fn shared_for(load: &Load, members: usize, echoes: Vec<Sender<()>>) -> Arc<Shared> {
    let unmeasured = || {
        (0..load.senders)
            .map(|_| AtomicU64::new(u64::MAX))
            .collect()
    };
    Arc::new(Shared {
        dialect: load.dialect,
        senders: load.senders,
        rooms: load.rooms,
        measured_from: unmeasured(),
        measured_to: unmeasured(),
        received: AtomicU64::new(0),
        settled: AtomicU64::new(0),
        expected_count: AtomicU64::new(members as u64),
        echoes,
        keep_latencies: AtomicBool::new(true),
    })
}

/// Starts the senders, the first clients, each writing on its own clone of its
/// socket on `schedule`. Each thread returns
/// its measured window of sequence numbers.
fn start_senders(
    clients: &[Client],
    load: &Load,
    shared: &Arc<Shared>,
    echoes: Vec<Receiver<()>>,
    schedule: Schedule,
) -> Vec<JoinHandle<(u64, u64)>> {
    (0..load.senders)
        .zip(echoes)
        .map(|(s, echoes)| {
            let socket = clients[s].socket.try_clone().expect("clone");
            let (drive, size, shared) = (load.drive, load.size, Arc::clone(shared));
            thread::spawn(move || send_loop(socket, s, &shared, drive, size, schedule, &echoes))
        })
        .collect()
}

/// Waits until `expected` deliveries arrived, or none for a second (some are
/// lost: the checks say which), 30 s at most.
fn wait_for_deliveries(shared: &Shared, expected: u64) {
    let mut last = 0;
    let mut last_change = Instant::now();
    wait_until(Duration::from_secs(30), || {
        let now = shared.received.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
        now >= expected || last_change.elapsed() > Duration::from_secs(1)
    });
}

/// When a sender starts, when its measured window opens, and when it stops.
#[derive(Clone, Copy)]
pub(crate) struct Schedule {
    pub(crate) t0: Instant,
    pub(crate) measure_from: Instant,
    pub(crate) end: Instant,
}

impl Schedule {
    /// `load`'s warm-up and measured window, from `t0`.
    fn starting(t0: Instant, load: &Load) -> Schedule {
        Schedule {
            t0,
            measure_from: t0 + load.warmup,
            end: t0 + load.warmup + load.duration,
        }
    }
}

pub(crate) fn send_loop(
    mut socket: Wire,
    me: usize,
    shared: &Shared,
    drive: Drive,
    size: usize,
    schedule: Schedule,
    echoes: &Receiver<()>,
) -> (u64, u64) {
    let Schedule {
        t0,
        measure_from,
        end,
    } = schedule;
    let (mut seq, mut first_measured) = (0u64, None);
    let mut in_flight = 0usize;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        match drive {
            Drive::Rate(rate) => {
                let offset = me as f64 / shared.senders as f64;
                let due = t0 + Duration::from_secs_f64((offset + seq as f64) / rate);
                if due >= end {
                    break;
                }
                if due > now {
                    thread::sleep(due - now); // the schedule: an open-loop load
                }
            }
            Drive::Window(window) => {
                while in_flight >= window {
                    match echoes.recv_timeout(Duration::from_secs(1)) {
                        Ok(()) => in_flight -= 1,
                        Err(_) => in_flight = 0, // an echo lost: free the slot anyway
                    }
                    if Instant::now() >= end {
                        break;
                    }
                }
                while echoes.try_recv().is_ok() {
                    in_flight = in_flight.saturating_sub(1);
                }
                if Instant::now() >= end {
                    break;
                }
            }
        }
        if first_measured.is_none() && Instant::now() >= measure_from {
            // Published before the message it names is written.
            shared.measured_from[me].store(seq, Ordering::SeqCst);
            first_measured = Some(seq);
        }
        if socket
            .write_all(&client_frame(&chat_message(me, seq, size, shared.dialect)))
            .is_err()
        {
            break;
        }
        seq += 1;
        in_flight += 1;
    }
    shared.measured_to[me].store(seq, Ordering::SeqCst);
    (first_measured.unwrap_or(seq), seq)
}

/// `groups`: the rooms (1: the lobby); client `i` is in room `i % groups`.
pub(crate) fn summarize(
    clients: usize,
    groups: usize,
    seen: Vec<Seen>,
    expected: u64,
    duration: Duration,
    settle_s: f64,
) -> Outcome {
    let received: u64 = seen.iter().map(|s| s.received).sum();
    let duplicates = seen.iter().map(|s| s.duplicates).sum();
    let out_of_order = seen.iter().map(|s| s.out_of_order).sum();
    let foreign = seen.iter().map(|s| s.foreign).sum();
    // Every client must hold its room's reference order (its first member's)
    // restricted to what it got.
    let same_order = seen.iter().enumerate().all(|(i, s)| {
        let reference = &seen[i % groups].order;
        let mine: std::collections::HashSet<u32> = s.order.iter().copied().collect();
        let restricted: Vec<u32> = reference
            .iter()
            .copied()
            .filter(|m| mine.contains(m))
            .collect();
        restricted == s.order
    });
    let mut latencies: Vec<u32> = seen.into_iter().flat_map(|s| s.latencies).collect();
    latencies.sort_unstable();
    let pick = |q: f64| {
        if latencies.is_empty() {
            return 0.0;
        }
        latencies[((latencies.len() - 1) as f64 * q) as usize] as f64 / 1000.0
    };
    Outcome {
        clients,
        deliveries_per_s: received as f64 / duration.as_secs_f64(),
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
        max_ms: pick(1.0),
        expected,
        received,
        duplicates,
        out_of_order,
        same_order,
        foreign,
        settle_s,
        cpu_us_per_delivery: 0.0,
        redis_cpu_us_per_delivery: None,
        redis_calls_per_message: Vec::new(),
    }
}

pub(crate) struct Idle {
    pub(crate) clients: usize,
    pub(crate) kib_per_client: f64,
    pub(crate) threads: (u64, u64, u64),
    pub(crate) fds: (usize, usize, usize),
    pub(crate) settle_s: f64,
}

pub(crate) fn run_idle(binary: &str, n: usize, tls: Option<&Arc<Tls>>) -> Idle {
    let server = Server::start(binary, true, tls.map(|t| &**t), None);
    let (echo_tx, _echo_rx) = bounded(1);
    let shared = Arc::new(Shared {
        dialect: Dialect::Json,
        senders: 1,
        rooms: 0,
        measured_from: vec![AtomicU64::new(u64::MAX)],
        measured_to: vec![AtomicU64::new(u64::MAX)],
        received: AtomicU64::new(0),
        settled: AtomicU64::new(0),
        expected_count: AtomicU64::new(n as u64),
        echoes: vec![echo_tx],
        keep_latencies: AtomicBool::new(false),
    });
    // The baseline once the server has finished starting its own threads.
    let mut last = (0, 0);
    let mut stable_since = Instant::now();
    wait_until(Duration::from_secs(5), || {
        let now = (server.status("Threads"), server.fds() as u64);
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
        stable_since.elapsed() > Duration::from_millis(300)
    });
    let (rss0, threads0, fds0) = (
        server.status("VmRSS"),
        server.status("Threads"),
        server.fds(),
    );
    let started = Instant::now();
    let clients = open_clients(&[server.ws], n, &shared, tls).expect("clients connect");
    wait_until(Duration::from_secs(120), || {
        shared.settled.load(Ordering::Relaxed) == n as u64
    });
    let settle_s = started.elapsed().as_secs_f64();
    let (rss1, threads1, fds1) = (
        server.status("VmRSS"),
        server.status("Threads"),
        server.fds(),
    );
    for c in &clients {
        let _ = c.socket.tcp().shutdown(Shutdown::Both);
    }
    for c in clients {
        let _ = c.reader.join();
    }
    wait_until(Duration::from_secs(10), || {
        server.status("Threads") <= threads0 && server.fds() <= fds0
    });
    Idle {
        clients: n,
        kib_per_client: (rss1.saturating_sub(rss0)) as f64 / n as f64,
        threads: (threads0, threads1, server.status("Threads")),
        fds: (fds0, fds1, server.fds()),
        settle_s,
    }
}
