//! Several nodes as one chat (`--redis`): the bridge between this node's hub and
//! the others', through one Redis.
//!
//! # One order for everyone
//!
//! A node does not deliver a room message and then tell the others: two nodes
//! would each deliver their own first, and their clients would see two orders. It
//! appends the message to Redis and delivers what comes back, its own messages
//! included, so every node delivers in Redis' order. The hub's rule, "a room's
//! order is the order of one queue", still holds; the queue is now a Redis stream.
//!
//! # Why a stream, not PUBLISH/SUBSCRIBE
//!
//! Pub/sub hands a message to whoever is subscribed at that instant and keeps
//! nothing: a node whose connection blinks has lost what was said meanwhile and
//! has no position to resume from. A stream (`threadchat:messages`) keeps its last
//! entries (`MAXLEN ~`), in one order, each with an id, and `XREAD` from the last
//! id seen resumes with no gap and no duplicate. The message id clients see is the
//! entry's id: a script takes the next number from `threadchat:ids` and appends the
//! entry under it in one atomic step, so ids increase along the stream.
//!
//! # The threads
//!
//! * `redis-out` takes what this node's clients said from the hub, over a bounded
//!   channel the hub fills with `try_send` (the hub never waits for Redis), and
//!   appends it, every message waiting in one round trip.
//! * `redis-in` blocks in `XREAD` on the stream and hands every entry to the hub as
//!   an ordinary event ([`Event::Relayed`], or a direct message or kick), once it
//!   has checked it against the protocol's bounds. A room message is delivered
//!   when it comes back this way, on every node alike.
//! * `redis-presence` tells the others who is where here, and learns who is where
//!   there. Every [`PRESENCE_EVERY`] it rewrites this node's hash
//!   (`threadchat:presence:<node>`: client id → room and name, expiring after
//!   [`PRESENCE_TTL`]) from the hub's mirror of where its clients are ([`Whereabouts`]). It reads every
//!   other node's (those listed in `threadchat:presence-nodes`, in one round trip),
//!   and hands the hub the rooms' members elsewhere when they changed. Counts and
//!   `who` cover the cluster that way, and a node that dies without a word drops
//!   out of everyone's presence when its hash expires: within `PRESENCE_TTL +
//!   PRESENCE_EVERY`, 6 s.
//!
//! # Without Redis
//!
//! Every thread that loses Redis tries again with a growing pause. `redis-in`
//! notices when its read fails, and the hub is told ([`Event::Linked`]): at once
//! when Redis closes the connection, within [`READ_BLOCK`] and the 5 s read
//! deadline when the network just goes quiet. While Redis is gone, the node goes
//! on as a single server for its own clients:
//!
//! * they stay connected and get a `cluster` notification saying so;
//! * the hub numbers their messages itself, in an epoch of the node's own (the
//!   frame names it). An id taken here alone could be another node's too (the
//!   others may still reach Redis and go on counting), and the epoch is what
//!   keeps the two apart: `since` and the page compare ids of one epoch only;
//! * the other nodes' members leave its counts; a direct message or a kick for
//!   one of them is refused with an error;
//! * a message that was on its way to Redis when it went is appended if
//!   `redis-out` reaches Redis again within [`APPEND_PATIENCE`] (and heard once
//!   the node is back); else its sender is told nothing (below).
//!
//! Once Redis answers again:
//!
//! * `redis-in` resumes after the last entry it handed over, so the node hears
//!   what the others said meanwhile, with no gap and no duplicate, as long as the
//!   stream still holds it ([`STREAM_KEEPS`]). Ids are consecutive along the
//!   stream, so when the first id it reads jumps, the node knows some are gone
//!   and tells its clients ([`Event::Missed`]);
//! * the node's own epoch ends: what was said in it stays with those who heard it
//!   (the others never did) and leaves the histories. Their cluster part was kept
//!   apart meanwhile, so they are the stream's again;
//! * the clients get a second `cluster` notification with the cluster's epoch, and the
//!   counts take the others back in;
//! * in case Redis lost its data, the id counter is raised past every id given
//!   before ("When Redis lost its data" below), and the epoch and node counter
//!   are written back.
//!
//! A batch `redis-out` could not append is sent again on a new connection. Each
//! message carries its number in this process, and the script skips a number
//! already appended and records each one it appends, in the same atomic step,
//! so a batch whose answer was lost is not appended twice. How the tries end
//! depends on what Redis said:
//!
//! * nothing (the connection lost or timed out): the batch may be in, only the
//!   answer lost, and the other nodes deliver it. So it is sent again while Redis
//!   does not answer, for up to [`APPEND_PATIENCE`]. If Redis stays away longer,
//!   what became of it cannot be learned, and its senders are told nothing rather
//!   than "not sent", which may be false: a message that got in reaches its
//!   sender through the stream once the node is back, as everyone's does;
//! * "not now" (loading its data, its script cache emptied): the same;
//! * an error (READONLY, OOM, NOPERM, a script's error): another try would get
//!   the same answer, and every later message would wait behind the batch. The
//!   tries end, Redis is asked which of the batch's numbers it holds (an earlier
//!   try may have appended some, its answer lost), and only the senders of the
//!   others get an error frame.
//!
//! # When Redis lost its data
//!
//! A Redis restarted without persistence has no stream, no counter, no record
//! of anything. Each node keeps what it needs to go on ([`Keep`]), but no node
//! knows every id given before: the one that has seen the most may be the last
//! one back (cut off, or slower to reconnect). Were the counter raised only to
//! what the first node back has seen, its next message would take an id that
//! another node's clients already know for another message, and that node,
//! reading on from its position, would never hear the new one.
//!
//! Nothing in Redis says how far the ids went, but a clock bounds them: the
//! counter starts at 1 and takes fewer than one id a microsecond (one Redis
//! appends some tens of thousands of messages a second, SCALING.md), so every id
//! it gives stays below Redis' clock in microseconds, and so does a counter
//! started again from that clock. So the first node that finds the counter gone
//! although it has seen ids (which is how a loss shows: a counter that was used
//! is missing) starts it again at the clock ([`RAISE_IDS`]), before anyone
//! appends: `redis-presence` within [`PRESENCE_EVERY`] of reaching Redis, and
//! `redis-out` before its first append on every connection. Every id given after
//! the loss is then new to every node, whichever is back first. The ids stay
//! below 2^53, which the page's JavaScript holds exactly, until the year 2255.
//!
//! The jump is no loss of messages, and `redis-in` must not call it one: where
//! the counter started again and the highest id the node that did it had seen
//! are kept ([`LIFTED`]), and a jump across that point counts as missed messages
//! only when this node had not heard all that node had, or missed entries after
//! it ([`missed`]). What this leaves open is in DESIGN.md ("A cluster when Redis
//! fails").
//!
//! A direct message goes through the stream too (for its id, in the same order):
//! the target's node delivers it, the sender's node the sender's copy. So does an
//! admin's kick of a client on another node: that client's node closes it.
//!
//! Client ids are unique across the cluster: each node takes a number from
//! `threadchat:nodes` at start and numbers its clients from `node << 32`.
//!
//! # Whom Redis lets in
//!
//! Every node believes the stream: whoever can write to it speaks as any node
//! (messages under any name, kicks, presence). So Redis belongs on a private
//! network, and it can ask for a password or an ACL user (`redis://user:pw@…`,
//! sent as `AUTH` on every connection) and speak TLS (`rediss://`, the server's
//! certificate checked against the system's roots or `--redis-ca`). The URL then
//! holds a secret: it reaches log lines and errors only as [`RedisAccess::shown`],
//! the password replaced by `***`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::backoff::Backoff;
use crate::event::{DirectMessage, Event, HubSide, Location, Publish, RelayedMessage, Whereabouts};
use crate::logging::{Noisy, Untrusted, limited};
use crate::protocol::{self, ClientId, NamedClient};

