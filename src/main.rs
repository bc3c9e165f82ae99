//! `threadchat`: parse the flags, start logging, then run the server until a signal
//! (or only check its configuration). Everything else is in the library; its
//! entry points are listed in `src/lib.rs`.

use std::process::ExitCode;

use clap::Parser;
use threadchat::config::Config;

fn main() -> ExitCode {
    let config = Config::parse();
    threadchat::logging::init(config.log_format);
    let outcome = if config.check_config {
        threadchat::check(&config).map(|report| print!("{report}"))
    } else {
        threadchat::run_until_signalled(config)
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
