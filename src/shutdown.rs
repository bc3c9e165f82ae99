//! Stopping: every client hears close 1001 ("going away"), and the server is done
//! within two seconds whether or not they answer.
//!
//! [`run`](crate::run) waits on a channel of [`Control`]s. The binary feeds it
//! from signals ([`forward_signals`]); a test feeds it itself, or just drops its
//! sender. The sequence, in order:
//!
//! 1. Tell the hub. It queues a Close 1001 in every client's outbox and marks each
//!    one closed, so nothing follows the Close (and clients that finish their
//!    handshake from now on are closed at once).
//! 2. Wait, up to [`GRACE`], for every chat-port connection to give back its place.
//!    A client that answers the Close ends its reader, whose outbox then shuts the
//!    socket down. Page connections are not waited for: a page load that is cut
//!    short is retried by the browser.
//! 3. Return, and `main` exits with status 0. Threads still blocked on a client
//!    that never answered end with the process (or, in a test, on their own
//!    deadlines).
//!
//! Before step 1, `run` has stopped both acceptors, so that nothing new arrives
//! during the grace period.
//!
//! SIGHUP, which would otherwise kill the process (a closed terminal, a `kill -HUP`
//! out of habit), only logs a status line: there is nothing to reload, since the
//! settings come from flags and the environment, which a running process cannot
//! re-read, the page compiled in cannot change, and `--www` files are read on every
//! request anyway.
//!
//! Signals arrive through signal-hook's iterator on a thread of their own, which
//! blocks like everything else here; no code runs inside the signal handler itself.

use std::io;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::event::Event;
use crate::places::Places;
use crate::stats::Stats;

/// How long clients get to answer the Close: leaves room within the 2 s promised.
pub const GRACE: Duration = Duration::from_millis(1_500);

/// What a running server can be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Log a status line (SIGHUP).
    Status,
    /// Close every client with 1001 and return (SIGINT, SIGTERM).
    Stop,
}

/// Registers for SIGINT, SIGTERM and SIGHUP, and starts the thread `signals` that
/// turns them into [`Control`]s on the returned channel.
pub fn forward_signals() -> io::Result<Receiver<Control>> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| io::Error::new(e.kind(), format!("cannot watch for signals: {e}")))?;
    let (controls, received) = crossbeam_channel::bounded(4);
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || forward(&mut signals, &controls))?;
    Ok(received)
}

fn forward(signals: &mut Signals, controls: &Sender<Control>) {
    for signal in signals.forever() {
        let control = match signal {
            SIGHUP => Control::Status,
            SIGINT => {
                log::info!("SIGINT");
                Control::Stop
            }
            _ => {
                log::info!("SIGTERM");
                Control::Stop
            }
        };
        if controls.send(control).is_err() || control == Control::Stop {
            return;
        }
    }
}

/// Blocks until `controls` says stop (or is gone), logging a status line for each
/// status request meanwhile.
pub fn serve_until_stopped(controls: &Receiver<Control>, stats: &Stats) {
    while let Ok(Control::Status) = controls.recv() {
        let now = stats.snapshot();
        log::info!(
            "status: {} clients, {} messages relayed, up {} s; nothing to reload \
             (settings take a restart)",
            now.clients,
            now.messages_relayed,
            now.uptime_seconds
        );
    }
}

/// The shutdown sequence, once nothing new is accepted: 1001 to everyone, then
/// wait up to [`GRACE`] for the chat port's connections to go.
pub fn close_everyone(hub: &Sender<Event>, places: &Arc<Places>) {
    let open = places.occupancy();
    log::info!(
        "stopping: closing {} connections",
        open.chat + open.echo + open.handshakes
    );
    let _ = hub.send(Event::Shutdown);
    let left = places.wait_until_ws_empty(GRACE);
    if left > 0 {
        log::warn!("{left} connections did not close within {GRACE:?}; going anyway");
    }
    log::info!("bye");
}
