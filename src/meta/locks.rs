//! Byte-range locks (POSIX `fcntl` locks, and `flock` as a whole-file lock)
//! held in the home node's memory, so that every host's mount of the volume
//! takes them from one table. An owner is a host (empty for the home node
//! itself, else a member device's peer id) and the kernel's lock owner there.
//! Locks do not outlive the daemon (as on a local filesystem after a reboot).

use crate::error::{Error, Result};
use crate::types::Ino;
use crate::util::lock;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// What a lock is: `libc::F_RDLCK`, `F_WRLCK` or `F_UNLCK`.
pub type LockType = i32;

/// Who holds a lock.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LockOwner {
    /// Empty for the home node, else the member device's peer id.
    pub host: String,
    /// The kernel's lock owner on that host.
    pub owner: u64,
}

impl LockOwner {
    pub fn new(host: &str, owner: u64) -> LockOwner {
        LockOwner {
            host: host.to_string(),
            owner,
        }
    }
}

/// One held lock, or (from [`LockTable::test`]) the one in the way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeLock {
    pub start: u64,
    /// Inclusive, as FUSE gives it (`u64::MAX`: to the end).
    pub end: u64,
    pub typ: LockType,
    pub pid: u32,
}

/// Every host's locks, and the requests waiting for one. A waiting request
/// sleeps on [`LockTable::lock_or_wait`] and is woken by whatever frees or
/// narrows a lock; a request that would close a cycle of owners waiting for
/// each other is refused with [`Error::Deadlock`] (as the kernel does for
/// POSIX locks on a local filesystem), so two processes that each hold what
/// the other wants never wait forever.
#[derive(Default)]
pub struct LockTable {
    state: Mutex<State>,
    /// Notified whenever a lock is dropped or narrowed.
    freed: Condvar,
}

#[derive(Default)]
struct State {
    held: HashMap<Ino, Vec<(LockOwner, RangeLock)>>,
    /// The requests waiting now, by a number of their own.
    waiting: HashMap<u64, Waiter>,
    next_wait: u64,
    /// How many locks each host holds (entries of `held`).
    per_host: HashMap<String, usize>,
}

/// Locks one member device may hold at once, and requests it may have
/// waiting at the home: past them its requests are refused (ENOLCK), so a
/// member cannot make the home's memory, or the deadlock search, grow
/// without bound. The home's own processes are not counted (as the kernel
/// does not count a local disk's).
pub const MAX_MEMBER_LOCKS: usize = 10_000;
pub const MAX_MEMBER_WAITS: usize = 64;

struct Waiter {
    ino: Ino,
    owner: LockOwner,
    want: RangeLock,
    /// Its owner's host went away: the wait ends, taking nothing.
    cancelled: bool,
}

/// How many owners a deadlock search visits at most: past it, the request
/// waits (as the kernel's own search gives up after a few steps).
const MAX_DEADLOCK_OWNERS: usize = 1024;

fn overlaps(a: &RangeLock, start: u64, end: u64) -> bool {
    a.start <= end && start <= a.end
}

fn conflicts(held: &RangeLock, typ: LockType) -> bool {
    held.typ == libc::F_WRLCK || typ == libc::F_WRLCK
}

fn check(want: &RangeLock) -> Result<()> {
    if want.start > want.end {
        return Err(Error::Invalid("a lock range that ends before it starts"));
    }
    if ![libc::F_RDLCK, libc::F_WRLCK, libc::F_UNLCK].contains(&want.typ) {
        return Err(Error::Invalid(
            "a lock type other than read, write or unlock",
        ));
    }
    Ok(())
}

