//! The stream's entries: one for each batch a node appends, its items (the
//! messages, kicks, logins, seats and receipts of the batch) in one field as
//! JSON.
//!
//! One entry per batch rather than one per message is most of what keeps Redis
//! cheap: every node reads every entry, and Redis' work for an entry (finding
//! it, writing its fields to each reader) hardly grows with its length. So a
//! batch of fifty messages costs Redis about what one message does.
//!
//! An entry has three fields: `node`, the node that appended it (or, for a dead
//! node let go by another, the dead one); `said`, how many of its items took
//! message ids; and `items`. Its id is `<the last id it took>-1`, so its items
//! that take ids (messages, direct messages, kicks) have the `said` ids up to
//! it, in their order. An entry whose items take none (logins, seats,
//! receipts) is `<the last id given>-2`, `-3`, …, after the entry before it:
//! the ids the clients see follow each other with nothing between them.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::event::{DirectMessage, Entry, Event, Location, Publish, Receipt, RelayedMessage};
use crate::protocol::{self, ClientId, NamedClient};
use crate::socketio;

/// One thing a batch says (a message, a kick, a login, a seat, every seat of a
/// node, a receipt, or a dead node let go), with short keys (every node reads every item). What
/// [`Publish`] holds; a field at its default is left out.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Item<'a> {
    /// What it is: see [`kind_of`].
    #[serde(rename = "k", default, skip_serializing_if = "str::is_empty")]
    pub kind: Cow<'a, str>,
    #[serde(rename = "r", default, skip_serializing_if = "str::is_empty")]
    pub room: Cow<'a, str>,
    #[serde(rename = "f", default)]
    pub from: u64,
    #[serde(rename = "n", default, skip_serializing_if = "str::is_empty")]
    pub name: Cow<'a, str>,
    #[serde(rename = "m", default, skip_serializing_if = "str::is_empty")]
    pub msg: Cow<'a, str>,
    #[serde(rename = "t", default)]
    pub ts: u64,
    #[serde(rename = "e", default, skip_serializing_if = "is_false")]
    pub except_sender: bool,
    /// A direct message's or kick's target.
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
    /// A seats item's list: id, room, name.
    #[serde(rename = "s", default, skip_serializing_if = "Vec::is_empty")]
    pub seats: Vec<(u64, Cow<'a, str>, Cow<'a, str>)>,
    /// A seat or seats item's number among its node's seat changes: only that
    /// node reads it.
    #[serde(rename = "q", default, skip_serializing_if = "is_zero")]
    pub offer: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !b
}

/// How an item's `k` names what it is (a message has none).
pub(super) fn kind_of(entry: Entry) -> &'static str {
    match entry {
        Entry::Said => "",
        Entry::Kick => "kick",
        Entry::Login => "login",
        Entry::Seat => "seat",
        Entry::Seats => "seats",
        Entry::Receipt { delivered: true } => "delivered",
        Entry::Receipt { delivered: false } => "undelivered",
    }
}

/// Whether an item of this kind takes a message id.
pub(super) fn takes_id(entry: Entry) -> bool {
    kind_takes_id(kind_of(entry))
}

/// Whether an item whose `k` is `kind` takes a message id: messages, direct
/// messages and kicks.
fn kind_takes_id(kind: &str) -> bool {
    matches!(kind, "" | "kick")
}

/// `m` as an item.
pub(super) fn item_of(m: &Publish) -> Item<'_> {
    Item {
        kind: Cow::Borrowed(kind_of(m.kind)),
        room: Cow::Borrowed(&m.room),
        from: m.from.0,
        name: Cow::Borrowed(&m.name),
        msg: Cow::Borrowed(&m.msg),
        ts: m.ts,
        except_sender: m.except_sender,
        to: m.to.map(|to| to.0),
        seats: (m.seats.iter())
            .map(|(id, seat)| (id.0, Cow::Borrowed(&*seat.room), Cow::Borrowed(&*seat.name)))
            .collect(),
        offer: m.offer,
    }
}

/// The `items` field of a batch.
pub(super) fn items_of(batch: &[Publish]) -> String {
    let items: Vec<Item<'_>> = batch.iter().map(item_of).collect();
    serde_json::to_string(&items).expect("numbers and strings")
}

/// A stream entry as the hub's events, in its items' order, or `None` for one
/// that is not a batch within the protocol's bounds (all of it: one item out of
/// bounds makes the whole entry suspect). Every node checks what it appends, but
/// an entry may come from anywhere that can write to Redis (another version,
/// another `--max-message`, a typo at `redis-cli`), and the hub's bounds on a
/// batch rely on the bounds of a message.
pub(super) fn events(id: &str, fields: &HashMap<String, String>) -> Option<Vec<Event>> {
    let field = |key: &str| fields.get(key);
    let node: u64 = field("node")?.parse().ok()?;
    let taken = ids_taken_in(fields)?;
    let items: Vec<Item<'static>> = serde_json::from_str(field("items")?).ok()?;
    let last: u64 = id.split('-').next()?.parse().ok()?;
    if last >= MAX_MESSAGE_ID
        || taken > last
        || items.len() < taken as usize
        || items.len() > BATCH_MOST
    {
        return None;
    }
    // The id the next item that takes one takes; before it, the last given.
    let mut next = last + 1 - taken;
    let mut events = Vec::with_capacity(items.len());
    for item in items {
        let takes = kind_takes_id(&item.kind);
        if takes && next > last {
            return None; // more items than ids
        }
        let number = if takes { next } else { next - 1 };
        next += u64::from(takes);
        events.push(relayed(number, node, item)?);
    }
    (next == last + 1).then_some(events)
}

