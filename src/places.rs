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
//! client writes. Behind a reverse proxy every connection comes from the proxy, so
//! there the per-address caps are turned off (0) and the proxy does that job.
//!
//! # IPv6: a share per address, a ceiling per /64
//!
//! Every address has its own share, IPv6 ones too (an IPv4-mapped one counts as its
//! IPv4 address). But one IPv6 host is normally given a whole /64 and may pick any
//! address in it, so a share per address alone would give it millions of shares.
//! Counting the /64 as one address would do the opposite harm: every phone and
//! laptop of a household, or of a LAN that shares the server's /64, would share
//! one address's places. So an IPv6 address has its share, and all the addresses
//! of one /64 together have a ceiling of [`NETWORK_SHARES`] shares:
//!
//! | kind | from one address | from one IPv6 /64 |
//! |---|---|---|
//! | page connections | `--max-http-per-host` | 4 × `--max-http-per-host` |
//! | handshakes in progress | `--max-handshakes-per-host` | 4 × `--max-handshakes-per-host` |
//! | chat and echo clients | `--max-per-host` | 4 × `--max-per-host` |
//!
//! With the defaults, one host that rotates its addresses holds at most 128 of 1024
//! chat places, 64 of 256 page connections and 32 of 128 handshakes: the rest stay
//! for everyone else. The rule is the same for every /64, with no exceptions to
//! get wrong: link-local addresses (all in `fe80::/64`, so everyone who reaches us
//! by one shares its ceiling) and the server's own /64 (a LAN whose devices all
//! have addresses in it) included. Such a LAN has four addresses' worth of places
//! in all over IPv6, and a bigger gathering raises the per-address caps, which
//! raise the ceiling with them: a host on the link can pick any address of it, so
//! exempting the LAN would hand that host every place. When a /64 is refused at
//! its ceiling, the log line names the addresses in it that hold the most
//! ([`Places::holders`]), since the refused one is only the latest of them.
//!
//! Why a mutex and maps, not atomics: a place is taken once per connection, not
//! per message, and taking one checks counters that must move together (the
//! total, the address's and its /64's). The maps only hold addresses and /64s that
//! have a connection now, so they are as large as the places, not as the history.

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

/// How many addresses' shares all the addresses of one IPv6 /64 may hold together.
/// A /64 is normally one household's or one host's: four lets a few devices in it
/// each use a full share at once, while a host that picks address after address in
/// its /64 gets no more than four (see the module's doc).
pub const NETWORK_SHARES: usize = 4;

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    /// Page connections.
    pub http: Cap,
    /// Handshakes in progress on the chat port.
    pub handshakes: Cap,
    /// Chat clients; their per-address cap counts an address's echo clients too,
    /// so `/echo` is no way around `--max-per-host`.
    pub clients: Cap,
    /// Echo clients in all (`--echo`).
    pub echo: usize,
}

/// Places of one kind: in all, and for one address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cap {
    /// In all.
    pub total: usize,
    /// For one address (or a /64's share of it).
    pub per_host: usize,
}

impl Caps {
    /// Places of `kind` in all.
    fn total(&self, kind: Kind) -> usize {
        match kind {
            Kind::Http => self.http.total,
            Kind::Handshake => self.handshakes.total,
            Kind::Chat => self.clients.total,
            Kind::Echo => self.echo,
        }
    }

    /// Places of `kind` one address may hold.
    fn per_host(&self, kind: Kind) -> usize {
        match kind {
            Kind::Http => self.http.per_host,
            Kind::Handshake => self.handshakes.per_host,
            Kind::Chat | Kind::Echo => self.clients.per_host,
        }
    }
}

/// Where a client connects from, as a cap per address counts it: an IPv4
/// address, or an IPv6 address's /64, since a host may pick a new address in it
/// for every connection; the hosts of a /64 together have [`NETWORK_SHARES`]
/// addresses' worth, as they have of places.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    Address(IpAddr),
    Network(Network64),
}

impl Origin {
    pub fn of(address: IpAddr) -> Origin {
        network_of(address).map_or(Origin::Address(address), Origin::Network)
    }

    /// What a cap of `per_address` allows it.
    pub fn cap(self, per_address: usize) -> usize {
        match self {
            Origin::Address(_) => per_address,
            Origin::Network(_) => per_address.saturating_mul(NETWORK_SHARES),
        }
    }
}

