//! threadchat's load generator, written like the server: blocking sockets and one
//! thread per client.
//!
//! For each scenario it starts a fresh server on free ports (chosen by the kernel,
//! passed as flags; it is up once `/proc` shows those ports in LISTEN state as its
//! own), opens the clients, waits for the join notifications to settle, drives
//! messages, then checks every delivery: lost, duplicated, out of order, and
//! whether every client saw the same total order. It prints one markdown table, the machine it ran on
//! and the exact command.
//!
//! Every scenario but `rooms` keeps its clients in the lobby. `rooms` spreads them
//! over R rooms of C (client `i` joins room `r{i % R}` once connected and waits for
//! `joined`), with senders in every room; its joins have settled when every client
//! has seen its own room's `count` reach C, and its checks hold per room, plus one
//! more: no client receives a message of another room. Replayed history (`"history":
//! true`) is never counted as a delivery.
//!
//! The `footprint` scenario (see `footprint.rs`) measures what a server costs a
//! small host at rest: binary size, start-up time, memory, and wake-ups while idle;
//! `--server-cmd` points it at any other server for comparison.
//!
//! `--naive` repeats chat and saturate against `examples/naive.rs` (one global
//! lock, blocking writes): its rows show what that design costs, and are checked
//! the same way but never fail the run.
//!
//! `--tls-scenarios` repeats scenarios over wss as `(wss)` rows: the server gets a
//! certificate made at start, and the clients check it. A TLS client here is split
//! between its reader thread and its sender the way the server splits its own
//! (see the server's `src/tls.rs`): the reader does its blocking read with no lock
//! held, then locks the connection to decrypt; the sender locks it to encrypt and
//! write.
//!
//! Every message a sender writes is `"<sender>:<seq>:<ns since start>:xxx…"`, so a
//! receiver knows who sent it, its position, and its one-way latency (sender and
//! receivers share this process's monotonic clock).

mod clients;
mod footprint;
mod load;
mod server;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use clap::Parser;
use crossbeam_channel::{Receiver, Sender, bounded};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::{Message, WebSocket};

use clients::*;
use load::*;
use server::*;

/// Drive a threadchat server and print what it did.
#[derive(Parser, Debug)]
struct Cli {
    /// The server binary.
    #[arg(long, default_value = "target/release/threadchat")]
    server: String,
    /// Small numbers, a few seconds in all (for `make test`).
    #[arg(long)]
    quick: bool,
    /// Scenarios to run (footprint, chat, fanout, saturate, rooms, idle, storm).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "footprint,chat,fanout,saturate,rooms,idle,storm"
    )]
    scenarios: Vec<String>,
    /// footprint only: measure this shell command instead of `--server`. It gets
    /// `WS_PORT` and `HTTP_PORT` in its environment and should `exec` the server.
    #[arg(long, requires = "name")]
    server_cmd: Option<String>,
    /// footprint only: the name of the `--server-cmd` server in the table.
    #[arg(long)]
    name: Option<String>,
    /// footprint only: the file whose size is reported for `--server-cmd`.
    #[arg(long)]
    binary: Option<String>,
    /// footprint only: the `--server-cmd` server has no HTTP port to wait for.
    #[arg(long)]
    no_http: bool,
    /// footprint only: seconds of the idle window (default 60; 3 with --quick).
    #[arg(long)]
    idle_seconds: Option<u64>,
    /// The naive server (`examples/naive.rs`, built with `cargo build --example
    /// naive`): chat and saturate run against it too, each as a `(naive)` row
    /// after threadchat's. Its deliveries are checked and shown, never failed.
    #[arg(long)]
    naive: Option<String>,
    /// These scenarios again over wss (chat, fanout, saturate, rooms, idle), each
    /// as a `(wss)` row after the plain one, checked the same way.
    #[arg(long, value_delimiter = ',')]
    tls_scenarios: Vec<String>,
    /// These load scenarios again through a cluster (`--redis`, with a
    /// redis-server of the run's own), clients spread over the nodes, as
    /// `(N nodes)` rows, checked the same way: one order on every node.
    #[arg(long, value_delimiter = ',')]
    cluster_scenarios: Vec<String>,
    /// The cluster sizes of those rows.
    #[arg(long, value_delimiter = ',', default_value = "2,3")]
    cluster_nodes: Vec<usize>,
    /// These load scenarios again with Socket.IO clients (`/socket.io/`, the
    /// protocol's frames as events), as `(socket.io)` rows, checked the same way.
    #[arg(long, value_delimiter = ',')]
    socketio_scenarios: Vec<String>,
    /// socket.io 4 on Node (`bench/socketio-anchor/anchor`): the `(socket.io)`
    /// scenarios run against it too, each as a `(socket.io 4 on Node)` row after
    /// threadchat's; its deliveries are checked and shown, never failed.
    #[arg(long)]
    socketio_anchor: Option<String>,
}

