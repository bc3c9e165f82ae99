//! `redis-out`: appends what this node's clients said to the stream, a batch
//! (gathered until the next 20 ms tick when messages come often) in one entry,
//! one round trip and one call of a script, each batch numbered so that a
//! batch sent again is appended once; and tells a sender "not sent" only when
//! Redis is known not to hold it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::entry::{BATCH_MOST, items_of, takes_id};
use super::{
    IDS, LIFTED, LIVE, PRESENCE, PRESENCE_EVERY, PRESENCE_TTL, RAISE_IDS, REDIS_BACKOFF,
    RedisAccess, STREAM, STREAM_KEEPS, connect, pause_after,
};
use crate::backoff::Backoff;
use crate::event::{Entry, Event, Publish};
use crate::logging::Untrusted;
use crate::protocol::unix_millis;

/// Appends a batch as one entry ([`entry`](super::entry)) under the next ids,
/// atomically: KEYS[1] the stream, KEYS[2] the id counter, KEYS[3] the number of
/// the last batch this process appended, KEYS[4] [`LIFTED`]; ARGV[1] how many
/// entries (and message ids) the stream keeps, ARGV[2] the batch's number (its
/// first item's in this process), ARGV[3] this node's seat hash ([`PRESENCE`]),
/// ARGV[4] its time to live in ms, ARGV[5] the node, ARGV[6] how many ids the
/// items take, ARGV[7] the items, ARGV[8] the channel it is published on
/// ([`LIVE`]); then the seat hash's changes, three arguments each: `set`, a
/// client and its room and name; `del` and a client; `all` (every seat goes).
///
/// The ids are taken as one block, and the entry is `<the last of them>-1`; a
/// batch that takes none (logins, seats and receipts: no client sees one as a
/// message, and the ids the clients see follow each other) is `<the last id
/// given>-2`, `-3`, …, after the stream's last entry.
///
/// The batch is one call and one entry, which is most of what a message costs
/// Redis; and one `PUBLISH` of it in the same step, which hands it to every
/// node following the stream with no request of theirs (`read.rs` says why).
/// A batch whose number is not past the last one appended is skipped, so a
/// batch sent again after a lost answer is appended once; the number is written
/// after the entry, so it is also where `redis-out` learns whether a refused
/// batch is in ([`not_appended`]). A script is not rolled back, but nothing can
/// fail half-way here: the `XADD` is its first write (Redis refuses a write for
/// memory only before the first), and the only command that can fail (its id
/// taken by an entry nobody numbered); the counter is raised after it. Ids are
/// written with `%.0f`: Lua's own `..` writes a number of more than 14 digits
/// as `1.7e+15`, which no stream takes, and ids that long follow a loss of
/// Redis' data ([`RAISE_IDS`]).
///
/// The stream keeps about ARGV[1] entries (`MAXLEN ~`) and the entries of the
/// last ARGV[1] ids (`MINID ~`): a batch of many messages is one entry. Not by
/// id within ARGV[1] of where the counter started again after a loss of data
/// ([`LIFTED`]): the ids jumped there, and everything before would go at once.
///
/// The seat hash changes in the same step as the seat items reach the stream,
/// so the hashes are always what the stream says up to its last entry: a node
/// that joins reads both at once.
const APPEND: &str = "local done = redis.call('GET', KEYS[3]) \
    if done and tonumber(done) >= tonumber(ARGV[2]) then return 0 end \
    local taken = tonumber(ARGV[6]) \
    local id, seq = tonumber(redis.call('GET', KEYS[2]) or '0'), 1 \
    if taken > 0 then \
    id = id + taken \
    else \
    seq = 2 \
    local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1] \
    if top then \
    local dash = string.find(top[1], '-', 1, true) \
    local tid = tonumber(string.sub(top[1], 1, dash - 1)) \
    if tid >= id then id, seq = tid, math.max(tonumber(string.sub(top[1], dash + 1)), 1) + 1 end \
    end \
    end \
    local entry = string.format('%.0f', id) .. '-' .. seq \
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], entry, 'node', ARGV[5], 'said', ARGV[6], 'items', ARGV[7]) \
    redis.call('PUBLISH', ARGV[8], entry .. '\\n' .. ARGV[5] .. '\\n' .. ARGV[6] .. '\\n' .. ARGV[7]) \
    if taken > 0 then \
    redis.call('SET', KEYS[2], string.format('%.0f', id)) \
    local keeps = tonumber(ARGV[1]) \
    local lifted = tonumber(redis.call('HGET', KEYS[4], 'at') or '0') \
    if id - keeps > lifted then \
    redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%.0f', id - keeps)) \
    end \
    end \
    if #ARGV > 8 then \
    for i = 9, #ARGV, 3 do \
    if ARGV[i] == 'all' then \
    redis.call('DEL', ARGV[3]) \
    redis.call('HSET', ARGV[3], '0', '') \
    elseif ARGV[i] == 'del' then \
    redis.call('HDEL', ARGV[3], ARGV[i + 1]) \
    else \
    redis.call('HSET', ARGV[3], ARGV[i + 1], ARGV[i + 2]) \
    end \
    end \
    redis.call('PEXPIRE', ARGV[3], ARGV[4]) \
    end \
    redis.call('SET', KEYS[3], ARGV[2], 'EX', 86400) \
    return id";

