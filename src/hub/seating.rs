//! In a cluster, this node's own clients change seats in the stream's order too:
//! a join, move, rename or leave is appended first and applied here only when
//! `redis-in` hands it back, between the entries around it, as every other node
//! applies it. Without this, a client that joins here would be welcomed with a
//! count and a history as of the last entry this node read, and would hear live
//! the messages the stream holds before its join; its room here would hear of it
//! a few entries earlier than the rooms of every other node.
//!
//! While a client's seat change is on its way ([`Awaiting`]), what the client
//! asks next (its messages, `who`, another join) waits behind it, in order, so
//! that nothing it says is appended before its seat and every answer is as of
//! its new seat. That costs the client one trip through Redis after a join (a
//! batch with a seat in it goes at once, `append.rs`), and the hub up to
//! [`MAX_HELD`] events per client ([`HELD_MEMORY`], counted in the capacity
//! plan).
//!
//! Each seat change carries its number among the node's seat changes, and only
//! the item with the number a client awaits applies its change: an item sent
//! before a cut-off and appended after it is passed over. A seat item that never
//! comes back is replaced by what follows it: a batch of them Redis refused (or
//! may not have taken) is applied at once, and said again in a seats entry,
//! which applies every change offered before it; the seat hashes read after
//! entries went unread, and a cut-off from Redis, apply them all.

use std::collections::VecDeque;

use super::Hub;
use super::messages::Awaited;
use super::rooms::Client;
use crate::event::{self, Event, Join, Location};
use crate::protocol::{ClientId, InputError, LOBBY, MAX_MESSAGE_FRAME};

/// Events at most that wait behind one client's seat change; one more is
/// refused with an error ("the chat is busy"), except its leave, which always
/// waits. Bounds what a client can make the hub keep for it while its seat item
/// is on its way: a round trip through Redis, or up to the read deadline before
/// the node counts itself cut off and applies everything at once. A page that
/// joins and speaks at once asks two or three things meanwhile.
pub const MAX_HELD: usize = 8;

/// What a client hears when more than [`MAX_HELD`] of its events would wait.
const BUSY: &str = "the chat is busy: try again";

/// Most memory the events held for one client take: each is at most a chat
/// message, under a frame's worth of bytes.
pub const HELD_MEMORY: u64 = MAX_HELD as u64 * MAX_MESSAGE_FRAME as u64;

/// A seat change of one of this node's clients, appended and not yet read back.
pub(super) struct Awaiting {
    /// The event that changes the seat: applied when its seat is read back.
    change: Event,
    /// Where it puts the client (`None`: gone), as appended.
    pub(super) seat: Option<Location>,
    /// Its number among this node's seat changes: the item that applies it,
    /// and the order of changes applied together.
    offer: u64,
    /// What the client asked after it, in order.
    held: VecDeque<Event>,
}

/// `event`, or the request inside it when it awaits an acknowledgement.
fn unwrapped(event: &Event) -> &Event {
    match event {
        Event::Acked(acked) => unwrapped(&acked.event),
        other => other,
    }
}

/// The client that asked for `event`, whose earlier seat change it must wait
/// behind; none for what the cluster's threads say.
fn asker(event: &Event) -> Option<ClientId> {
    match event {
        Event::Connect(arrival) => Some(arrival.id),
        Event::Acked(acked) => Some(acked.id),
        Event::Message(said) => Some(said.from),
        Event::Direct(direct) => Some(direct.from),
        Event::Kick { by, .. } => Some(*by),
        Event::Hello { id, .. }
        | Event::Login { id, .. }
        | Event::Join(Join { id, .. })
        | Event::Rooms { id }
        | Event::Who { id }
        | Event::Leave { id } => Some(*id),
        _ => None,
    }
}

