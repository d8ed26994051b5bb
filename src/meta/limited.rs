//! Keeping every namespace operation inside its engine's transaction limits
//! (docs/DESIGN.md, "Inside etcd's limits"): reference-count changes that do
//! not fit go to one pending record and are applied in groups, exactly once;
//! large chunk changes are made in steps that are each a whole operation.
//! With an engine that has no limits (RocksDB) none of this runs.

use super::kv::{Limits, Txn};
use super::schema::*;
use super::{MetaStore, decode};
use crate::chunk::{ChunkRef, ShardId};
use crate::error::{Error, Result};
use crate::types::{Ino, Timestamp};
use serde::{Deserialize, Serialize};

/// The pending reference-count changes (in the meta table).
pub const KEY_PENDING: &[u8] = b"pending";
const PENDING_V1: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Pending {
    v: u8,
    deltas: Vec<(ShardId, i64)>,
}

/// Room kept in a step for the inode, the pending record and the orphan mark.
const SPARE_OPS: usize = 8;
/// A reference-count record's bytes in a transaction, at most.
const REF_BYTES: usize = 64;

impl MetaStore {
    pub(super) fn limits(&self) -> Option<Limits> {
        self.db.limits()
    }

    /// Chunks one step may change: `None` when the engine has no limits.
    pub(super) fn step_chunks(&self) -> Option<usize> {
        self.limits()
            .map(|l| l.ops.saturating_sub(SPARE_OPS).max(1))
    }

    /// Whether `deltas` fit beside `txn` in one transaction.
    pub(super) fn refs_fit(&self, txn: &Txn, deltas: usize) -> bool {
        self.limits().is_none_or(|l| {
            txn.writes.len() + deltas + 2 <= l.ops
                && txn.size() + deltas * REF_BYTES + REF_BYTES <= l.bytes
        })
    }

    /// The records of the shards whose counts change by `deltas`, as they
    /// will be (read in one batch).
    pub(super) fn ref_updates(&self, deltas: &[(ShardId, i64)]) -> Result<Vec<(ShardId, RefRec)>> {
        let keys: Vec<Vec<u8>> = deltas.iter().map(|(id, _)| ref_key(id).to_vec()).collect();
        let now = Timestamp::now().secs;
        let mut out = Vec::with_capacity(deltas.len());
        for ((id, delta), cur) in deltas.iter().zip(self.db.get_many(CF_REFS, &keys)?) {
            let cur: RefRec = match cur {
                Some((v, _)) => decode("reference count", &v)?,
                None => RefRec {
                    count: 0,
                    zero_since: now,
                },
            };
            let count = cur.count as i64 + delta;
            if count < 0 {
                return Err(Error::Corrupt(format!(
                    "reference count of shard {id} would go below zero"
                )));
            }
            let zero_since = if count == 0 && cur.count != 0 {
                now
            } else {
                cur.zero_since
            };
            out.push((
                *id,
                RefRec {
                    count: count as u64,
                    zero_since,
                },
            ));
        }
        Ok(out)
    }

    /// `deltas` as the pending record, in `txn` (any record left from
    /// before is applied first: one at a time).
    pub(super) fn spill_refs(&self, txn: &mut Txn, deltas: Vec<(ShardId, i64)>) -> Result<()> {
        self.apply_pending()?;
        txn.put(
            CF_META,
            KEY_PENDING,
            encode(&Pending {
                v: PENDING_V1,
                deltas,
            }),
        );
        Ok(())
    }

    /// Applies the pending record's changes in groups that fit, each group
    /// with the record rewritten to what is left (deleted with the last), so
    /// each change is applied once whatever stops between two. Run with the
    /// writer lock held, and as the namespace opens.
    pub(super) fn apply_pending(&self) -> Result<()> {
        let group = self
            .limits()
            .map_or(usize::MAX, |l| (l.ops - 2).min(l.bytes / REF_BYTES / 2))
            .max(1);
        loop {
            let Some((raw, _)) = self.db.get(CF_META, KEY_PENDING)? else {
                return Ok(());
            };
            let p: Pending = decode("pending reference counts", &raw)?;
            if p.v != PENDING_V1 {
                return Err(Error::Corrupt(format!(
                    "pending reference counts of version {} (this datamesh reads {PENDING_V1})",
                    p.v
                )));
            }
            let mut now = p.deltas;
            let rest = now.split_off(now.len().min(group));
            let mut t = Txn::default();
            for (id, rec) in self.ref_updates(&now)? {
                t.put(CF_REFS, ref_key(&id), encode(&rec));
            }
            if rest.is_empty() {
                t.delete(CF_META, KEY_PENDING);
            } else {
                t.put(
                    CF_META,
                    KEY_PENDING,
                    encode(&Pending {
                        v: PENDING_V1,
                        deltas: rest,
                    }),
                );
            }
            self.write(t)?;
        }
    }