/// Whether `item` is a seat change of this node's (its client waits for it).
fn is_seat(item: &Publish) -> bool {
    matches!(item.kind, Entry::Seat | Entry::Seats)
}

/// The longest a batch waits for company after its first item, when items
/// come often enough to share it ([`Pace`]): it waits until the next tick of
/// a clock that ticks every `GATHER` ([`to_next_tick`]). Each batch costs
/// Redis about the same, a wake-up, a script call and a write to every node,
/// whatever its length; at 500 messages/s per node this wait makes batches of
/// about 13, and Redis' work per message about half of what it is with 5 ms
/// (docs/PERFORMANCE.md, "Batches paced by the rate"). Nobody notices 20 ms
/// in a chat.
const GATHER: Duration = Duration::from_millis(20);

/// A batch this large is appended without waiting for more.
const BATCH_ENOUGH: usize = 16;

/// How often items must come for a batch to wait for company: at least one
/// more expected within [`GATHER`] (50 items a second or more). Slower, a
/// batch would mostly wait for nothing, and a quiet chat's message goes at
/// once.
const WORTH_WAITING: Duration = GATHER;

/// How fast items come, for how long a batch waits: the gap between the items
/// `redis-out` takes, a moving average that weighs the last eight or so most
/// (about thirty fast items turn a quiet pace into a busy one).
#[derive(Debug)]
struct Pace {
    /// The gap between items, smoothed.
    gap: Duration,
    /// When the last item came.
    last: Option<Instant>,
}

impl Default for Pace {
    /// Nothing seen yet: as after a long quiet.
    fn default() -> Pace {
        Pace {
            gap: QUIET,
            last: None,
        }
    }
}

/// The gap counted for an item after a long quiet: one gap that long is
/// enough to stop waiting, whatever came before it.
const QUIET: Duration = Duration::from_secs(1);

impl Pace {
    /// An item was handed over `at`.
    fn arrived(&mut self, at: Instant) {
        if let Some(last) = self.last.replace(at) {
            let gap = at.saturating_duration_since(last).min(QUIET);
            // A moving average: 7/8 of the old and 1/8 of the new gap.
            self.gap = (self.gap * 7 + gap) / 8;
        }
    }

    /// Until when a batch whose first item came `at` (`wall`, the system's
    /// time then, since the Unix epoch) waits for more: the next tick of the
    /// wall clock, every [`GATHER`] (see [`to_next_tick`]).
    fn wait_until(&self, at: Instant, wall: Duration) -> Instant {
        if self.gap <= WORTH_WAITING {
            at + to_next_tick(wall)
        } else {
            at
        }
    }
}

/// From `wall` (since the Unix epoch) to the next multiple of [`GATHER`]: more
/// than nothing, at most `GATHER`.
///
/// Why a tick every node shares, rather than `GATHER` after a batch's first
/// item: a busy chat's batches then reach Redis together, from every node at
/// once, and a Redis woken by the first often finds the others already there.
/// A Redis that sleeps between requests pays for each wake-up several times
/// what the request itself costs. With 3 nodes at the rooms' pace it woke 17%
/// less often and spent 11-16 µs per message instead of 13-26, though batches
/// are a little smaller (the round trip no longer lengthens the wait: 10
/// messages instead of 12 at 500 a second). At a slow pace (100 messages a
/// second per node) batches are smaller still and Redis pays about a fifth
/// more per message, when it is nearly idle anyway (docs/PERFORMANCE.md,
/// "Batches on a shared tick"). No message waits longer than before. Nodes
/// whose clocks disagree only share fewer wake-ups; a clock that jumps moves
/// one tick.
fn to_next_tick(wall: Duration) -> Duration {
    let gather = GATHER.as_nanos();
    let phase = wall.as_nanos() % gather;
    Duration::from_nanos(u64::try_from(gather - phase).unwrap_or(0))
}

