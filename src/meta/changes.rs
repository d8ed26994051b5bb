//! The journal of namespace changes, kept in memory for the hosts that cache
//! the namespace (the kernels of every mount): each committed batch notes the
//! inodes and directory entries it changed and who made it (its *origin*,
//! set per thread with [`with_origin`]); a mount asks what changed since it
//! last looked, skipping its own changes, and drops the rest from its kernel's
//! cache.

use super::cache::Changes;
use crate::types::Ino;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One thing a batch changed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Changed {
    /// The entry `name` in `parent` was made, removed or replaced.
    Entry { parent: Ino, name: ByteBuf },
    /// The inode's attributes or contents changed (or it was freed).
    Inode(Ino),
}

/// What changed since a sequence number.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Since {
    /// Where to ask from next time.
    pub next: u64,
    pub changes: Vec<Changed>,
    /// Changes were missed (the journal moved past them, or restarted).
    pub gap: bool,
}

/// How many changes the journal keeps.
const KEEP: usize = 8192;
/// The most changes one answer carries.
const MAX_ANSWER: usize = 1024;

pub struct ChangeLog {
    inner: Mutex<Log>,
    cond: Condvar,
}

struct Log {
    /// The sequence number of `ring[0]`.
    first: u64,
    ring: VecDeque<(Arc<str>, Changed)>,
    /// Set at stop: waiters return at once.
    closed: bool,
}

thread_local! {
    static ORIGIN: RefCell<Arc<str>> = RefCell::new(Arc::from(""));
}

/// Runs `f` with the changes it commits on this thread noted as `origin`'s
/// (empty, the default: this host's own mount).
pub fn with_origin<T>(origin: &str, f: impl FnOnce() -> T) -> T {
    let before = ORIGIN.with(|o| o.replace(Arc::from(origin)));
    // Put back even if `f` panics.
    struct Restore(Arc<str>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ORIGIN.with(|o| *o.borrow_mut() = self.0.clone());
        }
    }
    let _restore = Restore(before);
    f()
}

impl Default for ChangeLog {
    fn default() -> Self {
        ChangeLog::new()
    }
}

impl ChangeLog {
    pub fn new() -> ChangeLog {
        // Numbered from the start time, so a watcher of an earlier run of
        // this daemon is told it missed changes rather than shown others.
        let first = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        ChangeLog {
            inner: Mutex::new(Log {
                first,
                ring: VecDeque::new(),
                closed: false,
            }),
            cond: Condvar::new(),
        }
    }

    /// Notes a committed batch's changes, as this thread's origin's.
    pub fn note(&self, changes: &Changes) {
        if changes.inodes.is_empty() && changes.dentries.is_empty() {
            return;
        }
        let origin = ORIGIN.with(|o| o.borrow().clone());
        let mut g = crate::util::lock(&self.inner);
        let entries = changes
            .dentries
            .iter()
            .map(|(parent, name, _)| Changed::Entry {
                parent: *parent,
                name: ByteBuf::from(name.clone()),
            });
        let inodes = changes.inodes.iter().map(|(ino, _)| Changed::Inode(*ino));
        for c in entries.chain(inodes) {
            g.ring.push_back((origin.clone(), c));
        }
        while g.ring.len() > KEEP {
            g.ring.pop_front();
            g.first += 1;
        }
        drop(g);
        self.cond.notify_all();
    }