    /// Drops `ino`'s chunks from index `keep` on in steps from the end until
    /// at most one step's worth is left, each step a whole operation that
    /// lowers the size to where its chunks began (writer lock held). A
    /// no-op with no limits.
    pub(super) fn shrink_in_steps(&self, ino: Ino, keep: u64) -> Result<()> {
        let Some(n) = self.step_chunks() else {
            return Ok(());
        };
        let mut chunks = self.chunks_from(ino, keep)?;
        let chunk_size = self.params.chunk_size as u64;
        while chunks.len() > n {
            let group = chunks.split_off(chunks.len() - n);
            let mut tx = self.tx();
            let mut rec = tx.inode(ino)?;
            for (idx, old) in &group {
                rec.allocated -= old.plain_len() as u64;
                tx.unref(old);
                tx.delete_chunk(ino, *idx);
            }
            rec.size = rec.size.min(group[0].0 * chunk_size);
            tx.put_inode(ino, rec);
            tx.commit()?;
        }
        Ok(())
    }

    /// Frees `ino`, an inode with no link that no handle holds, whose
    /// orphan mark is committed: its chunks in steps, then the rest.
    pub(super) fn free_in_steps(&self, ino: Ino) -> Result<()> {
        let mut tx = self.tx();
        if tx.inode_opt(ino)?.is_some() {
            drop(tx);
            self.shrink_in_steps(ino, 0)?;
            tx = self.tx();
            tx.free_inode(ino)?;
        } else {
            tx.batch.delete(CF_ORPHANS, ino_key(ino));
        }
        tx.commit()
    }

    /// `chunks` (sorted by index) cut into the steps a commit of them is made
    /// in: one with no limits.
    pub(super) fn chunk_steps(
        &self,
        chunks: Vec<(u64, Option<ChunkRef>)>,
    ) -> Vec<Vec<(u64, Option<ChunkRef>)>> {
        let (Some(l), Some(n)) = (self.limits(), self.step_chunks()) else {
            return vec![chunks];
        };
        let budget = l.bytes / 2;
        let mut steps = vec![Vec::new()];
        let mut bytes = 0;
        for (idx, c) in chunks {
            let size = c.as_ref().map_or(0, |c| encode(c).len()) + 24;
            let last = steps.last_mut().expect("one step");
            if !last.is_empty() && (last.len() >= n || bytes + size > budget) {
                steps.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            steps.last_mut().expect("one step").push((idx, c));
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::kv::{Kv, MemoryKv};
    use crate::types::{FileKind, SetAttr};
    use std::sync::Arc;

    fn sharded(seed: u32) -> ChunkRef {
        let b = seed.to_be_bytes();
        ChunkRef::Sharded {
            key: [1; 32],
            compressed: false,
            plain_len: 1000,
            sealed_len: 1100,
            k: 4,
            shards: (0..6u8)
                .map(|i| {
                    let mut id = [i; 32];
                    id[..4].copy_from_slice(&b);
                    ShardId(id)
                })
                .collect(),
        }
    }

    /// On an engine that takes 16 operations a transaction, a 30-chunk
    /// commit, a truncation of 20 of them and the free of the rest are each
    /// made in steps the engine takes, and every reference count ends as
    /// the chunk maps say (none pending).
    #[test]
    fn large_chunk_changes_are_made_in_steps_within_the_limits() {
        let kv = Arc::new(MemoryKv::with_limits(Limits {
            ops: 16,
            bytes: 64 << 10,
        }));
        let dir = tempfile::tempdir().unwrap();
        let dyn_kv: Arc<dyn Kv> = kv.clone();
        let m = MetaStore::over(
            dyn_kv,
            &dir.path().join("meta"),
            Some(crate::meta::test_params()),
        )
        .unwrap();
        let node = crate::meta::test_node(FileKind::File);
        let f = m.create_node(Ino::ROOT, b"f", node).unwrap().ino;
        let chunk = m.params.chunk_size as u64;
        let before = kv.revision();
        let all: Vec<_> = (0..30).map(|i| (i, Some(sharded(i as u32)))).collect();
        let attr = m.commit_chunks(f, all, 30 * chunk - 5, None).unwrap();
        assert_eq!(attr.size, 30 * chunk - 5);
        let commits = kv.revision() - before;
        assert!(commits >= 4, "30 chunks in {commits} commits");
        let counts = |m: &MetaStore| {
            let live: u64 = m.refs().unwrap().values().map(|r| r.count).sum();
            let mut used = 0;
            m.for_each_chunk(|_, _, c| {
                used += c.shard_ids().len() as u64;
                Ok(())
            })
            .unwrap();
            assert_eq!(m.db.get(CF_META, KEY_PENDING).unwrap(), None);
            (live, used)
        };
        assert_eq!(counts(&m), (180, 180));
        m.truncate(f, 10 * chunk, None, &SetAttr::default())
            .unwrap();
        assert_eq!(m.inode(f).unwrap().size, 10 * chunk);
        assert_eq!(m.chunks_from(f, 0).unwrap().len(), 10);
        assert_eq!(counts(&m), (60, 60));
        let all: Vec<_> = (10..30)
            .map(|i| (i, Some(sharded(100 + i as u32))))
            .collect();
        m.commit_chunks(f, all, 30 * chunk, None).unwrap();
        m.unlink(Ino::ROOT, b"f", &|_| false).unwrap();
        assert!(m.inode(f).is_err());
        assert_eq!(m.orphan_count().unwrap(), 0);
        assert_eq!(counts(&m), (0, 0));
    }
}
