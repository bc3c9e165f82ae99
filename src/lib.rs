//! threadchat: a WebSocket chat server written the plain way, with blocking I/O and
//! one OS thread per client.
//!
//! # The threads and channels
//!
//! ```text
//!  browser ──HTTP :8000──▶ [tiny_http accept + pool] ──Request──▶ [http] ──▶ [http-1..4]
//!                                                                 dispatcher   workers: files,
//!                                    sleeps in poll() while nobody visits ┘    /stats, /healthz
//!
//!  client ──TCP :8001──▶ [ws-accept] ──spawn──▶ [client-7]  handshake, then the reader:
//!                                                   │       blocks in read(), owns the read side
//!                                                   │ Event::{Join, Message, Leave}
//!                                                   ▼ (one bounded crossbeam channel)
//!                                                [hub]  the registry, message ids, batches
//!                                                   │
//!                              send(MSG_DONTWAIT) per client per batch
//!                                                   ▼
//!                                       Outbox of client 7 ──▶ socket
//!                                         │ what the kernel did not take, in order
//!                                         ▼
//!                                     [writer-7]  only while client 7 is behind
//!
//!  [main]  waits for SIGINT/SIGTERM, then Event::Shutdown → close 1001 to everyone
//!          (SIGHUP: a status line in the log, nothing else)
//! ```
//!
//! A message's path: client 7's reader parses and validates it
//! ([`protocol::parse_chat`]) and sends `Event::Message` to the hub. The hub takes
//! it together with every other event already waiting, gives each message the next
//! id, encodes all their frames once into one buffer, and hands that buffer to every
//! client's [`outbox::Outbox`]. An outbox writes it straight to the socket if the
//! kernel takes it, which is the common case; otherwise it keeps the rest, in
//! order, for that client's writer thread. Every client receives the broadcasts in
//! the hub's order, the sender included.
//!
//! Who writes a socket: only its outbox, through exactly one party at a time (the
//! module docs of [`outbox`] show why). Who reads it: only its reader.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | flags and environment, every limit with its reason |
//! | [`logging`] | log lines: human, or JSON for journald |
//! | [`capacity`] | thread and descriptor ceilings; how many clients fit |
//! | [`http`] | the page: tiny_http, its dispatcher and workers, keeping it alive |
//! | [`assets`] | the page's files: compiled in, or a folder; Content-Type, ETag |
//! | [`static_files`] | request path → file under `www/`, and nothing outside it |
//! | [`accept`] | the acceptor thread, the handshake: limits, origin, subprotocol |
//! | [`reader`] | a client's thread after the handshake: read loop → hub events |
//! | [`hub`] | the fan-out thread: registry, ids, batches |
//! | [`outbox`] | the write path: write-through, backlog, the writer thread |
//! | [`frame`] | server frames as bytes, encoded once |
//! | [`protocol`] | protocol v1 types and validation; no I/O |
//! | [`stats`] | counters for `/stats` |
//! | [`shutdown`] | signals → close 1001 → exit |

#![deny(missing_docs)]

pub mod accept;
pub mod assets;
pub mod capacity;
pub mod config;
pub mod frame;
pub mod http;
pub mod hub;
pub mod logging;
pub mod outbox;
pub mod protocol;
pub mod reader;
pub mod shutdown;
pub mod static_files;
pub mod stats;

use std::error::Error;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use crate::accept::{Connections, WsSettings};
use crate::assets::Page;
use crate::config::Config;
use crate::reader::ReaderSettings;
use crate::stats::Stats;

