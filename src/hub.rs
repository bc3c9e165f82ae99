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

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, never, select, tick};
use tungstenite::protocol::frame::coding::CloseCode;

use crate::budget::{Allowance, Spent};
use crate::cluster::{self, Publish};
use crate::frame;
use crate::logging::Untrusted;
use crate::outbox::{Failure, Outbox};
use crate::places::{self, Network64};
use crate::protocol::{
    self, ChatMessage, InputError, LOBBY, Member as WhoMember, Outgoing, Presence, RoomCount,
};
use crate::stats::Stats;

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

/// The most memory a room's history holds, whatever `--history` says (each entry
/// counted with its allocation and overhead): a room of long messages keeps fewer
/// of them. Part of the capacity plan's memory. A cluster node cut off from Redis
/// holds as much again of its own (see [`History`]).
pub const HISTORY_BYTES: usize = 64 * 1024;

/// What a history entry costs besides its text: its slot in the queue, its id, and
/// the allocator's header.
const HISTORY_ENTRY_OVERHEAD: usize = 64;

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

/// Which endpoint a client connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The chat (`/`, `/text`).
    Chat,
    /// `/echo`: echoes its own messages; gets only heartbeats and shutdown from the
    /// hub.
    Echo,
}

/// How a chat client wants its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON objects (the protocol).
    Json,
    /// Lines of plain text (`/text`, the `chatting` subprotocol).
    Text,
}

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
    /// In a cluster (`--redis`): how the hub talks to the bridge.
    pub cluster: Option<cluster::HubSide>,
}

/// What a reader (or the shutdown sequence) tells the hub.
pub enum Event {
    /// A client finished its handshake.
    Connect {
        id: u64,
        /// Where the hub writes to it.
        outbox: Arc<Outbox>,
        endpoint: Endpoint,
        format: Format,
        /// Its name so far (`?name=` of a plain-text client), or empty.
        name: String,
        /// A first room other than the lobby (`?room=`), already checked.
        room: Option<String>,
        /// What `welcome` says it speaks.
        protocol: &'static str,
        /// Its address: rooms made are counted per address.
        address: IpAddr,
        /// Its address's budget: the hub charges it for what it sends on the
        /// client's behalf.
        allowance: Option<Arc<Allowance>>,
    },
    /// A chat client sent a valid message; the reader has filled in its name.
    Message {
        /// The sender's id: the relayed frame's `from`.
        from: u64,
        message: ChatMessage,
        /// Everyone in the room but the sender.
        except_sender: bool,
    },
    /// The client's name, from `hello`.
    Hello { id: u64, name: String },
    /// The client moves to `room`.
    Join {
        id: u64,
        room: String,
        since: Option<u64>,
        epoch: Option<u64>,
    },
    /// The client asks which rooms there are.
    Rooms { id: u64 },
    /// The client asks who is in its room.
    Who { id: u64 },
    /// A message for one client.
    Direct {
        from: u64,
        name: String,
        to: u64,
        msg: String,
    },
    /// An admin client closes another one.
    Kick { by: u64, id: u64 },
    /// A client's reader has ended.
    Leave { id: u64 },
    /// A room message in the cluster's order, from Redis (any node's, this one's
    /// included): delivered to this node's members of `room`.
    Relayed {
        id: u64,
        ts: u64,
        from: u64,
        room: String,
        name: String,
        msg: String,
        except_sender: bool,
    },
    /// A message of client `from` could not be handed to Redis.
    NotRelayed { from: u64, why: &'static str },
    /// Who is where on the other nodes of the cluster, room by room: ids and names.
    Elsewhere {
        rooms: HashMap<String, Vec<(u64, String)>>,
    },
    /// Redis stopped (`up: false`) or started again answering this node.
    Linked { up: bool },
    /// The cluster's messages up to `upto` that this node has not heard are gone
    /// from the stream.
    Missed { upto: u64 },
    /// An admin client of any node closes client `id`, perhaps one of this node's.
    RelayedKick { by: u64, id: u64 },
    /// A direct message from another node, for client `to` here.
    RelayedDirect {
        id: u64,
        ts: u64,
        from: u64,
        name: String,
        to: u64,
        msg: String,
    },
    /// The server is stopping: send every client close 1001.
    Shutdown,
    /// `/healthz` asks whether the hub is turning over: it answers on `answer`
    /// when it reaches this event, which it can only do by having taken every
    /// event before it.
    Probe { answer: Sender<()> },
}

/// The frames of one room for the turn being built, in both formats.
///
/// Joins and leaves that follow each other are announced together: a run of k
/// joins becomes one notification, "k users joined", with the count after the
/// run. When N clients connect at once, every one of them must hear about every
/// other: N²/2 frames one by one (2 million for 2,000 clients), but only about as
/// many as there are batches when runs are folded. The count stays exact; only the
/// steps in between are skipped.
#[derive(Default)]
struct Batch {
    json: Vec<u8>,
    /// The same frames as text lines, built only while the room has plain-text
    /// members: they cost nothing where nobody reads them.
    text: Vec<u8>,
    wants_text: bool,
    /// The run of joins or leaves not written yet.
    pending: Option<PresenceRun>,
}

/// Joins (or leaves) in a row, announced as one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PresenceRun {
    event: Presence,
    /// How many joined (or left) in this run.
    users: usize,
    /// Members after the run.
    count: usize,
    /// The one client a run of one is about: its id and name.
    single: Option<(u64, String)>,
}

/// Where in a batch something starts or lies, in each format's buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Spot<T> {
    json: T,
    text: T,
}

impl Batch {
    /// Records a join or leave; `count` is the number of members after it. Returns
    /// where a client joining now starts reading: the run it belongs to is written
    /// there, and nothing before it (an earlier leave, say) is its news.
    fn presence(
        &mut self,
        event: Presence,
        count: usize,
        single: (u64, String),
        room: &str,
    ) -> Spot<usize> {
        match &mut self.pending {
            Some(run) if run.event == event && event != Presence::Kick => {
                run.users += 1;
                run.count = count;
                run.single = None;
            }
            _ => {
                self.write_presence(room);
                self.pending = Some(PresenceRun {
                    event,
                    users: 1,
                    count,
                    single: Some(single),
                });
            }
        }
        // Nothing else is appended while a run is pending, so the run will be
        // written exactly here.
        self.spot()
    }

    /// Appends a frame, after any presence run before it. Returns where it lies.
    fn push(&mut self, json: &str, frame: &Outgoing<'_>, room: &str) -> Spot<Range<usize>> {
        self.write_presence(room);
        let start = self.spot();
        frame::append_text(&mut self.json, json);
        if self.wants_text {
            frame::append_text(&mut self.text, &frame.text_line());
        }
        let end = self.spot();
        Spot {
            json: start.json..end.json,
            text: start.text..end.text,
        }
    }

    fn spot(&self) -> Spot<usize> {
        Spot {
            json: self.json.len(),
            text: self.text.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.json.is_empty() && self.pending.is_none()
    }

    /// Writes the pending run, if any, and hands the buffers over.
    fn finish(&mut self, room: &str) -> Spot<Vec<u8>> {
        self.write_presence(room);
        Spot {
            json: std::mem::take(&mut self.json),
            text: std::mem::take(&mut self.text),
        }
    }

    fn write_presence(&mut self, room: &str) {
        let Some(run) = self.pending.take() else {
            return;
        };
        let Outgoing::Notification { msg, .. } =
            Outgoing::presence(run.event, run.users, run.count)
        else {
            unreachable!("presence makes a notification")
        };
        let note = Outgoing::Notification {
            msg,
            count: run.count,
            event: run.event,
            users: run.users,
            room: Some(room),
            id: run.single.as_ref().map(|(id, _)| *id),
            name: run.single.as_ref().map(|(_, name)| name.as_str()),
        };
        frame::append_text(&mut self.json, &note.to_json());
        if self.wants_text {
            frame::append_text(&mut self.text, &note.text_line());
        }
    }
}

/// The last messages of a room, as their JSON, oldest first.
///
/// They come in runs, one per epoch (one sequence of ids): a single server has
/// one run for its whole life. A cluster node has the cluster's, and while it is
/// cut off from Redis a second one of its own, which it forgets when the cluster
/// is back. Ids increase within a run, not across runs. Each run keeps at most
/// `--history` messages and [`HISTORY_BYTES`]: what a node says alone never
/// pushes the cluster's history out, so the node has all of it when it is back.
#[derive(Default)]
struct History {
    runs: Vec<Run>,
}

/// One epoch's part of a history.
struct Run {
    epoch: u64,
    entries: VecDeque<(u64, String)>,
    bytes: usize,
    /// The newest id of this run dropped from here: a replay from before it has
    /// a gap.
    dropped_up_to: u64,
    /// What `dropped_up_to` was when the run began: it has dropped something
    /// since when they differ.
    began_at: u64,
}

impl Run {
    fn new(epoch: u64, dropped_up_to: u64) -> Run {
        Run {
            epoch,
            entries: VecDeque::new(),
            bytes: 0,
            dropped_up_to,
            began_at: dropped_up_to,
        }
    }
}

impl History {
    /// A history that holds nothing, in which every id up to `dropped_up_to` of
    /// each `(epoch, dropped_up_to)` is missing (a room made now never heard
    /// those).
    fn new(missing: impl IntoIterator<Item = (u64, u64)>) -> History {
        let mut runs: Vec<Run> = Vec::new();
        for (epoch, dropped_up_to) in missing {
            if runs.iter().all(|r| r.epoch != epoch) {
                runs.push(Run::new(epoch, dropped_up_to));
            }
        }
        History { runs }
    }

    /// What one entry holds in memory: the string's allocation (which can be twice
    /// its length), its slot, and the allocator's header.
    fn cost(json: &String) -> usize {
        json.capacity().max(json.len()) + HISTORY_ENTRY_OVERHEAD
    }

