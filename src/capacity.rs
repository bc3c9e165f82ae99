//! How many connections of each kind this process can carry, worked out at start
//! from the limits the kernel will actually enforce, so that load is refused one
//! connection at a time instead of the process dying.
//!
//! What each connection costs, at most:
//!
//! | connection | threads | descriptors | memory |
//! |---|---|---|---|
//! | chat or echo client | 2 (reader; writer while behind) | 1 | `--max-backlog` + 7 × `--max-message` + 2 threads |
//! | handshake in progress | 1 | 1 | tungstenite's 64 KiB handshake cap + 1 thread |
//! | page connection | 1 | 2 (the socket; a `--www` file) | [`MAX_HEAD`] + the largest answer + 1 thread |
//!
//! A client's memory: its backlog is bounded by `--max-backlog` as the outbox counts
//! it (overhead included, see [`crate::outbox`]); its reader holds at most
//! [`MESSAGE_COPIES`] times `--max-message` while it reads and parses a message.
//! Beside the connections, each of `--max-rooms` rooms keeps at most 64 KiB of
//! history ([`crate::hub::HISTORY_BYTES`]), twice that in a cluster (a node cut
//! off from Redis keeps its own apart), and a cluster node's messages waiting for
//! Redis take [`crate::cluster::OUTGOING_BYTES`].
//!
//! Three ceilings matter:
//!
//! * **Threads.** Each Rust thread is four memory mappings (stack, guard page,
//!   signal stack, its guard). Past `vm.max_map_count` (65,530 by default) a thread
//!   spawn fails, and on Linux a Rust process that hits that limit was measured to
//!   abort as a whole ("failed to initiate panic"): `Builder::spawn` returning an
//!   error is not a safety net. `kernel.threads-max`, `kernel.pid_max`, the cgroup's
//!   `pids.max` and `RLIMIT_NPROC` cap threads too. We keep a quarter of the lowest
//!   of them spare for the rest of the process and the machine.
//! * **File descriptors.** `RLIMIT_NOFILE`. The soft limit is often 1,024 while the
//!   hard one is far higher; the process may set its own soft limit anywhere up to
//!   the hard one, and sets it to what the plan needs.
//! * **Memory.** `MemTotal`, or the cgroup's `memory.max` when lower, and never
//!   more than 3 GiB for a 32-bit process (its address space). A quarter is left
//!   to the rest of the machine; the rest must hold every place's worst case.
//!
//! When everything asked for does not fit, the page's and the handshakes' places
//! still come first, as asked, while they take at most half of each budget; past
//! that they shrink together to half (never below [`MIN_RESERVE`]), and the chat
//! clients get what is left. So one descriptor too few costs one chat client, and
//! on a small budget the chat still gets half: with `ulimit -n 128`, 57 clients
//! fit beside 22 page connections and 11 handshakes. The places in
//! [`crate::places`] are exactly this plan.

use std::fs;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use crate::http::MAX_HEAD;

/// Threads the server has whatever the load: main (waiting for signals), the
/// signal forwarder, the hub, the two acceptors, the log's summary thread, in a
/// cluster three more for Redis, and one spare.
pub const FIXED_THREADS: u64 = 10;

/// Descriptors the server holds whatever the load: stdin, stdout, stderr, the two
/// listeners, signal-hook's pipe, a `/proc` file being read, in a cluster four
/// connections to Redis (appending, following, catching up, presence), and room.
pub const FIXED_FDS: u64 = 16;

/// Handshakes in progress the server allows when it can, from all addresses
/// together. Honest handshakes take a millisecond; these places only run out
/// when connections sit on them.
pub const HANDSHAKES: u64 = 128;

/// The page's and the handshakes' places never shrink below this many.
pub const MIN_RESERVE: u64 = 4;

/// Memory of one thread beyond its stack's touched pages: its kernel stack and
/// task structures (16 KiB of kernel stack, measured) and the few KiB of user
/// stack a parked thread touches.
pub const THREAD_MEMORY: u64 = 32 * 1024;

