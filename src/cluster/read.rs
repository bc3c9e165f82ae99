//! `redis-in`: follows the stream from where this node left off and hands the
//! items of every entry (a batch) to the hub as events, once it has checked them
//! against the protocol's bounds; notices when Redis stops answering, and what
//! is gone for good.
//!
//! # Why entries come by `PUBLISH`, and the stream is read to catch up
//!
//! Every request costs Redis a wake-up, a read and a write, whatever it asks:
//! on a small machine that is about 23 µs of CPU, where the command itself
//! (a `PING`, an `XREAD` of one entry) costs one or two. A node blocked in
//! `XREAD` asks again after every entry it gets, so each batch cost Redis one
//! request per node on top of its append. So the scripts that append an entry
//! also publish it, in the same step, on [`LIVE`] ([`published`]), and Redis
//! writes it to every node subscribed there with no request of theirs: in the
//! order of the stream, since each script runs whole before the next.
//!
//! Pub/sub keeps nothing, so the stream stays what orders and keeps. A node
//! subscribes first, then reads the stream after the last entry it handed over,
//! until caught up; an entry appended after the subscription comes both ways,
//! and its published copy is skipped (its id is not past what was handed
//! over). Then it hands over what is published. A node whose subscription
//! fails, or falls behind (Redis drops a subscriber whose unread messages pass
//! its `client-output-buffer-limit pubsub`, 32 MB by default), subscribes again
//! and catches up from the stream again, with no gap and no duplicate. An entry
//! written into the stream by hand is published by nobody: a node reads it only
//! when it next catches up.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::Sender;

use super::entry::{MAX_MESSAGE_ID, events, ids_taken_in, published};
use super::{LIFTED, LIVE, Link, RedisAccess, STREAM, Seating, Snapshot, connect};
use crate::event::Event;
use crate::logging::{Noisy, Untrusted, limited};

/// Entries (batches) one `XREAD` of the catch-up returns at most.
pub(super) const READ_COUNT: usize = 64;
/// How long the subscription may be quiet before Redis is asked whether it is
/// still there (and `redis-in` looks at whether the server is stopping).
pub(super) const READ_BLOCK: Duration = Duration::from_millis(1_000);

/// `redis-in`: hands every entry after `after` to the hub, until `stop`.
pub(super) fn read_stream(
    redis: &RedisAccess,
    after: String,
    hub: &Sender<Event>,
    highest: &AtomicU64,
    stop: &AtomicBool,
) {
    let mut link = Link::new(redis);
    let mut reading = Reading {
        // The last message id handed over, when there is one to follow.
        last: message_id(&after).filter(|n| *n > 0),
        after,
        resnapshot: false,
        linked: true,
    };
    while !stop.load(Ordering::Relaxed) {
        match reading.follow(redis, &mut link, hub, highest, stop) {
            Err(Halt::Done) => return,
            Err(Halt::Lost(e)) => {
                reading.tell_linked(false, hub);
                link.failed("read failed", &e);
            }
        }
    }
}

/// Why `redis-in` stopped following the stream.
enum Halt {
    /// The server is stopping, or the hub is gone: the thread ends.
    Done,
    /// Redis failed or does not answer: follow again, on new connections.
    Lost(redis::RedisError),
}

impl From<redis::RedisError> for Halt {
    fn from(e: redis::RedisError) -> Halt {
        Halt::Lost(e)
    }
}

/// Where `redis-in` is in the stream.
struct Reading {
    /// The last entry handed over.
    after: String,
    /// The last message id handed over, when there is one to follow. Message
    /// ids are consecutive along the stream (each is taken by the append that
    /// writes its entry), so a jump past it means entries this node will never
    /// read: trimmed (`MINID ~`, `MAXLEN ~`) while it was cut off, or lost with Redis' data.
    last: Option<u64>,
    /// Seat entries may be gone unread: once caught up, where everyone sits is
    /// read from the hashes ([`resnapshot`]).
    resnapshot: bool,
    /// Whether the hub believes Redis answers: it is told when that changes.
    linked: bool,
}

