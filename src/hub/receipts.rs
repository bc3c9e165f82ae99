//! Direct messages and kicks between the nodes of a cluster, and the receipts
//! that answer them.
//!
//! On one server the hub knows whether a direct message's target is there when
//! it hands the message over, so the sender's copy can say `delivered`. In a
//! cluster the target may be on another node, and the sender's node cannot know:
//!
//! * Refusing a target the sender's node has not seen seated fails a client that
//!   got its `welcome` on another node a moment ago (its seat entry not read
//!   yet): "no such connection", though it exists.
//! * Calling every message the sender's node read back `delivered` is a guess: a
//!   target that left before its node read the message never got it.
//!
//! Only the target's node knows, when it reads the message from the stream. So
//! it answers: a receipt entry (`delivered` or `undelivered`, for the message's
//! id, addressed to the sender), which the sender's node reads from the stream
//! in turn. The sender's copy (`"delivered":true`) waits for it, or an error
//! comes instead; one more trip through the stream than a room message takes.
//! An admin's kick goes the same way: its target's node closes it, or answers
//! that it is not there.
//!
//! The wait is bounded three ways, so that no answer that never comes holds a
//! sender (or the hub's memory) forever: a node that is not alive where the
//! message is read gets no wait at all, a node found gone refuses what awaits
//! it, and what is left waits at most [`RECEIPT_PATIENCE`], [`MOST_UNANSWERED`]
//! at a time and [`MOST_UNANSWERED_PER_ADDRESS`] of one address's.
//!
//! A node let go while cut off from Redis (its hash expired, its clients left
//! everyone's presence) still has its clients. When it is back it reads what
//! other nodes' clients sent them meanwhile, whose senders were told there was
//! no such connection, as the cluster counted it then: it does not deliver
//! that, from its own `gone` entry until its clients are said again.
//!
//! What this leaves open: a receipt that comes after its sender was told "could
//! not be confirmed" is dropped.

use std::collections::hash_map::Entry as Count;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::Hub;
use super::cluster::node_of;
use crate::event::{DirectMessage, Publish, Receipt};
use crate::places::Origin;
use crate::protocol::{ClientId, InputError, unix_millis};

/// Direct messages and kicks of a node's clients awaiting receipts at once, at
/// most. Each holds its message (8 KiB at most) for the sender's copy, so they
/// take 8 MiB at most; past that, the oldest is given up (its sender told that
/// delivery could not be confirmed), and clients writing to a node that does
/// not answer cannot grow the hub.
pub(super) const MOST_UNANSWERED: usize = 1_024;

/// Of those, one address's at most (an IPv6 /64's, [`crate::places::NETWORK_SHARES`]
/// times as many: [`Origin`]): past that, its own oldest is given up, not
/// anyone else's. So an address that floods a node which does not
/// answer (up to [`RECEIPT_PATIENCE`] at its message budget's pace, from all its
/// connections) takes its own share, and the others' messages keep waiting for
/// their receipts.
pub(super) const MOST_UNANSWERED_PER_ADDRESS: usize = 128;

/// How long a sender's node waits for a receipt before telling the sender that
/// delivery could not be confirmed. A receipt takes milliseconds (two trips
/// through the stream), but can be lost: the target's node found its queue to
/// Redis full, Redis refused its batch, or Redis was away for longer than
/// `redis-out` tries (10 s). Past that, the target's node may yet have
/// delivered the message: the error says "could not be confirmed", not "not
/// delivered".
pub(super) const RECEIPT_PATIENCE: Duration = Duration::from_secs(30);

/// What this node's clients sent to other nodes' clients and await a receipt
/// for, by id (in the stream's order: the oldest first).
#[derive(Default)]
pub(super) struct Unanswered {
    by_id: BTreeMap<u64, Sent>,
    /// How many of those each sender's address has.
    per_address: HashMap<Origin, usize>,
}

/// A direct message or kick read back from the stream, its sender's address,
/// and when.
struct Sent {
    asked: Asked,
    origin: Origin,
    read: Instant,
}

/// What a receipt answers.
pub(super) enum Asked {
    /// A direct message, sent at `ts`: the sender's copy is made of it.
    Direct { ts: u64, direct: DirectMessage },
    /// An admin's kick: the admin hears only of a target that was not there.
    Kick { target: ClientId, by: ClientId },
}

impl Asked {
    fn sender(&self) -> ClientId {
        match self {
            Asked::Direct { direct, .. } => direct.from,
            Asked::Kick { by, .. } => *by,
        }
    }

    fn target(&self) -> ClientId {
        match self {
            Asked::Direct { direct, .. } => direct.to,
            Asked::Kick { target, .. } => *target,
        }
    }
}

