//! Tables, key layouts and value records. Integer keys are big-endian so
//! that prefix scans come out in order.

use crate::chunk::ShardId;
use crate::types::{FileKind, Ino, Timestamp};
use serde::{Deserialize, Serialize};

use super::kv::Table;

pub const CF_INODES: Table = Table::Inodes;
pub const CF_DENTRIES: Table = Table::Dentries;
pub const CF_CHUNKS: Table = Table::Chunks;
pub const CF_XATTRS: Table = Table::Xattrs;
pub const CF_REFS: Table = Table::Refs;
pub const CF_ORPHANS: Table = Table::Orphans;
pub const CF_META: Table = Table::Meta;

/// Bumped whenever a key layout or record changes incompatibly. Format 2 is
/// format 1 plus layered chunk map entries (`ChunkRef::Layered`).
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format this code opens (and raises to [`FORMAT_VERSION`]).
pub const FORMAT_OLDEST: u32 = 1;
pub const KEY_FORMAT: &[u8] = b"format";
pub const KEY_NEXT_INO: &[u8] = b"next_ino";
pub const KEY_PARAMS: &[u8] = b"params";
/// The volume's epoch (u64; absent = 0), raised by each recovery.
pub const KEY_EPOCH: &[u8] = b"epoch";
/// The snapshots (`snapshots::SnapList`).
pub const KEY_SNAPSHOTS: &[u8] = b"snapshots";

/// Per-volume settings fixed at `init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeParams {
    pub volume_id: [u8; 16],
    pub chunk_size: u32,
    pub data_shards: u8,
    pub parity_shards: u8,
    /// Chunks of at most this many bytes live inline in the metadata.
    pub inline_max: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeRec {
    pub kind: FileKind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    pub nlink: u32,
    pub rdev: u32,
    /// The containing directory, for directories only (gives `..` and loop checks).
    pub parent: u64,
    /// Plaintext bytes held by chunks (holes excluded), for `st_blocks`.
    pub allocated: u64,
    pub target: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DentryRec {
    pub ino: u64,
    pub kind: FileKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefRec {
    pub count: u64,
    /// When `count` last reached zero (seconds since the epoch); GC waits a grace
    /// period after it.
    pub zero_since: i64,
}

pub fn ino_key(ino: Ino) -> [u8; 8] {
    ino.0.to_be_bytes()
}

pub fn ino_of_key(key: &[u8]) -> Ino {
    Ino(u64::from_be_bytes(
        key[..8].try_into().expect("8-byte inode key"),
    ))
}

/// Directory-order cookie of a name: 63 bits of its BLAKE3 hash, never 0, 1 or 2
/// (0 starts a listing; 1 and 2 are `.` and `..`).
pub fn name_cookie(name: &[u8]) -> u64 {
    let h = blake3::hash(name);
    let v = u64::from_be_bytes(h.as_bytes()[..8].try_into().unwrap()) >> 1;
    v.max(3)
}

/// `parent ‖ cookie(name) ‖ name`: a listing walks names in cookie order, so a
/// cookie resumes it at the right place however the directory changes meanwhile.
pub fn dentry_key(parent: Ino, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + name.len());
    k.extend_from_slice(&parent.0.to_be_bytes());
    k.extend_from_slice(&name_cookie(name).to_be_bytes());
    k.extend_from_slice(name);
    k
}

pub fn dentry_seek(parent: Ino, cookie: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&parent.0.to_be_bytes());
    k[8..].copy_from_slice(&cookie.to_be_bytes());
    k
}

pub fn chunk_key(ino: Ino, idx: u64) -> [u8; 16] {
    dentry_seek(ino, idx)
}

pub fn xattr_key(ino: Ino, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&ino.0.to_be_bytes());
    k.extend_from_slice(name);
    k
}

pub fn ref_key(id: &ShardId) -> [u8; 32] {
    id.0
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("records serialize")
}
