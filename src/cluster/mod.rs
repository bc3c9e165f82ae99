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
//! # A stream to order and keep, PUBLISH to hand over
//!
//! Pub/sub alone hands a message to whoever is subscribed at that instant and
//! keeps nothing: a node whose connection blinks has lost what was said
//! meanwhile and has no position to resume from. A stream (`threadchat:messages`)
//! keeps its last entries (`MINID ~`, `MAXLEN ~`), in one order, each with an
//! id, and reading from the last id seen resumes with no gap and no duplicate.
//! But a node that waits for entries with a blocking `XREAD` asks Redis again
//! after each one, and every request costs Redis a wake-up. So the script that
//! appends an entry also publishes it on `threadchat:live`, in the same step:
//! a node subscribed there gets every entry in the stream's order with no
//! request of its own, and reads the stream only to catch up, when it
//! (re)subscribes (`read.rs`).
//!
//! An entry is one batch of one node's ([`entry`]): its messages, kicks,
//! logins, seats and receipts, in their order. The message ids clients see come from the entry's
//! id: a script takes the batch's block of numbers from `threadchat:ids` and
//! appends the entry under the last of them in one atomic step, so ids increase
//! along the stream, and the entry says how many it took. One entry per batch,
//! rather than per message, is what keeps Redis' work per message small: every
//! node reads every entry, and an entry costs Redis about the same whatever its
//! length.
//!
//! # The threads
//!
//! Each in a file of its own beside this one:
//!
//! * `redis-out` (`append.rs`) takes what this node's clients said from the hub,
//!   over a bounded channel the hub fills with `try_send` (the hub never waits
//!   for Redis), and appends it, every message waiting in one entry and one call
//!   of a script (so the nodes reading the stream wake once for them all). When
//!   messages come often (50 a second or more), a batch waits to grow until
//!   the next tick of the wall clock (every 20 ms, the same instants on every
//!   node, so that Redis wakes once for all their batches); slower, each goes
//!   at once.
//! * `redis-in` (`read.rs`) follows the stream (what is published as it is
//!   appended; `XREAD` to catch up) and hands the items of every entry to the
//!   hub as ordinary events ([`Event::Relayed`], a direct
//!   message, a kick, a seat, a receipt…), once it has checked them against the
//!   protocol's bounds. A room message is delivered
//!   when it comes back this way, on every node alike.
//! * `redis-presence` (`presence.rs`) keeps this node's seats alive in Redis
//!   and lets go of a dead node's (below).
//!
//! # Who is where: seats on the stream
//!
//! Where a client sits (its room and name, or gone) is an item of the stream
//! too, a seat entry: the hub hands one to `redis-out` at every join, move,
//! rename and leave of its clients, in the same queue as their messages. Every
//! node applies every seat entry as it reads them, its own included (the hub
//! holds a client's change, and what the client asks after it, until its seat
//! comes back: `hub/seating.rs`), between the messages around them, so counts,
//! `who`, join and leave notifications, `welcome`'s count and history are the
//! same on every node as of the same entry, and a client's join is heard
//! everywhere before anything it says.
//!
//! * The script that appends a seat entry also writes it into the node's hash
//!   (`threadchat:presence:<node>`: client id → room and name), in the same
//!   step. So the hashes are where everyone sits as of the stream's last entry
//!   (but for a hash that expired and has not been let go or said again yet),
//!   and a node that joins reads both in one step ([`JOIN`]) and reads on from
//!   there.
//! * Each node keeps its hash alive: it expires [`PRESENCE_TTL`] after the
//!   node's last heartbeat ([`PRESENCE_EVERY`]). A node that dies without a word
//!   lets its hash expire, and the first node to notice appends a `gone`
//!   entry for it, once (a script takes it off the node list in the same
//!   step): everyone drops its clients at the same place in the stream, within
//!   `PRESENCE_TTL + PRESENCE_EVERY`, 6 s.
//! * So a node is alive, as of an entry, from its first entry (a seats entry
//!   with nobody, appended when it joins, before it serves anyone) or any seats
//!   or seat entry of its own, until its `gone` entry; a node that joins takes
//!   the nodes with a hash for alive.
//! * A node that finds itself off the list (Redis lost its data, or it was cut
//!   off for longer than the TTL and let go) says where all its clients are in
//!   one seats entry, which replaces what the others knew of them. So does a
//!   node that heals after a cut-off: what moved meanwhile was never appended.
//! * Seat entries a node may never read (the stream trimmed past it while it
//!   was cut off, or started again when Redis lost its data) are read from the
//!   hashes instead, once it has caught up. And a node off the list for 15 s
//!   with no entry letting it go (it died while Redis was losing its data) is
//!   let go then, with a `gone` entry too: a mark in Redis, not the list, makes
//!   that once.
//! * Old and new nodes do not share a cluster: an entry became a batch of
//!   items. Upgrade every node together.
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
//!   stream still holds it ([`STREAM_KEEPS`]). Message ids are consecutive along
//!   the stream, so when the first id it reads jumps, the node knows some are
//!   gone and tells its clients ([`Event::Missed`]);
//! * the node's own epoch ends: what was said in it stays with those who heard it
//!   (the others never did) and leaves the histories. Their cluster part was kept
//!   apart meanwhile, so they are the stream's again;
//! * the clients get a second `cluster` notification with the cluster's epoch, and the
//!   counts take the others back in;
//! * in case Redis lost its data, the id counter is raised past every id given
//!   before ("When Redis lost its data" below), and the epoch and node counter
//!   are written back.
//!
//! A batch is appended by one call of a script, all of it or none. A batch
//! `redis-out` could not append is sent again on a new connection. Each batch
//! carries its number in this process, and the script skips a number already
//! appended and records each one it appends, in the same atomic step, so a
//! batch whose answer was lost is not appended twice. How the tries end
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
//!   tries end, Redis is asked whether it holds the batch (an earlier try may
//!   have appended it, its answer lost), and only if not do its senders get an
//!   error frame.
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
//! is missing), or below an id it has seen (Redis back from an older snapshot,
//! or a replica that lagged taking over), starts it again at the clock ([`RAISE_IDS`]), before anyone
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
//! the target's node delivers it and appends a receipt (`delivered` or
//! `undelivered`, which take no id), and the sender's node sends the sender's
//! copy, or an error, when it reads the receipt (`hub/receipts.rs` says why).
//! So does an admin's kick of a client on another node: that client's node
//! closes it, or says it is not there. And so does a Socket.IO chat page's
//! `login`, which its room hears on every node in the stream's order, before
//! anything the page says after it.
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

