//! `threadchat`: parse the flags, start logging, then run the server (or only check
//! its configuration). Everything else is in the library (see `src/lib.rs` for the
//! map).

use std::process::ExitCode;

use clap::Parser;
use threadchat::config::Config;

fn main() -> ExitCode {
    let config = Config::parse();
    threadchat::logging::init(config.log_format);
    let outcome = if config.check_config {
        threadchat::check(&config).map(|report| print!("{report}"))
    } else {
        threadchat::run(config)
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
