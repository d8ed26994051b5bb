//! [`Namespace`]: what the engine asks of the metadata. [`MetaStore`] (the
//! RocksDB tree, on the home node) answers it; on a member device the engine
//! asks the home node instead (`member::namespace::RemoteNamespace`). Each
//! change stays one batch wherever the store is.

use super::changes::Since;
use super::locks::{LockOwner, RangeLock};
use super::snapshots::{Route, is_snapshot, not_reserved, route, writable};
use super::{InodeRec, MetaStore, NewNode, VolumeParams};
use crate::chunk::ChunkRef;
use crate::error::Result;
use crate::types::*;
use crate::workers::Runner;
use std::time::Duration;

pub trait Namespace: Send + Sync {
    fn params(&self) -> &VolumeParams;
    fn inode(&self, ino: Ino) -> Result<InodeRec>;
    fn attr(&self, ino: Ino) -> Result<Attr>;
    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr>;
    fn readdir(&self, ino: Ino, offset: u64, max: usize) -> Result<Vec<DirEntry>>;
    /// A page of entries with their attributes (FUSE readdirplus).
    fn readdir_plus(&self, ino: Ino, offset: u64, max: usize) -> Result<Vec<(DirEntry, Attr)>> {
        self.readdir(ino, offset, max)?
            .into_iter()
            .map(|e| Ok((e.clone(), self.attr(e.ino)?)))
            .collect()
    }
    fn chunk(&self, ino: Ino, idx: u64) -> Result<Option<ChunkRef>>;
    fn chunks_from(&self, ino: Ino, from: u64) -> Result<Vec<(u64, ChunkRef)>>;
    fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>>;
    fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>>;
    fn create_node(&self, parent: Ino, name: &[u8], node: NewNode) -> Result<Attr>;
    /// Makes a node and counts it open here (see [`Namespace::opened`]).
    fn create_open(&self, parent: Ino, name: &[u8], node: NewNode) -> Result<Attr> {
        self.create_node(parent, name, node)
    }
    fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> Result<Attr>;
    /// `is_open` says whether an inode has open handles here (one that has
    /// becomes an orphan instead of being freed).
    fn unlink(&self, parent: Ino, name: &[u8], is_open: &dyn Fn(Ino) -> bool) -> Result<()>;
    fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()>;
    fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
        is_open: &dyn Fn(Ino) -> bool,
    ) -> Result<()>;
    fn setattr(&self, ino: Ino, set: &SetAttr) -> Result<Attr>;
    fn commit_chunks(
        &self,
        ino: Ino,
        chunks: Vec<(u64, Option<ChunkRef>)>,
        size: u64,
        mtime: Option<Timestamp>,
    ) -> Result<Attr>;
    fn truncate(
        &self,
        ino: Ino,
        size: u64,
        tail: Option<(u64, Option<ChunkRef>)>,
        set: &SetAttr,
    ) -> Result<Attr>;
    fn setxattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> Result<()>;
    fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()>;
    /// Frees `ino` if it is an orphan (unlinked while open) and now closed.
    fn release_orphan(&self, ino: Ino) -> Result<()>;
    /// Durability barrier for the namespace.
    fn sync(&self) -> Result<()>;
    /// A handle on `ino` opened here, or the last one here closed: a remote
    /// namespace tells the home node, which keeps an unlinked file until the
    /// last handle anywhere is closed. A remote namespace answers an open
    /// with the file's attributes (one call, not two); `None`: ask `attr`.
    fn opened(&self, _ino: Ino) -> Result<Option<Attr>> {
        Ok(None)
    }
    fn released(&self, _ino: Ino) -> Result<()> {
        Ok(())
    }
    /// Everything done here to `ino` is applied where the namespace is kept
    /// (a close, an fsync): a remote namespace sends the changes it holds
    /// (docs/DESIGN.md, "Changes to a new file") and answers the error one
    /// of them met since, as a local filesystem reports a failed write-back.
    fn settle(&self, _ino: Ino) -> Result<()> {
        Ok(())
    }
    /// `ino` is closed here: as [`Namespace::settle`], but a remote
    /// namespace may hold the changes of a file made in a directory
    /// delegated to it (docs/DESIGN.md, "Delegated directories").
    fn settle_closing(&self, ino: Ino) -> Result<()> {
        self.settle(ino)
    }
    /// Forgets what is cached of `ino` here (a lock was just taken on it:
    /// another host may have changed it under the lock before).
    fn forget_cached(&self, _ino: Ino) {}
    /// The lock of another owner in the way of `want`, for `owner` on this
    /// host (`host` is what the home knows the caller by: empty at home; a
    /// remote namespace leaves it to the home, which knows the member by its
    /// peer id).
    fn getlk(&self, host: &str, ino: Ino, owner: u64, want: RangeLock)
    -> Result<Option<RangeLock>>;
    /// Takes or drops a lock; `Error::WouldBlock` when another owner's is in
    /// the way.
    fn setlk(&self, host: &str, ino: Ino, owner: u64, want: RangeLock) -> Result<()>;
    /// Takes a lock, waiting up to about `hold` for the locks in its way:
    /// `Ok(false)` if they still are (the caller asks again, after checking
    /// whether its process was interrupted); `Error::Deadlock` when waiting
    /// would close a cycle of owners (see [`super::locks::LockTable`]).
    fn setlk_wait(
        &self,
        host: &str,
        ino: Ino,
        owner: u64,
        want: RangeLock,
        hold: Duration,
    ) -> Result<bool>;
    /// Drops every lock of `owner` on `ino` (the file was closed).
    fn unlock(&self, host: &str, ino: Ino, owner: u64) -> Result<()>;
    /// Drops every lock a host holds: its mount starts afresh (the locks of
    /// a mount that died would otherwise stay forever).
    fn reset_locks(&self, host: &str) -> Result<()>;
    /// What other hosts (and this host's CLI) changed since `since`, waiting
    /// up to `wait` for a change (see [`super::changes`]).
    fn watch(&self, since: u64, wait: Duration) -> Result<Since>;
    /// Ends the waits of [`Namespace::watch`] (the mount is ending).
    fn stop_watching(&self) {}
    /// Starts the namespace's own background work under `runner`.
    fn spawn_workers(&self, _runner: &Runner) -> std::io::Result<()> {
        Ok(())
    }
    /// The RocksDB store itself, when this namespace is one (the home node):
    /// whole-volume scans (df, fsck, gc, repair) run only there.
    fn local(&self) -> Option<&MetaStore> {
        None
    }
}

