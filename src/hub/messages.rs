//! Messages: a room message into its room's batch and history, a direct message
//! to its two ends, and the answers and errors for one client, each paid for by
//! the address it is sent for.

use super::Hub;
use crate::budget::Spent;
use crate::event::{Acked, DirectMessage, Publish, Said};
use crate::logging::Untrusted;
use crate::protocol::{ClientId, InputError, Outgoing, unix_millis};

impl Hub {
    /// Client `from` says `message` in its room (to everyone but itself, with
    /// `except_sender`).
    pub(super) fn message(&mut self, said: Said) {
        let Said {
            from,
            message,
            except_sender,
        } = said;
        let Some(client) = self.clients.get(&from) else {
            return; // left (or kicked) while the message was on its way
        };
        let room = client.room.clone();
        if self.spent_meanwhile(from) {
            return;
        }
        if self.is_linked() {
            // Delivered when Redis hands it back, in the cluster's order.
            let publish = Publish::message(&room, from, message, except_sender, unix_millis());
            return self.publish(publish);
        }
        let (id, epoch) = (self.take_id(), self.epoch());
        log::debug!(
            "message {id} from client {from} in \"{}\": \"{}\": \"{}\"",
            Untrusted(&room),
            Untrusted(&message.name),
            Untrusted(&message.msg)
        );
        let frame = Outgoing::Message {
            id,
            ts: unix_millis(),
            from,
            name: &message.name,
            msg: &message.msg,
            room: Some(&room),
        };
        self.broadcast(&room, &frame, except_sender, epoch);
        // A Socket.IO client that awaits an answer gets its message's own frame
        // (its id) as the acknowledgement, besides its place in the room's order.
        if let Some(ack) = self.ack_for(from) {
            self.reply_ack(from, &frame, ack);
        }
    }

    /// `frame` as acknowledgement `ack` to client `id`, paid for by its address.
    fn reply_ack(&mut self, id: ClientId, frame: &Outgoing<'_>, ack: u64) {
        if let Some(client) = self.clients.get(&id) {
            let bytes = client.format.answer(frame, Some(ack), &client.room);
            client.charge(bytes.len());
            self.turn.reply(id, bytes);
        }
    }

    /// Appends message `frame` to room `room_name`'s batch (not to its sender's,
    /// with `except_sender`) and to its history in `epoch`. The sender pays for
    /// every copy when it is on this node; another node's client pays there.
    pub(super) fn broadcast(
        &mut self,
        room_name: &str,
        frame: &Outgoing<'_>,
        except_sender: bool,
        epoch: u64,
    ) {
        let Outgoing::Message { id, from, .. } = *frame else {
            unreachable!("broadcast is given message frames")
        };
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        let was_empty = room.batch.is_empty();
        let json = frame.to_json();
        let at = room.batch.push(&json, frame, room_name);
        if except_sender && let Some(sender) = room.members.iter_mut().find(|m| m.id == from) {
            sender.except.push(at);
        }
        let bytes = json.len();
        room.history.push(epoch, id, json, self.settings.history);
        room.last_used = self.clock;
        if let Some(sender) = self.clients.get(&from) {
            sender.charge(bytes * room.members.len());
        }
        self.turn.bytes += bytes;
        self.turn.messages += 1;
        if was_empty {
            // A room's batch is empty exactly while the room is not in the turn's
            // list: no search needed.
            self.turn.dirty.push(room_name.to_string());
        }
    }

    /// A direct message from a client here: through the cluster when there is
    /// one to go through, else to its target here.
    pub(super) fn direct(&mut self, direct: DirectMessage) {
        let (from, to) = (direct.from, direct.to);
        if self.spent_meanwhile(from) {
            return;
        }
        if self.is_linked() {
            return self.direct_through_cluster(direct);
        }
        if self.is_cut_off() && !self.clients.contains_key(&to) {
            // Perhaps on another node, which cannot be reached now.
            return self.reply_error(from, &InputError::Unreachable(to));
        }
        if !(self.clients.contains_key(&to) && self.clients.contains_key(&from)) {
            return self.reply_error(from, &InputError::NoSuchClient(to));
        }
        let id = self.take_id();
        self.deliver_direct(id, unix_millis(), &direct);
    }