    fn push(&mut self, epoch: u64, id: u64, json: String, most: usize) {
        if self.runs.last().is_none_or(|run| run.epoch != epoch) {
            // Only the newest run grows: the hub leaves an epoch only for a new
            // one (cut off) or for the run before it (back), forgetting its own.
            debug_assert!(self.runs.iter().all(|r| r.epoch != epoch));
            self.runs.push(Run::new(epoch, 0));
        }
        let run = self.runs.last_mut().expect("pushed above");
        run.bytes += History::cost(&json);
        run.entries.push_back((id, json));
        while run.entries.len() > most || run.bytes > HISTORY_BYTES {
            let Some((old, json)) = run.entries.pop_front() else {
                break;
            };
            run.bytes -= History::cost(&json);
            run.dropped_up_to = run.dropped_up_to.max(old);
        }
    }

    /// The messages after `since` of `epoch` (all of them without `since`), and
    /// whether some of those are no longer here. `current` is the hub's epoch:
    /// a client of it that shows nothing newer than every run here needs nothing.
    /// An epoch this history does not know (another server run, a cut-off that
    /// is over), or none, gets everything, with a gap.
    fn after(
        &self,
        since: Option<u64>,
        epoch: Option<u64>,
        current: u64,
    ) -> (bool, impl Iterator<Item = &String>) {
        let (gap, from_run, since) = match (since, epoch) {
            (None, _) => (false, 0, 0),
            (Some(since), Some(epoch)) => match self.runs.iter().position(|r| r.epoch == epoch) {
                // The later runs are replayed whole: a gap too if they lost any.
                Some(at) => (
                    since < self.runs[at].dropped_up_to
                        || self.runs[at + 1..]
                            .iter()
                            .any(|r| r.dropped_up_to != r.began_at),
                    at,
                    since,
                ),
                None if epoch == current => (false, self.runs.len(), 0),
                None => (true, 0, 0),
            },
            (Some(_), None) => (true, 0, 0),
        };
        let entries = self.runs[from_run..]
            .iter()
            .enumerate()
            .flat_map(move |(n, run)| {
                // `since` is an id of the first run taken; the later ones are all
                // after it.
                let since = if n == 0 { since } else { 0 };
                run.entries
                    .iter()
                    .filter(move |(id, _)| *id > since)
                    .map(|(_, json)| json)
            });
        (gap, entries)
    }

    /// Every id of `epoch` up to `upto` is missing here, held or not.
    fn missing(&mut self, epoch: u64, upto: u64) {
        match self.runs.iter_mut().find(|r| r.epoch == epoch) {
            Some(run) => run.dropped_up_to = run.dropped_up_to.max(upto),
            None => self.runs.insert(0, Run::new(epoch, upto)),
        }
    }

    /// Drops the run of `epoch`, if there is one.
    fn forget(&mut self, epoch: u64) {
        self.runs.retain(|r| r.epoch != epoch);
    }
}

/// A room: its members, the frames being built for them, and what was said.
struct Room {
    /// In the order they joined: a batch goes out in that order, so the
    /// longest-present clients hear it first. Leaving is a linear search, which at
    /// a few thousand clients costs less than the `send` calls of one batch.
    members: Vec<Member>,
    batch: Batch,
    history: History,
    /// When it was last used, on the hub's own clock: the least recently used empty
    /// room gives its place to a new one.
    last_used: u64,
    /// Who made it (none for the lobby, and for rooms made for the cluster's
    /// messages, which their own node counted): a maker that has made its share
    /// of rooms makes way among its own.
    made_by: Option<Maker>,
}

/// Who made a room, as the cap on rooms per address counts: an IPv4 address, or
/// an IPv6 address's /64, since a host may pick a new address in it for every
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Maker {
    Address(IpAddr),
    Network(Network64),
}

impl Maker {
    fn of(address: IpAddr) -> Maker {
        places::network_of(address).map_or(Maker::Address(address), Maker::Network)
    }

    /// The rooms it may have made: a /64's hosts together have
    /// [`places::NETWORK_SHARES`] addresses' worth, as they have of places.
    fn cap(self, per_address: usize) -> usize {
        match self {
            Maker::Address(_) => per_address,
            Maker::Network(_) => per_address.saturating_mul(places::NETWORK_SHARES),
        }
    }
}

impl Room {
    fn new(history: History) -> Room {
        Room {
            members: Vec::new(),
            batch: Batch::default(),
            history,
            last_used: 0,
            made_by: None,
        }
    }

