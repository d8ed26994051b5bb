//! The engine: the namespace of [`crate::meta`] plus file contents, sealed by
//! [`crate::chunk`] into shards kept by a [`ShardStore`].
//!
//! Writes land in per-file dirty chunk buffers; a buffer is sealed and stored when
//! its chunk fills, on `flush`/`fsync`, or when the dirty total passes its budget,
//! and then committed (chunk map, size and shard references in one batch). Reads
//! see dirty buffers first, then committed chunks through a decoded-chunk LRU cache.
//! A shard that is missing or fails its hash is rebuilt from the others and written
//! back (self-healing).

mod check;
mod stream;

pub use check::{CheckReport, Usage};

use crate::chunk::{self, ChunkRef, Codec, ShardId, VolumeKey};
use crate::error::{Error, Result};
use crate::meta::{MetaStore, NewNode};
use crate::store::ShardStore;
use crate::types::*;
use lru::LruCache;
use rayon::prelude::*;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// Run-time settings of an engine (the volume's own parameters live in the metadata).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Decoded chunks kept in memory, in bytes.
    pub cache_bytes: usize,
    /// Dirty data held across all files before writers are made to flush.
    pub dirty_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cache_bytes: 64 << 20,
            dirty_bytes: 256 << 20,
        }
    }
}

/// Unsealed writes of one file.
#[derive(Default)]
struct FileState {
    /// Chunk index → its full current contents (may be shorter than a chunk).
    dirty: BTreeMap<u64, Vec<u8>>,
    /// Size and mtime including dirty writes, while any are unsealed.
    size: Option<u64>,
    mtime: Option<Timestamp>,
}

