//! What the threads tell each other: the hub's events, and what the hub hands the
//! cluster's threads. These types live below both ends of each channel, so the
//! readers, the hub and the cluster import them from here and none of those
//! imports another.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crossbeam_channel::{Sender, TrySendError};

use crate::budget::Allowance;
use crate::format::Format;
use crate::outbox::Outbox;
use crate::protocol::{ChatMessage, ClientId, NamedClient};

/// Which endpoint a client connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The chat (`/`, `/text`).
    Chat,
    /// `/echo`: echoes its own messages; gets only heartbeats and shutdown from the
    /// hub.
    Echo,
}

/// A request from a Socket.IO client that awaits its answer as the
/// acknowledgement `ack`.
pub struct Acked {
    pub id: ClientId,
    pub ack: u64,
    pub event: Box<Event>,
}

/// What a reader (or the shutdown sequence, or the cluster's threads) tells the
/// hub. Events with many fields carry a struct, so the hub's dispatch reads one
/// line per event.
pub enum Event {
    /// A client finished its handshake.
    Connect(Arrival),
    /// A request whose answer is awaited as an acknowledgement (Socket.IO).
    Acked(Acked),
    /// A chat client sent a valid message; the reader has filled in its name.
    Message(Said),
    /// The client's name, from `hello`.
    Hello { id: ClientId, name: String },
    /// A Socket.IO chat page's `login`: its name, the tutorial's events from now
    /// on, and its room told.
    Login { id: ClientId, name: String },
    /// The client moves to a room (or asks for its own again).
    Join(Join),
    /// The client asks which rooms there are.
    Rooms { id: ClientId },
    /// The client asks who is in its room.
    Who { id: ClientId },
    /// A message for one client.
    Direct(DirectMessage),
    /// An admin client (`by`) closes another one (`target`).
    Kick { target: ClientId, by: ClientId },
    /// A client's reader has ended.
    Leave { id: ClientId },
    /// A room message in the cluster's order, from Redis (any node's, this one's
    /// included): delivered to this node's members of its room.
    Relayed(RelayedMessage),
    /// A message of client `from` could not be handed to Redis.
    NotRelayed { from: ClientId, why: &'static str },
    /// Where client `id` of another node now is (`None`: gone), in the
    /// cluster's order (entry `entry`).
    RelayedSeat {
        entry: u64,
        id: ClientId,
        seat: Option<Location>,
        /// Its number among its node's seat changes ([`Publish::offer`]).
        offer: u64,
    },
    /// Where every client of node `node` is, in the cluster's order (entry
    /// `entry`): what was known of that node's clients before is replaced.
    RelayedSeats {
        entry: u64,
        node: u64,
        seats: Vec<(ClientId, Location)>,
        /// The number of its node's last seat change before it.
        offer: u64,
    },
    /// Where every client of the cluster sits now, as the seat hashes say: read
    /// when seat entries may have gone unread (trimmed, or lost with Redis'
    /// data). What was known of the other nodes' clients is replaced, and the
    /// nodes alive are `nodes` (those with a hash).
    SeatsNow {
        seats: Vec<(ClientId, Location)>,
        nodes: Vec<u64>,
    },
    /// The other nodes may have lost track of this node's clients (Redis lost
    /// its data, or a cut-off outlasted its presence): say where they all are.
    Reannounce,
    /// A batch with this node's seat changes up to number `upto` was refused
    /// by Redis, or may not have been appended: they will not come back, and
    /// are said again in a seats entry ([`Event::Reannounce`]).
    SeatsNotTaken { upto: u64 },
    /// Node `node` died without a word, as of entry `entry`: the first node to
    /// find its hash expired (or, after Redis lost its data, the node off the
    /// list for long) let it go for everyone (a `gone` entry). Its clients
    /// leave, and what awaits its answer is refused.
    RelayedGone { entry: u64, node: u64 },
    /// Redis stopped (`up: false`) or started again answering this node.
    Linked { up: bool },
    /// The cluster's messages up to `upto` that this node has not heard are gone
    /// from the stream.
    Missed { upto: u64 },
    /// An admin client of any node (`by`) closes client `target`, perhaps one of
    /// this node's, in the cluster's order (numbered `id`, the number its
    /// receipt names).
    RelayedKick {
        id: u64,
        target: ClientId,
        by: ClientId,
    },
    /// A Socket.IO chat page of any node logged in, in the cluster's order
    /// (entry `id`): this node's members of its room hear of it.
    RelayedLogin {
        id: u64,
        room: String,
        client: NamedClient,
    },
    /// A direct message in the cluster's order, numbered `id` at `ts`: for its
    /// target here, and its sender's copy if the sender is here.
    RelayedDirect {
        id: u64,
        ts: u64,
        direct: DirectMessage,
    },
    /// A receipt, in the cluster's order (after entry `entry`): the target's
    /// node says whether the target of a direct message or kick got it, for
    /// the sender's node.
    RelayedReceipt { entry: u64, receipt: Receipt },
    /// The server is stopping: send every client close 1001.
    Shutdown,
    /// `/healthz` asks whether the hub is turning over: it answers on `answer`
    /// when it reaches this event, which it can only do by having taken every
    /// event before it.
    Probe { answer: Sender<()> },
}

/// A room message from a chat client, its name filled in by the reader.
pub struct Said {
    /// The sender's id: the relayed frame's `from`.
    pub from: ClientId,
    pub message: ChatMessage,
    /// Everyone in the room but the sender.
    pub except_sender: bool,
}

/// Client `id` moves to `room`, with what it has seen there: `since` of `epoch`.
pub struct Join {
    pub id: ClientId,
    pub room: String,
    pub since: Option<u64>,
    pub epoch: Option<u64>,
}

/// A client that finished its handshake, as the hub is told of it.
pub struct Arrival {
    pub id: ClientId,
    /// Where the hub writes to it.
    pub outbox: Arc<Outbox>,
    pub endpoint: Endpoint,
    pub format: Format,
    /// Its name so far (`?name=` of a plain-text client), or empty.
    pub name: String,
    /// A first room other than the lobby (`?room=`), already checked.
    pub room: Option<String>,
    /// What `welcome` says it speaks.
    pub protocol: &'static str,
    /// Its address: rooms made are counted per address.
    pub address: IpAddr,
    /// Its address's budget: the hub charges it for what it sends on the
    /// client's behalf.
    pub allowance: Option<Arc<Allowance>>,
}

/// A message for one client, from another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectMessage {
    pub from: ClientId,
    /// The sender's name.
    pub name: String,
    pub to: ClientId,
    pub msg: String,
}

