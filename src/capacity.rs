//! How many clients this process can carry, worked out at start from the limits the
//! kernel will actually enforce, so that load is refused one client at a time
//! instead of the process dying.
//!
//! Every WebSocket client costs one file descriptor and one thread (its reader), and
//! a second thread while it has a backlog (its writer). Every HTTP connection costs
//! a thread in tiny_http's pool and two descriptors (tiny_http clones each socket).
//! Two ceilings matter:
//!
//! * **Threads.** Each Rust thread is four memory mappings (stack, guard page,
//!   signal stack, its guard). Past `vm.max_map_count` (65,530 by default) a thread
//!   spawn fails, and on Linux a Rust process that hits that limit was measured to
//!   abort as a whole ("failed to initiate panic"): `Builder::spawn` returning an
//!   error is not a safety net. `kernel.threads-max`, `kernel.pid_max`, the cgroup's
//!   `pids.max` and `RLIMIT_NPROC` cap threads too. We keep a quarter of the lowest
//!   of them spare for the rest of the process and the machine.
//! * **File descriptors.** `RLIMIT_NOFILE`. The soft limit is often 1,024 while the
//!   hard one is far higher; the process may raise its own soft limit up to the hard
//!   one, and does.
//!
//! The plan then also *lowers* the soft descriptor limit to exactly what the plan
//! needs. That turns the descriptor limit into a cap on HTTP connections too, which
//! tiny_http itself does not have: an HTTP flood gets `EMFILE` (refused, retried
//! after a back-off) long before its threads could reach the thread ceiling.

use std::fs;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Threads and descriptors the server uses whatever the load: main, hub, acceptor,
/// signal thread, HTTP dispatcher and workers, tiny_http's accept thread and the
/// idle threads of its pool (four, and four more lingering for 5 s after each
/// restart), stdin/stdout/stderr, the two listeners, files being served.
pub const FIXED_THREADS: u64 = 32;
/// See [`FIXED_THREADS`].
pub const FIXED_FDS: u64 = 64;

/// TCP connections that may be mid-handshake on top of `--max-clients`, each with
/// its own thread. Beyond this the acceptor closes new connections at once.
pub const HANDSHAKE_SLOTS: u64 = 64;

/// HTTP connections the descriptor budget leaves room for. A page load is a few
/// connections per browser; this serves dozens of browsers at once.
pub const HTTP_CONNECTIONS: u64 = 128;

/// The result of planning: what the server will allow and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// WebSocket clients allowed at once (at most what was asked for).
    pub max_clients: usize,
    /// True when `max_clients` is lower than asked because the machine cannot carry it.
    pub clamped: bool,
    /// Threads this process may have, with the margin already taken off.
    pub thread_budget: u64,
    /// The soft `RLIMIT_NOFILE` the process runs with.
    pub open_files: u64,
    /// The hard `RLIMIT_NOFILE`.
    pub open_files_hard: u64,
    /// `vm.max_map_count`, when readable.
    pub max_map_count: Option<u64>,
}

/// The kernel limits that bound threads and descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `vm.max_map_count`.
    pub max_map_count: Option<u64>,
    /// Lowest of `kernel.threads-max`, `kernel.pid_max`, cgroup `pids.max` and
    /// `RLIMIT_NPROC`.
    pub task_limit: Option<u64>,
    /// Soft and hard `RLIMIT_NOFILE` (hard `None` = unlimited).
    pub open_files_soft: u64,
    /// See `open_files_soft`.
    pub open_files_hard: Option<u64>,
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
        Limits {
            max_map_count: read_number("/proc/sys/vm/max_map_count"),
            task_limit,
            open_files_soft: nofile.current.unwrap_or(u64::MAX),
            open_files_hard: nofile.maximum,
        }
    }
}

