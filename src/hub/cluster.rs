//! The hub's side of the cluster (`--redis`): what a node knows of the other
//! nodes, and what changes when Redis stops or starts answering. A single server
//! has no [`ClusterView`] and skips all of this.
//!
//! Linked, the node hands its clients' messages to `redis-out` and delivers them
//! when `redis-in` hands them back, numbered by the cluster, so every node
//! delivers in one order. Cut off, it goes on as a single server for its own
//! clients: it numbers their messages itself, in a new epoch of its own, so that
//! no id of its own can be mistaken for one the cluster gives meanwhile (the other
//! nodes may still reach Redis and go on counting). When Redis is back, that
//! epoch ends: what was said in it stays with those who heard it and leaves the
//! histories, so every node's history is the stream's again, and `redis-in`
//! delivers what the others said meanwhile.

use std::collections::{HashMap, HashSet};

use super::receipts::Unanswered;
use super::rooms::{Client, Room};
use super::seating::Awaiting;
use super::{Hub, Turn};
use crate::event::{self, DirectMessage, HubSide, Location, Publish, RelayedMessage};
use crate::protocol::{
    ClientId, InputError, MAX_PRESENCE_FRAME, NamedClient, Outgoing, Presence, unix_millis,
};

/// What a node knows of the rest of its cluster.
pub(super) struct ClusterView {
    /// How the hub reaches the cluster's threads.
    side: HubSide,
    link: Link,
    /// The other nodes' clients, as the stream's seat entries say: counted while
    /// linked, kept while cut off for when Redis is back.
    elsewhere: Elsewhere,
    /// The other nodes alive as of the last entry read: from a node's first
    /// entry (a seats entry with nobody, appended before it serves anyone) or
    /// any seat or seats entry of its own, until its `gone` entry; at join and
    /// after seat entries went unread,
    /// the nodes with a seat hash. A direct message or kick for a client of a
    /// node not alive where it is read is refused there and then.
    alive: HashSet<u64>,
    /// This node's clients' direct messages and kicks for other nodes' clients,
    /// awaiting those nodes' receipts.
    pub(super) unanswered: Unanswered,
    /// A seat entry of this node's could not be handed to `redis-out` (or Redis
    /// refused it): the next turn says where all its clients are.
    reannounce: bool,
    /// This node's own `gone` entry was read (another node let it go while it
    /// was cut off) and no seats entry of its own since: as every other node
    /// counts, its clients are not there, so what they are sent from other
    /// nodes meanwhile (whose senders were told "no connection") is not
    /// delivered.
    let_go: bool,
    /// The last epoch of this node's own: the next one is greater.
    last_own_epoch: u64,
    /// This node's clients whose seat change is on its way through the stream
    /// (`seating.rs`).
    pub(super) awaiting: HashMap<ClientId, Awaiting>,
    /// Set while a seat change read back is applied: that client, and the seat
    /// the other nodes have for it.
    pub(super) appended: Option<(ClientId, Option<Location>)>,
    /// The number of this node's last seat change (or seats entry) offered to
    /// `redis-out`: the one read back is known by it.
    offers: u64,
}

/// The other nodes' clients: where each sits, and each room's members.
#[derive(Default)]
struct Elsewhere {
    /// Room → its members on other nodes, sorted by id.
    rooms: HashMap<String, Vec<NamedClient>>,
    /// Client → its room.
    seats: HashMap<ClientId, String>,
}

/// What a seat changed: the room a client left and the room it joined (`None`
/// for each when it stayed where it was, renamed or not).
#[derive(Default)]
struct Moved {
    left: Option<String>,
    joined: Option<String>,
}

