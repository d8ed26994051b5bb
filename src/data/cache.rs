//! The decoded-chunk cache: single-flight loads, so concurrent readers of a
//! chunk decode it once, and prefetches that never block.

use super::*;

impl Core {
    /// A chunk's plaintext through the cache. Concurrent loads of one chunk (a
    /// reader catching up with its read-ahead) decode it once: the others wait.
    pub(super) fn load_chunk(&self, chunk: &ChunkRef) -> Result<Arc<Vec<u8>>> {
        self.load_chunk_or_skip(chunk, true)
            .map(|hit| hit.expect("loads that wait always return the chunk"))
    }

    /// Decodes a chunk into the cache unless it is there or being decoded already.
    /// Read-ahead runs on rayon's pool, whose threads must never block waiting for
    /// another load (that load's parallel shard fetch may need those very threads).
    pub(super) fn prefetch(&self, chunk: &ChunkRef) -> Result<()> {
        self.load_chunk_or_skip(chunk, false).map(drop)
    }

    pub(super) fn load_chunk_or_skip(
        &self,
        chunk: &ChunkRef,
        wait: bool,
    ) -> Result<Option<Arc<Vec<u8>>>> {
        let Some(key) = chunk.plain_key() else {
            // A layered chunk is put together from its parts, each cached on
            // its own (slices change often; the base is shared).
            if !wait {
                return match chunk.sharded() {
                    Some(base) => self.load_chunk_or_skip(base, false),
                    None => Ok(None),
                };
            }
            let whole = super::fetch::lay(chunk, &|part| self.load_chunk(part))?;
            return Ok(Some(Arc::new(whole)));
        };
        if let Some(hit) = lock(&self.cache).get(&key) {
            crate::metrics::get().cache_hits.inc();
            return Ok(Some(hit.clone()));
        }
        crate::metrics::get().cache_misses.inc();
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

    pub(super) fn decode(&self, chunk: &ChunkRef) -> Result<Vec<u8>> {
        super::fetch::decode_chunk(&self.store, &self.codec, chunk)
    }
}
