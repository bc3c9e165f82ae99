//! Budgets: what one address may make the server do, whichever of its connections
//! it uses, and however often it reconnects.
//!
//! A rule per connection is no rule against someone with many connections. Flood
//! control per connection (`--rate`) starts every new connection with a full
//! bucket, so 32 connections that each send their burst, close and reconnect
//! push thousands of messages a second through it; 32 connections that each stay
//! just inside it make the server send every member of the room gigabytes. So
//! the budgets that matter belong to the address (the TCP peer's, never a
//! header), are shared by all of its connections, and outlive them:
//!
//! | budget | counts | flag |
//! |---|---|---|
//! | frames in | every frame an address sends, pings and pongs included | `--host-frames` |
//! | bytes in | the bytes of those frames | `--host-bytes-in` |
//! | bytes out | what the address makes the server send: each message's bytes times the members it reaches, direct messages, history replays, answers and error frames | `--host-bytes-out` |
//!
//! Each is a token bucket holding [`BURST_SECONDS`] of its rate. A frame is
//! admitted while the address has frames, bytes in and bytes out left; what it
//! then costs is taken afterwards, so one large message may drive a bucket below
//! zero, and the address waits until it is paid off. The reader drops a frame the
//! address cannot afford (one error frame a second at most, then 1008 for a
//! connection that keeps on); the hub charges what it sends to the address it
//! sends it for.
//!
//! An address's [`Allowance`] stays in the table after its last connection has
//! gone, until it has earned its buckets back full: only then is a new one the
//! same. So reconnecting refills nothing.
//!
//! An IPv6 host is given a whole /64 and may pick a new address in it for every
//! connection, each with a fresh allowance. So an IPv6 address also pays into its
//! /64's allowance, [`NETWORK_SHARES`] times an address's (the same ceiling
//! `places` puts on the /64's connections): hosts of one LAN keep budgets of
//! their own, and one host hopping through its /64 gets no more than four.
//!
//! The table is bounded: [`ADDRESSES_PER_NETWORK`] addresses of one /64 have
//! allowances of their own, and the /64's further addresses pay from its
//! allowance alone, so one host hopping through its /64 holds a few entries,
//! not the table. In all it holds [`MAX_ADDRESSES`] addresses (and as many
//! /64s); once it is full, a newcomer in a /64 it knows pays from that /64's
//! allowance, and any other newcomer shares one allowance with the rest. Filling
//! it takes 256 /64s (or 4,096 IPv4 addresses) each kept in debt, and even then
//! the addresses already in it keep their own.
//!
//! Why a mutex per address and not atomics: a frame checks three buckets that
//! move together, and the readers of one address are few. The hub takes the same
//! lock once per message it charges, which is why budgets turned off (the bench,
//! a reverse proxy) cost nothing: there is no allowance at all then.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::places::{self, Network64};

/// How many seconds of its rate a bucket holds: what an address may send at once
/// after being quiet. Four seconds lets a page reconnect, join and replay its
/// room's history, and a person paste a long text, without meeting a limit.
pub const BURST_SECONDS: u32 = 4;

/// Addresses with an allowance of their own, at most. An allowance is about a
/// hundred bytes, so the table stays under a megabyte.
pub const MAX_ADDRESSES: usize = 4_096;

/// An IPv6 /64 may spend this many addresses' budgets, all its addresses
/// together: the ceiling `places` gives it too.
pub const NETWORK_SHARES: u64 = places::NETWORK_SHARES as u64;

/// Addresses of one /64 with allowances of their own, at most: a home LAN's
/// hosts, each with a few privacy addresses.
pub const ADDRESSES_PER_NETWORK: usize = 16;

/// How often the table looks for allowances it may forget.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What one address may do a second (0: no limit of that kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BudgetSettings {
    /// Frames a second it may send (`--host-frames`).
    pub frames: u64,
    /// Bytes a second it may send (`--host-bytes-in`).
    pub bytes_in: u64,
    /// Bytes a second it may make the server send (`--host-bytes-out`).
    pub bytes_out: u64,
}