impl Elsewhere {
    /// Seats client `member` in `room` (`None`: gone).
    fn seat(&mut self, member: NamedClient, room: Option<String>) -> Moved {
        let id = member.id;
        let before = self.seats.get(&id).cloned();
        if before == room {
            // A rename, or nothing: no one comes or goes.
            if let Some(list) = room.and_then(|r| self.rooms.get_mut(&r))
                && let Some(m) = list.iter_mut().find(|m| m.id == id)
            {
                m.name = member.name;
            }
            return Moved::default();
        }
        if let Some(old) = &before {
            let list = self.rooms.get_mut(old).expect("a seat's room lists it");
            list.retain(|m| m.id != id);
            if list.is_empty() {
                self.rooms.remove(old);
            }
            self.seats.remove(&id);
        }
        if let Some(room) = &room {
            let list = self.rooms.entry(room.clone()).or_default();
            let at = list.partition_point(|m| m.id < id);
            list.insert(at, member);
            self.seats.insert(id, room.clone());
        }
        Moved {
            left: before,
            joined: room,
        }
    }

    /// The clients of node `node`.
    fn of_node(&self, node: u64) -> Vec<ClientId> {
        let ids = self.seats.keys().filter(|id| node_of(**id) == node);
        ids.copied().collect()
    }

    /// Client `id`, as the other nodes named it.
    fn named(&self, id: ClientId) -> Option<NamedClient> {
        let room = self.seats.get(&id)?;
        self.rooms[room].iter().find(|m| m.id == id).cloned()
    }
}

/// The node a client id belongs to: each node numbers its clients from
/// `node << 32`.
pub(super) fn node_of(id: ClientId) -> u64 {
    id.0 >> 32
}

/// Whether Redis answers this node.
enum Link {
    /// It does: the cluster numbers every message.
    Linked,
    /// It does not: this node's clients chat among themselves, their messages
    /// numbered by the node, `last_id` the last, in an `epoch` of its own.
    CutOff { epoch: u64, last_id: u64 },
}

impl ClusterView {
    pub(super) fn new(mut side: HubSide) -> ClusterView {
        let mut elsewhere = Elsewhere::default();
        for (id, seat) in std::mem::take(&mut side.elsewhere) {
            let member = NamedClient {
                id,
                name: seat.name,
            };
            elsewhere.seat(member, Some(seat.room));
        }
        let alive = std::mem::take(&mut side.alive).into_iter().collect();
        ClusterView {
            side,
            link: Link::Linked,
            elsewhere,
            alive,
            unanswered: Unanswered::default(),
            reannounce: false,
            let_go: false,
            last_own_epoch: 0,
            awaiting: HashMap::new(),
            appended: None,
            offers: 0,
        }
    }

    fn is_linked(&self) -> bool {
        matches!(self.link, Link::Linked)
    }

    /// This node's number.
    pub(super) fn node(&self) -> u64 {
        self.side.node
    }

    /// Hands `publish` to `redis-out` without waiting; `false` when it has no
    /// room.
    pub(super) fn offer(&self, publish: Publish) -> bool {
        event::offer(&self.side.outgoing, publish)
    }

    /// Appends (through `redis-out`) that client `id` of this node sits at
    /// `seat` (`None`: gone), as this node's next seat change: its number. One
    /// that finds no room is said in a seats entry next turn.
    pub(super) fn offer_seat(&mut self, id: ClientId, seat: Option<Location>) -> u64 {
        self.offers += 1;
        let publish = Publish::seat(id, seat, unix_millis(), self.offers);
        if !event::offer(&self.side.outgoing, publish) {
            self.reannounce = true;
        }
        self.offers
    }

    /// Whether node `node` is alive as of the last entry read (this one is,
    /// unless it was let go).
    pub(super) fn is_alive(&self, node: u64) -> bool {
        if node == self.side.node {
            return !self.let_go;
        }
        self.alive.contains(&node)
    }
}

/// The members of `room` on other nodes: none without a cluster, or while cut
/// off from it.
pub(super) fn members_elsewhere<'a>(
    cluster: &'a Option<ClusterView>,
    room: &str,
) -> &'a [NamedClient] {
    match cluster {
        Some(view) if view.is_linked() => view.elsewhere.rooms.get(room).map_or(&[], Vec::as_slice),
        _ => &[],
    }
}

/// The rooms that have members on other nodes.
pub(super) fn rooms_elsewhere(cluster: &Option<ClusterView>) -> impl Iterator<Item = &String> {
    cluster
        .iter()
        .filter(|view| view.is_linked())
        .flat_map(|view| view.elsewhere.rooms.keys())
}