mod access;
mod append;
mod entry;
mod presence;
mod read;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

pub use self::access::RedisAccess;
use self::append::{append_messages, say_joined};
use self::entry::events;
use self::presence::{Keep, seats_of, share_presence};
use self::read::{READ_BLOCK, entries, message_id, read_stream};
use crate::backoff::Backoff;
use crate::event::{Event, HubSide, Location, Publish};
use crate::logging::Untrusted;
use crate::protocol::ClientId;

/// The stream every node appends to and reads.
const STREAM: &str = "threadchat:messages";
/// The channel every entry is published on as it is appended ([`entry::published`]):
/// how the nodes following the stream live hear of it without asking.
const LIVE: &str = "threadchat:live";
/// The counter message ids come from.
const IDS: &str = "threadchat:ids";
/// The counter node numbers come from.
const NODES: &str = "threadchat:nodes";
/// When the chat (the cluster) first started: `welcome`'s epoch on every node.
const EPOCH: &str = "threadchat:epoch";
/// Where the id counter started again after Redis lost its data (`at`), and the
/// highest id the node that started it had seen (`seen`): see [`RAISE_IDS`].
const LIFTED: &str = "threadchat:lifted";

/// What the stream keeps, about: the entries of its last this many message ids
/// (`MINID ~`), and at most this many entries (`MAXLEN ~`, for a stream of
/// seats with no message between them). What a node can catch up on after
/// losing Redis for a while.
const STREAM_KEEPS: usize = 100_000;

/// Messages waiting for `redis-out`. When Redis is slower than the chat, the hub
/// refuses what does not fit rather than wait.
pub const OUTGOING_QUEUE: usize = 1_024;

/// The most those hold: a message's name and text, 8 KiB of UTF-8 at most (and
/// at times one seats entry, about 60 bytes per client of the node).
pub const OUTGOING_BYTES: u64 = OUTGOING_QUEUE as u64 * 8 * 1024;

/// What else the cluster's threads and the hub hold at most: one read of the
/// stream (its entries, each a batch of about [`append::BATCH_BYTES`] at most,
/// as Redis' answer and as events), and the direct messages awaiting other
/// nodes' receipts (1,024 of 8 KiB).
pub const READ_BYTES: u64 =
    2 * read::READ_COUNT as u64 * append::BATCH_BYTES as u64 + 1_024 * 8 * 1024;

/// How often a node keeps its seat hash alive and looks for dead nodes.
pub const PRESENCE_EVERY: Duration = Duration::from_secs(1);
/// How long a node's seat hash outlives its last heartbeat.
pub const PRESENCE_TTL: Duration = Duration::from_secs(5);
/// The prefix of every node's seat hash.
const PRESENCE: &str = "threadchat:presence:";
/// The nodes that have said they exist (each removed once its hash is gone).
const NODE_SET: &str = "threadchat:presence-nodes";
/// The prefix of the keys that say a node was let go (`presence::let_go_mark`).
const LET_GO_MARK: &str = "threadchat:let-go:";

