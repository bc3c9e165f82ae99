//! Starting, running and stopping the server: [`run`] in the order of the
//! README's picture of the threads (the capacity plan, the cluster, the hub, the
//! chat port, the page port, then the stop), [`run_until_signalled`] around it
//! for the binary, and [`check`] for `--check-config`.

use std::error::Error;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::accept::{self, Acceptor, Door};
use crate::assets::Page;
use crate::budget::{BudgetSettings, Budgets};
use crate::capacity::{self, Plan};
use crate::cluster::{self, Cluster};
use crate::config::Config;
use crate::event::Event;
use crate::event::Publish;
use crate::handshake::{self, WsSettings};
use crate::hosts::ServerNames;
use crate::http;
use crate::hub;
use crate::places::{self, Cap, Caps, Kind, Places};
use crate::protocol::unix_millis;
use crate::reader::ReaderSettings;
use crate::shutdown::{self, Control};
use crate::stats::Stats;
use crate::tls;

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
    let plan = plan_and_say(&config, &page);
    let places = Places::new(Caps {
        http: Cap {
            total: plan.max_http,
            per_host: config.max_http_per_host,
        },
        handshakes: Cap {
            total: plan.handshakes,
            per_host: config.max_handshakes_per_host,
        },
        clients: Cap {
            total: plan.max_clients,
            per_host: config.max_per_host,
        },
        echo: plan.echo,
    });
    let stats = Arc::new(Stats::new());
    let (hub_tx, hub_rx) = crossbeam_channel::bounded(hub::EVENT_QUEUE);

    // The cluster first: it decides the epoch and this node's share of client ids.
    let joined = Joined::cluster_of(&config)?;
    start_hub(&config, joined.as_ref(), hub_rx, &stats)?;
    let first_client_id = joined.as_ref().map_or(1, |j| j.cluster.first_client_id());
    // From here on, a start that fails stops the Redis threads as it returns.
    let _redis_threads = joined.map(|j| j.start(hub_tx.clone())).transpose()?;

    let ws_addr = listeners.ws.local_addr()?;
    let http_addr = listeners.http.local_addr()?;
    let server_names = ServerNames::new(&config.server_names);
    let ws = Arc::new(ws_settings(
        &config,
        tls.clone(),
        &places,
        &stats,
        &server_names,
        first_client_id,
    )?);
    // Read once (`--token-file` may change or go), for both ports alike.
    let access_token = ws.access_token.clone();
    let chat_port = start_chat_port(listeners.ws, &ws, &places, &hub_tx)?;

    log::info!("page: {page}");
    let site = http::Site {
        page,
        stats: Arc::clone(&stats),
        places: Arc::clone(&places),
        hub: hub_tx.clone(),
        ws_port: ws_addr.port(),
        access_token,
        tls: tls.clone(),
        server_names: server_names.clone(),
        timeout: config.http_timeout(),
        chat: ws,
    };
    let page_port = match start_page_port(listeners.http, site, &places) {
        Ok(acceptor) => acceptor,
        Err(e) => {
            places.close();
            chat_port.stop();
            chat_port.join();
            return Err(e.into());
        }
    };
    say_where(&config, &server_names, tls.is_some(), http_addr, ws_addr);

    shutdown::serve_until_stopped(&controls, &stats);
    // Nothing new gets in from here on, then everyone is told.
    places.close();
    chat_port.stop();
    page_port.stop();
    shutdown::close_everyone(&hub_tx, &places);
    chat_port.join();
    page_port.join();
    Ok(())
}

/// The capacity plan for this machine, said in the log, with a warning when it
/// cannot carry what the settings ask for.
fn plan_and_say(config: &Config, page: &Page) -> Plan {
    let plan = capacity::plan(&wanted(config, page), &capacity::Limits::read());
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
    plan
}

/// A node that has joined its cluster (`--redis`), before its Redis threads start:
/// the hub hands its clients' messages to `outgoing`, which `redis-out` reads as
/// `to_redis`.
struct Joined {
    cluster: Cluster,
    outgoing: Sender<Publish>,
    to_redis: Receiver<Publish>,
}

impl Joined {
    /// Joins the cluster of `--redis`, if there is one.
    fn cluster_of(config: &Config) -> Result<Option<Joined>, Box<dyn Error>> {
        let Some(url) = config.redis_url() else {
            return Ok(None);
        };
        let redis = cluster::RedisAccess::new(url, config.redis_ca())?;
        let cluster = Cluster::join(&redis, unix_millis(), backfill_entries(config))?;
        log::info!("cluster: node {} through {}", cluster.node, redis.shown());
        let (outgoing, to_redis) = crossbeam_channel::bounded(cluster::OUTGOING_QUEUE);
        Ok(Some(Joined {
            cluster,
            outgoing,
            to_redis,
        }))
    }

