//! Flags and environment variables, turned into one plain [`Config`].
//!
//! Every limit the server enforces is here with the threat it counters, so a test
//! can shrink a timeout to a second and a reader can see every knob in one place.
//! Each flag can also come from a `THREADCHAT_*` environment variable (flags win).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// A small real-time chat server: a web page on one port, WebSocket chat on another.
#[derive(Debug, Clone, Parser)]
#[command(name = "threadchat", version, about)]
pub struct Config {
    /// Address to listen on, for both ports (0.0.0.0: every interface, like the
    /// original; 127.0.0.1: this machine only).
    #[arg(long, env = "THREADCHAT_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,

    /// Port of the web page (0 picks a free port; the real one is logged).
    #[arg(long, env = "THREADCHAT_HTTP_PORT", default_value_t = 8000)]
    pub http_port: u16,

    /// Port of the WebSocket chat (0 picks a free port; the real one is logged).
    #[arg(long, env = "THREADCHAT_WS_PORT", default_value_t = 8001)]
    pub ws_port: u16,

    /// Serve the page from this folder instead of the copy compiled into the binary
    /// (for editing the page: files are read on every request, so a reload shows
    /// the change).
    #[arg(long, env = "THREADCHAT_WWW")]
    pub www: Option<PathBuf>,

    /// Most WebSocket clients at once; the next handshake gets HTTP 503. Lowered at
    /// start if the machine's thread or file limits cannot carry that many.
    #[arg(long, env = "THREADCHAT_MAX_CLIENTS", default_value_t = 1024)]
    pub max_clients: usize,

    /// Largest chat message in bytes; a larger one closes the connection with 1009.
    /// Counters memory exhaustion by one client.
    #[arg(long, env = "THREADCHAT_MAX_MESSAGE", default_value_t = 64 * 1024)]
    pub max_message: usize,

    /// Seconds between heartbeat pings; a client silent for two intervals is dropped.
    /// Finds peers that vanished without closing (a laptop lid, a dead Wi-Fi).
    #[arg(long, env = "THREADCHAT_PING_INTERVAL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_interval: u64,

    /// Also accept WebSocket handshakes from this page origin, e.g.
    /// `http://chat.example:8000` (repeatable; `*` accepts any). Without it only pages
    /// from the same host name as the socket are accepted.
    #[arg(
        long = "allow-origin",
        env = "THREADCHAT_ALLOW_ORIGIN",
        value_delimiter = ','
    )]
    pub allow_origins: Vec<String>,

    /// Seconds a new TCP connection has to finish the WebSocket handshake. Counters
    /// slowloris clients holding a thread each.
    #[arg(long, env = "THREADCHAT_HANDSHAKE_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub handshake_timeout: u64,

    /// Seconds an HTTP connection may sit idle or half-sent before it is closed.
    /// Counters slow or idle page clients holding a thread each.
    #[arg(long, env = "THREADCHAT_HTTP_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_timeout: u64,

    /// Bytes that may wait for one slow client before it is disconnected (close 1008).
    /// Counters a client that stops reading: without a bound its backlog grows forever.
    #[arg(long, env = "THREADCHAT_MAX_BACKLOG", default_value_t = 1024 * 1024)]
    pub max_backlog: usize,

    /// Seconds a blocked write to one client may take before it is disconnected.
    #[arg(long, env = "THREADCHAT_WRITE_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub write_timeout: u64,

    /// Log lines for people (`human`), or one JSON object per line for journald and
    /// log shippers (`json`). `RUST_LOG` sets the level either way.
    #[arg(long, env = "THREADCHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Check the settings and files, print what the server would run with, and exit
    /// (0: fine; 1: something is wrong, and the error says what).
    #[arg(long)]
    pub check_config: bool,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `[time LEVEL target] message`.
    Human,
    /// `{"ts":…,"level":…,"target":…,"msg":…}`.
    Json,
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

    /// The HTTP read and write timeout.
    pub fn http_timeout(&self) -> Duration {
        Duration::from_secs(self.http_timeout)
    }

    /// The per-write timeout on WebSocket sockets.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout)
    }

    /// Checks what clap cannot: relations between values.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_clients == 0 {
            return Err("--max-clients must be at least 1".into());
        }
        if self.max_message < 1024 {
            return Err("--max-message must be at least 1024 bytes".into());
        }
        if self.max_backlog < 2 * self.max_message {
            return Err(format!(
                "--max-backlog ({}) must be at least twice --max-message ({}), or one large \
                 message would count as a slow consumer",
                self.max_backlog, self.max_message
            ));
        }
        Ok(())
    }
}