/// The stream every node appends to and reads.
const STREAM: &str = "threadchat:messages";
/// The counter message ids come from.
const IDS: &str = "threadchat:ids";
/// The counter node numbers come from.
const NODES: &str = "threadchat:nodes";
/// When the chat (the cluster) first started: `welcome`'s epoch on every node.
const EPOCH: &str = "threadchat:epoch";
/// Where the id counter started again after Redis lost its data (`at`), and the
/// highest id the node that started it had seen (`seen`): see [`RAISE_IDS`].
const LIFTED: &str = "threadchat:lifted";

/// Entries the stream keeps, about (`MAXLEN ~`): what a node can catch up on
/// after losing Redis for a while.
const STREAM_KEEPS: usize = 100_000;

/// Messages waiting for `redis-out`. When Redis is slower than the chat, the hub
/// refuses what does not fit rather than wait.
pub const OUTGOING_QUEUE: usize = 1_024;

/// The most those hold: a message's name and text, 8 KiB of UTF-8 at most.
pub const OUTGOING_BYTES: u64 = OUTGOING_QUEUE as u64 * 8 * 1024;

/// How often a node rewrites its presence and reads the others'.
pub const PRESENCE_EVERY: Duration = Duration::from_secs(1);
/// How long a node's presence outlives its last rewrite.
pub const PRESENCE_TTL: Duration = Duration::from_secs(5);
/// The prefix of every node's presence hash.
const PRESENCE: &str = "threadchat:presence:";
/// The nodes that have said they exist (each removed once its hash is gone).
const NODE_SET: &str = "threadchat:presence-nodes";

/// Entries one `XREAD` returns at most, and how long it blocks before looking at
/// whether the server is stopping.
const READ_COUNT: usize = 512;
const READ_BLOCK: Duration = Duration::from_millis(1_000);

