//! The namespace's storage engine, behind one trait (`Kv`): ordered tables of
//! byte keys, and transactions that write everything or nothing, guarded by
//! the revisions of what they read. Engines: RocksDB (`rocks`, the embedded
//! default), memory (`memory`, tests) and etcd (`etcd`). See docs/DESIGN.md, "The namespace
//! over a transactional key-value engine".

mod etcd;
#[doc(hidden)]
pub mod local_etcd;
mod memory;
mod rocks;
#[cfg(test)]
mod tests;

use crate::error::Result;
use std::path::Path;

pub use etcd::EtcdKv;
pub use memory::MemoryKv;
pub use rocks::{RocksKv, memory_use};

/// A commit's place in the engine's history: each commit's is higher.
pub type Rev = u64;

/// A value read, and the revision that wrote it.
pub type Got = (Vec<u8>, Rev);

/// What a scan calls with each key and value: true to go on.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// The namespace's tables (RocksDB's column families).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Inodes,
    Dentries,
    Chunks,
    Xattrs,
    Refs,
    Orphans,
    Meta,
}

impl Table {
    pub const ALL: [Table; 7] = [
        Table::Inodes,
        Table::Dentries,
        Table::Chunks,
        Table::Xattrs,
        Table::Refs,
        Table::Orphans,
        Table::Meta,
    ];

    /// Its name on disk (RocksDB's column family).
    pub fn name(self) -> &'static str {
        match self {
            Table::Inodes => "inodes",
            Table::Dentries => "dentries",
            Table::Chunks => "chunks",
            Table::Xattrs => "xattrs",
            Table::Refs => "refs",
            Table::Orphans => "orphans",
            Table::Meta => "meta",
        }
    }
}

/// What a transaction requires to still hold when it commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Guard {
    /// The key is at revision `rev` (`None`: absent).
    Key {
        table: Table,
        key: Vec<u8>,
        rev: Option<Rev>,
    },
    /// No key in `[start, end)` was put after revision `since` (deletes do
    /// not count: etcd compares the keys that are there). An rmdir's "still
    /// empty" is this guard at the revision its scan found none.
    Range {
        table: Table,
        start: Vec<u8>,
        end: Vec<u8>,
        since: Rev,
    },
}

/// One write: `value` `None` deletes the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub table: Table,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Writes applied all or none, if every guard holds.
#[derive(Clone, Debug, Default)]
pub struct Txn {
    pub guards: Vec<Guard>,
    pub writes: Vec<Write>,
    /// Answered only once the engine's log is on disk.
    pub durable: bool,
}

impl Txn {
    pub fn put(&mut self, table: Table, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.push(Write {
            table,
            key: key.into(),
            value: Some(value.into()),
        });
    }

    pub fn delete(&mut self, table: Table, key: impl Into<Vec<u8>>) {
        self.writes.push(Write {
            table,
            key: key.into(),
            value: None,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Bytes of its keys and values, and of its guards' keys.
    pub fn size(&self) -> usize {
        let writes: usize = self
            .writes
            .iter()
            .map(|w| w.key.len() + w.value.as_ref().map_or(0, Vec::len))
            .sum();
        let guards: usize = self
            .guards
            .iter()
            .map(|g| match g {
                Guard::Key { key, .. } => key.len(),
                Guard::Range { start, end, .. } => start.len() + end.len(),
            })
            .sum();
        writes + guards
    }
}

/// The most a transaction may hold in an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Writes and guards.
    pub ops: usize,
    /// Bytes of keys and values (and guards' keys), about as etcd counts
    /// its request.
    pub bytes: usize,
}

impl Limits {
    /// etcd's defaults (`--max-txn-ops` 128, `--max-request-bytes`
    /// 1.5 MiB, less 64 KiB for the keys' prefixes and the request's own
    /// bytes).
    pub const ETCD: Limits = Limits {
        ops: 128,
        bytes: (1536 - 64) << 10,
    };

    /// Whether `txn` fits, or why not.
    pub fn check(&self, engine: &str, txn: &Txn) -> Result<()> {
        let ops = txn.writes.len().max(txn.guards.len());
        if ops > self.ops {
            return Err(crate::error::Error::Db(format!(
                "{engine}: too many operations in one transaction ({ops}, at most {})",
                self.ops
            )));
        }
        if txn.size() > self.bytes {
            return Err(crate::error::Error::Db(format!(
                "{engine}: transaction too large ({} bytes, at most {})",
                txn.size(),
                self.bytes
            )));
        }
        Ok(())
    }
}

/// How a commit ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Committed {
    Done(Rev),
    /// Guard `n` (its index) did not hold: nothing was written.
    Conflict(usize),
}

/// An ordered, transactional key-value engine.
pub trait Kv: Send + Sync {
    /// The engine's name, for messages and `status`.
    fn engine(&self) -> &'static str;

