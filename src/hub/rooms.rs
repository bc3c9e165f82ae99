//! Rooms and who is in them: arriving, moving, renaming, leaving and being
//! kicked, the answers to `rooms` and `who`, and which room makes way when a new
//! one needs a place.

use std::net::IpAddr;
use std::sync::Arc;

use tungstenite::protocol::frame::coding::CloseCode;

use super::batch::{Batch, Joining, Member};
use super::cluster::members_elsewhere;
use super::history::{History, replay_into};
use super::{Hub, LIST_MOST, close_away};
use crate::budget::Allowance;
use crate::event::{Arrival, Endpoint, Join, Location, Publish};
use crate::format::Format;
use crate::outbox::{Failure, Outbox};
use crate::places::Origin;
use crate::protocol::{
    ClientId, InputError, LOBBY, MAX_PRESENCE_FRAME, NamedClient, Outgoing, Presence, RoomCount,
    WhoEntry, presence_frame_size, unix_millis,
};

/// A room: its members, the frames being built for them, and what was said.
pub(super) struct Room {
    /// In the order they joined: a batch goes out in that order, so the
    /// longest-present clients hear it first. Leaving is a linear search, which at
    /// a few thousand clients costs less than the `send` calls of one batch.
    pub(super) members: Vec<Member>,
    pub(super) batch: Batch,
    pub(super) history: History,
    /// When it was last used, on the hub's own clock: the least recently used empty
    /// room gives its place to a new one.
    pub(super) last_used: u64,
    /// Who made it (none for the lobby, and for rooms made for the cluster's
    /// messages, which their own node counted): a maker that has made its share
    /// of rooms makes way among its own.
    made_by: Option<Origin>,
}

/// A chat client, as the hub knows it besides its room's list.
pub(super) struct Client {
    pub(super) room: String,
    pub(super) name: String,
    pub(super) format: Format,
    pub(super) outbox: Arc<Outbox>,
    /// Where it connects from: what its caps and budgets are counted by.
    pub(super) address: IpAddr,
    /// Pays for what the hub sends on this client's behalf.
    allowance: Option<Arc<Allowance>>,
}

impl Client {
    /// Charges `bytes` the hub sends on this client's behalf to its address.
    pub(super) fn charge(&self, bytes: usize) {
        if let Some(allowance) = &self.allowance {
            allowance.spend(bytes);
        }
    }

    /// Whether its address has spent what it may make the server send.
    pub(super) fn has_spent(&self) -> bool {
        self.allowance.as_ref().is_some_and(|a| !a.can_spend())
    }

    /// Where it sits, as the other nodes of a cluster hear it.
    pub(super) fn seat(&self) -> Location {
        Location {
            room: self.room.clone(),
            name: self.name.clone(),
        }
    }
}

impl Room {
    pub(super) fn new(history: History, made_by: Option<Origin>) -> Room {
        Room {
            members: Vec::new(),
            batch: Batch::default(),
            history,
            last_used: 0,
            made_by,
        }
    }

    /// Adds client `id` to this room (`name`): its prefix first, then the batch
    /// from its own join notification on. `elsewhere`: members on other nodes.
    fn admit(
        &mut self,
        name: &str,
        id: ClientId,
        client: &Client,
        prefix: Vec<u8>,
        elsewhere: usize,
    ) {
        let count = self.members.len() + 1 + elsewhere;
        self.batch.want(client.format);
        let joiner = NamedClient {
            id,
            name: client.name.clone(),
        };
        let start = self.batch.presence(Presence::Join, count, joiner, name);
        self.members.push(Member {
            id,
            outbox: Arc::clone(&client.outbox),
            format: client.format,
            joining: Some(Joining { prefix, start }),
            except: Vec::new(),
        });
    }
}

/// What one join or leave notification of `name` costs its address: its size for
/// each member of `room` it reaches (`who`, coming or going, is not one of them).
fn presence_cost(room: &Room, room_name: &str, name: &str, who: ClientId) -> usize {
    let reached = room.members.iter().filter(|m| m.id != who).count();
    presence_frame_size(name, room_name) * reached
}