/// An IPv6 /64: the network one host is normally given whole. Holds the address
/// with its last 64 bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Network64(Ipv6Addr);

impl Network64 {
    /// The /64 that `address` is in.
    pub fn of(address: Ipv6Addr) -> Network64 {
        Network64(Ipv6Addr::from_bits(
            address.to_bits() & !((1u128 << 64) - 1),
        ))
    }

    fn contains(self, address: Ipv6Addr) -> bool {
        Network64::of(address) == self
    }
}

impl fmt::Display for Network64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/64", self.0)
    }
}

/// Why no place was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every place of this kind is taken.
    Full(Kind),
    /// This address already holds its share of this kind.
    HostFull(Kind, usize),
    /// The addresses of this /64 together hold its ceiling of this kind (the
    /// number), [`NETWORK_SHARES`] shares.
    NetworkFull(Kind, usize, Network64),
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
            Refusal::NetworkFull(kind, ceiling, network) => write!(
                f,
                "your network {network} already has {ceiling} {kind}, the most one /64 \
                 may have ({NETWORK_SHARES} × {} on the server)",
                kind.per_host_flag()
            ),
        }
    }
}

/// Who holds the places of one kind in one /64, for the log line of a
/// [`Refusal::NetworkFull`]: the refused address is only the latest of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holders {
    network: Network64,
    /// The addresses that hold the most, with how many each, most first.
    most: Vec<(Ipv6Addr, usize)>,
    /// How many other addresses of the /64 hold some.
    others: usize,
}

impl Holders {
    /// Addresses named in a log line; the rest are counted.
    const NAMED: usize = 3;
}

impl fmt::Display for Holders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.most.is_empty() {
            return write!(f, "no address of {} holds one now", self.network);
        }
        write!(f, "{} is held by ", self.network)?;
        for (i, (address, held)) in self.most.iter().enumerate() {
            let comma = if i == 0 { "" } else { ", " };
            write!(f, "{comma}{address} ({held})")?;
        }
        match self.others {
            0 => Ok(()),
            1 => write!(f, " and 1 more address"),
            n => write!(f, " and {n} more addresses"),
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
    /// Connections refused because their IPv6 /64 had its ceiling.
    pub refused_per_network: u64,
}

/// Places held by one address or one /64: page, handshake, client, indexed like
/// [`Kind::host_index`].
type Held = [usize; 3];

struct Ledger {
    taken: [usize; 4],
    /// The server is stopping: nobody waits for room any more.
    closed: bool,
    /// Places held per address ([`host_of`]). Only addresses that hold at least
    /// one place are here.
    hosts: HashMap<IpAddr, Held>,
    /// Places held per IPv6 /64, all its addresses together; the same way.
    networks: HashMap<Network64, Held>,
    refused_full: u64,
    refused_per_host: u64,
    refused_per_network: u64,
}

impl Ledger {
    /// Why `host` may not take a place of `kind`, if its share (or its /64's
    /// ceiling) is used up: `cap` is the per-address share, 0 for none.
    fn share_used_up(&self, kind: Kind, host: IpAddr, cap: usize) -> Option<Refusal> {
        let i = kind.host_index();
        if cap == 0 {
            return None;
        }
        if self.hosts.get(&host).map_or(0, |h| h[i]) >= cap {
            return Some(Refusal::HostFull(kind, cap));
        }
        let network = network_of(host)?;
        let ceiling = cap.saturating_mul(NETWORK_SHARES);
        (self.networks.get(&network).map_or(0, |n| n[i]) >= ceiling)
            .then_some(Refusal::NetworkFull(kind, ceiling, network))
    }
}

