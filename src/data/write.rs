//! Writes: per-file dirty chunk buffers, handed to the sealing pool when full,
//! idle, over budget or flushed; the sealing jobs seal, store and commit.

use super::cache::chunk_cache_key;
use super::*;

impl Engine {
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
        crate::metrics::get()
            .bytes_written
            .inc_by(data.len() as u64);
        Ok(data.len())
    }

    pub(super) fn over_budget(&self) -> bool {
        self.s.dirty_total.load(Ordering::Relaxed) > self.dirty_budget
    }

    /// The committed contents of a chunk as a buffer to modify: from the cache if
    /// there, else decoded without caching (the dirty buffer supersedes it).
    pub(super) fn chunk_for_update(&self, ino: Ino, idx: u64) -> Result<Vec<u8>> {
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
    pub(super) fn hand_off<'a>(
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
    /// are rebuilt elsewhere (on the home node). The workers hold the engine
    /// weakly.
    pub fn spawn_workers(self: &Arc<Self>, runner: &crate::workers::Runner) -> std::io::Result<()> {
        let weak = Arc::downgrade(self);
        runner.every("idle-seal", std::time::Duration::from_secs(1), move || {
            if let Some(engine) = weak.upgrade() {
                engine.seal_idle(IDLE_SEAL);
            }
            Ok(())
        })?;
        self.s.meta.spawn_workers(runner)?;
        if !self.is_home() {
            // Repair is the home node's: it knows where every shard is.
            return Ok(());
        }
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
    pub(super) fn hand_off_all<'a>(
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
        self.s.meta.sync()?;
        if let Some(f) = self.s.on_fsync.get() {
            f();
        }
        Ok(())
    }

    /// Durability barrier for what is committed: shards still landing are
    /// stored, the namespace's log is on disk. Unsealed writes stay buffered.
    pub fn sync_committed(&self) -> Result<()> {
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
        self.sync_committed()
    }

    /// Hands every dirty chunk of the file to the sealing pool and waits until they
    /// have all landed; reports (once) a seal that failed since the last flush, whose
    /// buffer is then dirty again so a later flush retries it (an error whose
    /// chunks all landed since, on a retry, is not reported: nothing was lost).
    pub(super) fn flush_locked<'a>(
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
}

impl Core {
    /// A sealing job: seal and store chunk `idx` of `ino`, then commit it with the
    /// file's current size. On failure the buffer goes back to the dirty set (unless
    /// rewritten meanwhile) and the error waits for the file's next flush.
    pub(super) fn seal_in_background(
        &self,
        ino: Ino,
        cell: &FileCell,
        idx: u64,
        plain: Arc<Vec<u8>>,
    ) {
        let span = self.gate.span();
        let sealed = self.seal_or_hole(&plain);
        let mut st = lock(&cell.state);
        let size = st.size.expect("a file with chunks in flight has a size");
        let mtime = st.mtime;
        let res = sealed.and_then(|c| self.meta.commit_chunks(ino, vec![(idx, c)], size, mtime));
        drop(span);
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
                // Every byte written has landed, those of failed attempts
                // too (a failed chunk goes back to `dirty`): nothing is lost,
                // so there is no error left to report.
                if st.dirty.is_empty() && st.sealing.is_empty() {
                    st.failed = None;
                }
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
    pub(super) fn seal_or_hole(&self, plain: &[u8]) -> Result<Option<ChunkRef>> {
        if plain.iter().all(|&b| b == 0) {
            Ok(None)
        } else {
            self.seal_and_store(plain).map(Some)
        }
    }

    pub(super) fn seal_and_store(&self, plain: &[u8]) -> Result<ChunkRef> {
        self.store_sealed(chunk::seal(&self.key, &self.codec, plain, self.inline_max))
    }

    /// Stores a sealed chunk's shards; returns once k+1 are stored (one loss
    /// survivable at once), the rest land in the background.
    pub(super) fn store_sealed(&self, sealed: chunk::Sealed) -> Result<ChunkRef> {
        store_sealed(&*self.store, &self.codec, sealed)
    }
}

/// Stores a sealed chunk's shards; returns once k+1 are stored (one loss
/// survivable at once), the rest land in the background. (A member device
/// writes this way, with no engine.)
pub fn store_sealed(
    store: &dyn ShardStore,
    codec: &Codec,
    sealed: chunk::Sealed,
) -> Result<ChunkRef> {
    let shards: Vec<(ShardId, &[u8])> = sealed
        .chunk
        .shard_ids()
        .iter()
        .copied()
        .zip(sealed.shards())
        .collect();
    if !shards.is_empty() {
        store.put_chunk(&shards, codec.data_shards() + 1)?;
    }
    Ok(sealed.chunk)
}
