//! The journal of namespace changes, kept in memory for the hosts that cache
//! the namespace (the kernels of every mount): each committed batch notes the
//! inodes and directory entries it changed and who made it (its *origin*,
//! set per thread with [`with_origin`]); a mount asks what changed since it
//! last looked, skipping its own changes, and drops the rest from its kernel's
//! cache. Promises made to member mounts ([`super::promises`]) are kept and
//! broken here, as changes are noted.

use super::cache::Changes;
use super::promises::{Grant, MAX_ASK, Owed, Promises};
use crate::types::Ino;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
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
pub const MAX_ANSWER: usize = 1024;

pub struct ChangeLog {
    inner: Mutex<Log>,
    cond: Condvar,
    /// Signalled when a holder of promises acknowledges changes.
    acks: Condvar,
    /// Set at the first delegation: until then no read recalls anything,
    /// and checking costs one load.
    delegating: AtomicBool,
    /// Where grants are recorded as they change, so that they outlive a
    /// restart (docs/DESIGN.md, "The grant table outlives the home").
    grants: std::sync::OnceLock<GrantSink>,
}

/// Records each directory's grant as it changes (`None`: none), in order.
pub type GrantSink = Box<dyn Fn(Vec<(Ino, Option<Grant>)>) + Send + Sync>;

struct Log {
    /// The sequence number of `ring[0]`.
    first: u64,
    ring: VecDeque<(Arc<str>, Changed)>,
    /// Set at stop: waiters return at once.
    closed: bool,
    promises: Promises,
}

thread_local! {
    static ORIGIN: RefCell<Arc<str>> = RefCell::new(Arc::from(""));
    /// What this thread's changes broke, waited for by [`ChangeLog::settle_owed`].
    static OWED: RefCell<Vec<Owed>> = const { RefCell::new(Vec::new()) };
}

