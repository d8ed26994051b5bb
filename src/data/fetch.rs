//! Fetching a chunk's shards: data shards first, in parallel, parity on
//! failure, a hedged request for a slow one; bad or missing shards are rebuilt
//! and written back.

use super::*;

impl Engine {
    /// Fetch a sharded chunk: data shards first, in parallel; parity only for what
    /// failed. Every failed shard is rebuilt and rewritten. With `check_all`, parity
    /// shards are read and verified too (fsck's repair).
    pub(crate) fn fetch_sharded(&self, chunk: &ChunkRef, check_all: bool) -> Result<Vec<u8>> {
        self.s.fetch_sharded(chunk, check_all)
    }
}

impl Core {
    pub(super) fn fetch_sharded(&self, chunk: &ChunkRef, check_all: bool) -> Result<Vec<u8>> {
        fetch_sharded(&self.store, &self.codec, chunk, check_all)
    }
}

/// A chunk's plaintext, from the metadata (inline) or from its shards.
/// (A member device reads this way, with no engine.)
pub fn decode_chunk(
    store: &Arc<dyn ShardStore>,
    codec: &Codec,
    chunk: &ChunkRef,
) -> Result<Vec<u8>> {
    match chunk {
        ChunkRef::Inline { .. } => Ok(chunk::open_inline(chunk)?),
        ChunkRef::Sharded { .. } | ChunkRef::Segmented { .. } => {
            fetch_sharded(store, codec, chunk, false)
        }
        ChunkRef::Layered { .. } => lay(chunk, &|part| {
            decode_chunk(store, codec, part).map(Arc::new)
        }),
    }
}

/// Plaintext bytes `[at, at + len)` of a segmented chunk (fewer past its
/// end), reading and opening only the segments that cover them: shard ranges
/// read unverified, each segment checked by its tag. Anything amiss (a
/// missing shard, a failed tag) falls back to the whole chunk, fetched shard
/// by shard against the shard ids, which finds, rebuilds and rewrites the
/// bad shard as any read does.
pub(super) fn read_range(
    store: &Arc<dyn ShardStore>,
    codec: &Codec,
    chunk: &ChunkRef,
    at: usize,
    len: usize,
) -> Result<Vec<u8>> {
    let cut = |plain: &[u8], from: usize| -> Vec<u8> {
        let from = from.min(plain.len());
        plain[from..(from + len).min(plain.len())].to_vec()
    };
    let Some((first, off, n, shard_len)) = chunk.segment_span(at, len) else {
        return Ok(cut(&decode_chunk(store, codec, chunk)?, at));
    };
    let ids = chunk.shard_ids();
    let ranged = || -> Option<Vec<u8>> {
        let mut pieces = Vec::with_capacity(2);
        let mut pos = off;
        while pos < off + n {
            let (i, within) = (pos / shard_len, pos % shard_len);
            let take = (shard_len - within).min(off + n - pos);
            let got = store.get_range(ids.get(i)?, within, take).ok()?;
            if got.len() != take {
                return None;
            }
            pieces.push(got);
            pos += take;
        }
        let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        chunk::open_segments(chunk, first, &pieces).ok()
    };
    match ranged() {
        Some(plain) => Ok(cut(&plain, at - first * chunk::segment::SEGMENT)),
        None => {
            tracing::debug!("a segment read failed its check; reading the whole chunk");
            Ok(cut(&fetch_sharded(store, codec, chunk, false)?, at))
        }
    }
}

/// A layered chunk's plaintext put together whole, its base and slices
/// opened by `open`.
pub(super) fn lay(
    chunk: &ChunkRef,
    open: &dyn Fn(&ChunkRef) -> Result<Arc<Vec<u8>>>,
) -> Result<Vec<u8>> {
    let ChunkRef::Layered { len, base, slices } = chunk else {
        return Ok(open(chunk)?.to_vec());
    };
    let base = base.as_deref().map(open).transpose()?;
    let opened = slices
        .iter()
        .map(|s| Ok((s.offset as usize, open(&s.chunk)?)))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<(usize, &[u8])> = opened.iter().map(|(at, b)| (*at, b.as_slice())).collect();
    Ok(chunk::lay_slices(
        *len as usize,
        base.as_deref().map(Vec::as_slice),
        &refs,
    ))
}

/// See [`Engine::fetch_sharded`].
fn fetch_sharded(
    store: &Arc<dyn ShardStore>,
    codec: &Codec,
    chunk: &ChunkRef,
    check_all: bool,
) -> Result<Vec<u8>> {
    let ids: Arc<[ShardId]> = chunk.shard_ids().into();
    let n = ids.len();
    let k = codec.data_shards().min(n);
    let (tx, rx) = std::sync::mpsc::channel();
    // Each fetch runs on its own thread, not rayon's pool (callers block in
    // here, some holding locks), and is never joined: a straggler from a slow
    // peer must not hold up a read that has k shards already.
    let launch = |i: usize| {
        let (store, ids, tx) = (store.clone(), ids.clone(), tx.clone());
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
    let hedge = store.hedge_after();
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
    let plain = chunk::open_sharded(chunk, codec, &mut shards, !bad.is_empty())?;
    for i in bad {
        let Some(bytes) = &shards[i] else { continue };
        if ShardId::of(bytes) != ids[i] {
            return Err(Error::Corrupt(format!(
                "rebuilt shard {} does not match its id",
                ids[i]
            )));
        }
        match store.replace(&ids[i], bytes) {
            Ok(()) => tracing::warn!(
                "healed shard {}: rebuilt from the others and rewritten",
                ids[i]
            ),
            Err(e) => tracing::error!("could not rewrite rebuilt shard {}: {e}", ids[i]),
        }
    }
    Ok(plain)
}
