//! Inode numbers handed to member mounts ahead, for the files they make in
//! directories delegated to them (docs/DESIGN.md, "Delegated directories:
//! files made locally"): each range is taken from the inode counter and
//! recorded as its member's in one write, so a restarted home still knows
//! it, and a member can make only numbers it was given.

use super::schema::*;
use super::snapshots::{not_reserved, writable};
use super::{MetaStore, NewNode, decode};
use crate::error::{Error, Result};
use crate::types::{Attr, FileKind, Ino, Timestamp};

/// Numbers in one range: enough that a member making files as fast as
/// a git clone does over a slow link gets the next range before its
/// pool runs dry.
pub const RANGE_LEN: u64 = 1024;
/// Ranges kept per member: a fifth drops the oldest.
pub const MAX_RANGES: usize = 4;

fn key(owner: &str) -> Vec<u8> {
    [b"inos/".as_slice(), owner.as_bytes()].concat()
}

impl MetaStore {
    /// The ranges `owner` holds: (first, length), oldest first.
    fn ranges(&self, owner: &str) -> Result<Vec<(u64, u64)>> {
        match self.db.get(CF_META, &key(owner))? {
            Some((raw, _)) => decode("inode ranges", &raw),
            None => Ok(Vec::new()),
        }
    }

    /// A new range of [`RANGE_LEN`] numbers for `owner`: its first.
    pub fn take_inodes(&self, owner: &str) -> Result<Ino> {
        let _g = self.lock();
        let mut tx = self.tx();
        let start = tx.alloc_inos(RANGE_LEN)?;
        let mut ranges = self.ranges(owner)?;
        ranges.push((start.0, RANGE_LEN));
        if ranges.len() > MAX_RANGES {
            ranges.remove(0);
        }
        tx.batch.put(CF_META, key(owner), encode(&ranges));
        tx.commit()?;
        Ok(start)
    }

    /// A regular file, symlink or directory `owner` made as `ino` at
    /// `time` (the number one of its ranges holds, and no inode has), made
    /// here as it was there.
    pub fn made(
        &self,
        owner: &str,
        parent: Ino,
        name: &[u8],
        node: NewNode,
        ino: Ino,
        time: Timestamp,
    ) -> Result<Attr> {
        match (node.kind, &node.target) {
            (FileKind::File | FileKind::Dir, None) => {}
            (FileKind::Symlink, Some(t)) if !t.is_empty() && t.len() <= 4095 => {}
            _ => {
                return Err(Error::Invalid(
                    "only regular files, symlinks and directories are made ahead",
                ));
            }
        }
        writable(&[parent])?;
        not_reserved(parent, name, Error::Exists)?;
        let owns = self
            .ranges(owner)?
            .iter()
            .any(|&(first, len)| ino.0 >= first && ino.0 - first < len);
        if !owns {
            return Err(Error::Invalid(
                "that inode number is not one the home handed this device",
            ));
        }
        match self.create_node_as(parent, name, node, Some((ino, time))) {
            // This very `Made` applied before, its answer lost (a batch sent
            // again after its connection closed, or after the home
            // restarted): answered again, not refused, so the file's close
            // does not report a failure that did not happen.
            Err(Error::Exists) if self.dentry(parent, name)?.is_some_and(|d| d.ino == ino.0) => {
                let a = self.attr(ino)?;
                if a.crtime == time {
                    return Ok(a);
                }
                Err(Error::Exists)
            }
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> NewNode {
        NewNode {
            kind: FileKind::File,
            perm: 0o640,
            uid: 7,
            gid: 8,
            rdev: 0,
            target: None,
        }
    }

    #[test]
    fn a_member_makes_only_numbers_it_was_handed_and_each_once() {
        let dir = tempfile::tempdir().unwrap();
        let m = MetaStore::open(dir.path(), Some(crate::meta::test_params())).unwrap();
        let start = m.take_inodes("a").unwrap();
        let other = m.take_inodes("b").unwrap();
        assert!(other.0 >= start.0 + RANGE_LEN, "ranges overlap");
        let t = Timestamp {
            secs: 1_000_000_000,
            nanos: 5,
        };
        let made = m.made("a", Ino::ROOT, b"f", file(), start, t).unwrap();
        assert_eq!((made.ino, made.mtime, made.perm), (start, t, 0o640));
        // The same `Made` again (its answer lost): the same answer.
        let again = m.made("a", Ino::ROOT, b"f", file(), start, t).unwrap();
        assert_eq!((again.ino, again.crtime), (start, t));
        let later = Timestamp { nanos: 6, ..t };
        assert!(matches!(
            m.made("a", Ino::ROOT, b"f", file(), start, later),
            Err(Error::Exists)
        ));
        assert_eq!(m.lookup(Ino::ROOT, b"f").unwrap().ino, start);
        let link = NewNode {
            kind: FileKind::Symlink,
            target: Some(b"f".to_vec()),
            ..file()
        };
        let n = Ino(start.0 + 1);
        let made = m.made("a", Ino::ROOT, b"l", link.clone(), n, t).unwrap();
        assert_eq!((made.kind, made.size), (FileKind::Symlink, 1));
        assert_eq!(m.inode(n).unwrap().target.as_deref(), Some(&b"f"[..]));
        for target in [Some(Vec::new()), Some(vec![b'x'; 4096]), None] {
            let bad = NewNode {
                target,
                ..link.clone()
            };
            assert!(
                m.made("a", Ino::ROOT, b"m", bad, Ino(start.0 + 5), t)
                    .is_err()
            );
        }
        // Again, under another name: the number is in use.
        assert!(m.made("a", Ino::ROOT, b"g", file(), start, t).is_err());
        // Another's number, one past the range, an old one.
        assert!(m.made("a", Ino::ROOT, b"g", file(), other, t).is_err());
        assert!(m.made("b", Ino::ROOT, b"g", file(), other, t).is_ok());
        assert!(m.made("a", Ino::ROOT, b"h", file(), Ino(1), t).is_err());
        // A directory is not made ahead.
        let mut d = file();
        d.kind = FileKind::Dir;
        assert!(
            m.made("a", Ino::ROOT, b"d", d, Ino(start.0 + 1), t)
                .is_err()
        );
        // The home's own creates never take a number handed out.
        let own = m.create_node(Ino::ROOT, b"own", file()).unwrap();
        assert!(own.ino.0 >= other.0 + RANGE_LEN);
        // Ranges outlive a restart; a fifth drops the oldest.
        drop(m);
        let m = MetaStore::open(dir.path(), None).unwrap();
        let n = Ino(start.0 + 2);
        assert!(m.made("a", Ino::ROOT, b"x", file(), n, t).is_ok());
        for _ in 0..MAX_RANGES {
            m.take_inodes("a").unwrap();
        }
        assert!(
            m.made("a", Ino::ROOT, b"y", file(), Ino(start.0 + 3), t)
                .is_err()
        );
    }
}