/// The bytes of a batch's items, about, past which it takes no more: an entry
/// is what every node reads in one piece
/// ([`READ_COUNT`](super::read::READ_COUNT) of them at most).
pub(super) const BATCH_BYTES: usize = 256 * 1024;

/// Appends node `node`'s first entry, a seats entry with nobody, on `con`
/// before the node serves anyone: from it on, as the other nodes read the
/// stream, the node is alive, and a direct message to one of its clients (an id
/// that can only be learnt from the node) comes after it. Its own key records
/// the one batch, for the script.
pub(super) fn say_joined(con: &mut redis::Connection, node: u64) -> redis::RedisResult<()> {
    let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(APPEND).query(con)?;
    let batch = Batch {
        number: 1,
        messages: vec![Publish::seats(Vec::new(), unix_millis(), 0)],
    };
    append(
        con,
        &sha,
        &format!("threadchat:appended:{node}:joined"),
        node,
        &batch,
    )
}

/// How long `redis-out` goes on trying a batch while Redis does not answer (the
/// connection lost or timed out: the batch may be in, its answer lost). Long
/// enough for a restart of Redis or a blip of the network; after it, the batch's
/// fate cannot be learned, and its senders are told nothing ([`append_messages`]).
const APPEND_PATIENCE: Duration = Duration::from_secs(10);

