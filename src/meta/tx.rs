//! One namespace operation in the making: reads see its own pending writes, and
//! `commit` writes everything, reference counts included, as one transaction.

use super::MetaStore;
use super::cache::Changes;
use super::kv::Txn;
use super::schema::*;
use crate::chunk::{ChunkRef, ShardId};
use crate::error::{Error, Result};
use crate::types::{FileKind, Ino, Timestamp};
use std::collections::{BTreeMap, HashMap};

pub struct Tx<'a> {
    meta: &'a MetaStore,
    pub batch: Txn,
    inodes: HashMap<Ino, Option<InodeRec>>,
    refs: HashMap<ShardId, i64>,
    /// Chunk map entries written so far (`None`: deleted): a chunk replaced
    /// twice in one operation drops the references of the one it replaces,
    /// not those of the stored one again.
    chunks: BTreeMap<(Ino, u64), Option<ChunkRef>>,
    next_ino: Option<u64>,
    /// Entries put or deleted, for the cache once the batch is written.
    dentries: Vec<(Ino, Vec<u8>, Option<DentryRec>)>,
    /// Inodes left without a link that have more chunks than one
    /// transaction of the engine holds: marked orphans here, freed in steps
    /// once this commits.
    deferred: Vec<Ino>,
}

impl<'a> Tx<'a> {
    pub fn new(meta: &'a MetaStore) -> Tx<'a> {
        Tx {
            meta,
            batch: Txn::default(),
            inodes: HashMap::new(),
            refs: HashMap::new(),
            chunks: BTreeMap::new(),
            next_ino: None,
            dentries: Vec::new(),
            deferred: Vec::new(),
        }
    }

    pub fn inode_opt(&mut self, ino: Ino) -> Result<Option<InodeRec>> {
        match self.inodes.get(&ino) {
            Some(pending) => Ok(pending.clone()),
            None => self.meta.inode_opt(ino),
        }
    }

    pub fn inode(&mut self, ino: Ino) -> Result<InodeRec> {
        self.inode_opt(ino)?.ok_or(Error::NotFound)
    }

    pub fn dir(&mut self, ino: Ino) -> Result<InodeRec> {
        let rec = self.inode(ino)?;
        if rec.kind != FileKind::Dir {
            return Err(Error::NotDir);
        }
        Ok(rec)
    }

    pub fn put_inode(&mut self, ino: Ino, rec: InodeRec) {
        self.inodes.insert(ino, Some(rec));
    }

    pub fn alloc_ino(&mut self) -> Result<Ino> {
        self.alloc_inos(1)
    }

    /// `n` inode numbers in a row, never handed out again: the first.
    pub fn alloc_inos(&mut self, n: u64) -> Result<Ino> {
        let next = match self.next_ino {
            Some(n) => n,
            None => {
                let (raw, _) = self
                    .meta
                    .db
                    .get(CF_META, KEY_NEXT_INO)?
                    .ok_or_else(|| Error::Corrupt("next inode number missing".into()))?;
                u64::from_be_bytes(
                    raw.as_slice()
                        .try_into()
                        .map_err(|_| Error::Corrupt("next inode".into()))?,
                )
            }
        };
        let after = next.checked_add(n).ok_or(Error::NoSpace)?;
        self.next_ino = Some(after);
        Ok(Ino(next))
    }

    pub fn put_dentry(&mut self, parent: Ino, name: &[u8], d: DentryRec) {
        self.dentries.push((parent, name.to_vec(), Some(d)));
        self.batch
            .put(CF_DENTRIES, dentry_key(parent, name), encode(&d));
    }

    pub fn delete_dentry(&mut self, parent: Ino, name: &[u8]) {
        self.dentries.push((parent, name.to_vec(), None));
        self.batch.delete(CF_DENTRIES, dentry_key(parent, name));
    }

    /// `ino`'s chunk `idx` as this operation leaves it so far.
    pub fn chunk(&self, ino: Ino, idx: u64) -> Result<Option<ChunkRef>> {
        match self.chunks.get(&(ino, idx)) {
            Some(pending) => Ok(pending.clone()),
            None => self.meta.chunk(ino, idx),
        }
    }

    /// `ino`'s chunks from `from` on, as this operation leaves them so far.
    pub fn chunks_from(&self, ino: Ino, from: u64) -> Result<Vec<(u64, ChunkRef)>> {
        let mut all: BTreeMap<u64, Option<ChunkRef>> = self
            .meta
            .chunks_from(ino, from)?
            .into_iter()
            .map(|(i, c)| (i, Some(c)))
            .collect();
        for ((_, idx), c) in self.chunks.range((ino, from)..=(ino, u64::MAX)) {
            all.insert(*idx, c.clone());
        }
        Ok(all
            .into_iter()
            .filter_map(|(i, c)| c.map(|c| (i, c)))
            .collect())
    }

    pub fn put_chunk(&mut self, ino: Ino, idx: u64, chunk: &ChunkRef) {
        for id in chunk.shard_ids() {
            *self.refs.entry(*id).or_default() += 1;
        }
        self.batch
            .put(CF_CHUNKS, chunk_key(ino, idx), encode(chunk));
        self.chunks.insert((ino, idx), Some(chunk.clone()));
    }

    pub fn delete_chunk(&mut self, ino: Ino, idx: u64) {
        self.batch.delete(CF_CHUNKS, chunk_key(ino, idx));
        self.chunks.insert((ino, idx), None);
    }

    pub fn unref(&mut self, chunk: &ChunkRef) {
        for id in chunk.shard_ids() {
            *self.refs.entry(*id).or_default() -= 1;
        }
    }

    /// One link to `ino` went away: free it, or keep it as an orphan while open.
    pub fn drop_link(
        &mut self,
        ino: Ino,
        now: Timestamp,
        is_open: &dyn Fn(Ino) -> bool,
    ) -> Result<()> {
        let mut rec = self.inode(ino)?;
        rec.nlink = rec.nlink.saturating_sub(1);
        rec.ctime = now;
        if rec.nlink > 0 {
            self.put_inode(ino, rec);
        } else if is_open(ino) {
            self.put_inode(ino, rec);
            self.batch.put(CF_ORPHANS, ino_key(ino), b"");
        } else if let Some(n) = self.meta.step_chunks()
            && self.chunks_from(ino, 0)?.len() > n
        {
            self.put_inode(ino, rec);
            self.batch.put(CF_ORPHANS, ino_key(ino), b"");
            self.deferred.push(ino);
        } else {
            self.free_inode(ino)?;
        }
        Ok(())
    }

    /// Delete an inode with its chunk maps (dropping their shard references) and xattrs.
    pub fn free_inode(&mut self, ino: Ino) -> Result<()> {
        for (idx, chunk) in self.chunks_from(ino, 0)? {
            self.unref(&chunk);
            self.delete_chunk(ino, idx);
        }
        let mut xattrs = Vec::new();
        self.meta
            .scan_prefix(CF_XATTRS, &ino_key(ino), &ino_key(ino), |k, _| {
                xattrs.push(k.to_vec());
                Ok(true)
            })?;
        for k in xattrs {
            self.batch.delete(CF_XATTRS, k);
        }
        self.batch.delete(CF_ORPHANS, ino_key(ino));
        self.inodes.insert(ino, None);
        Ok(())
    }

    pub fn commit(mut self) -> Result<()> {
        let meta = self.meta;
        let mut changes = Changes {
            inodes: Vec::with_capacity(self.inodes.len()),
            dentries: std::mem::take(&mut self.dentries),
        };
        for (ino, rec) in self.inodes.drain() {
            match &rec {
                Some(rec) => self.batch.put(CF_INODES, ino_key(ino), encode(rec)),
                None => self.batch.delete(CF_INODES, ino_key(ino)),
            }
            changes.inodes.push((ino, rec));
        }
        let deltas: Vec<(ShardId, i64)> = self.refs.drain().filter(|(_, d)| *d != 0).collect();
        // An engine with transaction limits takes counts that do not fit
        // as a pending record, applied right after (meta/limited.rs).
        let spilled = !meta.refs_fit(&self.batch, deltas.len());
        if spilled {
            meta.spill_refs(&mut self.batch, deltas)?;
        } else {
            for (id, rec) in meta.ref_updates(&deltas)? {
                self.batch.put(CF_REFS, ref_key(&id), encode(&rec));
            }
        }
        if let Some(n) = self.next_ino {
            self.batch.put(CF_META, KEY_NEXT_INO, n.to_be_bytes());
        }
        meta.write(self.batch)?;
        meta.changes.note(&changes);
        meta.cache.apply(changes);
        if spilled {
            meta.apply_pending()?;
        }
        for ino in self.deferred {
            meta.free_in_steps(ino)?;
        }
        Ok(())
    }
}