    /// A direct message to its target and the sender's copy, both on this node.
    pub(super) fn deliver_direct(&mut self, id: u64, ts: u64, direct: &DirectMessage) {
        self.direct_to_target(id, ts, direct);
        self.direct_to_sender(id, ts, direct);
    }

    /// A direct message to its target, if it is on this node: whether it is. A
    /// sender here pays for it; one that wrote to itself gets only its own
    /// copy ([`Hub::direct_to_sender`]).
    pub(super) fn direct_to_target(&mut self, id: u64, ts: u64, direct: &DirectMessage) -> bool {
        let Some(target) = self.clients.get(&direct.to) else {
            return false;
        };
        if self.is_leaving(direct.to) {
            return false;
        }
        if direct.to == direct.from {
            return true;
        }
        let bytes = target
            .format
            .frame(&direct_frame(id, ts, direct, false), &target.room);
        if let Some(sender) = self.clients.get(&direct.from) {
            sender.charge(bytes.len());
        }
        self.turn.reply(direct.to, bytes);
        true
    }

    /// The sender's copy of a direct message its target got (`delivered`), if
    /// the sender is on this node, paid for by its address: the answer it
    /// awaits, if it awaits one.
    pub(super) fn direct_to_sender(&mut self, id: u64, ts: u64, direct: &DirectMessage) {
        let ack = self.ack_for(direct.from);
        let Some(sender) = self.clients.get(&direct.from) else {
            return;
        };
        let frame = direct_frame(id, ts, direct, true);
        let bytes = sender.format.answer(&frame, ack, &sender.room);
        sender.charge(bytes.len());
        self.turn.reply(direct.from, bytes);
    }

    /// Whether client `id`'s address has spent what it may make the server send
    /// since its reader let this message in (other connections of the address
    /// spent it meanwhile); if so, the message is dropped and the client told.
    /// The hub is the last gate, so that an address overdraws by one message's
    /// fan-out, not by one for each of its connections.
    fn spent_meanwhile(&mut self, id: ClientId) -> bool {
        let spent = self
            .clients
            .get(&id)
            .is_some_and(|client| client.has_spent());
        if spent {
            let frame = Outgoing::Dropped {
                msg: InputError::AddressBusy(Spent::BytesOut.what()).to_string(),
                dropped: 1,
            };
            self.reply_frame(id, &frame);
        }
        spent
    }

    /// Applies a Socket.IO client's request whose answer it awaits as an
    /// acknowledgement: the answer spelled for `id` while it is applied (see
    /// [`Hub::ack_for`]) is the acknowledgement.
    pub(super) fn acked(&mut self, acked: Acked) {
        let Acked { id, ack, event } = acked;
        self.awaited = Some(Awaited { id, ack });
        self.apply_now(*event);
        self.awaited = None;
    }

    /// The acknowledgement client `id` awaits, taken: its first answer is it.
    pub(super) fn ack_for(&mut self, id: ClientId) -> Option<u64> {
        self.awaited
            .take_if(|awaited| awaited.id == id)
            .map(|awaited| awaited.ack)
    }

    /// An error frame for client `id`, paid for by its address.
    pub(super) fn reply_error(&mut self, id: ClientId, error: &InputError) {
        let frame = Outgoing::Error {
            msg: error.to_string(),
        };
        self.reply_frame(id, &frame);
    }

    /// An answer to client `id`, paid for by its address.
    fn reply_frame(&mut self, id: ClientId, frame: &Outgoing<'_>) {
        let ack = self.ack_for(id);
        if let Some(client) = self.clients.get(&id) {
            let bytes = client.format.answer(frame, ack, &client.room);
            client.charge(bytes.len());
            self.turn.reply(id, bytes);
        }
    }
}

/// A request's answer awaited as an acknowledgement: by client `id`, as `ack`.
pub(super) struct Awaited {
    pub id: ClientId,
    pub ack: u64,
}

/// Direct message `direct`, numbered `id` at `ts`: the target's copy, or
/// (`delivered`) the sender's.
fn direct_frame(id: u64, ts: u64, direct: &DirectMessage, delivered: bool) -> Outgoing<'_> {
    Outgoing::Direct {
        id,
        ts,
        from: direct.from,
        name: &direct.name,
        to: direct.to,
        msg: &direct.msg,
        delivered,
    }
}
