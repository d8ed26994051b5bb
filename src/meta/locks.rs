//! Byte-range locks (POSIX `fcntl` locks, and `flock` as a whole-file lock)
//! held in the home node's memory, so that every host's mount of the volume
//! takes them from one table. An owner is a host (empty for the home node
//! itself, else a member device's peer id) and the kernel's lock owner there.
//! Locks do not outlive the daemon (as on a local filesystem after a reboot).

use crate::error::{Error, Result};
use crate::types::Ino;
use crate::util::lock;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;

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

/// One held lock, or (from [`LockTable::test`]) the one in the way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeLock {
    pub start: u64,
    /// Inclusive, as FUSE gives it (`u64::MAX`: to the end).
    pub end: u64,
    pub typ: LockType,
    pub pid: u32,
}

#[derive(Default)]
pub struct LockTable {
    held: Mutex<HashMap<Ino, Vec<(LockOwner, RangeLock)>>>,
}

fn overlaps(a: &RangeLock, start: u64, end: u64) -> bool {
    a.start <= end && start <= a.end
}

fn conflicts(held: &RangeLock, typ: LockType) -> bool {
    held.typ == libc::F_WRLCK || typ == libc::F_WRLCK
}

impl LockTable {
    /// The lock of another owner that would stop `owner` taking `typ` over
    /// `start..=end`, if any.
    pub fn test(&self, ino: Ino, owner: &LockOwner, want: &RangeLock) -> Option<RangeLock> {
        let held = lock(&self.held);
        held.get(&ino)?
            .iter()
            .find(|(o, l)| {
                o != owner && overlaps(l, want.start, want.end) && conflicts(l, want.typ)
            })
            .map(|(_, l)| l.clone())
    }

    /// Takes (or with `F_UNLCK` drops) `want` for `owner`; `Error::WouldBlock`
    /// when another owner's lock is in the way. The owner's own locks in the
    /// range are replaced (split where they stick out), as POSIX has it.
    pub fn set(&self, ino: Ino, owner: &LockOwner, want: RangeLock) -> Result<()> {
        if want.start > want.end {
            return Err(Error::Invalid("a lock range that ends before it starts"));
        }
        let mut held = lock(&self.held);
        let list = held.entry(ino).or_default();
        if want.typ != libc::F_UNLCK
            && list.iter().any(|(o, l)| {
                o != owner && overlaps(l, want.start, want.end) && conflicts(l, want.typ)
            })
        {
            return Err(Error::WouldBlock);
        }
        let mut kept = Vec::with_capacity(list.len() + 2);
        for (o, l) in list.drain(..) {
            if &o != owner || !overlaps(&l, want.start, want.end) {
                kept.push((o, l));
                continue;
            }
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
        if kept.is_empty() {
            held.remove(&ino);
        } else {
            *list = kept;
        }
        Ok(())
    }

    /// Drops every lock `owner` holds on `ino` (its file was closed).
    pub fn release(&self, ino: Ino, owner: &LockOwner) {
        let mut held = lock(&self.held);
        if let Some(list) = held.get_mut(&ino) {
            list.retain(|(o, _)| o != owner);
            if list.is_empty() {
                held.remove(&ino);
            }
        }
    }

    /// Drops every lock a host holds (a member device that went away).
    pub fn release_host(&self, host: &str) {
        let mut held = lock(&self.held);
        for list in held.values_mut() {
            list.retain(|(o, _)| o.host != host);
        }
        held.retain(|_, l| !l.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn who(host: &str, owner: u64) -> LockOwner {
        LockOwner {
            host: host.into(),
            owner,
        }
    }

    fn range(start: u64, end: u64, typ: LockType) -> RangeLock {
        RangeLock {
            start,
            end,
            typ,
            pid: 1,
        }
    }

    #[test]
    fn two_hosts_exclude_each_other_and_a_release_lets_the_other_in() {
        let t = LockTable::default();
        let (a, b) = (who("", 1), who("12D3KooWb", 1));
        let whole = |typ| range(0, u64::MAX, typ);
        t.set(Ino(5), &a, whole(libc::F_WRLCK)).unwrap();
        assert!(matches!(
            t.set(Ino(5), &b, whole(libc::F_WRLCK)),
            Err(Error::WouldBlock)
        ));
        assert_eq!(
            t.test(Ino(5), &b, &whole(libc::F_RDLCK)).unwrap().typ,
            libc::F_WRLCK
        );
        // Another file is free.
        t.set(Ino(6), &b, whole(libc::F_WRLCK)).unwrap();
        t.release(Ino(5), &a);
        t.set(Ino(5), &b, whole(libc::F_WRLCK)).unwrap();
        // Readers share.
        t.set(Ino(7), &a, whole(libc::F_RDLCK)).unwrap();
        t.set(Ino(7), &b, whole(libc::F_RDLCK)).unwrap();
        t.release_host("12D3KooWb");
        assert!(t.test(Ino(5), &a, &whole(libc::F_WRLCK)).is_none());
    }

    proptest! {
        /// After any sequence of sets by two owners, no two owners hold
        /// overlapping locks of which one is a write lock, and an owner's
        /// unlock of a range leaves it nothing there.
        #[test]
        fn locks_never_conflict(ops in proptest::collection::vec(
            (0u64..2, 0u64..40, 0u64..20, prop_oneof![
                Just(libc::F_RDLCK), Just(libc::F_WRLCK), Just(libc::F_UNLCK)
            ]),
            1..60,
        )) {
            let t = LockTable::default();
            for (o, start, len, typ) in ops {
                let owner = who(if o == 0 { "" } else { "m" }, 1);
                let _ = t.set(Ino(1), &owner, range(start, start + len, typ));
                if typ == libc::F_UNLCK {
                    let held = lock(&t.held);
                    let mine = held.get(&Ino(1)).map_or(0, |l| {
                        l.iter().filter(|(w, l)| *w == owner && overlaps(l, start, start + len)).count()
                    });
                    prop_assert_eq!(mine, 0);
                }
            }
            let held = lock(&t.held);
            let list = held.get(&Ino(1)).cloned().unwrap_or_default();
            for (i, (oa, la)) in list.iter().enumerate() {
                for (ob, lb) in &list[i + 1..] {
                    if oa != ob && overlaps(la, lb.start, lb.end) {
                        prop_assert!(la.typ == libc::F_RDLCK && lb.typ == libc::F_RDLCK);
                    }
                }
            }
        }
    }
}
