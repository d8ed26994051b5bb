//! The engine in memory: every table in one ordered map, a revision per key,
//! and guards checked as etcd checks them. For tests, and for the model of the
//! namespace; a checkpoint is written as a RocksDB database.

use super::{Committed, Got, Guard, Kv, Limits, Rev, Table, Txn, Visit, copy_into_rocks};
use crate::error::Result;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::RwLock;

#[derive(Default)]
pub struct MemoryKv {
    inner: RwLock<Inner>,
    /// Kept as an engine with them would (etcd's, to test the paths that
    /// keep inside them without etcd).
    limits: Option<Limits>,
}

/// A value (`None`: deleted) and the revision that wrote it.
type Entry = (Option<Vec<u8>>, Rev);

#[derive(Default)]
struct Inner {
    /// (table, key) → (value, or deleted; the revision that wrote it).
    map: BTreeMap<(Table, Vec<u8>), Entry>,
    rev: Rev,
}

impl Inner {
    fn holds(&self, g: &Guard) -> bool {
        match g {
            Guard::Key { table, key, rev } => {
                let now = match self.map.get(&(*table, key.clone())) {
                    Some((Some(_), r)) => Some(*r),
                    _ => None,
                };
                now == *rev
            }
            Guard::Range {
                table,
                start,
                end,
                since,
            } => !self
                .map
                .range((*table, start.clone())..(*table, end.clone()))
                .any(|(_, (v, r))| v.is_some() && r > since),
        }
    }
}

/// Entries a scan copies out at a time: its callback runs without the lock.
const SCAN_BATCH: usize = 256;

impl MemoryKv {
    pub fn new() -> MemoryKv {
        MemoryKv::default()
    }

    pub fn with_limits(limits: Limits) -> MemoryKv {
        MemoryKv {
            limits: Some(limits),
            ..Default::default()
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Kv for MemoryKv {
    fn engine(&self) -> &'static str {
        "memory"
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Got>> {
        Ok(match self.read().map.get(&(table, key.to_vec())) {
            Some((Some(v), r)) => Some((v.clone(), *r)),
            _ => None,
        })
    }

    fn scan(&self, table: Table, start: &[u8], prefix: &[u8], f: &mut Visit<'_>) -> Result<()> {
        let mut from = std::ops::Bound::Included((table, start.to_vec()));
        loop {
            let batch: Vec<(Vec<u8>, Vec<u8>)> = {
                let inner = self.read();
                inner
                    .map
                    .range((from.clone(), std::ops::Bound::Unbounded))
                    .filter(|(_, (v, _))| v.is_some())
                    .take_while(|((t, k), _)| *t == table && k.starts_with(prefix))
                    .filter_map(|((_, k), (v, _))| v.as_ref().map(|v| (k.clone(), v.clone())))
                    .take(SCAN_BATCH)
                    .collect()
            };
            let Some(last) = batch.last().map(|(k, _)| k.clone()) else {
                return Ok(());
            };
            let full = batch.len() == SCAN_BATCH;
            for (k, v) in &batch {
                if !f(k, v)? {
                    return Ok(());
                }
            }
            if !full {
                return Ok(());
            }
            from = std::ops::Bound::Excluded((table, last));
        }
    }

    fn limits(&self) -> Option<Limits> {
        self.limits
    }

    fn commit(&self, txn: Txn) -> Result<Committed> {
        if let Some(l) = &self.limits {
            l.check(self.engine(), &txn)?;
        }
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = txn.guards.iter().position(|g| !inner.holds(g)) {
            return Ok(Committed::Conflict(i));
        }
        if txn.writes.is_empty() {
            return Ok(Committed::Done(inner.rev));
        }
        inner.rev += 1;
        let rev = inner.rev;
        for w in txn.writes {
            inner.map.insert((w.table, w.key), (w.value, rev));
        }
        Ok(Committed::Done(rev))
    }

    fn revision(&self) -> Rev {
        self.read().rev
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    /// Consistent while nothing commits meanwhile (the namespace's writer
    /// lock held).
    fn checkpoint(&self, dir: &Path) -> Result<()> {
        copy_into_rocks(dir, &mut |t, f| self.scan(t, b"", b"", f))
    }
}
