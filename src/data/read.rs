//! Reads: unsealed buffers first, then committed chunks, with read-ahead.

use super::patch::Patch;
use super::*;

impl Engine {
    pub fn read(&self, ino: Ino, offset: u64, len: usize) -> Result<Vec<u8>> {
        let out = self.read_inner(ino, offset, len)?;
        crate::metrics::get().bytes_read.inc_by(out.len() as u64);
        Ok(out)
    }

    fn read_inner(&self, ino: Ino, offset: u64, len: usize) -> Result<Vec<u8>> {
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
        // letting it go, since decoding one can take a while. A piece is the
        // newest whole buffer of its chunk (dirty, else in flight, else the
        // committed chunk) with the patches written since laid over it.
        let mut committed = Vec::new();
        for &(idx, within, at, n) in &pieces {
            let dst = &mut out[at..at + n];
            // Patches over the piece, newest first.
            let mut patches: Vec<Patch> = Vec::new();
            let layers = guard
                .as_ref()
                .map(|g| [g.dirty.get(&idx), g.sealing.get(&idx).map(|d| &**d)]);
            let mut whole = None;
            for d in layers.iter().flatten().flatten() {
                match d {
                    Dirty::Whole(buf) => {
                        whole = Some(buf);
                        break;
                    }
                    Dirty::Patch(p) => {
                        patches.push(p.cut(within, n));
                        if p.covers(within, n) {
                            break;
                        }
                    }
                }
            }
            let covered = patches.last().is_some_and(|p| p.covers(within, n));
            if let Some(buf) = whole {
                copy_piece(dst, buf, within);
            } else if !covered {
                committed.push((idx, within, at, n, patches));
                continue;
            }
            for p in patches.iter().rev() {
                p.overlay(dst, within);
            }
        }
        drop(guard);
        for (idx, within, at, n, patches) in committed {
            let dst = &mut out[at..at + n];
            self.read_committed(ino, idx, within, dst)?;
            for p in patches.iter().rev() {
                p.overlay(dst, within);
            }
        }
        self.read_ahead(ino, offset, end, size.div_ceil(cs));
        Ok(out)
    }

    /// A read that starts where the previous read of the file ended (give or
    /// take a few kernel requests served out of order) and crosses into a
    /// new chunk is sequential: decode the next chunks in the background so
    /// they are cached when the reader gets there. Random readers whose
    /// reads happen to land in neighbouring chunks are not: a whole-chunk
    /// decode for them would cost far more than the reads themselves.
    pub(super) fn read_ahead(&self, ino: Ino, offset: u64, end: u64, chunks: u64) {
        const SLACK: u64 = 1 << 20;
        let cs = self.chunk_size as u64;
        let last = (end - 1) / cs;
        let sequential = {
            let mut ra = lock(&self.readahead);
            let prev = ra.insert(ino, end);
            prev.is_some_and(|p| {
                p.saturating_sub(SLACK) <= offset
                    && offset <= p + SLACK
                    && last != p.saturating_sub(1) / cs
            })
        };
        if !sequential {
            return;
        }
        for idx in last + 1..(last + 1 + self.readahead_chunks).min(chunks) {
            let Ok(Some(chunk)) = self.s.meta.chunk(ino, idx) else {
                continue;
            };
            // What takes decoding is the sharded part (a layered chunk's base).
            let Some(chunk) = chunk.sharded().cloned() else {
                continue;
            };
            let key = chunk.plain_key().expect("a sharded chunk has a key");
            if lock(&self.s.cache).contains(&key) {
                continue;
            }
            let s = self.s.clone();
            self.readahead_pool.spawn(move || {
                if let Err(e) = s.prefetch(&chunk) {
                    tracing::debug!(%ino, "read-ahead of chunk {idx} failed: {e}");
                }
            });
        }
    }

    /// Copies the committed bytes of chunk `idx` of `ino` from `within` on
    /// into `dst` (zeroed). A layered chunk is read from its base and the
    /// slices that meet the range: it is never put together whole.
    fn read_committed(&self, ino: Ino, idx: u64, within: usize, dst: &mut [u8]) -> Result<()> {
        match self.s.meta.chunk(ino, idx)? {
            None => {}
            Some(ChunkRef::Layered { base, slices, .. }) => {
                if let Some(b) = base {
                    self.copy_plain(&b, within, dst)?;
                }
                let end = within + dst.len();
                for s in slices {
                    if s.offset as usize >= end || s.end() <= within {
                        continue;
                    }
                    let plain = self.s.load_chunk(&s.chunk)?;
                    super::patch::lay_over(dst, within, s.offset as usize, &plain);
                }
            }
            Some(c) => self.copy_plain(&c, within, dst)?,
        }
        Ok(())
    }

    /// Copies a plain chunk's bytes from `within` on into `dst`: from the
    /// cache when it holds the chunk or a load of it is under way; a small
    /// read of a segmented chunk otherwise opens only the segments it covers
    /// (not cached: the kernel's page cache keeps what was read); anything
    /// else loads the chunk whole through the cache.
    fn copy_plain(&self, c: &ChunkRef, within: usize, dst: &mut [u8]) -> Result<()> {
        if dst.len() <= self.chunk_size / 4
            && c.segment_span(within, dst.len()).is_some()
            && !c.plain_key().is_some_and(|k| self.s.cached_or_loading(&k))
        {
            crate::metrics::get().cache_misses.inc();
            let got = fetch::read_range(&self.s.store, &self.s.codec, c, within, dst.len())?;
            dst[..got.len()].copy_from_slice(&got);
            return Ok(());
        }
        copy_piece(dst, &self.s.load_chunk(c)?, within);
        Ok(())
    }

    /// The committed plaintext of chunk `idx` of `ino`; None for a hole.
    pub(super) fn read_chunk(&self, ino: Ino, idx: u64) -> Result<Option<Arc<Vec<u8>>>> {
        match self.s.meta.chunk(ino, idx)? {
            Some(c) => self.s.load_chunk(&c).map(Some),
            None => Ok(None),
        }
    }

    pub fn load_chunk(&self, chunk: &ChunkRef) -> Result<Arc<Vec<u8>>> {
        self.s.load_chunk(chunk)
    }
}
