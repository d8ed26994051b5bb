//! A volume as the CLI's commands use it, wherever it is served. [`Volume`] is
//! what a command may do; two things implement it:
//!
//! - [`Engine`]: the volume opened by this process (no daemon runs);
//! - [`remote::Remote`]: a connection to the daemon that holds the volume (a
//!   mount, or `datamesh serve`), over its socket `HOME/volume.sock`.
//!
//! A command's code is the same for both, so its output, progress bars and
//! exit code are too. [`proto`] is the socket's wire format, [`serve`] the
//! daemon's side of it.

pub mod calls;
pub mod proto;
pub mod remote;
pub mod serve;

use crate::Result;
use crate::chunk::ChunkRef;
use crate::data::{CheckReport, Engine, Redundancy, Usage};
use crate::store::{PeerNote, PeerStatus, Scrubbed};
use crate::types::*;
use crate::workers::WorkerInfo;
pub use proto::{SnapInfo, SnapshotOp};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::io::{Read, Write};

/// `progress(done, total)` of a long operation (fsck, repair, scrub).
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// The mesh operations `status`, `repair` and `scrub`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ask {
    Status,
    Repair,
    Scrub,
}

/// What `status`, `repair` and `scrub` report.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub peers: Option<Vec<PeerStatus>>,
    pub redundancy: Redundancy,
    pub data_shards: usize,
    pub parity_shards: usize,
    /// Corrupt shards found (scrub only), as hex ids.
    #[serde(default)]
    pub corrupt: Vec<String>,
    /// Peers scrub could not verify (scrub only).
    #[serde(default)]
    pub unverified: Vec<PeerNote>,
    /// The background workers of the daemon that answered (none when the
    /// command opened the volume itself).
    #[serde(default)]
    pub workers: Vec<WorkerInfo>,
    /// Passes over the chunks running in that daemon (a repair, a scrub).
    #[serde(default)]
    pub running: Vec<crate::data::Pass>,
}

/// One chunk of a file, as `stat --chunks` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkInfo {
    pub index: u64,
    pub plain_len: u64,
    /// Its shards, as hex ids; none for a chunk kept inline in the metadata.
    pub shards: Vec<String>,
}

/// A new file to fill: where, its name and who owns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewFile {
    pub dir: Ino,
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