/// The most tungstenite reads of a handshake (its own cap, 64 KiB), plus the
/// read buffer and the thread.
const HANDSHAKE_BYTES: u64 = 65 * 1024 + THREAD_MEMORY;

/// What the server is asked to carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// Chat clients (`--max-clients`).
    pub clients: u64,
    /// Page connections (`--max-http`).
    pub http: u64,
    /// Echo clients: [`crate::places::ECHO_CLIENTS`] with `--echo`, else 0.
    pub echo: u64,
    /// Most memory one client can make the server hold: [`client_memory`].
    pub client_bytes: u64,
    /// Most memory one page connection can make the server hold: [`http_memory`].
    pub http_bytes: u64,
    /// Memory that belongs to no connection: the rooms' histories.
    pub shared_bytes: u64,
    /// Connections are TLS: a handshake holds [`TLS_MEMORY`] more.
    pub tls: bool,
}

/// The result of planning: what the server will allow and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Chat clients allowed at once (at most what was asked for).
    pub max_clients: usize,
    /// Page connections allowed at once.
    pub max_http: usize,
    /// Handshakes in progress allowed at once.
    pub handshakes: usize,
    /// Echo clients allowed at once.
    pub echo: usize,
    /// True when clients or page connections are fewer than asked because the
    /// machine cannot carry them.
    pub clamped: bool,
    /// Threads this process may have, with the margin already taken off.
    pub thread_budget: u64,
    /// The soft `RLIMIT_NOFILE` the process runs with.
    pub open_files: u64,
    /// The hard `RLIMIT_NOFILE`.
    pub open_files_hard: u64,
    /// `vm.max_map_count`, when readable.
    pub max_map_count: Option<u64>,
    /// Memory the plan may use, with the margin taken off, when known.
    pub memory_budget: Option<u64>,
    /// The most memory every place taken at once could make the server hold.
    pub worst_case_memory: u64,
}

/// The kernel limits that bound threads, descriptors and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `vm.max_map_count`.
    pub max_map_count: Option<u64>,
    /// Lowest of `kernel.threads-max`, `kernel.pid_max`, cgroup `pids.max` and
    /// `RLIMIT_NPROC`.
    pub task_limit: Option<u64>,
    /// The hard `RLIMIT_NOFILE` (`None` = unlimited).
    pub open_files_hard: Option<u64>,
    /// Lowest of `MemTotal` and the own cgroup's `memory.max`, in bytes.
    pub memory: Option<u64>,
    /// Descriptors open before the server opened any, beyond stdin, stdout and
    /// stderr: whatever the parent process let this one inherit. They count
    /// against the same limit.
    pub inherited_fds: u64,
}

impl Limits {
    /// Reads the limits of this process and machine.
    pub fn read() -> Limits {
        let nofile = getrlimit(Resource::Nofile);
        let nproc = getrlimit(Resource::Nproc);
        let task_limit = [
            read_number("/proc/sys/kernel/threads-max"),
            read_number("/proc/sys/kernel/pid_max"),
            read_number("/sys/fs/cgroup/pids.max"),
            own_cgroup_file("pids.max").and_then(|path| read_number(&path)),
            nproc.current,
        ]
        .into_iter()
        .flatten()
        .min();
        let memory = usable_memory(
            [
                mem_total(),
                own_cgroup_file("memory.max").and_then(|path| read_number(&path)),
            ],
            usize::BITS,
        );
        // Listing the folder opens one more descriptor of its own.
        let open_now = fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        Limits {
            max_map_count: read_number("/proc/sys/vm/max_map_count"),
            task_limit,
            open_files_hard: nofile.maximum,
            memory,
            inherited_fds: open_now.saturating_sub(4),
        }
    }
}