/// `redis-out`: appends what the hub hands over until the hub is gone.
///
/// A try that fails on the way (the connection lost or timed out) leaves the
/// batch's fate unknown: Redis may have appended it and only the answer was
/// lost, and the other nodes then deliver it. So the batch is sent again, on a
/// new connection, with a growing pause, for as long as Redis does not answer,
/// up to [`APPEND_PATIENCE`]; the script's numbering makes a repeat harmless.
/// The same goes when Redis says "not now" ([`refused`]).
///
/// Redis answering with an error (READONLY, OOM, NOPERM, a script's error) ends
/// the tries at once: another try would get the same answer, and every later
/// message would wait behind the batch. Before anyone is told, Redis is asked
/// which of the batch's messages it holds (an earlier try's answer may have been
/// lost): only the senders of the others hear "not sent".
///
/// When Redis does not answer within the patience, what happened to the batch
/// cannot be learned, and nobody is told anything rather than something that
/// may be false: a message that got in comes back through the stream to its
/// sender, as everyone's does, once the node is back.
pub(super) fn append_messages(
    redis: &RedisAccess,
    node: u64,
    outgoing: &Receiver<Publish>,
    hub: &Sender<Event>,
    highest: &AtomicU64,
) {
    let mut appender = Appender::new(redis, node, highest);
    let mut numbered = 0u64;
    let mut pace = Pace::default();
    // A batch with seats in it that Redis may not hold: the hub is asked to say
    // where all its clients are, once Redis takes a batch again, or after a
    // pause (not at once: Redis may refuse that one too).
    let mut seats_lost = false;
    loop {
        let next = if seats_lost {
            outgoing.recv_timeout(PRESENCE_EVERY)
        } else {
            // Idle, this thread sleeps until there is something to append.
            outgoing.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        let first = match next {
            Ok(first) => first,
            Err(RecvTimeoutError::Timeout) => {
                if std::mem::take(&mut seats_lost) && hub.send(Event::Reannounce).is_err() {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let messages = gather(first, outgoing, &mut pace);
        let batch = Batch {
            number: numbered + 1,
            messages,
        };
        numbered += batch.messages.len() as u64;
        let Err(e) = appender.append_patiently(&batch) else {
            if std::mem::take(&mut seats_lost) && hub.send(Event::Reannounce).is_err() {
                return;
            }
            continue;
        };
        let seats = batch.messages.iter().filter(|m| is_seat(m));
        if let Some(upto) = seats.map(|m| m.offer).max() {
            seats_lost = true;
            // The hub applies now the changes that waited for these.
            if upto > 0 && hub.send(Event::SeatsNotTaken { upto }).is_err() {
                return;
            }
        }
        if refused(&e) {
            appender.tell_unsent(&batch, &e, hub);
        } else {
            log::warn!(
                "redis: {} messages: Redis did not take them within {APPEND_PATIENCE:?} ({}); \
                 whether they were appended cannot be learned, so their senders are told nothing",
                batch.messages.len(),
                Untrusted(&e)
            );
        }
    }
}

/// A batch: `first` and what waits behind it, and when that is less than
/// [`BATCH_ENOUGH`] and items come often ([`Pace`]), what else comes until
/// the next tick ([`to_next_tick`]); up to [`BATCH_MOST`] items and about
/// [`BATCH_BYTES`].
/// Under load, messages wait for each round trip to Redis, and a batch is
/// large without waiting: holding it back then would only slow the chat down.
/// A batch with a seat in it does not wait: its client waits for it to come
/// back (its `welcome` or `joined`, and what it asked next), and joins are
/// few beside messages. Waiting, 1,000 clients that connect and join a room
/// one after another, 8 at a time, took 5 s rather than 0.3 to be seated.
fn gather(first: Publish, outgoing: &Receiver<Publish>, pace: &mut Pace) -> Vec<Publish> {
    let now = Instant::now();
    pace.arrived(now);
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let until = pace.wait_until(now, wall);
    let mut bytes = size_of_item(&first);
    let mut awaited = is_seat(&first);
    let mut messages = vec![first];
    let room =
        |messages: &Vec<Publish>, bytes: usize| messages.len() < BATCH_MOST && bytes < BATCH_BYTES;
    while room(&messages, bytes) {
        let wait = messages.len() < BATCH_ENOUGH && !awaited && Instant::now() < until;
        let next = if wait {
            outgoing.recv_deadline(until).ok()
        } else {
            outgoing.try_recv().ok()
        };
        // Time is up, nothing waits, or the hub is gone: what came is appended
        // (and the next `recv` ends).
        let Some(more) = next else { break };
        pace.arrived(Instant::now());
        awaited |= is_seat(&more);
        bytes += size_of_item(&more);
        messages.push(more);
    }
    messages
}

/// About how many bytes `m` takes in a batch's items.
fn size_of_item(m: &Publish) -> usize {
    64 + m.room.len() + m.name.len() + m.msg.len() + 64 * m.seats.len()
}

/// Messages appended in one call: all of them or none.
struct Batch {
    /// Its first message's number in this process: how Redis tells a batch
    /// sent again from a new one.
    number: u64,
    messages: Vec<Publish>,
}

/// `redis-out`'s end of Redis: its connection (with the script loaded), and the
/// key that records the last batch of this process's that is in.
struct Appender<'a> {
    redis: &'a RedisAccess,
    highest: &'a AtomicU64,
    /// This node's number, which its entries carry.
    node: u64,
    /// The key of the last batch number appended: this process's own, not the node
    /// number's, since after Redis lost its data a node number can be handed out
    /// again.
    appended: String,
    con: Option<(redis::Connection, String)>,
    backoff: Backoff,
}

impl<'a> Appender<'a> {
    fn new(redis: &'a RedisAccess, node: u64, highest: &'a AtomicU64) -> Appender<'a> {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Appender {
            redis,
            highest,
            node,
            appended: format!(
                "threadchat:appended:{node}:{}:{started}",
                std::process::id()
            ),
            con: None,
            backoff: REDIS_BACKOFF,
        }
    }

    /// Appends `batch`, trying again on a new connection while Redis does not
    /// answer, for up to [`APPEND_PATIENCE`]; an error answer ends the tries.
    fn append_patiently(&mut self, batch: &Batch) -> redis::RedisResult<()> {
        let give_up_at = Instant::now() + APPEND_PATIENCE;
        loop {
            let attempt = match self.con.as_mut() {
                Some((c, sha)) => append(c, sha, &self.appended, self.node, batch),
                None => open_appender(self.redis, self.highest).and_then(|(mut c, sha)| {
                    let appended_now = append(&mut c, &sha, &self.appended, self.node, batch);
                    self.con = Some((c, sha));
                    appended_now
                }),
            };
            let Err(e) = attempt else {
                self.backoff.reset();
                return Ok(());
            };
            if refused(&e) {
                // Redis answers: no pause, and the connection serves the question
                // `tell_unsent` asks.
                self.backoff.reset();
                return Err(e);
            }
            self.con = None;
            if Instant::now() >= give_up_at {
                return Err(e);
            }
            pause_after(&mut self.backoff, "append failed", &e);
        }
    }

    /// Redis refused `batch` (`e`): the senders of the messages it does not hold
    /// (an earlier try's answer may have been lost) are told they were not sent.
    fn tell_unsent(&mut self, batch: &Batch, e: &redis::RedisError, hub: &Sender<Event>) {
        // The next batch gets a new connection: what refused may be a server that
        // is no longer the one to write to (READONLY: a replica after a failover).
        let mut refusing = self.con.take();
        let asked = not_appended(
            self.redis,
            refusing.as_mut().map(|(c, _)| c),
            &self.appended,
            batch,
        );
        match asked {
            Ok(unsent) => {
                log::warn!(
                    "redis: Redis refused {} messages ({}); {} of them not appended, \
                     their senders told",
                    batch.messages.len(),
                    Untrusted(e),
                    unsent.len()
                );
                // Seats are said again later, whole (`append_messages`); a
                // receipt's sender is on another node (and waits only so long).
                let from_clients = unsent.iter().filter(|m| m.kind.is_said_by_a_client());
                for m in from_clients {
                    let _ = hub.send(Event::NotRelayed {
                        from: m.from,
                        why: "Redis refused it",
                    });
                }
            }
            Err(asked) => log::warn!(
                "redis: Redis refused {} messages ({}), and which of them an earlier try \
                 appended cannot be learned ({}): their senders are told nothing",
                batch.messages.len(),
                Untrusted(e),
                Untrusted(&asked)
            ),
        }
    }
}

/// Whether Redis itself answered a try with an error that the next try would
/// get too (READONLY, OOM, NOPERM, a script's error), rather than the connection
/// failing on the way (the batch's fate unknown) or Redis saying "not now": still
/// loading its data, its script cache emptied (a new connection loads the script
/// again), a replica without its master. Those are tried again.
fn refused(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind as Kind};
    match e.kind() {
        ErrorKind::Server(
            Kind::BusyLoading
            | Kind::NoScript
            | Kind::TryAgain
            | Kind::MasterDown
            | Kind::ClusterDown,
        ) => false,
        // Another client's script is running: not now, rather than no.
        ErrorKind::Extension if e.code() == Some("BUSY") => false,
        ErrorKind::Server(_) | ErrorKind::Extension => true,
        _ => false,
    }
}