/// Appends one message under the next id, atomically: KEYS[1] the stream, KEYS[2]
/// the id counter, KEYS[3] the numbers this process has appended (a sorted set);
/// ARGV: MAXLEN, room, from, name, msg, ts, except, to (empty for a room
/// message), the message's number in this process, and kick (`1` for a kick).
/// A number already there is skipped, so a batch sent again after a lost answer
/// is appended once; it is recorded only after the entry is in (a failed XADD
/// ends the script, and the retry appends it), so the set is also where
/// `redis-out` learns which messages of a batch Redis holds ([`not_appended`]).
/// The set keeps the last 10,000 numbers. The entry's id is written with `%.0f`:
/// Lua's own `..` writes a number of more than 14 digits as `1.7e+15`, which no
/// stream takes, and ids that long follow a loss of Redis' data ([`RAISE_IDS`]).
const APPEND: &str = "if redis.call('ZSCORE', KEYS[3], ARGV[9]) then return 0 end \
    local id = redis.call('INCR', KEYS[2]) \
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], string.format('%.0f', id) .. '-1', \
    'room', ARGV[2], 'from', ARGV[3], 'name', ARGV[4], 'msg', ARGV[5], \
    'ts', ARGV[6], 'except', ARGV[7], 'to', ARGV[8], 'kick', ARGV[10]) \
    redis.call('ZADD', KEYS[3], ARGV[9], ARGV[9]) \
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. (tonumber(ARGV[9]) - 10000)) \
    redis.call('EXPIRE', KEYS[3], 86400) \
    return id";

/// How long `redis-out` goes on trying a batch while Redis does not answer (the
/// connection lost or timed out: the batch may be in, its answer lost). Long
/// enough for a restart of Redis or a blip of the network; after it, the batch's
/// fate cannot be learned, and its senders are told nothing ([`append_messages`]).
const APPEND_PATIENCE: Duration = Duration::from_secs(10);

/// Raises a counter (KEYS[1]) to at least ARGV[1]: after Redis lost its data (a
/// restart without persistence), the node numbers given out are not given again.
const RAISE: &str = "local n = tonumber(redis.call('GET', KEYS[1]) or '0') \
    if n < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end \
    return 0";

/// Raises the id counter (KEYS[1]) to at least ARGV[1], the highest id this node
/// has seen, so nobody's `XREAD` position or `since` falls behind new entries.
/// A counter that is gone though the node has seen ids (ARGV[1] > 0) means Redis
/// lost its data, and ids other nodes gave may be past any this node has seen:
/// the counter starts again at Redis' clock in microseconds (`TIME`), which every
/// id given before is under ("When Redis lost its data" above), and KEYS[2]
/// ([`LIFTED`]) says where, for the readers. The clock is written as Redis gives
/// it, seconds and microseconds side by side, never through a Lua number's
/// formatting.
const RAISE_IDS: &str = "local seen = tonumber(ARGV[1]) \
    local n = redis.call('GET', KEYS[1]) \
    if n then \
        if tonumber(n) < seen then redis.call('SET', KEYS[1], ARGV[1]) end \
        return 0 \
    end \
    if seen == 0 then return 0 end \
    local t = redis.call('TIME') \
    local at = t[1] .. string.format('%06d', tonumber(t[2])) \
    if tonumber(at) <= seen then at = ARGV[1] end \
    redis.call('SET', KEYS[1], at) \
    redis.call('HSET', KEYS[2], 'at', at, 'seen', ARGV[1]) \
    return 0";

/// This node's place in the cluster.
pub struct Cluster {
    /// Its number: its clients' ids start at `node << 32`.
    pub node: u64,
    /// The cluster's epoch, for `welcome` and `since`.
    pub epoch: u64,
    redis: RedisAccess,
    /// The entry after which `redis-in` starts: the stream's end at start.
    start_after: String,
    /// The highest message id `redis-in` has handed over.
    highest: Arc<AtomicU64>,
    /// Where this node's clients are, for the other nodes.
    pub whereabouts: Arc<Whereabouts>,
    /// The stream's recent entries at start, for the hub's histories.
    backfill: Mutex<Vec<Event>>,
    stop: Arc<AtomicBool>,
}

