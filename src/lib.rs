//! threadchat: a WebSocket chat server written the plain way, with blocking I/O and
//! one OS thread per connection.
//!
//! The README's first screen has the picture of the threads and the channels
//! between them, and a table of where to read each idea; `docs/DESIGN.md` has the
//! capacity plan and the limits. In one paragraph: an acceptor thread per port
//! gives every connection a place (`places`) and a thread of its own; a chat
//! client's thread (`reader`) turns what it reads into events for the hub
//! (`hub`), the one thread that owns the list of clients and decides who gets
//! what, in which order; the hub hands each batch of frames to every client's
//! outbox (`outbox`), which writes it straight to the socket when the kernel
//! takes it and starts a writer thread for that client when it does not.
//!
//! # Entry points
//!
//! * [`run`] serves on listeners the caller bound, until a [`Control::Stop`] (or
//!   until every sender of the control channel is gone). It has no process-wide
//!   side effects: tests start it in-process on port 0, several at once.
//! * [`run_until_signalled`] is what `main` calls. It binds the configured ports,
//!   sets the process's open-files limit to the capacity plan, and turns SIGINT and
//!   SIGTERM into a stop and SIGHUP into a status line.
//! * [`check`] is `--check-config`.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | flags and environment, every limit with its reason |
//! | [`logging`] | log lines: human, or JSON for journald; client text escaped and cut; lines a client can cause, limited per kind |
//! | `capacity` | thread, descriptor and memory ceilings; how many of each connection fit |
//! | `places` | the ledger of places: in all and per address |
//! | `budget` | what one address may send and make the server send, across its connections |
//! | `accept` | both ports' acceptor threads: a place, then a thread per connection |
//! | `hosts` | which `Host` names we answer to (DNS rebinding) |
//! | `http` | a page connection: bounded heads, deadlines, routes |
//! | `assets` | the page's files: compiled in, or a folder; Content-Type, ETag |
//! | [`static_files`] | request path → file under `www/`, and nothing outside it |
//! | `handshake` | a chat-port connection's handshake: path, name, origin, place |
//! | `reader` | a client's thread after the handshake: read loop → hub events |
//! | `hub` | the fan-out thread: registry, ids, batches |
//! | `outbox` | the write path: write-through, backlog, the writer thread |
//! | `frame` | server frames as bytes, encoded once |
//! | `tls` | https and wss: one rustls configuration; a TLS connection shared by two threads |
//! | [`protocol`] | protocol v1 types and validation; no I/O |
//! | `stats` | counters for `/stats` |
//! | `shutdown` | signals → stop; the stop → close 1001 → return |
//! | `cluster` | several nodes as one chat: the bridge to Redis (`--redis`) |
//!
//! Only what another crate uses is public: the entry points, the configuration and
//! logging (for `main`), and the protocol parser and path resolver (for the fuzz
//! targets, the property tests and `examples/naive.rs`).

#![deny(missing_docs)]

mod accept;
mod assets;
mod backoff;
mod budget;
mod capacity;
mod cluster;
pub mod config;
mod frame;
mod handshake;
mod hosts;
mod http;
mod hub;
pub mod logging;
mod outbox;
mod places;
pub mod protocol;
mod reader;
mod shutdown;
pub mod static_files;
mod stats;
mod tls;

use std::error::Error;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_channel::Receiver;

use crate::accept::Door;
use crate::assets::Page;
use crate::budget::{BudgetSettings, Budgets};
use crate::config::Config;
use crate::handshake::WsSettings;
use crate::hosts::ServerNames;
use crate::places::{Caps, Kind, Places};
use crate::reader::ReaderSettings;
use crate::stats::Stats;

pub use crate::shutdown::Control;

/// The two listening sockets, bound by the caller: port 0 in tests, the
/// configured ports in the binary.
pub struct Listeners {
    /// The page's port.
    pub http: TcpListener,
    /// The chat's port.
    pub ws: TcpListener,
}

impl Listeners {
    /// Binds `--bind` on `--http-port` and `--ws-port`.
    pub fn bind(config: &Config) -> Result<Listeners, String> {
        Ok(Listeners {
            http: bind(config, config.http_port, "--http-port")?,
            ws: bind(config, config.ws_port, "--ws-port")?,
        })
    }
}

