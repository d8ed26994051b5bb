//! The engine: the namespace of [`crate::meta`] plus file contents, sealed by
//! [`crate::chunk`] into shards kept by a [`ShardStore`].
//!
//! Writes land in per-file dirty chunk buffers. A buffer goes to the background
//! sealing pool when its chunk fills, on `flush`/`fsync`, when the dirty total
//! passes its budget, or when its file sits idle; the pool seals and stores it and
//! commits it (chunk map, size and shard references in one batch). Reads see
//! unsealed buffers first, then committed chunks through a decoded-chunk LRU cache
//! with single-flight loads and read-ahead. A shard that is missing or fails its
//! hash is rebuilt from the others and written back (self-healing).

mod check;
mod repair;
mod stream;

pub use check::{CheckReport, Usage};
pub use repair::Redundancy;

use crate::chunk::{self, ChunkRef, Codec, ShardId, VolumeKey};
use crate::error::{Error, Result};
use crate::meta::{MetaStore, NewNode};
use crate::store::{ShardStore, StoreError};
use crate::types::*;
use lru::LruCache;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Run-time settings of an engine (the volume's own parameters live in the metadata).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Decoded chunks kept in memory, in bytes.
    pub cache_bytes: usize,
    /// Dirty data held across all files before writers are made to flush.
    pub dirty_bytes: usize,
    /// How long a storage peer may be gone before its shards are rebuilt.
    pub repair_grace: std::time::Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cache_bytes: 32 << 20,
            dirty_bytes: 256 << 20,
            repair_grace: std::time::Duration::from_secs(600),
        }
    }
}

/// Unsealed writes of one file.
#[derive(Default)]
struct FileState {
    /// Chunk index → its full current contents (may be shorter than a chunk).
    dirty: BTreeMap<u64, Vec<u8>>,
    /// Chunks handed to the sealing pool, served to readers until their map commits.
    /// At most one per index: a chunk is handed off again only after it lands.
    sealing: BTreeMap<u64, Arc<Vec<u8>>>,
    /// The first background sealing failure since the last flush, for flush to report.
    failed: Option<Error>,
    /// Size and mtime including unsealed writes, while any are pending.
    size: Option<u64>,
    mtime: Option<Timestamp>,
    /// When the last write landed here, for sealing files left idle.
    last_write: Option<std::time::Instant>,
    /// The size and mtime the last landed seal committed, so a flush that finds
    /// them current commits nothing more.
    committed: Option<(u64, Option<Timestamp>)>,
}

impl FileState {
    fn idle(&self) -> bool {
        self.dirty.is_empty() && self.sealing.is_empty() && self.size.is_none()
    }
}

/// A file's unsealed state and the signal that a background seal landed.
#[derive(Default)]
struct FileCell {
    state: Mutex<FileState>,
    landed: Condvar,
}

/// What sealing a chunk needs, shared with the background sealing jobs.
struct Sealer {
    meta: MetaStore,
    store: Arc<dyn ShardStore>,
    key: VolumeKey,
    codec: Codec,
    inline_max: usize,
    /// Memory (capacity) of dirty buffers and of those in flight to the store,
    /// across all files.
    dirty_total: AtomicUsize,
    cache: Mutex<LruCache<[u8; 32], Arc<Vec<u8>>>>,
    /// Chunks being decoded now, for others wanting the same one to wait on.
    loading: Mutex<HashMap<[u8; 32], Arc<Flight>>>,
}

/// One chunk being decoded; `done` turns true when it is cached (or failed).
#[derive(Default)]
struct Flight {
    done: Mutex<bool>,
    cv: Condvar,
}

pub struct Engine {
    s: Arc<Sealer>,
    /// Runs background seals. Its own pool, not rayon's global one: a seal waits for
    /// its file's lock, whose holder may be waiting on global-pool work (parallel
    /// shard fetches), and must not be the thing that work queues behind.
    sealing_pool: rayon::ThreadPool,
    chunk_size: usize,
    files: Mutex<HashMap<Ino, Arc<FileCell>>>,
    /// Open handles per inode. A leaf lock: taken inside the metadata writer lock, so
    /// it must never wait on a file's state.
    opens: Mutex<HashMap<Ino, u32>>,
    dirty_budget: usize,
    repair_grace: std::time::Duration,
    /// Per file, the chunk its last read ended in: a read that carries on from
    /// there into a new chunk is sequential, and gets the next chunks decoded ahead.
    readahead: Mutex<HashMap<Ino, u64>>,
    /// One repair pass at a time (the mount's worker, or one asked of the
    /// mount): two would both place the same missing shards.
    repairing: Mutex<()>,
}