impl Changed {
    /// The inode a change concerns, as far as promises go: the parent of an
    /// entry, or the inode itself (a directory renamed, removed or set).
    pub fn touches(&self) -> Ino {
        match self {
            Changed::Entry { parent, .. } => *parent,
            Changed::Inode(ino) => *ino,
        }
    }
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
                promises: Promises::default(),
            }),
            cond: Condvar::new(),
            acks: Condvar::new(),
            delegating: AtomicBool::new(false),
            grants: std::sync::OnceLock::new(),
        }
    }

    /// Grants recorded by an earlier run, given back, and where grants
    /// are recorded from now on. A grant recalled more than a lease ago is
    /// recorded gone.
    pub fn restore(&self, recorded: Vec<(Ino, Grant)>, sink: GrantSink) {
        let mut g = crate::util::lock(&self.inner);
        let upto = g.first;
        let mut gone = Vec::new();
        for (dir, grant) in recorded {
            if !g.promises.restore(dir, &grant, upto) {
                gone.push((dir, None));
            }
        }
        if !g.promises.delegated().is_empty() {
            self.delegating.store(true, Ordering::Relaxed);
        }
        if !gone.is_empty() {
            sink(gone);
        }
        let _ = self.grants.set(sink);
        self.record(&mut g);
    }

    /// Hands the grants changed since the last call to the sink, under the
    /// log's lock, so they are recorded in the order they changed.
    fn record(&self, g: &mut Log) {
        let dirty = g.promises.take_dirty();
        if let (false, Some(sink)) = (dirty.is_empty(), self.grants.get()) {
            sink(dirty);
        }
    }

    /// Appends `c`, by `origin`, breaking the promises of others it
    /// touches (what they owe added to `owed`).
    fn push(g: &mut Log, origin: &Arc<str>, c: Changed, owed: &mut Vec<Owed>) {
        if !g.promises.is_empty() {
            let seq = g.first + g.ring.len() as u64;
            g.promises.broken(origin, c.touches(), seq, owed);
        }
        g.ring.push_back((origin.clone(), c));
        while g.ring.len() > KEEP {
            g.ring.pop_front();
            g.first += 1;
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
        let mut owed = Vec::new();
        for c in entries.chain(inodes) {
            Self::push(&mut g, &origin, c, &mut owed);
        }
        if !owed.is_empty() {
            OWED.with(|o| o.borrow_mut().extend(owed));
        }
        self.record(&mut g);
        drop(g);
        self.cond.notify_all();
    }

    /// Recalls the delegations of `dirs` held by others than this thread's
    /// origin, which is about to read or change entries there: notes a
    /// change of each such directory as this origin's (its holder's watch
    /// wakes and drops it) and waits until each holder's next watch, which
    /// brings what it held back, or a lease (docs/DESIGN.md, "Delegated
    /// directories"). Called with no lock held.
    pub fn recall(&self, dirs: &[Ino]) {
        if !self.delegating.load(Ordering::Relaxed) {
            return;
        }
        let origin = ORIGIN.with(|o| o.borrow().clone());
        let mut owed = Vec::new();
        {
            let mut g = crate::util::lock(&self.inner);
            for dir in dirs {
                if g.promises.delegated_elsewhere(&origin, *dir) {
                    Self::push(&mut g, &origin, Changed::Inode(*dir), &mut owed);
                }
            }
            self.record(&mut g);
        }
        if owed.is_empty() {
            return;
        }
        crate::metrics::get().recalls.inc_by(owed.len() as u64);
        self.cond.notify_all();
        self.wait_owed(owed);
    }

    /// The changes since `seq` not made by `skip`, waiting up to `wait` for
    /// one when there is none yet.
    pub fn since(&self, seq: u64, skip: &str, wait: Duration) -> Since {
        let deadline = Instant::now() + wait;
        let mut g = crate::util::lock(&self.inner);
        if g.promises.watched(skip, seq) {
            self.acks.notify_all();
        }
        self.record(&mut g);
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
        self.acks.notify_all();
    }

    /// Promises `holder` (a member mount's origin) what it may be promised
    /// of `dirs`, whose contents it learned with its watch at `since`: not
    /// a directory another origin changed since then (or when the journal
    /// no longer reaches back that far).
    /// Whether `dir` is delegated to `holder`, or was until a recall it has
    /// not yet acknowledged: what it made there is applied.
    pub fn holds(&self, holder: &str, dir: Ino) -> bool {
        crate::util::lock(&self.inner).promises.holds(holder, dir)
    }

    /// Recalls every delegation held by another origin than this thread's
    /// (a snapshot is about to be taken).
    pub fn recall_all(&self) {
        if !self.delegating.load(Ordering::Relaxed) {
            return;
        }
        let dirs = crate::util::lock(&self.inner).promises.delegated();
        self.recall(&dirs);
    }

    /// `delegate`: each directory granted is delegated (recalled before
    /// another origin reads it).
    pub fn promise(&self, holder: &str, since: u64, dirs: &[Ino], delegate: bool) -> Vec<bool> {
        let mut g = crate::util::lock(&self.inner);
        let end = g.first + g.ring.len() as u64;
        if since < g.first || since > end || dirs.len() > MAX_ASK {
            return vec![false; dirs.len()];
        }
        let changed: HashSet<Ino> = g
            .ring
            .range((since - g.first) as usize..)
            .filter(|(origin, _)| &**origin != holder)
            .map(|(_, c)| c.touches())
            .collect();
        if delegate {
            self.delegating.store(true, Ordering::Relaxed);
        }
        let granted = g.promises.grant(holder, since, dirs, &changed, delegate);
        self.record(&mut g);
        granted
    }

    /// Delegates `dir`, which `holder` just made in a directory delegated
    /// to it, to it (see [`Promises::grant_made`]).
    pub fn delegate_made(&self, holder: &str, dir: Ino) -> bool {
        let mut g = crate::util::lock(&self.inner);
        let made = g.promises.grant_made(holder, dir);
        self.record(&mut g);
        made
    }

    /// Waits until every holder of a promise this thread's changes broke
    /// has seen them (or is gone, or a lease passed). Called with no lock
    /// held: by the namespace's writer lock as it is let go.
    pub fn settle_owed(&self) {
        let owed = OWED.with(|o| std::mem::take(&mut *o.borrow_mut()));
        if !owed.is_empty() {
            self.wait_owed(owed);
        }
    }

    /// Waits until each of `owed` is paid (see [`Promises::settled`]).
    fn wait_owed(&self, mut owed: Vec<Owed>) {
        let mut g = crate::util::lock(&self.inner);
        loop {
            let now = Instant::now();
            let promises = &mut g.promises;
            owed.retain(|o| !promises.settled(o, now));
            let Some(until) = owed.iter().map(Promises::deadline).min() else {
                return;
            };
            if g.closed {
                return;
            }
            let wait = until
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            g = self
                .acks
                .wait_timeout(g, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
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

    fn made_in(dir: u64, name: &str) -> Changes {
        Changes {
            inodes: vec![(Ino(dir), None)],
            dentries: vec![(Ino(dir), name.as_bytes().to_vec(), None)],
        }
    }

    #[test]
    fn a_promise_is_refused_for_a_directory_another_origin_changed_since() {
        let log = ChangeLog::new();
        let start = log.next();
        with_origin("m", || log.note(&made_in(7, "own")));
        with_origin("other", || log.note(&made_in(8, "x")));
        assert_eq!(
            log.promise("m", start, &[Ino(7), Ino(8), Ino(9)], false),
            vec![true, false, true],
            "its own change does not count; another's does"
        );
        assert_eq!(log.promise("m", log.next(), &[Ino(8)], false), vec![true]);
        assert_eq!(
            log.promise("m", start - 1, &[Ino(7)], false),
            vec![false],
            "too old"
        );
        assert_eq!(
            log.promise("m", log.next() + 1, &[Ino(7)], false),
            vec![false],
            "future"
        );
        let many = vec![Ino(1); super::super::promises::MAX_ASK + 1];
        assert!(
            log.promise("m", log.next(), &many, false)
                .iter()
                .all(|g| !g)
        );
        assert_eq!(crate::util::lock(&log.inner).promises.held("m"), 3);
    }

    #[test]
    fn a_change_to_a_promised_directory_waits_until_the_holder_saw_it() {
        let log = Arc::new(ChangeLog::new());
        let next = log.since(0, "m", Duration::ZERO).next;
        assert_eq!(log.promise("m", next, &[Ino(7)], false), vec![true]);
        // The holder's own change, and a change elsewhere, owe nothing.
        with_origin("m", || log.note(&made_in(7, "own")));
        with_origin("other", || log.note(&made_in(9, "x")));
        let t = Instant::now();
        log.settle_owed();
        assert!(t.elapsed() < Duration::from_secs(1));
        // Another origin's change waits for the holder's next watch.
        let l = log.clone();
        let changer = std::thread::spawn(move || {
            with_origin("other", || l.note(&made_in(7, "theirs")));
            let t = Instant::now();
            l.settle_owed();
            t.elapsed()
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(!changer.is_finished(), "answered before the holder saw it");
        let seen = log.since(next, "m", Duration::ZERO);
        assert!(seen.changes.contains(&Changed::Entry {
            parent: Ino(7),
            name: ByteBuf::from(b"theirs".to_vec())
        }));
        log.since(seen.next, "m", Duration::ZERO);
        let waited = changer.join().unwrap();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        // Broken once: the next change does not wait.
        with_origin("other", || log.note(&made_in(7, "again")));
        let t = Instant::now();
        log.settle_owed();
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(crate::util::lock(&log.inner).promises.held("m"), 0);
    }

    #[test]
    fn a_read_of_a_delegated_directory_waits_until_the_holder_watched_again() {
        let log = Arc::new(ChangeLog::new());
        let next = log.since(0, "m", Duration::ZERO).next;
        // A promise alone recalls nothing: reads of it never wait.
        assert_eq!(log.promise("m", next, &[Ino(6)], false), vec![true]);
        assert_eq!(log.promise("m", next, &[Ino(7)], true), vec![true]);
        let t = Instant::now();
        with_origin("other", || log.recall(&[Ino(6), Ino(9)]));
        // The holder's own reads recall nothing.
        with_origin("m", || log.recall(&[Ino(7)]));
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(log.next(), next, "nothing noted");
        let l = log.clone();
        let reader = std::thread::spawn(move || {
            let t = Instant::now();
            with_origin("other", || l.recall(&[Ino(7)]));
            t.elapsed()
        });
        assert!(log.holds("m", Ino(7)) && !log.holds("m", Ino(6)) && !log.holds("x", Ino(7)));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!reader.is_finished(), "read before the holder was recalled");
        assert!(
            log.holds("m", Ino(7)),
            "what it made there is taken until it answers"
        );
        // The holder's watch wakes with the directory changed.
        let seen = log.since(next, "m", Duration::ZERO);
        assert_eq!(seen.changes, vec![Changed::Inode(Ino(7))]);
        log.since(seen.next, "m", Duration::ZERO);
        assert!(!log.holds("m", Ino(7)), "a late journal is refused");
        let waited = reader.join().unwrap();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        // Recalled once: the next read goes at once.
        let t = Instant::now();
        with_origin("other", || log.recall(&[Ino(7)]));
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(crate::util::lock(&log.inner).promises.held("m"), 1);
    }

    #[test]
    fn a_directory_a_holder_made_is_delegated_to_it_and_what_it_saw_stays() {
        let log = Arc::new(ChangeLog::new());
        let next = log.since(0, "m", Duration::ZERO).next;
        assert_eq!(log.promise("m", next, &[Ino(7)], true), vec![true]);
        let l = log.clone();
        let reader = std::thread::spawn(move || with_origin("other", || l.recall(&[Ino(7)])));
        std::thread::sleep(Duration::from_millis(200));
        assert!(log.delegate_made("m", Ino(70)));
        assert!(!log.delegate_made("x", Ino(71)), "not a holder");
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !reader.is_finished(),
            "the grant counted as the holder having seen the recall"
        );
        assert!(log.holds("m", Ino(70)) && !log.holds("x", Ino(70)));
        // Another origin's read of the new directory recalls it too.
        let seen = log.since(next, "m", Duration::ZERO);
        let pos = log.since(seen.next, "m", Duration::ZERO).next;
        reader.join().unwrap();
        let l = log.clone();
        let reader = std::thread::spawn(move || with_origin("other", || l.recall(&[Ino(70)])));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!reader.is_finished(), "read before the holder was recalled");
        let seen = log.since(pos, "m", Duration::ZERO);
        assert_eq!(seen.changes, vec![Changed::Inode(Ino(70))]);
        log.since(seen.next, "m", Duration::ZERO);
        reader.join().unwrap();
        assert!(!log.holds("m", Ino(70)));
    }

    type Records = Arc<Mutex<Vec<(Ino, Option<Grant>)>>>;

    /// A log whose grants are recorded in a list, with the list.
    fn recorded_log(before: Vec<(Ino, Grant)>) -> (Arc<ChangeLog>, Records) {
        let log = Arc::new(ChangeLog::new());
        let records = Arc::new(Mutex::new(Vec::new()));
        let r = records.clone();
        log.restore(before, Box::new(move |g| r.lock().unwrap().extend(g)));
        (log, records)
    }

    #[test]
    fn grants_are_recorded_as_they_change_and_honoured_after_a_restart() {
        let (log, records) = recorded_log(Vec::new());
        let take = || std::mem::take(&mut *records.lock().unwrap());
        let next = log.since(0, "m", Duration::ZERO).next;
        assert_eq!(
            log.promise("m", next, &[Ino(7), Ino(8)], true),
            vec![true; 2]
        );
        assert!(log.delegate_made("m", Ino(70)));
        assert_eq!(log.promise("p", next, &[Ino(9)], false), vec![true]);
        let mut got = take();
        got.sort_by_key(|(d, _)| *d);
        let held = |holder: &str| {
            Some(Grant {
                holder: Arc::from(holder),
                recalled: None,
            })
        };
        // Delegations only: a promise is no leave to send changes.
        assert_eq!(
            got,
            vec![
                (Ino(7), held("m")),
                (Ino(8), held("m")),
                (Ino(70), held("m"))
            ]
        );
        // A recall rewrites it; the holder's acknowledgment deletes it.
        let l = log.clone();
        let reader = std::thread::spawn(move || with_origin("other", || l.recall(&[Ino(7)])));
        std::thread::sleep(Duration::from_millis(200));
        let got = take();
        assert!(
            matches!(&got[..], [(Ino(7), Some(Grant { holder, recalled: Some(_) }))] if &**holder == "m"),
            "{got:?}"
        );
        let seen = log.since(next, "m", Duration::ZERO);
        log.since(seen.next, "m", Duration::ZERO);
        reader.join().unwrap();
        assert_eq!(take(), vec![(Ino(7), None)]);

        // A restarted home: a delegation is honoured again, recalled first
        // for another origin; a recall begun a lease ago is gone.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let before = vec![
            (Ino(8), held("m").unwrap()),
            (
                Ino(9),
                Grant {
                    holder: Arc::from("m"),
                    recalled: Some(now_ms - 1000),
                },
            ),
            (
                Ino(10),
                Grant {
                    holder: Arc::from("m"),
                    recalled: Some(now_ms - 60_000),
                },
            ),
        ];
        let (log, records) = recorded_log(before);
        assert!(log.holds("m", Ino(8)) && log.holds("m", Ino(9)));
        assert!(!log.holds("m", Ino(10)) && !log.holds("x", Ino(8)));
        assert_eq!(*records.lock().unwrap(), vec![(Ino(10), None)]);
        let l = log.clone();
        let reader = std::thread::spawn(move || with_origin("other", || l.recall(&[Ino(8)])));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!reader.is_finished(), "read before the holder came back");
        // The holder's watch after the restart finds a gap; the next one
        // acknowledges.
        let seen = log.since(0, "m", Duration::ZERO);
        assert!(seen.gap);
        log.since(seen.next, "m", Duration::ZERO);
        reader.join().unwrap();
        assert!(!log.holds("m", Ino(8)) && !log.holds("m", Ino(9)));
    }

    #[test]
    fn a_holder_that_never_answers_holds_a_change_up_for_a_lease_at_most() {
        let log = Arc::new(ChangeLog::new());
        let next = log.since(0, "m", Duration::ZERO).next;
        assert_eq!(log.promise("m", next, &[Ino(7)], false), vec![true]);
        // Watches that never move on do not renew the wait.
        let l = log.clone();
        let stubborn = std::thread::spawn(move || {
            for _ in 0..30 {
                l.since(next, "m", Duration::ZERO);
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let t = Instant::now();
        with_origin("other", || log.note(&made_in(7, "x")));
        log.settle_owed();
        let waited = t.elapsed();
        assert!(waited >= super::super::promises::LEASE - Duration::from_millis(100));
        assert!(waited < super::super::promises::LEASE + Duration::from_secs(2));
        assert_eq!(
            log.promise("m", log.next(), &[Ino(7)], false),
            vec![false],
            "a holder that let a break pass is promised nothing for a while"
        );
        log.close();
        stubborn.join().unwrap();
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
