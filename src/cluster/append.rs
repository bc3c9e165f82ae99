//! `redis-out`: appends what this node's clients said to the stream, a batch in
//! one round trip and one call of a script, each batch numbered so that a batch
//! sent again is appended once; and tells a sender "not sent" only when Redis is known not to hold it.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::read::READ_COUNT;
use super::{
    IDS, LIFTED, PRESENCE, PRESENCE_EVERY, PRESENCE_TTL, RAISE_IDS, REDIS_BACKOFF, RedisAccess,
    STREAM, STREAM_KEEPS, connect, pause_after,
};
use crate::backoff::Backoff;
use crate::event::{Entry, Event, Publish};
use crate::logging::Untrusted;

/// Appends a batch of entries under the next ids, atomically: KEYS[1] the
/// stream, KEYS[2] the id counter, KEYS[3] the batches this process has appended
/// (a sorted set of their numbers); ARGV[1] MAXLEN, ARGV[2] the batch's number
/// (its first entry's in this process), ARGV[3] the prefix of the nodes' seat
/// hashes, ARGV[4] their time to live in ms, then nine per entry: room, from,
/// name, msg, ts, except, to (empty but for a direct message or kick), kind
/// (empty for a message: see [`kind_of`]) and the node.
///
/// Messages, direct messages and kicks take the next ids, and their entries are
/// `<id>-1`. Logins, seats and receipts take none (no client sees one as a
/// message, and the ids the clients see follow each other): their entries are
/// `<the last id>-2`, `-3`, …, after the last entry, which the script reads.
///
/// The batch is one call: its ids are taken as one block (`INCRBY`), and the
/// nodes blocked in `XREAD` wake once for it, not once per message, which is
/// most of what a message costs Redis. A batch number already there is skipped,
/// so a batch sent again after a lost answer is appended once. It is recorded
/// after the entries, so the set is also where `redis-out` learns whether a
/// refused batch is in ([`not_appended`]). A script is not rolled back, but
/// nothing can fail half-way here: Redis refuses a write for memory only before
/// the script's first write (the `INCRBY`), and only the first `XADD` can find
/// its id taken (the ids rise along the batch). The set keeps the last 10,000
/// numbers. An entry's id is written with `%.0f`: Lua's own `..` writes a number
/// of more than 14 digits as `1.7e+15`, which no stream takes, and ids that long
/// follow a loss of Redis' data ([`RAISE_IDS`]).
///
/// A seat entry changes the node's seat hash ([`PRESENCE`]) in the same step, so
/// the hashes are always what the stream says up to its last entry: a node
/// that joins reads both at once.
const APPEND: &str = "if redis.call('ZSCORE', KEYS[3], ARGV[2]) then return 0 end \
    local n = (#ARGV - 4) / 9 \
    local said = 0 \
    for i = 0, n - 1 do \
    if ARGV[4 + i * 9 + 8] == '' or ARGV[4 + i * 9 + 8] == 'kick' then said = said + 1 end \
    end \
    local last = redis.call('INCRBY', KEYS[2], said) \
    local id = last - said \
    local tid, tseq = 0, 0 \
    local top = said < n and redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1] \
    if top then \
    local dash = string.find(top[1], '-', 1, true) \
    tid = tonumber(string.sub(top[1], 1, dash - 1)) \
    tseq = tonumber(string.sub(top[1], dash + 1)) \
    end \
    for i = 0, n - 1 do \
    local a = 4 + i * 9 \
    local kind = ARGV[a + 8] \
    local seq = 1 \
    if kind == '' or kind == 'kick' then \
    id = id + 1 \
    elseif tid == id then \
    seq = math.max(tseq, 1) + 1 \
    else \
    seq = 2 \
    end \
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], \
    string.format('%.0f', id) .. '-' .. seq, \
    'room', ARGV[a + 1], 'from', ARGV[a + 2], 'name', ARGV[a + 3], 'msg', ARGV[a + 4], \
    'ts', ARGV[a + 5], 'except', ARGV[a + 6], 'to', ARGV[a + 7], 'kind', kind, \
    'node', ARGV[a + 9]) \
    tid, tseq = id, seq \
    if kind == 'seat' or kind == 'seats' then \
    local hash = ARGV[3] .. ARGV[a + 9] \
    if kind == 'seats' then \
    redis.call('DEL', hash) \
    redis.call('HSET', hash, '0', '') \
    for _, s in ipairs(cjson.decode(ARGV[a + 4])) do \
    redis.call('HSET', hash, string.format('%.0f', s[1]), s[2] .. '\\n' .. s[3]) \
    end \
    elseif ARGV[a + 1] == '' then \
    redis.call('HDEL', hash, ARGV[a + 2]) \
    else \
    redis.call('HSET', hash, ARGV[a + 2], ARGV[a + 1] .. '\\n' .. ARGV[a + 3]) \
    end \
    redis.call('PEXPIRE', hash, ARGV[4]) \
    end \
    end \
    redis.call('ZADD', KEYS[3], ARGV[2], ARGV[2]) \
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. (tonumber(ARGV[2]) - 10000)) \
    redis.call('EXPIRE', KEYS[3], 86400) \
    return last";