/// What a TLS connection can hold beyond a plain one: rustls' state (keys, the
/// handshake's leftovers, about 10 KiB), a handshake message being joined from
/// several records (up to 64 KiB, rustls' cap, also after the handshake), a record
/// being reassembled (16 KiB and its header), a record's plaintext not yet read (16
/// KiB), ciphertext read but not yet fed (4 KiB), and records sealed but not yet
/// written (up to 16 KiB on a page connection; a chat client's are in its backlog,
/// already counted).
pub const TLS_MEMORY: u64 = 128 * 1024;

/// How many times `--max-message` a client's reader can hold at once, each part
/// growing by doubling: tungstenite's read buffer, which holds a whole frame (up
/// to 2, when a frame is a little larger than the one before); a message sent in
/// fragments, joined apart (up to 2); parsing it, which unescapes its strings
/// into serde_json's buffer (up to 2; skipped values are never built, see
/// [`crate::protocol`]); and one of these moving as it grows, old and new both
/// there for an instant (1). Measured: 6.9 for the worst sequence of frames
/// (`tests/parse_cost.rs`). An echo client's reader holds its echo instead of a
/// parse.
pub const MESSAGE_COPIES: u64 = 7;

/// Most memory one chat or echo client can make the server hold.
pub fn client_memory(max_backlog: usize, max_message: usize, tls: bool) -> u64 {
    (max_backlog as u64)
        .saturating_add((max_message as u64).saturating_mul(MESSAGE_COPIES))
        .saturating_add(2 * THREAD_MEMORY)
        .saturating_add(if tls { TLS_MEMORY } else { 0 })
}

/// Most memory one page connection can make the server hold, when the largest
/// answer it can be sent is `largest_answer` bytes.
pub fn http_memory(largest_answer: u64, tls: bool) -> u64 {
    MAX_HEAD as u64 + 1024 + largest_answer + THREAD_MEMORY + if tls { TLS_MEMORY } else { 0 }
}

/// How many of each kind of place, and what they cost together.
#[derive(Debug, Clone, Copy)]
struct Places {
    clients: u64,
    http: u64,
    handshakes: u64,
    echo: u64,
    /// Descriptors that were open before the server started.
    inherited_fds: u64,
}

impl Places {
    fn threads(&self) -> u64 {
        FIXED_THREADS + 2 * (self.clients + self.echo) + self.handshakes + self.http
    }

    fn fds(&self) -> u64 {
        FIXED_FDS + self.inherited_fds + self.clients + self.echo + self.handshakes + 2 * self.http
    }

    fn memory(&self, wanted: &Wanted) -> u64 {
        (self.clients + self.echo)
            .saturating_mul(wanted.client_bytes)
            .saturating_add(wanted.shared_bytes)
            .saturating_add(
                self.handshakes * (HANDSHAKE_BYTES + if wanted.tls { TLS_MEMORY } else { 0 }),
            )
            .saturating_add(self.http.saturating_mul(wanted.http_bytes))
    }
}

