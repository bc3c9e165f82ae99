//! The hub: one thread that owns who is where (rooms, names, history) and decides
//! who gets what, in which order.
//!
//! Readers tell the hub what happened ([`Event`]) over one bounded crossbeam
//! channel. Because a single thread takes events off that channel one after the
//! other, there is exactly one order of events, and every member of a room is sent
//! that room's frames in that order: a room's total order is the order of this
//! channel. Message ids come from the same place, so they increase along it. Rooms,
//! names and histories are plain fields of the hub: only this thread touches them,
//! so they need no lock, and a new feature is one more event handled here.
//!
//! The hub works in turns. It blocks until an event arrives, then takes every
//! other event already waiting (up to [`MAX_BATCH_EVENTS`] or [`MAX_BATCH_BYTES`]),
//! encodes each room's frames once into that room's batch, and hands each batch to
//! the room's members' [`Outbox`]es. Under load a batch holds many messages, so one
//! `send(2)` per client delivers them all; a busy hub even waits up to [`COALESCE`]
//! for more company. When the chat is quiet a turn is one event and nothing waits
//! for more. A frame for one client (an answer to `who`, a direct message) goes out
//! at the end of the turn, after that client's room frames.
//!
//! The hub never blocks on a client: an outbox either takes the bytes at once or
//! queues them for the client's own writer thread. The hub does block on nothing
//! else either, except its channel: with nobody connected it sleeps in `select!`
//! without even a heartbeat timer.
//!
//! The hub's own files, each a part of that one thread:
//!
//! | file | what it owns |
//! |---|---|
//! | `mod.rs` | the loop, a turn, `apply` (one line per event), `flush` |
//! | `batch.rs` | a room's frames of a turn, once per format, and each member's part |
//! | `rooms.rs` | rooms and who is in them: arrive, move, rename, leave, kick, `rooms`, `who` |
//! | `messages.rs` | room and direct messages, answers and errors for one client |
//! | `history.rs` | a room's last messages, replayed to whoever joins |
//! | `cluster.rs` | what a node knows of its cluster (none on a single server) |
//! | `receipts.rs` | direct messages and kicks between nodes, and their receipts |
//! | `seating.rs` | this node's seat changes, applied when the stream hands them back |

mod batch;
mod cluster;
mod history;
mod messages;
mod receipts;
mod rooms;
mod seating;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, at, never, select, tick};
use tungstenite::protocol::frame::coding::CloseCode;

use self::cluster::ClusterView;
use self::history::History;
use self::rooms::{Client, Room};
use crate::event::{Event, HubSide, RelayedMessage};
use crate::format::PerFormat;
use crate::frame;
use crate::outbox::{Failure, Outbox};
use crate::protocol::{self, ClientId, InputError, LOBBY};
use crate::stats::Stats;
use messages::Awaited;

pub use self::history::HISTORY_BYTES;
pub use self::seating::HELD_MEMORY;

/// Most events folded into one turn. Bounds the batch buffers and the time before
/// the first client of a long burst hears anything.
pub const MAX_BATCH_EVENTS: usize = 1_024;

/// A turn stops taking more events once its frames reach this many bytes, so a
/// burst of large messages cannot build one huge buffer that every client's outbox
/// must take whole.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;

/// The most bytes one batch can hold: it may pass [`MAX_BATCH_BYTES`] by its last
/// event, a chat message (with the presence run before it written first) or a
/// presence run written at the end. `--max-backlog` must leave room for this.
pub const LARGEST_BATCH: usize =
    MAX_BATCH_BYTES + protocol::MAX_MESSAGE_FRAME + 2 * protocol::MAX_PRESENCE_FRAME;

/// Most rooms a `rooms` answer lists, and members a `who` answer lists; the rest
/// are counted in `more`. Bounds an answer's size by the cap on a batch, not by
/// how many rooms or members there are.
pub const LIST_MOST: usize = 200;

