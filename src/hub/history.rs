//! A room's history: its last messages, kept as their JSON, replayed to a client
//! that joins (all of it, or what followed its `since`), with whether some of
//! what it asked for is gone (`gap`).

use std::collections::VecDeque;

use crate::format::Format;
use crate::frame;

/// The most memory a room's history holds, whatever `--history` says (each entry
/// counted with its allocation and overhead): a room of long messages keeps fewer
/// of them. Part of the capacity plan's memory. A cluster node cut off from Redis
/// holds as much again of its own (see [`History`]).
pub const HISTORY_BYTES: usize = 64 * 1024;

/// What a history entry costs besides its text: its slot in the queue, its id, and
/// the allocator's header.
const HISTORY_ENTRY_OVERHEAD: usize = 64;

/// The last messages of a room, as their JSON, oldest first.
///
/// They come in runs, one per epoch (one sequence of ids): a single server has
/// one run for its whole life. A cluster node has the cluster's, and while it is
/// cut off from Redis a second one of its own, which it forgets when the cluster
/// is back. Ids increase within a run, not across runs. Each run keeps at most
/// `--history` messages and [`HISTORY_BYTES`]: what a node says alone never
/// pushes the cluster's history out, so the node has all of it when it is back.
#[derive(Default)]
pub(super) struct History {
    runs: Vec<Run>,
}

/// One epoch's part of a history.
struct Run {
    epoch: u64,
    entries: VecDeque<Entry>,
    bytes: usize,
    /// The newest id of this run dropped from here: a replay from before it has
    /// a gap.
    dropped_up_to: u64,
    /// What `dropped_up_to` was when the run began: it has dropped something
    /// since when they differ.
    began_at: u64,
}

impl Run {
    fn new(epoch: u64, dropped_up_to: u64) -> Run {
        Run {
            epoch,
            entries: VecDeque::new(),
            bytes: 0,
            dropped_up_to,
            began_at: dropped_up_to,
        }
    }
}

impl History {
    /// A history that holds nothing, in which every id up to `dropped_up_to` of
    /// each `(epoch, dropped_up_to)` is missing (a room made now never heard
    /// those).
    pub(super) fn new(missing: impl IntoIterator<Item = (u64, u64)>) -> History {
        let mut runs: Vec<Run> = Vec::new();
        for (epoch, dropped_up_to) in missing {
            if runs.iter().all(|r| r.epoch != epoch) {
                runs.push(Run::new(epoch, dropped_up_to));
            }
        }
        History { runs }
    }

    /// What one entry holds in memory: the string's allocation (which can be twice
    /// its length), its slot, and the allocator's header.
    fn cost(json: &String) -> usize {
        json.capacity().max(json.len()) + HISTORY_ENTRY_OVERHEAD
    }

    pub(super) fn push(&mut self, epoch: u64, id: u64, json: String, most: usize) {
        if self.runs.last().is_none_or(|run| run.epoch != epoch) {
            // Only the newest run grows: the hub leaves an epoch only for a new
            // one (cut off) or for the run before it (back), forgetting its own.
            debug_assert!(self.runs.iter().all(|r| r.epoch != epoch));
            self.runs.push(Run::new(epoch, 0));
        }
        let run = self.runs.last_mut().expect("pushed above");
        run.bytes += History::cost(&json);
        run.entries.push_back(Entry { id, json });
        while run.entries.len() > most || run.bytes > HISTORY_BYTES {
            let Some(old) = run.entries.pop_front() else {
                break;
            };
            run.bytes -= History::cost(&old.json);
            run.dropped_up_to = run.dropped_up_to.max(old.id);
        }
    }

    /// The messages after `since` of `epoch` (all of them without `since`), and
    /// whether some of those are no longer here. `current` is the hub's epoch:
    /// a client of it that shows nothing newer than every run here needs nothing.
    /// An epoch this history does not know (another server run, a cut-off that
    /// is over), or none, gets everything, with a gap.
    pub(super) fn after(
        &self,
        since: Option<u64>,
        epoch: Option<u64>,
        current: u64,
    ) -> (bool, impl Iterator<Item = &String>) {
        let (gap, from_run, since) = match (since, epoch) {
            (None, _) => (false, 0, 0),
            (Some(since), Some(epoch)) => match self.runs.iter().position(|r| r.epoch == epoch) {
                // The later runs are replayed whole: a gap too if they lost any.
                Some(at) => (
                    since < self.runs[at].dropped_up_to
                        || self.runs[at + 1..]
                            .iter()
                            .any(|r| r.dropped_up_to != r.began_at),
                    at,
                    since,
                ),
                None if epoch == current => (false, self.runs.len(), 0),
                None => (true, 0, 0),
            },
            (Some(_), None) => (true, 0, 0),
        };
        let entries = self.runs[from_run..]
            .iter()
            .enumerate()
            .flat_map(move |(n, run)| {
                // `since` is an id of the first run taken; the later ones are all
                // after it.
                let since = if n == 0 { since } else { 0 };
                run.entries
                    .iter()
                    .filter(move |entry| entry.id > since)
                    .map(|entry| &entry.json)
            });
        (gap, entries)
    }