impl Reading {
    /// Follows the stream on a subscription of its own, until the server stops,
    /// the hub is gone, or Redis fails.
    fn follow(
        &mut self,
        redis: &RedisAccess,
        link: &mut Link<'_>,
        hub: &Sender<Event>,
        highest: &AtomicU64,
        stop: &AtomicBool,
    ) -> Result<Infallible, Halt> {
        let mut con = connect(redis)?;
        let mut live = con.as_pubsub();
        live.subscribe(LIVE)?;
        self.catch_up(link, hub, highest)?;
        live.set_read_timeout(Some(READ_BLOCK))?;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err(Halt::Done);
            }
            let message = match live.get_message() {
                Ok(message) => message,
                Err(e) if e.is_io_error() => {
                    // Quiet for a while, or a read cut short (`EINTR` when the
                    // process was stopped and continued: `read_on` in
                    // `reader/stream.rs`): Redis answers a `PING` on the
                    // subscription, or is gone (a deadline of its own: a
                    // loaded Redis may take a moment).
                    live.set_read_timeout(Some(ANSWER_PATIENCE))?;
                    live.ping::<redis::Value>()?;
                    live.set_read_timeout(Some(READ_BLOCK))?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let Some((id, fields)) = published(message.get_payload_bytes()) else {
                // Anyone who can publish on the channel chooses these.
                limited!(
                    Noisy::BadStreamEntry,
                    "redis: a message on {LIVE} is not an entry of {STREAM}: skipped"
                );
                continue;
            };
            // Already handed over from the stream, while catching up.
            if entry_order(&id) <= entry_order(&self.after) {
                continue;
            }
            self.hand_over(vec![(id, fields)], link, hub, highest)?;
            if self.resnapshot {
                resnapshot(link, hub)?;
                self.resnapshot = false;
            }
        }
    }

    /// Reads the stream after the last entry handed over until caught up: what
    /// was appended before the subscription, or while there was none.
    fn catch_up(
        &mut self,
        link: &mut Link<'_>,
        hub: &Sender<Event>,
        highest: &AtomicU64,
    ) -> Result<(), Halt> {
        self.notice_a_reset(link.get()?)?;
        loop {
            let reply = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("STREAMS")
                .arg(STREAM)
                .arg(&self.after)
                .query::<redis::Value>(link.get()?)?;
            // Redis answers: the hub hears so before what it missed meanwhile.
            self.tell_linked(true, hub);
            // [[stream, [entry, ...]]], or nil when there is nothing new.
            let list = match reply {
                redis::Value::Array(streams) => {
                    streams.into_iter().find_map(|stream| match stream {
                        redis::Value::Array(mut parts) => parts.pop(),
                        _ => None,
                    })
                }
                _ => None,
            };
            let read = list.map(entries).unwrap_or_default();
            let caught_up = read.len() < READ_COUNT;
            self.hand_over(read, link, hub, highest)?;
            if caught_up {
                break;
            }
        }
        if self.resnapshot {
            resnapshot(link, hub)?;
            self.resnapshot = false;
        }
        Ok(())
    }

    /// Tells the hub when whether Redis answers changes.
    fn tell_linked(&mut self, up: bool, hub: &Sender<Event>) {
        if self.linked != up {
            self.linked = up;
            let _ = hub.send(Event::Linked { up });
        }
    }

    /// Hands `read` to the hub; [`Halt::Done`] when the hub is gone.
    fn hand_over(
        &mut self,
        read: Vec<(String, HashMap<String, String>)>,
        link: &mut Link<'_>,
        hub: &Sender<Event>,
        highest: &AtomicU64,
    ) -> Result<(), Halt> {
        for (id, fields) in read {
            if let Some(n) = message_id(&id) {
                // Only an entry whose items took ids says they were given: one
                // of seats (`<the last id>-2`…) follows whatever came last, even
                // a counter started again with no message yet.
                let taken = ids_taken_in(&fields).unwrap_or(0);
                if (1..=n).contains(&taken) {
                    let first = n + 1 - taken;
                    if let Some(last) = self.last
                        && first > last + 1
                        && missed(link.get(), last, first)
                    {
                        self.resnapshot = true;
                        hub.send(Event::Missed { upto: first - 1 })
                            .map_err(|_| Halt::Done)?;
                    }
                    self.last = Some(n);
                }
                highest.fetch_max(n, Ordering::Relaxed);
            }
            self.after = id.clone();
            let Some(events) = events(&id, &fields) else {
                // Anyone who can write to the stream chooses these.
                limited!(
                    Noisy::BadStreamEntry,
                    "redis: entry \"{}\" of {STREAM} is not a batch of messages: skipped",
                    Untrusted(&id)
                );
                continue;
            };
            for event in events {
                hub.send(event).map_err(|_| Halt::Done)?;
            }
        }
        Ok(())
    }

