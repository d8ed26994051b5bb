//! The namespace: inodes, directory entries, chunk maps, xattrs, shard
//! reference counts and orphans (see `schema`), in a transactional key-value
//! engine (`kv`: RocksDB embedded, or memory).
//!
//! Invariants: every operation reads under one writer lock and commits exactly one
//! transaction, so a crash leaves the old state or the new one, never a mix; shard
//! reference counts change in the same batch as the chunk maps that hold them; an
//! inode with no links that is still open is an orphan, freed at last release or at
//! the next open of the volume.

mod cache;
pub mod changes;
mod grants;
pub mod kv;
mod limited;
pub mod locks;
mod namespace;
mod ops;
pub mod promises;
pub mod ranges;
mod read;
pub mod schema;
pub mod snapshots;
mod tx;

use crate::chunk::{ChunkRef, ShardId};
use crate::error::{Error, Result};
use crate::types::*;
use cache::{Cached, MetaCache};
use kv::{Kv, Table, Txn};
use schema::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use tx::Tx;

pub use namespace::Namespace;
pub use schema::{InodeRec, RefRec, VolumeParams};

/// What a new inode is.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NewNode {
    pub kind: FileKind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub target: Option<Vec<u8>>,
}

pub struct MetaStore {
    /// The engine (shared with the recorder of delegations, `grants`).
    db: std::sync::Arc<dyn Kv>,
    /// Where the database is (snapshots are kept beside it).
    path: std::path::PathBuf,
    /// Snapshot databases opened so far.
    snaps: snapshots::Opened,
    writer: Mutex<()>,
    params: VolumeParams,
    cache: MetaCache,
    /// Every host's file locks (in memory: they end with the daemon).
    locks: locks::LockTable,
    /// What recent batches changed, for the mounts that cache the namespace.
    changes: changes::ChangeLog,
    /// Concurrent fsyncs share WAL syncs.
    wal_syncs: crate::util::SyncGroup,
}

/// Inode records and directory entries kept in memory (each).
const CACHE_ENTRIES: usize = 65_536;

impl MetaStore {
    /// Inode records and directory entries held in memory now (for metrics).
    pub fn cache_entries(&self) -> usize {
        self.cache.entries()
    }
}

pub use kv::memory_use;

fn decode<'a, T: serde::Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::Corrupt(format!("{what} record: {e}")))
}

pub fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(Error::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(Error::Invalid("not a valid file name"));
    }
    Ok(())
}

impl MetaStore {
    /// Open the namespace at `path` (the embedded RocksDB engine), creating
    /// it with `create` when it does not exist. Orphans left by a crash are
    /// freed here.
    pub fn open(path: &Path, create: Option<VolumeParams>) -> Result<MetaStore> {
        let kv = kv::RocksKv::open(path, create.is_some())?;
        Self::over(std::sync::Arc::new(kv), path, create)
    }

    /// A new namespace in memory (tests, models).
    pub fn open_memory(params: VolumeParams) -> Result<MetaStore> {
        let kv: std::sync::Arc<dyn Kv> = std::sync::Arc::new(kv::MemoryKv::new());
        Self::over(kv, Path::new("memory"), Some(params))
    }

    /// The namespace in `kv` (made with `create` when `kv` holds none);
    /// `path` names it in messages and places its snapshots beside it.
    pub fn over(
        kv: std::sync::Arc<dyn Kv>,
        path: &Path,
        create: Option<VolumeParams>,
    ) -> Result<MetaStore> {
        let params = match kv.get(CF_META, KEY_FORMAT)? {
            Some((v, _)) => {
                let version = u32::from_be_bytes(
                    v.as_slice()
                        .try_into()
                        .map_err(|_| Error::Corrupt("format row".into()))?,
                );
                if !(FORMAT_OLDEST..=FORMAT_VERSION).contains(&version) {
                    return Err(Error::Corrupt(format!(
                        "{}: metadata format {version}; this datamesh reads formats \
                         {FORMAT_OLDEST} to {FORMAT_VERSION}",
                        path.display()
                    )));
                }
                if version < FORMAT_VERSION {
                    // Every older record reads as it is; raising the row says
                    // newer ones may now be written (and keeps older code out).
                    let mut t = Txn {
                        durable: true,
                        ..Default::default()
                    };
                    t.put(CF_META, KEY_FORMAT, FORMAT_VERSION.to_be_bytes());
                    kv::commit_unguarded(&*kv, t)?;
                    tracing::info!(
                        "{}: metadata raised from format {version} to {FORMAT_VERSION}",
                        path.display()
                    );
                }
                let (raw, _) = kv
                    .get(CF_META, KEY_PARAMS)?
                    .ok_or_else(|| Error::Corrupt("volume parameters missing".into()))?;
                decode("volume parameters", &raw)?
            }
            None => {
                let params = create
                    .ok_or_else(|| Error::Corrupt(format!("{}: not a volume", path.display())))?;
                Self::format(&*kv, &params)?;
                params
            }
        };
        let store = MetaStore {
            db: kv,
            path: path.to_path_buf(),
            snaps: Default::default(),
            writer: Mutex::new(()),
            params,
            cache: MetaCache::new(CACHE_ENTRIES),
            locks: Default::default(),
            changes: Default::default(),
            wal_syncs: Default::default(),
        };
        // What an operation left to apply when its process stopped.
        store.apply_pending()?;
        store.free_orphans()?;
        Ok(store)
    }