/// What a command may do to a volume. Every method is one operation of the
/// engine's namespace, or one whole command-level operation (a file put, a
/// check) that the daemon runs where the volume is.
pub trait Volume: Sync {
    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr>;
    fn getattr(&self, ino: Ino) -> Result<Attr>;
    /// Up to `max` entries after the cookie `offset` (2 starts past `.` and `..`).
    fn readdir(&self, ino: Ino, offset: u64, max: usize) -> Result<Vec<DirEntry>>;
    /// The same, each entry with its attributes (one call for `ls -l`).
    fn readdir_plus(&self, ino: Ino, offset: u64, max: usize) -> Result<Vec<(DirEntry, Attr)>>;
    /// The volume's parameters (its id among them).
    fn params(&self) -> Result<crate::meta::VolumeParams>;
    /// Creates, lists or deletes snapshots; the snapshots after it.
    fn snapshot(&self, op: SnapshotOp) -> Result<Vec<SnapInfo>>;
    fn readlink(&self, ino: Ino) -> Result<Vec<u8>>;
    fn mkdir(&self, parent: Ino, name: &[u8], perm: u16, uid: u32, gid: u32) -> Result<Attr>;
    fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], uid: u32, gid: u32) -> Result<Attr>;
    fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()>;
    fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()>;
    fn rename(&self, from: Ino, name: &[u8], to: Ino, new_name: &[u8]) -> Result<()>;
    /// Writes all of `src` to a hidden temporary name beside `file.name`, then
    /// renames it over that name: a failed or interrupted put leaves the old
    /// contents (or nothing) in place. `progress(bytes)` as they are stored.
    fn put_file(
        &self,
        file: &NewFile,
        src: &mut (dyn Read + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<()>;
    /// Copies all of regular file `ino` to `dst`; `progress(bytes)`.
    fn read_file(
        &self,
        ino: Ino,
        dst: &mut (dyn Write + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64>;
    fn chunks(&self, ino: Ino) -> Result<Vec<ChunkInfo>>;
    fn usage(&self) -> Result<Usage>;
    fn check(&self, repair: bool, progress: Progress) -> Result<CheckReport>;
    fn collect_garbage(&self, grace_secs: u64) -> Result<u64>;
    fn mesh(&self, ask: Ask, progress: Progress) -> Result<Report>;
    /// The durability barrier a command that changed the volume ends with:
    /// everything it wrote is on the peers and in the namespace's log. (A
    /// daemon does not seal the files its mount is writing for it.)
    fn barrier(&self) -> Result<()>;
}

/// Threads a bulk copy uses.
pub fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Runs `ask` on an open engine; the report names `workers`.
pub fn mesh_report(
    engine: &Engine,
    ask: Ask,
    workers: Vec<WorkerInfo>,
    progress: Progress,
) -> Result<Report> {
    let (scrubbed, redundancy) = match ask {
        Ask::Status => (Scrubbed::default(), engine.redundancy(false, progress)?),
        Ask::Repair => (Scrubbed::default(), engine.redundancy(true, progress)?),
        Ask::Scrub => engine.scrub(progress)?,
    };
    Ok(Report {
        peers: engine.store().peers(),
        redundancy,
        data_shards: engine.codec().data_shards(),
        parity_shards: engine.codec().parity_shards(),
        corrupt: scrubbed.bad.iter().map(|id| id.to_hex()).collect(),
        unverified: scrubbed.skipped,
        workers,
        running: engine.passes().running(),
    })
}

/// [`Volume::put_file`] on an engine.
pub fn put_file(
    engine: &Engine,
    file: &NewFile,
    src: &mut (dyn Read + Send),
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let NewFile {
        dir,
        ref name,
        perm,
        uid,
        gid,
    } = *file;
    crate::data::put_target(engine.lookup(dir, name))?;
    engine.put_via_temp(dir, name, perm, uid, gid, |ino| {
        engine.write_stream(ino, src, workers(), progress).map(drop)
    })
}

impl Volume for Engine {
    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        Engine::lookup(self, parent, name)
    }
    fn getattr(&self, ino: Ino) -> Result<Attr> {
        Engine::getattr(self, ino)
    }
    fn readdir(&self, ino: Ino, offset: u64, max: usize) -> Result<Vec<DirEntry>> {
        Engine::readdir(self, ino, offset, max)
    }
    fn readdir_plus(&self, ino: Ino, offset: u64, max: usize) -> Result<Vec<(DirEntry, Attr)>> {
        Engine::readdir_plus(self, ino, offset, max)
    }
    fn params(&self) -> Result<crate::meta::VolumeParams> {
        Ok(self.meta().params().clone())
    }
    fn snapshot(&self, op: SnapshotOp) -> Result<Vec<SnapInfo>> {
        let meta = self.local_meta()?;
        let with_bytes = matches!(op, SnapshotOp::List);
        match op {
            SnapshotOp::Create(name) => {
                // What the files hold now, sealed and committed, is what it keeps.
                self.flush_all()?;
                self.sync_committed()?;
                meta.snapshot_create(&name)?;
            }
            SnapshotOp::Delete(name) => drop(meta.snapshot_delete(&name)?),
            SnapshotOp::List => {}
        }
        meta.snapshot_dbs()?
            .into_iter()
            .map(|(s, db)| {
                Ok(SnapInfo {
                    name: ByteBuf::from(s.name),
                    created: s.created,
                    pinned_bytes: if with_bytes {
                        meta.snapshot_pinned_bytes(&db)?
                    } else {
                        0
                    },
                })
            })
            .collect()
    }
    fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        Engine::readlink(self, ino)
    }
    fn mkdir(&self, parent: Ino, name: &[u8], perm: u16, uid: u32, gid: u32) -> Result<Attr> {
        Engine::mkdir(self, parent, name, perm, uid, gid)
    }
    fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], uid: u32, gid: u32) -> Result<Attr> {
        Engine::symlink(self, parent, name, target, uid, gid)
    }
    fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        Engine::unlink(self, parent, name)
    }
    fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        Engine::rmdir(self, parent, name)
    }
    fn rename(&self, from: Ino, name: &[u8], to: Ino, new_name: &[u8]) -> Result<()> {
        Engine::rename(self, from, name, to, new_name, RenameFlags::default())
    }
    fn put_file(
        &self,
        file: &NewFile,
        src: &mut (dyn Read + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        put_file(self, file, src, progress)
    }
    fn read_file(
        &self,
        ino: Ino,
        dst: &mut (dyn Write + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        self.read_stream(ino, dst, workers(), progress)
    }
    fn chunks(&self, ino: Ino) -> Result<Vec<ChunkInfo>> {
        Ok(self
            .meta()
            .chunks_from(ino, 0)?
            .into_iter()
            .map(|(index, c)| chunk_info(index, &c))
            .collect())
    }
    fn usage(&self) -> Result<Usage> {
        Engine::usage(self)
    }
    fn check(&self, repair: bool, progress: Progress) -> Result<CheckReport> {
        Engine::check(self, repair, progress)
    }
    fn collect_garbage(&self, grace_secs: u64) -> Result<u64> {
        Engine::collect_garbage(self, grace_secs)
    }
    fn mesh(&self, ask: Ask, progress: Progress) -> Result<Report> {
        mesh_report(self, ask, Vec::new(), progress)
    }
    fn barrier(&self) -> Result<()> {
        self.flush_all()
    }
}

fn chunk_info(index: u64, c: &ChunkRef) -> ChunkInfo {
    ChunkInfo {
        index,
        plain_len: c.plain_len() as u64,
        shards: c.shard_ids().iter().map(|i| i.to_hex()).collect(),
    }
}