/// How long a busy hub waits for more events before sending a batch out.
///
/// Every batch costs one `send(2)` per client, whatever it holds, and that kernel
/// work is most of the server's CPU under load. When the previous turn held more
/// than one event, messages are arriving faster than batches go out, and waiting
/// this long for company turns several sends per client into one: on 2 cores,
/// 200 clients and 4 fast senders went from 1.2 M to 1.6 M deliveries/s with it.
/// When the chat is quiet (the previous turn was a single event) the hub does not
/// wait at all, so a lone message is never delayed.
pub const COALESCE: Duration = Duration::from_micros(500);

/// Capacity of the readers-to-hub channel. When the hub falls behind, readers wait
/// in `send` (so fast talkers slow down) instead of memory growing without bound.
pub const EVENT_QUEUE: usize = 4_096;

/// What the hub is told at start.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Between heartbeat pings.
    pub ping_interval: Duration,
    /// Messages a room's history keeps (`--history`).
    pub history: usize,
    /// Rooms at most (`--max-rooms`), the lobby included.
    pub max_rooms: usize,
    /// Rooms one address may have made that still exist (`--max-rooms-per-host`,
    /// 0: no limit).
    pub max_rooms_per_host: usize,
    /// This server run (or, in a cluster, the cluster's), in `welcome` and for
    /// `join`'s `since`.
    pub epoch: u64,
}

/// The hub's state. Only the hub thread touches it, so it needs no lock.
struct Hub {
    rooms: HashMap<String, Room>,
    /// Every chat client, by id.
    clients: HashMap<ClientId, Client>,
    /// Echo clients: heartbeats and shutdown only.
    echo: HashMap<ClientId, Arc<Outbox>>,
    /// What this turn has built so far.
    turn: Turn,
    /// Id of the last message or direct message relayed (in a cluster: of the
    /// cluster's, the highest seen).
    last_message_id: u64,
    /// In a cluster (`--redis`): what this node knows of the others.
    cluster: Option<ClusterView>,
    /// The hub's clock for the rooms' last use: ticks once per event.
    clock: u64,
    /// While an acknowledged request is applied: whose answer is awaited, as
    /// which acknowledgement.
    awaited: Option<Awaited>,
    settings: HubSettings,
    stats: Arc<Stats>,
    /// Set once `Shutdown` arrives: a client that joins afterwards is closed at once.
    shutting_down: bool,
}

/// What one turn has built: the rooms whose batch has frames, and the frames for
/// single clients, sent after the rooms'.
#[derive(Default)]
struct Turn {
    dirty: Vec<String>,
    replies: Vec<Reply>,
    /// The turn's frames in bytes, for the batch bound.
    bytes: usize,
    /// Messages among them, for /stats.
    messages: u64,
}

/// A frame for one client, sent at the end of the turn.
struct Reply {
    to: ClientId,
    bytes: Vec<u8>,
}

impl Turn {
    /// Room `room`'s batch has frames this turn.
    fn mark(&mut self, room: &str) {
        if !self.dirty.iter().any(|r| r == room) {
            self.dirty.push(room.to_string());
        }
    }

    /// Queues a frame for one client, for the end of the turn; it counts towards
    /// the turn's size like any other.
    fn reply(&mut self, to: ClientId, bytes: Vec<u8>) {
        self.bytes += bytes.len();
        self.replies.push(Reply { to, bytes });
    }
}