    fn text_members(&self) -> bool {
        self.members.iter().any(|m| m.format == Format::Text)
    }
}

/// A chat client, as its room holds it.
struct Member {
    id: u64,
    outbox: Arc<Outbox>,
    format: Format,
    /// Set when the client joined during the batch being built.
    joining: Option<Joining>,
    /// Frames of this batch it must not get (its own `except_sender` messages).
    except: Vec<Spot<Range<usize>>>,
}

/// A client that joined during the batch being built: it must get its prefix
/// (welcome or joined, then the room's history) before anything else, and nothing
/// of the batch from before it joined.
struct Joining {
    prefix: Vec<u8>,
    start: Spot<usize>,
}

/// Where a chat client is: what the hub knows of it besides its room's list.
struct Seat {
    room: String,
    name: String,
    format: Format,
    outbox: Arc<Outbox>,
    address: IpAddr,
    /// Pays for what the hub sends on this client's behalf.
    allowance: Option<Arc<Allowance>>,
}

/// The hub's state. Only the hub thread touches it, so it needs no lock.
struct Hub {
    rooms: HashMap<String, Room>,
    /// Every chat client, by id.
    seats: HashMap<u64, Seat>,
    /// Echo clients: heartbeats and shutdown only.
    echo: Vec<(u64, Arc<Outbox>)>,
    /// Rooms whose batch has frames this turn.
    dirty: Vec<String>,
    /// Frames for single clients this turn, sent after the rooms'.
    replies: Vec<(u64, Vec<u8>)>,
    /// Frames of this turn, and messages among them, for the batch bound and /stats.
    turn_bytes: usize,
    turn_messages: u64,
    /// Id of the last message or direct message relayed (in a cluster: of the
    /// cluster's, the highest seen).
    last_message_id: u64,
    /// While cut off: the last id this node gave a message itself.
    own_ids: u64,
    /// The last epoch of this node's own (the one it is in while cut off): the
    /// next is greater.
    last_own_epoch: u64,
    /// In a cluster: the members of each room on the other nodes.
    elsewhere: HashMap<String, Vec<(u64, String)>>,
    /// In a cluster: Redis answers. While it does not, this node's clients chat
    /// among themselves, in an epoch of the node's own.
    linked: bool,
    /// In a cluster: the other nodes' members as last reported, also while
    /// unlinked (when `elsewhere` is empty).
    reported: HashMap<String, Vec<(u64, String)>>,
    /// The hub's clock for the rooms' last use: ticks once per event.
    clock: u64,
    settings: HubSettings,
    stats: Arc<Stats>,
    /// Set once `Shutdown` arrives: a client that joins afterwards is closed at once.
    shutting_down: bool,
}

/// Starts the hub thread.
/// Starts the hub thread. `backfill` is applied before any other event: in a
/// cluster, the stream's recent entries, so that this node starts with the rooms'
/// histories.
pub fn spawn(
    events: Receiver<Event>,
    settings: HubSettings,
    stats: Arc<Stats>,
    backfill: Vec<Event>,
) -> io::Result<JoinHandle<()>> {
    let mut hub = Hub::new(settings, stats);
    // A room made while the backfill is applied has missed only what came before
    // the message it is made for, not the whole backfill.
    let highest = hub.last_message_id;
    if let Some(Event::Relayed { id, .. } | Event::RelayedDirect { id, .. }) = backfill.first() {
        // Ids from the stream start at 1 (`cluster::message_id`).
        hub.last_message_id = id - 1;
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
    fn new(settings: HubSettings, stats: Arc<Stats>) -> Hub {
        // In a cluster, ids go on from the stream's (even with no history kept).
        let last_message_id = settings
            .cluster
            .as_ref()
            .map_or(0, |c| c.highest.load(std::sync::atomic::Ordering::Relaxed));
        let mut rooms = HashMap::new();
        rooms.insert(
            LOBBY.to_string(),
            Room::new(History::new([(settings.epoch, 0)])),
        );
        Hub {
            rooms,
            seats: HashMap::new(),
            echo: Vec::new(),
            dirty: Vec::new(),
            replies: Vec::new(),
            turn_bytes: 0,
            turn_messages: 0,
            last_message_id,
            own_ids: 0,
            last_own_epoch: 0,
            elsewhere: HashMap::new(),
            linked: true,
            reported: HashMap::new(),
            clock: 0,
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
            let timer = if self.seats.is_empty() && self.echo.is_empty() {
                &nobody
            } else {
                &heartbeat
            };
            let first = select! {
                recv(events) -> event => match event {
                    Ok(event) => event,
                    Err(_) => return, // every sender is gone: the server is exiting
                },
                recv(timer) -> _ => {
                    self.ping_everyone();
                    continue;
                }
            };
            self.apply(first);
            // Busy (the last turn had company): wait up to COALESCE for more, so one
            // send per client carries many messages. Quiet: take only what is waiting.
            let linger = if taken > 1 { COALESCE } else { Duration::ZERO };
            let deadline = Instant::now() + linger;
            taken = 1;
            while taken < MAX_BATCH_EVENTS && self.turn_bytes < MAX_BATCH_BYTES {
                match events.recv_deadline(deadline) {
                    Ok(event) => {
                        self.apply(event);
                        taken += 1;
                    }
                    Err(_) => break,
                }
            }
            self.flush();
        }
    }

    /// Applies one event: who is where changes, and what the clients must hear
    /// about it goes into their rooms' batches (or the turn's replies).
    fn apply(&mut self, event: Event) {
        self.clock += 1;
        match event {
            Event::Connect { outbox, .. } if self.shutting_down => {
                outbox.send_close(CloseCode::Away, "server shutting down", Failure::Stopped);
            }
            Event::Connect {
                id,
                outbox,
                endpoint: Endpoint::Echo,
                ..
            } => self.echo.push((id, outbox)),
            Event::Connect {
                id,
                outbox,
                format,
                name,
                room,
                protocol,
                address,
                allowance,
                ..
            } => {
                let seat = Seat {
                    room: LOBBY.to_string(),
                    name,
                    format,
                    outbox,
                    address,
                    allowance,
                };
                self.connect(id, seat, room, protocol)
            }
            Event::Message {
                from,
                message,
                except_sender,
            } => self.message(from, message, except_sender),
            Event::Relayed {
                id,
                ts,
                from,
                room,
                name,
                msg,
                except_sender,
            } => self.relayed(id, ts, from, room, &name, &msg, except_sender),
            Event::NotRelayed { from, why } => {
                self.reply_error(from, &InputError::NotRelayed(why));
            }
            Event::Elsewhere { rooms } => {
                if self.linked {
                    self.elsewhere_changed(rooms.clone());
                }
                // Kept while unlinked too: applied when Redis answers again.
                self.reported = rooms;
            }
            Event::Linked { up } => self.linked_changed(up),
            Event::Missed { upto } => self.missed(upto),
            Event::RelayedKick { by, id } => self.kick_out(id, by),
            Event::RelayedDirect {
                id,
                ts,
                from,
                name,
                to,
                msg,
            } => {
                self.last_message_id = self.last_message_id.max(id);
                self.deliver_direct(id, ts, from, &name, to, &msg);
            }
            Event::Hello { id, name } => {
                if let Some(seat) = self.seats.get_mut(&id) {
                    seat.name = name;
                    let seat = &self.seats[&id];
                    self.mirror(id, Some((&seat.room, &seat.name)));
                }
            }
            Event::Join {
                id,
                room,
                since,
                epoch,
            } => {
                if !self.seats.contains_key(&id) {
                    return;
                }
                let address = self.seats[&id].address;
                if let Err(e) = self.make_room(&room, Some(address)) {
                    return self.reply_error(id, &e);
                }
                // Moving between rooms happens between batches: every batch before
                // it reaches the client in its old room, every one after in its new.
                self.flush();
                self.join(id, room, since, epoch);
            }
            Event::Rooms { id } => {
                let Some(format) = self.seats.get(&id).map(|s| s.format) else {
                    return;
                };
                let mut rooms: Vec<RoomCount> = self
                    .rooms
                    .iter()
                    .map(|(name, room)| (name, room.members.len()))
                    .chain(
                        // Rooms only other nodes' clients are in.
                        self.elsewhere
                            .keys()
                            .filter(|name| !self.rooms.contains_key(*name))
                            .map(|name| (name, 0)),
                    )
                    .map(|(name, here)| (name, here + others(&self.elsewhere, name)))
                    .filter(|(name, count)| *count > 0 || *name == LOBBY)
                    .map(|(name, count)| RoomCount { room: name, count })
                    .collect();
                rooms.sort_by(|a, b| (a.room != LOBBY, a.room).cmp(&(b.room != LOBBY, b.room)));
                let more = rooms.len().saturating_sub(LIST_MOST);
                rooms.truncate(LIST_MOST);
                let bytes = encode(&Outgoing::Rooms { rooms, more }, format);
                charge(&self.seats[&id], bytes.len());
                self.reply(id, bytes);
            }
            Event::Who { id } => {
                let Some(seat) = self.seats.get(&id) else {
                    return;
                };
                let here = self.rooms[&seat.room].members.iter().map(|m| WhoMember {
                    id: m.id,
                    name: self.seats.get(&m.id).map_or("", |s| s.name.as_str()),
                });
                let there =
                    self.elsewhere
                        .get(&seat.room)
                        .into_iter()
                        .flatten()
                        .map(|(id, name)| WhoMember {
                            id: *id,
                            name: name.as_str(),
                        });
                let all =
                    self.rooms[&seat.room].members.len() + others(&self.elsewhere, &seat.room);
                let members = here.chain(there).take(LIST_MOST).collect();
                let frame = Outgoing::Who {
                    room: &seat.room,
                    members,
                    more: all.saturating_sub(LIST_MOST),
                };
                let bytes = encode(&frame, seat.format);
                charge(seat, bytes.len());
                self.reply(id, bytes);
            }
            Event::Direct {
                from,
                name,
                to,
                msg,
            } => self.direct(from, &name, to, &msg),
            Event::Kick { by, id } => self.kick(by, id),
            Event::Leave { id } => {
                if let Some(seat) = self.seats.remove(&id) {
                    // Its leave's notification to everyone there.
                    if let Some(room) = self.rooms.get(&seat.room) {
                        charge(&seat, presence_cost(room, &seat.room, &seat.name, id));
                    }
                    self.mirror(id, None);
                    self.leave_room(id, &seat, Presence::Leave);
                }
                self.echo.retain(|(echo, _)| *echo != id);
            }
            Event::Probe { answer } => {
                let _ = answer.try_send(());
            }
            Event::Shutdown => {
                self.shutting_down = true;
                // redis-out ends when its channel does; the hub, when it has.
                self.settings.cluster = None;
                self.dirty.clear();
                self.replies.clear();
                for room in self.rooms.values_mut() {
                    room.batch = Batch::default();
                    for member in room.members.drain(..) {
                        member.outbox.send_close(
                            CloseCode::Away,
                            "server shutting down",
                            Failure::Stopped,
                        );
                    }
                }
                for (_, outbox) in self.echo.drain(..) {
                    outbox.send_close(CloseCode::Away, "server shutting down", Failure::Stopped);
                }
                self.seats.clear();
            }
        }
    }

    /// Seats a new client (`seat` says where it wants to be: the lobby) in
    /// `room`, or the lobby.
    fn connect(&mut self, id: u64, mut seat: Seat, room: Option<String>, protocol: &'static str) {
        // A first room it cannot have (every place taken) is the lobby instead.
        let room = room
            .filter(|r| self.make_room(r, Some(seat.address)).is_ok())
            .unwrap_or_else(|| LOBBY.to_string());
        let (format, name, outbox) = (seat.format, seat.name.clone(), Arc::clone(&seat.outbox));
        let (clock, epoch) = (self.clock, self.epoch());
        let target = self.rooms.get_mut(&room).expect("made above, or the lobby");
        let elsewhere = others(&self.elsewhere, &room);
        let count = target.members.len() + 1 + elsewhere;
        let welcome = Outgoing::Welcome {
            id,
            count,
            protocol,
            room: Some(&room),
            epoch: Some(epoch),
        };
        let mut prefix = encode(&welcome, format);
        let (_, history) = target.history.after(None, None, epoch);
        append_history(&mut prefix, history, format);
        // Its welcome and history, and its join's notification to everyone there.
        charge(
            &seat,
            prefix.len() + presence_cost(target, &room, &seat.name, id),
        );
        seat.room = room.clone();
        self.seats.insert(id, seat);
        self.mirror(id, Some((&room, &name)));
        let target = self.rooms.get_mut(&room).expect("made above, or the lobby");
        target.last_used = clock;
        self.turn_bytes += prefix.len() + protocol::MAX_PRESENCE_FRAME;
        enter(target, &room, id, outbox, format, name, prefix, elsewhere);
        mark_dirty(&mut self.dirty, &room);
    }

    fn message(&mut self, from: u64, message: ChatMessage, except_sender: bool) {
        if !self.seats.contains_key(&from) {
            return; // left (or kicked) while the message was on its way
        }
        if self.spent_meanwhile(from) {
            return;
        }
        if let Some(side) = self.settings.cluster.as_ref().filter(|_| self.linked) {
            let seat = &self.seats[&from];
            // Delivered when Redis hands it back, in the cluster's order.
            let publish = Publish {
                room: seat.room.clone(),
                from,
                name: message.name,
                msg: message.msg,
                except_sender,
                ts: unix_millis(),
                to: None,
                kick: false,
            };
            if !cluster::offer(&side.outgoing, publish) {
                self.reply_error(from, &InputError::NotRelayed("the chat is busy: try again"));
            }
            return;
        }
        let (id, epoch) = (self.take_id(), self.epoch());
        let seat = &self.seats[&from];
        let Some(room) = self.rooms.get_mut(&seat.room) else {
            return;
        };
        log::debug!(
            "message {id} from client {from} in \"{}\": \"{}\": \"{}\"",
            Untrusted(&seat.room),
            Untrusted(&message.name),
            Untrusted(&message.msg)
        );
        let frame = Outgoing::Message {
            id,
            ts: unix_millis(),
            from,
            name: &message.name,
            msg: &message.msg,
            room: Some(&seat.room),
        };
        let was_empty = room.batch.is_empty();
        let bytes = post(
            room,
            &seat.room,
            &frame,
            except_sender,
            (epoch, self.settings.history),
        );
        charge(seat, bytes * room.members.len());
        self.turn_bytes += bytes;
        self.turn_messages += 1;
        room.last_used = self.clock;
        if was_empty {
            self.dirty.push(seat.room.clone());
        }
    }

    /// A room message in the cluster's order: to this node's members of its room,
    /// and its history. A room nobody here is in is made for its history (while
    /// `--max-rooms` allows), so that whoever joins it here later hears what was
    /// said there.
    #[allow(clippy::too_many_arguments)]
    fn relayed(
        &mut self,
        id: u64,
        ts: u64,
        from: u64,
        room_name: String,
        name: &str,
        msg: &str,
        except_sender: bool,
    ) {
        // Made before the id is taken in: a room new here has no history before
        // this message.
        let made = self.make_room(&room_name, None);
        self.last_message_id = self.last_message_id.max(id);
        if made.is_err() {
            return;
        }
        let Some(room) = self.rooms.get_mut(&room_name) else {
            return;
        };
        let frame = Outgoing::Message {
            id,
            ts,
            from,
            name,
            msg,
            room: Some(&room_name),
        };
        let was_empty = room.batch.is_empty();
        let bytes = post(
            room,
            &room_name,
            &frame,
            except_sender,
            (self.settings.epoch, self.settings.history),
        );
        // This node's own client pays for what this node sends for it; another
        // node's pays there.
        if let Some(sender) = self.seats.get(&from) {
            charge(sender, bytes * room.members.len());
        }
        self.turn_bytes += bytes;
        self.turn_messages += 1;
        room.last_used = self.clock;
        if was_empty {
            self.dirty.push(room_name);
        }
    }

    /// Moves client `id` to `room`, which exists (made by `make_room` before the
    /// turn was flushed).
    fn join(&mut self, id: u64, room: String, since: Option<u64>, epoch: Option<u64>) {
        let Some(seat) = self.seats.get(&id) else {
            return;
        };
        let format = seat.format;
        let name = seat.name.clone();
        let outbox = Arc::clone(&seat.outbox);
        let old = seat.room.clone();
        let (address, allowance) = (seat.address, seat.allowance.clone());
        let (clock, now, linked) = (self.clock, self.epoch(), self.linked);
        let target = self
            .rooms
            .get_mut(&room)
            .expect("made before the turn was flushed, and only empty rooms are dropped");
        target.last_used = clock;
        // `since` of an epoch this room does not know (another server run, a
        // cut-off that is over): its ids say nothing about these, so the whole
        // history is sent and the reply says some may be missing.
        // Without an epoch, `since` is of the server's only one, or the cluster's
        // (as it was before this node's own); while cut off it may be either.
        let epoch = epoch.or(linked.then_some(now));
        let staying = old == room;
        // Joining the room it is in replays nothing unless asked to (`since`):
        // otherwise one small frame would buy the whole history again.
        let replay = !staying || since.is_some();
        let (gap, history) = target.history.after(since, epoch, now);
        let history = history.take(if replay { usize::MAX } else { 0 });
        let elsewhere = others(&self.elsewhere, &room);
        let joined = Outgoing::Joined {
            room: &room,
            count: target.members.len() + usize::from(!staying) + elsewhere,
            gap,
        };
        let mut prefix = encode(&joined, format);
        append_history(&mut prefix, history, format);
        self.turn_bytes += prefix.len();
        // Its answer and replay, and a move's join notification to everyone there.
        let announced = if staying {
            0
        } else {
            presence_cost(target, &room, &name, id)
        };
        charge(seat, prefix.len() + announced);
        if staying {
            // Joining the room it is in: `joined` (and, with `since`, what followed),
            // nothing announced. Sent now: the turn was flushed above, so this lands
            // between what the client already has and the rest of this turn, as a
            // move's prefix does.
            let _ = outbox.send_shared(&Arc::new(prefix), 0);
            return;
        }
        self.turn_bytes += protocol::MAX_PRESENCE_FRAME;
        enter(
            target,
            &room,
            id,
            Arc::clone(&outbox),
            format,
            name.clone(),
            prefix,
            elsewhere,
        );
        mark_dirty(&mut self.dirty, &room);
        self.mirror(id, Some((&room, &name)));
        let seat = self.seats.get_mut(&id).expect("looked up above");
        seat.room = room;
        let moved = Seat {
            room: old,
            name,
            format,
            outbox,
            address,
            allowance,
        };
        if let Some(left) = self.rooms.get(&moved.room) {
            charge(&moved, presence_cost(left, &moved.room, &moved.name, id));
        }
        self.leave_room(id, &moved, Presence::Leave);
    }

    fn direct(&mut self, from: u64, name: &str, to: u64, msg: &str) {
        if self.spent_meanwhile(from) {
            return;
        }
        if self.settings.cluster.is_some() && !self.linked && !self.seats.contains_key(&to) {
            // Perhaps on another node, which cannot be reached now.
            return self.reply_error(from, &InputError::Unreachable(to));
        }
        if let Some(side) = self.settings.cluster.as_ref().filter(|_| self.linked) {
            // Through Redis, like a room message, for its id; the target's node
            // delivers it, the sender's node the sender's copy.
            let known = self.seats.contains_key(&to)
                || self.elsewhere.values().flatten().any(|(id, _)| *id == to);
            if !known || !self.seats.contains_key(&from) {
                return self.reply_error(from, &InputError::NoSuchClient(to));
            }
            let publish = Publish {
                room: String::new(),
                from,
                name: name.to_string(),
                msg: msg.to_string(),
                except_sender: false,
                ts: unix_millis(),
                to: Some(to),
                kick: false,
            };
            if !cluster::offer(&side.outgoing, publish) {
                self.reply_error(from, &InputError::NotRelayed("the chat is busy: try again"));
            }
            return;
        }
        if !(self.seats.contains_key(&to) && self.seats.contains_key(&from)) {
            return self.reply_error(from, &InputError::NoSuchClient(to));
        }
        let id = self.take_id();
        self.deliver_direct(id, unix_millis(), from, name, to, msg);
    }

    /// The epoch of what the hub delivers now: the server run's or the
    /// cluster's, or while cut off from the cluster one of this node's own.
    fn epoch(&self) -> u64 {
        if self.linked {
            self.settings.epoch
        } else {
            self.last_own_epoch
        }
    }

    /// The id of a message this hub numbers itself: a single server's next, or,
    /// on a node cut off from its cluster, the next of the node's own epoch. Those
    /// go on from the cluster's last id, but may be any other node's too, which is
    /// why they have an epoch of their own.
    fn take_id(&mut self) -> u64 {
        if self.linked {
            self.last_message_id += 1;
            self.last_message_id
        } else {
            self.own_ids += 1;
            self.own_ids
        }
    }

    /// A direct message to `to` and the sender's copy, to whichever of the two is
    /// on this node.
    fn deliver_direct(&mut self, id: u64, ts: u64, from: u64, name: &str, to: u64, msg: &str) {
        let frame = |delivered| Outgoing::Direct {
            id,
            ts,
            from,
            name,
            to,
            msg,
            delivered,
        };
        let to_target = self
            .seats
            .get(&to)
            .filter(|_| to != from)
            .map(|target| encode(&frame(false), target.format));
        let to_sender = self
            .seats
            .get(&from)
            .map(|sender| encode(&frame(true), sender.format));
        // The sender's address pays for both copies (when it is on this node).
        if let Some(sender) = self.seats.get(&from) {
            let copies =
                to_target.as_ref().map_or(0, Vec::len) + to_sender.as_ref().map_or(0, Vec::len);
            charge(sender, copies);
        }
        if let Some(to_target) = to_target {
            self.reply(to, to_target);
        }
        if let Some(to_sender) = to_sender {
            self.reply(from, to_sender);
        }
    }

    /// Tells the other nodes (through the mirror `redis-presence` writes to Redis)
    /// where client `id` now is, or that it is gone.
    fn mirror(&self, id: u64, seat: Option<(&str, &str)>) {
        if let Some(side) = &self.settings.cluster {
            side.seats.set(id, seat);
        }
    }

    /// Redis stopped or started answering: every room here hears it, and while it
    /// is gone the other nodes' members are out of this node's counts.
    ///
    /// Cut off, the node goes on as a single server for its own clients: it
    /// numbers their messages itself, in a new epoch, so that no id of its own can
    /// be mistaken for one the cluster gives meanwhile (the other nodes may still
    /// reach Redis and go on counting). When Redis is back, that epoch ends: what
    /// was said in it stays with those who heard it and leaves the histories, so
    /// every node's history is the stream's again, and `redis-in` delivers what
    /// the others said meanwhile.
    fn linked_changed(&mut self, up: bool) {
        if up == self.linked {
            return;
        }
        self.linked = up;
        if up {
            for room in self.rooms.values_mut() {
                room.history.forget(self.last_own_epoch);
            }
        } else {
            let node = self.settings.cluster.as_ref().map_or(0, |c| c.node);
            self.last_own_epoch = own_epoch(node, self.last_own_epoch);
            self.own_ids = self.last_message_id;
        }
        log::warn!(
            "cluster: Redis {}",
            if up {
                "answers again"
            } else {
                "does not answer: chatting on alone"
            }
        );
        let now = if up {
            self.reported.clone()
        } else {
            HashMap::new()
        };
        self.elsewhere_changed(now);
        let msg = if up {
            "this server has the rest of the chat again"
        } else {
            "this server lost the rest of the chat: until it is back, only the people on this server hear you"
        };
        self.tell_every_room(msg, false);
    }

    /// A cluster notification to every room with members: whether Redis answers
    /// now, in which epoch, and (`gap`) whether something is gone for good.
    fn tell_every_room(&mut self, msg: &str, gap: bool) {
        let epoch = self.epoch();
        for (name, room) in &mut self.rooms {
            if room.members.is_empty() {
                continue;
            }
            let frame = Outgoing::Cluster {
                msg,
                count: room.members.len() + others(&self.elsewhere, name),
                event: "cluster",
                room: name,
                connected: self.linked,
                gap,
                epoch,
            };
            let json = frame.to_json();
            room.batch.push(&json, &frame, name);
            self.turn_bytes += json.len();
            mark_dirty(&mut self.dirty, name);
        }
    }

    /// The cluster's messages up to `upto` that this node has not heard never will
    /// (the stream was trimmed past them while it was cut off, or Redis lost
    /// them): a replay from before them has a gap, and everyone here is told.
    fn missed(&mut self, upto: u64) {
        log::warn!("cluster: messages up to {upto} are gone before this node heard them");
        self.last_message_id = self.last_message_id.max(upto);
        for room in self.rooms.values_mut() {
            room.history.missing(self.settings.epoch, upto);
        }
        self.tell_every_room(
            "some of what was said on the other servers meanwhile is gone and will not arrive",
            true,
        );
    }

    /// Who is where on the other nodes changed: the counts follow, and this node's
    /// members hear of each join and leave, as of their own node's.
    fn elsewhere_changed(&mut self, rooms: HashMap<String, Vec<(u64, String)>>) {
        let old = std::mem::replace(&mut self.elsewhere, rooms);
        for (name, room) in &mut self.rooms {
            if room.members.is_empty() {
                continue;
            }
            let before = old.get(name).map_or(&[][..], Vec::as_slice);
            let after = self.elsewhere.get(name).map_or(&[][..], Vec::as_slice);
            if before == after {
                continue;
            }
            let ids = |list: &[(u64, String)]| list.iter().map(|m| m.0).collect::<HashSet<u64>>();
            let (had, has) = (ids(before), ids(after));
            let mut count = room.members.len() + before.len();
            let mut changed = false;
            for (id, who) in before.iter().filter(|m| !has.contains(&m.0)) {
                count -= 1;
                room.batch
                    .presence(Presence::Leave, count, (*id, who.clone()), name);
                changed = true;
            }
            for (id, who) in after.iter().filter(|m| !had.contains(&m.0)) {
                count += 1;
                room.batch
                    .presence(Presence::Join, count, (*id, who.clone()), name);
                changed = true;
            }
            if changed {
                self.turn_bytes += 2 * protocol::MAX_PRESENCE_FRAME;
                mark_dirty(&mut self.dirty, name);
            }
        }
    }

    fn kick(&mut self, by: u64, id: u64) {
        if !self.seats.contains_key(&by) {
            return; // kicked itself meanwhile
        }
        if self.seats.contains_key(&id) {
            return self.kick_out(id, by);
        }
        let Some(side) = &self.settings.cluster else {
            return self.reply_error(by, &InputError::NoSuchClient(id));
        };
        if !self.linked {
            return self.reply_error(by, &InputError::Unreachable(id));
        }
        if !self
            .elsewhere
            .values()
            .flatten()
            .any(|(there, _)| *there == id)
        {
            return self.reply_error(by, &InputError::NoSuchClient(id));
        }
        // Its node removes it when the kick comes back through the stream.
        let publish = Publish {
            room: String::new(),
            from: by,
            name: String::new(),
            msg: String::new(),
            except_sender: false,
            ts: unix_millis(),
            to: Some(id),
            kick: true,
        };
        if !cluster::offer(&side.outgoing, publish) {
            self.reply_error(by, &InputError::NotRelayed("the chat is busy: try again"));
        }
    }

    /// Closes client `id` with 4001, by order of client `by` (of any node).
    fn kick_out(&mut self, id: u64, by: u64) {
        let Some(seat) = self.seats.remove(&id) else {
            return;
        };
        log::info!("client {id} kicked by client {by}");
        self.mirror(id, None);
        // Its reader is woken too: a client that ignores the Close is gone all the
        // same, and gives its place back.
        seat.outbox
            .close_and_wake(CloseCode::Library(4001), "kicked", Failure::Kicked);
        self.leave_room(id, &seat, Presence::Kick);
    }

    /// Takes client `id` out of `seat.room`, announcing it with `event`.
    fn leave_room(&mut self, id: u64, seat: &Seat, event: Presence) {
        let Some(room) = self.rooms.get_mut(&seat.room) else {
            return;
        };
        let Some(at) = room.members.iter().position(|m| m.id == id) else {
            return;
        };
        room.members.remove(at);
        room.batch.wants_text = room.text_members();
        let count = room.members.len() + others(&self.elsewhere, &seat.room);
        room.batch
            .presence(event, count, (id, seat.name.clone()), &seat.room);
        room.last_used = self.clock;
        self.turn_bytes += protocol::MAX_PRESENCE_FRAME;
        mark_dirty(&mut self.dirty, &seat.room);
    }

    /// Makes `room` if it does not exist, for a client from `maker` (none: for the
    /// cluster's messages). An address that has made its share of rooms makes way
    /// among its own; otherwise, when every place is taken, the least recently
    /// used empty room does. Never the lobby, and never a room with members or
    /// frames this turn.
    fn make_room(&mut self, room: &str, maker: Option<IpAddr>) -> Result<(), InputError> {
        if self.rooms.contains_key(room) {
            return Ok(());
        }
        let maker = maker.map(Maker::of);
        let cap = maker.map_or(0, |m| m.cap(self.settings.max_rooms_per_host));
        let own = |r: &Room| maker.is_some() && r.made_by == maker;
        let made = self.rooms.values().filter(|r| own(r)).count();
        if cap > 0 && made >= cap {
            match self.idle_room(|r| own(r)) {
                Some(idle) => self.rooms.remove(&idle),
                None => return Err(InputError::TooManyRoomsFromAddress(cap)),
            };
        } else if self.rooms.len() >= self.settings.max_rooms {
            match self.idle_room(|_| true) {
                Some(idle) => self.rooms.remove(&idle),
                None => return Err(InputError::TooManyRooms(self.settings.max_rooms)),
            };
        }
        // A room made anew has no history: a replay from any message before now
        // has a gap (in the cluster's epoch, and in this node's own while cut off).
        let history = History::new([
            (self.settings.epoch, self.last_message_id),
            (self.epoch(), self.own_ids),
        ]);
        let mut made = Room::new(history);
        made.made_by = maker;
        self.rooms.insert(room.to_string(), made);
        Ok(())
    }

    /// The least recently used room among `candidates` that may make way: empty,
    /// not the lobby, nothing in this turn's batch.
    fn idle_room(&self, candidates: impl Fn(&Room) -> bool) -> Option<String> {
        self.rooms
            .iter()
            .filter(|(name, r)| r.members.is_empty() && *name != LOBBY && candidates(r))
            .filter(|(name, _)| !self.dirty.contains(name))
            .min_by_key(|(_, r)| r.last_used)
            .map(|(name, _)| name.clone())
    }

    /// An answer to client `id`, paid for by its address.
    fn reply_frame(&mut self, id: u64, frame: &Outgoing<'_>) {
        if let Some(seat) = self.seats.get(&id) {
            let bytes = encode(frame, seat.format);
            charge(seat, bytes.len());
            self.reply(id, bytes);
        }
    }

    /// Queues a frame for one client, for the end of the turn; it counts towards
    /// the turn's size like any other.
    fn reply(&mut self, id: u64, bytes: Vec<u8>) {
        self.turn_bytes += bytes.len();
        self.replies.push((id, bytes));
    }

    /// Whether client `id`'s address has spent what it may make the server send
    /// since its reader let this message in (other connections of the address
    /// spent it meanwhile); if so, the message is dropped and the client told.
    /// The hub is the last gate, so that an address overdraws by one message's
    /// fan-out, not by one for each of its connections.
    fn spent_meanwhile(&mut self, id: u64) -> bool {
        let spent = self
            .seats
            .get(&id)
            .and_then(|seat| seat.allowance.as_ref())
            .is_some_and(|allowance| !allowance.can_spend());
        if spent {
            let frame = Outgoing::Dropped {
                msg: InputError::AddressBusy(Spent::BytesOut.what()).to_string(),
                dropped: 1,
            };
            self.reply_frame(id, &frame);
        }
        spent
    }

    fn reply_error(&mut self, id: u64, error: &InputError) {
        let frame = Outgoing::Error {
            msg: error.to_string(),
        };
        self.reply_frame(id, &frame);
    }

    /// Hands every room's batch to its members, then the replies. Encoded once
    /// per format, shared by all.
    fn flush(&mut self) {
        // Counted before the clients can see the batch, so /stats never lags
        // behind what a client has already received.
        if !self.dirty.is_empty() || !self.replies.is_empty() {
            self.stats.add_batch(self.turn_messages);
        }
        self.stats.set_clients(self.seats.len());
        self.turn_bytes = 0;
        self.turn_messages = 0;
        for name in self.dirty.drain(..) {
            let Some(room) = self.rooms.get_mut(&name) else {
                continue;
            };
            let bytes = room.batch.finish(&name);
            let bytes = Spot {
                json: Arc::new(bytes.json),
                text: Arc::new(bytes.text),
            };
            for member in &mut room.members {
                deliver(member, &bytes);
            }
        }
        for (id, bytes) in self.replies.drain(..) {
            // A failed send needs no action here: the outbox has already closed the
            // client, whose reader will report the Leave.
            if let Some(seat) = self.seats.get(&id) {
                let _ = seat.outbox.send_shared(&Arc::new(bytes), 0);
            }
        }
    }

    fn ping_everyone(&self) {
        let mut ping = Vec::new();
        frame::append_ping(&mut ping);
        let ping = Arc::new(ping);
        for seat in self.seats.values() {
            let _ = seat.outbox.send_shared(&ping, 0);
        }
        for (_, outbox) in &self.echo {
            let _ = outbox.send_shared(&ping, 0);
        }
    }
}

/// Adds a client to `room`: its prefix first, then the batch from its own join
/// notification on.
#[allow(clippy::too_many_arguments)]
fn enter(
    room: &mut Room,
    name: &str,
    id: u64,
    outbox: Arc<Outbox>,
    format: Format,
    client_name: String,
    prefix: Vec<u8>,
    elsewhere: usize,
) {
    let count = room.members.len() + 1 + elsewhere;
    if format == Format::Text && !room.batch.wants_text {
        // Text starts with this client: nothing of the batch before is text yet,
        // and nobody needs it to be.
        room.batch.wants_text = true;
    }
    let start = room
        .batch
        .presence(Presence::Join, count, (id, client_name), name);
    room.members.push(Member {
        id,
        outbox,
        format,
        joining: Some(Joining { prefix, start }),
        except: Vec::new(),
    });
}

/// Sends one room's batch to one member: its prefix if it just joined, then the
/// batch from where it starts, without its own `except_sender` messages.
fn deliver(member: &mut Member, bytes: &Spot<Arc<Vec<u8>>>) {
    let (batch, mut start, skips): (&Arc<Vec<u8>>, usize, Vec<Range<usize>>) = match member.format {
        Format::Json => (
            &bytes.json,
            0,
            member.except.drain(..).map(|s| s.json).collect(),
        ),
        Format::Text => (
            &bytes.text,
            0,
            member.except.drain(..).map(|s| s.text).collect(),
        ),
    };
    // A failed send needs no action here: the outbox has already closed the
    // client, whose reader will report the Leave.
    if let Some(joining) = member.joining.take() {
        let _ = member.outbox.send_shared(&Arc::new(joining.prefix), 0);
        start = match member.format {
            Format::Json => joining.start.json,
            Format::Text => joining.start.text,
        };
    }
    for skip in skips {
        if skip.start > start {
            let _ = member.outbox.send_shared_part(batch, start..skip.start);
        }
        start = start.max(skip.end);
    }
    if start < batch.len() {
        let _ = member.outbox.send_shared_part(batch, start..batch.len());
    }
}

/// Appends a message frame to `room`'s batch (not to its sender's, with
/// `except_sender`) and to its history. Returns the frame's size.
fn post(
    room: &mut Room,
    room_name: &str,
    frame: &Outgoing<'_>,
    except_sender: bool,
    (epoch, history): (u64, usize),
) -> usize {
    let Outgoing::Message { id, from, .. } = *frame else {
        unreachable!("post is given message frames")
    };
    let json = frame.to_json();
    let at = room.batch.push(&json, frame, room_name);
    if except_sender && let Some(sender) = room.members.iter_mut().find(|m| m.id == from) {
        sender.except.push(at);
    }
    let bytes = json.len();
    room.history.push(epoch, id, json, history);
    bytes
}

/// An epoch of node `node`'s own, for a time cut off from its cluster, after its
/// `previous` one: the time in seconds above the node's number (below 2^21), so
/// no two nodes share one, and the same node's increase. Past any cluster's (a
/// time in milliseconds), and below 2^53 (for the page's JavaScript) until 2106.
fn own_epoch(node: u64, previous: u64) -> u64 {
    let now = ((unix_millis() / 1000) << 21) | node;
    now.max((previous | node) + (1 << 21))
}

/// How many of `room`'s members are on other nodes (0 without a cluster).
fn others(elsewhere: &HashMap<String, Vec<(u64, String)>>, room: &str) -> usize {
    elsewhere.get(room).map_or(0, Vec::len)
}

fn mark_dirty(dirty: &mut Vec<String>, room: &str) {
    if !dirty.iter().any(|r| r == room) {
        dirty.push(room.to_string());
    }
}

/// What one join or leave notification of `name` costs its address: its size for
/// each member of `room` it reaches (`who`, coming or going, is not one of them).
fn presence_cost(room: &Room, room_name: &str, name: &str, who: u64) -> usize {
    let reached = room.members.iter().filter(|m| m.id != who).count();
    protocol::presence_frame_size(name, room_name) * reached
}

/// Charges `bytes` the hub sends on `seat`'s behalf to its address's budget.
fn charge(seat: &Seat, bytes: usize) {
    if let Some(allowance) = &seat.allowance {
        allowance.spend(bytes);
    }
}

/// One frame for one client, in its format.
fn encode(frame: &Outgoing<'_>, format: Format) -> Vec<u8> {
    match format {
        Format::Json => frame::text(&frame.to_json()),
        Format::Text => frame::text(&frame.text_line()),
    }
}

/// Appends a room's history to a joining client's prefix, each message marked as
/// history.
fn append_history<'a>(
    prefix: &mut Vec<u8>,
    history: impl Iterator<Item = &'a String>,
    format: Format,
) {
    for json in history {
        match format {
            Format::Json => frame::append_text(prefix, &protocol::as_history(json)),
            Format::Text => {
                // Rare (a plain-text client joining): read the line back from the
                // JSON rather than keep a second copy of every message.
                if let Ok(line) = serde_json::from_str::<HistoryLine>(json) {
                    let line = protocol::person_line(&line.name, "", &line.msg);
                    frame::append_text(prefix, &line);
                }
            }
        }
    }
}

/// What a plain-text history line needs of a message's JSON.
#[derive(serde::Deserialize)]
struct HistoryLine {
    name: String,
    msg: String,
}

/// Milliseconds since the Unix epoch: messages' `ts`, and the server run's epoch.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON texts of the whole unmasked text frames at the start of `bytes`.
    fn texts(bytes: &[u8]) -> Vec<serde_json::Value> {
        frames(bytes)
            .iter()
            .map(|f| serde_json::from_str(f).unwrap())
            .collect()
    }