/// A room message as the stream holds it: numbered `id` by the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayedMessage {
    pub id: u64,
    pub ts: u64,
    pub from: ClientId,
    pub room: String,
    pub name: String,
    pub msg: String,
    pub except_sender: bool,
}

/// A node's answer to a direct message or kick read from the stream, for a
/// client of another node (its sender): whether its target, a client of the
/// answering node, got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The direct message's (or kick's) id.
    pub of: u64,
    /// Its target.
    pub target: ClientId,
    /// Its sender, to whose node the receipt is addressed.
    pub sender: ClientId,
    /// Whether the target was there (and got the message, or was closed).
    pub delivered: bool,
}

/// What this node puts on the stream, on its way to Redis: a room message (or,
/// with `to`, a direct message) from one of its clients, or what [`Entry`] says.
#[derive(Debug, Clone)]
pub struct Publish {
    pub room: String,
    pub from: ClientId,
    pub name: String,
    pub msg: String,
    pub except_sender: bool,
    pub ts: u64,
    pub to: Option<ClientId>,
    pub kind: Entry,
    /// With [`Entry::Seats`]: every client of this node, and where it is.
    pub seats: Vec<(ClientId, Location)>,
    /// With [`Entry::Seat`] and [`Entry::Seats`]: its number among this
    /// node's seat changes, so that the hub knows which one came back (0:
    /// none).
    pub offer: u64,
}

/// What a [`Publish`] asks the other nodes to do, besides its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Deliver a room message, or with `to` a direct message.
    Said,
    /// `from`, an admin, closes client `to`, whichever node it is on.
    Kick,
    /// `from`, a Socket.IO chat page, logged in as `name`: its room hears of it.
    Login,
    /// `from` is now in `room` as `name`, or (`room` empty) gone.
    Seat,
    /// This node's clients are `seats`, and no others.
    Seats,
    /// The answer to direct message (or kick) `msg` of client `to`, another
    /// node's, for client `from` of this node: whether `from` got it. Takes no
    /// message id.
    Receipt { delivered: bool },
}

impl Entry {
    /// Whether a client of this node said it, and hears if it was not sent:
    /// seats are said again whole, and a receipt's sender is on another node.
    pub fn is_said_by_a_client(self) -> bool {
        matches!(self, Entry::Said | Entry::Kick | Entry::Login)
    }
}