/// The messages of `batch` that Redis does not hold (all or none: a batch is
/// one script), asked on `con` (the connection that was just refused, which
/// answers) or a new one. The script records the batch's number in `appended` in
/// the same step as its entries, so a number missing there was appended by no try.
fn not_appended<'a>(
    redis: &RedisAccess,
    con: Option<&mut redis::Connection>,
    appended: &str,
    batch: &'a Batch,
) -> redis::RedisResult<&'a [Publish]> {
    let mut made;
    let c = match con {
        Some(c) => c,
        None => {
            made = connect(redis)?;
            &mut made
        }
    };
    let done: Option<u64> = redis::cmd("GET").arg(appended).query(c)?;
    Ok(match done {
        Some(done) if done >= batch.number => &[],
        _ => &batch.messages,
    })
}

/// A connection for appending: the id counter raised past what this node has
/// seen (and past every id given before, if Redis lost its data), and the script
/// loaded.
fn open_appender(
    redis: &RedisAccess,
    highest: &AtomicU64,
) -> redis::RedisResult<(redis::Connection, String)> {
    let mut c = connect(redis)?;
    let _: i64 = redis::cmd("EVAL")
        .arg(RAISE_IDS)
        .arg(2)
        .arg(IDS)
        .arg(LIFTED)
        .arg(highest.load(Ordering::Relaxed))
        .query(&mut c)?;
    let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(APPEND).query(&mut c)?;
    Ok((c, sha))
}