impl BudgetSettings {
    fn any(&self) -> bool {
        self.frames > 0 || self.bytes_in > 0 || self.bytes_out > 0
    }

    /// The budgets of a /64: `NETWORK_SHARES` addresses' worth.
    fn of_network(self) -> BudgetSettings {
        BudgetSettings {
            frames: self.frames * NETWORK_SHARES,
            bytes_in: self.bytes_in * NETWORK_SHARES,
            bytes_out: self.bytes_out * NETWORK_SHARES,
        }
    }
}

/// Which budget a frame found used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// The address sent its frames for now.
    Frames,
    /// The address sent its bytes for now.
    BytesIn,
    /// The address made the server send its share for now.
    BytesOut,
}

impl Spent {
    /// What was spent, in words for the client's error frame.
    pub fn what(self) -> &'static str {
        match self {
            Spent::Frames => "frames",
            Spent::BytesIn => "bytes sent",
            Spent::BytesOut => "what the server sends for it",
        }
    }
}

impl fmt::Display for Spent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what())
    }
}

/// One rate: tokens earned at `rate` a second, up to `BURST_SECONDS` of it.
/// A rate of 0 is no limit.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    rate: f64,
}

impl Bucket {
    fn new(rate: u64) -> Bucket {
        let rate = rate as f64;
        Bucket {
            tokens: rate * f64::from(BURST_SECONDS),
            rate,
        }
    }

    fn limited(&self) -> bool {
        self.rate > 0.0
    }

    fn full(&self) -> f64 {
        self.rate * f64::from(BURST_SECONDS)
    }

    fn earn(&mut self, seconds: f64) {
        self.tokens = (self.tokens + seconds * self.rate).min(self.full());
    }

    /// At least `least` is left: a frame may start (and may take it below zero).
    fn has(&self, least: f64) -> bool {
        !self.limited() || self.tokens >= least
    }

    fn take(&mut self, amount: usize) {
        if self.limited() {
            self.tokens -= amount as f64;
        }
    }

    fn is_full(&self) -> bool {
        !self.limited() || self.tokens >= self.full()
    }
}

/// An address's three buckets, as of `earned_at`.
#[derive(Debug)]
struct Buckets {
    frames: Bucket,
    bytes_in: Bucket,
    bytes_out: Bucket,
    earned_at: Instant,
}

impl Buckets {
    fn new(settings: BudgetSettings) -> Buckets {
        Buckets {
            frames: Bucket::new(settings.frames),
            bytes_in: Bucket::new(settings.bytes_in),
            bytes_out: Bucket::new(settings.bytes_out),
            earned_at: Instant::now(),
        }
    }

    fn earn(&mut self, now: Instant) {
        let seconds = now.saturating_duration_since(self.earned_at).as_secs_f64();
        self.earned_at = now;
        for bucket in [&mut self.frames, &mut self.bytes_in, &mut self.bytes_out] {
            bucket.earn(seconds);
        }
    }

    fn is_full(&self) -> bool {
        self.frames.is_full() && self.bytes_in.is_full() && self.bytes_out.is_full()
    }

    /// Whether a frame may start now: a whole frame left, and any bytes at all
    /// (one large frame may overdraw).
    fn afford(&mut self, now: Instant) -> Result<(), Spent> {
        self.earn(now);
        if !self.frames.has(1.0) {
            return Err(Spent::Frames);
        }
        if !self.bytes_in.has(f64::MIN_POSITIVE) {
            return Err(Spent::BytesIn);
        }
        if !self.bytes_out.has(f64::MIN_POSITIVE) {
            return Err(Spent::BytesOut);
        }
        Ok(())
    }

    fn pay(&mut self, bytes: usize) {
        self.frames.take(1);
        self.bytes_in.take(bytes);
    }
}