/// The scenarios `--naive` repeats against the naive server.
const NAIVE_SCENARIOS: [&str; 2] = ["chat", "saturate"];

/// The clock every latency is measured on.
fn since_start() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

// --- the server under test ---------------------------------------------------------

/// The footprint scenario as a table of its own, with the targets threadchat
/// holds itself to (marked, not failed: the bench fails on wrong deliveries only).
fn run_footprint(cli: &Cli) -> String {
    let target = match &cli.server_cmd {
        Some(command) => footprint::Target {
            command: command.clone(),
            binary: cli.binary.clone(),
            http: !cli.no_http,
        },
        None => footprint::Target {
            command: format!(
                "exec '{}' --bind 127.0.0.1 --http-port \"$HTTP_PORT\" --ws-port \"$WS_PORT\"",
                cli.server
            ),
            binary: Some(cli.server.clone()),
            http: true,
        },
    };
    let idle = Duration::from_secs(cli.idle_seconds.unwrap_or(if cli.quick { 3 } else { 60 }));
    let f = footprint::measure(&target, idle);
    let ours = cli.server_cmd.is_none();
    let mark = |ok: bool| {
        if !ours {
            ""
        } else if ok {
            " ✓"
        } else {
            " ⚠"
        }
    };
    let mib = |kib: u64| kib as f64 / 1024.0;
    let binary = f.binary_bytes.map_or("–".to_string(), |b| {
        format!("{:.2} MiB{}", b as f64 / 1048576.0, mark(b <= 4 << 20))
    });
    let mut table = format!(
        "| footprint | binary | start → ports listening (median of 5) | RSS at start | RSS, {} idle clients | wake-ups, {} s idle | CPU, {} s idle |\n|---|---|---|---|---|---|---|\n",
        f.clients_connected, f.idle_seconds, f.idle_seconds
    );
    table += &format!(
        "| {} | {binary} | {:.1} ms{} | {:.1} MiB{} | {:.1} MiB | {} ({:.2}/s){} | {} ms |\n",
        cli.name.as_deref().unwrap_or("threadchat"),
        f.start_ms,
        mark(f.start_ms <= 100.0),
        mib(f.rss_start_kib),
        mark(f.rss_start_kib <= 4096),
        mib(f.rss_100_kib),
        f.wakeups,
        f.wakeups as f64 / f.idle_seconds.max(1) as f64,
        mark(f.wakeups == 0),
        f.cpu_ms
    );
    if ours {
        table += "| target (release build) | ≤ 4 MiB, page, TLS and Redis client inside | ≤ 100 ms | ≤ 4 MiB | | 0 | |\n";
    }
    table
}

/// Prints one load scenario's row; returns whether it went wrong: deliveries lost,
/// duplicated, reordered or received in another room (said in the same-order cell),
/// or no measurement at all. A row that is not `judged` (the naive server's) says so
/// in its first cell when it went wrong.
fn print_load_row(label: &str, outcome: &Result<Outcome, String>, judged: bool) -> bool {
    let mark = if judged { "" } else { " ⚠ not judged" };
    let o = match outcome {
        Ok(o) => o,
        Err(why) => {
            println!("| {label}{mark} | {why} ⚠ | | | | | | | | | |");
            return true;
        }
    };
    let lost = o.expected.saturating_sub(o.received);
    let bad = lost > 0 || o.duplicates > 0 || o.out_of_order > 0 || !o.same_order || o.foreign > 0;
    let foreign = if o.foreign > 0 {
        format!("; {} from another room ⚠", o.foreign)
    } else {
        String::new()
    };
    println!(
        "| {label}{} | {} | {:.0} | {:.2} / {:.2} / {:.2} | {} | {lost} | {} | {} | {}{foreign} | {:.2} | {:.2}{} |",
        if bad { mark } else { "" },
        o.clients,
        o.deliveries_per_s,
        o.p50_ms,
        o.p99_ms,
        o.max_ms,
        o.expected,
        o.duplicates,
        o.out_of_order,
        if o.same_order { "yes" } else { "no ⚠" },
        o.settle_s,
        o.cpu_us_per_delivery,
        o.redis_cpu_us_per_delivery
            .map_or_else(String::new, |r| format!(" + Redis {r:.3}"))
    );
    bad
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {}", kernel.trim())
}

