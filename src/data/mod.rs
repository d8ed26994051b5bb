//! The engine: the namespace of [`crate::meta`] plus file contents, sealed by
//! [`crate::chunk`] into shards kept by a [`ShardStore`].
//!
//! Writes land in per-file dirty chunk buffers. A buffer goes to the background
//! sealing pool when its chunk fills, on `flush`/`fsync`, when the dirty total
//! passes its budget, or when its file sits idle; the pool seals and stores it and
//! commits it (chunk map, size and shard references in one batch). Reads see
//! unsealed buffers first, then committed chunks through a decoded-chunk LRU cache
//! with single-flight loads and read-ahead. A shard that is missing or fails its
//! hash is rebuilt from the others and written back (self-healing).
//!
//! This file holds the types and the engine's constructor; the code by
//! concern: `namespace` (names, attributes, truncation, open/release), `write`
//! (dirty buffers, sealing jobs, flushes, the engine's workers), `read` (reads
//! and read-ahead), `cache` (decoded chunks, single-flight), `fetch` (shards of
//! a chunk, hedging, healing), `gc`, `stream` (bulk put/get), `check` (df,
//! fsck) and `repair` (redundancy, repair, scrub).

mod cache;
mod check;
mod fetch;
mod gc;
mod namespace;
mod object;
mod patch;
mod read;
mod repair;
mod stream;
mod write;

pub use check::{CheckReport, Usage};
pub use fetch::decode_chunk;
pub use object::{object_key, read_object, store_object};
pub use repair::{Pass, Passes, Redundancy};
pub use stream::{CommittedFile, hidden_temp, put_target};
pub use write::store_sealed;

use crate::chunk::{self, ChunkRef, Codec, ShardId, VolumeKey};
use crate::error::{Error, Result};
use crate::meta::locks::RangeLock;
use crate::meta::{MetaStore, Namespace, NewNode};
use crate::store::{ShardStore, StoreError};
use crate::types::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Run-time settings of an engine (the volume's own parameters live in the metadata).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Decoded chunks kept in memory, in bytes.
    pub cache_bytes: usize,
    /// Dirty data held across all files before writers are made to flush.
    pub dirty_bytes: usize,
    /// How long a storage peer may be gone before its shards are rebuilt.
    pub repair_grace: std::time::Duration,
    /// Repair's bandwidth, MB/s; 0: no limit.
    pub repair_mbps: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cache_bytes: 32 << 20,
            dirty_bytes: 256 << 20,
            repair_grace: std::time::Duration::from_secs(600),
            repair_mbps: 0,
        }
    }
}

/// Unsealed writes to one chunk.
#[derive(Clone, Debug)]
enum Dirty {
    /// The chunk's full current contents (may be shorter than a chunk).
    Whole(Vec<u8>),
    /// Ranges written over the chunk as it stands committed (or in flight),
    /// which was not read: sealed as slices of a layered chunk.
    Patch(patch::Patch),
}

impl Dirty {
    /// Memory held, as the dirty budget counts it.
    fn bytes(&self) -> usize {
        match self {
            Dirty::Whole(b) => b.capacity(),
            Dirty::Patch(p) => p.bytes(),
        }
    }

    /// This older state of a chunk with `newer` written after it: a whole
    /// buffer supersedes what came before; a patch is laid over it.
    fn under(self, newer: Dirty) -> Dirty {
        match (self, newer) {
            (_, Dirty::Whole(b)) => Dirty::Whole(b),
            (Dirty::Whole(mut b), Dirty::Patch(p)) => {
                p.apply(&mut b);
                Dirty::Whole(b)
            }
            (Dirty::Patch(mut q), Dirty::Patch(p)) => {
                for (at, bytes) in p.ranges() {
                    q.write(at, bytes);
                }
                Dirty::Patch(q)
            }
        }
    }
}

/// Unsealed writes of one file.
#[derive(Default)]
struct FileState {
    /// Chunk index → what was written to it since it last landed.
    dirty: BTreeMap<u64, Dirty>,
    /// Chunks handed to the sealing pool, served to readers until their map commits.
    /// At most one per index: a chunk is handed off again only after it lands.
    sealing: BTreeMap<u64, Arc<Dirty>>,
    /// The first background sealing failure since the last flush, for flush to report.
    failed: Option<Error>,
    /// Size and mtime including unsealed writes, while any are pending.
    size: Option<u64>,
    mtime: Option<Timestamp>,
    /// When the last write landed here, for sealing files left idle.
    last_write: Option<std::time::Instant>,
    /// The size and mtime the last landed seal committed, so a flush that finds
    /// them current commits nothing more.
    committed: Option<(u64, Option<Timestamp>)>,
}