    /// The value of `key` and the revision that wrote it (RocksDB: always 0,
    /// its guards are never checked: see DESIGN).
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Got>>;

    /// `get` of each key, in one round trip where the engine can.
    fn get_many(&self, table: Table, keys: &[Vec<u8>]) -> Result<Vec<Option<Got>>> {
        keys.iter().map(|k| self.get(table, k)).collect()
    }

    /// Calls `f(key, value)` in key order for keys from `start` on that begin
    /// with `prefix`, while it answers true.
    fn scan(&self, table: Table, start: &[u8], prefix: &[u8], f: &mut Visit<'_>) -> Result<()>;

    /// Applies `txn` whole if its guards hold; a transaction over
    /// [`Kv::limits`] is an error and writes nothing.
    fn commit(&self, txn: Txn) -> Result<Committed>;

    /// What one transaction may hold (`None`: no limit).
    fn limits(&self) -> Option<Limits> {
        None
    }

    /// The last commit's revision: unchanged means nothing was written since.
    fn revision(&self) -> Rev;

    /// Everything committed so far is on disk.
    fn sync(&self) -> Result<()>;

    /// A consistent copy of every table in `dir` (which must not exist), that
    /// [`RocksKv::open_read_only`] opens.
    fn checkpoint(&self, dir: &Path) -> Result<()>;
}

/// A checkpoint made by copying: every table, as `scan(table, f)` reads it
/// (all of it, calling `f` with each key and value), into a new RocksDB
/// database at `dir`.
pub fn copy_into_rocks(dir: &Path, scan: &mut Scan<'_>) -> Result<()> {
    let db = RocksKv::open(dir, true)?;
    copy_tables(scan, &db)?;
    db.sync()
}

/// Reads every key of one table, calling the visitor with each.
pub type Scan<'a> = dyn FnMut(Table, &mut Visit<'_>) -> Result<()> + 'a;

/// Every table as `scan` reads it, written into `dst` in transactions
/// within its limits; the number of keys.
pub fn copy_tables(scan: &mut Scan<'_>, dst: &dyn Kv) -> Result<u64> {
    let (ops, bytes) = dst
        .limits()
        .map_or((4096, 64 << 20), |l| (l.ops, l.bytes / 2));
    let mut n = 0;
    for table in Table::ALL {
        let mut t = Txn::default();
        scan(table, &mut |k, v| {
            if !t.is_empty() && (t.writes.len() >= ops || t.size() + k.len() + v.len() > bytes) {
                commit_unguarded(dst, std::mem::take(&mut t))?;
            }
            t.put(table, k, v);
            n += 1;
            Ok(true)
        })?;
        commit_unguarded(dst, t)?;
    }
    Ok(n)
}

/// A digest of every table's keys and values, in order: two engines that
/// answer the same hold the same namespace.
pub fn digest(kv: &dyn Kv) -> Result<(u64, [u8; 32])> {
    let mut h = blake3::Hasher::new();
    let mut n = 0u64;
    for table in Table::ALL {
        h.update(&[table as u8]);
        kv.scan(table, b"", b"", &mut |k, v| {
            h.update(&(k.len() as u64).to_be_bytes());
            h.update(k);
            h.update(&(v.len() as u64).to_be_bytes());
            h.update(v);
            n += 1;
            Ok(true)
        })?;
    }
    Ok((n, *h.finalize().as_bytes()))
}

/// Commits `txn`, whose guards the caller knows cannot fail (the writer lock
/// held, or none): a conflict is reported as a bug in the engine.
pub fn commit_unguarded(kv: &dyn Kv, txn: Txn) -> Result<Rev> {
    match kv.commit(txn)? {
        Committed::Done(rev) => Ok(rev),
        Committed::Conflict(i) => Err(crate::error::Error::Db(format!(
            "{}: guard {i} of a transaction that had none failed",
            kv.engine()
        ))),
    }
}
