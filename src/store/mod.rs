//! Shard stores. [`ShardStore`] is what the engine writes shards to and reads them
//! from; [`LocalStore`] keeps them as content-addressed files on this host, and
//! `net::MeshStore` spreads them over storage peers.
//!
//! Invariants: a shard file, once visible under its name, holds exactly the bytes
//! whose BLAKE3 hash is that name (written to a temp file, then renamed); every read
//! re-checks the hash, so a damaged file is reported, never returned.

mod holders;
mod local;

pub use holders::{HolderIndex, Holders};
/// How the holder index keys a shard.
pub use holders::{Key as HolderKey, key as holder_key};
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
    /// A peer (named in the text) could not be reached or failed the request.
    #[error("{0}")]
    Peer(String),
}

/// One stored shard, as listed by [`ShardStore::for_each`].
pub struct ShardInfo {
    pub id: ShardId,
    pub len: u64,
    pub modified: SystemTime,
}

/// A storage peer as `datamesh status` shows it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PeerStatus {
    /// The tag that stands for this peer in [`ShardStore::placement`] sets.
    pub tag: u32,
    pub id: String,
    pub address: String,
    pub reachable: bool,
    pub shards: u64,
    pub bytes: u64,
    pub capacity: u64,
    /// Whether the home admitted it (only admitted peers get shards and count).
    #[serde(default = "yes")]
    pub admitted: bool,
}

fn yes() -> bool {
    true
}

/// A storage peer a survey could not count, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerNote {
    pub id: String,
    pub address: String,
    pub why: String,
}

/// What [`ShardStore::survey`] heard. Every known storage peer is in exactly one
/// of: `answered` (its whole inventory arrived), `unreachable` (no connection
/// could be made), `silent` (connected, but its inventory did not arrive).
#[derive(Clone, Debug, Default)]
pub struct Survey {
    /// Holders (as in [`ShardStore::placement`] sets) that answered.
    pub answered: Holders,
    pub unreachable: Vec<PeerNote>,
    pub silent: Vec<PeerNote>,
}

/// What [`ShardStore::scrub`] found.
#[derive(Debug, Default)]
pub struct Scrubbed {
    /// Bad shards, already dropped from their holders' records so that repair
    /// rebuilds them.
    pub bad: Vec<ShardId>,
    /// Holders that could not be verified, and why.
    pub skipped: Vec<PeerNote>,
}

/// Where shards live. Implementations must be safe to call from many threads.
pub trait ShardStore: Send + Sync {
    /// Store a shard; storing one that is already there is a cheap no-op.
    fn put(&self, id: &ShardId, bytes: &[u8]) -> Result<(), StoreError>;
    /// Overwrite a shard that may be present but damaged.
    fn replace(&self, id: &ShardId, bytes: &[u8]) -> Result<(), StoreError>;
    /// A shard's bytes, verified against its id.
    fn get(&self, id: &ShardId) -> Result<Vec<u8>, StoreError>;
    /// Up to `len` bytes of a shard from `offset`, NOT verified against its
    /// id (a range cannot be: the id hashes the whole shard). For segmented
    /// chunks, whose segments' tags check what comes back. Stores that cannot
    /// read a range read the whole shard.
    fn get_range(&self, id: &ShardId, offset: usize, len: usize) -> Result<Vec<u8>, StoreError> {
        let whole = self.get(id)?;
        let from = offset.min(whole.len());
        Ok(whole[from..(from + len).min(whole.len())].to_vec())
    }
    fn delete(&self, id: &ShardId) -> Result<(), StoreError>;
    /// Durability barrier: everything put so far is on stable storage.
    fn sync(&self) -> Result<(), StoreError>;
    /// Every shard held, for fsck and garbage collection.
    fn for_each(&self, f: &mut dyn FnMut(ShardInfo)) -> Result<(), StoreError>;
    /// (total, available) bytes of the storage behind this store.
    fn capacity(&self) -> Result<(u64, u64), StoreError>;