impl FileState {
    fn idle(&self) -> bool {
        self.dirty.is_empty() && self.sealing.is_empty() && self.size.is_none()
    }
}

/// A file's unsealed state and the signal that a background seal landed.
#[derive(Default)]
struct FileCell {
    state: Mutex<FileState>,
    landed: Condvar,
}

/// The engine's shared core: the namespace, the shard store, the key and codec,
/// the decoded-chunk cache and the dirty-byte count; held by the engine and by
/// every background sealing job.
struct Core {
    meta: Box<dyn Namespace>,
    store: Arc<dyn ShardStore>,
    key: VolumeKey,
    codec: Codec,
    inline_max: usize,
    /// Sealed slice bytes a layered chunk may hold before a seal compacts it.
    slice_budget: usize,
    /// Memory (capacity) of dirty buffers and of those in flight to the store,
    /// across all files.
    dirty_total: AtomicUsize,
    cache: Mutex<cache::ChunkCache>,
    /// Chunks being decoded now, for others wanting the same one to wait on.
    loading: Mutex<HashMap<[u8; 32], Arc<Flight>>>,
    /// Keeps gc out of the span between storing shards and committing them.
    gate: gc::StoreGate,
    /// Shards this process's gc deleted: a member's commit that names one
    /// stored it before the delete, and must store it again.
    collected: Mutex<std::collections::HashSet<ShardId>>,
    /// Chunks no file holds that gc keeps and repair mends (the kept
    /// namespace checkpoints'), and their shards.
    protected: Mutex<(Vec<ChunkRef>, std::collections::HashSet<ShardId>)>,
    /// Called after every fsync (wakes namespace protection).
    on_fsync: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// One chunk being decoded; `done` turns true when it is cached (or failed).
#[derive(Default)]
struct Flight {
    done: Mutex<bool>,
    cv: Condvar,
}

pub struct Engine {
    s: Arc<Core>,
    /// Runs background seals, on threads of its own: a seal waits for its
    /// file's lock, and must not hold up the threads that work (reads,
    /// read-ahead) runs on.
    sealing_pool: crate::workers::JobPool,
    chunk_size: usize,
    files: Mutex<HashMap<Ino, Arc<FileCell>>>,
    /// Open handles per inode. A leaf lock: taken inside the metadata writer lock, so
    /// it must never wait on a file's state.
    opens: Mutex<HashMap<Ino, u32>>,
    dirty_budget: usize,
    repair_grace: std::time::Duration,
    /// Per file, the offset its last read ended at: a read that carries on
    /// from there into a new chunk is sequential, and gets the next chunks
    /// decoded ahead.
    readahead: Mutex<HashMap<Ino, u64>>,
    /// Where read-ahead decodes run, and how many chunks ahead they go.
    /// Through peers a fetch mostly waits on answers, so more run at once
    /// and further ahead: each keeps k peers busy while the others decode.
    readahead_pool: crate::workers::JobPool,
    readahead_chunks: u64,
    /// Files this engine took a lock on since they were opened: a close of
    /// any other file has no lock to drop (on a member, no call to make).
    locked: Mutex<std::collections::HashSet<Ino>>,
    /// One repair pass at a time (the mount's worker, or one asked of the
    /// mount): two would both place the same missing shards.
    repairing: Mutex<()>,
    /// The last survey and the passes running, for the dashboard (boxed:
    /// the engine stays small).
    passes: Box<repair::Passes>,
    /// Repair's bandwidth (`repair_mbps`), none without a limit.
    repair_limit: Option<Box<repair::RepairLimit>>,
}

use crate::util::lock;

/// Background jobs (a seal finishing after its waiter woke, a read-ahead)
/// hold the core for a moment after the engine's last call returned: the
/// engine waits for them, so that once it is dropped the volume is closed
/// (RocksDB's lock released) and can be opened again at once.
impl Drop for Engine {
    fn drop(&mut self) {
        let start = std::time::Instant::now();
        while Arc::strong_count(&self.s) > 1 && start.elapsed() < std::time::Duration::from_secs(10)
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

impl Core {
    /// The RocksDB namespace, for what runs only where it is (whole-volume
    /// scans: df, fsck, gc, repair).
    fn local(&self) -> Result<&MetaStore> {
        self.meta.local().ok_or_else(|| {
            Error::Remote(
                crate::error::Kind::Other,
                "this runs on the home node (the volume's namespace is there)".into(),
            )
        })
    }
}

impl Engine {
    pub fn new(
        meta: MetaStore,
        store: Arc<dyn ShardStore>,
        key: VolumeKey,
        cfg: EngineConfig,
    ) -> Result<Engine> {
        Engine::with_namespace(Box::new(meta), store, key, cfg)
    }

    /// An engine over any namespace: the home's RocksDB, or on a member
    /// device the home node's, asked over the mesh.
    pub fn with_namespace(
        meta: Box<dyn Namespace>,
        store: Arc<dyn ShardStore>,
        key: VolumeKey,
        cfg: EngineConfig,
    ) -> Result<Engine> {
        let p = meta.params().clone();
        let codec = Codec::new(p.data_shards as usize, p.parity_shards as usize)?;
        let chunk_size = p.chunk_size as usize;
        let remote = store.remote();
        // One seal (or read-ahead decode) per core; over a network, four more
        // whose puts and fetches wait on answers while the others compute.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let pool_threads = cores + if remote { 4 } else { 0 };
        Ok(Engine {
            s: Arc::new(Core {
                meta,
                store,
                key,
                codec,
                inline_max: p.inline_max as usize,
                // 1/16 of a chunk, and room for a few full slices in small
                // chunks, never past half of one.
                slice_budget: (chunk_size / 16)
                    .max(4 * p.inline_max as usize)
                    .min(chunk_size / 2),
                dirty_total: AtomicUsize::new(0),
                cache: Mutex::new(cache::ChunkCache::new(cfg.cache_bytes.max(2 * chunk_size))),
                loading: Mutex::new(HashMap::new()),
                gate: gc::StoreGate::default(),
                collected: Mutex::new(Default::default()),
                protected: Mutex::new(Default::default()),
                on_fsync: Default::default(),
            }),
            readahead_pool: crate::workers::JobPool::new("datamesh-ra", pool_threads)?,
            readahead_chunks: if remote {
                READAHEAD_REMOTE
            } else {
                READAHEAD_LOCAL
            },
            sealing_pool: crate::workers::JobPool::new("datamesh-seal", pool_threads)?,
            chunk_size,
            files: Mutex::new(HashMap::new()),
            opens: Mutex::new(HashMap::new()),
            dirty_budget: cfg.dirty_bytes.max(2 * chunk_size),
            repair_grace: cfg.repair_grace,
            readahead: Mutex::new(HashMap::new()),
            locked: Mutex::new(Default::default()),
            repairing: Mutex::new(()),
            passes: Default::default(),
            repair_limit: repair::RepairLimit::new(cfg.repair_mbps).map(Box::new),
        })
    }

    pub fn meta(&self) -> &dyn Namespace {
        &*self.s.meta
    }

    /// The RocksDB namespace, on the home node.
    pub fn local_meta(&self) -> Result<&MetaStore> {
        self.s.local()
    }

    /// `f` runs after every fsync from now on (one hook; later ones are
    /// ignored).
    pub fn on_fsync(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.s.on_fsync.set(Box::new(f));
    }

    /// Whether the namespace is here (the home node), not asked of it.
    pub fn is_home(&self) -> bool {
        self.s.meta.local().is_some()
    }
    pub fn store(&self) -> &dyn ShardStore {
        &*self.s.store
    }
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }
    pub fn codec(&self) -> &Codec {
        &self.s.codec
    }

    fn state(&self, ino: Ino) -> Option<Arc<FileCell>> {
        lock(&self.files).get(&ino).cloned()
    }

    fn state_or_new(&self, ino: Ino) -> Arc<FileCell> {
        lock(&self.files).entry(ino).or_default().clone()
    }

    fn is_open(&self) -> impl Fn(Ino) -> bool + '_ {
        move |ino| lock(&self.opens).contains_key(&ino)
    }

    // ---- namespace ---------------------------------------------------------------

    // ---- open files --------------------------------------------------------------

    // ---- contents ----------------------------------------------------------------
}

/// Copies what `src` (a chunk's bytes, maybe short) holds from `within` on into
/// `dst`; the rest of `dst` stays zero.
fn copy_piece(dst: &mut [u8], src: &[u8], within: usize) {
    if within < src.len() {
        let m = dst.len().min(src.len() - within);
        dst[..m].copy_from_slice(&src[within..within + m]);
    }
}

/// How long a file may go unwritten before its partial chunks are sealed.
const IDLE_SEAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Slices a layered chunk may hold before a seal compacts it.
const MAX_SLICES: usize = 32;

/// Chunks decoded ahead of a sequential reader, from the local store and
/// through peers (which the default 32 MiB cache of 4 MiB chunks holds with
/// the chunk being read).
const READAHEAD_LOCAL: u64 = 3;
const READAHEAD_REMOTE: u64 = 6;

/// Waits until a background seal of this file lands (the lock is let go meanwhile).
fn wait<'a>(cell: &'a FileCell, st: MutexGuard<'a, FileState>) -> MutexGuard<'a, FileState> {
    cell.landed.wait(st).unwrap_or_else(|p| p.into_inner())
}