/// The whole process, as `main` runs it: bind the configured ports, size the
/// open-files limit to the plan, serve until SIGINT or SIGTERM. Returns `Err` only
/// when it cannot start (a port taken, the `www` folder missing); after that,
/// trouble with one client is that client's alone.
pub fn run_until_signalled(config: Config) -> Result<(), Box<dyn Error>> {
    // First, so that a signal that arrives while the server starts is not lost.
    let controls = shutdown::forward_signals()?;
    config.validate()?;
    let page = Page::chosen_by(config.www.as_deref())?;
    // Bad certificate files are found before anything listens (`run` loads them
    // again: it is also the in-process entry point).
    load_tls(&config)?;
    let plan = capacity::plan(&wanted(&config, &page), &capacity::Limits::read());
    // Process-wide, so here and not in `run`: the places keep the count below it,
    // and the limit is the backstop (see `capacity::apply`).
    if let Err(e) = capacity::apply(&plan) {
        log::warn!(
            "cannot set the open-files limit to {}: {e}",
            plan.open_files
        );
    }
    let listeners = Listeners::bind(&config)?;
    run(config, listeners, controls)
}

/// Runs the server on `listeners` until `controls` says [`Control::Stop`] or every
/// sender of it is gone; then the acceptors stop, every client hears close 1001,
/// and it returns once the chat port's connections are gone or after a grace of
/// 1.5 s. Threads of clients that never answer end on their own deadlines (in the
/// binary, with the process). [`Control::Status`] logs a status line.
pub fn run(
    config: Config,
    listeners: Listeners,
    controls: Receiver<Control>,
) -> Result<(), Box<dyn Error>> {
    config.validate()?;
    let page = Page::chosen_by(config.www.as_deref())?;
    let tls = load_tls(&config)?;
    let wanted = wanted(&config, &page);
    let plan = capacity::plan(&wanted, &capacity::Limits::read());
    log::info!(
        "capacity: {} threads (vm.max_map_count {}), {} open files (hard limit {}), {} of memory: \
         up to {} chat clients, {} page connections, {} handshakes; worst case {}",
        plan.thread_budget,
        plan.max_map_count
            .map_or("unknown".to_string(), |n| n.to_string()),
        plan.open_files,
        plan.open_files_hard,
        plan.memory_budget.map_or("unknown".to_string(), mib),
        plan.max_clients,
        plan.max_http,
        plan.handshakes,
        mib(plan.worst_case_memory),
    );
    if plan.clamped {
        log::warn!(
            "--max-clients {} and --max-http {} lowered to {} and {}: this machine cannot carry \
             more (raise `ulimit -n` or vm.max_map_count, or lower --max-backlog and \
             --max-message, which set what one client may cost)",
            config.max_clients,
            config.max_http,
            plan.max_clients,
            plan.max_http
        );
    }

    let http_addr = listeners.http.local_addr()?;
    let ws_addr = listeners.ws.local_addr()?;
    let places = Places::new(Caps {
        total: [plan.max_http, plan.handshakes, plan.max_clients, plan.echo],
        per_host: [
            config.max_http_per_host,
            config.max_handshakes_per_host,
            config.max_per_host,
        ],
    });
    let server_names = ServerNames::new(&config.server_names);
    let stats = Arc::new(Stats::new());
    let (hub_tx, hub_rx) = crossbeam_channel::bounded(hub::EVENT_QUEUE);
    let mut epoch = hub::unix_millis();
    // In a cluster, the cluster's epoch and this node's share of client ids.
    let cluster = match config.redis_url() {
        Some(url) => {
            let redis = cluster::RedisAccess::new(url, config.redis_ca())?;
            let cluster = cluster::Cluster::join(&redis, epoch, backfill_entries(&config))?;
            log::info!("cluster: node {} through {}", cluster.node, redis.shown());
            epoch = cluster.epoch;
            let (outgoing, to_redis) = crossbeam_channel::bounded(cluster::OUTGOING_QUEUE);
            Some((cluster, outgoing, to_redis))
        }
        None => None,
    };
    let hub_settings = hub::HubSettings {
        ping_interval: config.ping_interval(),
        history: config.history as usize,
        max_rooms: config.max_rooms as usize,
        max_rooms_per_host: config.max_rooms_per_host,
        epoch,
        cluster: cluster
            .as_ref()
            .map(|(c, outgoing, _)| c.hub_side(outgoing.clone())),
    };
    let backfill = match &cluster {
        Some((cluster, _, _)) => cluster.backfill(),
        None => Vec::new(),
    };
    hub::spawn(hub_rx, hub_settings, Arc::clone(&stats), backfill)?;
    let first_client_id = cluster.as_ref().map_or(1, |(c, _, _)| c.first_client_id());
    let cluster = match cluster {
        Some((cluster, _, to_redis)) => {
            cluster.spawn(to_redis, hub_tx.clone())?;
            Some(cluster)
        }
        None => None,
    };

    let ws = WsSettings {
        handshake_timeout: config.handshake_timeout(),
        write_timeout: config.write_timeout(),
        allowed_origins: config.allow_origins.clone(),
        server_names: server_names.clone(),
        echo: config.echo,
        // An empty token (a settings file line left blank) is no token.
        admin_token: config.admin_token.clone().filter(|t| !t.is_empty()),
        access_token: config.access_token()?,
        tls: tls.clone(),
        places: Arc::clone(&places),
        stats: Arc::clone(&stats),
        reader: ReaderSettings {
            max_message: config.max_message,
            max_backlog: config.max_backlog,
            idle_timeout: config.idle_timeout(),
            drain_timeout: config.write_timeout(),
            rate: config.rate,
            burst: config.burst,
        },
        budgets: Budgets::new(BudgetSettings {
            frames: config.host_frames,
            bytes_in: config.host_bytes_in,
            bytes_out: config.host_bytes_out,
        }),
    };
    let hub = hub_tx.clone();
    let door = Door {
        name: "ws-accept",
        prefix: "client",
        kind: Kind::Handshake,
        places: Arc::clone(&places),
        first_id: first_client_id,
    };
    let ws_acceptor = accept::spawn(listeners.ws, door, move |conn| {
        handshake::serve(conn, &ws, &hub)
    })?;

    log::info!("page: {page}");
    let site = http::Site {
        page,
        stats: Arc::clone(&stats),
        places: Arc::clone(&places),
        hub: hub_tx.clone(),
        ws_port: ws_addr.port(),
        access_token: config.access_token()?,
        tls: tls.clone(),
        server_names: server_names.clone(),
        timeout: config.http_timeout(),
    };
    let door = Door {
        name: "http-accept",
        prefix: "http",
        kind: Kind::Http,
        places: Arc::clone(&places),
        first_id: 1,
    };
    let http_acceptor =
        match accept::spawn(listeners.http, door, move |conn| http::serve(conn, &site)) {
            Ok(acceptor) => acceptor,
            Err(e) => {
                places.close();
                ws_acceptor.stop();
                ws_acceptor.join();
                return Err(e.into());
            }
        };

    log::info!("host names answered: {server_names}");
    let (http, ws) = schemes(tls.is_some());
    log::info!("listening: page {http}://{http_addr}/");
    if config.echo {
        log::info!("listening: chat {ws}://{ws_addr}/ (and {ws}://{ws_addr}/echo)");
    } else {
        log::info!("listening: chat {ws}://{ws_addr}/");
    }
    if http_addr.ip().is_unspecified() {
        log::info!(
            "every interface: open {http}://<this machine's address>:{}/ in a browser",
            http_addr.port()
        );
    }

    shutdown::serve_until_stopped(&controls, &stats);
    // Nothing new gets in from here on, then everyone is told.
    places.close();
    ws_acceptor.stop();
    http_acceptor.stop();
    shutdown::close_everyone(&hub_tx, &places);
    ws_acceptor.join();
    http_acceptor.join();
    if let Some(cluster) = &cluster {
        cluster.stop();
    }
    Ok(())
}