impl Hub {
    /// Whether `event` must wait for a seat change to come back through the
    /// stream: held behind its asker's change, or itself a change, appended and
    /// kept. `Some`: apply it now.
    pub(super) fn hold(&mut self, mut event: Event) -> Option<Event> {
        if !self.is_linked() {
            return Some(event);
        }
        let Some(asker) = asker(&event) else {
            return Some(event);
        };
        let behind = match unwrapped(&event) {
            // A kick of a client here takes effect at the kicked one's place.
            Event::Kick { target, by } if self.clients.contains_key(by) => [asker, *target],
            _ => [asker, asker],
        };
        let view = self.cluster.as_mut().expect("linked");
        if let Some(id) = behind.into_iter().find(|id| view.awaiting.contains_key(id)) {
            let awaiting = view.awaiting.get_mut(&id).expect("found above");
            if awaiting.held.len() < MAX_HELD || matches!(event, Event::Leave { .. }) {
                awaiting.held.push_back(event);
            } else if !self.clients.contains_key(&asker) {
                // Not welcomed yet, so not told yet: told once, after its
                // welcome (one error for all it loses before then).
                let told = matches!(awaiting.held.back(), Some(Event::NotRelayed { .. }));
                if !told {
                    awaiting.held.push_back(Event::NotRelayed {
                        from: asker,
                        why: BUSY,
                    });
                }
            } else {
                // A request awaiting an acknowledgement gets the error as it.
                if let Event::Acked(acked) = &event {
                    self.awaited = Some(Awaited {
                        id: acked.id,
                        ack: acked.ack,
                    });
                }
                self.reply_error(asker, &InputError::NotRelayed(BUSY));
                self.awaited = None;
            }
            return None;
        }
        let Some((id, seat)) = self.intended_seat(&mut event) else {
            return Some(event);
        };
        if let Event::Login { id, .. } = unwrapped(&event) {
            self.speak_tutorial(*id);
        }
        let view = self.cluster.as_mut().expect("linked");
        // One that finds no room is said in the seats entry that follows,
        // which applies it.
        let offer = view.offer_seat(id, seat.clone());
        let awaiting = Awaiting {
            change: event,
            seat,
            offer,
            held: VecDeque::new(),
        };
        let before = view.awaiting.insert(id, awaiting);
        debug_assert!(before.is_none(), "a change waits behind the one before");
        None
    }

    /// Whether `event` changes a client's seat, and then whose, and where it
    /// puts the client. A join that is refused, or to the room the client is
    /// in, changes nothing: it is answered at once.
    fn intended_seat(&mut self, event: &mut Event) -> Option<(ClientId, Option<Location>)> {
        match event {
            Event::Acked(acked) => self.intended_seat(&mut acked.event),
            Event::Connect(arrival) if arrival.endpoint == event::Endpoint::Chat => {
                // The room is made now, so the seat appended is the one it gets.
                let room = (arrival.room.take())
                    .filter(|r| self.make_room(r, Some(arrival.address)).is_ok())
                    .unwrap_or_else(|| LOBBY.to_string());
                arrival.room = Some(room.clone());
                let name = arrival.name.clone();
                Some((arrival.id, Some(Location { room, name })))
            }
            Event::Join(join) => {
                let client = self.clients.get(&join.id)?;
                let (room, name, address) = (&join.room, client.name.clone(), client.address);
                if *room == client.room || self.make_room(room, Some(address)).is_err() {
                    return None;
                }
                let room = room.clone();
                Some((join.id, Some(Location { room, name })))
            }
            Event::Hello { id, name } | Event::Login { id, name } => {
                let room = self.clients.get(id)?.room.clone();
                let name = name.clone();
                Some((*id, Some(Location { room, name })))
            }
            Event::Leave { id } => self.clients.contains_key(id).then_some((*id, None)),
            Event::Kick { target, by } => (self.clients.contains_key(by)
                && self.clients.contains_key(target))
            .then_some((*target, None)),
            _ => None,
        }
    }

    /// Client `id`'s own seat item number `offer` came back through the
    /// stream: if it is the change the client awaits, it is applied here now,
    /// and what the client asked after it follows.
    pub(super) fn own_seat_read_back(&mut self, id: ClientId, offer: u64) {
        let Some(view) = &mut self.cluster else {
            return;
        };
        if view.awaiting.get(&id).is_some_and(|a| a.offer == offer) {
            let awaiting = view.awaiting.remove(&id).expect("looked up above");
            self.seat_taken(id, awaiting);
        }
    }