    /// Starts `redis-in`, `redis-presence` and `redis-out`.
    fn start(self, hub: Sender<Event>) -> std::io::Result<RedisThreads> {
        self.cluster.spawn(self.to_redis, hub.clone())?;
        Ok(RedisThreads {
            cluster: self.cluster,
            hub,
        })
    }
}

/// The cluster's Redis threads, stopped when this is dropped: when `run` returns,
/// and also when a start fails half-way, so that none is left behind.
struct RedisThreads {
    cluster: Cluster,
    /// `redis-out` ends when the hub lets go of its channel, which the hub does at
    /// `Shutdown` (sent again here, harmlessly, after a stop that sent it).
    hub: Sender<Event>,
}

impl Drop for RedisThreads {
    fn drop(&mut self) {
        self.cluster.stop();
        let _ = (self.hub).send_timeout(Event::Shutdown, Duration::from_secs(1));
    }
}

/// Starts the hub: in a cluster, with the cluster's epoch, its side of the
/// cluster, and the stream's recent entries to start from.
fn start_hub(
    config: &Config,
    joined: Option<&Joined>,
    events: Receiver<Event>,
    stats: &Arc<Stats>,
) -> std::io::Result<()> {
    let settings = hub::HubSettings {
        ping_interval: config.ping_interval(),
        history: config.history as usize,
        max_rooms: config.max_rooms as usize,
        max_rooms_per_host: config.max_rooms_per_host,
        epoch: joined.map_or_else(unix_millis, |j| j.cluster.epoch),
    };
    let backfill = joined.map_or_else(Vec::new, |j| j.cluster.backfill());
    let cluster = joined.map(|j| j.cluster.hub_side(j.outgoing.clone()));
    hub::spawn(events, settings, cluster, Arc::clone(stats), backfill).map(drop)
}

/// What the chat port's connections need: from the settings, and the parts of the
/// server they share.
fn ws_settings(
    config: &Config,
    tls: Option<Arc<rustls::ServerConfig>>,
    places: &Arc<Places>,
    stats: &Arc<Stats>,
    server_names: &ServerNames,
    first_client_id: u64,
) -> Result<WsSettings, String> {
    Ok(WsSettings {
        handshake_timeout: config.handshake_timeout(),
        write_timeout: config.write_timeout(),
        allowed_origins: config.allow_origins.clone(),
        server_names: server_names.clone(),
        echo: config.echo,
        // An empty token (a settings file line left blank) is no token.
        admin_token: config.admin_token.clone().filter(|t| !t.is_empty()),
        access_token: config.access_token()?,
        tls,
        places: Arc::clone(places),
        stats: Arc::clone(stats),
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
        // Chat ids: the chat port's, the page port's for the Socket.IO clients it
        // hands over, and a Socket.IO connection's for its other namespaces.
        client_ids: Arc::new(AtomicU64::new(first_client_id)),
    })
}

/// The chat port's acceptor: every connection a handshake place and a thread.
fn start_chat_port(
    listener: TcpListener,
    ws: &Arc<WsSettings>,
    places: &Arc<Places>,
    hub: &Sender<Event>,
) -> std::io::Result<Acceptor> {
    let (ws, hub) = (Arc::clone(ws), hub.clone());
    let door = Door {
        name: "ws-accept",
        prefix: "client",
        kind: Kind::Handshake,
        places: Arc::clone(places),
        ids: Arc::clone(&ws.client_ids),
    };
    accept::spawn(listener, door, move |conn| {
        handshake::serve(conn, &ws, &hub)
    })
}

/// The page port's acceptor: every connection a page place and a thread.
fn start_page_port(
    listener: TcpListener,
    site: http::Site,
    places: &Arc<Places>,
) -> std::io::Result<Acceptor> {
    let door = Door {
        name: "http-accept",
        prefix: "http",
        kind: Kind::Http,
        places: Arc::clone(places),
        ids: Arc::new(AtomicU64::new(1)),
    };
    accept::spawn(listener, door, move |conn| http::serve(conn, &site))
}

/// The lines that tell whoever started the server where to find it.
fn say_where(
    config: &Config,
    server_names: &ServerNames,
    tls: bool,
    http_addr: SocketAddr,
    ws_addr: SocketAddr,
) {
    log::info!("host names answered: {server_names}");
    let (http, ws) = schemes(tls);
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
        // In a cluster, also what a client asks while its seat is on its way.
        client_bytes: capacity::client_memory(config.max_backlog, config.max_message, tls)
            + if config.redis_url().is_some() {
                hub::HELD_MEMORY
            } else {
                0
            },
        http_bytes: capacity::http_memory(page.largest_answer(), tls),
        // The rooms' histories, and in a cluster what waits for Redis and the
        // histories of a time cut off from it.
        shared_bytes: if config.redis_url().is_some() {
            2 * config.max_rooms * hub::HISTORY_BYTES as u64
                + cluster::OUTGOING_BYTES
                + cluster::READ_BYTES
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