/// Runs the server until SIGINT or SIGTERM. Returns `Err` only when it cannot
/// start (a port taken, the `www` folder missing); after that, trouble with one
/// client is that client's alone.
pub fn run(config: Config) -> Result<(), Box<dyn Error>> {
    config.validate()?;
    let signals = shutdown::signals().map_err(|e| format!("cannot watch for signals: {e}"))?;

    let limits = capacity::Limits::read();
    let plan = capacity::plan(config.max_clients, &limits);
    log::info!(
        "capacity: {} threads (vm.max_map_count {}), {} open files (hard limit {}): up to {} WebSocket clients",
        plan.thread_budget,
        plan.max_map_count
            .map_or("unknown".to_string(), |n| n.to_string()),
        plan.open_files,
        plan.open_files_hard,
        plan.max_clients
    );
    if plan.clamped {
        log::warn!(
            "--max-clients {} lowered to {}: this machine cannot carry more (raise `ulimit -n` or vm.max_map_count)",
            config.max_clients,
            plan.max_clients
        );
    }
    if let Err(e) = capacity::apply(&plan) {
        log::warn!(
            "cannot set the open-files limit to {}: {e}",
            plan.open_files
        );
    }

    let page = Page::chosen_by(config.www.as_deref())?;
    let http_listener = bind(&config, config.http_port, "--http-port")?;
    let ws_listener = bind(&config, config.ws_port, "--ws-port")?;
    let http_addr = http_listener.local_addr()?;
    let ws_addr = ws_listener.local_addr()?;

    let stats = Arc::new(Stats::new());
    let (hub_tx, hub_rx) = crossbeam_channel::bounded(hub::EVENT_QUEUE);
    hub::spawn(hub_rx, config.ping_interval(), Arc::clone(&stats))?;

    let connections = Connections::new(plan.max_clients + capacity::HANDSHAKE_SLOTS as usize);
    let settings = WsSettings {
        max_clients: plan.max_clients,
        handshake_timeout: config.handshake_timeout(),
        write_timeout: config.write_timeout(),
        allowed_origins: config.allow_origins.clone(),
        reader: ReaderSettings {
            max_message: config.max_message,
            max_backlog: config.max_backlog,
            idle_timeout: config.idle_timeout(),
        },
    };
    accept::spawn(
        ws_listener,
        settings,
        hub_tx.clone(),
        Arc::clone(&connections),
    )?;
    log::info!("page: {page}");
    let site = http::Site {
        page,
        stats: Arc::clone(&stats),
        ws_port: ws_addr.port(),
    };
    http::start(http_listener, config.http_timeout(), site)?;

    log::info!("listening: page http://{http_addr}/");
    log::info!("listening: chat ws://{ws_addr}/ (and ws://{ws_addr}/echo)");
    if http_addr.ip().is_unspecified() {
        log::info!(
            "every interface: open http://<this machine's address>:{}/ in a browser",
            http_addr.port()
        );
    }

    shutdown::wait_then_close(signals, &hub_tx, &connections, &stats);
    Ok(())
}

/// `--check-config`: checks the settings and the files they name without starting
/// anything, and reports what the server would run with. The ports themselves are
/// not tried: a running server may hold them, and checking a new configuration
/// before restarting it is the point.
pub fn check(config: &Config) -> Result<String, Box<dyn Error>> {
    config.validate()?;
    let page = Page::chosen_by(config.www.as_deref())?;
    // Port 0: proves the address belongs to this machine, and takes no real port.
    TcpListener::bind(SocketAddr::new(config.bind, 0))
        .map_err(|e| format!("--bind {}: cannot listen on this address: {e}", config.bind))?;
    let plan = capacity::plan(config.max_clients, &capacity::Limits::read());
    let asked = config.max_clients as u64;
    let http = SocketAddr::new(config.bind, config.http_port);
    let ws = SocketAddr::new(config.bind, config.ws_port);
    let mut report = format!("page: {page}\nlisten: page http://{http}/, chat ws://{ws}/\n");
    if plan.clamped {
        report += &format!(
            "warning: --max-clients {asked} would be lowered to {}: raise the open-files \
             limit to {} and the task limit to {}\n",
            plan.max_clients,
            capacity::open_files_needed(asked),
            capacity::tasks_needed(asked)
        );
    } else {
        report += &format!("clients: up to {}\n", plan.max_clients);
    }
    report += &format!(
        "a service needs: LimitNOFILE={} TasksMax={}\nconfiguration ok\n",
        capacity::open_files_needed(asked),
        capacity::tasks_needed(asked)
    );
    Ok(report)
}

fn bind(config: &Config, port: u16, flag: &str) -> Result<TcpListener, String> {
    let addr = SocketAddr::new(config.bind, port);
    TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr} ({flag}): {e}"))
}