impl State {
    /// The locks of other owners in the way of `want` for `owner`.
    fn in_the_way<'a>(
        &'a self,
        ino: Ino,
        owner: &'a LockOwner,
        want: &'a RangeLock,
    ) -> impl Iterator<Item = &'a (LockOwner, RangeLock)> + 'a {
        self.held
            .get(&ino)
            .into_iter()
            .flatten()
            .filter(move |(o, l)| {
                o != owner && overlaps(l, want.start, want.end) && conflicts(l, want.typ)
            })
    }

    /// The owners of the locks in the way of `want` for `owner`.
    fn blockers<'a>(
        &'a self,
        ino: Ino,
        owner: &'a LockOwner,
        want: &'a RangeLock,
    ) -> impl Iterator<Item = &'a LockOwner> + 'a {
        self.in_the_way(ino, owner, want).map(|(o, _)| o)
    }

    /// Whether `owner` waiting for `want` would close a cycle: an owner in
    /// its way waits (directly or through others) for a lock `owner` holds.
    fn deadlocks(&self, ino: Ino, owner: &LockOwner, want: &RangeLock) -> bool {
        let mut todo: Vec<&LockOwner> = self.blockers(ino, owner, want).collect();
        let mut seen = HashSet::new();
        while let Some(o) = todo.pop() {
            if o == owner {
                return true;
            }
            if seen.len() >= MAX_DEADLOCK_OWNERS || !seen.insert(o) {
                continue;
            }
            for w in self.waiting.values().filter(|w| &w.owner == o) {
                todo.extend(self.blockers(w.ino, &w.owner, &w.want));
            }
        }
        false
    }

    /// Takes or drops `want` without waiting. Returns whether any lock was
    /// dropped or narrowed (so waiters may now get theirs).
    fn set(&mut self, ino: Ino, owner: &LockOwner, want: RangeLock) -> Result<bool> {
        if want.typ != libc::F_UNLCK && self.blockers(ino, owner, &want).next().is_some() {
            return Err(Error::WouldBlock);
        }
        // A lock adds at most two entries (one split in two, and itself).
        let host_has = self.per_host.get(&owner.host).copied().unwrap_or(0);
        if !owner.host.is_empty() && want.typ != libc::F_UNLCK && host_has + 2 > MAX_MEMBER_LOCKS {
            return Err(Error::TooManyLocks);
        }
        let Some(list) = self.held.get_mut(&ino) else {
            if want.typ != libc::F_UNLCK {
                self.held.insert(ino, vec![(owner.clone(), want)]);
                *self.per_host.entry(owner.host.clone()).or_default() += 1;
            }
            return Ok(false);
        };
        let before = list.len();
        let mut freed = false;
        let mut kept = Vec::with_capacity(list.len() + 2);
        for (o, l) in list.drain(..) {
            if &o != owner || !overlaps(&l, want.start, want.end) {
                kept.push((o, l));
                continue;
            }
            // Replaced by `want` unless `want` takes the same kind of lock
            // over all of it: anything else frees something for someone.
            freed |= want.typ != l.typ || l.start < want.start || l.end > want.end;
            if l.start < want.start {
                let mut left = l.clone();
                left.end = want.start - 1;
                kept.push((o.clone(), left));
            }
            if l.end > want.end {
                let mut right = l.clone();
                right.start = want.end + 1;
                kept.push((o.clone(), right));
            }
        }
        if want.typ != libc::F_UNLCK {
            kept.push((owner.clone(), want));
        }
        // Only `owner`'s entries changed: the list's change is its host's.
        let now = (host_has + kept.len()).saturating_sub(before);
        if kept.is_empty() {
            self.held.remove(&ino);
        } else {
            *list = kept;
        }
        self.count(&owner.host, now);
        Ok(freed)
    }

    /// Sets the number of locks `host` holds.
    fn count(&mut self, host: &str, n: usize) {
        if n == 0 {
            self.per_host.remove(host);
        } else {
            self.per_host.insert(host.to_string(), n);
        }
    }
}

impl LockTable {
    /// The lock of another owner that would stop `owner` taking `typ` over
    /// `start..=end`, if any.
    pub fn test(&self, ino: Ino, owner: &LockOwner, want: &RangeLock) -> Option<RangeLock> {
        let st = lock(&self.state);
        st.in_the_way(ino, owner, want)
            .next()
            .map(|(_, l)| l.clone())
    }