/// One address's budget, shared by its connections' readers and the hub.
#[derive(Debug)]
pub struct Allowance {
    buckets: Mutex<Buckets>,
    /// An IPv6 address's /64, which it pays into as well.
    network: Option<Arc<Allowance>>,
}

impl Allowance {
    fn new(settings: BudgetSettings, network: Option<Arc<Allowance>>) -> Allowance {
        Allowance {
            buckets: Mutex::new(Buckets::new(settings)),
            network,
        }
    }

    /// A frame of `bytes` arrived: it is admitted and paid for if the address has
    /// something left of every budget; otherwise it costs nothing and the answer
    /// says which budget is spent.
    pub fn admit(&self, bytes: usize) -> Result<(), Spent> {
        let now = Instant::now();
        let mut own = self.lock();
        own.afford(now)?;
        // Locked address first, then its /64, always in that order: a /64 never
        // locks an address.
        let mut network = self.network.as_ref().map(|n| n.lock());
        if let Some(network) = &mut network {
            network.afford(now)?;
            network.pay(bytes);
        }
        own.pay(bytes);
        Ok(())
    }

    /// The server sends `bytes` on this address's behalf. Never refused: what was
    /// admitted is delivered, and the debt holds the address's next frames back.
    pub fn spend(&self, bytes: usize) {
        if let Some(network) = &self.network {
            network.spend(bytes);
        }
        self.lock().bytes_out.take(bytes);
    }

    /// Whether the address may have the server send something optional for it
    /// now (an error frame): it has bytes out left.
    pub fn can_spend(&self) -> bool {
        if self.network.as_ref().is_some_and(|n| !n.can_spend()) {
            return false;
        }
        let mut buckets = self.lock();
        buckets.earn(Instant::now());
        buckets.bytes_out.has(f64::MIN_POSITIVE)
    }

    fn lock(&self) -> MutexGuard<'_, Buckets> {
        // Buckets are numbers: one left half-updated by a panic is still usable.
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The table of allowances, one per address that has one.
pub struct Budgets {
    settings: BudgetSettings,
    table: Mutex<Table>,
}

struct Table {
    by_address: HashMap<IpAddr, Arc<Allowance>>,
    /// IPv6 /64s, which their addresses' allowances hold.
    by_network: HashMap<Network64, Network>,
    /// Shared by every address that finds the table full.
    overflow: Arc<Allowance>,
    swept_at: Instant,
}

/// A /64's allowance, and how many of its addresses have one of their own.
struct Network {
    allowance: Arc<Allowance>,
    addresses: usize,
}

impl Budgets {
    /// A table for these budgets.
    pub fn new(settings: BudgetSettings) -> Arc<Budgets> {
        Arc::new(Budgets {
            settings,
            table: Mutex::new(Table {
                by_address: HashMap::new(),
                by_network: HashMap::new(),
                overflow: Arc::new(Allowance::new(settings, None)),
                swept_at: Instant::now(),
            }),
        })
    }

    /// The allowance of `address`: the one it had, if it still has it; `None`
    /// when every budget is off.
    pub fn of(&self, address: IpAddr) -> Option<Arc<Allowance>> {
        if !self.settings.any() {
            return None;
        }
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now.duration_since(table.swept_at) >= SWEEP_EVERY {
            table.swept_at = now;
            table.forget_the_paid_up(now);
        }
        if let Some(allowance) = table.by_address.get(&address) {
            return Some(Arc::clone(allowance));
        }
        let full = table.by_address.len() >= MAX_ADDRESSES;
        let network = places::network_of(address);
        if let Some(known) = network.and_then(|n| table.by_network.get(&n))
            && (full || known.addresses >= ADDRESSES_PER_NETWORK)
        {
            return Some(Arc::clone(&known.allowance));
        }
        if full || (network.is_some() && table.by_network.len() >= MAX_ADDRESSES) {
            return Some(Arc::clone(&table.overflow));
        }
        let network = network.map(|network| {
            let settings = self.settings.of_network();
            let entry = table.by_network.entry(network).or_insert_with(|| Network {
                allowance: Arc::new(Allowance::new(settings, None)),
                addresses: 0,
            });
            entry.addresses += 1;
            Arc::clone(&entry.allowance)
        });
        let allowance = Arc::new(Allowance::new(self.settings, network));
        table.by_address.insert(address, Arc::clone(&allowance));
        Some(allowance)
    }

