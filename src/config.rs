//! Flags and environment variables, turned into one plain [`Config`].
//!
//! Every limit the server enforces is here with the threat it counters, so a test
//! can shrink a timeout to a second and a reader can see every knob in one place.
//! Each flag can also come from a `THREADCHAT_*` environment variable (flags win).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use clap::builder::{OsStringValueParser, TypedValueParser};

use crate::hub::LARGEST_BATCH;
use crate::logging::LogFormat;
use crate::outbox::smallest_useful_backlog;

/// Most bytes a WebSocket frame header adds to a message (2 + 8 length bytes, plus
/// a 4-byte mask on the way in).
const FRAME_HEADER: usize = 14;

/// A small real-time chat server: a web page on one port, WebSocket chat on another.
#[derive(Debug, Clone, Parser)]
#[command(name = "threadchat", version, about)]
pub struct Config {
    /// Address to listen on, for both ports (0.0.0.0: every interface, like the
    /// original; 127.0.0.1: this machine only).
    #[arg(
        long,
        env = "THREADCHAT_BIND",
        default_value = "0.0.0.0",
        help_heading = "Network"
    )]
    pub bind: IpAddr,

    /// Port of the web page (0 picks a free port; the real one is logged).
    #[arg(
        long,
        env = "THREADCHAT_HTTP_PORT",
        default_value_t = 8000,
        help_heading = "Network"
    )]
    pub http_port: u16,

    /// Port of the WebSocket chat (0 picks a free port; the real one is logged).
    #[arg(
        long,
        env = "THREADCHAT_WS_PORT",
        default_value_t = 8001,
        help_heading = "Network"
    )]
    pub ws_port: u16,

    /// Also answer to this host name (repeatable; `*` = any). IP addresses,
    /// `localhost`, this machine's host name and `<host name>.local` are always
    /// answered; any other name in `Host` gets 421. Counters DNS rebinding.
    #[arg(
        long = "server-name",
        env = "THREADCHAT_SERVER_NAME",
        value_delimiter = ',',
        help_heading = "Network"
    )]
    pub server_names: Vec<String>,

    /// Also accept WebSocket handshakes from this page origin, e.g.
    /// `http://chat.example:8000` (repeatable; `*` accepts any). Without it only pages
    /// from the same host name as the socket are accepted.
    #[arg(
        long = "allow-origin",
        env = "THREADCHAT_ALLOW_ORIGIN",
        value_delimiter = ',',
        help_heading = "Network"
    )]
    pub allow_origins: Vec<String>,

    /// Serve the page over https and the chat over wss with this certificate chain
    /// (PEM, the server's certificate first; `make cert` makes one). Needs
    /// `--tls-key`. Without both, everything is plain http and ws.
    #[arg(long, env = "THREADCHAT_TLS_CERT", help_heading = "Network")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of `--tls-cert`'s certificate.
    #[arg(long, env = "THREADCHAT_TLS_KEY", help_heading = "Network")]
    pub tls_key: Option<PathBuf>,

    /// Be one node of a chat spread over several, through this Redis
    /// (`redis://host:port/db`; with a password `redis://:password@host:port/`,
    /// an ACL user `redis://user:password@…`, TLS `rediss://…`): room messages
    /// reach every node's clients in one order. Off by default: a single node
    /// needs nothing. Prefer the environment variable, which `ps` does not show.
    #[arg(long, env = "THREADCHAT_REDIS", help_heading = "Cluster")]
    pub redis: Option<String>,

    /// For `rediss://`: trust only the certificates in this PEM file (a
    /// self-signed Redis, a private CA) instead of the system's roots.
    // Empty is allowed (the system's roots), so that the settings file can list
    // the variable as `THREADCHAT_REDIS_CA=` beside an empty `THREADCHAT_REDIS`.
    #[arg(
        long,
        env = "THREADCHAT_REDIS_CA",
        value_parser = OsStringValueParser::new().map(PathBuf::from),
        help_heading = "Cluster"
    )]
    pub redis_ca: Option<PathBuf>,

    /// Serve `ws://…/echo`, which sends every message back (for WebSocket
    /// conformance tools), to at most 16 clients at once. Off by default: it is no
    /// use to a chat, and a way to make the server hold memory.
    #[arg(long, help_heading = "Network")]
    pub echo: bool,

    /// A secret every chat client must present at the WebSocket handshake, as
    /// `?token=<it>` or as the subprotocol `token.<it>` (what a page can do); else
    /// HTTP 401. Letters, digits, `.`, `_`, `~`, `-`. Without TLS it crosses the
    /// network readable: it keeps strangers out of a LAN chat, not eavesdroppers.
    #[arg(long, env = "THREADCHAT_TOKEN", help_heading = "Chat")]
    pub token: Option<String>,

    /// Read `--token` from this file (its first line), so that it stays out of `ps`.
    #[arg(long, env = "THREADCHAT_TOKEN_FILE", help_heading = "Chat")]
    pub token_file: Option<PathBuf>,

    /// A secret that lets a connection opened with `?admin=<it>` kick others
    /// (`{"type":"kick","id":N}`). Off without it. Prefer the environment variable,
    /// which `ps` does not show.
    #[arg(long, env = "THREADCHAT_ADMIN_TOKEN", help_heading = "Chat")]
    pub admin_token: Option<String>,

    /// Most rooms at once, the lobby included; an emptied room keeps its history
    /// until a new room needs its place.
    #[arg(long, env = "THREADCHAT_MAX_ROOMS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000), help_heading = "Chat")]
    pub max_rooms: u64,

    /// Messages each room keeps for clients that join it or come back (at most 64
    /// KiB of them; in a cluster, as many again while cut off from Redis).
    #[arg(long, env = "THREADCHAT_HISTORY", default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=10_000), help_heading = "Chat")]
    pub history: u64,

    /// Frames a second one client may send; more are dropped with an error, and a
    /// client that keeps flooding (100 in a row) is closed. Counters floods.
    #[arg(long, env = "THREADCHAT_RATE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000), help_heading = "Chat")]
    pub rate: u32,

    /// Frames one client may send at once, above its rate.
    #[arg(long, env = "THREADCHAT_BURST", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000), help_heading = "Chat")]
    pub burst: u32,

    /// Serve the page from this folder instead of the copy compiled into the binary
    /// (for editing the page: files are read on every request, so a reload shows
    /// the change).
    #[arg(long, env = "THREADCHAT_WWW", help_heading = "Page")]
    pub www: Option<PathBuf>,

    /// Most chat clients at once; the next handshake gets HTTP 503. Lowered at
    /// start if the machine's thread, file or memory limits cannot carry that many.
    #[arg(
        long,
        env = "THREADCHAT_MAX_CLIENTS",
        default_value_t = 1024,
        help_heading = "Limits"
    )]
    pub max_clients: usize,

    /// Most chat (and echo) clients from one address at once; 0 = no limit (behind
    /// a reverse proxy, where every client has the proxy's address). Counters one
    /// host taking every place.
    #[arg(
        long,
        env = "THREADCHAT_MAX_PER_HOST",
        default_value_t = 32,
        help_heading = "Limits"
    )]
    pub max_per_host: usize,

    /// Most WebSocket handshakes in progress from one address; 0 = no limit.
    /// Counters one host holding every handshake place with idle connections.
    #[arg(
        long,
        env = "THREADCHAT_MAX_HANDSHAKES_PER_HOST",
        default_value_t = 8,
        help_heading = "Limits"
    )]
    pub max_handshakes_per_host: usize,

    /// Most page (HTTP) connections at once, apart from the chat's places. Past it
    /// new visitors wait in the listen queue until one closes. Lowered at start if
    /// the machine cannot carry that many.
    #[arg(
        long,
        env = "THREADCHAT_MAX_HTTP",
        default_value_t = 256,
        help_heading = "Limits"
    )]
    pub max_http: usize,

    /// Most page connections from one address at once; 0 = no limit. A browser
    /// opens up to six.
    #[arg(
        long,
        env = "THREADCHAT_MAX_HTTP_PER_HOST",
        default_value_t = 16,
        help_heading = "Limits"
    )]
    pub max_http_per_host: usize,

    /// Frames a second one address may send, all its chat connections and their
    /// pings together, kept across reconnects (4 seconds' worth at once); 0 = no
    /// limit. Over it frames are dropped, and a connection that keeps on is closed
    /// with 1008. Counters one host flooding through many connections.
    #[arg(
        long,
        env = "THREADCHAT_HOST_FRAMES",
        default_value_t = 50,
        help_heading = "Limits"
    )]
    pub host_frames: u64,

    /// Bytes a second one address may send to the chat, all its connections
    /// together (4 seconds' worth at once); 0 = no limit.
    #[arg(long, env = "THREADCHAT_HOST_BYTES_IN", default_value_t = 128 * 1024, help_heading = "Limits")]
    pub host_bytes_in: u64,

    /// Bytes a second one address may make the server send: each of its messages
    /// times the members it reaches, direct messages, history replays, answers and
    /// errors (4 seconds' worth at once); 0 = no limit. Counters fan-out floods.
    #[arg(long, env = "THREADCHAT_HOST_BYTES_OUT", default_value_t = 2 * 1024 * 1024, help_heading = "Limits")]
    pub host_bytes_out: u64,

    /// Rooms one address may have made that still exist; past it, its least
    /// recently used empty room makes way, never another address's; 0 = no limit.
    #[arg(
        long,
        env = "THREADCHAT_MAX_ROOMS_PER_HOST",
        default_value_t = 10,
        help_heading = "Limits"
    )]
    pub max_rooms_per_host: usize,

    /// Largest message in bytes, chat and echo; a larger one closes the connection
    /// with 1009. Counters memory exhaustion by one client.
    #[arg(long, env = "THREADCHAT_MAX_MESSAGE", default_value_t = 64 * 1024, help_heading = "Limits")]
    pub max_message: usize,

    /// Bytes that may wait for one slow client before it is disconnected (close
    /// 1008), each queued chunk counted with its overhead. Counters a client that
    /// stops reading: without a bound its backlog grows for ever.
    #[arg(long, env = "THREADCHAT_MAX_BACKLOG", default_value_t = 1024 * 1024, help_heading = "Limits")]
    pub max_backlog: usize,

    /// Seconds between heartbeat pings; a client silent for two intervals is dropped.
    /// Finds peers that vanished without closing (a laptop lid, a dead Wi-Fi).
    #[arg(long, env = "THREADCHAT_PING_INTERVAL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400), help_heading = "Limits")]
    pub ping_interval: u64,

    /// Seconds a new TCP connection has to finish the WebSocket handshake. Counters
    /// slowloris clients holding a thread each.
    #[arg(long, env = "THREADCHAT_HANDSHAKE_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400), help_heading = "Limits")]
    pub handshake_timeout: u64,

    /// Seconds a page connection has for each request head, each answer, and to
    /// sit idle between requests. Counters slow or idle page clients.
    #[arg(long, env = "THREADCHAT_HTTP_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400), help_heading = "Limits")]
    pub http_timeout: u64,

    /// Seconds a blocked write to one client may take before it is disconnected;
    /// also how long the rest of its backlog may take once it has left.
    #[arg(long, env = "THREADCHAT_WRITE_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400), help_heading = "Limits")]
    pub write_timeout: u64,

    /// Log lines for people (`human`), or one JSON object per line for journald and
    /// log shippers (`json`). `RUST_LOG` sets the level either way.
    #[arg(long, env = "THREADCHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, help_heading = "Logging")]
    pub log_format: LogFormat,

    /// Check the settings and files, print what the server would run with, and exit
    /// (0: fine; 1: something is wrong, and the error says what).
    #[arg(long)]
    pub check_config: bool,
}