    /// Takes (or with `F_UNLCK` drops) `want` for `owner`; `Error::WouldBlock`
    /// when another owner's lock is in the way. The owner's own locks in the
    /// range are replaced (split where they stick out), as POSIX has it.
    pub fn set(&self, ino: Ino, owner: &LockOwner, want: RangeLock) -> Result<()> {
        check(&want)?;
        let freed = lock(&self.state).set(ino, owner, want)?;
        if freed {
            self.freed.notify_all();
        }
        Ok(())
    }

    /// Takes `want` for `owner`, waiting up to `hold` for the locks in its
    /// way to go: `Ok(true)` once taken, `Ok(false)` if still in the way
    /// after `hold` (the caller checks whether its process was interrupted,
    /// then asks again). `Error::Deadlock` when an owner in the way waits,
    /// directly or through others, for a lock `owner` holds: checked at
    /// every ask, so of two owners that come to wait for each other the
    /// second is refused, whichever asks last.
    pub fn lock_or_wait(
        &self,
        ino: Ino,
        owner: &LockOwner,
        want: RangeLock,
        hold: Duration,
    ) -> Result<bool> {
        check(&want)?;
        let deadline = Instant::now() + hold;
        let mut st = lock(&self.state);
        let id = st.next_wait;
        st.next_wait += 1;
        let res = loop {
            match st.set(ino, owner, want.clone()) {
                Err(Error::WouldBlock) => {}
                Ok(freed) => {
                    if freed {
                        self.freed.notify_all();
                    }
                    break Ok(true);
                }
                Err(e) => break Err(e),
            }
            if st.waiting.get(&id).is_some_and(|w| w.cancelled) {
                break Err(Error::Interrupted);
            }
            if st.deadlocks(ino, owner, &want) {
                break Err(Error::Deadlock);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Ok(false);
            }
            if !owner.host.is_empty()
                && !st.waiting.contains_key(&id)
                && st
                    .waiting
                    .values()
                    .filter(|w| w.owner.host == owner.host)
                    .count()
                    >= MAX_MEMBER_WAITS
            {
                break Err(Error::TooManyLocks);
            }
            st.waiting.entry(id).or_insert_with(|| Waiter {
                ino,
                owner: owner.clone(),
                want: want.clone(),
                cancelled: false,
            });
            st = self
                .freed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        st.waiting.remove(&id);
        res
    }

    /// Drops every lock `owner` holds on `ino` (its file was closed).
    pub fn release(&self, ino: Ino, owner: &LockOwner) {
        let mut st = lock(&self.state);
        let Some(list) = st.held.get_mut(&ino) else {
            return;
        };
        let before = list.len();
        list.retain(|(o, _)| o != owner);
        let gone = before - list.len();
        if list.is_empty() {
            st.held.remove(&ino);
        }
        let has = st.per_host.get(&owner.host).copied().unwrap_or(0);
        st.count(&owner.host, has.saturating_sub(gone));
        let freed = gone > 0;
        drop(st);
        if freed {
            self.freed.notify_all();
        }
    }

    /// Drops every lock a host holds (a member device that went away), and
    /// ends its waits (answered `Error::Interrupted`): a lock granted to a
    /// host after it was dropped would be held by nobody, forever.
    pub fn release_host(&self, host: &str) {
        self.cancel_waits(|o| o.host == host);
        let mut st = lock(&self.state);
        let mut freed = false;
        for list in st.held.values_mut() {
            let before = list.len();
            list.retain(|(o, _)| o.host != host);
            freed |= list.len() != before;
        }
        st.held.retain(|_, l| !l.is_empty());
        st.per_host.remove(host);
        drop(st);
        if freed {
            self.freed.notify_all();
        }
    }

    /// Ends the waits of the owners `which` picks.
    fn cancel_waits(&self, which: impl Fn(&LockOwner) -> bool) {
        let mut st = lock(&self.state);
        let mut any = false;
        for w in st.waiting.values_mut().filter(|w| which(&w.owner)) {
            w.cancelled = true;
            any = true;
        }
        drop(st);
        if any {
            self.freed.notify_all();
        }
    }

    /// How many requests wait for a lock now.
    pub fn waiting(&self) -> usize {
        lock(&self.state).waiting.len()
    }
}

#[cfg(test)]
mod tests;