impl Hub {
    /// The epoch of what the hub delivers now: the server run's or the
    /// cluster's, or while cut off from the cluster one of this node's own.
    pub(super) fn epoch(&self) -> u64 {
        match &self.cluster {
            Some(ClusterView {
                link: Link::CutOff { epoch, .. },
                ..
            }) => *epoch,
            _ => self.settings.epoch,
        }
    }

    /// Whether this node is cut off from its cluster.
    pub(super) fn is_cut_off(&self) -> bool {
        self.cluster.as_ref().is_some_and(|view| !view.is_linked())
    }

    /// Whether messages go through Redis to be numbered and delivered.
    pub(super) fn is_linked(&self) -> bool {
        self.cluster.as_ref().is_some_and(ClusterView::is_linked)
    }

    /// While cut off: this node's own epoch and its last id.
    pub(super) fn own_run(&self) -> Option<(u64, u64)> {
        match self.cluster.as_ref()?.link {
            Link::CutOff { epoch, last_id } => Some((epoch, last_id)),
            Link::Linked => None,
        }
    }

    /// The id of a message this hub numbers itself: a single server's next, or,
    /// on a node cut off from its cluster, the next of the node's own epoch.
    pub(super) fn take_id(&mut self) -> u64 {
        if let Some(ClusterView {
            link: Link::CutOff { last_id, .. },
            ..
        }) = &mut self.cluster
        {
            *last_id += 1;
            return *last_id;
        }
        self.last_message_id += 1;
        self.last_message_id
    }

    /// Hands `publish` to `redis-out`, or tells its sender the chat is busy. A
    /// seats entry owed goes first: a client's seat before anything it says.
    pub(super) fn publish(&mut self, publish: Publish) {
        let from = publish.from;
        if self.owes_seats() {
            self.reannounce();
        }
        let offered = !self.owes_seats()
            && (self.cluster.as_ref())
                .is_some_and(|view| event::offer(&view.side.outgoing, publish));
        if !offered {
            self.reply_error(from, &InputError::NotRelayed("the chat is busy: try again"));
        }
    }

    /// Tells the other nodes (a seat entry, through the stream) where client
    /// `id` of this node now is, or that it is gone.
    pub(super) fn publish_seat(&mut self, id: ClientId) {
        if !self.is_linked() {
            return; // said in one seats entry when Redis is back
        }
        let seat = self.clients.get(&id).map(Client::seat);
        if self.seat_already_appended(id, &seat) {
            return;
        }
        let view = self.cluster.as_mut().expect("linked");
        view.offer_seat(id, seat);
    }

    /// Says where every client of this node is, in one seats entry, which
    /// replaces what the other nodes knew of them (tried again next turn if
    /// `redis-out` has no room for it now).
    pub(super) fn reannounce(&mut self) {
        if !self.is_linked() {
            return;
        }
        let seats = self.seats_as_appended();
        let view = self.cluster.as_mut().expect("linked");
        view.offers += 1;
        let publish = Publish::seats(seats, unix_millis(), view.offers);
        view.reannounce = !event::offer(&view.side.outgoing, publish);
    }

    /// Redis refused (or may not have taken) this node's seat changes up to
    /// number `upto`: they are applied here now, and a seats entry is owed,
    /// which goes before anything their clients say next.
    pub(super) fn seats_not_taken(&mut self, upto: u64) {
        if let Some(view) = &mut self.cluster {
            view.reannounce = true;
        }
        self.apply_awaiting_up_to(upto);
    }

    /// Whether a seat entry of this node's is owed: see [`Hub::reannounce`].
    pub(super) fn owes_seats(&self) -> bool {
        self.cluster.as_ref().is_some_and(|view| view.reannounce)
    }

    /// A seat entry: client `id` of another node sits at `seat` (`None`:
    /// gone), as of entry `entry`; its node, which appended it, is alive.
    pub(super) fn relayed_seat(
        &mut self,
        entry: u64,
        id: ClientId,
        seat: Option<Location>,
        offer: u64,
    ) {
        let Some(view) = &mut self.cluster else {
            return;
        };
        view.alive.insert(node_of(id));
        if node_of(id) == view.side.node {
            self.last_message_id = self.last_message_id.max(entry);
            return self.own_seat_read_back(id, offer);
        }
        self.seat_elsewhere(entry, id, seat);
    }

