//! Places: how many connections of each kind may hold a thread and a socket at
//! once, in all and from one address.
//!
//! A thread per connection makes every connection cost the same two things, a
//! thread and a descriptor, and both run out. So every connection, on either port,
//! holds a [`Place`] for as long as it holds either: one of the page's places while
//! it is an HTTP connection, a handshake place while its WebSocket handshake is in
//! progress, a client place from its handshake until its last thread and its
//! socket are gone. The totals come from the capacity plan ([`crate::capacity`]),
//! so the places add up to what the machine can carry; the per-address caps make
//! sure one host cannot take them all:
//!
//! | kind | in all | from one address |
//! |---|---|---|
//! | page connections | `--max-http` | `--max-http-per-host` |
//! | handshakes in progress | the plan's handshake places | `--max-handshakes-per-host` |
//! | chat clients | `--max-clients` | `--max-per-host` (chat and echo together) |
//! | echo clients (`--echo`) | [`ECHO_CLIENTS`] | (the same) |
//!
//! The address is the TCP peer's, never a header: `X-Forwarded-For` is whatever the
//! client writes. An IPv6 "address" here is its /64: one host is normally given a
//! whole /64 and can pick any address in it, so counting single IPv6 addresses would
//! give it millions of shares. Behind a reverse proxy every connection comes from
//! the proxy, so there the per-address caps are turned off (0) and the proxy does
//! that job.
//!
//! Why a mutex and a map, not atomics: a place is taken once per connection, not
//! per message, and taking one checks two counters that must move together (the
//! total and the address's). The map only holds addresses that have a connection
//! now, so it is as large as the places, not as the history.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

/// Echo connections at once with `--echo`. The endpoint serves conformance tools
/// (which open a few at a time), not people; a small cap keeps it from becoming a
/// way around the chat's.
pub const ECHO_CLIENTS: usize = 16;

/// What a connection is doing, as far as places go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An HTTP connection to the page.
    Http,
    /// A connection on the chat port whose WebSocket handshake is not done.
    Handshake,
    /// A chat client, from its handshake until its threads and socket are gone.
    Chat,
    /// An echo client (`--echo`), the same way.
    Echo,
}

impl Kind {
    fn index(self) -> usize {
        self as usize
    }

    /// Which per-address counter this kind shares: chat and echo clients count
    /// together, so `/echo` is no way around `--max-per-host`.
    fn host_index(self) -> usize {
        match self {
            Kind::Http => 0,
            Kind::Handshake => 1,
            Kind::Chat | Kind::Echo => 2,
        }
    }

    /// The flag that sets this kind's per-address cap, for refusal messages.
    fn per_host_flag(self) -> &'static str {
        match self {
            Kind::Http => "--max-http-per-host",
            Kind::Handshake => "--max-handshakes-per-host",
            Kind::Chat | Kind::Echo => "--max-per-host",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Http => "page connections",
            Kind::Handshake => "handshakes in progress",
            Kind::Chat => "chat clients",
            Kind::Echo => "echo clients",
        })
    }
}

/// How many places there are: in all per kind, and per address (0: no cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Places in all, indexed like [`Kind`]: page, handshake, chat, echo.
    pub total: [usize; 4],
    /// Per address: page connections, handshakes, clients (chat and echo).
    pub per_host: [usize; 3],
}

/// Why no place was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every place of this kind is taken.
    Full(Kind),
    /// This address already holds its share of this kind.
    HostFull(Kind, usize),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Full(Kind::Chat) => write!(f, "the chat is full, try again later"),
            Refusal::Full(kind) => write!(f, "the server has no room for more {kind}"),
            Refusal::HostFull(kind, cap) => write!(
                f,
                "your address already has {cap} {kind}, the most one address may have \
                 ({} on the server)",
                kind.per_host_flag()
            ),
        }
    }
}

/// Places taken now, and refusals so far (for `/stats`).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Occupancy {
    /// Page connections open.
    pub http: usize,
    /// WebSocket handshakes in progress.
    pub handshakes: usize,
    /// Chat clients (until their last thread and socket are gone).
    pub chat: usize,
    /// Echo clients.
    pub echo: usize,
    /// Connections refused because every place of their kind was taken.
    pub refused_full: u64,
    /// Connections refused because their address had its share.
    pub refused_per_host: u64,
}