    /// Addresses in the table now.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.by_address.len()
    }
}

impl Table {
    /// Drops the allowances no connection (or address) holds whose buckets are
    /// full again: a new allowance would be exactly the same. Addresses first, so
    /// that their /64s are free to go in the same sweep.
    fn forget_the_paid_up(&mut self, now: Instant) {
        let owing = |allowance: &mut Arc<Allowance>| {
            if Arc::strong_count(allowance) > 1 {
                return true;
            }
            let mut buckets = allowance.lock();
            buckets.earn(now);
            !buckets.is_full()
        };
        let networks = &mut self.by_network;
        self.by_address.retain(|address, allowance| {
            let keep = owing(allowance);
            if !keep
                && let Some(network) =
                    places::network_of(*address).and_then(|n| networks.get_mut(&n))
            {
                network.addresses -= 1;
            }
            keep
        });
        self.by_network
            .retain(|_, network| network.addresses > 0 || owing(&mut network.allowance));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn address(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
    }

    fn settings(frames: u64, bytes_in: u64, bytes_out: u64) -> BudgetSettings {
        BudgetSettings {
            frames,
            bytes_in,
            bytes_out,
        }
    }

    #[test]
    fn budgets_off_give_no_allowance() {
        assert!(Budgets::new(settings(0, 0, 0)).of(address(2)).is_none());
    }

    #[test]
    fn an_address_s_connections_share_one_budget_that_outlives_them() {
        let budgets = Budgets::new(settings(1, 0, 0));
        let burst = BURST_SECONDS as usize;
        let first = budgets.of(address(2)).unwrap();
        for _ in 0..burst {
            assert_eq!(first.admit(10), Ok(()));
        }
        // Another connection of the same address: the same budget, spent.
        let second = budgets.of(address(2)).unwrap();
        assert_eq!(second.admit(10), Err(Spent::Frames));
        // Reconnecting: both gone, the address comes back to its debt.
        drop((first, second));
        budgets
            .table
            .lock()
            .unwrap()
            .forget_the_paid_up(Instant::now());
        assert_eq!(budgets.addresses(), 1, "kept while not paid up");
        assert_eq!(
            budgets.of(address(2)).unwrap().admit(10),
            Err(Spent::Frames)
        );
        // Another address has its own.
        assert_eq!(budgets.of(address(3)).unwrap().admit(10), Ok(()));
    }

    #[test]
    fn a_large_frame_may_overdraw_and_then_holds_the_address_back() {
        let budgets = Budgets::new(settings(0, 1_000, 0));
        let allowance = budgets.of(address(2)).unwrap();
        assert_eq!(allowance.admit(64 * 1024), Ok(()));
        assert_eq!(allowance.admit(1), Err(Spent::BytesIn));
    }

    #[test]
    fn what_the_server_sends_for_an_address_holds_its_frames_back() {
        let budgets = Budgets::new(settings(0, 0, 1_000));
        let allowance = budgets.of(address(2)).unwrap();
        assert!(allowance.can_spend());
        allowance.spend(10 * 1_000);
        assert!(!allowance.can_spend());
        assert_eq!(allowance.admit(1), Err(Spent::BytesOut));
    }

    #[test]
    fn an_allowance_is_forgotten_once_paid_up_and_unheld() {
        let budgets = Budgets::new(settings(1_000_000, 0, 0));
        let allowance = budgets.of(address(2)).unwrap();
        allowance.admit(0).unwrap();
        drop(allowance);
        // A second later the bucket has earned back a million frames.
        let later = Instant::now() + Duration::from_secs(1);
        budgets.table.lock().unwrap().forget_the_paid_up(later);
        assert_eq!(budgets.addresses(), 0);
    }

    #[test]
    fn addresses_of_one_ipv6_64_have_their_own_budgets_and_four_together() {
        let budgets = Budgets::new(settings(1, 0, 0));
        let burst = BURST_SECONDS as usize;
        let host = |n: u16| IpAddr::V6([0xfd00, 0, 0, 1, 0, 0, 0, n].into());
        // Two hosts on one LAN: each its own budget.
        for n in 1..=2 {
            let allowance = budgets.of(host(n)).unwrap();
            for _ in 0..burst {
                assert_eq!(allowance.admit(1), Ok(()));
            }
            assert_eq!(allowance.admit(1), Err(Spent::Frames));
        }
        // One host hopping through the /64: four addresses' worth in all.
        let mut admitted = 2 * burst;
        for n in 3..100 {
            let allowance = budgets.of(host(n)).unwrap();
            while allowance.admit(1).is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, NETWORK_SHARES as usize * burst);
        // Another /64 is not touched.
        let elsewhere = IpAddr::V6([0xfd00, 0, 0, 2, 0, 0, 0, 1].into());
        assert_eq!(budgets.of(elsewhere).unwrap().admit(1), Ok(()));
    }

    #[test]
    fn beyond_the_table_new_addresses_share_one_allowance() {
        let budgets = Budgets::new(settings(1, 0, 0));
        // One address in each of as many /64s.
        let held: Vec<_> = (0..MAX_ADDRESSES)
            .map(|n| budgets.of(IpAddr::V6(((n as u128) << 64).into())).unwrap())
            .collect();
        let a = budgets.of(address(2)).unwrap();
        let b = budgets.of(address(3)).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(budgets.addresses(), MAX_ADDRESSES);
        // A newcomer in a /64 the table knows pays from the /64's allowance.
        let neighbour = budgets.of(IpAddr::V6(((7u128) << 64 | 1).into())).unwrap();
        assert!(Arc::ptr_eq(
            neighbour.network.as_ref().unwrap_or(&neighbour),
            held[7].network.as_ref().unwrap()
        ));
        drop(held);
    }

    #[test]
    fn one_host_hopping_through_its_64_holds_a_few_entries_not_the_table() {
        let budgets = Budgets::new(settings(1, 0, 0));
        let hopper = |n: u64| IpAddr::V6(((0xfd00_u128 << 112) | u128::from(n)).into());
        let held: Vec<_> = (1..=MAX_ADDRESSES as u64 * 2)
            .map(|n| budgets.of(hopper(n)).unwrap())
            .collect();
        assert_eq!(budgets.addresses(), ADDRESSES_PER_NETWORK);
        // Its further addresses all pay from the /64's allowance.
        let network = held[0].network.as_ref().unwrap();
        assert!(
            held[ADDRESSES_PER_NETWORK..]
                .iter()
                .all(|a| Arc::ptr_eq(a, network))
        );
        // Everyone else still gets an allowance of their own.
        let elsewhere = budgets.of(address(2)).unwrap();
        let next_door = budgets.of(address(3)).unwrap();
        assert!(!Arc::ptr_eq(&elsewhere, &next_door));
        assert_eq!(elsewhere.admit(1), Ok(()));
        // Its addresses forgotten, the /64 counts them no more.
        drop(held);
        let later = Instant::now() + Duration::from_secs(60);
        budgets.table.lock().unwrap().forget_the_paid_up(later);
        assert_eq!(budgets.addresses(), 2);
        assert!(budgets.table.lock().unwrap().by_network.is_empty());
    }
}