    /// Client `id` of another node sits at `seat` (`None`: gone), as of entry
    /// `entry`: this node's members of the rooms it left and joined hear it.
    fn seat_elsewhere(&mut self, entry: u64, id: ClientId, seat: Option<Location>) {
        self.last_message_id = self.last_message_id.max(entry);
        let Some(view) = &mut self.cluster else {
            return;
        };
        let (name, room) = match seat {
            Some(Location { room, name }) => (name, Some(room)),
            None => (
                view.elsewhere.named(id).map(|m| m.name).unwrap_or_default(),
                None,
            ),
        };
        let member = NamedClient { id, name };
        let moved = view.elsewhere.seat(member.clone(), room);
        if !view.is_linked() {
            return;
        }
        if let Some(left) = moved.left {
            self.announce_seat(&left, Presence::Leave, member.clone());
        }
        if let Some(joined) = moved.joined {
            self.announce_seat(&joined, Presence::Join, member);
        }
    }

    /// A seats entry: node `node`'s clients are `seats` and no others, as of
    /// entry `entry`, and the node, which appended it, is alive. One of this
    /// node's own says its seat changes up to number `offer`.
    pub(super) fn relayed_seats(
        &mut self,
        entry: u64,
        node: u64,
        seats: Vec<(ClientId, Location)>,
        offer: u64,
    ) {
        let Some(view) = &mut self.cluster else {
            return;
        };
        view.alive.insert(node);
        if node == view.side.node {
            // It says every seat change offered before it, whatever came back.
            view.let_go = false;
            self.last_message_id = self.last_message_id.max(entry);
            return self.apply_awaiting_up_to(offer.saturating_sub(1));
        }
        self.replace_seats(entry, node, seats);
    }

    /// Node `node` is gone as of entry `entry` (its `gone` entry): its clients
    /// leave, and whatever a client here awaits its answer for is refused.
    pub(super) fn node_gone(&mut self, entry: u64, node: u64) {
        let Some(view) = &mut self.cluster else {
            return;
        };
        if node == view.side.node {
            // Let go while cut off: it says where its clients are when back.
            view.let_go = true;
            return;
        }
        view.alive.remove(&node);
        self.replace_seats(entry, node, Vec::new());
        self.refuse_unanswered_of(node);
    }

    /// Node `node`'s clients are `seats` and no others, as of entry `entry`.
    fn replace_seats(&mut self, entry: u64, node: u64, seats: Vec<(ClientId, Location)>) {
        self.last_message_id = self.last_message_id.max(entry);
        let Some(view) = &self.cluster else {
            return;
        };
        if node == view.side.node {
            return;
        }
        let staying: HashSet<ClientId> = seats.iter().map(|(id, _)| *id).collect();
        let gone = view.elsewhere.of_node(node).into_iter();
        for id in gone.filter(|id| !staying.contains(id)).collect::<Vec<_>>() {
            self.seat_elsewhere(entry, id, None);
        }
        for (id, seat) in seats.into_iter().filter(|(id, _)| node_of(*id) == node) {
            self.seat_elsewhere(entry, id, Some(seat));
        }
    }

    /// Where every client of the cluster sits now (the seat hashes, read after
    /// seat entries may have gone unread): each other node's clients are
    /// replaced by its part of `seats`, and the nodes alive are `nodes`. What
    /// awaits the answer of a node no longer alive is refused.
    pub(super) fn seats_now(&mut self, seats: Vec<(ClientId, Location)>, nodes: Vec<u64>) {
        let Some(view) = &mut self.cluster else {
            return;
        };
        let alive: HashSet<u64> = nodes.into_iter().collect();
        let dead: Vec<u64> = view.alive.difference(&alive).copied().collect();
        view.let_go = !alive.contains(&view.side.node);
        view.alive = alive;
        for node in dead {
            self.refuse_unanswered_of(node);
        }
        let Some(view) = &self.cluster else {
            return;
        };
        let mut by_node: HashMap<u64, Vec<(ClientId, Location)>> = HashMap::new();
        for id in view.elsewhere.seats.keys() {
            by_node.entry(node_of(*id)).or_default();
        }
        for (id, seat) in seats {
            by_node.entry(node_of(id)).or_default().push((id, seat));
        }
        for (node, seats) in by_node {
            self.replace_seats(self.last_message_id, node, seats);
        }
        // This node's seat items among those unread came back, in effect (a
        // change whose item was still on its way is applied a little early).
        self.apply_awaiting_up_to(u64::MAX);
    }