pub struct Engine {
    meta: MetaStore,
    store: Arc<dyn ShardStore>,
    key: VolumeKey,
    codec: Codec,
    chunk_size: usize,
    inline_max: usize,
    cache: Mutex<LruCache<[u8; 32], Arc<Vec<u8>>>>,
    files: Mutex<HashMap<Ino, Arc<Mutex<FileState>>>>,
    /// Open handles per inode. A leaf lock: taken inside the metadata writer lock, so
    /// it must never wait on a file's state.
    opens: Mutex<HashMap<Ino, u32>>,
    dirty_total: AtomicUsize,
    dirty_budget: usize,
    /// Held shared from storing a chunk's shards until its map commits, and
    /// exclusively by garbage collection, so GC never deletes a shard being re-referenced.
    gc_gate: RwLock<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    pub fn new(
        meta: MetaStore,
        store: Arc<dyn ShardStore>,
        key: VolumeKey,
        cfg: EngineConfig,
    ) -> Result<Engine> {
        let p = meta.params().clone();
        let codec = Codec::new(p.data_shards as usize, p.parity_shards as usize)?;
        let chunk_size = p.chunk_size as usize;
        let entries = (cfg.cache_bytes / chunk_size).max(2);
        Ok(Engine {
            meta,
            store,
            key,
            codec,
            chunk_size,
            inline_max: p.inline_max as usize,
            cache: Mutex::new(LruCache::new(NonZeroUsize::new(entries).unwrap())),
            files: Mutex::new(HashMap::new()),
            opens: Mutex::new(HashMap::new()),
            dirty_total: AtomicUsize::new(0),
            dirty_budget: cfg.dirty_bytes.max(2 * chunk_size),
            gc_gate: RwLock::new(()),
        })
    }

    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }
    pub fn store(&self) -> &dyn ShardStore {
        &*self.store
    }
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    fn state(&self, ino: Ino) -> Option<Arc<Mutex<FileState>>> {
        lock(&self.files).get(&ino).cloned()
    }

    fn state_or_new(&self, ino: Ino) -> Arc<Mutex<FileState>> {
        lock(&self.files).entry(ino).or_default().clone()
    }

    fn is_open(&self) -> impl Fn(Ino) -> bool + '_ {
        move |ino| lock(&self.opens).contains_key(&ino)
    }

    // ---- namespace ---------------------------------------------------------------

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        let attr = self.meta.lookup(parent, name)?;
        Ok(self.with_dirty(attr))
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        let attr = self.meta.attr(ino)?;
        Ok(self.with_dirty(attr))
    }

    /// Attributes as the writer sees them: size and mtime include unsealed writes.
    fn with_dirty(&self, mut attr: Attr) -> Attr {
        if let Some(st) = self.state(attr.ino) {
            let st = lock(&st);
            if let Some(size) = st.size {
                attr.size = size;
                attr.blocks = attr.blocks.max(size.div_ceil(512));
            }
            if let Some(t) = st.mtime {
                attr.mtime = t;
                attr.ctime = t;
            }
        }
        attr
    }

    pub fn mkdir(&self, parent: Ino, name: &[u8], perm: u16, uid: u32, gid: u32) -> Result<Attr> {
        let node = NewNode {
            kind: FileKind::Dir,
            perm,
            uid,
            gid,
            rdev: 0,
            target: None,
        };
        self.meta.create_node(parent, name, node)
    }

    pub fn create(&self, parent: Ino, name: &[u8], perm: u16, uid: u32, gid: u32) -> Result<Attr> {
        let node = NewNode {
            kind: FileKind::File,
            perm,
            uid,
            gid,
            rdev: 0,
            target: None,
        };
        self.meta.create_node(parent, name, node)
    }

    /// Special files: fifos, sockets, devices (and regular files, as mknod allows).
    pub fn mknod(&self, parent: Ino, name: &[u8], node: NewNode) -> Result<Attr> {
        if matches!(node.kind, FileKind::Dir | FileKind::Symlink) || node.target.is_some() {
            return Err(Error::Invalid("mknod cannot make directories or symlinks"));
        }
        self.meta.create_node(parent, name, node)
    }

    pub fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        if target.is_empty() {
            return Err(Error::NotFound);
        }
        if target.len() > 4095 {
            return Err(Error::NameTooLong);
        }
        let node = NewNode {
            kind: FileKind::Symlink,
            perm: 0o777,
            uid,
            gid,
            rdev: 0,
            target: Some(target.to_vec()),
        };
        self.meta.create_node(parent, name, node)
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let rec = self.meta.inode(ino)?;
        rec.target.ok_or(Error::Invalid("not a symbolic link"))
    }

    pub fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> Result<Attr> {
        let attr = self.meta.link(ino, parent, name)?;
        Ok(self.with_dirty(attr))
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.meta.unlink(parent, name, &self.is_open())
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.meta.rmdir(parent, name)
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        self.meta
            .rename(parent, name, new_parent, new_name, flags, &self.is_open())
    }

    pub fn readdir(&self, ino: Ino, offset: u64, max: usize) -> Result<Vec<DirEntry>> {
        self.meta.readdir(ino, offset, max)
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.meta.getxattr(ino, name)
    }
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.meta.listxattr(ino)
    }
    pub fn setxattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> Result<()> {
        self.meta.setxattr(ino, name, value, create, replace)
    }
    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.meta.removexattr(ino, name)
    }

    pub fn setattr(&self, ino: Ino, set: &SetAttr) -> Result<Attr> {
        let Some(size) = set.size else {
            if set.atime.is_some() || set.mtime.is_some() {
                // Unsealed writes carry their own mtime: seal them first so the
                // times set here are the ones that stay.
                self.flush(ino)?;
            }
            let attr = self.meta.setattr(ino, set)?;
            return Ok(self.with_dirty(attr));
        };
        let st = self.state_or_new(ino);
        let mut st = lock(&st);
        self.flush_locked(ino, &mut st)?;
        let idx = size / self.chunk_size as u64;
        let within = (size % self.chunk_size as u64) as usize;
        let _gate = self.gc_gate.read().unwrap_or_else(|p| p.into_inner());
        // The chunk the new end falls in keeps only the bytes before it.
        let tail = match self.read_chunk(ino, idx)? {
            Some(plain) if within > 0 && plain.len() > within => {
                Some((idx, Some(self.seal_and_store(&plain[..within])?)))
            }
            _ => None,
        };
        self.meta.truncate(ino, size, tail, set)
    }

    // ---- open files --------------------------------------------------------------

    pub fn open(&self, ino: Ino) -> Result<Attr> {
        let attr = self.getattr(ino)?;
        *lock(&self.opens).entry(ino).or_default() += 1;
        Ok(attr)
    }

    /// The last release of an inode seals its writes and frees it if unlinked meanwhile.
    pub fn release(&self, ino: Ino) -> Result<()> {
        let res = self.flush(ino);
        let last = {
            let mut opens = lock(&self.opens);
            match opens.get_mut(&ino) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    opens.remove(&ino);
                    true
                }
                None => false,
            }
        };
        if last {
            {
                let mut files = lock(&self.files);
                let idle = files.get(&ino).is_some_and(|s| {
                    let s = lock(s);
                    s.dirty.is_empty() && s.size.is_none()
                });
                if idle {
                    files.remove(&ino);
                }
            }
            self.meta.release_orphan(ino)?;
        }
        res
    }

    // ---- contents ----------------------------------------------------------------

    pub fn read(&self, ino: Ino, offset: u64, len: usize) -> Result<Vec<u8>> {
        let st = self.state(ino);
        let guard = st.as_ref().map(|s| lock(s));
        let size = match guard.as_ref().and_then(|g| g.size) {
            Some(s) => s,
            None => {
                let rec = self.meta.inode(ino)?;
                match rec.kind {
                    FileKind::File => rec.size,
                    FileKind::Dir => return Err(Error::IsDir),
                    _ => return Err(Error::Invalid("not a regular file")),
                }
            }
        };
        if offset >= size {
            return Ok(Vec::new());
        }
        let end = size.min(offset.saturating_add(len as u64));
        let mut out = vec![0u8; (end - offset) as usize];
        let cs = self.chunk_size as u64;
        let mut pos = offset;
        while pos < end {
            let idx = pos / cs;
            let within = (pos % cs) as usize;
            let n = ((cs - within as u64).min(end - pos)) as usize;
            let dst = &mut out[(pos - offset) as usize..][..n];
            let dirty = guard.as_ref().and_then(|g| g.dirty.get(&idx));
            let committed;
            let src: &[u8] = match dirty {
                Some(buf) => buf,
                None => {
                    committed = self.read_chunk(ino, idx)?;
                    committed.as_deref().map_or(&[], |v| v.as_slice())
                }
            };
            if within < src.len() {
                let m = n.min(src.len() - within);
                dst[..m].copy_from_slice(&src[within..within + m]);
            }
            pos += n as u64;
        }
        Ok(out)
    }

    pub fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        let end = offset.checked_add(data.len() as u64).ok_or(Error::TooBig)?;
        if end > i64::MAX as u64 {
            return Err(Error::TooBig);
        }
        let st = self.state_or_new(ino);
        let mut st = lock(&st);
        if st.size.is_none() {
            let rec = self.meta.inode(ino)?;
            match rec.kind {
                FileKind::File => st.size = Some(rec.size),
                FileKind::Dir => return Err(Error::IsDir),
                _ => return Err(Error::Invalid("not a regular file")),
            }
        }
        let size = st.size.unwrap_or(0);
        let cs = self.chunk_size as u64;
        let mut full = Vec::new();
        let mut pos = offset;
        while pos < end {
            let idx = pos / cs;
            let within = (pos % cs) as usize;
            let n = ((cs - within as u64).min(end - pos)) as usize;
            let piece = &data[(pos - offset) as usize..][..n];
            if let Entry::Vacant(slot) = st.dirty.entry(idx) {
                // A partial write of a stored chunk starts from its current contents.
                let base = if n == self.chunk_size || idx * cs >= size {
                    Vec::new()
                } else {
                    let mut v = self
                        .read_chunk(ino, idx)?
                        .map(|c| c.to_vec())
                        .unwrap_or_default();
                    v.truncate((size - idx * cs).min(cs) as usize);
                    v
                };
                self.dirty_total.fetch_add(base.len(), Ordering::Relaxed);
                slot.insert(base);
            }
            let buf = st.dirty.get_mut(&idx).expect("inserted above");
            if buf.len() < within + n {
                self.dirty_total
                    .fetch_add(within + n - buf.len(), Ordering::Relaxed);
                buf.resize(within + n, 0);
            }
            buf[within..within + n].copy_from_slice(piece);
            if within + n == self.chunk_size {
                full.push(idx);
            }
            pos += n as u64;
        }
        st.size = Some(size.max(end));
        st.mtime = Some(Timestamp::now());
        // A chunk written through to its end is sealed now: sequential writers
        // stream out instead of piling up dirty memory.
        if !full.is_empty() {
            self.seal_dirty(ino, &mut st, Some(&full))?;
        }
        if self.dirty_total.load(Ordering::Relaxed) > self.dirty_budget {
            self.flush_locked(ino, &mut st)?;
        }
        Ok(data.len())
    }

    /// Visibility barrier: this file's writes are stored and committed.
    pub fn flush(&self, ino: Ino) -> Result<()> {
        match self.state(ino) {
            Some(st) => self.flush_locked(ino, &mut lock(&st)),
            None => Ok(()),
        }
    }

    /// Durability barrier: this file's data and the namespace are on stable storage.
    pub fn fsync(&self, ino: Ino) -> Result<()> {
        self.flush(ino)?;
        self.store.sync()?;
        self.meta.sync()
    }

    /// Seal and commit every dirty file (used before unmount and by `sync`).
    pub fn flush_all(&self) -> Result<()> {
        let inos: Vec<Ino> = lock(&self.files).keys().copied().collect();
        let mut first_err = None;
        for ino in inos {
            if let Err(e) = self.flush(ino) {
                tracing::error!(%ino, "flushing inode failed: {e}");
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        self.store.sync()?;
        self.meta.sync()
    }

    fn flush_locked(&self, ino: Ino, st: &mut FileState) -> Result<()> {
        if st.dirty.is_empty() && st.size.is_none() {
            return Ok(());
        }
        self.seal_dirty(ino, st, None)?;
        st.size = None;
        st.mtime = None;
        Ok(())
    }

    /// Seal the given dirty chunks (all when `which` is None), store their shards in
    /// parallel and commit them with the file's current size in one batch. On error
    /// the buffers stay, so nothing acknowledged is dropped.
    fn seal_dirty(&self, ino: Ino, st: &mut FileState, which: Option<&[u64]>) -> Result<()> {
        let idxs: Vec<u64> = match which {
            Some(w) => w.to_vec(),
            None => st.dirty.keys().copied().collect(),
        };
        let _gate = self.gc_gate.read().unwrap_or_else(|p| p.into_inner());
        let dirty = &st.dirty;
        let sealed: Vec<(u64, Option<ChunkRef>)> = idxs
            .par_iter()
            .map(|idx| {
                let buf = &dirty[idx];
                let chunk = if buf.iter().all(|&b| b == 0) {
                    None
                } else {
                    Some(self.seal_and_store(buf)?)
                };
                Ok((*idx, chunk))
            })
            .collect::<Result<_>>()?;
        let size = st.size.expect("dirty files have a size");
        let mtime = st.mtime;
        match self.meta.commit_chunks(ino, sealed, size, mtime) {
            // Removed meanwhile (with no handle open): its writes have nowhere to go,
            // and gc collects the shards just stored.
            Err(Error::NotFound) => {
                let dropped: usize = st.dirty.values().map(Vec::len).sum();
                self.dirty_total.fetch_sub(dropped, Ordering::Relaxed);
                st.dirty.clear();
                return Ok(());
            }
            res => res?,
        };
        for idx in idxs {
            if let Some(buf) = st.dirty.remove(&idx) {
                self.dirty_total.fetch_sub(buf.len(), Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Seal one chunk and store its shards (not yet referenced: the caller commits).
    /// The plaintext goes into the chunk cache: writers often read back soon.
    pub fn seal_and_store(&self, plain: &[u8]) -> Result<ChunkRef> {
        let sealed = chunk::seal(&self.key, &self.codec, plain, self.inline_max);
        lock(&self.cache).put(chunk_cache_key(&sealed.chunk), Arc::new(plain.to_vec()));
        self.store_sealed(sealed)
    }

    /// Seal a buffer the caller gives up (no copy), store its shards, not cached.
    pub fn seal_and_store_owned(&self, plain: Vec<u8>) -> Result<ChunkRef> {
        self.store_sealed(chunk::seal_owned(
            &self.key,
            &self.codec,
            plain,
            self.inline_max,
        ))
    }

    fn store_sealed(&self, sealed: chunk::Sealed) -> Result<ChunkRef> {
        for (id, bytes) in sealed.chunk.shard_ids().iter().zip(sealed.shards()) {
            self.store.put(id, bytes)?;
        }
        Ok(sealed.chunk)
    }

    /// The committed plaintext of chunk `idx` of `ino`; None for a hole.
    fn read_chunk(&self, ino: Ino, idx: u64) -> Result<Option<Arc<Vec<u8>>>> {
        match self.meta.chunk(ino, idx)? {
            Some(c) => self.load_chunk(&c).map(Some),
            None => Ok(None),
        }
    }

    pub fn load_chunk(&self, chunk: &ChunkRef) -> Result<Arc<Vec<u8>>> {
        let key = chunk_cache_key(chunk);
        if let Some(hit) = lock(&self.cache).get(&key) {
            return Ok(hit.clone());
        }
        let plain = Arc::new(match chunk {
            ChunkRef::Inline { .. } => chunk::open_inline(chunk)?,
            ChunkRef::Sharded { .. } => self.fetch_sharded(chunk, false)?,
        });
        lock(&self.cache).put(key, plain.clone());
        Ok(plain)
    }

    /// Fetch a sharded chunk: data shards first, in parallel; parity only for what
    /// failed. Every failed shard is rebuilt and rewritten. With `check_all`, parity
    /// shards are read and verified too (fsck's repair).
    pub(crate) fn fetch_sharded(&self, chunk: &ChunkRef, check_all: bool) -> Result<Vec<u8>> {
        let ids = chunk.shard_ids();
        let k = self.codec.data_shards().min(ids.len());
        let first = if check_all { ids.len() } else { k };
        let fetch = |i: usize| match self.store.get(&ids[i]) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!("shard {} of a chunk is unusable: {e}", ids[i]);
                None
            }
        };
        let mut shards: Vec<Option<Vec<u8>>> = (0..first).into_par_iter().map(fetch).collect();
        let mut bad: Vec<usize> = (0..first).filter(|&i| shards[i].is_none()).collect();
        let mut next = first;
        while shards.iter().flatten().count() < k && next < ids.len() {
            let want = k - shards.iter().flatten().count();
            let upto = (next + want).min(ids.len());
            let more: Vec<Option<Vec<u8>>> = (next..upto).into_par_iter().map(fetch).collect();
            for (off, s) in more.into_iter().enumerate() {
                if s.is_none() {
                    bad.push(next + off);
                }
                shards.push(s);
            }
            next = upto;
        }
        shards.resize(ids.len(), None);
        let plain = chunk::open_sharded(chunk, &self.codec, &mut shards, !bad.is_empty())?;
        for i in bad {
            let Some(bytes) = &shards[i] else { continue };
            if ShardId::of(bytes) != ids[i] {
                return Err(Error::Corrupt(format!(
                    "rebuilt shard {} does not match its id",
                    ids[i]
                )));
            }
            match self.store.replace(&ids[i], bytes) {
                Ok(()) => tracing::warn!(
                    "healed shard {}: rebuilt from the others and rewritten",
                    ids[i]
                ),
                Err(e) => tracing::error!("could not rewrite rebuilt shard {}: {e}", ids[i]),
            }
        }
        Ok(plain)
    }

    pub fn statfs(&self) -> Result<FsStats> {
        let (total, avail) = self.store.capacity()?;
        // Each stored byte costs (k+m)/k bytes of disk: report what files can still use.
        let k = self.codec.data_shards() as u64;
        let n = self.codec.total_shards() as u64;
        Ok(FsStats {
            block_size: 4096,
            total_bytes: total / n * k,
            free_bytes: avail / n * k,
            avail_bytes: avail / n * k,
            files: u32::MAX as u64,
            free_files: u32::MAX as u64 / 2,
            name_max: NAME_MAX as u32,
        })
    }

    /// Delete shards unreferenced for at least `grace_secs`, and stray shard files
    /// (stored, never committed) older than that. Returns how many went.
    pub fn collect_garbage(&self, grace_secs: u64) -> Result<u64> {
        let _gate = self.gc_gate.write().unwrap_or_else(|p| p.into_inner());
        let cutoff = Timestamp::now().secs - grace_secs as i64;
        let store = &self.store;
        let mut n = self
            .meta
            .collect_garbage(cutoff, &mut |id| Ok(store.delete(id)?))?;
        let refs = self.meta.refs()?;
        let mut stray = Vec::new();
        self.store.for_each(&mut |info| {
            let old = Timestamp::from(info.modified).secs <= cutoff;
            if old && !refs.contains_key(&info.id) {
                stray.push(info.id);
            }
        })?;
        for id in stray {
            self.store.delete(&id)?;
            n += 1;
        }
        Ok(n)
    }
}

/// Chunks are identified by their key, which is derived from their plaintext.
fn chunk_cache_key(c: &ChunkRef) -> [u8; 32] {
    match c {
        ChunkRef::Inline { key, .. } | ChunkRef::Sharded { key, .. } => *key,
    }
}
