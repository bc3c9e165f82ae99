//! `redis-presence`: once a second, where this node's clients are goes out to
//! Redis and where the other nodes' are comes in; and what a node keeps in Redis
//! in case Redis lost its data.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use crossbeam_channel::Sender;

use super::{
    EPOCH, IDS, LIFTED, Link, NODE_SET, NODES, PRESENCE, PRESENCE_EVERY, PRESENCE_TTL, RAISE,
    RAISE_IDS, RedisAccess,
};
use crate::event::{Event, Location, Whereabouts};
use crate::protocol::{self, ClientId, NamedClient};

/// What every node keeps in Redis besides its presence, in case Redis lost its
/// data (restarted without persistence): the cluster's epoch, the node counter
/// past its number, the id counter past every id it has seen. So a node started
/// after such a restart joins the same chat, with a number and ids of its own.
pub(super) struct Keep {
    pub(super) node: u64,
    pub(super) epoch: u64,
    pub(super) highest: Arc<AtomicU64>,
}

/// `redis-presence`: where this node's clients are out, the other nodes' in,
/// until `stop`.
pub(super) fn share_presence(
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
    let () = announce(keep, mine, whereabouts).query(con)?;
    // The nodes that said they exist, and, in one round trip, what each holds.
    let nodes: Vec<u64> = redis::cmd("SMEMBERS").arg(NODE_SET).query(con)?;
    let others: Vec<u64> = nodes.into_iter().filter(|n| *n != keep.node).collect();
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
        for (id, location) in members {
            let Some((room, member)) = member_of(&id, &location) else {
                continue;
            };
            rooms.entry(room.to_string()).or_default().push(member);
        }
    }
    for members in rooms.values_mut() {
        members.sort_unstable_by_key(|member| member.id);
    }
    Ok(rooms)
}

/// What this node says of itself once a second, in one round trip: what it
/// keeps in case Redis lost its data ([`Keep`]), that it exists, and its hash of
/// where its clients are, rewritten whole (expiring after [`PRESENCE_TTL`]).
fn announce(keep: &Keep, mine: &str, whereabouts: &Whereabouts) -> redis::Pipeline {
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
    pipe.cmd("SADD").arg(NODE_SET).arg(keep.node).ignore();
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
    pipe
}

/// One field of another node's hash (client id → room and name) as a member of
/// that room, or `None` outside the protocol's bounds: a name goes into
/// notifications, whose size the hub's batches count on.
fn member_of<'a>(id: &str, location: &'a str) -> Option<(&'a str, NamedClient)> {
    let id = id.parse::<u64>().ok()?;
    let (room, name) = location.split_once('\n')?;
    if protocol::check_name(name).is_err() || !protocol::is_room(room) {
        return None;
    }
    let member = NamedClient {
        id: ClientId(id),
        name: name.to_string(),
    };
    Some((room, member))
}
