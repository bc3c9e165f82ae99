//! `redis-presence`: once a second, this node's seats kept alive in Redis, the
//! seats of a node that died let go, and what a node keeps in Redis in case
//! Redis lost its data. Where clients are travels on the stream (seat entries);
//! the hashes are for a node that joins, and for noticing a death.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::entry::checked_seat;
use super::{
    EPOCH, IDS, LET_GO_MARK, LIFTED, LIVE, Link, NODE_SET, NODES, PRESENCE, PRESENCE_EVERY,
    PRESENCE_TTL, RAISE, RAISE_IDS, RedisAccess, STREAM, STREAM_KEEPS,
};
use crate::event::{Event, Location};
use crate::protocol::ClientId;

/// What every node keeps in Redis besides its presence, in case Redis lost its
/// data (restarted without persistence): the cluster's epoch, the node counter
/// past its number, the id counter past every id it has seen. So a node started
/// after such a restart joins the same chat, with a number and ids of its own.
pub(super) struct Keep {
    pub(super) node: u64,
    pub(super) epoch: u64,
    pub(super) highest: Arc<AtomicU64>,
}

/// `redis-presence`: keeps this node's seats alive in Redis, notices when the
/// others may have lost them, and lets go of the seats of a node that died
/// without a word, until `stop`.
pub(super) fn share_presence(
    redis: &RedisAccess,
    keep: &Keep,
    hub: &Sender<Event>,
    stop: &AtomicBool,
) {
    let mine = format!("{PRESENCE}{}", keep.node);
    let mut link = Link::new(redis);
    let mut roll = Roll::default();
    while !stop.load(Ordering::Relaxed) {
        let beat = link.get().and_then(|c| {
            let missing = keep_alive(c, keep, &mine)?;
            let listed = release_the_dead(c, keep.node)?;
            // Off the list for long with no entry letting it go: it died while
            // Redis was losing its data. Let go now, in the stream's order too.
            // Forgotten only once let go: if Redis fails first, the next
            // beat tries again.
            for node in roll.call(&listed) {
                let_go(c, node)?;
                roll.forget(node);
            }
            Ok(missing)
        });
        match beat {
            Ok(missing) => {
                if missing && hub.send(Event::Reannounce).is_err() {
                    return;
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

/// The other nodes this node has seen listed, for noticing one that is gone
/// though no entry said so (Redis lost its data while it died, so nobody could
/// let it go).
#[derive(Default)]
struct Roll {
    seen: HashSet<u64>,
    /// Seen before, and not listed since then.
    missing_since: HashMap<u64, Instant>,
}

/// How long a node seen before may be off the list before it is taken for gone:
/// a node that lives lists itself again once its own heartbeat reaches Redis,
/// which its pauses between tries (5 s at most) and the TTL bound.
const OFF_THE_LIST: Duration = Duration::from_secs(15);

impl Roll {
    /// The nodes gone now: seen before, and off the list for [`OFF_THE_LIST`].
    /// Each stays in the roll until it is [`forgotten`](Roll::forget).
    fn call(&mut self, listed: &[u64]) -> Vec<u64> {
        let now = Instant::now();
        for node in self.seen.iter().filter(|n| !listed.contains(n)) {
            self.missing_since.entry(*node).or_insert(now);
        }
        for node in listed {
            self.seen.insert(*node);
            self.missing_since.remove(node);
        }
        (self.missing_since.iter())
            .filter(|(_, since)| now.duration_since(**since) >= OFF_THE_LIST)
            .map(|(node, _)| *node)
            .collect()
    }

    /// Node `node` was let go: no more to look for.
    fn forget(&mut self, node: u64) {
        self.seen.remove(&node);
        self.missing_since.remove(&node);
    }
}

/// What this node says of itself once a second, in one round trip: what it
/// keeps in case Redis lost its data ([`Keep`]), that it exists, and that its
/// seat hash lives on for [`PRESENCE_TTL`] (field `0` keeps it there while the
/// node has nobody). `true` when the node was not listed, or its hash was gone:
/// Redis lost its data, or the hash expired (and another node may have let its
/// seats go), so the others, and nodes that join later, need to hear where its
/// clients are.
fn keep_alive(con: &mut redis::Connection, keep: &Keep, mine: &str) -> redis::RedisResult<bool> {
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
        .arg(keep.node)
        .ignore();
    pipe.cmd("EVAL")
        .arg(RAISE_IDS)
        .arg(2)
        .arg(IDS)
        .arg(LIFTED)
        .arg(keep.highest.load(Ordering::Relaxed))
        .ignore();
    pipe.cmd("HSET").arg(mine).arg(0).arg("");
    pipe.cmd("PEXPIRE")
        .arg(mine)
        .arg(PRESENCE_TTL.as_millis() as u64)
        .ignore();
    pipe.cmd("SADD").arg(NODE_SET).arg(keep.node);
    // Alive: a mark left by its being let go must not stop the next time.
    // After the `HSET`: `LET_GO` looks at the hash before the mark, so no
    // other node lets this one go between the two.
    pipe.cmd("DEL").arg(let_go_mark(keep.node)).ignore();
    let (hash_made, listed_anew): (u64, u64) = pipe.query(con)?;
    // A hash made anew had expired: what it said of the clients is gone.
    Ok(hash_made == 1 || listed_anew == 1)
}

/// Lets go of the seats of every node whose hash expired (it died without a
/// word, or has been cut off for longer than [`PRESENCE_TTL`]): a `gone`
/// entry, appended once, by whichever node finds it first ([`LET_GO`]).
/// Returns the other nodes still listed.
fn release_the_dead(con: &mut redis::Connection, node: u64) -> redis::RedisResult<Vec<u64>> {
    let nodes: Vec<u64> = redis::cmd("SMEMBERS").arg(NODE_SET).query(con)?;
    let others: Vec<u64> = nodes.into_iter().filter(|n| *n != node).collect();
    if others.is_empty() {
        return Ok(others);
    }
    let mut exists = redis::pipe();
    for other in &others {
        exists.cmd("EXISTS").arg(format!("{PRESENCE}{other}"));
    }
    let alive: Vec<bool> = exists.query(con)?;
    let mut listed = Vec::with_capacity(others.len());
    for (other, alive) in others.iter().zip(alive) {
        if alive {
            listed.push(*other);
        } else {
            let_go(con, *other)?;
        }
    }
    Ok(listed)
}

/// Lets node `node` go for everyone, once ([`LET_GO`]): a `gone` entry,
/// unless its hash is there after all or another node let it go first.
fn let_go(con: &mut redis::Connection, node: u64) -> redis::RedisResult<()> {
    let appended: u64 = redis::cmd("EVAL")
        .arg(LET_GO)
        .arg(5)
        .arg(STREAM)
        .arg(IDS)
        .arg(NODE_SET)
        .arg(format!("{PRESENCE}{node}"))
        .arg(let_go_mark(node))
        .arg(STREAM_KEEPS)
        .arg(node)
        .arg(crate::protocol::unix_millis())
        .arg(LIVE)
        .query(con)?;
    if appended == 1 {
        log::info!("cluster: node {node} is gone without a word: its clients leave");
    }
    Ok(())
}

/// The key that says node `node` was let go: while it is there, nobody lets
/// it go again; the node removes it at its next heartbeat, if it lives.
fn let_go_mark(node: u64) -> String {
    format!("{LET_GO_MARK}{node}")
}

/// Lets node ARGV[2] go, once: KEYS[1] the stream, KEYS[2] the id counter,
/// KEYS[3] the set of nodes, KEYS[4] the node's hash, KEYS[5] its mark
/// ([`let_go_mark`]); ARGV[1] MAXLEN, ARGV[3] the time, ARGV[4] the channel the
/// entry is published on ([`LIVE`]). Nothing if its hash is there after all,
/// or the mark is (another node let it go first); else the mark (for an hour,
/// past every other node's 15 s off the list but for one cut off meanwhile,
/// whose second `gone` entry finds nobody to drop), the node off the list, and a `gone` entry for it (its clients leave, and the node is
/// dead), which takes no id: `<the last id>-<next>`, as `append.rs` numbers
/// seats. The mark, not the list, makes it once: a node that died while Redis
/// was losing its data is on no list, and every node that saw it listed lets
/// it go ([`Roll`]).
const LET_GO: &str = "if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end \
    if not redis.call('SET', KEYS[5], '1', 'NX', 'EX', 3600) then return 0 end \
    redis.call('SREM', KEYS[3], ARGV[2]) \
    local id = tonumber(redis.call('GET', KEYS[2]) or '0') \
    local seq = 2 \
    local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1] \
    if top then \
    local dash = string.find(top[1], '-', 1, true) \
    local tid = tonumber(string.sub(top[1], 1, dash - 1)) \
    if tid > id then id, seq = tid, 2 end \
    if tid == id then seq = math.max(tonumber(string.sub(top[1], dash + 1)), 1) + 1 end \
    end \
    local entry, items = string.format('%.0f', id) .. '-' .. seq, '[{\"k\":\"gone\",\"t\":' .. ARGV[3] .. '}]' \
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], entry, 'node', ARGV[2], 'said', '0', 'items', items) \
    redis.call('PUBLISH', ARGV[4], entry .. '\\n' .. ARGV[2] .. '\\n0\\n' .. items) \
    return 1";

/// Where every other node's clients are, as their hashes say: field `id`,
/// value room and name (field `0` is no client). Those outside the protocol's
/// bounds are left out.
pub(super) fn seats_of(held: &HashMap<String, String>) -> Vec<(ClientId, Location)> {
    held.iter()
        .filter_map(|(id, seat)| {
            let (room, name) = seat.split_once('\n')?;
            let (room, client) = checked_seat(id.parse().ok()?, room, name)?;
            Some((
                client.id,
                Location {
                    room,
                    name: client.name,
                },
            ))
        })
        .collect()
}