/// Raises a counter (KEYS[1]) to at least ARGV[1]: after Redis lost its data (a
/// restart without persistence), the node numbers given out are not given again.
const RAISE: &str = "local n = tonumber(redis.call('GET', KEYS[1]) or '0') \
    if n < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end \
    return 0";

/// Raises the id counter (KEYS[1]) to at least ARGV[1], the highest id this node
/// has seen, so nobody's `XREAD` position or `since` falls behind new entries.
/// A counter that is gone though the node has seen ids (ARGV[1] > 0), or below an
/// id it has seen (Redis back from an older snapshot, or a replica that lagged
/// taking over: in running order the counter is past every id given), means
/// Redis lost data, and ids other nodes gave may be past any this node has seen:
/// the counter starts again at Redis' clock in microseconds (`TIME`), which every
/// id given before is under ("When Redis lost its data" above), and KEYS[2]
/// ([`LIFTED`]) says where, for the readers. The clock is written as Redis gives
/// it, seconds and microseconds side by side, never through a Lua number's
/// formatting.
const RAISE_IDS: &str = "local seen = tonumber(ARGV[1]) \
    local n = redis.call('GET', KEYS[1]) \
    if n and tonumber(n) >= seen then return 0 end \
    if seen == 0 then return 0 end \
    local t = redis.call('TIME') \
    local at = t[1] .. string.format('%06d', tonumber(t[2])) \
    if tonumber(at) <= seen then at = ARGV[1] end \
    redis.call('SET', KEYS[1], at) \
    redis.call('HSET', KEYS[2], 'at', at, 'seen', ARGV[1]) \
    return 0";

/// What a node that joins reads in one atomic step: the stream's last entries
/// (KEYS[1]), back to ARGV[1] ids taken or ARGV[1] entries, whichever comes
/// first; every listed node's (KEYS[2]) seat hash (ARGV[2] and the node's
/// number); and those nodes, in the same order. The hashes change in the same
/// step as the seat entries (`append.rs`), so they are where everyone sat at
/// the stream's last entry, the one this node reads on from, and the nodes
/// with one are those alive there.
const JOIN: &str = "local want = tonumber(ARGV[1]) \
    local recent, taken, upto = {}, 0, '+' \
    while taken < want and #recent < want do \
    local count = math.min(64, want - #recent) \
    local page = redis.call('XREVRANGE', KEYS[1], upto, '-', 'COUNT', count) \
    for _, e in ipairs(page) do \
    recent[#recent + 1] = e \
    for i = 1, #e[2], 2 do \
    if e[2][i] == 'said' then taken = taken + (tonumber(e[2][i + 1]) or 0) end \
    end \
    end \
    if #page < count then break end \
    upto = '(' .. page[#page][1] \
    end \
    local listed = redis.call('SMEMBERS', KEYS[2]) \
    local seats = {} \
    for _, node in ipairs(listed) do \
    seats[#seats + 1] = redis.call('HGETALL', ARGV[2] .. node) \
    end \
    return {recent, seats, listed}";

/// What [`JOIN`] answers: the stream's last entries, and where everyone sits
/// as of the last of them.
struct Snapshot {
    /// The last entries, newest first, as an `XREVRANGE` answers them.
    recent: redis::Value,
    /// Every listed node's seat hash (empty for one that expired), in the
    /// order of `listed`.
    hashes: Vec<HashMap<String, String>>,
    listed: Vec<u64>,
}

/// Where every other node's clients sit, and the nodes alive.
struct Seating {
    seats: Vec<(ClientId, Location)>,
    /// The nodes whose hash is there.
    alive: Vec<u64>,
}

impl Snapshot {
    /// Runs [`JOIN`] on `con` for the entries that hold `wanted` messages.
    fn take(con: &mut redis::Connection, wanted: usize) -> redis::RedisResult<Snapshot> {
        let (recent, hashes, listed) = redis::cmd("EVAL")
            .arg(JOIN)
            .arg(2)
            .arg(STREAM)
            .arg(NODE_SET)
            .arg(wanted)
            .arg(PRESENCE)
            .query(con)?;
        Ok(Snapshot {
            recent,
            hashes,
            listed,
        })
    }

    fn seating(&self) -> Seating {
        let alive = (self.listed.iter().zip(&self.hashes))
            .filter(|(_, hash)| !hash.is_empty())
            .map(|(node, _)| *node)
            .collect();
        let seats = self.hashes.iter().flat_map(seats_of).collect();
        Seating { seats, alive }
    }
}