    /// Every id of `epoch` up to `upto` is missing here, held or not.
    pub(super) fn missing(&mut self, epoch: u64, upto: u64) {
        match self.runs.iter_mut().find(|r| r.epoch == epoch) {
            Some(run) => run.dropped_up_to = run.dropped_up_to.max(upto),
            None => self.runs.insert(0, Run::new(epoch, upto)),
        }
    }

    /// Drops the run of `epoch`, if there is one.
    pub(super) fn forget(&mut self, epoch: u64) {
        self.runs.retain(|r| r.epoch != epoch);
    }
}

/// One message a history holds: its id and its frame's JSON.
struct Entry {
    id: u64,
    json: String,
}

/// Appends history entries to a joining client's prefix, each as `format`
/// replays it (marked as history).
pub(super) fn replay_into<'a>(
    prefix: &mut Vec<u8>,
    entries: impl Iterator<Item = &'a String>,
    format: Format,
    room: &str,
) {
    for json in entries {
        if let Some(replayed) = format.replay(json, room) {
            frame::append_text(prefix, &replayed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_the_newest_and_knows_what_it_dropped() {
        let mut history = History::default();
        for id in 1..=5 {
            history.push(1, id, format!("{{\"id\":{id}}}"), 3);
        }
        let (gap, kept) = history.after(None, None, 1);
        assert!(!gap);
        assert_eq!(kept.count(), 3);
        let (gap, after) = history.after(Some(3), Some(1), 1);
        assert!(!gap, "3 and before are not needed");
        assert_eq!(
            after.cloned().collect::<Vec<_>>(),
            ["{\"id\":4}", "{\"id\":5}"]
        );
        let (gap, _) = history.after(Some(1), Some(1), 1);
        assert!(gap, "2 was dropped");
        let (gap, all) = history.after(Some(5), Some(7), 1);
        assert!(gap, "another run's ids say nothing about these");
        assert_eq!(all.count(), 3);
        // And a byte bound whatever the count.
        let mut history = History::default();
        for id in 1..=100 {
            history.push(1, id, "x".repeat(4096), 1000);
        }
        assert!(history.runs[0].bytes <= HISTORY_BYTES);
        assert_eq!(
            history.runs[0].entries.len(),
            HISTORY_BYTES / (4096 + HISTORY_ENTRY_OVERHEAD)
        );
    }

    #[test]
    fn a_cut_off_node_s_own_run_follows_the_cluster_s_and_is_forgotten_after() {
        const CLUSTER: u64 = 10;
        const OWN: u64 = 20;
        let replay = |h: &History, since, epoch: Option<u64>, current| {
            let (gap, it) = h.after(Some(since), epoch, current);
            (gap, it.cloned().collect::<Vec<_>>())
        };
        let mut history = History::new([(CLUSTER, 0)]);
        for id in 1..=3 {
            history.push(CLUSTER, id, format!("c{id}"), 3);
        }
        // Cut off: the node numbers on from 3 in its own epoch.
        for id in 4..=5 {
            history.push(OWN, id, format!("o{id}"), 3);
        }
        // A client of the cluster's epoch misses the rest of it and all of the own.
        let (gap, after) = replay(&history, 2, Some(CLUSTER), OWN);
        assert!(!gap);
        assert_eq!(after, ["c3", "o4", "o5"]);
        // One of the own epoch: its ids are only compared with the own run's.
        let (gap, after) = replay(&history, 4, Some(OWN), OWN);
        assert!(!gap);
        assert_eq!(after, ["o5"]);
        // The own run keeps its own count: the cluster's stays whole, and a client
        // of the cluster's epoch hears that o4 is gone.
        for id in 6..=7 {
            history.push(OWN, id, format!("o{id}"), 3);
        }
        assert_eq!(history.runs[0].entries.len(), 3);
        let (gap, after) = replay(&history, 3, Some(CLUSTER), OWN);
        assert!(gap, "o4 was dropped");
        assert_eq!(after, ["o5", "o6", "o7"]);
        let (gap, after) = replay(&history, 5, Some(OWN), OWN);
        assert!(!gap);
        assert_eq!(after, ["o6", "o7"]);
        // Without an epoch while cut off, an id could be of either: everything.
        let (gap, after) = replay(&history, 3, None, OWN);
        assert!(gap);
        assert_eq!(after.len(), 6);
        // Back in the cluster: the own run goes; the cluster's ids go on (the
        // other nodes took 4 and 5 meanwhile).
        history.forget(OWN);
        assert_eq!(history.runs.len(), 1);
        history.push(CLUSTER, 4, "c4".into(), 3);
        let (gap, after) = replay(&history, 3, Some(CLUSTER), CLUSTER);
        assert!(!gap);
        assert_eq!(after, ["c4"]);
        let (gap, _) = replay(&history, 0, Some(CLUSTER), CLUSTER);
        assert!(gap, "c1 was dropped");
        let (gap, all) = replay(&history, 5, Some(OWN), CLUSTER);
        assert!(gap, "an epoch that is over");
        assert_eq!(all, ["c2", "c3", "c4"]);
        let bytes: usize = ["c2", "c3", "c4"]
            .iter()
            .map(|t| History::cost(&t.to_string()))
            .sum();
        assert_eq!(history.runs[0].bytes, bytes);
    }
}