/// Starts the hub thread. `backfill` is applied before any other event: in a
/// cluster, the stream's recent entries, so that this node starts with the rooms'
/// histories.
pub fn spawn(
    events: Receiver<Event>,
    settings: HubSettings,
    cluster: Option<HubSide>,
    stats: Arc<Stats>,
    backfill: Vec<Event>,
) -> io::Result<JoinHandle<()>> {
    let mut hub = Hub::new(settings, cluster, stats);
    // A room made while the backfill is applied has missed only what came before
    // the message it is made for, not the whole backfill.
    let highest = hub.last_message_id;
    match backfill.first() {
        // Ids from the stream start at 1 (`cluster::message_id`).
        Some(Event::Relayed(RelayedMessage { id, .. }) | Event::RelayedDirect { id, .. }) => {
            hub.last_message_id = id - 1;
        }
        // A login takes no id: it comes after message `id`.
        Some(Event::RelayedLogin { id, .. }) => hub.last_message_id = *id,
        _ => {}
    }
    thread::Builder::new().name("hub".into()).spawn(move || {
        for (n, event) in backfill.into_iter().enumerate() {
            hub.apply(event);
            // Turns of the usual size: batches stay small, and rooms can be evicted.
            if n % MAX_BATCH_EVENTS == MAX_BATCH_EVENTS - 1 {
                hub.flush();
            }
        }
        hub.flush();
        hub.last_message_id = hub.last_message_id.max(highest);
        hub.run(&events);
    })
}

impl Hub {
    /// A hub with an empty lobby; in a cluster (`--redis`), `cluster` is how it
    /// talks to the bridge.
    fn new(settings: HubSettings, cluster: Option<HubSide>, stats: Arc<Stats>) -> Hub {
        // In a cluster, ids go on from the stream's (even with no history kept).
        let last_message_id = cluster
            .as_ref()
            .map_or(0, |side| side.highest.load(Ordering::Relaxed));
        let lobby = Room::new(History::new([(settings.epoch, 0)]), None);
        Hub {
            rooms: HashMap::from([(LOBBY.to_string(), lobby)]),
            clients: HashMap::new(),
            echo: HashMap::new(),
            turn: Turn::default(),
            last_message_id,
            cluster: cluster.map(ClusterView::new),
            clock: 0,
            awaited: None,
            settings,
            stats,
            shutting_down: false,
        }
    }

    fn run(mut self, events: &Receiver<Event>) {
        let heartbeat = tick(self.settings.ping_interval);
        let nobody = never();
        // Events in the previous turn.
        let mut taken = 0;
        loop {
            // With nobody connected there is nothing to ping: not even the timer may
            // wake this thread.
            let timer = if self.clients.is_empty() && self.echo.is_empty() {
                &nobody
            } else {
                &heartbeat
            };
            // A direct message awaiting another node's receipt is given up on
            // time, however quiet the chat.
            let late = self.receipt_due().map_or_else(never, at);
            let first = select! {
                recv(events) -> event => match event {
                    Ok(event) => event,
                    Err(_) => return, // every sender is gone: the server is exiting
                },
                recv(timer) -> _ => {
                    self.ping_everyone();
                    continue;
                }
                recv(late) -> _ => {
                    self.give_up_late_receipts(Instant::now());
                    self.flush();
                    continue;
                }
            };
            self.apply(first);
            // Busy (the last turn had company): wait up to COALESCE for more, so one
            // send per client carries many messages. Quiet: take only what is waiting.
            let linger = if taken > 1 { COALESCE } else { Duration::ZERO };
            let deadline = Instant::now() + linger;
            taken = 1;
            while taken < MAX_BATCH_EVENTS && self.turn.bytes < MAX_BATCH_BYTES {
                match events.recv_deadline(deadline) {
                    Ok(event) => {
                        self.apply(event);
                        taken += 1;
                    }
                    Err(_) => break,
                }
            }
            self.flush();
            if self.owes_seats() {
                self.reannounce();
            }
        }
    }

    /// Applies one event: who is where changes, and what the clients must hear
    /// about it goes into their rooms' batches (or the turn's replies). In a
    /// cluster, a client's seat change, and what the client asks after it,
    /// wait until the stream hands the change back (`seating.rs`).
    fn apply(&mut self, event: Event) {
        self.clock += 1;
        if let Some(event) = self.hold(event) {
            self.apply_now(event);
        }
    }