    /// On a new connection: a stream whose last entry is before the one this
    /// node read last has started again (Redis lost its data, or came back from
    /// an older copy), and `XREAD` after it would wait for entries it already
    /// has. Reading goes on from its last entry, and where everyone sits is read
    /// again.
    fn notice_a_reset(&mut self, c: &mut redis::Connection) -> redis::RedisResult<()> {
        let top: redis::Value = redis::cmd("XREVRANGE")
            .arg(STREAM)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(c)?;
        let top = entries(top)
            .pop()
            .map_or_else(|| "0-0".to_string(), |(id, _)| id);
        if entry_order(&top) < entry_order(&self.after) {
            log::warn!(
                "redis: {STREAM} ends before the entry this node read last: reading on from its end"
            );
            self.after = top;
            self.resnapshot = true;
        }
        Ok(())
    }
}

/// How long Redis may take to answer a `PING` on the subscription.
const ANSWER_PATIENCE: Duration = Duration::from_secs(5);

/// A stream entry id as a pair of numbers, for comparing.
fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Hands the hub where everyone sits now, as the seat hashes say (they change
/// with the seat entries, in the same step).
fn resnapshot(link: &mut Link<'_>, hub: &Sender<Event>) -> redis::RedisResult<()> {
    let Seating { seats, alive } = Snapshot::take(link.get()?, 1)?.seating();
    let _ = hub.send(Event::SeatsNow {
        seats,
        nodes: alive,
    });
    Ok(())
}

/// Whether the ids after `last` and before `n`, which this node never read, were
/// messages it missed. Ids are consecutive along the stream, so they were,
/// unless the jump is the id counter starting again after Redis lost its data
/// ([`RAISE_IDS`]). Then the ids up to the highest that the node which started
/// it again had seen were messages, and so are those after that point; of the
/// ids in between nothing is known (most were never given), and nobody is told
/// of a loss that may be none. When Redis cannot say, the jump is a loss: the
/// safe side.
fn missed(con: redis::RedisResult<&mut redis::Connection>, last: u64, n: u64) -> bool {
    let lifted = con.and_then(|c| {
        redis::cmd("HMGET")
            .arg(LIFTED)
            .arg("at")
            .arg("seen")
            .query::<(Option<u64>, Option<u64>)>(c)
    });
    match lifted {
        Ok((Some(at), Some(seen))) if last <= at && at < n => last < seen || n > at + 1,
        _ => true,
    }
}

/// The entries of an `XRANGE`-shaped reply: `[[id, [field, value, ...]], ...]`.
pub(super) fn entries(value: redis::Value) -> Vec<(String, HashMap<String, String>)> {
    let redis::Value::Array(list) = value else {
        return Vec::new();
    };
    list.into_iter()
        .filter_map(|entry| {
            let redis::Value::Array(mut pair) = entry else {
                return None;
            };
            let fields = pair.pop()?;
            let id = text(pair.pop()?)?;
            // An entry whose fields are not ours still moves the reader past it.
            let mut map = HashMap::new();
            if let redis::Value::Array(flat) = fields {
                let mut flat = flat.into_iter();
                while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                    if let (Some(k), Some(v)) = (text(k), text(v)) {
                        map.insert(k, v);
                    }
                }
            }
            Some((id, map))
        })
        .collect()
}

fn text(value: redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        redis::Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// The last message id in a stream entry's id, `<id>-<n>`; `None` for one no
/// node writes: 0 (the counter's first `INCR` gives 1), which would underflow
/// the hub's arithmetic (`0-1` typed at `redis-cli`), and 2^53 or more, which a
/// page's JavaScript cannot hold exactly and which would overflow the hub's
/// count of its own ids (the counter stays below it until 2255, see "When Redis
/// lost its data").
pub(super) fn message_id(entry: &str) -> Option<u64> {
    let id: u64 = entry.split('-').next()?.parse().ok()?;
    (1..MAX_MESSAGE_ID).contains(&id).then_some(id)
}