/// How an entry's `kind` field names what it is (a message has none).
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

/// Appends node `node`'s first entry, a seats entry with nobody, on `con`
/// before the node serves anyone: from it on, as the other nodes read the
/// stream, the node is alive, and a direct message to one of its clients (an id
/// that can only be learnt from the node) comes after it. Its own key records
/// the one batch, for the script.
pub(super) fn say_joined(con: &mut redis::Connection, node: u64) -> redis::RedisResult<()> {
    let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(APPEND).query(con)?;
    let batch = Batch {
        number: 1,
        messages: vec![Publish::seats(Vec::new(), crate::protocol::unix_millis())],
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
        let messages: Vec<Publish> = std::iter::once(first)
            .chain(outgoing.try_iter().take(READ_COUNT - 1))
            .collect();
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
        seats_lost |= batch
            .messages
            .iter()
            .any(|m| matches!(m.kind, Entry::Seat | Entry::Seats));
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

/// Messages appended in one call: all of them or none.
struct Batch {
    /// Its first message's number in this process: how Redis tells a batch
    /// sent again from a new one.
    number: u64,
    messages: Vec<Publish>,
}

/// `redis-out`'s end of Redis: its connection (with the script loaded), and the
/// set that records which of this process's messages are in.
struct Appender<'a> {
    redis: &'a RedisAccess,
    highest: &'a AtomicU64,
    /// This node's number, which its entries carry.
    node: u64,
    /// The key of the set of numbers appended: this process's own, not the node
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
                let said = unsent.iter().filter(|m| m.kind.is_said_by_a_client());
                for m in said {
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
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(appended)
        .arg(batch.number)
        .query(c)?;
    Ok(match score {
        Some(_) => &[],
        None => &batch.messages,
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
    let mut call = redis::cmd("EVALSHA");
    call.arg(sha)
        .arg(3)
        .arg(STREAM)
        .arg(IDS)
        .arg(appended)
        .arg(STREAM_KEEPS)
        .arg(batch.number)
        .arg(PRESENCE)
        .arg(PRESENCE_TTL.as_millis() as u64);
    for m in &batch.messages {
        call.arg(&m.room)
            .arg(m.from.0)
            .arg(&m.name)
            .arg(seats_or_text(m))
            .arg(m.ts)
            .arg(u8::from(m.except_sender))
            .arg(m.to.map_or_else(String::new, |to| to.to_string()))
            .arg(kind_of(m.kind))
            .arg(node);
    }
    call.query::<u64>(c).map(|_| ())
}

/// An entry's `msg`: a message's text, or a seats entry's list, as JSON
/// (`[[id, room, name], …]`, which the script reads too).
fn seats_or_text(m: &Publish) -> Cow<'_, str> {
    if m.kind != Entry::Seats {
        return Cow::Borrowed(&m.msg);
    }
    let list: Vec<(u64, &str, &str)> = m
        .seats
        .iter()
        .map(|(id, seat)| (id.0, seat.room.as_str(), seat.name.as_str()))
        .collect();
    Cow::Owned(serde_json::to_string(&list).expect("numbers and strings"))
}
