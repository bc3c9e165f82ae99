//! threadchat: a WebSocket chat server written the plain way, with blocking I/O and
//! one OS thread per client.
//!
//! # The threads and channels
//!
//! ```text
//!  browser ──HTTP :8000──▶ [http-accept] ──spawn──▶ [http-3]  one thread per page
//!                           waits for a free place,            connection: a bounded
//!                           then accept()                      head, one answer at a time
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
//! Every connection on either port holds a place ([`places`]) for as long as it
//! holds a thread or a socket; the places add up to the capacity plan
//! ([`capacity`]), and one address can take only its share of them.
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
//! | [`capacity`] | thread, descriptor and memory ceilings; how many of each connection fit |
//! | [`places`] | the ledger of places: in all and per address |
//! | [`accept`] | both ports' acceptor threads: a place, then a thread per connection |
//! | [`hosts`] | which `Host` names we answer to (DNS rebinding) |
//! | [`http`] | a page connection: bounded heads, deadlines, routes |
//! | [`assets`] | the page's files: compiled in, or a folder; Content-Type, ETag |
//! | [`static_files`] | request path → file under `www/`, and nothing outside it |
//! | [`handshake`] | a chat-port connection's handshake: path, name, origin, place |
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
pub mod handshake;
pub mod hosts;
pub mod http;
pub mod hub;
pub mod logging;
pub mod outbox;
pub mod places;
pub mod protocol;
pub mod reader;
pub mod shutdown;
pub mod static_files;
pub mod stats;

use std::error::Error;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use crate::accept::Door;
use crate::assets::Page;
use crate::config::Config;
use crate::handshake::WsSettings;
use crate::hosts::ServerNames;
use crate::places::{Caps, Kind, Places};
use crate::reader::ReaderSettings;
use crate::stats::Stats;

/// Runs the server until SIGINT or SIGTERM. Returns `Err` only when it cannot
/// start (a port taken, the `www` folder missing); after that, trouble with one
/// client is that client's alone.
pub fn run(config: Config) -> Result<(), Box<dyn Error>> {
    config.validate()?;
    let signals = shutdown::signals().map_err(|e| format!("cannot watch for signals: {e}"))?;
    let page = Page::chosen_by(config.www.as_deref())?;

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
    if let Err(e) = capacity::apply(&plan) {
        log::warn!(
            "cannot set the open-files limit to {}: {e}",
            plan.open_files
        );
    }

    let http_listener = bind(&config, config.http_port, "--http-port")?;
    let ws_listener = bind(&config, config.ws_port, "--ws-port")?;
    let http_addr = http_listener.local_addr()?;
    let ws_addr = ws_listener.local_addr()?;

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
    hub::spawn(hub_rx, config.ping_interval(), Arc::clone(&stats))?;

    let ws = WsSettings {
        handshake_timeout: config.handshake_timeout(),
        write_timeout: config.write_timeout(),
        allowed_origins: config.allow_origins.clone(),
        server_names: server_names.clone(),
        echo: config.echo,
        places: Arc::clone(&places),
        reader: ReaderSettings {
            max_message: config.max_message,
            max_backlog: config.max_backlog,
            idle_timeout: config.idle_timeout(),
            drain_timeout: config.write_timeout(),
        },
    };
    let hub = hub_tx.clone();
    let door = Door {
        name: "ws-accept",
        prefix: "client",
        kind: Kind::Handshake,
        places: Arc::clone(&places),
    };
    accept::spawn(ws_listener, door, move |conn| {
        handshake::serve(conn, &ws, &hub)
    })?;

    log::info!("page: {page}");
    let site = http::Site {
        page,
        stats: Arc::clone(&stats),
        places: Arc::clone(&places),
        hub: hub_tx.clone(),
        ws_port: ws_addr.port(),
        server_names: server_names.clone(),
        timeout: config.http_timeout(),
    };
    let door = Door {
        name: "http-accept",
        prefix: "http",
        kind: Kind::Http,
        places: Arc::clone(&places),
    };
    accept::spawn(http_listener, door, move |conn| http::serve(conn, &site))?;

    log::info!("host names answered: {server_names}");
    log::info!("listening: page http://{http_addr}/");
    if config.echo {
        log::info!("listening: chat ws://{ws_addr}/ (and ws://{ws_addr}/echo)");
    } else {
        log::info!("listening: chat ws://{ws_addr}/");
    }
    if http_addr.ip().is_unspecified() {
        log::info!(
            "every interface: open http://<this machine's address>:{}/ in a browser",
            http_addr.port()
        );
    }

    shutdown::wait_then_close(signals, &hub_tx, &places, &stats);
    Ok(())
}

/// What the configuration asks the machine to carry.
fn wanted(config: &Config, page: &Page) -> capacity::Wanted {
    capacity::Wanted {
        clients: config.max_clients as u64,
        http: config.max_http as u64,
        echo: if config.echo {
            places::ECHO_CLIENTS as u64
        } else {
            0
        },
        client_bytes: capacity::client_memory(config.max_backlog, config.max_message),
        http_bytes: capacity::http_memory(page.largest_answer()),
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
    // Port 0: proves the address belongs to this machine, and takes no real port.
    TcpListener::bind(SocketAddr::new(config.bind, 0))
        .map_err(|e| format!("--bind {}: cannot listen on this address: {e}", config.bind))?;
    let wanted = wanted(config, &page);
    let plan = capacity::plan(&wanted, &capacity::Limits::read());
    let http = SocketAddr::new(config.bind, config.http_port);
    let ws = SocketAddr::new(config.bind, config.ws_port);
    let mut report = format!("page: {page}\nlisten: page http://{http}/, chat ws://{ws}/\n");
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