/// Two descriptors per client (the socket and the sender's clone): raise the soft
/// open-files limit to the hard one, as far as this process is allowed.
fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
}

fn main() {
    let cli = Cli::parse();
    raise_open_files_limit();
    since_start();
    println!("threadchat load generator — {}", machine());
    println!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!();
    if cli.scenarios.iter().any(|s| s != "footprint") {
        println!(
            "| scenario | clients | deliveries/s | p50 / p99 / max ms | expected | lost | dup | out of order | same order | joins settled s | server CPU µs per delivery |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
    }
    let mut tally = Tally::default();
    let mut footprint = None;
    let tls = (!cli.tls_scenarios.is_empty()).then(|| Arc::new(Tls::new()));
    for name in &cli.scenarios {
        // The plain row, then the wss one if asked for.
        let mut variants = vec![(None, "")];
        if cli.tls_scenarios.contains(name) {
            variants.push((tls.as_ref(), " (wss)"));
        }
        match name.as_str() {
            "footprint" => footprint = Some(run_footprint(&cli)),
            "idle" | "storm" => tally.bad += idle_rows(&cli, name, &variants),
            _ => {
                let Some(load) = load_of(name, cli.quick) else {
                    eprintln!("unknown scenario {name}");
                    std::process::exit(2);
                };
                load_rows(&cli, name, &load, &variants, &mut tally);
            }
        }
    }
    if tally.naive_rows > 0 {
        println!();
        println!(
            "(naive): naive (examples/naive.rs), {}: the design threadchat is the \
             answer to (one global lock, blocking writes), same load; shown, never failed: \
             {} of {} delivered everything once, in one order",
            cli.naive.as_deref().unwrap_or(""),
            tally.naive_rows - tally.naive_bad,
            tally.naive_rows
        );
    }
    if tally.anchor_rows > 0 {
        println!();
        println!(
            "(socket.io 4 on Node): {}, the server the socket.io tutorial used, same \
             load over WebSocket; shown, never failed: {} of {} delivered everything \
             once, in one order",
            cli.socketio_anchor.as_deref().unwrap_or(""),
            tally.anchor_rows - tally.anchor_bad,
            tally.anchor_rows
        );
    }
    if !tally.redis_calls.is_empty() {
        println!();
        println!("Redis commands per message sent, in the measured window:");
        for line in &tally.redis_calls {
            println!("- {line}");
        }
    }
    if let Some(table) = footprint {
        println!();
        print!("{table}");
    }
    println!();
    let chosen = |list: &[String]| list.iter().filter(|s| cli.scenarios.contains(s)).count();
    let rows = cli.scenarios.len()
        + chosen(&cli.tls_scenarios)
        + chosen(&cli.socketio_scenarios)
        + chosen(&cli.cluster_scenarios) * cli.cluster_nodes.len();
    println!("{} passed, {} failed", rows - tally.bad, tally.bad);
    if tally.bad > 0 {
        eprintln!(
            "some deliveries were lost, duplicated, reordered, crossed rooms, or something leaked"
        );
        std::process::exit(1);
    }
}

/// Rows that failed their checks, and the naive server's rows (shown, never
/// failed).
#[derive(Default)]
struct Tally {
    bad: usize,
    naive_rows: usize,
    naive_bad: usize,
    anchor_rows: usize,
    anchor_bad: usize,
    /// The cluster rows' Redis commands per message, printed under the table.
    redis_calls: Vec<String>,
}

/// The load of scenario `name` (small with `--quick`), or `None` for a name that
/// is not a load scenario.
fn load_of(name: &str, quick: bool) -> Option<Load> {
    let secs = |full: u64, small: u64| Duration::from_secs(if quick { small } else { full });
    let pick = |full: usize, small: usize| if quick { small } else { full };
    let load = |clients, senders, rooms, drive| Load {
        clients,
        senders,
        rooms,
        drive,
        warmup: secs(2, 1),
        duration: secs(10, 2),
        size: 64,
        dialect: Dialect::Json,
    };
    Some(match name {
        "chat" => load(pick(100, 20), pick(10, 4), 0, Drive::Rate(20.0)),
        "fanout" => load(pick(1000, 100), 5, 0, Drive::Rate(20.0)),
        "saturate" => load(pick(200, 40), 4, 0, Drive::Window(8)),
        // 1,000 msg/s in all (20,000 deliveries/s): well within a 2-core
        // machine, so that a failure is the rooms' and not an overload's.
        "rooms" => {
            let (rooms, per_room) = (pick(50, 5), pick(20, 8));
            load(rooms * per_room, rooms * 2, rooms, Drive::Rate(10.0))
        }
        _ => return None,
    })
}

/// The rows of one load scenario: plain and wss, through a cluster, and against
/// the naive server, as asked for.
fn load_rows(
    cli: &Cli,
    name: &str,
    load: &Load,
    variants: &[(Option<&Arc<Tls>>, &str)],
    tally: &mut Tally,
) {
    let label = if load.rooms > 0 {
        format!("{name} ({} × {})", load.rooms, load.clients / load.rooms)
    } else {
        name.to_string()
    };
    for (tls, suffix) in variants {
        let outcome = run_load(&cli.server, true, load, *tls, 0);
        tally.bad += usize::from(print_load_row(&format!("{label}{suffix}"), &outcome, true));
    }
    if cli.socketio_scenarios.iter().any(|s| s == name) {
        let socket_io = Load {
            dialect: Dialect::SocketIo,
            ..*load
        };
        let outcome = run_load(&cli.server, true, &socket_io, None, 0);
        tally.bad += usize::from(print_load_row(
            &format!("{label} (socket.io)"),
            &outcome,
            true,
        ));
        if let Some(anchor) = &cli.socketio_anchor {
            let outcome = run_load(anchor, false, &socket_io, None, 0);
            tally.anchor_rows += 1;
            let row = format!("{label} (socket.io 4 on Node)");
            tally.anchor_bad += usize::from(print_load_row(&row, &outcome, false));
        }
    }
    if cli.cluster_scenarios.iter().any(|s| s == name) {
        for &nodes in &cli.cluster_nodes {
            let outcome = run_load(&cli.server, true, load, None, nodes);
            let row = format!("{label} ({nodes} nodes)");
            tally.bad += usize::from(print_load_row(&row, &outcome, true));
            if let Ok(o) = &outcome {
                let calls: Vec<String> = o
                    .redis_calls_per_message
                    .iter()
                    .map(|(name, per)| format!("{name} {per:.3}"))
                    .collect();
                tally
                    .redis_calls
                    .push(format!("{row}: {}", calls.join(", ")));
            }
        }
    }
    if let Some(naive) = &cli.naive
        && NAIVE_SCENARIOS.contains(&name)
    {
        let outcome = run_load(naive, false, load, None, 0);
        tally.naive_rows += 1;
        tally.naive_bad += usize::from(print_load_row(&format!("{name} (naive)"), &outcome, false));
    }
}

/// The rows of `idle` or `storm`, plain and wss; how many leaked.
fn idle_rows(cli: &Cli, name: &str, variants: &[(Option<&Arc<Tls>>, &str)]) -> usize {
    let n = if cli.quick { 200 } else { 2000 };
    let mut leaked = 0;
    for (tls, suffix) in variants {
        let idle = run_idle(&cli.server, n, *tls);
        let leak = idle.threads.2 > idle.threads.0 || idle.fds.2 > idle.fds.0;
        leaked += usize::from(leak);
        if name == "idle" {
            println!(
                "| idle{suffix} | {} | {:.1} KiB RSS per connection; threads {} → {} → {}, fds {} → {} → {}{} | | | | | | | |",
                idle.clients,
                idle.kib_per_client,
                idle.threads.0,
                idle.threads.1,
                idle.threads.2,
                idle.fds.0,
                idle.fds.1,
                idle.fds.2,
                if leak { " ⚠ leak" } else { "" }
            );
        } else {
            println!(
                "| storm{suffix} | {} | | | | | | | | {:.2} | |",
                idle.clients, idle.settle_s
            );
        }
    }
    leaked
}