/// Appends `batch` in one round trip and one call of the script.
fn append(
    c: &mut redis::Connection,
    sha: &str,
    appended: &str,
    node: u64,
    batch: &Batch,
) -> redis::RedisResult<()> {
    let taken = batch.messages.iter().filter(|m| takes_id(m.kind)).count();
    let mut call = redis::cmd("EVALSHA");
    call.arg(sha)
        .arg(4)
        .arg(STREAM)
        .arg(IDS)
        .arg(appended)
        .arg(LIFTED)
        .arg(STREAM_KEEPS)
        .arg(batch.number)
        .arg(format!("{PRESENCE}{node}"))
        .arg(PRESENCE_TTL.as_millis() as u64)
        .arg(node)
        .arg(taken)
        .arg(items_of(&batch.messages))
        .arg(LIVE);
    for m in &batch.messages {
        match m.kind {
            Entry::Seat if m.room.is_empty() => call.arg("del").arg(m.from.0).arg(""),
            Entry::Seat => call
                .arg("set")
                .arg(m.from.0)
                .arg(seat_value(&m.room, &m.name)),
            Entry::Seats => {
                call.arg("all").arg("").arg("");
                for (id, seat) in &m.seats {
                    call.arg("set")
                        .arg(id.0)
                        .arg(seat_value(&seat.room, &seat.name));
                }
                &mut call
            }
            _ => &mut call,
        };
    }
    call.query::<u64>(c).map(|_| ())
}

/// A seat as its node's hash holds it (`presence::seats_of` reads it).
fn seat_value(room: &str, name: &str) -> String {
    format!("{room}\n{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Pace` that has seen `n` items, `gap` apart, the last at the returned
    /// instant.
    fn paced(n: u32, gap: Duration) -> (Pace, Instant) {
        let (mut pace, start) = (Pace::default(), Instant::now());
        for i in 0..n {
            pace.arrived(start + gap * i);
        }
        (pace, start + gap * n.saturating_sub(1))
    }

    /// The wall clock somewhere in the middle of a tick.
    const MID_TICK: Duration = Duration::from_millis(1_764_892_800_007);

    #[test]
    fn a_quiet_chat_s_message_is_appended_without_waiting() {
        let (first, now) = paced(1, Duration::ZERO);
        assert_eq!(first.wait_until(now, MID_TICK), now, "the first item ever");
        let (slow, now) = paced(50, Duration::from_millis(100));
        assert_eq!(slow.wait_until(now, MID_TICK), now, "ten a second");
    }

    #[test]
    fn items_coming_faster_than_the_gather_make_a_batch_wait_for_company() {
        let wait = to_next_tick(MID_TICK);
        let (busy, now) = paced(50, Duration::from_millis(2));
        assert_eq!(busy.wait_until(now, MID_TICK), now + wait);
        // Either side of 50 a second.
        let (faster, now) = paced(200, Duration::from_millis(19));
        assert_eq!(faster.wait_until(now, MID_TICK), now + wait);
        let (slower, now) = paced(200, Duration::from_millis(21));
        assert_eq!(slower.wait_until(now, MID_TICK), now);
        // A few dozen items turn a quiet pace into a busy one.
        let (warming, now) = paced(5, Duration::from_millis(2));
        assert_eq!(
            warming.wait_until(now, MID_TICK),
            now,
            "too few yet to tell"
        );
    }

    #[test]
    fn batches_that_start_within_one_tick_end_on_the_same_wall_clock_instant() {
        let tick_start = Duration::from_millis(1_764_892_800_000);
        assert_eq!(tick_start.as_nanos() % GATHER.as_nanos(), 0);
        let next_tick = tick_start + GATHER;
        for into in [1, 3, 7, 13, 19] {
            let wall = tick_start + Duration::from_millis(into);
            assert_eq!(wall + to_next_tick(wall), next_tick, "{into} ms into it");
        }
        // Exactly on a tick: a whole one, never nothing.
        assert_eq!(to_next_tick(tick_start), GATHER);
        assert_eq!(to_next_tick(MID_TICK), GATHER - Duration::from_millis(7));
    }

    #[test]
    fn one_long_quiet_ends_the_waiting() {
        let (mut pace, then) = paced(200, Duration::from_millis(1));
        let later = then + Duration::from_secs(5);
        pace.arrived(later);
        assert_eq!(pace.wait_until(later, MID_TICK), later);
    }
}