    /// A member of another node came to (or left) `room_name`: its members here
    /// hear it, with the room's count after it.
    fn announce_seat(&mut self, room_name: &str, presence: Presence, member: NamedClient) {
        let elsewhere = members_elsewhere(&self.cluster, room_name).len();
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        if room.members.is_empty() {
            return;
        }
        let count = room.members.len() + elsewhere;
        room.batch.presence(presence, count, member, room_name);
        self.turn.bytes += MAX_PRESENCE_FRAME;
        self.turn.mark(room_name);
    }

    /// A room message in the cluster's order: to this node's members of its room,
    /// and its history. A room nobody here is in is made for its history (while
    /// `--max-rooms` allows), so that whoever joins it here later hears what was
    /// said there.
    pub(super) fn relayed(&mut self, message: RelayedMessage) {
        // Made before the id is taken in: a room new here has no history before
        // this message.
        let made = self.make_room(&message.room, None);
        self.last_message_id = self.last_message_id.max(message.id);
        if made.is_err() {
            return;
        }
        let frame = Outgoing::Message {
            id: message.id,
            ts: message.ts,
            from: message.from,
            name: &message.name,
            msg: &message.msg,
            room: Some(&message.room),
        };
        self.broadcast(
            &message.room,
            &frame,
            message.except_sender,
            self.settings.epoch,
        );
    }

    /// A direct message from a client here, through Redis like a room message
    /// (for its id, and the cluster's order): the target's node delivers it and
    /// answers, and the sender's copy waits for the answer. A target that may be
    /// on another node goes, even one this node has not seen seated yet (its
    /// seat entry not read yet): only the target's node knows. One of this
    /// node's own numbers that is not here is refused at once.
    pub(super) fn direct_through_cluster(&mut self, direct: DirectMessage) {
        let (from, to) = (direct.from, direct.to);
        if !self.clients.contains_key(&from) {
            return;
        }
        if self.is_own_and_absent(to) {
            return self.reply_error(from, &InputError::NoSuchClient(to));
        }
        self.publish(Publish::direct(direct, unix_millis()));
    }

    /// An admin's kick of a client not on this node: through the stream, to
    /// its node, which closes it or answers that it is not there.
    pub(super) fn kick_elsewhere(&mut self, target: ClientId, by: ClientId) {
        let error = match &self.cluster {
            None => InputError::NoSuchClient(target),
            Some(view) if !view.is_linked() => InputError::Unreachable(target),
            Some(view) if node_of(target) == view.side.node => InputError::NoSuchClient(target),
            Some(_) => return self.publish(Publish::kick(target, by, unix_millis())),
        };
        self.reply_error(by, &error);
    }

    /// Whether `id` is one of this node's numbers, and no client here has it.
    fn is_own_and_absent(&self, id: ClientId) -> bool {
        (self.cluster.as_ref()).is_some_and(|view| node_of(id) == view.side.node)
            && !self.clients.contains_key(&id)
    }