impl Unanswered {
    /// `asked`, numbered `id`, from a sender at `origin`, read at `read`,
    /// awaits its receipt. Given up to make room: that address's oldest when it
    /// has [`MOST_UNANSWERED_PER_ADDRESS`] waiting, else the oldest of all when
    /// [`MOST_UNANSWERED`] wait.
    fn insert(&mut self, id: u64, asked: Asked, origin: Origin, read: Instant) -> Option<Asked> {
        self.remove(id); // an id read twice (anyone can write to the stream)
        let own = self.per_address.get(&origin).copied().unwrap_or(0);
        let make_way = if own >= origin.cap(MOST_UNANSWERED_PER_ADDRESS) {
            (self.by_id.iter())
                .find(|(_, sent)| sent.origin == origin)
                .map(|(id, _)| *id)
        } else if self.by_id.len() >= MOST_UNANSWERED {
            self.by_id.keys().next().copied()
        } else {
            None
        };
        let dropped = make_way.and_then(|oldest| self.remove(oldest));
        *self.per_address.entry(origin).or_default() += 1;
        let sent = Sent {
            asked,
            origin,
            read,
        };
        self.by_id.insert(id, sent);
        dropped
    }

    /// Message `id`, no longer awaited, and its address's count with it.
    fn remove(&mut self, id: u64) -> Option<Asked> {
        let sent = self.by_id.remove(&id)?;
        if let Count::Occupied(mut count) = self.per_address.entry(sent.origin) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
        Some(sent.asked)
    }

    /// The message `receipt` answers, no longer awaited: `None` if it was given
    /// up, or the receipt names another sender or target (anyone who can write
    /// to the stream can write a receipt).
    fn answered(&mut self, receipt: &Receipt) -> Option<(u64, Asked)> {
        let sent = self.by_id.get(&receipt.of)?;
        if sent.asked.sender() != receipt.sender || sent.asked.target() != receipt.target {
            return None;
        }
        Some((receipt.of, self.remove(receipt.of)?))
    }

    /// Those for a client of node `node`, no longer awaited.
    fn of_node(&mut self, node: u64) -> Vec<Asked> {
        let ids: Vec<u64> = (self.by_id.iter())
            .filter(|(_, sent)| node_of(sent.asked.target()) == node)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Those read [`RECEIPT_PATIENCE`] or longer before `now`, no longer
    /// awaited. Read in the stream's order, so the oldest come first.
    fn late(&mut self, now: Instant) -> Vec<Asked> {
        let mut late = Vec::new();
        while let Some((&id, oldest)) = self.by_id.first_key_value() {
            if now.duration_since(oldest.read) < RECEIPT_PATIENCE {
                break;
            }
            late.extend(self.remove(id));
        }
        late
    }

    /// When the oldest is given up, if any awaits.
    fn due(&self) -> Option<Instant> {
        let (_, oldest) = self.by_id.first_key_value()?;
        Some(oldest.read + RECEIPT_PATIENCE)
    }
}

impl Hub {
    /// A direct message in the cluster's order, numbered `id` at `ts`. The
    /// target's node delivers it, and answers a sender of another node with a
    /// receipt; the sender's node awaits that receipt for the sender's copy. When
    /// both are here, the copy (or the error) goes at once.
    pub(super) fn relayed_direct(&mut self, id: u64, ts: u64, direct: DirectMessage) {
        self.last_message_id = self.last_message_id.max(id);
        let Some(node) = self.cluster.as_ref().map(|view| view.node()) else {
            return;
        };
        let (from, to) = (direct.from, direct.to);
        if node_of(to) == node {
            let delivered = self.heard_from(from) && self.direct_to_target(id, ts, &direct);
            if node_of(from) != node {
                let receipt = Receipt {
                    of: id,
                    target: to,
                    sender: from,
                    delivered,
                };
                return self.answer(&receipt);
            }
            if delivered {
                self.direct_to_sender(id, ts, &direct);
            } else {
                self.reply_error(from, &InputError::NoSuchClient(to));
            }
            return;
        }
        if node_of(from) == node {
            self.await_receipt(id, Asked::Direct { ts, direct });
        }
    }

    /// An admin's kick in the cluster's order, numbered `id`: the target's node
    /// closes the target, and answers a kicker of another node with a receipt.
    /// What the kicker hears of a kick that closed its target is what it would
    /// on one node: the notification, if it shares the target's room.
    pub(super) fn relayed_kick(&mut self, id: u64, target: ClientId, by: ClientId) {
        self.last_message_id = self.last_message_id.max(id);
        let Some(node) = self.cluster.as_ref().map(|view| view.node()) else {
            return;
        };
        if node_of(target) == node {
            let here = self.heard_from(by) && self.clients.contains_key(&target);
            if here {
                self.kick_out(target, by);
            }
            if node_of(by) != node {
                let receipt = Receipt {
                    of: id,
                    target,
                    sender: by,
                    delivered: here,
                };
                self.answer(&receipt);
            } else if !here {
                self.reply_error(by, &InputError::NoSuchClient(target));
            }
            return;
        }
        if node_of(by) == node {
            self.await_receipt(id, Asked::Kick { target, by });
        }
    }

