//! Shard stores. [`ShardStore`] is what the engine writes shards to and reads them
//! from; [`LocalStore`] keeps them as content-addressed files on this host.
//!
//! Invariants: a shard file, once visible under its name, holds exactly the bytes
//! whose BLAKE3 hash is that name (written to a temp file, then renamed); every read
//! re-checks the hash, so a damaged file is reported, never returned.

mod local;

pub use local::LocalStore;

use crate::chunk::ShardId;
use std::path::PathBuf;
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("shard {0} is missing")]
    Missing(ShardId),
    #[error("shard {0} is corrupt (its bytes do not match its hash)")]
    Corrupt(ShardId),
    #[error("{0}: No space left on device")]
    Full(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One stored shard, as listed by [`ShardStore::for_each`].
pub struct ShardInfo {
    pub id: ShardId,
    pub len: u64,
    pub modified: SystemTime,
}

/// Where shards live. Implementations must be safe to call from many threads.
pub trait ShardStore: Send + Sync {
    /// Store a shard; storing one that is already there is a cheap no-op.
    fn put(&self, id: &ShardId, bytes: &[u8]) -> Result<(), StoreError>;
    /// Overwrite a shard that may be present but damaged.
    fn replace(&self, id: &ShardId, bytes: &[u8]) -> Result<(), StoreError>;
    /// A shard's bytes, verified against its id.
    fn get(&self, id: &ShardId) -> Result<Vec<u8>, StoreError>;
    fn delete(&self, id: &ShardId) -> Result<(), StoreError>;
    /// Durability barrier: everything put so far is on stable storage.
    fn sync(&self) -> Result<(), StoreError>;
    /// Every shard held, for fsck and garbage collection.
    fn for_each(&self, f: &mut dyn FnMut(ShardInfo)) -> Result<(), StoreError>;
    /// (total, available) bytes of the storage behind this store.
    fn capacity(&self) -> Result<(u64, u64), StoreError>;
}