/// The rustls configuration of `--tls-cert`/`--tls-key`, if given.
fn load_tls(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    match config.tls_files()? {
        Some((cert, key)) => tls::load(cert, key).map(Some),
        None => Ok(None),
    }
}

/// The page's and the chat's URL schemes.
fn schemes(tls: bool) -> (&'static str, &'static str) {
    if tls {
        ("https", "wss")
    } else {
        ("http", "ws")
    }
}

/// How many of the cluster's last messages a node starts with: enough to fill
/// every room's history, if they were spread evenly.
fn backfill_entries(config: &Config) -> usize {
    (config.history * config.max_rooms).min(10_000) as usize
}

/// What the configuration asks the machine to carry.
fn wanted(config: &Config, page: &Page) -> capacity::Wanted {
    let tls = config.tls_files().ok().flatten().is_some();
    capacity::Wanted {
        clients: config.max_clients as u64,
        http: config.max_http as u64,
        echo: if config.echo {
            places::ECHO_CLIENTS as u64
        } else {
            0
        },
        client_bytes: capacity::client_memory(config.max_backlog, config.max_message, tls),
        http_bytes: capacity::http_memory(page.largest_answer(), tls),
        // The rooms' histories, and in a cluster what waits for Redis and the
        // histories of a time cut off from it.
        shared_bytes: if config.redis_url().is_some() {
            2 * config.max_rooms * hub::HISTORY_BYTES as u64 + cluster::OUTGOING_BYTES
        } else {
            config.max_rooms * hub::HISTORY_BYTES as u64
        },
        tls,
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// `--check-config`: checks the settings and the files they name without starting
/// anything, and reports what the server would run with. The ports themselves are
/// not tried: a running server may hold them, and checking a new configuration
/// before restarting it is the point.
pub fn check(config: &Config) -> Result<String, Box<dyn Error>> {
    config.validate()?;
    let page = Page::chosen_by(config.www.as_deref())?;
    let tls = load_tls(config)?;
    // Port 0: proves the address belongs to this machine, and takes no real port.
    TcpListener::bind(SocketAddr::new(config.bind, 0))
        .map_err(|e| format!("--bind {}: cannot listen on this address: {e}", config.bind))?;
    let wanted = wanted(config, &page);
    let plan = capacity::plan(&wanted, &capacity::Limits::read());
    let http = SocketAddr::new(config.bind, config.http_port);
    let ws = SocketAddr::new(config.bind, config.ws_port);
    let (http_scheme, ws_scheme) = schemes(tls.is_some());
    let mut report =
        format!("page: {page}\nlisten: page {http_scheme}://{http}/, chat {ws_scheme}://{ws}/\n");
    let (nofile, tasks) = (
        capacity::open_files_needed(&wanted),
        capacity::tasks_needed(&wanted),
    );
    if plan.clamped {
        report += &format!(
            "warning: --max-clients {} and --max-http {} would be lowered to {} and {}: raise \
             the open-files limit to {nofile} and the task limit to {tasks}, or lower \
             --max-backlog and --max-message if memory is what runs out\n",
            config.max_clients, config.max_http, plan.max_clients, plan.max_http,
        );
    } else {
        report += &format!(
            "clients: up to {}, page connections: up to {}\n",
            plan.max_clients, plan.max_http
        );
    }
    report += &format!(
        "memory, worst case: {} per client, {} in all\n",
        mib(wanted.client_bytes),
        mib(plan.worst_case_memory)
    );
    if let Some(url) = config.redis_url() {
        let redis = cluster::RedisAccess::new(url, config.redis_ca())?;
        report += &format!(
            "cluster: one node of a chat through {} (not tried here)\n",
            redis.shown()
        );
    }
    report += match config.access_token()? {
        Some(_) => {
            "chat: clients must present the access token (open the page as \
                    http://<host>/#token=<token>)\n"
        }
        None => "chat: open to anyone who can reach it (no --token)\n",
    };
    report +=
        &format!("a service needs: LimitNOFILE={nofile} TasksMax={tasks}\nconfiguration ok\n");
    Ok(report)
}

/// How many connections the kernel may queue for `accept`. std asks for 128, which
/// a classroom connecting at once overflows (the rest wait for a SYN retry, a
/// second or more); connections also wait here while every place is taken.
const LISTEN_BACKLOG: i32 = 1024;

fn bind(config: &Config, port: u16, flag: &str) -> Result<TcpListener, String> {
    let addr = SocketAddr::new(config.bind, port);
    let listener =
        TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr} ({flag}): {e}"))?;
    // Listening again on a listening socket only changes its queue's length.
    rustix::net::listen(&listener, LISTEN_BACKLOG)
        .map_err(|e| format!("cannot listen on {addr} ({flag}): {e}"))?;
    Ok(listener)
}

/// Locks `mutex` even if a thread panicked while holding it. Every mutex here
/// guards plain counters and queues that each update leaves whole, so a panic
/// elsewhere (a bug) must not take every other client down with it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether a read or write ended at its timeout (`SO_RCVTIMEO` and `SO_SNDTIMEO`
/// say `WouldBlock` on Linux, `TimedOut` elsewhere).
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}
