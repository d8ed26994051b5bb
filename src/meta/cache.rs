//! The in-process cache of inode records and directory entries (negative ones
//! too), in front of RocksDB. Commits update it after their batch is written, under
//! the writer lock; readers fill it only if no commit happened since they looked
//! (an epoch check), so a slow reader never puts back a record a commit replaced.

use super::schema::{DentryRec, InodeRec};
use crate::types::Ino;
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard};

/// What the cache knows: the value, or the epoch to fill it at.
pub enum Cached<T> {
    Hit(T),
    Miss(u64),
}

pub struct MetaCache {
    inner: Mutex<Inner>,
}

struct Inner {
    epoch: u64,
    inodes: LruCache<Ino, InodeRec>,
    dentries: LruCache<(Ino, Vec<u8>), Option<DentryRec>>,
}

/// A namespace change to mirror: inode records (None = deleted) and entries.
#[derive(Default)]
pub struct Changes {
    pub inodes: Vec<(Ino, Option<InodeRec>)>,
    pub dentries: Vec<(Ino, Vec<u8>, Option<DentryRec>)>,
}

impl MetaCache {
    pub fn new(entries: usize) -> MetaCache {
        let n = NonZeroUsize::new(entries.max(1)).expect("at least one entry");
        MetaCache {
            inner: Mutex::new(Inner {
                epoch: 0,
                inodes: LruCache::new(n),
                dentries: LruCache::new(n),
            }),
        }
    }

    /// Inode records and entries held now.
    pub fn entries(&self) -> usize {
        let c = self.lock();
        c.inodes.len() + c.dentries.len()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::util::lock(&self.inner)
    }

    pub fn inode(&self, ino: Ino) -> Cached<InodeRec> {
        let mut c = self.lock();
        match c.inodes.get(&ino) {
            Some(rec) => Cached::Hit(rec.clone()),
            None => Cached::Miss(c.epoch),
        }
    }

    pub fn fill_inode(&self, epoch: u64, ino: Ino, rec: &InodeRec) {
        let mut c = self.lock();
        if c.epoch == epoch {
            c.inodes.put(ino, rec.clone());
        }
    }

    pub fn dentry(&self, parent: Ino, name: &[u8]) -> Cached<Option<DentryRec>> {
        let mut c = self.lock();
        match c.dentries.get(&(parent, name.to_vec())) {
            Some(d) => Cached::Hit(*d),
            None => Cached::Miss(c.epoch),
        }
    }

    pub fn fill_dentry(&self, epoch: u64, parent: Ino, name: &[u8], d: Option<DentryRec>) {
        let mut c = self.lock();
        if c.epoch == epoch {
            c.dentries.put((parent, name.to_vec()), d);
        }
    }

    /// Mirrors a committed change. Called with the writer lock held, after the
    /// batch was written.
    pub fn apply(&self, changes: Changes) {
        let mut c = self.lock();
        c.epoch += 1;
        for (ino, rec) in changes.inodes {
            match rec {
                Some(rec) => {
                    c.inodes.put(ino, rec);
                }
                None => {
                    c.inodes.pop(&ino);
                }
            }
        }
        for (parent, name, d) in changes.dentries {
            c.dentries.put((parent, name), d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::FileKind;

    #[test]
    fn a_fill_from_before_a_commit_is_dropped() {
        let c = MetaCache::new(8);
        let Cached::Miss(before) = c.dentry(Ino(1), b"a") else {
            panic!("empty cache hit");
        };
        let d = DentryRec {
            ino: 7,
            kind: FileKind::File,
        };
        c.apply(Changes {
            inodes: Vec::new(),
            dentries: vec![(Ino(1), b"a".to_vec(), Some(d))],
        });
        // A reader that looked before the commit read the old (absent) entry.
        c.fill_dentry(before, Ino(1), b"a", None);
        assert!(matches!(c.dentry(Ino(1), b"a"), Cached::Hit(Some(x)) if x == d));
        // Deleting leaves a negative entry, not a stale positive one.
        c.apply(Changes {
            inodes: Vec::new(),
            dentries: vec![(Ino(1), b"a".to_vec(), None)],
        });
        assert!(matches!(c.dentry(Ino(1), b"a"), Cached::Hit(None)));
    }
}