struct Ledger {
    taken: [usize; 4],
    /// The server is stopping: nobody waits for room any more.
    closed: bool,
    /// Places held per address ([`host_of`]): page, handshake, client. Only
    /// addresses that hold at least one place are here.
    hosts: HashMap<IpAddr, [usize; 3]>,
    refused_full: u64,
    refused_per_host: u64,
}

/// The ledger of places, shared by both acceptors, every client thread and the
/// shutdown sequence.
pub struct Places {
    caps: Caps,
    ledger: Mutex<Ledger>,
    /// Signalled whenever a place is given back.
    freed: Condvar,
}

/// One place, held by a connection. Dropping it gives it back.
pub struct Place {
    places: Arc<Places>,
    kind: Kind,
    host: IpAddr,
}

impl Places {
    /// A ledger with these caps and nothing taken.
    pub fn new(caps: Caps) -> Arc<Places> {
        Arc::new(Places {
            caps,
            ledger: Mutex::new(Ledger {
                taken: [0; 4],
                closed: false,
                hosts: HashMap::new(),
                refused_full: 0,
                refused_per_host: 0,
            }),
            freed: Condvar::new(),
        })
    }

    /// Takes a place of `kind` for a connection from `host`, if one is free in all
    /// and `host` has not used up its share.
    pub fn take(self: &Arc<Self>, kind: Kind, peer: IpAddr) -> Result<Place, Refusal> {
        let host = host_of(peer);
        let mut ledger = self.lock();
        if ledger.taken[kind.index()] >= self.caps.total[kind.index()] {
            ledger.refused_full += 1;
            return Err(Refusal::Full(kind));
        }
        let cap = self.caps.per_host[kind.host_index()];
        let held = ledger.hosts.get(&host).map_or(0, |h| h[kind.host_index()]);
        if cap > 0 && held >= cap {
            ledger.refused_per_host += 1;
            return Err(Refusal::HostFull(kind, cap));
        }
        ledger.taken[kind.index()] += 1;
        ledger.hosts.entry(host).or_default()[kind.host_index()] += 1;
        Ok(Place {
            places: Arc::clone(self),
            kind,
            host,
        })
    }

    /// Blocks until at least one place of `kind` is free in all; false if the
    /// ledger is closed meanwhile. An acceptor calls this before `accept`, as
    /// mini-redis acquires its semaphore before accepting: while the server is full,
    /// new connections wait in the kernel's listen queue instead of being accepted
    /// only to be refused. Only the acceptor of a kind takes places of that kind, so
    /// the place is still free when it asks for it.
    pub fn wait_for_room(&self, kind: Kind) -> bool {
        let cap = self.caps.total[kind.index()];
        let ledger = self
            .freed
            .wait_while(self.lock(), |l| !l.closed && l.taken[kind.index()] >= cap)
            .unwrap_or_else(|p| p.into_inner());
        !ledger.closed
    }

    /// The server is stopping: wakes and ends every wait for room.
    pub fn close(&self) {
        self.lock().closed = true;
        self.freed.notify_all();
    }

    /// Places taken now and refusals so far.
    pub fn occupancy(&self) -> Occupancy {
        let ledger = self.lock();
        let [http, handshakes, chat, echo] = ledger.taken;
        Occupancy {
            http,
            handshakes,
            chat,
            echo,
            refused_full: ledger.refused_full,
            refused_per_host: ledger.refused_per_host,
        }
    }

    /// Waits until no connection on the chat port holds a place (handshakes, chat
    /// and echo clients), or `timeout` passes. Returns how many still do.
    pub fn wait_until_ws_empty(&self, timeout: Duration) -> usize {
        let ws = |l: &Ledger| l.taken[1] + l.taken[2] + l.taken[3];
        let ledger = self.lock();
        let (ledger, _) = self
            .freed
            .wait_timeout_while(ledger, timeout, |l| ws(l) > 0)
            .unwrap_or_else(|p| p.into_inner());
        ws(&ledger)
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        crate::lock(&self.ledger)
    }
}