    /// The payloads of the whole unmasked text frames at the start of `bytes`.
    fn frames(bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 2 <= bytes.len() {
            assert_eq!(bytes[at], 0x81, "a final text frame");
            let (len, header) = match bytes[at + 1] {
                126 if at + 4 <= bytes.len() => (
                    u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
                    4,
                ),
                126 => break,
                127 => panic!("no frame here is that long"),
                n => (n as usize, 2),
            };
            let Some(payload) = bytes.get(at + header..at + header + len) else {
                break;
            };
            out.push(String::from_utf8(payload.to_vec()).unwrap());
            at += header + len;
        }
        out
    }

    const ROOM: &str = "lobby";

    fn single(id: u64) -> (u64, String) {
        (id, String::new())
    }

    #[test]
    fn a_run_of_joins_is_one_notification_with_the_count_after_it() {
        let mut batch = Batch::default();
        for count in 4..=6 {
            batch.presence(Presence::Join, count, single(count as u64), ROOM);
        }
        let frames = texts(&batch.finish(ROOM).json);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0]["users"], 3);
        assert_eq!(frames[0]["count"], 6);
        assert_eq!(frames[0]["msg"], "3 users joined [online: 6]");
        assert_eq!(frames[0]["room"], ROOM);
        assert!(frames[0].get("id").is_none(), "a run names no one");
    }

    #[test]
    fn a_single_join_names_its_client() {
        let mut batch = Batch::default();
        batch.presence(Presence::Join, 1, (7, "ann".into()), ROOM);
        let frames = texts(&batch.finish(ROOM).json);
        assert_eq!(
            (frames[0]["id"].as_u64(), frames[0]["name"].as_str()),
            (Some(7), Some("ann"))
        );
    }

    fn message_frame(text: &str) -> (String, Outgoing<'_>) {
        let frame = Outgoing::Message {
            id: 1,
            ts: 1,
            from: 1,
            name: "n",
            msg: text,
            room: Some(ROOM),
        };
        (frame.to_json(), frame)
    }

    #[test]
    fn a_client_joining_after_a_leave_starts_after_it() {
        let mut batch = Batch::default();
        let (json, frame) = message_frame("before");
        batch.push(&json, &frame, ROOM);
        batch.presence(Presence::Leave, 4, single(1), ROOM);
        let start = batch.presence(Presence::Join, 5, single(2), ROOM);
        let bytes = batch.finish(ROOM).json;
        assert_eq!(texts(&bytes).len(), 3);
        let heard = texts(&bytes[start.json..]);
        assert_eq!(heard.len(), 1, "the joiner heard {heard:?}");
        assert_eq!(heard[0]["event"], "join");
        assert_eq!(heard[0]["count"], 5);
    }

    #[test]
    fn text_lines_are_built_only_for_a_room_that_has_text_members() {
        let mut batch = Batch::default();
        let (json, frame) = message_frame("hi");
        batch.push(&json, &frame, ROOM);
        assert!(batch.text.is_empty());
        batch.wants_text = true;
        batch.push(&json, &frame, ROOM);
        batch.presence(Presence::Leave, 1, (3, "bob".into()), ROOM);
        let bytes = batch.finish(ROOM);
        assert_eq!(frames(&bytes.text), ["[n] hi", "user left [online: 1]"]);
        assert_eq!(texts(&bytes.json).len(), 3);
    }

    #[test]
    fn a_full_batch_stays_within_its_bound() {
        let worst = protocol::largest_message_json();
        let frame = Outgoing::Pong;
        let mut batch = Batch::default();
        let mut count = 0;
        let name = "\u{1}".repeat(protocol::MAX_NAME_CHARS);
        // As the hub fills one: an event is taken while the batch is under its size.
        while batch.json.len() < MAX_BATCH_BYTES {
            count += 1;
            batch.presence(
                Presence::Leave,
                usize::MAX - count,
                (u64::MAX, name.clone()),
                ROOM,
            );
            batch.push(&worst, &frame, ROOM);
        }
        batch.presence(Presence::Join, usize::MAX, (u64::MAX, name), ROOM);
        assert!(batch.finish(ROOM).json.len() <= LARGEST_BATCH);
    }

    #[test]
    fn history_keeps_the_newest_and_knows_what_it_dropped() {
        let mut history = History::default();
        for id in 1..=5 {
            history.push(1, id, format!("{{\"id\":{id}}}"), 3);
        }
        let (gap, kept) = history.after(None, None, 1);
        assert!(!gap);
        assert_eq!(kept.count(), 3);
        let (gap, after) = history.after(Some(3), Some(1), 1);
        assert!(!gap, "3 and before are not needed");
        assert_eq!(
            after.cloned().collect::<Vec<_>>(),
            ["{\"id\":4}", "{\"id\":5}"]
        );
        let (gap, _) = history.after(Some(1), Some(1), 1);
        assert!(gap, "2 was dropped");
        let (gap, all) = history.after(Some(5), Some(7), 1);
        assert!(gap, "another run's ids say nothing about these");
        assert_eq!(all.count(), 3);
        // And a byte bound whatever the count.
        let mut history = History::default();
        for id in 1..=100 {
            history.push(1, id, "x".repeat(4096), 1000);
        }
        assert!(history.runs[0].bytes <= HISTORY_BYTES);
        assert_eq!(
            history.runs[0].entries.len(),
            HISTORY_BYTES / (4096 + HISTORY_ENTRY_OVERHEAD)
        );
    }

    #[test]
    fn a_cut_off_node_s_own_run_follows_the_cluster_s_and_is_forgotten_after() {
        const CLUSTER: u64 = 10;
        const OWN: u64 = 20;
        let replay = |h: &History, since, epoch: Option<u64>, current| {
            let (gap, it) = h.after(Some(since), epoch, current);
            (gap, it.cloned().collect::<Vec<_>>())
        };
        let mut history = History::new([(CLUSTER, 0)]);
        for id in 1..=3 {
            history.push(CLUSTER, id, format!("c{id}"), 3);
        }
        // Cut off: the node numbers on from 3 in its own epoch.
        for id in 4..=5 {
            history.push(OWN, id, format!("o{id}"), 3);
        }
        // A client of the cluster's epoch misses the rest of it and all of the own.
        let (gap, after) = replay(&history, 2, Some(CLUSTER), OWN);
        assert!(!gap);
        assert_eq!(after, ["c3", "o4", "o5"]);
        // One of the own epoch: its ids are only compared with the own run's.
        let (gap, after) = replay(&history, 4, Some(OWN), OWN);
        assert!(!gap);
        assert_eq!(after, ["o5"]);
        // The own run keeps its own count: the cluster's stays whole, and a client
        // of the cluster's epoch hears that o4 is gone.
        for id in 6..=7 {
            history.push(OWN, id, format!("o{id}"), 3);
        }
        assert_eq!(history.runs[0].entries.len(), 3);
        let (gap, after) = replay(&history, 3, Some(CLUSTER), OWN);
        assert!(gap, "o4 was dropped");
        assert_eq!(after, ["o5", "o6", "o7"]);
        let (gap, after) = replay(&history, 5, Some(OWN), OWN);
        assert!(!gap);
        assert_eq!(after, ["o6", "o7"]);
        // Without an epoch while cut off, an id could be of either: everything.
        let (gap, after) = replay(&history, 3, None, OWN);
        assert!(gap);
        assert_eq!(after.len(), 6);
        // Back in the cluster: the own run goes; the cluster's ids go on (the
        // other nodes took 4 and 5 meanwhile).
        history.forget(OWN);
        assert_eq!(history.runs.len(), 1);
        history.push(CLUSTER, 4, "c4".into(), 3);
        let (gap, after) = replay(&history, 3, Some(CLUSTER), CLUSTER);
        assert!(!gap);
        assert_eq!(after, ["c4"]);
        let (gap, _) = replay(&history, 0, Some(CLUSTER), CLUSTER);
        assert!(gap, "c1 was dropped");
        let (gap, all) = replay(&history, 5, Some(OWN), CLUSTER);
        assert!(gap, "an epoch that is over");
        assert_eq!(all, ["c2", "c3", "c4"]);
        let bytes: usize = ["c2", "c3", "c4"]
            .iter()
            .map(|t| History::cost(&t.to_string()))
            .sum();
        assert_eq!(history.runs[0].bytes, bytes);
    }

    #[test]
    fn cut_off_twice_a_hub_numbers_alone_in_a_new_epoch_each_time_and_forgets_it_after() {
        // The hub's side of a cut, without a bridge: `Linked` is all it hears.
        let mut hub = hub();
        let (ann, mut ann_reads) = client(1);
        hub.apply(connect(1, &ann));
        hub.apply(say(1, "a"));
        hub.flush();
        received(&mut ann_reads, 3); // welcome, her join, "a" (id 1)
        let said = |frames: &[serde_json::Value]| {
            frames
                .iter()
                .filter(|f| f["type"] == "message")
                .map(|f| f["msg"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let mut epochs = Vec::new();
        for (newcomer, text) in [(8, "b"), (9, "c")] {
            hub.apply(Event::Linked { up: false });
            hub.apply(say(1, text));
            hub.flush();
            let heard = received(&mut ann_reads, 2);
            assert_eq!(heard[0]["connected"], false, "{}", heard[0]);
            let own = heard[0]["epoch"].as_u64().unwrap();
            epochs.push(own);
            // Its own ids go on from the cluster's last, each time anew.
            assert_eq!(
                (heard[1]["msg"].as_str(), heard[1]["id"].as_u64()),
                (Some(text), Some(2))
            );
            // A newcomer meanwhile: the node's epoch, and both parts of the history.
            let (outbox, mut reads) = client(newcomer);
            hub.apply(connect(newcomer, &outbox));
            hub.flush();
            let welcomed = received(&mut reads, 4);
            assert_eq!(welcomed[0]["epoch"].as_u64(), Some(own));
            assert_eq!(said(&welcomed), ["a", text]);
            // Resuming in the cluster's epoch: just what the node said alone.
            hub.apply(Event::Join {
                id: newcomer,
                room: LOBBY.into(),
                since: Some(1),
                epoch: Some(1),
            });
            hub.flush();
            let resumed = received(&mut reads, 2);
            assert_ne!(resumed[0]["gap"], true, "{}", resumed[0]);
            assert_eq!(said(&resumed), [text]);
            hub.apply(Event::Leave { id: newcomer });
            hub.apply(Event::Linked { up: true });
            hub.flush();
            let back = received(&mut ann_reads, 2);
            let note = back.iter().find(|f| f["event"] == "cluster").unwrap();
            assert_eq!(
                (note["connected"].as_bool(), note["epoch"].as_u64()),
                (Some(true), Some(1))
            );
        }
        assert!(epochs[1] > epochs[0], "{epochs:?}");
        // After: the history is the cluster's alone.
        let (outbox, mut reads) = client(7);
        hub.apply(connect(7, &outbox));
        hub.flush();
        let welcomed = received(&mut reads, 3);
        assert_eq!(welcomed[0]["epoch"].as_u64(), Some(1));
        assert_eq!(said(&welcomed), ["a"]);
    }

    #[test]
    fn a_node_s_own_epochs_differ_from_each_other_and_from_every_other_node_s() {
        let first = own_epoch(5, 0);
        let again = own_epoch(5, first);
        assert!(again > first);
        assert_eq!(again % (1 << 21), 5, "still node 5's");
        assert_ne!(own_epoch(6, 0) % (1 << 21), first % (1 << 21));
        assert!(first > unix_millis() && first < 1 << 53);
    }

    /// A client on a loopback connection: its outbox, and the other end to read.
    fn client(id: u64) -> (Arc<Outbox>, std::net::TcpStream) {
        use crate::places::{Caps, Kind, Places};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let theirs = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, peer) = listener.accept().unwrap();
        let places = Places::new(Caps {
            total: [0, 0, 1, 0],
            per_host: [0, 0, 0],
        });
        let place = places.take(Kind::Chat, peer.ip()).unwrap();
        let outbox = Outbox::new(
            id,
            Arc::new(ours),
            1 << 20,
            Duration::from_secs(1),
            place,
            None,
        );
        (outbox, theirs)
    }

    /// The next `n` frames the client at `stream` was sent, as JSON.
    fn received(stream: &mut std::net::TcpStream, n: usize) -> Vec<serde_json::Value> {
        use std::io::Read;
        let deadline = Instant::now() + Duration::from_secs(10);
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut bytes = Vec::new();
        loop {
            let frames = texts(&bytes);
            if frames.len() >= n {
                return frames;
            }
            assert!(Instant::now() < deadline, "{n} frames within the deadline");
            let mut chunk = [0u8; 4096];
            if let Ok(read) = stream.read(&mut chunk) {
                bytes.extend_from_slice(&chunk[..read]);
            }
        }
    }

    fn hub() -> Hub {
        let settings = HubSettings {
            ping_interval: Duration::from_secs(30),
            history: 100,
            max_rooms: 3,
            max_rooms_per_host: 0,
            epoch: 1,
            cluster: None,
        };
        Hub::new(settings, Arc::new(Stats::new()))
    }

    fn connect(id: u64, outbox: &Arc<Outbox>) -> Event {
        Event::Connect {
            id,
            outbox: Arc::clone(outbox),
            endpoint: Endpoint::Chat,
            format: Format::Json,
            name: String::new(),
            room: None,
            protocol: protocol::SUBPROTOCOL,
            address: std::net::Ipv4Addr::LOCALHOST.into(),
            allowance: None,
        }
    }

    fn say(from: u64, text: &str) -> Event {
        Event::Message {
            from,
            message: ChatMessage {
                name: format!("n{from}"),
                msg: text.into(),
            },
            except_sender: false,
        }
    }

    #[test]
    fn a_client_joining_with_a_leave_in_its_turn_hears_only_what_follows_its_welcome() {
        let mut hub = hub();
        let (ann, _ann_reads) = client(1);
        let (bob, mut bob_reads) = client(2);
        let (cid, mut cid_reads) = client(3);
        hub.apply(connect(1, &ann));
        hub.apply(connect(2, &bob));
        hub.flush();
        // Ann leaves and Cid arrives in the same turn.
        hub.apply(Event::Leave { id: 1 });
        hub.apply(connect(3, &cid));
        hub.flush();

        let heard = received(&mut cid_reads, 2);
        assert_eq!(heard.len(), 2, "Cid heard {heard:?}");
        assert_eq!(
            (heard[0]["type"].as_str(), heard[0]["count"].as_u64()),
            (Some("welcome"), Some(2))
        );
        assert_eq!(
            (heard[1]["event"].as_str(), heard[1]["count"].as_u64()),
            (Some("join"), Some(2))
        );
        // Bob, there before both, heard both, in order.
        let heard = received(&mut bob_reads, 4);
        let events: Vec<_> = heard[2..]
            .iter()
            .map(|f| f["event"].as_str().unwrap())
            .collect();
        assert_eq!(events, ["leave", "join"]);
    }

    #[test]
    fn messages_get_increasing_ids_and_reach_their_room_in_one_order() {
        let mut hub = hub();
        let (ann, mut ann_reads) = client(1);
        let (bob, mut bob_reads) = client(2);
        let (cid, mut cid_reads) = client(3);
        for (id, outbox) in [(1, &ann), (2, &bob), (3, &cid)] {
            hub.apply(connect(id, outbox));
        }
        hub.flush();
        // Cid goes elsewhere; Ann and Bob talk in the lobby, Cid in its room.
        hub.apply(Event::Join {
            id: 3,
            room: "side".into(),
            since: None,
            epoch: None,
        });
        for (from, text) in [(1, "one"), (2, "two"), (3, "aside"), (1, "three")] {
            hub.apply(say(from, text));
        }
        hub.flush();
        for reads in [&mut ann_reads, &mut bob_reads] {
            // Welcome and the run of three joins; Cid's leave and three messages.
            let heard = received(reads, 2 + 4);
            let messages: Vec<_> = heard
                .iter()
                .filter(|f| f["type"] == "message")
                .map(|f| {
                    (
                        f["id"].as_u64().unwrap(),
                        f["msg"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            assert_eq!(
                messages,
                [(1, "one".into()), (2, "two".into()), (4, "three".into())]
            );
        }
        // Welcome and the run; joined, its own join there, and its message.
        let heard = received(&mut cid_reads, 5);
        let last = heard.last().unwrap();
        assert_eq!(
            (last["msg"].as_str(), last["room"].as_str()),
            (Some("aside"), Some("side"))
        );
    }

    /// A cluster numbers node N's clients from `N << 32`: ids above any 32-bit
    /// `usize`, which must pass through the hub whole on a 32-bit target too.
    #[test]
    fn ids_above_32_bits_reach_their_clients_whole() {
        let mut hub = hub();
        let ann_id = (1000 << 32) + 1;
        let bob_id = (1000 << 32) + 2;
        let (ann, mut ann_reads) = client(ann_id);
        let (bob, mut bob_reads) = client(bob_id);
        hub.apply(connect(ann_id, &ann));
        hub.apply(connect(bob_id, &bob));
        hub.flush();
        hub.apply(say(ann_id, "hi"));
        hub.apply(Event::Direct {
            from: bob_id,
            name: "bob".into(),
            to: ann_id,
            msg: "psst".into(),
        });
        hub.flush();
        // Welcome and the run of two joins, then the message and the direct one.
        let heard = received(&mut ann_reads, 4);
        assert_eq!(heard[0]["id"].as_u64(), Some(ann_id), "welcome: {heard:?}");
        assert_eq!(heard[2]["from"].as_u64(), Some(ann_id));
        assert_eq!(
            (heard[3]["from"].as_u64(), heard[3]["to"].as_u64()),
            (Some(bob_id), Some(ann_id))
        );
        let heard = received(&mut bob_reads, 4);
        assert_eq!(heard[0]["id"].as_u64(), Some(bob_id));
        assert_eq!(heard[2]["from"].as_u64(), Some(ann_id));
        assert_eq!(heard[3]["delivered"].as_bool(), Some(true), "{heard:?}");
    }

    #[test]
    fn rejoining_ones_own_room_replays_only_what_it_asks_for() {
        let mut hub = hub();
        let (ann, mut ann_reads) = client(1);
        hub.apply(connect(1, &ann));
        hub.apply(say(1, "before"));
        let rejoin = |since| Event::Join {
            id: 1,
            room: LOBBY.into(),
            since,
            epoch: None,
        };
        // Without `since`: nothing again, or one small frame would buy the whole
        // history.
        hub.apply(rejoin(None));
        hub.apply(say(1, "between"));
        // With it: what came after, between what came before and what follows.
        hub.apply(rejoin(Some(0)));
        hub.apply(say(1, "after"));
        hub.flush();
        let heard = received(&mut ann_reads, 9);
        let kinds: Vec<String> = heard[2..]
            .iter()
            .map(|f| match f["history"].as_bool() {
                Some(true) => format!("history {}", f["msg"].as_str().unwrap()),
                _ => format!(
                    "{} {}",
                    f["type"].as_str().unwrap(),
                    f["msg"].as_str().unwrap_or("")
                ),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "message before",
                "joined ",
                "message between",
                "joined ",
                "history before",
                "history between",
                "message after"
            ]
        );
    }

    #[test]
    fn a_room_keeps_its_history_for_whoever_comes_back() {
        let mut hub = hub();
        let (ann, mut ann_reads) = client(1);
        hub.apply(connect(1, &ann));
        hub.apply(Event::Join {
            id: 1,
            room: "a".into(),
            since: None,
            epoch: None,
        });
        hub.apply(say(1, "remember me"));
        hub.apply(Event::Join {
            id: 1,
            room: "b".into(),
            since: None,
            epoch: None,
        });
        hub.apply(Event::Join {
            id: 1,
            room: "a".into(),
            since: None,
            epoch: None,
        });
        hub.flush();
        let heard = received(&mut ann_reads, 9);
        let back = heard.iter().rposition(|f| f["type"] == "joined").unwrap();
        assert_eq!(heard[back]["room"], "a");
        assert_eq!(heard[back + 1]["msg"], "remember me");
        assert_eq!(heard[back + 1]["history"], true);
        // A fourth room takes the place of the least recently used empty one (b);
        // a fifth finds every room in use.
        hub.apply(Event::Join {
            id: 1,
            room: "c".into(),
            since: None,
            epoch: None,
        });
        assert!(hub.rooms.contains_key("a") && !hub.rooms.contains_key("b"));
    }

    #[test]
    fn an_address_s_new_rooms_make_way_among_its_own() {
        let mut hub = hub();
        hub.settings.max_rooms = 100;
        hub.settings.max_rooms_per_host = 2;
        let join = |id, room: &str| Event::Join {
            id,
            room: room.into(),
            since: None,
            epoch: None,
        };
        // Someone else's room, empty now: an attacker's churn must leave it be.
        let (ann, _ann_reads) = client(1);
        hub.apply(connect(1, &ann));
        hub.apply(join(1, "homework"));
        hub.apply(join(1, LOBBY));
        // Another address makes room after room: its own oldest makes way.
        let (eve, _eve_reads) = client(2);
        let mut from_eve = connect(2, &eve);
        if let Event::Connect { address, .. } = &mut from_eve {
            *address = std::net::Ipv4Addr::new(127, 0, 0, 2).into();
        }
        hub.apply(from_eve);
        for n in 0..20 {
            hub.apply(join(2, &format!("spam-{n}")));
            hub.flush(); // a turn each, as the hub's loop takes them
        }
        let made = |hub: &Hub| hub.rooms.keys().filter(|r| r.starts_with("spam")).count();
        assert_eq!(made(&hub), 2);
        assert!(hub.rooms.contains_key("homework") && hub.rooms.contains_key("spam-19"));
        // Both of its rooms in use (one by someone else): no third.
        hub.apply(join(1, "spam-18"));
        hub.flush();
        hub.apply(join(2, "spam-20"));
        assert!(!hub.rooms.contains_key("spam-20"), "{:?}", hub.rooms.keys());
        assert_eq!(made(&hub), 2);
    }

    #[test]
    fn a_message_whose_address_spent_its_budget_meanwhile_is_dropped_and_told() {
        use crate::budget::{BudgetSettings, Budgets};
        let mut hub = hub();
        let budgets = Budgets::new(BudgetSettings {
            frames: 0,
            bytes_in: 0,
            bytes_out: 1_000,
        });
        let (ann, mut ann_reads) = client(1);
        let (bob, mut bob_reads) = client(2);
        let mut from_ann = connect(1, &ann);
        if let Event::Connect { allowance, .. } = &mut from_ann {
            *allowance = budgets.of(std::net::Ipv4Addr::LOCALHOST.into());
        }
        hub.apply(from_ann);
        hub.apply(connect(2, &bob));
        hub.apply(say(1, "within its budget"));
        hub.flush();
        // Both frames were let in by the reader; the first spent the rest.
        budgets
            .of(std::net::Ipv4Addr::LOCALHOST.into())
            .unwrap()
            .spend(1_000_000);
        hub.apply(say(1, "over it"));
        hub.apply(say(2, "bob's"));
        hub.flush();
        let ann_got = received(&mut ann_reads, 5);
        let told = ann_got
            .iter()
            .any(|f| f["type"] == "error" && f["dropped"] == 1);
        assert!(told, "{ann_got:?}");
        let bob_got = received(&mut bob_reads, 4);
        let said: Vec<_> = bob_got
            .iter()
            .filter(|f| f["type"] == "message")
            .filter_map(|f| f["msg"].as_str())
            .collect();
        assert_eq!(said, ["within its budget", "bob's"], "{bob_got:?}");
    }

    #[test]
    fn an_ipv6_host_hopping_through_its_64_makes_the_64_s_share_of_rooms() {
        let mut hub = hub();
        hub.settings.max_rooms = 100;
        hub.settings.max_rooms_per_host = 2;
        // A new address of one /64 for every room: each holding its room.
        let mut kept = Vec::new();
        for n in 1..=20u16 {
            let (conn, reads) = client(u64::from(n));
            let mut from = connect(u64::from(n), &conn);
            if let Event::Connect { address, .. } = &mut from {
                *address = std::net::Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, n).into();
            }
            hub.apply(from);
            hub.apply(Event::Join {
                id: u64::from(n),
                room: format!("hop-{n}"),
                since: None,
                epoch: None,
            });
            hub.flush();
            kept.push((conn, reads));
        }
        let made = hub.rooms.keys().filter(|r| r.starts_with("hop")).count();
        assert_eq!(made, 2 * places::NETWORK_SHARES);
    }
}