    /// Whether what `sender` sends this node's clients is theirs: not when it is
    /// another node's client and this node was let go where it is read (the
    /// sender's node refused it then: "no connection").
    fn heard_from(&self, sender: ClientId) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|view| node_of(sender) == view.node() || view.is_alive(view.node()))
    }

    /// Message `id` of a client here, read back from the stream, for a client
    /// of another node: it awaits that node's receipt, unless that node is not
    /// alive as of this entry (no receipt would come: refused now).
    fn await_receipt(&mut self, id: u64, asked: Asked) {
        let (sender, target) = (asked.sender(), asked.target());
        let Some(origin) = self
            .clients
            .get(&sender)
            .map(|client| Origin::of(client.address))
        else {
            return; // left meanwhile: nobody to tell
        };
        let Some(view) = &mut self.cluster else {
            return;
        };
        if !view.is_alive(node_of(target)) {
            return self.reply_error(sender, &InputError::NoSuchClient(target));
        }
        if let Some(oldest) = view.unanswered.insert(id, asked, origin, Instant::now()) {
            self.reply_error(oldest.sender(), &InputError::Unconfirmed(oldest.target()));
        }
    }

    /// A receipt in the cluster's order, after entry `entry`: for a client here,
    /// the sender's copy of a message its target got, or an error.
    pub(super) fn relayed_receipt(&mut self, entry: u64, receipt: &Receipt) {
        self.last_message_id = self.last_message_id.max(entry);
        let Some(view) = &mut self.cluster else {
            return;
        };
        if node_of(receipt.sender) != view.node() {
            return;
        }
        let Some((id, asked)) = view.unanswered.answered(receipt) else {
            return; // given up on already
        };
        match asked {
            Asked::Direct { ts, direct } if receipt.delivered => {
                self.direct_to_sender(id, ts, &direct);
            }
            Asked::Kick { .. } if receipt.delivered => {}
            _ => self.reply_error(receipt.sender, &InputError::NoSuchClient(receipt.target)),
        }
    }

    /// Hands `receipt` to `redis-out`. If it has no room, the receipt is lost,
    /// and the sender's node gives up after [`RECEIPT_PATIENCE`].
    fn answer(&mut self, receipt: &Receipt) {
        if let Some(view) = &self.cluster {
            view.offer(Publish::receipt(receipt, unix_millis()));
        }
    }

    /// Node `node` is gone: what awaits its answer never gets one, and its
    /// targets are no connection now (a receipt it appended would have come
    /// before its `gone` entry).
    pub(super) fn refuse_unanswered_of(&mut self, node: u64) {
        let Some(view) = &mut self.cluster else {
            return;
        };
        for asked in view.unanswered.of_node(node) {
            self.reply_error(asked.sender(), &InputError::NoSuchClient(asked.target()));
        }
    }

    /// When the oldest message awaiting a receipt is given up, if one awaits:
    /// the hub wakes for it.
    pub(super) fn receipt_due(&self) -> Option<Instant> {
        self.cluster.as_ref()?.unanswered.due()
    }

    /// What has awaited its receipt for [`RECEIPT_PATIENCE`] at `now` is given
    /// up: its sender is told delivery could not be confirmed.
    pub(super) fn give_up_late_receipts(&mut self, now: Instant) {
        let Some(view) = &mut self.cluster else {
            return;
        };
        for asked in view.unanswered.late(now) {
            self.reply_error(asked.sender(), &InputError::Unconfirmed(asked.target()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(n: u64) -> Asked {
        Asked::Kick {
            target: ClientId((2 << 32) + n),
            by: ClientId((1 << 32) + 1),
        }
    }

    #[test]
    fn past_the_cap_of_all_the_oldest_of_all_makes_way_whatever_its_address() {
        let mut waiting = Unanswered::default();
        let now = Instant::now();
        // Every address under its own cap.
        let address = |n: u64| Origin::of([10, 0, (n >> 8) as u8, n as u8].into());
        for n in 0..MOST_UNANSWERED as u64 {
            assert!(waiting.insert(n, to(n), address(n % 16), now).is_none());
        }
        let dropped = waiting.insert(5_000, to(5_000), address(99), now);
        assert_eq!(dropped.map(|asked| asked.target()), Some(to(0).target()));
        assert_eq!(waiting.by_id.len(), MOST_UNANSWERED);
        // The counts follow what is removed, whichever way.
        assert_eq!(waiting.per_address[&address(0)], MOST_UNANSWERED / 16 - 1);
        let late = waiting.late(now + RECEIPT_PATIENCE);
        assert_eq!(late.len(), MOST_UNANSWERED);
        assert!(waiting.per_address.is_empty() && waiting.due().is_none());
    }
}
