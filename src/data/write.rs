//! Writes: per-file dirty chunk buffers, handed to the sealing pool when full,
//! idle, over budget or flushed; the sealing jobs seal, store and commit.

use super::patch::Patch;
use super::*;

impl Engine {
    pub fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        let end = offset.checked_add(data.len() as u64).ok_or(Error::TooBig)?;
        if end > crate::types::MAX_FILE_SIZE {
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
            // A write of a whole chunk, or past the end, starts empty. A partial
            // write of a stored chunk starts a patch over it: the chunk is not
            // read (see `patch_to_whole` for when it is).
            let fresh = || {
                if n == self.chunk_size || idx * cs >= size || self.s.inline_max == 0 {
                    Dirty::Whole(Vec::new())
                } else {
                    Dirty::Patch(Patch::default())
                }
            };
            let d = st.dirty.entry(idx).or_insert_with(fresh);
            let before = d.bytes();
            match d {
                Dirty::Whole(buf) => {
                    if buf.len() < within + n {
                        if buf.capacity() < within + n {
                            // Double up to a chunk, never past it: capacity is what is counted.
                            let cap = (within + n).max(buf.capacity() * 2).min(self.chunk_size);
                            buf.reserve_exact(cap - buf.len());
                        }
                        buf.resize(within + n, 0);
                    }
                    buf[within..within + n].copy_from_slice(piece);
                }
                Dirty::Patch(p) => p.write(within, piece),
            }
            let after = d.bytes();
            // A patch may grow past the slice budget in memory (its seal then
            // compacts the chunk), but not past a quarter chunk. Then a patch
            // of a few long ranges (a rewrite running through the chunk) turns
            // into a whole buffer, the chunk read once; one of many small
            // ranges (random writes) is sealed now, a chunk rewrite per
            // quarter chunk of them, so random writers do not fill memory
            // with whole chunks.
            let patch_max = (self.chunk_size / 4).max(self.s.slice_budget);
            let full_patch = match d {
                Dirty::Patch(p) if p.bytes() > patch_max => Some(p.range_count() > 4),
                _ => None,
            };
            self.s.count_dirty(before, after);
            match full_patch {
                Some(true) => st = self.hand_off(ino, &cell, st, idx),
                Some(false) => st = self.patch_to_whole(ino, &cell, st, idx)?,
                None => {}
            }
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
        let limit = 2 * self.sealing_pool.threads() + 1;
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

    /// Turns chunk `idx`'s patch, grown past a quarter chunk, into a whole
    /// buffer: the chunk is read once (after any seal of it in flight lands)
    /// and the patch laid over it. Past that size, rewriting the chunk is the
    /// cheaper record.
    fn patch_to_whole<'a>(
        &self,
        ino: Ino,
        cell: &'a Arc<FileCell>,
        mut st: MutexGuard<'a, FileState>,
        idx: u64,
    ) -> Result<MutexGuard<'a, FileState>> {
        while st.sealing.contains_key(&idx) {
            st = wait(cell, st);
        }
        // Handed off meanwhile (idle, or over budget): nothing left to turn.
        if !matches!(st.dirty.get(&idx), Some(Dirty::Patch(_))) {
            return Ok(st);
        }
        let cs = self.chunk_size as u64;
        let size = st.size.unwrap_or(0);
        let mut buf = self.chunk_for_update(ino, idx)?;
        buf.truncate((size.saturating_sub(idx * cs)).min(cs) as usize);
        let Some(Dirty::Patch(p)) = st.dirty.remove(&idx) else {
            unreachable!("checked above, under the same lock")
        };
        p.apply(&mut buf);
        let whole = Dirty::Whole(buf);
        self.s.count_dirty(p.bytes(), whole.bytes());
        st.dirty.insert(idx, whole);
        Ok(st)
    }

    /// The committed contents of a chunk as a buffer to modify: from the cache if
    /// there, else decoded without caching (the dirty buffer supersedes it).
    pub(super) fn chunk_for_update(&self, ino: Ino, idx: u64) -> Result<Vec<u8>> {
        let Some(chunk) = self.s.meta.chunk(ino, idx)? else {
            return Ok(Vec::new());
        };
        if let Some(key) = chunk.plain_key()
            && let Some(hit) = lock(&self.s.cache).pop(&key)
        {
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
        let Some(dirty) = start_seal(&mut st, idx) else {
            return st;
        };
        let (s, cell) = (self.s.clone(), cell.clone());
        self.sealing_pool
            .spawn(move || s.seal_in_background(ino, &cell, idx, dirty));
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

    /// Seals this file's patches on the calling thread (a flush waits for
    /// them anyway): a patch is a few small slices, cheaper to seal than to
    /// hand to the pool and wait for (an fsync per small write pays that
    /// every time). Patches behind a seal of their chunk in flight are left
    /// to `hand_off`, which keeps one chunk's commits in order.
    fn seal_patches_here<'a>(
        &self,
        ino: Ino,
        cell: &'a Arc<FileCell>,
        mut st: MutexGuard<'a, FileState>,
    ) -> MutexGuard<'a, FileState> {
        let patched: Vec<u64> = st
            .dirty
            .iter()
            .filter(|(idx, d)| matches!(d, Dirty::Patch(_)) && !st.sealing.contains_key(idx))
            .map(|(idx, _)| *idx)
            .collect();
        for idx in patched {
            if st.sealing.contains_key(&idx) {
                continue; // handed off meanwhile, while the lock was let go
            }
            let Some(dirty) = start_seal(&mut st, idx) else {
                continue;
            };
            drop(st);
            self.s.seal_in_background(ino, cell, idx, dirty);
            st = lock(&cell.state);
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

    /// A close of `ino` here: its writes committed, and everything done to
    /// it applied where the namespace is kept (close-to-open across hosts).
    pub fn flush_closing(&self, ino: Ino) -> Result<()> {
        self.flush(ino)?;
        self.s.meta.settle_closing(ino)
    }

    /// Whether `ino` has nothing unsealed (so [`Engine::flush`] has nothing
    /// to wait for); false when that cannot be told without waiting.
    pub fn nothing_to_flush(&self, ino: Ino) -> bool {
        self.state(ino)
            .is_none_or(|cell| cell.state.try_lock().is_ok_and(|st| st.idle()))
    }

    /// Durability barrier: this file's data and the namespace are on stable storage.
    pub fn fsync(&self, ino: Ino) -> Result<()> {
        self.flush(ino)?;
        self.s.store.sync()?;
        self.s.meta.sync()?;
        self.s.meta.settle(ino)?;
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
        let mut st = self.seal_patches_here(ino, cell, st);
        st = self.hand_off_all(ino, cell, st);
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
    /// Moves the dirty count from `before` to `after` bytes.
    pub(super) fn count_dirty(&self, before: usize, after: usize) {
        if after >= before {
            self.dirty_total
                .fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.dirty_total
                .fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// A sealing job: seal and store chunk `idx` of `ino`, then commit it with the
    /// file's current size. On failure what was written goes back to the dirty
    /// set (under anything written since) and the error waits for the file's
    /// next flush.
    pub(super) fn seal_in_background(
        &self,
        ino: Ino,
        cell: &FileCell,
        idx: u64,
        dirty: Arc<Dirty>,
    ) {
        let span = self.gate.span();
        let sealed = match &*dirty {
            Dirty::Whole(plain) => self.seal_or_hole(plain),
            Dirty::Patch(p) => self.seal_patch(ino, idx, p),
        };
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
                self.dirty_total.fetch_sub(dirty.bytes(), Ordering::Relaxed);
                // Every byte written has landed, those of failed attempts
                // too (a failed chunk goes back to `dirty`): nothing is lost,
                // so there is no error left to report.
                if st.dirty.is_empty() && st.sealing.is_empty() {
                    st.failed = None;
                }
            }
            Err(e) => {
                tracing::error!(%ino, "storing chunk {idx} failed, kept in memory: {e}");
                let older = Arc::unwrap_or_clone(dirty);
                let merged = match st.dirty.remove(&idx) {
                    None => older,
                    Some(newer) => {
                        let before = older.bytes() + newer.bytes();
                        let merged = older.under(newer);
                        self.count_dirty(before, merged.bytes());
                        merged
                    }
                };
                st.dirty.insert(idx, merged);
                st.failed.get_or_insert(e);
            }
        }
        drop(st);
        cell.landed.notify_all();
    }

    /// The entry that commits patch `p` over chunk `idx` as it stands: its
    /// ranges sealed as inline slices appended to the entry, or, past
    /// [`MAX_SLICES`] or the slice budget, the whole chunk resealed plain.
    /// Only this job changes the entry meanwhile (one seal per chunk in
    /// flight; truncation and hole punching flush first).
    fn seal_patch(&self, ino: Ino, idx: u64, p: &Patch) -> Result<Option<ChunkRef>> {
        let (len, base, mut slices) = match self.meta.chunk(ino, idx)? {
            None => (0, None, Vec::new()),
            Some(ChunkRef::Layered { len, base, slices }) => (len as usize, base, slices),
            Some(c) => (c.plain_len(), Some(Box::new(c)), Vec::new()),
        };
        for (at, bytes) in p.ranges() {
            for (i, piece) in bytes.chunks(self.inline_max).enumerate() {
                let sealed = chunk::seal(&self.key, &self.codec, piece, self.inline_max);
                slices.push(chunk::Slice {
                    offset: (at + i * self.inline_max) as u32,
                    chunk: sealed.chunk,
                });
            }
        }
        let layered = ChunkRef::Layered {
            len: len.max(p.end()) as u32,
            base,
            slices,
        };
        let ChunkRef::Layered { slices, .. } = &layered else {
            unreachable!()
        };
        let slice_bytes: u64 = slices.iter().map(|s| s.chunk.stored_len()).sum();
        if slices.len() <= MAX_SLICES && slice_bytes <= self.slice_budget as u64 {
            return Ok(Some(layered));
        }
        // Compaction: the chunk whole again, plain, so it dedups again; gc
        // collects the old base once nothing holds it.
        let plain = super::fetch::lay(&layered, &|part| self.load_chunk(part))?;
        self.seal_or_hole(&plain)
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
    let (chunk, bytes) = sealed.into_parts();
    let shards: Vec<(ShardId, bytes::Bytes)> =
        chunk.shard_ids().iter().copied().zip(bytes).collect();
    if !shards.is_empty() {
        store.put_chunk(shards, codec.data_shards() + 1)?;
    }
    Ok(chunk)
}

/// Moves dirty chunk `idx` (if any) to `sealing` for a seal about to start:
/// while it seals, readers still see its bytes there and no other seal of the
/// chunk starts. The caller has waited out any seal of it in flight.
fn start_seal(st: &mut FileState, idx: u64) -> Option<Arc<Dirty>> {
    let dirty = Arc::new(st.dirty.remove(&idx)?);
    st.sealing.insert(idx, dirty.clone());
    Some(dirty)
}