/// Works out how many connections fit within `limits`.
pub fn plan(wanted: &Wanted, limits: &Limits) -> Plan {
    let by_maps = limits.max_map_count.map(|maps| maps / 4);
    let thread_ceiling = [by_maps, limits.task_limit]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(16_000);
    let thread_budget = thread_ceiling * 3 / 4;
    let fd_ceiling = limits.open_files_hard.unwrap_or(1 << 20);
    let memory_budget = limits.memory.map(|m| m / 4 * 3);
    let fits = |p: &Places| {
        p.threads() <= thread_budget
            && p.fds() <= fd_ceiling
            && memory_budget.is_none_or(|m| p.memory(wanted) <= m)
    };

    let asked = Places {
        inherited_fds: limits.inherited_fds,
        ..everything_asked(wanted)
    };
    let places = if fits(&asked) {
        asked
    } else {
        // The reserves (page and handshake places, and echo's) as asked, and what
        // they take of each budget beyond the fixed part.
        let reserves = Places {
            clients: 0,
            ..asked
        };
        let spare_threads = thread_budget.saturating_sub(FIXED_THREADS);
        let spare_fds = fd_ceiling.saturating_sub(FIXED_FDS + limits.inherited_fds);
        let half_of = |spare: u64, used: u64| spare as f64 / 2.0 / used.max(1) as f64;
        let scale = [
            half_of(spare_threads, reserves.threads() - FIXED_THREADS),
            half_of(spare_fds, reserves.fds() - FIXED_FDS - limits.inherited_fds),
            memory_budget.map_or(f64::INFINITY, |m| half_of(m, reserves.memory(wanted))),
        ]
        .into_iter()
        .fold(1.0, f64::min);
        let shrunk = |asked: u64| asked.min(((asked as f64 * scale) as u64).max(MIN_RESERVE));
        let mut reduced = Places {
            http: shrunk(wanted.http),
            handshakes: shrunk(HANDSHAKES),
            ..reserves
        };
        let room = |p: &Places| {
            let threads = thread_budget.saturating_sub(p.threads()) / 2;
            let fds = fd_ceiling.saturating_sub(p.fds());
            let memory = memory_budget.map_or(u64::MAX, |m| {
                m.saturating_sub(p.memory(wanted)) / wanted.client_bytes.max(1)
            });
            threads.min(fds).min(memory)
        };
        // One client is always allowed: a server that admits nobody is no server.
        reduced.clients = wanted.clients.min(room(&reduced)).max(1);
        reduced
    };
    Plan {
        max_clients: places.clients as usize,
        max_http: places.http as usize,
        handshakes: places.handshakes as usize,
        echo: places.echo as usize,
        clamped: places.clients < wanted.clients || places.http < wanted.http,
        thread_budget,
        open_files: places.fds().min(fd_ceiling),
        open_files_hard: fd_ceiling,
        max_map_count: limits.max_map_count,
        memory_budget,
        worst_case_memory: places.memory(wanted),
    }
}

/// The descriptors the server needs for everything it is asked to carry: the
/// `LimitNOFILE` a service manager must allow.
pub fn open_files_needed(wanted: &Wanted) -> u64 {
    everything_asked(wanted).fds()
}

/// The task limit (`TasksMax`) under which everything asked for fits, the spare
/// quarter included.
pub fn tasks_needed(wanted: &Wanted) -> u64 {
    (everything_asked(wanted).threads() * 4).div_ceil(3)
}

fn everything_asked(wanted: &Wanted) -> Places {
    Places {
        clients: wanted.clients,
        http: wanted.http,
        handshakes: HANDSHAKES,
        echo: wanted.echo,
        inherited_fds: 0,
    }
}

/// Sets this process's soft descriptor limit to what the plan needs. Lowering it
/// is a backstop: the places already keep the count below it, and a miscount shows
/// up as `EMFILE` in one `accept` (which backs off) rather than as a crash.
pub fn apply(plan: &Plan) -> std::io::Result<()> {
    let current = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(plan.open_files),
            maximum: current.maximum,
        },
    )?;
    Ok(())
}

/// A file of this process's own cgroup (v2), where systemd puts a unit's
/// `TasksMax` and `MemoryMax`.
fn own_cgroup_file(name: &str) -> Option<String> {
    cgroup_file(&fs::read_to_string("/proc/self/cgroup").ok()?, name)
}

/// The path of `name` in the cgroup v2 hierarchy that `/proc/self/cgroup` names.
fn cgroup_file(proc_self_cgroup: &str, name: &str) -> Option<String> {
    let path = proc_self_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))?;
    Some(format!(
        "/sys/fs/cgroup{}/{name}",
        path.trim_end_matches('/')
    ))
}