    /// A snapshot's database, for reading only.
    pub fn open_read_only(path: &Path) -> Result<MetaStore> {
        let kv = kv::RocksKv::open_read_only(path)?;
        let (raw, _) = kv
            .get(CF_META, KEY_PARAMS)?
            .ok_or_else(|| Error::Corrupt(format!("{}: not a volume", path.display())))?;
        let params = decode("volume parameters", &raw)?;
        Ok(MetaStore {
            db: std::sync::Arc::new(kv),
            path: path.to_path_buf(),
            snaps: Default::default(),
            writer: Mutex::new(()),
            params,
            cache: MetaCache::new(CACHE_ENTRIES / 16),
            locks: Default::default(),
            changes: Default::default(),
            wal_syncs: Default::default(),
        })
    }

    fn format(db: &dyn Kv, params: &VolumeParams) -> Result<()> {
        let now = Timestamp::now();
        let root = InodeRec {
            kind: FileKind::Dir,
            perm: 0o755,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            nlink: 2,
            rdev: 0,
            parent: Ino::ROOT.0,
            allocated: 0,
            target: None,
        };
        let mut t = Txn {
            durable: true,
            ..Default::default()
        };
        t.put(CF_INODES, ino_key(Ino::ROOT), encode(&root));
        t.put(CF_META, KEY_PARAMS, encode(params));
        t.put(CF_META, KEY_NEXT_INO, 2u64.to_be_bytes());
        t.put(CF_META, KEY_FORMAT, FORMAT_VERSION.to_be_bytes());
        kv::commit_unguarded(db, t).map(|_| ())
    }

    pub fn params(&self) -> &VolumeParams {
        &self.params
    }

    /// The journal of recent changes (see [`changes`]).
    pub fn changes(&self) -> &changes::ChangeLog {
        &self.changes
    }

    /// Writes `t`, made under the writer lock (so its guards hold).
    fn write(&self, t: Txn) -> Result<()> {
        kv::commit_unguarded(&*self.db, t).map(|_| ())
    }

    /// The engine's name (`rocksdb`, `memory`).
    pub fn engine(&self) -> &'static str {
        self.db.engine()
    }

    fn lock(&self) -> Writer<'_> {
        Writer {
            guard: Some(crate::util::lock(&self.writer)),
            changes: &self.changes,
        }
    }

    fn tx(&self) -> Tx<'_> {
        Tx::new(self)
    }

    /// The sequence number of the last change committed: unchanged means no
    /// change since.
    pub fn sequence(&self) -> u64 {
        self.db.revision()
    }

    /// A consistent copy of the namespace in `dir` (which must not exist), a
    /// RocksDB database (RocksDB's checkpoint: hard links of its table files
    /// where it can).
    pub fn checkpoint(&self, dir: &Path) -> Result<()> {
        self.db.checkpoint(dir)
    }

    /// The volume's epoch (docs/DESIGN.md, "Namespace protection").
    pub fn epoch(&self) -> Result<u64> {
        match self.db.get(CF_META, KEY_EPOCH)? {
            None => Ok(0),
            Some((v, _)) => Ok(u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| Error::Corrupt("epoch row".into()))?,
            )),
        }
    }

    pub fn set_epoch(&self, epoch: u64) -> Result<()> {
        let mut t = Txn {
            durable: true,
            ..Default::default()
        };
        t.put(CF_META, KEY_EPOCH, epoch.to_be_bytes());
        self.write(t)
    }

    /// Durability barrier for the namespace: the write-ahead log is on disk.
    pub fn sync(&self) -> Result<()> {
        self.wal_syncs.sync(|| self.db.sync())
    }

    // ---- reads -------------------------------------------------------------------

    // ---- namespace changes: each one WriteBatch ----------------------------------

    // ---- whole-volume scans (df, fsck, gc) ---------------------------------------
}