/// The address a peer counts as: itself for IPv4 (also when it arrives as an
/// IPv4-mapped IPv6 address), its /64 for IPv6.
pub fn host_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut ledger = self.places.lock();
        ledger.taken[self.kind.index()] -= 1;
        if let Some(host) = ledger.hosts.get_mut(&self.host) {
            host[self.kind.host_index()] -= 1;
            if host.iter().all(|&n| n == 0) {
                ledger.hosts.remove(&self.host);
            }
        }
        drop(ledger);
        self.places.freed.notify_all();
    }
}

impl fmt::Debug for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Place({:?} for {})", self.kind, self.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    fn caps(total: [usize; 4], per_host: [usize; 3]) -> Arc<Places> {
        Places::new(Caps { total, per_host })
    }

    #[test]
    fn one_address_is_stopped_at_its_share_and_another_still_gets_in() {
        let places = caps([10, 10, 10, 10], [2, 2, 2]);
        let a1 = places.take(Kind::Chat, A).unwrap();
        let _a2 = places.take(Kind::Echo, A).unwrap();
        // Chat and echo share the per-address cap.
        assert_eq!(
            places.take(Kind::Chat, A).unwrap_err(),
            Refusal::HostFull(Kind::Chat, 2)
        );
        assert!(places.take(Kind::Chat, B).is_ok());
        // Other kinds have their own share.
        assert!(places.take(Kind::Http, A).is_ok());
        drop(a1);
        assert!(places.take(Kind::Chat, A).is_ok());
        assert_eq!(places.occupancy().refused_per_host, 1);
    }

    #[test]
    fn totals_hold_whoever_asks() {
        let places = caps([1, 1, 1, 0], [0, 0, 0]);
        let held = places.take(Kind::Http, A).unwrap();
        assert_eq!(
            places.take(Kind::Http, B).unwrap_err(),
            Refusal::Full(Kind::Http)
        );
        assert_eq!(
            places.take(Kind::Echo, A).unwrap_err(),
            Refusal::Full(Kind::Echo)
        );
        drop(held);
        assert!(places.wait_for_room(Kind::Http));
        assert_eq!(places.occupancy().refused_full, 2);
    }

    #[test]
    fn an_address_leaves_the_map_with_its_last_place() {
        let places = caps([10; 4], [3, 3, 3]);
        let held: Vec<Place> = (0..3)
            .map(|_| places.take(Kind::Handshake, B).unwrap())
            .collect();
        assert_eq!(places.lock().hosts.len(), 1);
        drop(held);
        assert!(places.lock().hosts.is_empty());
        assert_eq!(places.occupancy(), Occupancy::default());
    }

    #[test]
    fn waiting_for_room_wakes_when_a_place_is_given_back() {
        let places = caps([1, 1, 1, 1], [0, 0, 0]);
        let held = places.take(Kind::Handshake, A).unwrap();
        let waiter = {
            let places = Arc::clone(&places);
            std::thread::spawn(move || places.wait_for_room(Kind::Handshake))
        };
        drop(held);
        assert!(waiter.join().unwrap());
        assert_eq!(places.wait_until_ws_empty(Duration::ZERO), 0);
    }

    #[test]
    fn closing_ends_every_wait() {
        let places = caps([1, 1, 1, 1], [0, 0, 0]);
        let _held = places.take(Kind::Http, A).unwrap();
        let waiter = {
            let places = Arc::clone(&places);
            std::thread::spawn(move || places.wait_for_room(Kind::Http))
        };
        places.close();
        assert!(!waiter.join().unwrap(), "a closed ledger has no room");
    }

    #[test]
    fn an_ipv6_host_is_its_slash_64() {
        let places = caps([10; 4], [0, 0, 2]);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _one = places.take(Kind::Chat, a).unwrap();
        let _two = places.take(Kind::Chat, b).unwrap();
        assert!(
            places
                .take(Kind::Chat, "2001:db8:1:2::7".parse().unwrap())
                .is_err()
        );
        assert!(places.take(Kind::Chat, other).is_ok());
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(host_of(mapped), B);
    }

    #[test]
    fn refusals_name_the_flag_to_change() {
        let text = Refusal::HostFull(Kind::Http, 16).to_string();
        assert!(
            text.contains("--max-http-per-host") && text.contains("16"),
            "{text}"
        );
        assert!(Refusal::Full(Kind::Chat).to_string().contains("full"));
    }
}