impl Namespace for MetaStore {
    fn params(&self) -> &VolumeParams {
        MetaStore::params(self)
    }
    // Reads reach a snapshot's inodes through their numbers (see
    // `snapshots`); every change to one is refused.
    fn inode(&self, ino: Ino) -> Result<InodeRec> {
        self.routed_inode(ino)
    }
    // Reads and entry changes in a directory delegated to another host
    // recall it first (docs/DESIGN.md, "Delegated directories"); so does a
    // getattr of it (its link count and times move with what is made there).
    fn attr(&self, ino: Ino) -> Result<Attr> {
        self.changes().recall(&[ino]);
        self.routed_attr(ino)
    }
    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        self.changes().recall(&[parent]);
        self.routed_lookup(parent, name)
    }
    fn readdir(&self, ino: Ino, offset: u64, max: usize) -> Result<Vec<DirEntry>> {
        self.changes().recall(&[ino]);
        self.routed_readdir(ino, offset, max)
    }
    fn chunk(&self, ino: Ino, idx: u64) -> Result<Option<ChunkRef>> {
        match self.snap_of(ino)? {
            Some((db, i)) => db.chunk(i, idx),
            None => MetaStore::chunk(self, ino, idx),
        }
    }
    fn chunks_from(&self, ino: Ino, from: u64) -> Result<Vec<(u64, ChunkRef)>> {
        match self.snap_of(ino)? {
            Some((db, i)) => db.chunks_from(i, from),
            None => MetaStore::chunks_from(self, ino, from),
        }
    }
    fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        match route(ino) {
            Route::Dir => Err(crate::Error::NoXattr),
            _ => match self.snap_of(ino)? {
                Some((db, i)) => db.getxattr(i, name),
                None => MetaStore::getxattr(self, ino, name),
            },
        }
    }
    fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        match route(ino) {
            Route::Dir => Ok(Vec::new()),
            _ => match self.snap_of(ino)? {
                Some((db, i)) => db.listxattr(i),
                None => MetaStore::listxattr(self, ino),
            },
        }
    }
    fn create_node(&self, parent: Ino, name: &[u8], node: NewNode) -> Result<Attr> {
        writable(&[parent])?;
        not_reserved(parent, name, crate::Error::Exists)?;
        self.changes().recall(&[parent]);
        MetaStore::create_node(self, parent, name, node)
    }
    fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> Result<Attr> {
        writable(&[ino, parent])?;
        not_reserved(parent, name, crate::Error::Exists)?;
        self.changes().recall(&[parent]);
        MetaStore::link(self, ino, parent, name)
    }
    fn unlink(&self, parent: Ino, name: &[u8], is_open: &dyn Fn(Ino) -> bool) -> Result<()> {
        writable(&[parent])?;
        not_reserved(parent, name, crate::Error::ReadOnly)?;
        self.changes().recall(&[parent]);
        MetaStore::unlink(self, parent, name, is_open)
    }
    fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        writable(&[parent])?;
        not_reserved(parent, name, crate::Error::ReadOnly)?;
        self.changes().recall(&[parent]);
        MetaStore::rmdir(self, parent, name)
    }
    fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
        is_open: &dyn Fn(Ino) -> bool,
    ) -> Result<()> {
        writable(&[parent, new_parent])?;
        not_reserved(parent, name, crate::Error::ReadOnly)?;
        not_reserved(new_parent, new_name, crate::Error::Exists)?;
        self.changes().recall(&[parent, new_parent]);
        MetaStore::rename(self, parent, name, new_parent, new_name, flags, is_open)
    }
    fn setattr(&self, ino: Ino, set: &SetAttr) -> Result<Attr> {
        writable(&[ino])?;
        MetaStore::setattr(self, ino, set)
    }
    fn commit_chunks(
        &self,
        ino: Ino,
        chunks: Vec<(u64, Option<ChunkRef>)>,
        size: u64,
        mtime: Option<Timestamp>,
    ) -> Result<Attr> {
        writable(&[ino])?;
        MetaStore::commit_chunks(self, ino, chunks, size, mtime)
    }
    fn truncate(
        &self,
        ino: Ino,
        size: u64,
        tail: Option<(u64, Option<ChunkRef>)>,
        set: &SetAttr,
    ) -> Result<Attr> {
        writable(&[ino])?;
        MetaStore::truncate(self, ino, size, tail, set)
    }
    fn setxattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> Result<()> {
        writable(&[ino])?;
        MetaStore::setxattr(self, ino, name, value, create, replace)
    }
    fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        writable(&[ino])?;
        MetaStore::removexattr(self, ino, name)
    }
    fn watch(&self, since: u64, wait: Duration) -> Result<Since> {
        // Here, the home's own mount: changes of other origins.
        Ok(self.changes().since(since, "", wait))
    }
    fn stop_watching(&self) {
        self.changes().close();
    }
    fn release_orphan(&self, ino: Ino) -> Result<()> {
        if is_snapshot(ino) {
            return Ok(());
        }
        MetaStore::release_orphan(self, ino)
    }
    fn sync(&self) -> Result<()> {
        MetaStore::sync(self)
    }
    fn getlk(
        &self,
        host: &str,
        ino: Ino,
        owner: u64,
        want: RangeLock,
    ) -> Result<Option<RangeLock>> {
        let owner = LockOwner::new(host, owner);
        Ok(self.locks.test(ino, &owner, &want))
    }
    fn setlk(&self, host: &str, ino: Ino, owner: u64, want: RangeLock) -> Result<()> {
        let owner = LockOwner::new(host, owner);
        self.locks.set(ino, &owner, want)
    }
    fn setlk_wait(
        &self,
        host: &str,
        ino: Ino,
        owner: u64,
        want: RangeLock,
        hold: Duration,
    ) -> Result<bool> {
        let owner = LockOwner::new(host, owner);
        self.locks.lock_or_wait(ino, &owner, want, hold)
    }
    fn unlock(&self, host: &str, ino: Ino, owner: u64) -> Result<()> {
        let owner = LockOwner::new(host, owner);
        self.locks.release(ino, &owner);
        Ok(())
    }
    fn reset_locks(&self, host: &str) -> Result<()> {
        self.locks.release_host(host);
        Ok(())
    }
    fn local(&self) -> Option<&MetaStore> {
        Some(self)
    }
}