/// Gives back one place of `index` held by `key`; forgets `key` once it holds none.
fn give_back<K: std::hash::Hash + Eq>(held: &mut HashMap<K, Held>, key: &K, index: usize) {
    if let Some(counts) = held.get_mut(key) {
        counts[index] -= 1;
        if counts.iter().all(|&n| n == 0) {
            held.remove(key);
        }
    }
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
                networks: HashMap::new(),
                refused_full: 0,
                refused_per_host: 0,
                refused_per_network: 0,
            }),
            freed: Condvar::new(),
        })
    }

    /// Takes a place of `kind` for a connection from `peer`, if one is free in all
    /// and neither `peer`'s address nor its /64 has used up its share.
    pub fn take(self: &Arc<Self>, kind: Kind, peer: IpAddr) -> Result<Place, Refusal> {
        let host = host_of(peer);
        let mut ledger = self.lock();
        if ledger.taken[kind.index()] >= self.caps.total(kind) {
            ledger.refused_full += 1;
            return Err(Refusal::Full(kind));
        }
        let cap = self.caps.per_host(kind);
        match ledger.share_used_up(kind, host, cap) {
            Some(refusal @ Refusal::NetworkFull(..)) => {
                ledger.refused_per_network += 1;
                return Err(refusal);
            }
            Some(refusal) => {
                ledger.refused_per_host += 1;
                return Err(refusal);
            }
            None => {}
        }
        ledger.taken[kind.index()] += 1;
        ledger.hosts.entry(host).or_default()[kind.host_index()] += 1;
        if let Some(network) = network_of(host) {
            ledger.networks.entry(network).or_default()[kind.host_index()] += 1;
        }
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
        let cap = self.caps.total(kind);
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
            refused_per_network: ledger.refused_per_network,
        }
    }

    /// Which addresses of `network` hold places of `kind` now. It walks every
    /// address that holds a place (as many as the places), so it is called only
    /// to write a refusal's log line, never on the way of a connection let in.
    pub fn holders(&self, kind: Kind, network: Network64) -> Holders {
        let i = kind.host_index();
        let mut held: Vec<(Ipv6Addr, usize)> = self
            .lock()
            .hosts
            .iter()
            .filter_map(|(host, counts)| match host {
                IpAddr::V6(v6) if network.contains(*v6) && counts[i] > 0 => Some((*v6, counts[i])),
                _ => None,
            })
            .collect();
        held.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let others = held.len().saturating_sub(Holders::NAMED);
        held.truncate(Holders::NAMED);
        Holders {
            network,
            most: held,
            others,
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

/// The address a peer counts as: itself, IPv6 included, with an IPv4-mapped IPv6
/// address counted as the IPv4 address it is.
pub fn host_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        IpAddr::V4(_) => peer,
    }
}