impl Hub {
    /// A client finished its handshake: an echo client is only listed; a chat
    /// client gets its welcome and the room's history, and is seated in the room
    /// it asked for (`?room=`), or the lobby.
    pub(super) fn connect(&mut self, arrival: Arrival) {
        if self.shutting_down {
            return close_away(&arrival.outbox);
        }
        if arrival.endpoint == Endpoint::Echo {
            self.echo.insert(arrival.id, arrival.outbox);
            return;
        }
        let Arrival { id, name, room, .. } = arrival;
        // A first room it cannot have (every place taken) is the lobby instead.
        let room = room
            .filter(|r| self.make_room(r, Some(arrival.address)).is_ok())
            .unwrap_or_else(|| LOBBY.to_string());
        let client = Client {
            room,
            name,
            format: arrival.format,
            outbox: arrival.outbox,
            address: arrival.address,
            allowance: arrival.allowance,
        };
        let epoch = self.epoch();
        let elsewhere = members_elsewhere(&self.cluster, &client.room).len();
        let target = self
            .rooms
            .get_mut(&client.room)
            .expect("made above, or the lobby");
        let welcome = Outgoing::Welcome {
            id,
            count: target.members.len() + 1 + elsewhere,
            protocol: arrival.protocol,
            room: Some(&client.room),
            epoch: Some(epoch),
        };
        let mut prefix = client.format.frame(&welcome, &client.room);
        let (_, history) = target.history.after(None, None, epoch);
        replay_into(&mut prefix, history, client.format, &client.room);
        // Its welcome and history, and its join's notification to everyone there.
        let announced = presence_cost(target, &client.room, &client.name, id);
        client.charge(prefix.len() + announced);
        target.last_used = self.clock;
        self.turn.bytes += prefix.len() + MAX_PRESENCE_FRAME;
        target.admit(&client.room, id, &client, prefix, elsewhere);
        self.turn.mark(&client.room);
        self.clients.insert(id, client);
        self.publish_seat(id);
    }

    /// Client `id` moves to `room` (or asks for its own room again), with what it
    /// has seen: `since` of `epoch`.
    pub(super) fn join(&mut self, join: Join) {
        let Join {
            id,
            room,
            since,
            epoch,
        } = join;
        let Some(address) = self.clients.get(&id).map(|client| client.address) else {
            return;
        };
        if let Err(e) = self.make_room(&room, Some(address)) {
            return self.reply_error(id, &e);
        }
        // Moving between rooms happens between batches: every batch before it
        // reaches the client in its old room, every one after in its new.
        self.flush();
        // Without an epoch, `since` is of the server's only one, or the cluster's
        // (as it was before this node's own); while cut off it may be either.
        let epoch = epoch.or((!self.is_cut_off()).then(|| self.epoch()));
        let staying = self.clients[&id].room == room;
        let prefix = self.joined_prefix(id, &room, since, epoch, staying);
        if staying {
            // Joining the room it is in: `joined` (and, with `since`, what
            // followed), nothing announced. Sent now: the turn was flushed above,
            // so this lands between what the client already has and the rest of
            // this turn, as a move's prefix does.
            let _ = self.clients[&id].outbox.send_shared(&Arc::new(prefix), 0);
            return;
        }
        let elsewhere = members_elsewhere(&self.cluster, &room).len();
        let client = self.clients.get_mut(&id).expect("looked up above");
        let old = std::mem::replace(&mut client.room, room);
        let target = self
            .rooms
            .get_mut(&client.room)
            .expect("made before the turn was flushed, and only empty rooms are dropped");
        self.turn.bytes += MAX_PRESENCE_FRAME;
        target.admit(&client.room, id, client, prefix, elsewhere);
        self.turn.mark(&client.room);
        let leaving = NamedClient {
            id,
            name: client.name.clone(),
        };
        if let Some(left) = self.rooms.get(&old) {
            client.charge(presence_cost(left, &old, &leaving.name, id));
        }
        self.publish_seat(id);
        self.leave_room(&old, leaving, Presence::Leave);
    }

    /// The `joined` answer and the replay client `id` gets on joining `room`, paid
    /// for with its join's notification (unless it is `staying` where it is).
    /// Joining the room it is in replays nothing unless asked to (`since`):
    /// otherwise one small frame would buy the whole history again.
    fn joined_prefix(
        &mut self,
        id: ClientId,
        room: &str,
        since: Option<u64>,
        epoch: Option<u64>,
        staying: bool,
    ) -> Vec<u8> {
        let now = self.epoch();
        let ack = self.ack_for(id);
        let elsewhere = members_elsewhere(&self.cluster, room).len();
        let client = &self.clients[&id];
        let target = self
            .rooms
            .get_mut(room)
            .expect("made before the turn was flushed");
        target.last_used = self.clock;
        // `since` of an epoch this room does not know (another server run, a
        // cut-off that is over): its ids say nothing about these, so the whole
        // history is sent and the answer says some may be missing.
        let (gap, history) = target.history.after(since, epoch, now);
        let replay = !staying || since.is_some();
        let history = history.take(if replay { usize::MAX } else { 0 });
        let joined = Outgoing::Joined {
            room,
            count: target.members.len() + usize::from(!staying) + elsewhere,
            gap,
        };
        let mut prefix = client.format.answer(&joined, ack, room);
        replay_into(&mut prefix, history, client.format, room);
        self.turn.bytes += prefix.len();
        let announced = if staying {
            0
        } else {
            presence_cost(target, room, &client.name, id)
        };
        client.charge(prefix.len() + announced);
        prefix
    }