use crate::util::lock;

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
        let remote = store.remote();
        let entries = (cfg.cache_bytes / chunk_size).max(2);
        Ok(Engine {
            s: Arc::new(Sealer {
                meta,
                store,
                key,
                codec,
                inline_max: p.inline_max as usize,
                dirty_total: AtomicUsize::new(0),
                cache: Mutex::new(LruCache::new(NonZeroUsize::new(entries).unwrap())),
                loading: Mutex::new(HashMap::new()),
            }),
            // One seal per core; over a network, four more whose puts wait on
            // answers while the others compute.
            sealing_pool: rayon::ThreadPoolBuilder::new()
                .num_threads(rayon::current_num_threads() + if remote { 4 } else { 0 })
                .thread_name(|i| format!("datamesh-seal-{i}"))
                .build()
                .map_err(|e| Error::Io(std::io::Error::other(e)))?,
            chunk_size,
            files: Mutex::new(HashMap::new()),
            opens: Mutex::new(HashMap::new()),
            dirty_budget: cfg.dirty_bytes.max(2 * chunk_size),
            repair_grace: cfg.repair_grace,
            readahead: Mutex::new(HashMap::new()),
            repairing: Mutex::new(()),
        })
    }

    pub fn meta(&self) -> &MetaStore {
        &self.s.meta
    }
    pub fn store(&self) -> &dyn ShardStore {
        &*self.s.store
    }
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }
    pub fn codec(&self) -> &Codec {
        &self.s.codec
    }

    fn state(&self, ino: Ino) -> Option<Arc<FileCell>> {
        lock(&self.files).get(&ino).cloned()
    }

    fn state_or_new(&self, ino: Ino) -> Arc<FileCell> {
        lock(&self.files).entry(ino).or_default().clone()
    }

    fn is_open(&self) -> impl Fn(Ino) -> bool + '_ {
        move |ino| lock(&self.opens).contains_key(&ino)
    }

    // ---- namespace ---------------------------------------------------------------

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        let attr = self.s.meta.lookup(parent, name)?;
        Ok(self.with_dirty(attr))
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        let attr = self.s.meta.attr(ino)?;
        Ok(self.with_dirty(attr))
    }

    /// Attributes as the writer sees them: size and mtime include unsealed writes.
    fn with_dirty(&self, mut attr: Attr) -> Attr {
        if let Some(st) = self.state(attr.ino) {
            let st = lock(&st.state);
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
        self.s.meta.create_node(parent, name, node)
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
        self.s.meta.create_node(parent, name, node)
    }

    /// Special files: fifos, sockets, devices (and regular files, as mknod allows).
    pub fn mknod(&self, parent: Ino, name: &[u8], node: NewNode) -> Result<Attr> {
        if matches!(node.kind, FileKind::Dir | FileKind::Symlink) || node.target.is_some() {
            return Err(Error::Invalid("mknod cannot make directories or symlinks"));
        }
        self.s.meta.create_node(parent, name, node)
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
        self.s.meta.create_node(parent, name, node)
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let rec = self.s.meta.inode(ino)?;
        rec.target.ok_or(Error::Invalid("not a symbolic link"))
    }

    pub fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> Result<Attr> {
        let attr = self.s.meta.link(ino, parent, name)?;
        Ok(self.with_dirty(attr))
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.s.meta.unlink(parent, name, &self.is_open())
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.s.meta.rmdir(parent, name)
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        self.s
            .meta
            .rename(parent, name, new_parent, new_name, flags, &self.is_open())
    }

    pub fn readdir(&self, ino: Ino, offset: u64, max: usize) -> Result<Vec<DirEntry>> {
        self.s.meta.readdir(ino, offset, max)
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.s.meta.getxattr(ino, name)
    }
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.s.meta.listxattr(ino)
    }
    pub fn setxattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> Result<()> {
        self.s.meta.setxattr(ino, name, value, create, replace)
    }
    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.s.meta.removexattr(ino, name)
    }

    pub fn setattr(&self, ino: Ino, set: &SetAttr) -> Result<Attr> {
        let Some(size) = set.size else {
            if set.atime.is_some() || set.mtime.is_some() {
                // Unsealed writes carry their own mtime: seal them first so the
                // times set here are the ones that stay.
                self.flush(ino)?;
            }
            let attr = self.s.meta.setattr(ino, set)?;
            return Ok(self.with_dirty(attr));
        };
        let cell = self.state_or_new(ino);
        let st = self.flush_locked(ino, &cell, lock(&cell.state))?;
        let idx = size / self.chunk_size as u64;
        let within = (size % self.chunk_size as u64) as usize;
        // The chunk the new end falls in keeps only the bytes before it.
        let tail = match self.read_chunk(ino, idx)? {
            Some(plain) if within > 0 && plain.len() > within => {
                Some((idx, Some(self.seal_and_store(&plain[..within])?)))
            }
            _ => None,
        };
        let attr = self.s.meta.truncate(ino, size, tail, set);
        drop(st);
        attr
    }

    /// Extends the file to `offset + len` (unless `keep_size`) after checking the
    /// store has room for that much data. Nothing is reserved: shards are written
    /// when data is, so a later write can still meet a full disk.
    pub fn allocate(&self, ino: Ino, offset: u64, len: u64, keep_size: bool) -> Result<()> {
        let end = offset.checked_add(len).ok_or(Error::TooBig)?;
        if end > i64::MAX as u64 {
            return Err(Error::TooBig);
        }
        let attr = self.getattr(ino)?;
        if attr.kind != FileKind::File {
            return Err(Error::Invalid("not a regular file"));
        }
        let want = end.saturating_sub(attr.size);
        if want > self.statfs()?.avail_bytes {
            return Err(Error::NoSpace);
        }
        if !keep_size && end > attr.size {
            self.setattr(
                ino,
                &SetAttr {
                    size: Some(end),
                    ..Default::default()
                },
            )?;
        }
        Ok(())
    }

    /// Zeroes `[offset, offset + len)` within the file, keeping its size: whole
    /// chunks become holes, the chunks at either edge are rewritten.
    pub fn punch_hole(&self, ino: Ino, offset: u64, len: u64) -> Result<()> {
        let cell = self.state_or_new(ino);
        let st = self.flush_locked(ino, &cell, lock(&cell.state))?;
        let rec = self.s.meta.inode(ino)?;
        if rec.kind != FileKind::File {
            return Err(Error::Invalid("not a regular file"));
        }
        let end = offset.saturating_add(len).min(rec.size);
        if offset >= end {
            return Ok(());
        }
        let cs = self.chunk_size as u64;
        let mut changes = Vec::new();
        for idx in offset / cs..end.div_ceil(cs) {
            let (from, to) = (
                offset.max(idx * cs) - idx * cs,
                end.min((idx + 1) * cs) - idx * cs,
            );
            let Some(plain) = self.read_chunk(ino, idx)? else {
                continue; // already a hole
            };
            if from == 0 && to as usize >= plain.len() {
                changes.push((idx, None));
                continue;
            }
            let (from, to) = (from as usize, (to as usize).min(plain.len()));
            if from >= to {
                continue; // past this chunk's stored bytes: already zeros
            }
            let mut buf = plain.to_vec();
            buf[from..to].fill(0);
            changes.push((idx, self.s.seal_or_hole(&buf)?));
        }
        let res = self
            .s
            .meta
            .commit_chunks(ino, changes, rec.size, Some(Timestamp::now()));
        drop(st);
        res.map(drop)
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
                if files.get(&ino).is_some_and(|c| lock(&c.state).idle()) {
                    files.remove(&ino);
                }
            }
            lock(&self.readahead).remove(&ino);
            self.s.meta.release_orphan(ino)?;
        }
        res
    }

    // ---- contents ----------------------------------------------------------------

    pub fn read(&self, ino: Ino, offset: u64, len: usize) -> Result<Vec<u8>> {
        let cell = self.state(ino);
        let guard = cell.as_ref().map(|c| lock(&c.state));
        let size = match guard.as_ref().and_then(|g| g.size) {
            Some(s) => s,
            None => {
                let rec = self.s.meta.inode(ino)?;
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
        // Pieces of `out` as (chunk, offset within it, position in out, length).
        let mut pieces = Vec::new();
        let mut pos = offset;
        while pos < end {
            let (idx, within) = (pos / cs, (pos % cs) as usize);
            let n = ((cs - within as u64).min(end - pos)) as usize;
            pieces.push((idx, within, (pos - offset) as usize, n));
            pos += n as u64;
        }
        // Unsealed contents first, under the file's lock; committed chunks after
        // letting it go, since decoding one can take a while.
        let mut committed = Vec::new();
        for &(idx, within, at, n) in &pieces {
            let pending = guard.as_ref().and_then(|g| {
                g.dirty
                    .get(&idx)
                    .map(Vec::as_slice)
                    .or_else(|| g.sealing.get(&idx).map(|b| b.as_slice()))
            });
            match pending {
                Some(src) => copy_piece(&mut out[at..at + n], src, within),
                None => committed.push((idx, within, at, n)),
            }
        }
        drop(guard);
        for (idx, within, at, n) in committed {
            if let Some(src) = self.read_chunk(ino, idx)? {
                copy_piece(&mut out[at..at + n], &src, within);
            }
        }
        self.read_ahead(ino, offset / cs, (end - 1) / cs, size.div_ceil(cs));
        Ok(out)
    }

    /// A read that ends in chunk `last`, following one that ended in `first` or the
    /// chunk before it, is sequential: decode the next chunks in the background so
    /// they are cached when the reader gets there.
    fn read_ahead(&self, ino: Ino, first: u64, last: u64, chunks: u64) {
        let sequential = {
            let mut ra = lock(&self.readahead);
            let prev = ra.insert(ino, last);
            prev.is_some_and(|p| last != p && (first == p || first == p + 1))
        };
        if !sequential {
            return;
        }
        for idx in last + 1..(last + 1 + READAHEAD_CHUNKS).min(chunks) {
            let Ok(Some(chunk)) = self.s.meta.chunk(ino, idx) else {
                continue;
            };
            if lock(&self.s.cache).contains(&chunk_cache_key(&chunk)) {
                continue;
            }
            let s = self.s.clone();
            rayon::spawn(move || {
                if let Err(e) = s.prefetch(&chunk) {
                    tracing::debug!(%ino, "read-ahead of chunk {idx} failed: {e}");
                }
            });
        }
    }

    pub fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        let end = offset.checked_add(data.len() as u64).ok_or(Error::TooBig)?;
        if end > i64::MAX as u64 {
            return Err(Error::TooBig);
        }
        let cell = self.state_or_new(ino);
        let mut st = lock(&cell.state);
        if let Some(e) = &st.failed
            && self.over_budget()
        {
            // Sealing fails (a full disk, say) and memory is spent: refuse more.
            return Err(e.repeat());
        }
        if st.size.is_none() {
            let rec = self.s.meta.inode(ino)?;
            match rec.kind {
                FileKind::File => st.size = Some(rec.size),
                FileKind::Dir => return Err(Error::IsDir),
                _ => return Err(Error::Invalid("not a regular file")),
            }
        }
        if data.is_empty() {
            return Ok(0); // moves neither the size nor the mtime
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
            if !st.dirty.contains_key(&idx) {
                // A partial write of a stored chunk starts from its current contents.
                let base = if n == self.chunk_size || idx * cs >= size {
                    Vec::new()
                } else {
                    let mut v = match st.sealing.get(&idx) {
                        Some(b) => b.to_vec(),
                        None => self.chunk_for_update(ino, idx)?,
                    };
                    v.truncate((size - idx * cs).min(cs) as usize);
                    v
                };
                self.s
                    .dirty_total
                    .fetch_add(base.capacity(), Ordering::Relaxed);
                st.dirty.insert(idx, base);
            }
            let buf = st.dirty.get_mut(&idx).expect("inserted above");
            if buf.len() < within + n {
                let before = buf.capacity();
                if buf.capacity() < within + n {
                    // Double up to a chunk, never past it: capacity is what is counted.
                    let cap = (within + n).max(before * 2).min(self.chunk_size);
                    buf.reserve_exact(cap - buf.len());
                }
                buf.resize(within + n, 0);
                self.s
                    .dirty_total
                    .fetch_add(buf.capacity() - before, Ordering::Relaxed);
            }
            buf[within..within + n].copy_from_slice(piece);
            if within + n == self.chunk_size {
                full.push(idx);
            }
            pos += n as u64;
        }
        st.size = Some(size.max(end));
        st.mtime = Some(Timestamp::now());
        st.last_write = Some(std::time::Instant::now());
        // A chunk written through to its end is sealed now, in the background:
        // sequential writers stream out instead of piling up dirty memory.
        for idx in full {
            st = self.hand_off(ino, &cell, st, idx);
        }
        // Enough seals in flight to keep every core busy with one sequential writer,
        // few enough to bound its memory.
        let limit = 2 * self.sealing_pool.current_num_threads() + 1;
        while st.sealing.len() > limit {
            st = wait(&cell, st);
        }
        // Over budget: seal this file's chunks, lowest first, until back under three
        // quarters of it. Random writers keep most of their chunks buffered (each
        // sealed chunk costs a read-modify-write of a whole chunk later).
        // A failed seal stops this (its buffer is dirty again); flush reports it.
        let target = self.dirty_budget / 4 * 3;
        if self.over_budget() {
            while self.s.dirty_total.load(Ordering::Relaxed) > target && st.failed.is_none() {
                if let Some(&idx) = st.dirty.keys().next() {
                    st = self.hand_off(ino, &cell, st, idx);
                } else if st.sealing.is_empty() {
                    break; // the rest is other files' to seal
                }
                if st.sealing.len() > limit || st.dirty.is_empty() {
                    st = wait(&cell, st);
                }
            }
        }
        Ok(data.len())
    }

    fn over_budget(&self) -> bool {
        self.s.dirty_total.load(Ordering::Relaxed) > self.dirty_budget
    }

    /// The committed contents of a chunk as a buffer to modify: from the cache if
    /// there, else decoded without caching (the dirty buffer supersedes it).
    fn chunk_for_update(&self, ino: Ino, idx: u64) -> Result<Vec<u8>> {
        let Some(chunk) = self.s.meta.chunk(ino, idx)? else {
            return Ok(Vec::new());
        };
        if let Some(hit) = lock(&self.s.cache).pop(&chunk_cache_key(&chunk)) {
            return Ok(Arc::unwrap_or_clone(hit));
        }
        self.s.decode(&chunk)
    }

    /// Moves dirty chunk `idx` to the sealing pool: sealed, stored and committed in
    /// the background. A previous seal of the same chunk lands first, so commits of
    /// one chunk stay in order.
    fn hand_off<'a>(
        &self,
        ino: Ino,
        cell: &'a Arc<FileCell>,
        mut st: MutexGuard<'a, FileState>,
        idx: u64,
    ) -> MutexGuard<'a, FileState> {
        while st.sealing.contains_key(&idx) {
            st = wait(cell, st);
        }
        let Some(buf) = st.dirty.remove(&idx) else {
            return st;
        };
        let plain = Arc::new(buf);
        st.sealing.insert(idx, plain.clone());
        let (s, cell) = (self.s.clone(), cell.clone());
        self.sealing_pool
            .spawn(move || s.seal_in_background(ino, &cell, idx, plain));
        st
    }

    /// Starts the engine's background work in a process that serves the volume:
    /// partial chunks of files left open but idle are sealed after
    /// [`IDLE_SEAL`], and the shards of storage peers gone past the grace time
    /// are rebuilt elsewhere. The workers hold the engine weakly.
    pub fn spawn_workers(self: &Arc<Self>, runner: &crate::workers::Runner) -> std::io::Result<()> {
        let weak = Arc::downgrade(self);
        runner.every("idle-seal", std::time::Duration::from_secs(1), move || {
            if let Some(engine) = weak.upgrade() {
                engine.seal_idle(IDLE_SEAL);
            }
            Ok(())
        })?;
        let weak = Arc::downgrade(self);
        runner.every("repair", std::time::Duration::from_secs(2), move || {
            weak.upgrade()
                .map_or(Ok(()), |engine| engine.repair_if_due())
        })
    }

    /// Hands the dirty chunks of every file not written to for `idle` to the sealing
    /// pool (without waiting), so a file left open with a partial chunk does not
    /// keep it only in memory. Files busy right now are skipped until next time.
    pub fn seal_idle(&self, idle: std::time::Duration) {
        let cells: Vec<(Ino, Arc<FileCell>)> = lock(&self.files)
            .iter()
            .map(|(ino, cell)| (*ino, cell.clone()))
            .collect();
        for (ino, cell) in cells {
            let Ok(st) = cell.state.try_lock() else {
                continue;
            };
            if st.last_write.is_some_and(|t| t.elapsed() >= idle) {
                drop(self.hand_off_all(ino, &cell, st));
            }
        }
    }

    /// Hands every dirty chunk of the file to the sealing pool.
    fn hand_off_all<'a>(
        &self,
        ino: Ino,
        cell: &'a Arc<FileCell>,
        mut st: MutexGuard<'a, FileState>,
    ) -> MutexGuard<'a, FileState> {
        let idxs: Vec<u64> = st.dirty.keys().copied().collect();
        for idx in idxs {
            st = self.hand_off(ino, cell, st, idx);
        }
        st
    }

    /// Visibility barrier: this file's writes are stored and committed.
    pub fn flush(&self, ino: Ino) -> Result<()> {
        match self.state(ino) {
            Some(cell) => self.flush_locked(ino, &cell, lock(&cell.state)).map(drop),
            None => Ok(()),
        }
    }

    /// Durability barrier: this file's data and the namespace are on stable storage.
    pub fn fsync(&self, ino: Ino) -> Result<()> {
        self.flush(ino)?;
        self.s.store.sync()?;
        self.s.meta.sync()
    }

    /// Seal and commit every dirty file (used before unmount and by `sync`).
    pub fn flush_all(&self) -> Result<()> {
        let inos: Vec<Ino> = lock(&self.files).keys().copied().collect();
        let mut first_err = None;
        for ino in inos {
            if let Err(e) = self.flush(ino) {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        self.s.store.sync()?;
        self.s.meta.sync()
    }

    /// Hands every dirty chunk of the file to the sealing pool and waits until they
    /// have all landed; reports (once) a seal that failed since the last flush, whose
    /// buffer is then dirty again so a later flush retries it.
    fn flush_locked<'a>(
        &self,
        ino: Ino,
        cell: &'a Arc<FileCell>,
        st: MutexGuard<'a, FileState>,
    ) -> Result<MutexGuard<'a, FileState>> {
        let mut st = self.hand_off_all(ino, cell, st);
        while !st.sealing.is_empty() {
            st = wait(cell, st);
        }
        if let Some(e) = st.failed.take() {
            return Err(e);
        }
        if st.dirty.is_empty() {
            if let Some(size) = st.size
                && st.committed != Some((size, st.mtime))
            {
                // Size or mtime moved after the last chunk landed (a zero-length
                // write, say): commit them on their own.
                match self.s.meta.commit_chunks(ino, Vec::new(), size, st.mtime) {
                    Ok(_) | Err(Error::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
            st.size = None;
            st.mtime = None;
            st.committed = None;
        }
        Ok(st)
    }

    /// Seal one chunk and store its shards (not yet referenced: the caller commits).
    pub fn seal_and_store(&self, plain: &[u8]) -> Result<ChunkRef> {
        self.s.seal_and_store(plain)
    }

    /// Seal a buffer the caller gives up (no copy), store its shards, not cached.
    pub fn seal_and_store_owned(&self, plain: Vec<u8>) -> Result<ChunkRef> {
        self.s.store_sealed(chunk::seal_owned(
            &self.s.key,
            &self.s.codec,
            plain,
            self.s.inline_max,
        ))
    }

    /// The committed plaintext of chunk `idx` of `ino`; None for a hole.
    fn read_chunk(&self, ino: Ino, idx: u64) -> Result<Option<Arc<Vec<u8>>>> {
        match self.s.meta.chunk(ino, idx)? {
            Some(c) => self.s.load_chunk(&c).map(Some),
            None => Ok(None),
        }
    }

    pub fn load_chunk(&self, chunk: &ChunkRef) -> Result<Arc<Vec<u8>>> {
        self.s.load_chunk(chunk)
    }

    /// Fetch a sharded chunk: data shards first, in parallel; parity only for what
    /// failed. Every failed shard is rebuilt and rewritten. With `check_all`, parity
    /// shards are read and verified too (fsck's repair).
    pub(crate) fn fetch_sharded(&self, chunk: &ChunkRef, check_all: bool) -> Result<Vec<u8>> {
        self.s.fetch_sharded(chunk, check_all)
    }

    pub fn statfs(&self) -> Result<FsStats> {
        let (total, avail) = self.s.store.capacity()?;
        // Each stored byte costs (k+m)/k bytes of disk: report what files can still use.
        let k = self.s.codec.data_shards() as u64;
        let n = self.s.codec.total_shards() as u64;
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
    ///
    /// Takes the engine exclusively: a shard re-stored by a writer (same content as
    /// one about to be collected) must not go between its store and its commit.
    pub fn collect_garbage(&mut self, grace_secs: u64) -> Result<u64> {
        self.flush_all()?;
        // Learn where shards are first, so deletes go to their holders only;
        // and act only when every peer that is up has told what it holds.
        let survey = self.s.store.survey()?;
        if !survey.silent.is_empty() {
            let names: Vec<String> = survey
                .silent
                .iter()
                .map(|p| format!("{} ({})", p.id, p.why))
                .collect();
            return Err(crate::Error::Store(StoreError::Peer(format!(
                "{} storage peer(s) did not send their inventory: {}; nothing was deleted",
                names.len(),
                names.join(", ")
            ))));
        }
        let cutoff = Timestamp::now().secs - grace_secs as i64;
        let store = &self.s.store;
        let mut n = self
            .s
            .meta
            .collect_garbage(cutoff, &mut |id| Ok(store.delete(id)?))?;
        let refs = self.s.meta.refs()?;
        let mut stray = Vec::new();
        self.s.store.for_each(&mut |info| {
            let old = Timestamp::from(info.modified).secs <= cutoff;
            if old && !refs.contains_key(&info.id) {
                stray.push(info.id);
            }
        })?;
        for id in stray {
            self.s.store.delete(&id)?;
            n += 1;
        }
        Ok(n)
    }
}

/// Copies what `src` (a chunk's bytes, maybe short) holds from `within` on into
/// `dst`; the rest of `dst` stays zero.
fn copy_piece(dst: &mut [u8], src: &[u8], within: usize) {
    if within < src.len() {
        let m = dst.len().min(src.len() - within);
        dst[..m].copy_from_slice(&src[within..within + m]);
    }
}

/// How long a file may go unwritten before its partial chunks are sealed.
const IDLE_SEAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Chunks decoded ahead of a sequential reader.
const READAHEAD_CHUNKS: u64 = 3;

/// Waits until a background seal of this file lands (the lock is let go meanwhile).
fn wait<'a>(cell: &'a FileCell, st: MutexGuard<'a, FileState>) -> MutexGuard<'a, FileState> {
    cell.landed.wait(st).unwrap_or_else(|p| p.into_inner())
}

impl Sealer {
    /// A sealing job: seal and store chunk `idx` of `ino`, then commit it with the
    /// file's current size. On failure the buffer goes back to the dirty set (unless
    /// rewritten meanwhile) and the error waits for the file's next flush.
    fn seal_in_background(&self, ino: Ino, cell: &FileCell, idx: u64, plain: Arc<Vec<u8>>) {
        let sealed = self.seal_or_hole(&plain);
        let mut st = lock(&cell.state);
        let size = st.size.expect("a file with chunks in flight has a size");
        let mtime = st.mtime;
        let res = sealed.and_then(|c| self.meta.commit_chunks(ino, vec![(idx, c)], size, mtime));
        st.sealing.remove(&idx);
        if res.is_ok() {
            st.committed = Some((size, mtime));
        }
        match res {
            // Removed meanwhile (with no handle open): its writes have nowhere to go,
            // and gc collects any shards just stored.
            Ok(_) | Err(Error::NotFound) => {
                self.dirty_total
                    .fetch_sub(plain.capacity(), Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(%ino, "storing chunk {idx} failed, kept in memory: {e}");
                match st.dirty.entry(idx) {
                    Entry::Vacant(v) => {
                        v.insert(Arc::unwrap_or_clone(plain));
                    }
                    Entry::Occupied(_) => {
                        self.dirty_total
                            .fetch_sub(plain.capacity(), Ordering::Relaxed);
                    }
                }
                st.failed.get_or_insert(e);
            }
        }
        drop(st);
        cell.landed.notify_all();
    }

    /// A chunk to commit for `plain`: None (a hole) when it is all zeros, else
    /// sealed and stored.
    fn seal_or_hole(&self, plain: &[u8]) -> Result<Option<ChunkRef>> {
        if plain.iter().all(|&b| b == 0) {
            Ok(None)
        } else {
            self.seal_and_store(plain).map(Some)
        }
    }

    fn seal_and_store(&self, plain: &[u8]) -> Result<ChunkRef> {
        self.store_sealed(chunk::seal(&self.key, &self.codec, plain, self.inline_max))
    }

    /// Stores a sealed chunk's shards; returns once k+1 are stored (one loss
    /// survivable at once), the rest land in the background.
    fn store_sealed(&self, sealed: chunk::Sealed) -> Result<ChunkRef> {
        let shards: Vec<(ShardId, &[u8])> = sealed
            .chunk
            .shard_ids()
            .iter()
            .copied()
            .zip(sealed.shards())
            .collect();
        if !shards.is_empty() {
            self.store
                .put_chunk(&shards, self.codec.data_shards() + 1)?;
        }
        Ok(sealed.chunk)
    }

    /// A chunk's plaintext through the cache. Concurrent loads of one chunk (a
    /// reader catching up with its read-ahead) decode it once: the others wait.
    fn load_chunk(&self, chunk: &ChunkRef) -> Result<Arc<Vec<u8>>> {
        self.load_chunk_or_skip(chunk, true)
            .map(|hit| hit.expect("loads that wait always return the chunk"))
    }

    /// Decodes a chunk into the cache unless it is there or being decoded already.
    /// Read-ahead runs on rayon's pool, whose threads must never block waiting for
    /// another load (that load's parallel shard fetch may need those very threads).
    fn prefetch(&self, chunk: &ChunkRef) -> Result<()> {
        self.load_chunk_or_skip(chunk, false).map(drop)
    }

    fn load_chunk_or_skip(&self, chunk: &ChunkRef, wait: bool) -> Result<Option<Arc<Vec<u8>>>> {
        let key = chunk_cache_key(chunk);
        if let Some(hit) = lock(&self.cache).get(&key) {
            return Ok(Some(hit.clone()));
        }
        let (flight, leader) = match lock(&self.loading).entry(key) {
            std::collections::hash_map::Entry::Occupied(o) => (o.get().clone(), false),
            std::collections::hash_map::Entry::Vacant(v) => {
                (v.insert(Arc::new(Flight::default())).clone(), true)
            }
        };
        if !leader {
            if !wait {
                return Ok(None);
            }
            let mut done = lock(&flight.done);
            while !*done {
                done = flight.cv.wait(done).unwrap_or_else(|p| p.into_inner());
            }
            drop(done);
            if let Some(hit) = lock(&self.cache).get(&key) {
                return Ok(Some(hit.clone()));
            }
            // The leader failed (or the chunk was evicted already): try ourselves.
            return self.decode(chunk).map(|p| Some(Arc::new(p)));
        }
        let res = self.decode(chunk).map(Arc::new);
        if let Ok(plain) = &res {
            lock(&self.cache).put(key, plain.clone());
        }
        lock(&self.loading).remove(&key);
        *lock(&flight.done) = true;
        flight.cv.notify_all();
        res.map(Some)
    }

    fn decode(&self, chunk: &ChunkRef) -> Result<Vec<u8>> {
        match chunk {
            ChunkRef::Inline { .. } => Ok(chunk::open_inline(chunk)?),
            ChunkRef::Sharded { .. } => self.fetch_sharded(chunk, false),
        }
    }

    fn fetch_sharded(&self, chunk: &ChunkRef, check_all: bool) -> Result<Vec<u8>> {
        let ids: Arc<[ShardId]> = chunk.shard_ids().into();
        let n = ids.len();
        let k = self.codec.data_shards().min(n);
        let (tx, rx) = std::sync::mpsc::channel();
        // Each fetch runs on its own thread, not rayon's pool (callers block in
        // here, some holding locks), and is never joined: a straggler from a slow
        // peer must not hold up a read that has k shards already.
        let launch = |i: usize| {
            let (store, ids, tx) = (self.store.clone(), ids.clone(), tx.clone());
            std::thread::Builder::new()
                .name("datamesh-fetch".into())
                .spawn(move || {
                    let _ = tx.send((i, store.get(&ids[i])));
                })
                .map(drop)
        };
        // Data shards first: with all of them there is nothing to decode.
        let first = if check_all { n } else { k };
        for i in 0..first {
            launch(i)?;
        }
        let (mut next, mut outstanding, mut got) = (first, first, 0);
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; n];
        let mut heal = Vec::new();
        let hedge = self.store.hedge_after();
        while outstanding > 0 && (got < k || check_all) {
            let msg = match hedge {
                Some(after) if next < n => match rx.recv_timeout(after) {
                    Ok(m) => m,
                    Err(_) => {
                        // A slow shard: ask for a parity shard as well.
                        launch(next)?;
                        next += 1;
                        outstanding += 1;
                        continue;
                    }
                },
                _ => rx.recv().expect("a fetch thread always answers"),
            };
            outstanding -= 1;
            match msg {
                (i, Ok(b)) => {
                    shards[i] = Some(b);
                    got += 1;
                }
                (i, Err(e)) => {
                    // Damaged or lost copies are rewritten once rebuilt; an
                    // unreachable peer is left to repair (it may come back).
                    if matches!(e, StoreError::Missing(_) | StoreError::Corrupt(_)) {
                        tracing::warn!("shard {} of a chunk is unusable: {e}", ids[i]);
                        heal.push(i);
                    } else {
                        tracing::info!("shard {} of a chunk is unavailable: {e}", ids[i]);
                    }
                    if next < n && got + outstanding < k {
                        launch(next)?;
                        next += 1;
                        outstanding += 1;
                    }
                }
            }
        }
        let bad = heal;
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
}

/// Chunks are identified by their key, which is derived from their plaintext.
fn chunk_cache_key(c: &ChunkRef) -> [u8; 32] {
    match c {
        ChunkRef::Inline { key, .. } | ChunkRef::Sharded { key, .. } => *key,
    }
}