    /// The changes since `seq` not made by `skip`, waiting up to `wait` for
    /// one when there is none yet.
    pub fn since(&self, seq: u64, skip: &str, wait: Duration) -> Since {
        let deadline = Instant::now() + wait;
        let mut g = crate::util::lock(&self.inner);
        let mut seq = seq;
        loop {
            let end = g.first + g.ring.len() as u64;
            if seq < g.first || seq > end {
                return Since {
                    next: end,
                    changes: Vec::new(),
                    gap: true,
                };
            }
            let mut changes = Vec::new();
            let from = (seq - g.first) as usize;
            let mut next = seq;
            for (origin, c) in g.ring.range(from..) {
                if changes.len() >= MAX_ANSWER {
                    break;
                }
                next += 1;
                if &**origin != skip {
                    changes.push(c.clone());
                }
            }
            let now = Instant::now();
            if !changes.is_empty() || g.closed || now >= deadline {
                return Since {
                    next,
                    changes,
                    gap: false,
                };
            }
            seq = next;
            g = self
                .cond
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The sequence number the next change gets.
    pub fn next(&self) -> u64 {
        let g = crate::util::lock(&self.inner);
        g.first + g.ring.len() as u64
    }

    /// Whether anyone but this host's own mount (origin "") changed `ino`'s
    /// attributes or contents since `seq`; yes when the journal no longer
    /// reaches back that far.
    pub fn changed_by_others(&self, ino: Ino, seq: u64) -> bool {
        let g = crate::util::lock(&self.inner);
        if seq < g.first {
            return true;
        }
        let from = ((seq - g.first) as usize).min(g.ring.len());
        g.ring
            .range(from..)
            .any(|(origin, c)| !origin.is_empty() && *c == Changed::Inode(ino))
    }

    /// Ends every wait (the daemon is stopping).
    pub fn close(&self) {
        crate::util::lock(&self.inner).closed = true;
        self.cond.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> Changes {
        Changes {
            inodes: vec![(Ino(1), None)],
            dentries: vec![(Ino(1), name.as_bytes().to_vec(), None)],
        }
    }

    #[test]
    fn others_changes_to_an_inode_are_told_apart_from_this_mounts() {
        let log = ChangeLog::new();
        let start = log.next();
        log.note(&entry("home"));
        assert!(
            !log.changed_by_others(Ino(1), start),
            "the mount's own change"
        );
        let mid = log.next();
        with_origin("member-a", || log.note(&entry("a")));
        assert!(log.changed_by_others(Ino(1), start));
        assert!(log.changed_by_others(Ino(1), mid));
        assert!(!log.changed_by_others(Ino(2), start), "another inode");
        assert!(!log.changed_by_others(Ino(1), log.next()), "nothing since");
        // Older than the journal reaches: assume changed.
        for _ in 0..KEEP {
            log.note(&entry("home"));
        }
        assert!(log.changed_by_others(Ino(1), start));
    }

    #[test]
    fn a_watcher_sees_others_changes_not_its_own() {
        let log = ChangeLog::new();
        let start = log.since(0, "", Duration::ZERO);
        assert!(start.gap);
        with_origin("member-a", || log.note(&entry("a")));
        log.note(&entry("home"));
        let a = log.since(start.next, "member-a", Duration::ZERO);
        assert_eq!(a.next, start.next + 4);
        assert_eq!(
            a.changes,
            vec![
                Changed::Entry {
                    parent: Ino(1),
                    name: ByteBuf::from(b"home".to_vec())
                },
                Changed::Inode(Ino(1))
            ]
        );
        let home = log.since(start.next, "", Duration::ZERO);
        assert_eq!(home.changes.len(), 2);
        assert!(!home.gap);
        // The origin ends with the closure.
        log.note(&entry("b"));
        assert_eq!(log.since(a.next, "", Duration::ZERO).changes.len(), 0);
    }

    #[test]
    fn a_watcher_that_fell_behind_is_told_so() {
        let log = ChangeLog::new();
        let start = log.since(0, "", Duration::ZERO).next;
        for i in 0..KEEP {
            log.note(&entry(&i.to_string()));
        }
        let s = log.since(start, "x", Duration::ZERO);
        assert!(s.gap);
        assert!(s.changes.is_empty());
        let s = log.since(s.next, "x", Duration::ZERO);
        assert!(!s.gap);
        // From the future (a restarted home): a gap, and where to go on from.
        let s = log.since(u64::MAX, "x", Duration::ZERO);
        assert!(s.gap);
    }

    #[test]
    fn a_waiting_watcher_wakes_at_a_change_or_at_close() {
        let log = Arc::new(ChangeLog::new());
        let next = log.since(0, "", Duration::ZERO).next;
        let l = log.clone();
        let t = std::thread::spawn(move || l.since(next, "", Duration::from_secs(20)));
        std::thread::sleep(Duration::from_millis(50));
        with_origin("cli", || log.note(&entry("x")));
        let got = t.join().unwrap();
        assert_eq!(got.changes.len(), 2);
        let l = log.clone();
        let t = std::thread::spawn(move || l.since(got.next, "", Duration::from_secs(20)));
        std::thread::sleep(Duration::from_millis(50));
        log.close();
        let started = Instant::now();
        assert!(t.join().unwrap().changes.is_empty());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