impl Cluster {
    /// Connects to `redis` and takes this node's number. An unreachable Redis (or
    /// one that refuses the password) is an error at start: a node that was asked
    /// to be part of a cluster does not run alone.
    /// `backfill` is how many of the stream's last entries the hub is given at
    /// start, for the rooms' histories (and `since`) on a node that was not
    /// running when they were said.
    pub fn join(
        redis: &RedisAccess,
        epoch_if_first: u64,
        backfill: usize,
    ) -> Result<Cluster, String> {
        let shown = redis.shown();
        let fail = |e: redis::RedisError| format!("--redis {shown}: {e}");
        let mut con = connect(redis).map_err(fail)?;
        let node: u64 = redis::cmd("INCR")
            .arg(NODES)
            .query(&mut con)
            .map_err(fail)?;
        if node >= 1 << 21 {
            // Ids must stay below 2^53 for the page's JavaScript.
            return Err(format!("--redis {shown}: more than 2^21 node numbers used"));
        }
        let _: () = redis::cmd("SET")
            .arg(EPOCH)
            .arg(epoch_if_first)
            .arg("NX")
            .query(&mut con)
            .map_err(fail)?;
        let epoch: u64 = redis::cmd("GET").arg(EPOCH).query(&mut con).map_err(fail)?;
        let recent: redis::Value = redis::cmd("XREVRANGE")
            .arg(STREAM)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(backfill.clamp(1, STREAM_KEEPS))
            .query(&mut con)
            .map_err(fail)?;
        let mut recent = entries(recent);
        let start_after = recent
            .first()
            .map_or_else(|| "0-0".to_string(), |(id, _)| id.clone());
        recent.truncate(backfill);
        // Oldest first, as the hub would have heard them.
        let backfill = recent
            .iter()
            .rev()
            .filter_map(|(id, fields)| relayed(id, fields))
            .collect();
        Ok(Cluster {
            node,
            epoch,
            redis: redis.clone(),
            highest: Arc::new(AtomicU64::new(message_id(&start_after).unwrap_or(0))),
            start_after,
            whereabouts: Arc::new(Whereabouts::default()),
            backfill: Mutex::new(backfill),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// What the hub needs of the bridge, its end of `outgoing` included.
    pub fn hub_side(&self, outgoing: Sender<Publish>) -> HubSide {
        HubSide {
            node: self.node,
            outgoing,
            whereabouts: Arc::clone(&self.whereabouts),
            highest: Arc::clone(&self.highest),
        }
    }

    /// The entries the hub starts from (once: later calls get none).
    pub fn backfill(&self) -> Vec<Event> {
        std::mem::take(&mut *crate::lock(&self.backfill))
    }

    /// The first client id of this node.
    pub fn first_client_id(&self) -> u64 {
        (self.node << 32) + 1
    }

    /// Starts `redis-in` and `redis-out`: what the hub hands to `outgoing` is
    /// appended, and every entry of the stream reaches `hub`.
    /// A thread that cannot be started stops those started before it.
    pub fn spawn(&self, outgoing: Receiver<Publish>, hub: Sender<Event>) -> std::io::Result<()> {
        let started = self.spawn_threads(outgoing, hub);
        if started.is_err() {
            self.stop();
        }
        started
    }

    fn spawn_threads(
        &self,
        outgoing: Receiver<Publish>,
        hub: Sender<Event>,
    ) -> std::io::Result<()> {
        let (redis, after, stop) = (
            self.redis.clone(),
            self.start_after.clone(),
            Arc::clone(&self.stop),
        );
        let (to_hub, highest) = (hub.clone(), Arc::clone(&self.highest));
        thread::Builder::new()
            .name("redis-in".into())
            .spawn(move || read_stream(&redis, after, &to_hub, &highest, &stop))?;
        let (redis, whereabouts, stop) = (
            self.redis.clone(),
            Arc::clone(&self.whereabouts),
            Arc::clone(&self.stop),
        );
        let keep = Keep {
            node: self.node,
            epoch: self.epoch,
            highest: Arc::clone(&self.highest),
        };
        let to_hub = hub.clone();
        thread::Builder::new()
            .name("redis-presence".into())
            .spawn(move || share_presence(&redis, &keep, &whereabouts, &to_hub, &stop))?;
        let (redis, node, highest) = (self.redis.clone(), self.node, Arc::clone(&self.highest));
        thread::Builder::new()
            .name("redis-out".into())
            .spawn(move || append_messages(&redis, node, &outgoing, &hub, &highest))?;
        Ok(())
    }

    /// Stops `redis-in` within [`READ_BLOCK`]; `redis-out` ends with the hub.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How this node reaches Redis: address, password or ACL user, and for
/// `rediss://` the certificates its certificate must chain to. Made once at
/// start, so a bad URL or CA file is an error then, not at every reconnection.
#[derive(Clone)]
pub struct RedisAccess {
    client: redis::Client,
    /// The URL with its password hidden: all that messages may show.
    shown: String,
}

impl RedisAccess {
    /// `url` as `--redis` gives it. `ca` (`--redis-ca`), a PEM file: for
    /// `rediss://`, trust only the certificates in it (a self-signed Redis or a
    /// private CA) instead of the system's roots.
    pub fn new(url: &str, ca: Option<&Path>) -> Result<RedisAccess, String> {
        let shown = redacted(url);
        let client = match ca {
            None => redis::Client::open(url),
            Some(path) => {
                let root_cert = read_ca(path)?;
                let roots = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                redis::Client::build_with_tls(url, roots)
            }
        }
        .map_err(|e| format!("--redis {shown}: {e}"))?;
        Ok(RedisAccess { client, shown })
    }

    /// The URL fit for a log line or an error: its password is `***`.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// The certificates of `--redis-ca`: PEM, at least one.
fn read_ca(path: &Path) -> Result<Vec<u8>, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let fail = |why: String| format!("--redis-ca {}: {why}", path.display());
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let mut certificates = CertificateDer::pem_slice_iter(&pem);
    match certificates.next() {
        None => Err(fail("no PEM certificate in it".into())),
        Some(Err(e)) => Err(fail(format!("not a PEM certificate: {e}"))),
        Some(Ok(_)) => Ok(pem),
    }
}

/// `url` with its secrets replaced by `***`: the password of
/// `scheme://user:password@host` (the last `@` ends it, so a password with an
/// unescaped `@`, `/` or `?` is hidden whole; without a `:` all before the `@`,
/// which may be a password given in the wrong place), and a `pass=` in the query
/// (`redis+unix:///path?pass=…`).
fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_at(url.find("://").map_or(0, |i| i + 3));
    let rest = match rest.rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{user}:***{}", &rest[at..]),
            None => format!("***{}", &rest[at..]),
        },
        None => rest.to_string(),
    };
    let Some((before, query)) = rest.split_once('?') else {
        return format!("{scheme}{rest}");
    };
    let query: Vec<&str> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("pass") => "pass=***",
            _ => pair,
        })
        .collect();
    format!("{scheme}{before}?{}", query.join("&"))
}

