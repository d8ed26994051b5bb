//! The embedded engine: RocksDB, one column family per table, on this host's
//! disk. Its one process's writer lock (`MetaStore`'s) orders every
//! read-modify-write, so its guards are never checked and its reads carry
//! revision 0; its revision is RocksDB's sequence number.

use super::{Committed, Got, Kv, Rev, Table, Txn, Visit};
use crate::error::{Error, Result};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions,
};
use std::path::{Path, PathBuf};

pub struct RocksKv {
    db: DB,
    path: PathBuf,
}

/// RocksDB's memory, one budget for every database this process opens (the
/// volume and each snapshot opened): left to its defaults, each column family
/// of each database would grow its own 32 MiB block cache and 8 MiB memtable.
struct Memory {
    /// Data, index and filter blocks of every table.
    blocks: rocksdb::Cache,
    /// Memtables; past the budget the largest is flushed.
    memtables: rocksdb::WriteBufferManager,
}

const BLOCK_CACHE_BYTES: usize = 32 << 20;
const MEMTABLE_BYTES: usize = 32 << 20;

impl Memory {
    fn tables(&self) -> rocksdb::BlockBasedOptions {
        let mut t = rocksdb::BlockBasedOptions::default();
        t.set_block_cache(&self.blocks);
        // Index and filter blocks count against the cache instead of staying
        // in memory for as long as a table is open.
        t.set_cache_index_and_filter_blocks(true);
        t.set_pin_l0_filter_and_index_blocks_in_cache(true);
        t
    }
}

/// Bytes RocksDB holds now in its block cache and in memtables (for metrics).
pub fn memory_use() -> (usize, usize) {
    let m = memory();
    (m.blocks.get_usage(), m.memtables.get_usage())
}

fn memory() -> &'static Memory {
    static MEMORY: std::sync::LazyLock<Memory> = std::sync::LazyLock::new(|| Memory {
        blocks: rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES),
        memtables: rocksdb::WriteBufferManager::new_write_buffer_manager(MEMTABLE_BYTES, false),
    });
    &MEMORY
}

fn db_err(e: rocksdb::Error) -> Error {
    Error::Db(e.into_string())
}

impl RocksKv {
    /// Opens the database at `path`, creating it when `create` and absent.
    pub fn open(path: &Path, create: bool) -> Result<RocksKv> {
        let mut opts = Options::default();
        opts.create_if_missing(create);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(4);
        opts.set_max_total_wal_size(16 << 20);
        opts.increase_parallelism(2);
        // RocksDB preallocates WAL and table files at about their target size: with the
        // 64 MiB defaults that is disk a nearly full volume cannot give.
        opts.set_write_buffer_size(8 << 20);
        opts.set_target_file_size_base(8 << 20);
        let memory = memory();
        opts.set_write_buffer_manager(&memory.memtables);
        let cf_opts = || {
            let mut o = Options::default();
            o.set_write_buffer_size(8 << 20);
            o.set_target_file_size_base(8 << 20);
            o.set_block_based_table_factory(&memory.tables());
            o
        };
        let cfs = Table::ALL
            .iter()
            .map(|t| ColumnFamilyDescriptor::new(t.name(), cf_opts()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| {
            let msg = e.into_string();
            if msg.contains("lock") {
                Error::Db(format!(
                    "{}: the volume is in use by another datamesh process ({msg})",
                    path.display()
                ))
            } else {
                Error::Db(format!("{}: {msg}", path.display()))
            }
        })?;
        Ok(RocksKv {
            db,
            path: path.to_path_buf(),
        })
    }

    /// A checkpoint's database (a snapshot's), for reading only.
    pub fn open_read_only(path: &Path) -> Result<RocksKv> {
        let names = Table::ALL.map(Table::name);
        let db = DB::open_cf_for_read_only(&Options::default(), path, names, false)
            .map_err(|e| Error::Db(format!("{}: {}", path.display(), e.into_string())))?;
        Ok(RocksKv {
            db,
            path: path.to_path_buf(),
        })
    }

    fn cf(&self, t: Table) -> &ColumnFamily {
        self.db.cf_handle(t.name()).expect("every table is opened")
    }
}

impl Kv for RocksKv {
    fn engine(&self) -> &'static str {
        "rocksdb"
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Got>> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(table), key)
            .map_err(db_err)?
            .map(|v| (v.to_vec(), 0)))
    }

    fn scan(&self, table: Table, start: &[u8], prefix: &[u8], f: &mut Visit<'_>) -> Result<()> {
        let mode = IteratorMode::From(start, Direction::Forward);
        for item in self.db.iterator_cf(self.cf(table), mode) {
            let (k, v) = item.map_err(db_err)?;
            if !k.starts_with(prefix) || !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn commit(&self, txn: Txn) -> Result<Committed> {
        // Guards are checked against nothing: see the module's doc.
        let mut b = WriteBatch::default();
        for w in txn.writes {
            match w.value {
                Some(v) => b.put_cf(self.cf(w.table), w.key, v),
                None => b.delete_cf(self.cf(w.table), w.key),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(txn.durable);
        self.db
            .write_opt(b, &wo)
            .map_err(|e| Error::Db(format!("{}: {}", self.path.display(), e.into_string())))?;
        Ok(Committed::Done(self.db.latest_sequence_number()))
    }

    fn revision(&self) -> Rev {
        self.db.latest_sequence_number()
    }

    fn sync(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(db_err)
    }

    fn checkpoint(&self, dir: &Path) -> Result<()> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(dir))
            .map_err(|e| {
                Error::Db(format!(
                    "checkpoint in {}: {}",
                    dir.display(),
                    e.into_string()
                ))
            })
    }
}