/// The memory this process can use: the least of what the machine and its cgroup
/// allow and, for a 32-bit process, its address space. A Raspberry Pi with 8 GiB
/// running 32-bit Raspberry Pi OS has 8 GiB, but one process can map at most the
/// 3 GiB below the kernel's part; planning for more would admit clients whose
/// worst case cannot be mapped.
fn usable_memory(readings: [Option<u64>; 2], pointer_bits: u32) -> Option<u64> {
    let address_space = (pointer_bits == 32).then_some(3 << 30);
    readings.into_iter().chain([address_space]).flatten().min()
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
fn mem_total() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn read_number(path: &str) -> Option<u64> {
    // `pids.max` and `memory.max` may say "max": no limit there.
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn wanted(clients: u64) -> Wanted {
        Wanted {
            clients,
            http: 256,
            echo: 0,
            client_bytes: client_memory(1 << 20, 64 << 10, false),
            http_bytes: http_memory(6_286, false),
            shared_bytes: 100 * 64 * 1024,
            tls: false,
        }
    }

    fn limits(maps: u64, tasks: u64, hard: u64) -> Limits {
        Limits {
            max_map_count: Some(maps),
            task_limit: Some(tasks),
            open_files_hard: Some(hard),
            memory: None,
            inherited_fds: 0,
        }
    }

    #[test]
    fn a_32_bit_process_plans_within_its_address_space() {
        let machine = Some(8 << 30);
        assert_eq!(usable_memory([machine, None], 32), Some(3 << 30));
        assert_eq!(usable_memory([machine, None], 64), machine);
        assert_eq!(usable_memory([machine, Some(MIB)], 32), Some(MIB));
        assert_eq!(usable_memory([None, None], 64), None);
        // The plan's sums stay in u64 on any target: 8 GiB's worth of clients.
        let p = plan(
            &wanted(100_000),
            &Limits {
                memory: machine,
                ..limits(65_530, 100_000, 1 << 20)
            },
        );
        assert!(p.worst_case_memory > u32::MAX as u64 && p.worst_case_memory <= 6 << 30);
    }

    #[test]
    fn a_roomy_machine_keeps_the_request() {
        let p = plan(&wanted(1024), &limits(65_530, 100_000, 20_000));
        assert_eq!((p.max_clients, p.max_http, p.handshakes), (1024, 256, 128));
        assert!(!p.clamped);
        assert_eq!(p.open_files, 16 + 1024 + 128 + 2 * 256);
    }

    #[test]
    fn the_map_count_bounds_threads() {
        // 65,530 maps / 4 = 16,382 threads, 3/4 of it = 12,286; the page's and the
        // handshakes' places as asked (they fit in a sixteenth), the rest halved
        // (reader + writer).
        let p = plan(&wanted(100_000), &limits(65_530, 100_000, 1 << 20));
        assert!(p.clamped);
        assert_eq!((p.max_http, p.handshakes), (256, 128));
        assert_eq!(
            p.max_clients,
            (12_286 - FIXED_THREADS as usize - 256 - 128) / 2
        );
    }

    #[test]
    fn the_descriptor_limit_bounds_clients_and_the_reserves_shrink_with_it() {
        let p = plan(&wanted(1024), &limits(65_530, 100_000, 1024));
        assert!(p.clamped);
        // The reserves would take 512 + 128 of the 1,008 spare descriptors: more
        // than half, so they shrink to half (504 / 640 of what was asked).
        assert_eq!((p.max_http, p.handshakes), (201, 100));
        assert_eq!(p.max_clients, 1008 - 2 * 201 - 100);
        assert_eq!(p.open_files, 1024);
    }

    #[test]
    fn one_descriptor_too_few_costs_one_client() {
        let w = wanted(1024);
        let p = plan(&w, &limits(1 << 30, 100_000, open_files_needed(&w) - 1));
        assert_eq!((p.max_clients, p.max_http, p.handshakes), (1023, 256, 128));
        assert!(p.clamped);
    }

    #[test]
    fn with_128_descriptors_dozens_of_clients_fit() {
        let p = plan(&wanted(1024), &limits(65_530, 100_000, 128));
        // Half of the 112 spare descriptors for the reserves: 56 / 640 of them.
        assert_eq!((p.max_http, p.handshakes), (22, 11));
        assert_eq!(p.max_clients, 112 - 2 * 22 - 11);
        assert!(p.open_files <= 128);
    }

    #[test]
    fn memory_bounds_clients_too() {
        // A 1 GiB Raspberry Pi: three quarters for the plan.
        let mut l = limits(65_530, 30_000, 1 << 20);
        l.memory = Some(1024 * MIB);
        let w = wanted(1024);
        let p = plan(&w, &l);
        assert!(p.clamped);
        assert!(p.worst_case_memory <= 768 * MIB, "{}", p.worst_case_memory);
        let one_more = Places {
            clients: p.max_clients as u64 + 1,
            http: p.max_http as u64,
            handshakes: p.handshakes as u64,
            echo: 0,
            inherited_fds: 0,
        };
        assert!(one_more.memory(&w) > 768 * MIB);
        assert!(p.max_clients > 400, "{}", p.max_clients);
    }

    #[test]
    fn the_page_reserve_shrinks_with_memory_too() {
        // --www: every page connection may hold a 1 MiB file. On a machine with
        // 256 MiB, 256 of them would take everything.
        let mut l = limits(65_530, 30_000, 1 << 20);
        l.memory = Some(256 * MIB);
        let mut w = wanted(1024);
        w.http_bytes = http_memory(1 << 20, false);
        let p = plan(&w, &l);
        // The reserves get half of the 192 MiB, the chat clients the other half.
        assert!(p.max_http < 100, "{}", p.max_http);
        assert!(p.worst_case_memory <= 192 * MIB, "{}", p.worst_case_memory);
        // Half of 192 MiB, less the rooms' histories, is 89 MiB: 59 clients of
        // 1.5 MiB each.
        assert!(p.max_clients > 55, "{}", p.max_clients);
    }

    #[test]
    fn the_service_limits_carry_exactly_what_is_asked_for() {
        for clients in [2, 1024, 5000] {
            let w = wanted(clients);
            let nofile = open_files_needed(&w);
            let tasks = tasks_needed(&w);
            let p = plan(&w, &limits(1 << 30, tasks, nofile));
            assert_eq!(p.max_clients as u64, clients, "{clients}");
            assert_eq!(p.max_http, 256);
            assert!(!p.clamped);
            let one_fewer = plan(&w, &limits(1 << 30, tasks, nofile - 1));
            assert!(one_fewer.clamped, "{clients}");
        }
        assert_eq!(open_files_needed(&wanted(1024)), 1680);
    }

    #[test]
    fn inherited_descriptors_count_against_the_limit() {
        let mut l = limits(65_530, 100_000, 1024);
        let without = plan(&wanted(1024), &l);
        l.inherited_fds = 300;
        let with = plan(&wanted(1024), &l);
        assert!(with.max_clients + 100 < without.max_clients, "{with:?}");
        assert!(with.max_http < without.max_http, "{with:?}");
        assert!(with.open_files <= 1024, "the inherited ones are in it too");
    }

    #[test]
    fn the_own_cgroup_is_where_systemd_puts_tasks_max() {
        assert_eq!(
            cgroup_file("0::/system.slice/threadchat.service\n", "pids.max").as_deref(),
            Some("/sys/fs/cgroup/system.slice/threadchat.service/pids.max")
        );
        assert_eq!(
            cgroup_file("0::/\n", "pids.max").as_deref(),
            Some("/sys/fs/cgroup/pids.max")
        );
        // cgroup v1 only: no unified hierarchy line.
        assert_eq!(cgroup_file("4:pids:/user.slice\n", "pids.max"), None);
    }

    #[test]
    fn a_tiny_machine_still_serves_someone() {
        // 50 tasks: a budget of 37 threads, 10 fixed, half of the other 27 for the
        // reserves (13 / 384 of them: 9 page connections, 4 handshakes), two
        // threads per client.
        let p = plan(&wanted(1024), &limits(400, 50, 200));
        assert_eq!((p.max_http, p.handshakes), (9, 4));
        assert_eq!(p.max_clients, (37 - FIXED_THREADS as usize - 9 - 4) / 2);
        // Not even the fixed threads fit: one client all the same.
        let p = plan(&wanted(1024), &limits(400, 20, 40));
        assert_eq!(p.max_clients, 1);
    }
}