/// Works out how many clients fit within `limits`.
pub fn plan(requested_clients: usize, limits: &Limits) -> Plan {
    let by_maps = limits.max_map_count.map(|maps| maps / 4);
    let thread_ceiling = [by_maps, limits.task_limit]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(16_000);
    let thread_budget = thread_ceiling * 3 / 4;

    // Threads: two per client, one per pending handshake, one per HTTP connection.
    let clients_by_threads =
        thread_budget.saturating_sub(FIXED_THREADS + HANDSHAKE_SLOTS + HTTP_CONNECTIONS) / 2;
    // Descriptors: one per client and per pending handshake, two per HTTP connection.
    let fd_ceiling = limits.open_files_hard.unwrap_or(1 << 20);
    let clients_by_fds =
        fd_ceiling.saturating_sub(FIXED_FDS + HANDSHAKE_SLOTS + 2 * HTTP_CONNECTIONS);

    let fits = clients_by_threads.min(clients_by_fds).max(1);
    let max_clients = (requested_clients as u64).min(fits);
    let open_files = open_files_needed(max_clients).min(fd_ceiling);
    Plan {
        max_clients: max_clients as usize,
        clamped: max_clients < requested_clients as u64,
        thread_budget,
        open_files,
        open_files_hard: fd_ceiling,
        max_map_count: limits.max_map_count,
    }
}

/// The descriptors `clients` WebSocket clients need: the `LimitNOFILE` a service
/// manager must allow for them.
pub fn open_files_needed(clients: u64) -> u64 {
    FIXED_FDS + HANDSHAKE_SLOTS + 2 * HTTP_CONNECTIONS + clients
}

/// The task limit (`TasksMax`) under which `clients` WebSocket clients fit, the
/// spare quarter included: two threads per client plus the fixed, handshake and
/// HTTP threads, times 4/3.
pub fn tasks_needed(clients: u64) -> u64 {
    let threads = 2 * clients + FIXED_THREADS + HANDSHAKE_SLOTS + HTTP_CONNECTIONS;
    (threads * 4).div_ceil(3)
}

/// Sets this process's soft descriptor limit to what the plan needs.
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

/// A file of this process's own cgroup (v2), where systemd puts a unit's `TasksMax`.
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

fn read_number(path: &str) -> Option<u64> {
    // `pids.max` may say "max": no limit there.
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(maps: u64, tasks: u64, hard: u64) -> Limits {
        Limits {
            max_map_count: Some(maps),
            task_limit: Some(tasks),
            open_files_soft: 1024,
            open_files_hard: Some(hard),
        }
    }

    #[test]
    fn a_roomy_machine_keeps_the_request() {
        let p = plan(1024, &limits(65_530, 100_000, 20_000));
        assert_eq!(p.max_clients, 1024);
        assert!(!p.clamped);
        assert_eq!(p.open_files, 64 + 64 + 256 + 1024);
    }

    #[test]
    fn the_map_count_bounds_threads() {
        // 65,530 maps / 4 = 16,382 threads, 3/4 of it = 12,286; minus fixed, handshake
        // and HTTP threads, halved (reader + writer).
        let p = plan(100_000, &limits(65_530, 100_000, 1 << 20));
        assert!(p.clamped);
        assert_eq!(p.max_clients, (12_286 - 32 - 64 - 128) / 2);
    }

    #[test]
    fn the_descriptor_limit_bounds_clients() {
        let p = plan(1024, &limits(65_530, 100_000, 1024));
        assert!(p.clamped);
        assert_eq!(p.max_clients, 1024 - 64 - 64 - 256);
        assert_eq!(p.open_files, 1024);
    }

    #[test]
    fn the_service_limits_carry_exactly_the_clients_asked_for() {
        for clients in [2, 1024, 5000] {
            let nofile = open_files_needed(clients);
            let tasks = tasks_needed(clients);
            let p = plan(clients as usize, &limits(1 << 30, tasks, nofile));
            assert_eq!(p.max_clients as u64, clients, "{clients}");
            assert!(!p.clamped);
            let one_fewer = plan(clients as usize, &limits(1 << 30, tasks, nofile - 1));
            assert!(one_fewer.clamped, "{clients}");
        }
        assert_eq!(open_files_needed(1024), 1408);
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
        let p = plan(1024, &limits(400, 50, 200));
        assert_eq!(p.max_clients, 1);
    }
}