    /// Store the shards of one chunk, each on its own holder where the store has
    /// several. Returns once at least `need` are stored; the rest may still be
    /// landing ([`ShardStore::sync`] waits for them). Owned and shared, so
    /// a store that sends them on (and resends) copies nothing.
    fn put_chunk(
        &self,
        shards: Vec<(ShardId, bytes::Bytes)>,
        need: usize,
    ) -> Result<(), StoreError> {
        let _ = need;
        shards.iter().try_for_each(|(id, b)| self.put(id, b))
    }

    /// Whether puts wait on a network rather than a local disk: the engine then
    /// keeps more chunks in flight, since each waits mostly for answers.
    fn remote(&self) -> bool {
        false
    }

    /// Where each of `ids` is known to be, as peer ids (empty where not
    /// known): hints the home node gives a member device with chunk maps.
    fn holders_of(&self, ids: &[ShardId]) -> Vec<Vec<String>> {
        vec![Vec::new(); ids.len()]
    }

    /// Takes hints of where `id` is (peer ids), so a read asks there first
    /// instead of asking every peer.
    fn learn(&self, id: &ShardId, peers: &[String]) {
        let _ = (id, peers);
    }

    /// After this long without a data shard, a reader also asks for a parity
    /// shard (a hedged request). `None`: reads are local and never hedged.
    fn hedge_after(&self) -> Option<std::time::Duration> {
        None
    }

    /// Refresh what the store knows of where shards are: asks every known
    /// holder for its inventory and waits until each has answered or is known
    /// not to (see docs/DESIGN.md, "A complete survey").
    fn survey(&self) -> Result<Survey, StoreError> {
        Ok(Survey::default())
    }

    /// For each shard, the reachable holders, from the last survey and the
    /// puts since. `None`: one host holds everything.
    fn placement(&self, ids: &[ShardId]) -> Option<Vec<Holders>> {
        let _ = ids;
        None
    }

    /// The holders reachable now, as in [`ShardStore::placement`].
    fn holders_up(&self) -> Holders {
        Holders::new()
    }

    /// Drop the copies of a shard held by `holders` (it has been placed
    /// elsewhere).
    fn release(&self, id: &ShardId, holders: &Holders) {
        let _ = (id, holders);
    }

    /// The holders of [`ShardStore::placement`] that mean "in this host's own
    /// store" ([`Holders::LOCAL`] where it has one): such shards are readable
    /// but not yet spread over peers.
    fn local(&self) -> Holders {
        Holders::new()
    }

    /// Store shards `which` of the chunk `ids` again, on holders that hold none of
    /// its other shards where there are such (repair).
    fn place(&self, ids: &[ShardId], which: &[usize], bytes: &[&[u8]]) -> Result<(), StoreError> {
        which
            .iter()
            .zip(bytes)
            .try_for_each(|(&i, b)| self.replace(&ids[i], b))
    }

    /// The storage peers, reachable or not; `None` for a store on this host.
    fn peers(&self) -> Option<Vec<PeerStatus>> {
        None
    }

    /// Whether shards need rebuilding: a holder has been gone longer than `grace`
    /// or a write left some shards unplaced. Cleared by [`ShardStore::repaired`].
    fn wants_repair(&self, grace: std::time::Duration) -> bool {
        let _ = grace;
        false
    }

    /// A repair pass over every chunk has finished.
    fn repaired(&self) {}

    /// Ask every holder to re-hash what it holds.
    fn scrub(&self, progress: &dyn Fn(u64)) -> Result<Scrubbed, StoreError> {
        let mut bad = Vec::new();
        let mut n = 0;
        let mut ids = Vec::new();
        self.for_each(&mut |info| ids.push(info.id))?;
        for id in ids {
            if let Err(StoreError::Corrupt(_)) = self.get(&id) {
                bad.push(id);
            }
            n += 1;
            progress(n);
        }
        Ok(Scrubbed {
            bad,
            skipped: Vec::new(),
        })
    }
}