impl Config {
    /// The heartbeat interval.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval)
    }

    /// How long a client may stay silent: two heartbeat intervals.
    pub fn idle_timeout(&self) -> Duration {
        2 * self.ping_interval()
    }

    /// The handshake deadline.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout)
    }

    /// The page's deadline for a request head, an answer, and an idle connection.
    pub fn http_timeout(&self) -> Duration {
        Duration::from_secs(self.http_timeout)
    }

    /// The per-write timeout on WebSocket sockets.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout)
    }

    /// The access token from `--token` or `--token-file`, checked; `None` when
    /// neither is given (an empty value counts as not given).
    pub fn access_token(&self) -> Result<Option<String>, String> {
        // `THREADCHAT_TOKEN=` in an environment file means no token.
        let given = self.token.as_ref().filter(|t| !t.is_empty());
        let file = self
            .token_file
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty());
        let token = match (given, file) {
            (Some(_), Some(_)) => {
                return Err("give --token or --token-file, not both".into());
            }
            (Some(token), None) => token.clone(),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
                let first = text.lines().next().unwrap_or("").trim().to_string();
                // An empty file is a mistake, not a wish for an open chat.
                if first.is_empty() {
                    return Err(format!(
                        "--token-file {}: the first line is empty",
                        path.display()
                    ));
                }
                first
            }
            (None, None) => return Ok(None),
        };
        // It travels as a subprotocol value, which allows only these.
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-');
        if !token.chars().all(allowed) {
            return Err("the token may hold only letters, digits, '.', '_', '~' and '-'".into());
        }
        Ok(Some(token))
    }

    /// `--tls-cert` and `--tls-key`, both or neither (an empty value counts as not
    /// given).
    pub fn tls_files(&self) -> Result<Option<(&Path, &Path)>, String> {
        fn given(path: &Option<PathBuf>) -> Option<&Path> {
            path.as_deref().filter(|p| !p.as_os_str().is_empty())
        }
        match (given(&self.tls_cert), given(&self.tls_key)) {
            (Some(cert), Some(key)) => Ok(Some((cert, key))),
            (None, None) => Ok(None),
            (Some(_), None) => {
                Err("--tls-cert needs --tls-key (the certificate's private key)".into())
            }
            (None, Some(_)) => {
                Err("--tls-key needs --tls-cert (the certificate it belongs to)".into())
            }
        }
    }

    /// `--redis`, when given (an empty value counts as not given).
    pub fn redis_url(&self) -> Option<&str> {
        self.redis.as_deref().filter(|url| !url.is_empty())
    }

    /// `--redis-ca`, when given (an empty value counts as not given).
    pub fn redis_ca(&self) -> Option<&Path> {
        self.redis_ca
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
    }

    /// Checks what clap cannot: relations between values.
    pub fn validate(&self) -> Result<(), String> {
        self.access_token()?;
        self.tls_files()?;
        if self.redis_ca().is_some() && self.redis_url().is_none() {
            return Err("--redis-ca needs --redis (a rediss:// URL)".into());
        }
        if self.max_clients == 0 {
            return Err("--max-clients must be at least 1".into());
        }
        if self.max_message < 1024 {
            return Err("--max-message must be at least 1024 bytes".into());
        }
        if self.max_http == 0 {
            return Err("--max-http must be at least 1".into());
        }
        // Far beyond any machine, and small enough that no sum of them overflows.
        // Compared as u64: on a 32-bit target (armhf) `1 << 32` is no usize.
        for (flag, value, most) in [
            ("--max-clients", self.max_clients as u64, 1u64 << 20),
            ("--max-http", self.max_http as u64, 1 << 20),
            ("--max-message", self.max_message as u64, 1 << 30),
            ("--max-backlog", self.max_backlog as u64, 1 << 32),
        ] {
            if value > most {
                return Err(format!("{flag} ({value}) may be at most {most}"));
            }
        }
        // A client that reads normally must never be cut off: its backlog has to
        // hold the largest thing it can be sent (a batch of the hub's, or an echo
        // of the largest message) while the one before is still being written.
        let largest = LARGEST_BATCH.max(self.max_message + FRAME_HEADER);
        let least = smallest_useful_backlog(largest);
        if self.max_backlog < least {
            return Err(format!(
                "--max-backlog ({}) must be at least {least}: a client can be sent {largest} \
                 bytes at once (the hub's largest batch, or an echo of --max-message), and \
                 with less room than two of those every client would count as a slow consumer",
                self.max_backlog
            ));
        }
        Ok(())
    }
}