/// An entry as the scripts publish it on [`LIVE`](super::LIVE) when they append
/// it: its id, `node` and `said` a line each, then `items` (JSON, which holds no
/// line break). `None` for a message no script of ours published.
pub(super) fn published(payload: &[u8]) -> Option<(String, HashMap<String, String>)> {
    let mut lines = std::str::from_utf8(payload).ok()?.splitn(4, '\n');
    let id = lines.next()?.to_string();
    let fields = ["node", "said", "items"]
        .into_iter()
        .map(|field| Some((field.to_string(), lines.next()?.to_string())))
        .collect::<Option<HashMap<_, _>>>()?;
    Some((id, fields))
}

/// How many ids an entry's items took, its field `said` (0 for an entry
/// without it).
pub(super) fn ids_taken_in(fields: &HashMap<String, String>) -> Option<u64> {
    fields
        .get("said")
        .map_or(Some(0), |taken| taken.parse().ok())
}

/// The most items in one batch (a node appends no more; a reader takes no
/// more).
pub(super) const BATCH_MOST: usize = 512;

/// Past the largest message id (2^53 - 1, JavaScript's largest exact integer).
pub(super) const MAX_MESSAGE_ID: u64 = 1 << 53;

/// One item as the hub's event: numbered `number` (its own id, for an item that
/// takes one; else the last id before it), of node `node`'s entry.
fn relayed(number: u64, node: u64, item: Item<'static>) -> Option<Event> {
    match &*item.kind {
        "" => message(number, item),
        "kick" => Some(Event::RelayedKick {
            id: number,
            target: ClientId(item.to?),
            by: ClientId(item.from),
        }),
        kind @ ("delivered" | "undelivered") => {
            let of: u64 = item.msg.parse().ok()?;
            let receipt = Receipt {
                of: Some(of).filter(|of| (1..MAX_MESSAGE_ID).contains(of))?,
                target: ClientId(item.from),
                sender: ClientId(item.to?),
                delivered: kind == "delivered",
            };
            Some(Event::RelayedReceipt {
                entry: number,
                receipt,
            })
        }
        "gone" => Some(Event::RelayedGone {
            entry: number,
            node,
        }),
        "login" => {
            let (room, client) = checked_seat(item.from, &item.room, &item.name)?;
            Some(Event::RelayedLogin {
                id: number,
                room,
                client,
            })
        }
        "seat" => {
            let seat = if item.room.is_empty() {
                None
            } else {
                let (room, client) = checked_seat(item.from, &item.room, &item.name)?;
                Some(Location {
                    room,
                    name: client.name,
                })
            };
            Some(Event::RelayedSeat {
                entry: number,
                id: ClientId(item.from),
                seat,
                offer: item.offer,
            })
        }
        "seats" => Some(Event::RelayedSeats {
            entry: number,
            node,
            offer: item.offer,
            seats: (item.seats.into_iter())
                .filter_map(|(id, room, name)| checked_seat(id, &room, &name))
                .map(|(room, client)| {
                    (
                        client.id,
                        Location {
                            room,
                            name: client.name,
                        },
                    )
                })
                .collect(),
        }),
        _ => None,
    }
}

/// A message item numbered `id`: a room message, or with a target a direct one.
fn message(id: u64, item: Item<'static>) -> Option<Event> {
    protocol::check_message(&item.name, &item.msg).ok()?;
    if let Some(to) = item.to {
        return Some(Event::RelayedDirect {
            id,
            ts: item.ts,
            direct: DirectMessage {
                from: ClientId(item.from),
                name: item.name.into_owned(),
                to: ClientId(to),
                msg: item.msg.into_owned(),
            },
        });
    }
    if !socketio::is_hub_room(&item.room) {
        return None;
    }
    Some(Event::Relayed(RelayedMessage {
        id,
        ts: item.ts,
        from: ClientId(item.from),
        room: item.room.into_owned(),
        name: item.name.into_owned(),
        msg: item.msg.into_owned(),
        except_sender: item.except_sender,
    }))
}

/// A seat within the protocol's bounds: a name goes into notifications, whose
/// size the hub's batches count on.
pub(super) fn checked_seat(id: u64, room: &str, name: &str) -> Option<(String, NamedClient)> {
    if protocol::check_name(name).is_err() || !socketio::is_hub_room(room) || id == 0 {
        return None;
    }
    let client = NamedClient {
        id: ClientId(id),
        name: name.to_string(),
    };
    Some((room.to_string(), client))
}