    /// Client `id` says who it is (`hello`).
    pub(super) fn hello(&mut self, id: ClientId, name: String) {
        if let Some(client) = self.clients.get_mut(&id) {
            client.name = name;
            self.publish_seat(id);
        }
    }

    /// A Socket.IO chat page logs in (the socket.io tutorial's `login`): its name,
    /// and its room hears of it, the page included; from now on it is spelled
    /// the tutorial's events.
    pub(super) fn login(&mut self, id: ClientId, name: String) {
        self.hello(id, name);
        self.speak_tutorial(id);
        let Some(client) = self.clients.get(&id) else {
            return;
        };
        let (room_name, name) = (client.room.clone(), client.name.clone());
        if let Some(room) = self.rooms.get(&room_name) {
            client.charge(presence_cost(room, &room_name, &name, id));
        }
        if self.is_linked() {
            // Heard when Redis hands it back, on every node, in the cluster's
            // order: before anything the page says next.
            return self.publish(Publish::login(&room_name, id, &name, unix_millis()));
        }
        self.announce_login(&room_name, id, &name);
    }

    /// Client `id` (a Socket.IO chat page that logs in) is spelled the
    /// tutorial's events from now on: at once, even while its login waits for
    /// its seat to come back through the stream, since the page awaits them
    /// from the moment it sent it.
    pub(super) fn speak_tutorial(&mut self, id: ClientId) {
        let Some(client) = self.clients.get(&id) else {
            return;
        };
        if client.format == Format::SocketIoTutorial {
            return;
        }
        let room_name = client.room.clone();
        // A format changes between batches, as a room does: what this turn has
        // so far was not spelled in the new one.
        self.flush();
        let client = self.clients.get_mut(&id).expect("looked up above");
        client.format = Format::SocketIoTutorial;
        let room = self
            .rooms
            .get_mut(&room_name)
            .expect("a client's room exists");
        if let Some(member) = room.members.iter_mut().find(|m| m.id == id) {
            member.format = Format::SocketIoTutorial;
        }
        room.batch.want(Format::SocketIoTutorial);
    }

    /// A Socket.IO chat page of any node logged in, in the cluster's order.
    pub(super) fn relayed_login(&mut self, entry: u64, room: &str, client: &NamedClient) {
        self.last_message_id = self.last_message_id.max(entry);
        self.announce_login(room, client.id, &client.name);
    }

    /// Client `id`'s login as `name`, to everyone in `room_name` here.
    fn announce_login(&mut self, room_name: &str, id: ClientId, name: &str) {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        if room.members.is_empty() {
            return;
        }
        let frame = Outgoing::Login { id, name };
        room.batch.push(&frame.to_json(), &frame, room_name);
        room.last_used = self.clock;
        self.turn.bytes += MAX_PRESENCE_FRAME;
        self.turn.mark(room_name);
    }

    /// Client `id`'s reader has ended: its room hears it left.
    pub(super) fn leave(&mut self, id: ClientId) {
        self.echo.remove(&id);
        let Some(client) = self.clients.remove(&id) else {
            return;
        };
        // Its leave's notification to everyone there.
        if let Some(room) = self.rooms.get(&client.room) {
            client.charge(presence_cost(room, &client.room, &client.name, id));
        }
        self.publish_seat(id);
        let leaving = NamedClient {
            id,
            name: client.name,
        };
        self.leave_room(&client.room, leaving, Presence::Leave);
    }

    /// Admin client `by` closes client `target`: here, or through the cluster.
    pub(super) fn kick(&mut self, target: ClientId, by: ClientId) {
        if !self.clients.contains_key(&by) {
            return; // kicked itself meanwhile
        }
        if self.clients.contains_key(&target) {
            return self.kick_out(target, by);
        }
        self.kick_elsewhere(target, by);
    }

    /// Closes client `target` of this node with 4001, by order of client `by` (of
    /// any node).
    pub(super) fn kick_out(&mut self, target: ClientId, by: ClientId) {
        let Some(client) = self.clients.remove(&target) else {
            return;
        };
        log::info!("client {target} kicked by client {by}");
        self.publish_seat(target);
        // Its reader is woken too: a client that ignores the Close is gone all the
        // same, and gives its place back.
        client
            .outbox
            .close_and_wake(CloseCode::Library(4001), "kicked", Failure::Kicked);
        let leaving = NamedClient {
            id: target,
            name: client.name,
        };
        self.leave_room(&client.room, leaving, Presence::Kick);
    }