/// The room messages and logins of `recent` (the stream's last entries, newest
/// first) that the hub starts from, oldest first, `wanted` at most: what fills
/// the rooms' histories. The hashes say where everyone sits now, and which nodes
/// are alive; direct messages, kicks and receipts were for clients gone since.
fn backfill_of(recent: &[(String, HashMap<String, String>)], wanted: usize) -> Vec<Event> {
    let mut backfill: Vec<Event> = recent
        .iter()
        .rev()
        .filter_map(|(id, fields)| events(id, fields))
        .flatten()
        .filter(|event| matches!(event, Event::Relayed(_) | Event::RelayedLogin { .. }))
        .collect();
    backfill.drain(..backfill.len().saturating_sub(wanted));
    backfill
}

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
    /// Where the other nodes' clients were when this node joined (once).
    elsewhere: Mutex<Vec<(ClientId, Location)>>,
    /// The other nodes alive when this node joined (once).
    alive: Mutex<Vec<u64>>,
    /// The stream's recent entries at start, for the hub's histories.
    backfill: Mutex<Vec<Event>>,
    stop: Arc<AtomicBool>,
}

impl Cluster {
    /// Connects to `redis` and takes this node's number. An unreachable Redis (or
    /// one that refuses the password) is an error at start: a node that was asked
    /// to be part of a cluster does not run alone.
    /// `backfill` is how many of the stream's last messages the hub is given at
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
        // Trimming by id (`MINID`) came with Redis 6.2: an older one would take
        // the first 100,000 messages and refuse every batch after them.
        let _: u64 = (redis::cmd("XTRIM").arg(STREAM).arg("MINID").arg(0))
            .query(&mut con)
            .map_err(|e| format!("--redis {shown}: Redis 6.2 or newer is needed ({e})"))?;
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
        // Listed, with a hash, before any client of this node can have a seat.
        let () = redis::pipe()
            .cmd("HSET")
            .arg(format!("{PRESENCE}{node}"))
            .arg(0)
            .arg("")
            .ignore()
            .cmd("PEXPIRE")
            .arg(format!("{PRESENCE}{node}"))
            .arg(PRESENCE_TTL.as_millis() as u64)
            .ignore()
            .cmd("SADD")
            .arg(NODE_SET)
            .arg(node)
            .ignore()
            .query(&mut con)
            .map_err(fail)?;
        // Alive, for the others, before any client of this node has an id. The
        // first write of the script and of the channel: where a user made for an
        // older version, without the channel, is refused.
        say_joined(&mut con, node).map_err(|e| {
            let denied = e.code() == Some("NOPERM") || e.to_string().contains("can't run");
            let hint = format!(
                " (the user needs the channel {LIVE} and +publish +subscribe +ping: DEPLOY.md)"
            );
            format!(
                "--redis {shown}: {e}{}",
                if denied { &hint[..] } else { "" }
            )
        })?;
        let epoch: u64 = redis::cmd("GET").arg(EPOCH).query(&mut con).map_err(fail)?;
        let snapshot = Snapshot::take(&mut con, backfill.clamp(1, STREAM_KEEPS)).map_err(fail)?;
        let Seating {
            seats: elsewhere,
            mut alive,
        } = snapshot.seating();
        alive.retain(|n| *n != node);
        let recent = entries(snapshot.recent);
        let start_after = recent
            .first()
            .map_or_else(|| "0-0".to_string(), |(id, _)| id.clone());
        let backfill = backfill_of(&recent, backfill);
        Ok(Cluster {
            node,
            epoch,
            redis: redis.clone(),
            highest: Arc::new(AtomicU64::new(message_id(&start_after).unwrap_or(0))),
            start_after,
            elsewhere: Mutex::new(elsewhere),
            alive: Mutex::new(alive),
            backfill: Mutex::new(backfill),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// What the hub needs of the bridge, its end of `outgoing` included.
    pub fn hub_side(&self, outgoing: Sender<Publish>) -> HubSide {
        HubSide {
            node: self.node,
            outgoing,
            elsewhere: std::mem::take(&mut *crate::lock(&self.elsewhere)),
            alive: std::mem::take(&mut *crate::lock(&self.alive)),
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
        let (redis, stop) = (self.redis.clone(), Arc::clone(&self.stop));
        let keep = Keep {
            node: self.node,
            epoch: self.epoch,
            highest: Arc::clone(&self.highest),
        };
        let to_hub = hub.clone();
        thread::Builder::new()
            .name("redis-presence".into())
            .spawn(move || share_presence(&redis, &keep, &to_hub, &stop))?;
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

fn connect(redis: &RedisAccess) -> redis::RedisResult<redis::Connection> {
    let con = redis
        .client
        .get_connection_with_timeout(Duration::from_secs(5))?;
    // Every command answers at once (the subscription has deadlines of its own,
    // `read.rs`); a Redis that does not
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