    /// Applies `event` now, whatever seat change it might wait behind.
    fn apply_now(&mut self, event: Event) {
        match event {
            Event::Connect(arrival) => self.connect(arrival),
            Event::Acked(acked) => self.acked(acked),
            Event::Message(said) => self.message(said),
            Event::Hello { id, name } => self.hello(id, name),
            Event::Login { id, name } => self.login(id, name),
            Event::Join(join) => self.join(join),
            Event::Rooms { id } => self.list_rooms(id),
            Event::Who { id } => self.who(id),
            Event::Direct(direct) => self.direct(direct),
            Event::Kick { target, by } => self.kick(target, by),
            Event::Leave { id } => self.leave(id),
            Event::Relayed(message) => self.relayed(message),
            Event::NotRelayed { from, why } => self.reply_error(from, &InputError::NotRelayed(why)),
            Event::RelayedSeat {
                entry,
                id,
                seat,
                offer,
            } => self.relayed_seat(entry, id, seat, offer),
            Event::RelayedSeats {
                entry,
                node,
                seats,
                offer,
            } => self.relayed_seats(entry, node, seats, offer),
            Event::Reannounce => self.reannounce(),
            Event::SeatsNotTaken { upto } => self.seats_not_taken(upto),
            Event::SeatsNow { seats, nodes } => self.seats_now(seats, nodes),
            Event::RelayedGone { entry, node } => self.node_gone(entry, node),
            Event::Linked { up } => self.linked_changed(up),
            Event::Missed { upto } => self.missed(upto),
            Event::RelayedKick { id, target, by } => self.relayed_kick(id, target, by),
            Event::RelayedLogin { id, room, client } => self.relayed_login(id, &room, &client),
            Event::RelayedDirect { id, ts, direct } => self.relayed_direct(id, ts, direct),
            Event::RelayedReceipt { entry, receipt } => self.relayed_receipt(entry, &receipt),
            Event::Shutdown => self.shut_down(),
            Event::Probe { answer } => drop(answer.try_send(())),
        }
    }

    /// Hands every room's batch to its members, then the replies. Encoded once
    /// per format, shared by all.
    fn flush(&mut self) {
        // Counted before the clients can see the batch, so /stats never lags
        // behind what a client has already received.
        if !self.turn.dirty.is_empty() || !self.turn.replies.is_empty() {
            self.stats.add_batch(self.turn.messages);
        }
        self.stats.set_clients(self.clients.len());
        self.turn.bytes = 0;
        self.turn.messages = 0;
        for name in self.turn.dirty.drain(..) {
            let Some(room) = self.rooms.get_mut(&name) else {
                continue;
            };
            let batches: PerFormat<Arc<Vec<u8>>> = room.batch.finish(&name).map(Arc::new);
            for member in &mut room.members {
                member.deliver(&batches);
            }
        }
        for reply in self.turn.replies.drain(..) {
            // A failed send needs no action here: the outbox has already closed the
            // client, whose reader will report the Leave.
            if let Some(client) = self.clients.get(&reply.to) {
                let _ = client.outbox.send_shared(&Arc::new(reply.bytes), 0);
            }
        }
    }

    fn ping_everyone(&self) {
        let mut ping = Vec::new();
        frame::append_ping(&mut ping);
        let ping = Arc::new(ping);
        let chat = self.clients.values().map(|client| &client.outbox);
        for outbox in chat.chain(self.echo.values()) {
            let _ = outbox.send_shared(&ping, 0);
        }
    }

    /// The server is stopping: every client gets close 1001, and the cluster's
    /// end of `redis-out`'s channel is dropped (`redis-out` ends with it).
    fn shut_down(&mut self) {
        self.shutting_down = true;
        self.close_awaiting_arrivals();
        self.cluster = None;
        self.turn = Turn::default();
        for room in self.rooms.values_mut() {
            room.batch = Default::default();
            room.members.clear();
        }
        for client in self.clients.values() {
            close_away(&client.outbox);
        }
        for outbox in self.echo.values() {
            close_away(outbox);
        }
        self.clients.clear();
        self.echo.clear();
    }
}

/// Closes a client because the server is stopping.
fn close_away(outbox: &Arc<Outbox>) {
    outbox.send_close(CloseCode::Away, "server shutting down", Failure::Stopped);
}