    /// Takes client `leaving` out of `room`, announcing it with `event`.
    fn leave_room(&mut self, room_name: &str, leaving: NamedClient, event: Presence) {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        let Some(at) = room.members.iter().position(|m| m.id == leaving.id) else {
            return;
        };
        room.members.remove(at);
        room.batch.want_only(room.members.iter().map(|m| m.format));
        let count = room.members.len() + members_elsewhere(&self.cluster, room_name).len();
        room.batch.presence(event, count, leaving, room_name);
        room.last_used = self.clock;
        self.turn.bytes += MAX_PRESENCE_FRAME;
        self.turn.mark(room_name);
    }

    /// Answers `rooms`: the rooms with members here or elsewhere, and the lobby.
    pub(super) fn list_rooms(&mut self, id: ClientId) {
        let ack = self.ack_for(id);
        let Some(client) = self.clients.get(&id) else {
            return;
        };
        let cluster = &self.cluster;
        let mut rooms: Vec<RoomCount> = self
            .rooms
            .iter()
            .map(|(name, room)| (name, room.members.len()))
            .chain(
                // Rooms only other nodes' clients are in.
                super::cluster::rooms_elsewhere(cluster)
                    .filter(|name| !self.rooms.contains_key(*name))
                    .map(|name| (name, 0)),
            )
            .map(|(name, here)| (name, here + members_elsewhere(cluster, name).len()))
            .filter(|(name, count)| *count > 0 || *name == LOBBY)
            .map(|(name, count)| RoomCount { room: name, count })
            .collect();
        rooms.sort_by(|a, b| (a.room != LOBBY, a.room).cmp(&(b.room != LOBBY, b.room)));
        let more = rooms.len().saturating_sub(LIST_MOST);
        rooms.truncate(LIST_MOST);
        let bytes = client
            .format
            .answer(&Outgoing::Rooms { rooms, more }, ack, &client.room);
        client.charge(bytes.len());
        self.turn.reply(id, bytes);
    }

    /// Answers `who`: the members of client `id`'s room, here and elsewhere.
    pub(super) fn who(&mut self, id: ClientId) {
        let ack = self.ack_for(id);
        let Some(client) = self.clients.get(&id) else {
            return;
        };
        let room = &self.rooms[&client.room];
        let here = room.members.iter().map(|m| WhoEntry {
            id: m.id,
            name: self.clients.get(&m.id).map_or("", |c| c.name.as_str()),
        });
        let elsewhere = members_elsewhere(&self.cluster, &client.room);
        let there = elsewhere.iter().map(|m| WhoEntry {
            id: m.id,
            name: &m.name,
        });
        let all = room.members.len() + elsewhere.len();
        // By id: the same list on every node of a cluster.
        let mut members: Vec<WhoEntry> = here.chain(there).collect();
        members.sort_unstable_by_key(|m| m.id);
        members.truncate(LIST_MOST);
        let frame = Outgoing::Who {
            room: &client.room,
            members,
            more: all.saturating_sub(LIST_MOST),
        };
        let bytes = client.format.answer(&frame, ack, &client.room);
        client.charge(bytes.len());
        self.turn.reply(id, bytes);
    }

    /// Makes `room` if it does not exist, for a client from `maker` (none: for the
    /// cluster's messages). An address that has made its share of rooms makes way
    /// among its own; otherwise, when every place is taken, the least recently
    /// used empty room does. Never the lobby, and never a room with members or
    /// frames this turn.
    pub(super) fn make_room(
        &mut self,
        room: &str,
        maker: Option<IpAddr>,
    ) -> Result<(), InputError> {
        if self.rooms.contains_key(room) {
            return Ok(());
        }
        let maker = maker.map(Origin::of);
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
        let mut missing = vec![(self.settings.epoch, self.last_message_id)];
        missing.extend(self.own_run());
        let made = Room::new(History::new(missing), maker);
        self.rooms.insert(room.to_string(), made);
        Ok(())
    }

    /// The least recently used room among `candidates` that may make way: empty,
    /// not the lobby, nothing in this turn's batch.
    fn idle_room(&self, candidates: impl Fn(&Room) -> bool) -> Option<String> {
        self.rooms
            .iter()
            .filter(|(name, r)| r.members.is_empty() && *name != LOBBY && candidates(r))
            .filter(|(name, _)| !self.turn.dirty.contains(name))
            .min_by_key(|(_, r)| r.last_used)
            .map(|(name, _)| name.clone())
    }
}