    /// Every seat change numbered up to `upto` that still awaits its item is
    /// applied now, in the order they were offered: this node's seats entry
    /// came back, which says them, or their items will not come back (Redis
    /// refused them, the hashes were read instead, or the node is cut off,
    /// where nothing goes through the stream).
    pub(super) fn apply_awaiting_up_to(&mut self, upto: u64) {
        let Some(view) = &mut self.cluster else {
            return;
        };
        let mut due: Vec<(ClientId, Awaiting)> = (view.awaiting)
            .extract_if(|_, awaiting| awaiting.offer <= upto)
            .collect();
        due.sort_unstable_by_key(|(_, awaiting)| awaiting.offer);
        for (id, awaiting) in due {
            self.seat_taken(id, awaiting);
        }
    }

    /// Applies client `id`'s seat change, whose seat the other nodes have (so
    /// it is not appended again, unless it came out otherwise), then what the
    /// client asked meanwhile; a further change among it is appended and waits
    /// in turn, with what follows it.
    fn seat_taken(&mut self, id: ClientId, awaiting: Awaiting) {
        let Awaiting {
            change, seat, held, ..
        } = awaiting;
        if let Some(view) = &mut self.cluster {
            view.appended = Some((id, seat));
        }
        self.apply_now(change);
        let unsaid = self.cluster.as_mut().and_then(|view| view.appended.take());
        if let Some((_, seat)) = unsaid
            && self.clients.get(&id).map(Client::seat) != seat
        {
            // It came out otherwise (a join refused by now, a kick whose admin
            // left): the other nodes hear where the client is after all.
            self.publish_seat(id);
        }
        for event in held {
            match self.cluster.as_mut().and_then(|v| v.awaiting.get_mut(&id)) {
                // Waits behind the next change, past the cap: it was let in.
                Some(next) => next.held.push_back(event),
                None => self.apply(event),
            }
        }
    }

    /// Whether client `id`'s seat is `seat` as the other nodes already have it
    /// (its change just read back), so that appending it again is not needed.
    pub(super) fn seat_already_appended(&mut self, id: ClientId, seat: &Option<Location>) -> bool {
        let Some(view) = &mut self.cluster else {
            return false;
        };
        let appended = view.appended.take_if(|(who, _)| *who == id);
        appended.is_some_and(|(_, appended)| appended == *seat)
    }

    /// Whether client `id` has left (its reader ended) and its leave is on its
    /// way through the stream: still in its room as of what is read now, but
    /// nothing reaches it any more.
    pub(super) fn is_leaving(&self, id: ClientId) -> bool {
        let awaiting = self
            .cluster
            .as_ref()
            .and_then(|view| view.awaiting.get(&id));
        awaiting.is_some_and(|awaiting| matches!(awaiting.change, Event::Leave { .. }))
    }

    /// Where this node's clients are as the other nodes will have it: their
    /// seats, but a seat change awaiting counts as made.
    pub(super) fn seats_as_appended(&self) -> Vec<(ClientId, Location)> {
        let Some(view) = &self.cluster else {
            return Vec::new();
        };
        let applied = (self.clients.iter())
            .filter(|(id, _)| !view.awaiting.contains_key(id))
            .map(|(id, client)| (*id, Client::seat(client)));
        let awaiting =
            (view.awaiting.iter()).filter_map(|(id, awaiting)| Some((*id, awaiting.seat.clone()?)));
        applied.chain(awaiting).collect()
    }

    /// Closes every client still awaiting its first seat (the server is
    /// stopping): the hub has not listed them yet.
    pub(super) fn close_awaiting_arrivals(&mut self) {
        let Some(view) = &mut self.cluster else {
            return;
        };
        for awaiting in view.awaiting.drain().map(|(_, awaiting)| awaiting) {
            if let Event::Connect(arrival) = awaiting.change {
                super::close_away(&arrival.outbox);
            }
        }
    }
}
