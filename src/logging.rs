//! Log lines on stderr: for people by default, or one JSON object per line
//! (`--log-format json`) for journald and log shippers, which then need no pattern
//! to split a line into time, level, source and message.
//!
//! Under systemd, stderr goes to the journal either way, so there is no log file
//! to rotate or reopen.

use std::io::Write;

use serde::Serialize;

use crate::config::LogFormat;

/// Starts logging to stderr: `info` unless `RUST_LOG` says otherwise.
pub fn init(format: LogFormat) {
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(log::LevelFilter::Info)
        .parse_env(env_logger::Env::default());
    if format == LogFormat::Json {
        builder.format(|out, record| {
            let line = JsonLine {
                ts: out.timestamp_millis().to_string(),
                level: record.level().as_str(),
                target: record.target(),
                msg: record.args().to_string(),
            };
            let line = serde_json::to_string(&line).map_err(std::io::Error::other)?;
            writeln!(out, "{line}")
        });
    }
    builder.init();
}

/// One JSON log line, fields in this order.
#[derive(Serialize)]
struct JsonLine<'a> {
    /// RFC 3339, UTC, milliseconds.
    ts: String,
    level: &'a str,
    /// The module that logged, e.g. `threadchat::hub`.
    target: &'a str,
    msg: String,
}
