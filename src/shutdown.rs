//! Ctrl-C and SIGTERM: every client hears close 1001 ("going away"), and the
//! process exits within two seconds whether or not they answer. SIGHUP, which
//! would otherwise kill the process (a closed terminal, a `kill -HUP` out of
//! habit), only logs a status line: there is nothing to reload, since the settings
//! come from flags and the environment, which a running process cannot re-read,
//! the page compiled in cannot change, and `--www` files are read on every request
//! anyway.
//!
//! Signals arrive on the main thread through signal-hook's iterator, which blocks
//! like everything else here; no code runs inside the signal handler itself. The
//! sequence, in order:
//!
//! 1. Tell the hub. It queues a Close 1001 in every client's outbox and marks each
//!    one closed, so nothing follows the Close (and clients that finish their
//!    handshake from now on are closed at once).
//! 2. Wait, up to [`GRACE`], for every chat-port connection to give back its place.
//!    A client that answers the Close ends its reader, whose outbox then shuts the
//!    socket down. Page connections are not waited for: a page load that is cut
//!    short is retried by the browser.
//! 3. Return, and `main` exits with status 0. Threads still blocked on a client
//!    that never answered end with the process.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::hub::Event;
use crate::places::Places;
use crate::stats::Stats;

/// How long clients get to answer the Close: leaves room within the 2 s promised.
pub const GRACE: Duration = Duration::from_millis(1_500);

/// Registers for SIGINT, SIGTERM and SIGHUP. Done first thing, so a signal that
/// arrives while the server is starting is not lost.
pub fn signals() -> io::Result<Signals> {
    Signals::new([SIGINT, SIGTERM, SIGHUP])
}

/// Blocks until SIGINT or SIGTERM arrives, then runs the shutdown sequence.
pub fn wait_then_close(
    mut signals: Signals,
    hub: &Sender<Event>,
    places: &Arc<Places>,
    stats: &Stats,
) {
    let mut signals = signals.forever();
    let signal = loop {
        match signals.next() {
            Some(SIGHUP) => {
                let now = stats.snapshot();
                log::info!(
                    "SIGHUP: {} clients, {} messages relayed, up {} s; nothing to reload \
                     (settings take a restart)",
                    now.clients,
                    now.messages_relayed,
                    now.uptime_seconds
                );
            }
            Some(signal) => break signal,
            None => break SIGTERM,
        }
    };
    let name = if signal == SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    let open = places.occupancy();
    log::info!(
        "{name}: closing {} connections",
        open.chat + open.echo + open.handshakes
    );
    let _ = hub.send(Event::Shutdown);
    let left = places.wait_until_ws_empty(GRACE);
    if left > 0 {
        log::warn!("{left} connections did not close within {GRACE:?}; exiting anyway");
    }
    log::info!("bye");
}