    /// Redis stopped or started answering: every room here hears it, and while it
    /// is gone the other nodes' members are out of this node's counts.
    pub(super) fn linked_changed(&mut self, up: bool) {
        let Some(view) = &mut self.cluster else {
            return;
        };
        if up == view.is_linked() {
            return;
        }
        let nobody = HashMap::new();
        if let Link::CutOff { epoch, .. } = view.link {
            for room in self.rooms.values_mut() {
                room.history.forget(epoch);
            }
            view.link = Link::Linked;
            announce_elsewhere(
                &mut self.rooms,
                &mut self.turn,
                &nobody,
                &view.elsewhere.rooms,
            );
        } else {
            view.last_own_epoch = own_epoch(view.side.node, view.last_own_epoch);
            view.link = Link::CutOff {
                epoch: view.last_own_epoch,
                last_id: self.last_message_id,
            };
            announce_elsewhere(
                &mut self.rooms,
                &mut self.turn,
                &view.elsewhere.rooms,
                &nobody,
            );
        }
        let msg = if up {
            log::warn!("cluster: Redis answers again");
            "this server has the rest of the chat again"
        } else {
            log::warn!("cluster: Redis does not answer: chatting on alone");
            "this server lost the rest of the chat: until it is back, only the people on this server hear you"
        };
        self.tell_every_room(msg, false);
        // Nothing goes through the stream now: what waited for it is applied.
        self.apply_awaiting_up_to(u64::MAX);
        if up {
            // What this node's clients did meanwhile was never appended.
            self.reannounce();
        }
    }

    /// The cluster's messages up to `upto` that this node has not heard never will
    /// (the stream was trimmed past them while it was cut off, or Redis lost
    /// them): a replay from before them has a gap, and everyone here is told.
    pub(super) fn missed(&mut self, upto: u64) {
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

    /// A cluster notification to every room with members: whether Redis answers
    /// now, in which epoch, and (`gap`) whether something is gone for good.
    fn tell_every_room(&mut self, msg: &str, gap: bool) {
        let (epoch, connected) = (self.epoch(), self.is_linked());
        for (name, room) in &mut self.rooms {
            if room.members.is_empty() {
                continue;
            }
            let frame = Outgoing::Cluster {
                msg,
                count: room.members.len() + members_elsewhere(&self.cluster, name).len(),
                event: "cluster",
                room: name,
                connected,
                gap,
                epoch,
            };
            let json = frame.to_json();
            room.batch.push(&json, &frame, name);
            self.turn.bytes += json.len();
            self.turn.mark(name);
        }
    }
}

/// The other nodes' members changed from `before` to `after`: each room here
/// with members hears of every join and leave, with the count after it.
fn announce_elsewhere(
    rooms: &mut HashMap<String, Room>,
    turn: &mut Turn,
    before: &HashMap<String, Vec<NamedClient>>,
    after: &HashMap<String, Vec<NamedClient>>,
) {
    for (name, room) in rooms {
        if room.members.is_empty() {
            continue;
        }
        let before = before.get(name).map_or(&[][..], Vec::as_slice);
        let after = after.get(name).map_or(&[][..], Vec::as_slice);
        if before == after {
            continue;
        }
        let ids = |list: &[NamedClient]| list.iter().map(|m| m.id).collect::<HashSet<_>>();
        let (had, has) = (ids(before), ids(after));
        let mut count = room.members.len() + before.len();
        let mut changed = false;
        for gone in before.iter().filter(|m| !has.contains(&m.id)) {
            count -= 1;
            room.batch
                .presence(Presence::Leave, count, gone.clone(), name);
            changed = true;
        }
        for new in after.iter().filter(|m| !had.contains(&m.id)) {
            count += 1;
            room.batch
                .presence(Presence::Join, count, new.clone(), name);
            changed = true;
        }
        if changed {
            turn.bytes += 2 * MAX_PRESENCE_FRAME;
            turn.mark(name);
        }
    }
}

/// An epoch of node `node`'s own, for a time cut off from its cluster, after its
/// `previous` one: the time in seconds above the node's number (below 2^21), so
/// no two nodes share one, and the same node's increase. Past any cluster's (a
/// time in milliseconds), and below 2^53 (for the page's JavaScript) until 2106.
pub(super) fn own_epoch(node: u64, previous: u64) -> u64 {
    let now = ((unix_millis() / 1000) << 21) | node;
    now.max((previous | node) + (1 << 21))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_s_own_epochs_differ_from_each_other_and_from_every_other_node_s() {
        let first = own_epoch(5, 0);
        let again = own_epoch(5, first);
        assert!(again > first);
        assert_eq!(again % (1 << 21), 5, "still node 5's");
        assert_ne!(own_epoch(6, 0) % (1 << 21), first % (1 << 21));
        assert!(first > unix_millis() && first < 1 << 53);
    }
}
