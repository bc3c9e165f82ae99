//! `threadchat`: parse the flags, start logging, run the server. Everything else is
//! in the library (see `src/lib.rs` for the map).

use std::process::ExitCode;

use clap::Parser;
use threadchat::config::Config;

fn main() -> ExitCode {
    let config = Config::parse();
    threadchat::init_logging();
    match threadchat::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