/// The /64 whose ceiling a host (as [`host_of`] gives it) also counts against;
/// none for IPv4.
pub fn network_of(host: IpAddr) -> Option<Network64> {
    match host {
        IpAddr::V6(v6) => Some(Network64::of(v6)),
        IpAddr::V4(_) => None,
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut ledger = self.places.lock();
        let index = self.kind.host_index();
        ledger.taken[self.kind.index()] -= 1;
        give_back(&mut ledger.hosts, &self.host, index);
        if let Some(network) = network_of(self.host) {
            give_back(&mut ledger.networks, &network, index);
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

    /// Places in all (page, handshake, chat, echo) and per address (page,
    /// handshake, clients).
    fn caps(total: [usize; 4], per_host: [usize; 3]) -> Arc<Places> {
        let cap = |total, per_host| Cap { total, per_host };
        Places::new(Caps {
            http: cap(total[0], per_host[0]),
            handshakes: cap(total[1], per_host[1]),
            clients: cap(total[2], per_host[2]),
            echo: total[3],
        })
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

    fn v6(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn two_hosts_in_one_slash_64_each_have_their_share() {
        let places = caps([100; 4], [0, 0, 2]);
        let (a, b) = (v6("2001:db8:1:2::1"), v6("2001:db8:1:2:ffff::9"));
        let _a: Vec<Place> = (0..2)
            .map(|_| places.take(Kind::Chat, a).unwrap())
            .collect();
        assert_eq!(
            places.take(Kind::Chat, a).unwrap_err(),
            Refusal::HostFull(Kind::Chat, 2),
            "a has used its own share"
        );
        let _b: Vec<Place> = (0..2)
            .map(|_| places.take(Kind::Chat, b).unwrap())
            .collect();
        assert_eq!(places.occupancy().refused_per_host, 1);
        // An IPv4-mapped address is its IPv4 address, with no /64 of its own.
        assert_eq!(host_of(v6("::ffff:127.0.0.2")), B);
        assert_eq!(network_of(B), None);
    }

    #[test]
    fn a_slash_64_stops_at_its_ceiling_and_its_neighbours_do_not() {
        let places = caps([100; 4], [0, 0, 2]);
        let ceiling = 2 * NETWORK_SHARES;
        // One host rotating addresses in its /64: a place from each.
        let mut held: Vec<Place> = (1..=ceiling)
            .map(|n| {
                places
                    .take(Kind::Chat, v6(&format!("2001:db8:1:2::{n:x}")))
                    .unwrap()
            })
            .collect();
        let fresh = v6("2001:db8:1:2:abcd::1");
        let network = Network64::of("2001:db8:1:2::".parse().unwrap());
        assert_eq!(
            places.take(Kind::Chat, fresh).unwrap_err(),
            Refusal::NetworkFull(Kind::Chat, ceiling, network)
        );
        // The next /64, IPv4 and the other kinds are untouched.
        assert!(places.take(Kind::Chat, v6("2001:db8:1:3::1")).is_ok());
        assert!(places.take(Kind::Chat, A).is_ok());
        assert!(places.take(Kind::Http, fresh).is_ok());
        let occupancy = places.occupancy();
        assert_eq!(
            (occupancy.refused_per_network, occupancy.refused_per_host),
            (1, 0)
        );
        // One place given back in the /64 lets one more address in, and no more.
        drop(held.pop());
        let _fresh = places.take(Kind::Chat, fresh).unwrap();
        assert!(places.take(Kind::Chat, v6("2001:db8:1:2::ffff")).is_err());
    }

    #[test]
    fn link_local_addresses_share_one_ceiling_and_no_cap_means_no_ceiling() {
        let places = caps([100; 4], [1, 0, 0]);
        let taken: Vec<Place> = (1..=NETWORK_SHARES)
            .map(|n| places.take(Kind::Http, v6(&format!("fe80::{n}"))).unwrap())
            .collect();
        assert!(matches!(
            places.take(Kind::Http, v6("fe80::99")),
            Err(Refusal::NetworkFull(Kind::Http, NETWORK_SHARES, _))
        ));
        // Chat clients have no per-address cap here, so no /64 ceiling either.
        let many: Vec<Place> = (1..=20)
            .map(|n| places.take(Kind::Chat, v6(&format!("fe80::{n}"))).unwrap())
            .collect();
        drop((taken, many));
        let ledger = places.lock();
        assert!(ledger.hosts.is_empty() && ledger.networks.is_empty());
    }

    #[test]
    fn the_holders_of_a_full_slash_64_are_named_most_first() {
        let places = caps([100; 4], [0, 3, 0]);
        let mut held = Vec::new();
        for (address, count) in [("2001:db8::a", 1), ("2001:db8::b", 3), ("2001:db8::c", 2)] {
            held.extend((0..count).map(|_| places.take(Kind::Handshake, v6(address)).unwrap()));
        }
        held.push(places.take(Kind::Handshake, v6("2001:db8::d")).unwrap());
        held.push(places.take(Kind::Handshake, v6("2001:db8:0:1::e")).unwrap());
        held.push(places.take(Kind::Http, v6("2001:db8::f")).unwrap());
        let network = Network64::of("2001:db8::".parse().unwrap());
        assert_eq!(
            places.holders(Kind::Handshake, network).to_string(),
            "2001:db8::/64 is held by 2001:db8::b (3), 2001:db8::c (2), 2001:db8::a (1) \
             and 1 more address"
        );
        drop(held);
        assert_eq!(
            places.holders(Kind::Handshake, network).to_string(),
            "no address of 2001:db8::/64 holds one now"
        );
    }

    #[test]
    fn refusals_name_the_flag_to_change() {
        let text = Refusal::HostFull(Kind::Http, 16).to_string();
        assert!(
            text.contains("--max-http-per-host") && text.contains("16"),
            "{text}"
        );
        assert!(Refusal::Full(Kind::Chat).to_string().contains("full"));
        let network = Network64::of("2001:db8::1".parse().unwrap());
        let text = Refusal::NetworkFull(Kind::Chat, 128, network).to_string();
        assert!(
            text.contains("2001:db8::/64")
                && text.contains("128")
                && text.contains("4 × --max-per-host"),
            "{text}"
        );
    }
}
