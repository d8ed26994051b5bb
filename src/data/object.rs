//! Objects: byte strings stored as sealed, erasure-coded chunks that no
//! file's chunk map holds (a namespace checkpoint's files and its manifest).
//! They are sealed under a subkey of their own, so none of their shards
//! dedups with, or can be compared to, file data; their chunk lists are kept
//! by whoever stored them (docs/DESIGN.md, "Namespace protection").

use super::*;
use std::io::Read;

/// The key objects are sealed under: a subkey of the volume secret.
pub fn object_key(volume: &VolumeKey) -> VolumeKey {
    VolumeKey::from_bytes(volume.derive("datamesh 2026 namespace protection v1"))
}

/// Stores what `from` reads, in chunks of `chunk_size`, every one sharded.
pub fn store_object(
    store: &dyn ShardStore,
    codec: &Codec,
    key: &VolumeKey,
    chunk_size: usize,
    mut from: impl Read,
) -> Result<Vec<ChunkRef>> {
    let mut out = Vec::new();
    loop {
        let mut buf = Vec::with_capacity(chunk_size + chunk::SEAL_HEADROOM);
        (&mut from).take(chunk_size as u64).read_to_end(&mut buf)?;
        if buf.is_empty() {
            return Ok(out);
        }
        let last = buf.len() < chunk_size;
        let sealed = chunk::seal_owned(key, codec, buf, 0);
        out.push(write::store_sealed(store, codec, sealed)?);
        if last {
            return Ok(out);
        }
    }
}

/// The bytes of an object, read back (any shards missing rebuilt from the rest).
pub fn read_object(
    store: &Arc<dyn ShardStore>,
    codec: &Codec,
    chunks: &[ChunkRef],
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&fetch::decode_chunk(store, codec, c)?);
    }
    Ok(out)
}

impl Engine {
    /// [`store_object`] under this volume's object key, for a caller inside
    /// [`Engine::store_span`].
    pub fn store_object(&self, from: impl Read) -> Result<Vec<ChunkRef>> {
        let key = object_key(&self.s.key);
        store_object(&*self.s.store, &self.s.codec, &key, self.chunk_size, from)
    }

    /// Runs `f` with gc kept out: shards it stores are not collected before
    /// it names them in [`Engine::set_protected`].
    pub fn store_span<T>(&self, f: impl FnOnce() -> T) -> T {
        let _span = self.s.gate.span();
        f()
    }

    /// The chunks no file holds that gc keeps and repair mends (those of
    /// the kept namespace checkpoints); replaces the last list.
    pub fn set_protected(&self, chunks: Vec<ChunkRef>) {
        let ids = chunks
            .iter()
            .flat_map(|c| c.shard_ids().iter().copied())
            .collect();
        *lock(&self.s.protected) = (chunks, ids);
    }

    /// The shards of [`Engine::set_protected`]'s chunks.
    pub(super) fn protected_ids(&self) -> std::collections::HashSet<ShardId> {
        lock(&self.s.protected).1.clone()
    }
}