pub fn apply_setattr(rec: &mut InodeRec, set: &SetAttr, now: Timestamp) {
    let resolve = |t: SetTime| match t {
        SetTime::Now => now,
        SetTime::At(t) => t,
    };
    if let Some(p) = set.perm {
        rec.perm = p & 0o7777;
    }
    if let Some(u) = set.uid {
        rec.uid = u;
    }
    if let Some(g) = set.gid {
        rec.gid = g;
    }
    if let Some(t) = set.atime {
        rec.atime = resolve(t);
    }
    if let Some(t) = set.mtime {
        rec.mtime = resolve(t);
    }
    rec.ctime = now;
}

pub fn to_attr(ino: Ino, r: &InodeRec) -> Attr {
    let blocks = match r.kind {
        FileKind::File => r.allocated.min(r.size).div_ceil(512),
        FileKind::Dir => 8,
        _ => 0,
    };
    Attr {
        ino,
        kind: r.kind,
        perm: r.perm,
        uid: r.uid,
        gid: r.gid,
        size: if r.kind == FileKind::Dir {
            4096
        } else {
            r.size
        },
        atime: r.atime,
        mtime: r.mtime,
        ctime: r.ctime,
        crtime: r.crtime,
        nlink: r.nlink,
        rdev: r.rdev,
        blocks,
    }
}

/// A small volume's parameters, for the tests of this module's parts.
#[cfg(test)]
pub(crate) fn test_params() -> VolumeParams {
    VolumeParams {
        volume_id: [1; 16],
        chunk_size: 64 << 10,
        data_shards: 4,
        parity_shards: 2,
        inline_max: 1024,
    }
}

/// A new node of `kind`, mode 0644, owned by root (the unit tests').
#[cfg(test)]
pub(crate) fn test_node(kind: FileKind) -> NewNode {
    NewNode {
        kind,
        perm: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        target: None,
    }
}

/// A new namespace on each engine, under `dir`: the unit tests of the
/// namespace run on every one.
#[cfg(test)]
pub(crate) fn test_stores(dir: &Path) -> Vec<MetaStore> {
    let mem = dir.join("memory");
    std::fs::create_dir_all(&mem).unwrap();
    let kv: std::sync::Arc<dyn Kv> = std::sync::Arc::new(kv::MemoryKv::new());
    vec![
        MetaStore::open(&dir.join("meta"), Some(test_params())).unwrap(),
        MetaStore::over(kv, &mem.join("meta"), Some(test_params())).unwrap(),
    ]
}

/// The writer lock, held for one operation. Let go, it waits for the member
/// mounts whose promises the operation's changes broke to have seen them
/// (see [`promises`]), so that the change is answered only after.
struct Writer<'a> {
    guard: Option<MutexGuard<'a, ()>>,
    changes: &'a changes::ChangeLog,
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.changes.settle_owed();
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;

    fn set_format(path: &Path, version: u32) {
        let db = kv::RocksKv::open(path, false).unwrap();
        let mut t = Txn::default();
        t.put(CF_META, KEY_FORMAT, version.to_be_bytes());
        kv::commit_unguarded(&db, t).unwrap();
    }

    fn format_of(m: &MetaStore) -> u32 {
        let (v, _) = m.db.get(CF_META, KEY_FORMAT).unwrap().expect("format row");
        u32::from_be_bytes(v.as_slice().try_into().unwrap())
    }

    /// A format-1 volume opens and is raised to the current format; a
    /// format this code does not know is refused by name.
    #[test]
    fn older_formats_are_raised_and_newer_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        let params = test_params();
        drop(MetaStore::open(&path, Some(params)).unwrap());
        set_format(&path, 1);
        let m = MetaStore::open(&path, None).unwrap();
        assert_eq!(format_of(&m), FORMAT_VERSION);
        drop(m);
        set_format(&path, FORMAT_VERSION + 1);
        let err = MetaStore::open(&path, None).err().expect("refused");
        let text = err.to_string();
        assert!(
            text.contains(&format!("metadata format {}", FORMAT_VERSION + 1))
                && text.contains(&path.display().to_string()),
            "{text}"
        );
    }
}
