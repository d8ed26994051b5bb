//! The decoded-chunk cache: single-flight loads, so concurrent readers of a
//! chunk decode it once, and prefetches that never block.

use super::*;
use lru::LruCache;

impl Core {
    /// A chunk's plaintext through the cache. Concurrent loads of one chunk (a
    /// reader catching up with its read-ahead) decode it once: the others wait.
    pub(super) fn load_chunk(&self, chunk: &ChunkRef) -> Result<Arc<Vec<u8>>> {
        self.load_chunk_or_skip(chunk, true)
            .map(|hit| hit.expect("loads that wait always return the chunk"))
    }

    /// Decodes a chunk into the cache unless it is there or being decoded already.
    /// Read-ahead never waits for another load of the same chunk: its pool's
    /// threads are few, and one held waiting would decode nothing.
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

    /// Whether the chunk keyed `key` is cached or being loaded now.
    pub(super) fn cached_or_loading(&self, key: &[u8; 32]) -> bool {
        lock(&self.cache).contains(key) || lock(&self.loading).contains_key(key)
    }

    pub(super) fn decode(&self, chunk: &ChunkRef) -> Result<Vec<u8>> {
        super::fetch::decode_chunk(&self.store, &self.codec, chunk)
    }
}

/// Decoded chunks by key, least recently used evicted first, bounded by
/// bytes: entries range from a small slice to a whole chunk, so a count
/// would let slices thrash or whole chunks overrun it.
pub(super) struct ChunkCache {
    lru: LruCache<[u8; 32], Arc<Vec<u8>>>,
    bytes: usize,
    cap: usize,
}

impl ChunkCache {
    pub fn new(cap: usize) -> ChunkCache {
        ChunkCache {
            lru: LruCache::unbounded(),
            bytes: 0,
            cap,
        }
    }

    pub fn get(&mut self, key: &[u8; 32]) -> Option<&Arc<Vec<u8>>> {
        self.lru.get(key)
    }

    /// Bytes held now (at most the cap, but for one larger entry).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn contains(&self, key: &[u8; 32]) -> bool {
        self.lru.contains(key)
    }

    pub fn pop(&mut self, key: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        let v = self.lru.pop(key)?;
        self.bytes -= v.len();
        Some(v)
    }

    /// Caches `plain` (the most recent now), evicting the least recently
    /// used until the total fits; the newest entry always stays.
    pub fn put(&mut self, key: [u8; 32], plain: Arc<Vec<u8>>) {
        self.bytes += plain.len();
        if let Some(old) = self.lru.put(key, plain) {
            self.bytes -= old.len();
        }
        while self.bytes > self.cap && self.lru.len() > 1 {
            if let Some((_, v)) = self.lru.pop_lru() {
                self.bytes -= v.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ChunkCache;
    use std::sync::Arc;

    #[test]
    fn the_cache_is_bounded_by_bytes_and_evicts_the_least_recent() {
        let mut c = ChunkCache::new(100);
        for i in 0..10u8 {
            c.put([i; 32], Arc::new(vec![i; 20]));
        }
        assert!(!c.contains(&[4; 32]) && c.contains(&[5; 32]) && c.contains(&[9; 32]));
        assert!(c.get(&[5; 32]).is_some()); // 5 is the most recent now
        c.put([10; 32], Arc::new(vec![0; 20]));
        assert!(c.contains(&[5; 32]) && !c.contains(&[6; 32]));
        assert_eq!(c.pop(&[5; 32]).map(|v| v.len()), Some(20));
        // One entry larger than the bound is kept alone.
        c.put([11; 32], Arc::new(vec![0; 500]));
        assert!(c.contains(&[11; 32]) && !c.contains(&[10; 32]));
    }
}
