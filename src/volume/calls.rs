//! A volume reached by calls (the daemon's socket; the home node, from a
//! member device): [`Caller`] is what such a transport provides, and every
//! `Caller` is a [`Volume`] whose operations are [`Request`]s.

use super::proto::{Reply, Request};
use super::{Ask, ChunkInfo, NewFile, Progress, Report, SnapInfo, SnapshotOp, Volume};
use crate::data::{CheckReport, Usage};
use crate::types::*;
use crate::{Error, Result};
use serde_bytes::ByteBuf;
use std::io::{Read, Write};

pub trait Caller: Sync {
    /// One call, answered; `progress` gets what the far side reports of it.
    fn call(&self, req: Request, progress: Progress) -> Result<Reply>;
    /// [`Volume::put_file`] over this transport.
    fn send_file(
        &self,
        file: &NewFile,
        src: &mut (dyn Read + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<()>;
    /// [`Volume::read_file`] over this transport.
    fn fetch_file(
        &self,
        ino: Ino,
        dst: &mut (dyn Write + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64>;
    /// [`Volume::barrier`] over this transport.
    fn sync(&self) -> Result<()>;
}

fn unexpected(what: &str, got: Reply) -> Error {
    Error::Io(std::io::Error::other(format!(
        "the far side answered {what} with {got:?}"
    )))
}

/// Bytes for a request.
pub fn buf(b: &[u8]) -> ByteBuf {
    ByteBuf::from(b.to_vec())
}

fn quiet(_: u64, _: u64) {}

trait Answer {
    fn attr(self) -> Result<Attr>;
    fn unit(self) -> Result<()>;
}

impl Answer for Result<Reply> {
    fn attr(self) -> Result<Attr> {
        match self? {
            Reply::Attr(a) => Ok(a),
            other => Err(unexpected("an inode call", other)),
        }
    }
    fn unit(self) -> Result<()> {
        match self? {
            Reply::Unit => Ok(()),
            other => Err(unexpected("a change", other)),
        }
    }
}

impl<C: Caller> Volume for C {
    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        let name = buf(name);
        self.call(Request::Lookup { parent, name }, &quiet).attr()
    }
    fn getattr(&self, ino: Ino) -> Result<Attr> {
        self.call(Request::Getattr(ino), &quiet).attr()
    }
    fn readdir(&self, ino: Ino, offset: u64, max: usize) -> Result<Vec<DirEntry>> {
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        match self.call(Request::Readdir { ino, offset, max }, &quiet)? {
            Reply::Entries(e) => Ok(e),
            other => Err(unexpected("readdir", other)),
        }
    }
    fn params(&self) -> Result<crate::meta::VolumeParams> {
        match self.call(Request::Params, &quiet)? {
            Reply::Params(p) => Ok(p),
            other => Err(unexpected("params", other)),
        }
    }
    fn snapshot(&self, op: SnapshotOp) -> Result<Vec<SnapInfo>> {
        match self.call(Request::Snapshot(op), &quiet)? {
            Reply::Snapshots(s) => Ok(s),
            other => Err(unexpected("snapshot", other)),
        }
    }
    fn readdir_plus(&self, ino: Ino, offset: u64, max: usize) -> Result<Vec<(DirEntry, Attr)>> {
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        match self.call(Request::ReaddirPlus { ino, offset, max }, &quiet)? {
            Reply::EntriesPlus(e) => Ok(e),
            other => Err(unexpected("readdir", other)),
        }
    }
    fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        match self.call(Request::Readlink(ino), &quiet)? {
            Reply::Bytes(b) => Ok(b.into_vec()),
            other => Err(unexpected("readlink", other)),
        }
    }
    fn mkdir(&self, parent: Ino, name: &[u8], perm: u16, uid: u32, gid: u32) -> Result<Attr> {
        let name = buf(name);
        let req = Request::Mkdir {
            parent,
            name,
            perm,
            uid,
            gid,
        };
        self.call(req, &quiet).attr()
    }
    fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], uid: u32, gid: u32) -> Result<Attr> {
        let (name, target) = (buf(name), buf(target));
        let req = Request::Symlink {
            parent,
            name,
            target,
            uid,
            gid,
        };
        self.call(req, &quiet).attr()
    }
    fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        let name = buf(name);
        self.call(Request::Unlink { parent, name }, &quiet).unit()
    }
    fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        let name = buf(name);
        self.call(Request::Rmdir { parent, name }, &quiet).unit()
    }
    fn rename(&self, from: Ino, name: &[u8], to: Ino, new_name: &[u8]) -> Result<()> {
        let (name, new_name) = (buf(name), buf(new_name));
        let req = Request::Rename {
            from,
            name,
            to,
            new_name,
        };
        self.call(req, &quiet).unit()
    }
    fn put_file(
        &self,
        file: &NewFile,
        src: &mut (dyn Read + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        self.send_file(file, src, progress)
    }
    fn read_file(
        &self,
        ino: Ino,
        dst: &mut (dyn Write + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        self.fetch_file(ino, dst, progress)
    }
    fn chunks(&self, ino: Ino) -> Result<Vec<ChunkInfo>> {
        match self.call(Request::Chunks(ino), &quiet)? {
            Reply::Chunks(c) => Ok(c),
            other => Err(unexpected("chunks", other)),
        }
    }
    fn usage(&self) -> Result<Usage> {
        match self.call(Request::Usage, &quiet)? {
            Reply::Usage(u) => Ok(u),
            other => Err(unexpected("usage", other)),
        }
    }
    fn check(&self, repair: bool, progress: Progress) -> Result<CheckReport> {
        match self.call(Request::Check { repair }, progress)? {
            Reply::Check(c) => Ok(c),
            other => Err(unexpected("fsck", other)),
        }
    }
    fn collect_garbage(&self, grace_secs: u64) -> Result<u64> {
        match self.call(Request::Gc { grace_secs }, &quiet)? {
            Reply::Count(n) => Ok(n),
            other => Err(unexpected("gc", other)),
        }
    }
    fn mesh(&self, ask: Ask, progress: Progress) -> Result<Report> {
        match self.call(Request::Mesh(ask), progress)? {
            Reply::Report(r) => Ok(*r),
            other => Err(unexpected("a mesh call", other)),
        }
    }
    fn barrier(&self) -> Result<()> {
        self.sync()
    }
}