/// What the hub holds of the bridge.
#[derive(Debug, Clone)]
pub struct HubSide {
    /// This node's number, for an epoch of its own while cut off.
    pub node: u64,
    /// Room and direct messages to append.
    pub outgoing: Sender<Publish>,
    /// Where the other nodes' clients were when this node joined the cluster
    /// (the stream's entries after that keep it current).
    pub elsewhere: Vec<(ClientId, Location)>,
    /// The other nodes alive (with a seat hash) when this node joined.
    pub alive: Vec<u64>,
    /// The highest message id this node has seen: where the hub's ids start, and
    /// how a node finds out that Redis lost data (a counter below it, or gone).
    pub highest: Arc<AtomicU64>,
}

/// Where one client is: its room, and its name there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub room: String,
    pub name: String,
}

impl Publish {
    /// Room message `message` of client `from`, said at `ts` in `room`.
    pub fn message(
        room: &str,
        from: ClientId,
        message: ChatMessage,
        except_sender: bool,
        ts: u64,
    ) -> Publish {
        Publish {
            room: room.to_string(),
            from,
            name: message.name,
            msg: message.msg,
            except_sender,
            ts,
            to: None,
            kind: Entry::Said,
            seats: Vec::new(),
            offer: 0,
        }
    }

    /// Direct message `direct`, sent at `ts`.
    pub fn direct(direct: DirectMessage, ts: u64) -> Publish {
        Publish {
            room: String::new(),
            from: direct.from,
            name: direct.name,
            msg: direct.msg,
            except_sender: false,
            ts,
            to: Some(direct.to),
            kind: Entry::Said,
            seats: Vec::new(),
            offer: 0,
        }
    }

    /// Admin client `by` closes client `target`, ordered at `ts`.
    pub fn kick(target: ClientId, by: ClientId, ts: u64) -> Publish {
        Publish {
            room: String::new(),
            from: by,
            name: String::new(),
            msg: String::new(),
            except_sender: false,
            ts,
            to: Some(target),
            kind: Entry::Kick,
            seats: Vec::new(),
            offer: 0,
        }
    }

    /// Client `id` of `room` logged in as `name` at `ts` (the socket.io tutorial's
    /// `login`).
    pub fn login(room: &str, id: ClientId, name: &str, ts: u64) -> Publish {
        Publish {
            room: room.to_string(),
            from: id,
            name: name.to_string(),
            msg: String::new(),
            except_sender: false,
            ts,
            to: None,
            kind: Entry::Login,
            seats: Vec::new(),
            offer: 0,
        }
    }

    /// Client `id` is now at `seat`, or (`None`) gone: this node's seat change
    /// number `offer`.
    pub fn seat(id: ClientId, seat: Option<Location>, ts: u64, offer: u64) -> Publish {
        let (room, name) = seat.map_or_else(Default::default, |s| (s.room, s.name));
        Publish {
            room,
            from: id,
            name,
            msg: String::new(),
            except_sender: false,
            ts,
            to: None,
            kind: Entry::Seat,
            seats: Vec::new(),
            offer,
        }
    }

    /// This node's clients are `seats`, and no others: said after its seat
    /// changes up to number `offer`.
    pub fn seats(seats: Vec<(ClientId, Location)>, ts: u64, offer: u64) -> Publish {
        Publish {
            room: String::new(),
            from: ClientId(0),
            name: String::new(),
            msg: String::new(),
            except_sender: false,
            ts,
            to: None,
            kind: Entry::Seats,
            seats,
            offer,
        }
    }

    /// The answer of this node to direct message (or kick) `receipt.of`: whether
    /// its target, a client here, got it. Addressed to its sender's node.
    pub fn receipt(receipt: &Receipt, ts: u64) -> Publish {
        Publish {
            room: String::new(),
            from: receipt.target,
            name: String::new(),
            msg: receipt.of.to_string(),
            except_sender: false,
            ts,
            to: Some(receipt.sender),
            kind: Entry::Receipt {
                delivered: receipt.delivered,
            },
            seats: Vec::new(),
            offer: 0,
        }
    }
}

/// Hands `message` to `redis-out` without waiting; `false` when it is full or gone.
pub fn offer(outgoing: &Sender<Publish>, message: Publish) -> bool {
    match outgoing.try_send(message) {
        Ok(()) => true,
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
    }
}