fn connect(redis: &RedisAccess) -> redis::RedisResult<redis::Connection> {
    let con = redis
        .client
        .get_connection_with_timeout(Duration::from_secs(5))?;
    // Every command but the blocking read answers at once; a Redis that does not
    // is treated as gone.
    con.set_write_timeout(Some(Duration::from_secs(5)))?;
    con.set_read_timeout(Some(READ_BLOCK + Duration::from_secs(5)))?;
    Ok(con)
}

/// The pauses between attempts to reach Redis again: 0.1 s doubling to 5 s.
const REDIS_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// Says why a Redis command failed and takes the backoff's next pause.
fn pause_after(backoff: &mut Backoff, what: &str, e: &redis::RedisError) {
    let pause = backoff.pause();
    // Redis's errors can quote what it was sent or holds.
    log::warn!("redis: {what}: {}; trying again in {pause:?}", Untrusted(e));
    thread::sleep(pause);
}

/// A connection to Redis, made when first needed and made again after a failure,
/// with a growing pause between attempts.
struct Link<'a> {
    redis: &'a RedisAccess,
    con: Option<redis::Connection>,
    backoff: Backoff,
}

impl<'a> Link<'a> {
    fn new(redis: &'a RedisAccess) -> Link<'a> {
        Link {
            redis,
            con: None,
            backoff: REDIS_BACKOFF,
        }
    }

    /// The connection, made now if there is none.
    fn get(&mut self) -> redis::RedisResult<&mut redis::Connection> {
        if self.con.is_none() {
            self.con = Some(connect(self.redis)?);
            self.backoff.reset();
        }
        Ok(self.con.as_mut().expect("made just above"))
    }

    /// A command or the connecting failed: drop the connection, pause, and let
    /// the next `get` try again.
    fn failed(&mut self, what: &str, e: &redis::RedisError) {
        self.con = None;
        pause_after(&mut self.backoff, what, e);
    }
}

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
fn append_messages(
    redis: &RedisAccess,
    node: u64,
    outgoing: &Receiver<Publish>,
    hub: &Sender<Event>,
    highest: &AtomicU64,
) {
    // This process's own, not the node number's: after Redis lost its data a node
    // number can be handed out again.
    let appended = format!(
        "threadchat:appended:{node}:{}:{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let mut backoff = REDIS_BACKOFF;
    let mut con: Option<(redis::Connection, String)> = None;
    let mut number = 0u64;
    while let Ok(first) = outgoing.recv() {
        let batch: Vec<(u64, Publish)> = std::iter::once(first)
            .chain(outgoing.try_iter().take(READ_COUNT - 1))
            .map(|m| {
                number += 1;
                (number, m)
            })
            .collect();
        let give_up_at = Instant::now() + APPEND_PATIENCE;
        let failed = loop {
            let attempt = match con.as_mut() {
                Some((c, sha)) => append(c, sha, &appended, &batch),
                None => open_appender(redis, highest).and_then(|(mut c, sha)| {
                    let appended_now = append(&mut c, &sha, &appended, &batch);
                    con = Some((c, sha));
                    appended_now
                }),
            };
            let Err(e) = attempt else {
                backoff.reset();
                break None;
            };
            if refused(&e) {
                // Redis answers: no pause, and the connection serves the question
                // below.
                backoff.reset();
                break Some(e);
            }
            con = None;
            if Instant::now() >= give_up_at {
                break Some(e);
            }
            pause_after(&mut backoff, "append failed", &e);
        };
        let Some(e) = failed else { continue };
        if !refused(&e) {
            log::warn!(
                "redis: {} messages: Redis did not take them within {APPEND_PATIENCE:?} ({}); \
                 whether they were appended cannot be learned, so their senders are told nothing",
                batch.len(),
                Untrusted(&e)
            );
            continue;
        }
        // The next batch gets a new connection: what refused may be a server that
        // is no longer the one to write to (READONLY: a replica after a failover).
        let mut refusing = con.take();
        match not_appended(redis, refusing.as_mut().map(|(c, _)| c), &appended, &batch) {
            Ok(unsent) => {
                log::warn!(
                    "redis: Redis refused {} messages ({}); {} of them not appended, \
                     their senders told",
                    batch.len(),
                    Untrusted(&e),
                    unsent.len()
                );
                for m in unsent {
                    let _ = hub.send(Event::NotRelayed {
                        from: m.from,
                        why: "Redis refused it",
                    });
                }
            }
            Err(asked) => log::warn!(
                "redis: Redis refused {} messages ({}), and which of them an earlier try \
                 appended cannot be learned ({}): their senders are told nothing",
                batch.len(),
                Untrusted(&e),
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
        ErrorKind::Server(_) | ErrorKind::Extension => true,
        _ => false,
    }
}

/// The messages of `batch` that Redis does not hold, asked on `con` (the
/// connection that was just refused, which answers) or a new one. The script
/// records each number in `appended` in the same step as its entry, so a number
/// missing there was appended by no try.
fn not_appended<'a>(
    redis: &RedisAccess,
    con: Option<&mut redis::Connection>,
    appended: &str,
    batch: &'a [(u64, Publish)],
) -> redis::RedisResult<Vec<&'a Publish>> {
    let mut made;
    let c = match con {
        Some(c) => c,
        None => {
            made = connect(redis)?;
            &mut made
        }
    };
    let numbers: Vec<u64> = batch.iter().map(|(n, _)| *n).collect();
    let scores: Vec<Option<f64>> = redis::cmd("ZMSCORE").arg(appended).arg(&numbers).query(c)?;
    if scores.len() != batch.len() {
        return Err(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "ZMSCORE answered for another number of members",
        )));
    }
    Ok(batch
        .iter()
        .zip(scores)
        .filter(|(_, score)| score.is_none())
        .map(|((_, m), _)| m)
        .collect())
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

/// Appends `batch` in one round trip.
fn append(
    c: &mut redis::Connection,
    sha: &str,
    appended: &str,
    batch: &[(u64, Publish)],
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    for (number, m) in batch {
        pipe.cmd("EVALSHA")
            .arg(sha)
            .arg(3)
            .arg(STREAM)
            .arg(IDS)
            .arg(appended)
            .arg(STREAM_KEEPS)
            .arg(&m.room)
            .arg(m.from.0)
            .arg(&m.name)
            .arg(&m.msg)
            .arg(m.ts)
            .arg(u8::from(m.except_sender))
            .arg(m.to.map_or_else(String::new, |to| to.to_string()))
            .arg(number)
            .arg(u8::from(m.kick));
    }
    pipe.query::<Vec<u64>>(c).map(|_| ())
}

/// `redis-in`: hands every entry after `after` to the hub, until `stop`.
fn read_stream(
    redis: &RedisAccess,
    mut after: String,
    hub: &Sender<Event>,
    highest: &AtomicU64,
    stop: &AtomicBool,
) {
    let mut link = Link::new(redis);
    // Whether the hub believes Redis answers: it is told when that changes.
    let mut linked = true;
    // The last message id handed over, when there is one to follow. Ids are
    // consecutive along the stream (each is taken by the append that writes its
    // entry), so a jump past it means entries this node will never read: trimmed
    // (`MAXLEN ~`) while it was cut off, or lost with Redis' data.
    let mut last = message_id(&after).filter(|n| *n > 0);
    let tell = |up: bool, linked: &mut bool| {
        if *linked != up {
            *linked = up;
            let _ = hub.send(Event::Linked { up });
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let read = link.get().and_then(|c| {
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(READ_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(STREAM)
                .arg(&after)
                .query::<redis::Value>(c)
        });
        let reply = match read {
            Ok(reply) => reply,
            Err(e) => {
                tell(false, &mut linked);
                link.failed("read failed", &e);
                continue;
            }
        };
        tell(true, &mut linked);
        // [[stream, [entry, ...]]], or nil when BLOCK passed with nothing new.
        let redis::Value::Array(streams) = reply else {
            continue;
        };
        for stream in streams {
            let redis::Value::Array(mut parts) = stream else {
                continue;
            };
            let Some(list) = parts.pop() else { continue };
            for (id, fields) in entries(list) {
                if let Some(n) = message_id(&id) {
                    if let Some(last) = last
                        && n > last + 1
                        && missed(link.get(), last, n)
                        && hub.send(Event::Missed { upto: n - 1 }).is_err()
                    {
                        return;
                    }
                    last = Some(n);
                    highest.fetch_max(n, Ordering::Relaxed);
                }
                after = id.clone();
                let Some(event) = relayed(&id, &fields) else {
                    // Anyone who can write to the stream chooses these.
                    limited!(
                        Noisy::BadStreamEntry,
                        "redis: entry \"{}\" of {STREAM} is not a message: skipped",
                        Untrusted(&id)
                    );
                    continue;
                };
                if hub.send(event).is_err() {
                    return;
                }
            }
        }
    }
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
fn entries(value: redis::Value) -> Vec<(String, HashMap<String, String>)> {
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

/// The message id in a stream entry's id, `<message id>-1`; `None` for id 0,
/// which no node writes (the counter's first `INCR` gives 1) and which would
/// underflow the hub's arithmetic (`0-1` typed at `redis-cli`).
fn message_id(entry: &str) -> Option<u64> {
    let id: u64 = entry.split('-').next()?.parse().ok()?;
    (id > 0).then_some(id)
}

/// A stream entry as the hub's event, or `None` for one that is not a message
/// within the protocol's bounds. Every node checks what it appends, but an entry
/// may come from anywhere that can write to Redis (another version, another
/// `--max-message`, a typo at `redis-cli`), and the hub's bounds on a batch rely
/// on the bounds of a message.
fn relayed(id: &str, fields: &HashMap<String, String>) -> Option<Event> {
    let number = |key: &str| fields.get(key)?.parse::<u64>().ok();
    if fields.get("kick").is_some_and(|k| k == "1") {
        return Some(Event::RelayedKick {
            target: ClientId(number("to")?),
            by: ClientId(number("from")?),
        });
    }
    let (name, msg) = (fields.get("name")?, fields.get("msg")?);
    protocol::check_message(name, msg).ok()?;
    if let Some(to) = number("to") {
        return Some(Event::RelayedDirect {
            id: message_id(id)?,
            ts: number("ts")?,
            direct: DirectMessage {
                from: ClientId(number("from")?),
                name: name.clone(),
                to: ClientId(to),
                msg: msg.clone(),
            },
        });
    }
    Some(Event::Relayed(RelayedMessage {
        id: message_id(id)?,
        ts: number("ts")?,
        from: ClientId(number("from")?),
        room: Some(fields.get("room")?)
            .filter(|room| protocol::is_room(room))?
            .clone(),
        name: name.clone(),
        msg: msg.clone(),
        except_sender: fields.get("except").is_some_and(|e| e == "1"),
    }))
}

/// What every node keeps in Redis besides its presence, in case Redis lost its
/// data (restarted without persistence): the cluster's epoch, the node counter
/// past its number, the id counter past every id it has seen. So a node started
/// after such a restart joins the same chat, with a number and ids of its own.
struct Keep {
    node: u64,
    epoch: u64,
    highest: Arc<AtomicU64>,
}

/// `redis-presence`: where this node's clients are out, the other nodes' in,
/// until `stop`.
fn share_presence(
    redis: &RedisAccess,
    keep: &Keep,
    whereabouts: &Whereabouts,
    hub: &Sender<Event>,
    stop: &AtomicBool,
) {
    let mine = format!("{PRESENCE}{}", keep.node);
    let mut link = Link::new(redis);
    let mut told = None;
    while !stop.load(Ordering::Relaxed) {
        match link
            .get()
            .and_then(|c| exchange_presence(c, keep, &mine, whereabouts))
        {
            Ok(elsewhere) => {
                if told.as_ref() != Some(&elsewhere) {
                    told = Some(elsewhere.clone());
                    if hub.send(Event::Elsewhere { rooms: elsewhere }).is_err() {
                        return;
                    }
                }
                thread::sleep(PRESENCE_EVERY); // the period of a heartbeat
            }
            Err(e) => link.failed("presence failed", &e),
        }
    }
    // Leaving on purpose: the others need not wait for the hash to expire.
    if let Some(c) = link.con.as_mut() {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&mine).query(c);
    }
}

/// Rewrites this node's presence hash and reads every other node's: room →
/// members elsewhere, each list sorted by id.
fn exchange_presence(
    con: &mut redis::Connection,
    keep: &Keep,
    mine: &str,
    whereabouts: &Whereabouts,
) -> redis::RedisResult<HashMap<String, Vec<NamedClient>>> {
    let node = keep.node;
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(EPOCH)
        .arg(keep.epoch)
        .arg("NX")
        .ignore();
    pipe.cmd("EVAL")
        .arg(RAISE)
        .arg(1)
        .arg(NODES)
        .arg(node)
        .ignore();
    pipe.cmd("EVAL")
        .arg(RAISE_IDS)
        .arg(2)
        .arg(IDS)
        .arg(LIFTED)
        .arg(keep.highest.load(Ordering::Relaxed))
        .ignore();
    pipe.cmd("SADD").arg(NODE_SET).arg(node).ignore();
    pipe.atomic().cmd("DEL").arg(mine).ignore();
    let snapshot = whereabouts.snapshot();
    if !snapshot.is_empty() {
        let cmd = pipe.cmd("HSET").arg(mine);
        for (id, Location { room, name }) in &snapshot {
            cmd.arg(id.0).arg(format!("{room}\n{name}"));
        }
        cmd.ignore();
        pipe.cmd("PEXPIRE")
            .arg(mine)
            .arg(PRESENCE_TTL.as_millis() as u64)
            .ignore();
    }
    let () = pipe.query(con)?;
    // The nodes that said they exist, and, in one round trip, what each holds.
    let nodes: Vec<u64> = redis::cmd("SMEMBERS").arg(NODE_SET).query(con)?;
    let others: Vec<u64> = nodes.into_iter().filter(|n| *n != node).collect();
    let mut reads = redis::pipe();
    for other in &others {
        reads.cmd("HGETALL").arg(format!("{PRESENCE}{other}"));
    }
    let held: Vec<HashMap<String, String>> = if others.is_empty() {
        Vec::new()
    } else {
        reads.query(con)?
    };
    let mut rooms: HashMap<String, Vec<NamedClient>> = HashMap::new();
    for (other, members) in others.iter().zip(held) {
        if members.is_empty() {
            // Expired (or it has nobody): it adds itself again while it lives.
            let _: redis::RedisResult<()> = redis::cmd("SREM").arg(NODE_SET).arg(other).query(con);
            continue;
        }
        for (id, seat) in members {
            let (Ok(id), Some((room, name))) = (id.parse::<u64>(), seat.split_once('\n')) else {
                continue;
            };
            // Within the protocol's bounds, as a message must be: a name goes into
            // notifications, whose size the hub's batches count on.
            if protocol::check_name(name).is_err() || !protocol::is_room(room) {
                continue;
            }
            rooms
                .entry(room.to_string())
                .or_default()
                .push(NamedClient {
                    id: ClientId(id),
                    name: name.to_string(),
                });
        }
    }
    for members in rooms.values_mut() {
        members.sort_unstable_by_key(|member| member.id);
    }
    Ok(rooms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_redis_url_is_shown_without_its_password() {
        for (url, shown) in [
            (
                "redis://:s3cret@10.0.0.5:6379/",
                "redis://:***@10.0.0.5:6379/",
            ),
            (
                "redis://chat:s3cret@redis:6379/2",
                "redis://chat:***@redis:6379/2",
            ),
            ("rediss://chat:s3cret@redis/", "rediss://chat:***@redis/"),
            // Unescaped `@`, `/`, `:` and `?` in the password: the last `@` ends it.
            ("redis://chat:s3/c@r:e?t@redis/", "redis://chat:***@redis/"),
            // A password without its `:` is a user name to the URL, but hidden too.
            ("redis://s3cret@redis/", "redis://***@redis/"),
            ("s3cret@redis:6379", "***@redis:6379"),
            (
                "redis+unix:///run/redis.sock?user=chat&pass=s3cret&db=1",
                "redis+unix:///run/redis.sock?user=chat&pass=***&db=1",
            ),
            ("redis://10.0.0.5:6379/", "redis://10.0.0.5:6379/"),
            (
                "rediss://redis:6379/#insecure",
                "rediss://redis:6379/#insecure",
            ),
        ] {
            assert_eq!(redacted(url), shown, "{url}");
        }
    }

    #[test]
    fn a_bad_redis_url_or_ca_is_an_error_that_hides_the_password() {
        let access = |url: &str, ca: Option<&Path>| RedisAccess::new(url, ca).err().unwrap();
        for url in [
            "redis://:s3cret@redis:port/",
            "redis://:s3cret@redis/not-a-db",
            "http://:s3cret@redis/",
        ] {
            let error = access(url, None);
            assert!(error.starts_with("--redis "), "{error}");
            assert!(error.contains(":***@redis"), "{error}");
            assert!(!error.contains("s3cret"), "{error}");
        }
        let dir = std::env::temp_dir().join(format!("threadchat-redis-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not-pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let error = access("rediss://:s3cret@redis/", Some(&not_pem));
        assert!(error.contains("no PEM certificate"), "{error}");
        let missing = dir.join("missing.pem");
        let error = access("rediss://:s3cret@redis/", Some(&missing));
        assert!(error.starts_with("--redis-ca "), "{error}");
        let ca = dir.join("ca.pem");
        let made = rcgen::generate_simple_self_signed(vec!["redis".to_string()]).unwrap();
        std::fs::write(&ca, made.cert.pem()).unwrap();
        assert!(RedisAccess::new("rediss://:s3cret@redis/", Some(&ca)).is_ok());
        // Roots for a URL without TLS: a mistake, said so.
        let error = access("redis://:s3cret@redis/", Some(&ca));
        assert!(error.contains("rediss://"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_entry_outside_the_protocol_s_bounds_is_not_a_message() {
        let good = [
            ("room", "lobby"),
            ("from", "7"),
            ("name", "ann"),
            ("msg", "hi"),
            ("ts", "1"),
            ("except", "0"),
            ("to", ""),
            ("kick", "0"),
        ];
        assert!(matches!(
            relayed("5-1", &entry(&good)),
            Some(Event::Relayed(RelayedMessage { id: 5, .. }))
        ));
        let long = "x".repeat(protocol::MAX_MSG_CHARS + 1);
        for (key, bad) in [
            ("msg", long.as_str()),
            ("msg", " "),
            ("name", &"n".repeat(protocol::MAX_NAME_CHARS + 1)),
            ("room", "no spaces"),
            ("room", ""),
            ("from", "seven"),
        ] {
            let mut fields = entry(&good);
            fields.insert(key.to_string(), bad.to_string());
            assert!(relayed("5-1", &fields).is_none(), "{key} = {bad:?}");
        }
        assert!(relayed("not-an-id", &entry(&good)).is_none());
        // Id 0, which no node gives, would underflow the hub's arithmetic.
        assert!(relayed("0-1", &entry(&good)).is_none());
        // A direct message (no room) is checked the same way; a kick has no text.
        // Both as `append` writes them.
        let mut direct = entry(&good);
        direct.insert("to".into(), "9".into());
        direct.insert("room".into(), String::new());
        assert!(matches!(
            relayed("6-1", &direct),
            Some(Event::RelayedDirect {
                direct: DirectMessage {
                    to: ClientId(9),
                    ..
                },
                ..
            })
        ));
        direct.insert("msg".into(), long.clone());
        assert!(relayed("6-1", &direct).is_none());
        let kick = entry(&[
            ("room", ""),
            ("from", "7"),
            ("name", ""),
            ("msg", ""),
            ("ts", "1"),
            ("except", "0"),
            ("to", "9"),
            ("kick", "1"),
        ]);
        assert!(matches!(
            relayed("7-1", &kick),
            Some(Event::RelayedKick {
                target: ClientId(9),
                by: ClientId(7)
            })
        ));
    }
}
