//! Reads: unsealed buffers first, then committed chunks, with read-ahead.

use super::cache::chunk_cache_key;
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
    pub(super) fn read_ahead(&self, ino: Ino, first: u64, last: u64, chunks: u64) {
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
