//! The namespace in RocksDB: inodes, directory entries, chunk maps, xattrs, shard
//! reference counts and orphans (see `schema`).
//!
//! Invariants: every operation reads under one writer lock and commits exactly one
//! `WriteBatch`, so a crash leaves the old state or the new one, never a mix; shard
//! reference counts change in the same batch as the chunk maps that hold them; an
//! inode with no links that is still open is an orphan, freed at last release or at
//! the next open of the volume.

mod cache;
pub mod schema;
mod tx;

use crate::chunk::{ChunkRef, ShardId};
use crate::error::{Error, Result};
use crate::types::*;
use cache::{Cached, MetaCache};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteOptions,
};
use schema::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use tx::Tx;

pub use schema::{InodeRec, RefRec, VolumeParams};

/// What a new inode is.
#[derive(Clone, Debug)]
pub struct NewNode {
    pub kind: FileKind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub target: Option<Vec<u8>>,
}

pub struct MetaStore {
    db: DB,
    writer: Mutex<()>,
    params: VolumeParams,
    cache: MetaCache,
}

/// Inode records and directory entries kept in memory (each).
const CACHE_ENTRIES: usize = 65_536;

fn db_err(e: rocksdb::Error) -> Error {
    Error::Db(e.into_string())
}

fn decode<'a, T: serde::Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::Corrupt(format!("{what} record: {e}")))
}

pub fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(Error::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(Error::Invalid("not a valid file name"));
    }
    Ok(())
}

impl MetaStore {
    /// Open the namespace at `path`, creating it with `create` when it does not exist.
    /// Orphans left by a crash are freed here.
    pub fn open(path: &Path, create: Option<VolumeParams>) -> Result<MetaStore> {
        let mut opts = Options::default();
        opts.create_if_missing(create.is_some());
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(4);
        opts.set_max_total_wal_size(16 << 20);
        opts.increase_parallelism(2);
        // RocksDB preallocates WAL and table files at about their target size: with the
        // 64 MiB defaults that is disk a nearly full volume cannot give.
        opts.set_write_buffer_size(8 << 20);
        opts.set_target_file_size_base(8 << 20);
        let cf_opts = || {
            let mut o = Options::default();
            o.set_write_buffer_size(8 << 20);
            o.set_target_file_size_base(8 << 20);
            o
        };
        let cfs = ALL_CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, cf_opts()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| {
            let msg = e.into_string();
            if msg.contains("lock") {
                Error::Db(format!(
                    "{}: the volume is in use by another datamesh process ({msg})",
                    path.display()
                ))
            } else {
                Error::Db(format!("{}: {msg}", path.display()))
            }
        })?;
        let cf = db.cf_handle(CF_META).expect("meta cf");
        let params = match db.get_cf(cf, KEY_FORMAT).map_err(db_err)? {
            Some(v) => {
                let version = u32::from_be_bytes(
                    v.as_slice()
                        .try_into()
                        .map_err(|_| Error::Corrupt("format row".into()))?,
                );
                if version != FORMAT_VERSION {
                    return Err(Error::Corrupt(format!(
                        "metadata format {version}; this datamesh reads format {FORMAT_VERSION}"
                    )));
                }
                let raw = db
                    .get_cf(cf, KEY_PARAMS)
                    .map_err(db_err)?
                    .ok_or_else(|| Error::Corrupt("volume parameters missing".into()))?;
                decode("volume parameters", &raw)?
            }
            None => {
                let params = create
                    .ok_or_else(|| Error::Corrupt(format!("{}: not a volume", path.display())))?;
                Self::format(&db, &params)?;
                params
            }
        };
        let store = MetaStore {
            db,
            writer: Mutex::new(()),
            params,
            cache: MetaCache::new(CACHE_ENTRIES),
        };
        store.free_orphans()?;
        Ok(store)
    }

    fn format(db: &DB, params: &VolumeParams) -> Result<()> {
        let now = Timestamp::now();
        let root = InodeRec {
            kind: FileKind::Dir,
            perm: 0o755,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            nlink: 2,
            rdev: 0,
            parent: Ino::ROOT.0,
            allocated: 0,
            target: None,
        };
        let mut b = rocksdb::WriteBatch::default();
        let cf = |n| db.cf_handle(n).expect("cf exists");
        b.put_cf(cf(CF_INODES), ino_key(Ino::ROOT), encode(&root));
        b.put_cf(cf(CF_META), KEY_PARAMS, encode(params));
        b.put_cf(cf(CF_META), KEY_NEXT_INO, 2u64.to_be_bytes());
        b.put_cf(cf(CF_META), KEY_FORMAT, FORMAT_VERSION.to_be_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        db.write_opt(b, &wo).map_err(db_err)
    }

    pub fn params(&self) -> &VolumeParams {
        &self.params
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column family exists")
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        crate::util::lock(&self.writer)
    }

    fn tx(&self) -> Tx<'_> {
        Tx::new(self)
    }

    /// Durability barrier for the namespace: the write-ahead log is on disk.
    pub fn sync(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(db_err)
    }

    // ---- reads -------------------------------------------------------------------

    pub fn inode(&self, ino: Ino) -> Result<InodeRec> {
        self.inode_opt(ino)?.ok_or(Error::NotFound)
    }

    fn inode_opt(&self, ino: Ino) -> Result<Option<InodeRec>> {
        let epoch = match self.cache.inode(ino) {
            Cached::Hit(rec) => return Ok(Some(rec)),
            Cached::Miss(epoch) => epoch,
        };
        match self
            .db
            .get_pinned_cf(self.cf(CF_INODES), ino_key(ino))
            .map_err(db_err)?
        {
            Some(v) => {
                let rec: InodeRec = decode("inode", &v)?;
                self.cache.fill_inode(epoch, ino, &rec);
                Ok(Some(rec))
            }
            None => Ok(None),
        }
    }

    pub fn attr(&self, ino: Ino) -> Result<Attr> {
        Ok(to_attr(ino, &self.inode(ino)?))
    }

    fn dentry(&self, parent: Ino, name: &[u8]) -> Result<Option<DentryRec>> {
        let epoch = match self.cache.dentry(parent, name) {
            Cached::Hit(d) => return Ok(d),
            Cached::Miss(epoch) => epoch,
        };
        let d = match self
            .db
            .get_pinned_cf(self.cf(CF_DENTRIES), dentry_key(parent, name))
            .map_err(db_err)?
        {
            Some(v) => Some(decode("directory entry", &v)?),
            None => None,
        };
        self.cache.fill_dentry(epoch, parent, name, d);
        Ok(d)
    }

    fn dir(&self, ino: Ino) -> Result<InodeRec> {
        let rec = self.inode(ino)?;
        if rec.kind != FileKind::Dir {
            return Err(Error::NotDir);
        }
        Ok(rec)
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        if name.len() > NAME_MAX {
            return Err(Error::NameTooLong);
        }
        let dir = self.dir(parent)?;
        match name {
            b"." => return Ok(to_attr(parent, &dir)),
            b".." => return self.attr(Ino(dir.parent)),
            _ => {}
        }
        let d = self.dentry(parent, name)?.ok_or(Error::NotFound)?;
        self.attr(Ino(d.ino))
    }

    /// Up to `max` entries after cookie `offset` (0 = from the start, with `.`, `..`).
    pub fn readdir(&self, ino: Ino, offset: u64, max: usize) -> Result<Vec<DirEntry>> {
        let dir = self.dir(ino)?;
        let mut out = Vec::new();
        if offset < 1 {
            out.push(DirEntry {
                ino,
                offset: 1,
                kind: FileKind::Dir,
                name: b".".to_vec(),
            });
        }
        if offset < 2 {
            let name = b"..".to_vec();
            out.push(DirEntry {
                ino: Ino(dir.parent),
                offset: 2,
                kind: FileKind::Dir,
                name,
            });
        }
        let start = dentry_seek(ino, offset.max(2) + 1);
        let mode = IteratorMode::From(&start, Direction::Forward);
        for item in self.db.iterator_cf(self.cf(CF_DENTRIES), mode) {
            if out.len() >= max {
                break;
            }
            let (k, v) = item.map_err(db_err)?;
            if k[..8] != ino.0.to_be_bytes() {
                break;
            }
            let d: DentryRec = decode("directory entry", &v)?;
            let cookie = u64::from_be_bytes(k[8..16].try_into().unwrap());
            out.push(DirEntry {
                ino: Ino(d.ino),
                offset: cookie,
                kind: d.kind,
                name: k[16..].to_vec(),
            });
        }
        Ok(out)
    }

    fn is_empty_dir(&self, ino: Ino) -> Result<bool> {
        let start = ino_key(ino);
        let mode = IteratorMode::From(&start, Direction::Forward);
        match self.db.iterator_cf(self.cf(CF_DENTRIES), mode).next() {
            Some(item) => Ok(item.map_err(db_err)?.0[..8] != start),
            None => Ok(true),
        }
    }

    pub fn chunk(&self, ino: Ino, idx: u64) -> Result<Option<ChunkRef>> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_CHUNKS), chunk_key(ino, idx))
            .map_err(db_err)?
        {
            Some(v) => Ok(Some(decode("chunk", &v)?)),
            None => Ok(None),
        }
    }

    /// The chunks of `ino` from index `from` on, in order.
    pub fn chunks_from(&self, ino: Ino, from: u64) -> Result<Vec<(u64, ChunkRef)>> {
        let mut out = Vec::new();
        self.scan_prefix(CF_CHUNKS, &chunk_key(ino, from), &ino_key(ino), |k, v| {
            out.push((
                u64::from_be_bytes(k[8..16].try_into().unwrap()),
                decode("chunk", v)?,
            ));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Calls `f(key, value)` for keys from `start` on that begin with `prefix`,
    /// while it returns true.
    fn scan_prefix(
        &self,
        cf: &str,
        start: &[u8],
        prefix: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        for item in self
            .db
            .iterator_cf(self.cf(cf), IteratorMode::From(start, Direction::Forward))
        {
            let (k, v) = item.map_err(db_err)?;
            if !k.starts_with(prefix) || !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.inode(ino)?;
        self.db
            .get_cf(self.cf(CF_XATTRS), xattr_key(ino, name))
            .map_err(db_err)?
            .ok_or(Error::NoXattr)
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.inode(ino)?;
        let mut out = Vec::new();
        self.scan_prefix(CF_XATTRS, &ino_key(ino), &ino_key(ino), |k, _| {
            out.push(k[8..].to_vec());
            Ok(true)
        })?;
        Ok(out)
    }

    // ---- namespace changes: each one WriteBatch ----------------------------------

    pub fn create_node(&self, parent: Ino, name: &[u8], node: NewNode) -> Result<Attr> {
        check_name(name)?;
        let _g = self.lock();
        let mut tx = self.tx();
        let mut dir = tx.dir(parent)?;
        if self.dentry(parent, name)?.is_some() {
            return Err(Error::Exists);
        }
        let ino = tx.alloc_ino()?;
        let now = Timestamp::now();
        let is_dir = node.kind == FileKind::Dir;
        let size = node.target.as_ref().map_or(0, |t| t.len() as u64);
        let rec = InodeRec {
            kind: node.kind,
            perm: node.perm & 0o7777,
            uid: node.uid,
            gid: node.gid,
            size,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            nlink: if is_dir { 2 } else { 1 },
            rdev: node.rdev,
            parent: if is_dir { parent.0 } else { 0 },
            allocated: 0,
            target: node.target,
        };
        if is_dir {
            dir.nlink += 1;
        }
        dir.mtime = now;
        dir.ctime = now;
        tx.put_dentry(
            parent,
            name,
            DentryRec {
                ino: ino.0,
                kind: rec.kind,
            },
        );
        tx.put_inode(parent, dir);
        tx.put_inode(ino, rec.clone());
        tx.commit()?;
        Ok(to_attr(ino, &rec))
    }

    pub fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> Result<Attr> {
        check_name(name)?;
        let _g = self.lock();
        let mut tx = self.tx();
        let mut dir = tx.dir(parent)?;
        let mut rec = tx.inode(ino)?;
        if rec.kind == FileKind::Dir {
            return Err(Error::NotPermitted);
        }
        if rec.nlink == 0 {
            return Err(Error::NotFound);
        }
        if self.dentry(parent, name)?.is_some() {
            return Err(Error::Exists);
        }
        let now = Timestamp::now();
        rec.nlink += 1;
        rec.ctime = now;
        dir.mtime = now;
        dir.ctime = now;
        tx.put_dentry(
            parent,
            name,
            DentryRec {
                ino: ino.0,
                kind: rec.kind,
            },
        );
        tx.put_inode(parent, dir);
        tx.put_inode(ino, rec.clone());
        tx.commit()?;
        Ok(to_attr(ino, &rec))
    }

    /// Remove a non-directory entry. `is_open` says whether an inode still has open
    /// handles (its data then lives on as an orphan until the last release).
    pub fn unlink(&self, parent: Ino, name: &[u8], is_open: &dyn Fn(Ino) -> bool) -> Result<()> {
        let _g = self.lock();
        let mut tx = self.tx();
        let mut dir = tx.dir(parent)?;
        let d = self.dentry(parent, name)?.ok_or(Error::NotFound)?;
        if d.kind == FileKind::Dir {
            return Err(Error::IsDir);
        }
        let now = Timestamp::now();
        dir.mtime = now;
        dir.ctime = now;
        tx.put_inode(parent, dir);
        tx.delete_dentry(parent, name);
        tx.drop_link(Ino(d.ino), now, is_open)?;
        tx.commit()
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        if name == b"." {
            return Err(Error::Invalid("cannot remove '.'"));
        }
        if name == b".." {
            return Err(Error::NotEmpty);
        }
        let _g = self.lock();
        let mut tx = self.tx();
        let mut dir = tx.dir(parent)?;
        let d = self.dentry(parent, name)?.ok_or(Error::NotFound)?;
        if d.kind != FileKind::Dir {
            return Err(Error::NotDir);
        }
        if !self.is_empty_dir(Ino(d.ino))? {
            return Err(Error::NotEmpty);
        }
        let now = Timestamp::now();
        dir.nlink -= 1;
        dir.mtime = now;
        dir.ctime = now;
        tx.put_inode(parent, dir);
        tx.delete_dentry(parent, name);
        tx.free_inode(Ino(d.ino))?;
        tx.commit()
    }

    /// `rename(2)` with RENAME_NOREPLACE and RENAME_EXCHANGE, as one batch.
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
        is_open: &dyn Fn(Ino) -> bool,
    ) -> Result<()> {
        check_name(new_name)?;
        if flags.exchange && flags.noreplace {
            return Err(Error::Invalid("RENAME_EXCHANGE with RENAME_NOREPLACE"));
        }
        let _g = self.lock();
        let mut tx = self.tx();
        tx.dir(parent)?;
        tx.dir(new_parent)?;
        let src = self.dentry(parent, name)?.ok_or(Error::NotFound)?;
        let dst = self.dentry(new_parent, new_name)?;
        let now = Timestamp::now();
        // Moving a directory under itself would cut the subtree off from the root.
        if src.kind == FileKind::Dir && parent != new_parent {
            self.check_not_ancestor(&mut tx, Ino(src.ino), new_parent)?;
        }
        if let Some(dst) = dst
            && dst.kind == FileKind::Dir
            && flags.exchange
            && parent != new_parent
        {
            self.check_not_ancestor(&mut tx, Ino(dst.ino), parent)?;
        }
        match (dst, flags.exchange) {
            (None, true) => return Err(Error::NotFound),
            (Some(_), _) if flags.noreplace => return Err(Error::Exists),
            (Some(dst), true) => {
                tx.put_dentry(parent, name, dst);
                tx.put_dentry(new_parent, new_name, src);
                if parent != new_parent {
                    self.reparent(&mut tx, src, parent, new_parent)?;
                    self.reparent(&mut tx, dst, new_parent, parent)?;
                }
                for ino in [src.ino, dst.ino] {
                    let mut rec = tx.inode(Ino(ino))?;
                    rec.ctime = now;
                    tx.put_inode(Ino(ino), rec);
                }
            }
            (Some(dst), false) if dst.ino == src.ino => return Ok(()),
            (dst, false) => {
                if let Some(dst) = dst {
                    match (src.kind == FileKind::Dir, dst.kind == FileKind::Dir) {
                        (true, false) => return Err(Error::NotDir),
                        (false, true) => return Err(Error::IsDir),
                        (true, true) => {
                            if !self.is_empty_dir(Ino(dst.ino))? {
                                return Err(Error::NotEmpty);
                            }
                            let mut np = tx.inode(new_parent)?;
                            np.nlink -= 1;
                            tx.put_inode(new_parent, np);
                            tx.free_inode(Ino(dst.ino))?;
                        }
                        (false, false) => tx.drop_link(Ino(dst.ino), now, is_open)?,
                    }
                }
                tx.delete_dentry(parent, name);
                tx.put_dentry(new_parent, new_name, src);
                if parent != new_parent {
                    self.reparent(&mut tx, src, parent, new_parent)?;
                }
                let mut rec = tx.inode(Ino(src.ino))?;
                rec.ctime = now;
                tx.put_inode(Ino(src.ino), rec);
            }
        }
        for p in [parent, new_parent] {
            let mut rec = tx.inode(p)?;
            rec.mtime = now;
            rec.ctime = now;
            tx.put_inode(p, rec);
        }
        tx.commit()
    }

    fn check_not_ancestor(&self, tx: &mut Tx<'_>, moving: Ino, dest: Ino) -> Result<()> {
        let mut cur = dest;
        loop {
            if cur == moving {
                return Err(Error::Invalid("cannot move a directory into itself"));
            }
            if cur == Ino::ROOT {
                return Ok(());
            }
            cur = Ino(tx.inode(cur)?.parent);
        }
    }

    /// A directory moved from `from` to `to`: fix its `..` and both link counts.
    fn reparent(&self, tx: &mut Tx<'_>, d: DentryRec, from: Ino, to: Ino) -> Result<()> {
        if d.kind != FileKind::Dir {
            return Ok(());
        }
        let mut rec = tx.inode(Ino(d.ino))?;
        rec.parent = to.0;
        tx.put_inode(Ino(d.ino), rec);
        let mut f = tx.inode(from)?;
        f.nlink -= 1;
        tx.put_inode(from, f);
        let mut t = tx.inode(to)?;
        t.nlink += 1;
        tx.put_inode(to, t);
        Ok(())
    }

    /// Change attributes other than size (the data layer handles truncation).
    pub fn setattr(&self, ino: Ino, set: &SetAttr) -> Result<Attr> {
        let _g = self.lock();
        let mut tx = self.tx();
        let mut rec = tx.inode(ino)?;
        let now = Timestamp::now();
        apply_setattr(&mut rec, set, now);
        tx.put_inode(ino, rec.clone());
        tx.commit()?;
        Ok(to_attr(ino, &rec))
    }

    /// Store new chunk maps for `ino` (`None`: the chunk became a hole) and set its
    /// size: one batch, with the shards' reference counts.
    pub fn commit_chunks(
        &self,
        ino: Ino,
        chunks: Vec<(u64, Option<ChunkRef>)>,
        size: u64,
        mtime: Option<Timestamp>,
    ) -> Result<Attr> {
        let _g = self.lock();
        let mut tx = self.tx();
        let mut rec = tx.inode(ino)?;
        if rec.kind != FileKind::File {
            return Err(Error::IsDir);
        }
        for (idx, chunk) in chunks {
            self.replace_chunk(&mut tx, &mut rec, ino, idx, chunk)?;
        }
        rec.size = size;
        if let Some(t) = mtime {
            rec.mtime = t;
            rec.ctime = t;
        }
        tx.put_inode(ino, rec.clone());
        tx.commit()?;
        Ok(to_attr(ino, &rec))
    }

    fn replace_chunk(
        &self,
        tx: &mut Tx<'_>,
        rec: &mut InodeRec,
        ino: Ino,
        idx: u64,
        chunk: Option<ChunkRef>,
    ) -> Result<()> {
        if let Some(old) = self.chunk(ino, idx)? {
            rec.allocated -= old.plain_len() as u64;
            tx.unref(&old);
        }
        match chunk {
            Some(chunk) => {
                rec.allocated += chunk.plain_len() as u64;
                tx.put_chunk(ino, idx, &chunk);
            }
            None => tx.delete_chunk(ino, idx),
        }
        Ok(())
    }

    /// Truncate `ino` to `size`: chunks wholly past the end are dropped and the chunk
    /// that straddles it is replaced by `tail` (its data cut at the new end).
    /// Other attributes in `set` change in the same batch.
    pub fn truncate(
        &self,
        ino: Ino,
        size: u64,
        tail: Option<(u64, Option<ChunkRef>)>,
        set: &SetAttr,
    ) -> Result<Attr> {
        let chunk_size = self.params.chunk_size as u64;
        let keep = size.div_ceil(chunk_size);
        let _g = self.lock();
        let mut tx = self.tx();
        let mut rec = tx.inode(ino)?;
        match rec.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(Error::IsDir),
            _ => return Err(Error::Invalid("not a regular file")),
        }
        for (idx, old) in self.chunks_from(ino, keep)? {
            rec.allocated -= old.plain_len() as u64;
            tx.unref(&old);
            tx.delete_chunk(ino, idx);
        }
        if let Some((idx, chunk)) = tail {
            self.replace_chunk(&mut tx, &mut rec, ino, idx, chunk)?;
        }
        let now = Timestamp::now();
        if size != rec.size {
            rec.mtime = now;
        }
        rec.size = size;
        apply_setattr(&mut rec, set, now);
        tx.put_inode(ino, rec.clone());
        tx.commit()?;
        Ok(to_attr(ino, &rec))
    }

    pub fn setxattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> Result<()> {
        if name.is_empty() || name.len() > NAME_MAX {
            return Err(if name.is_empty() {
                Error::Invalid("empty attribute name")
            } else {
                Error::NameTooLong
            });
        }
        if value.len() > 64 * 1024 {
            return Err(Error::TooBig);
        }
        let _g = self.lock();
        let mut tx = self.tx();
        let mut rec = tx.inode(ino)?;
        let exists = self
            .db
            .get_pinned_cf(self.cf(CF_XATTRS), xattr_key(ino, name))
            .map_err(db_err)?
            .is_some();
        if create && exists {
            return Err(Error::Exists);
        }
        if replace && !exists {
            return Err(Error::NoXattr);
        }
        rec.ctime = Timestamp::now();
        tx.put_inode(ino, rec);
        tx.batch
            .put_cf(self.cf(CF_XATTRS), xattr_key(ino, name), value);
        tx.commit()
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        let _g = self.lock();
        let mut tx = self.tx();
        let mut rec = tx.inode(ino)?;
        let key = xattr_key(ino, name);
        if self
            .db
            .get_pinned_cf(self.cf(CF_XATTRS), &key)
            .map_err(db_err)?
            .is_none()
        {
            return Err(Error::NoXattr);
        }
        rec.ctime = Timestamp::now();
        tx.put_inode(ino, rec);
        tx.batch.delete_cf(self.cf(CF_XATTRS), key);
        tx.commit()
    }

    /// The last handle of `ino` closed: free it if it has no links left.
    pub fn release_orphan(&self, ino: Ino) -> Result<()> {
        let _g = self.lock();
        let mut tx = self.tx();
        match tx.inode_opt(ino)? {
            Some(rec) if rec.nlink == 0 => {
                tx.free_inode(ino)?;
                tx.commit()
            }
            _ => Ok(()),
        }
    }

    fn free_orphans(&self) -> Result<()> {
        let mut orphans = Vec::new();
        self.scan_prefix(CF_ORPHANS, &[], &[], |k, _| {
            orphans.push(ino_of_key(k));
            Ok(true)
        })?;
        for ino in orphans {
            tracing::info!(%ino, "freeing inode unlinked while open before the last shutdown");
            let _g = self.lock();
            let mut tx = self.tx();
            if tx.inode_opt(ino)?.is_some() {
                tx.free_inode(ino)?;
            } else {
                tx.batch.delete_cf(self.cf(CF_ORPHANS), ino_key(ino));
            }
            tx.commit()?;
        }
        Ok(())
    }

    // ---- whole-volume scans (df, fsck, gc) ---------------------------------------

    pub fn for_each_inode(&self, mut f: impl FnMut(Ino, &InodeRec) -> Result<()>) -> Result<()> {
        self.scan_prefix(CF_INODES, &[], &[], |k, v| {
            f(ino_of_key(k), &decode("inode", v)?)?;
            Ok(true)
        })
    }

    pub fn for_each_dentry(
        &self,
        mut f: impl FnMut(Ino, &[u8], DentryRec) -> Result<()>,
    ) -> Result<()> {
        self.scan_prefix(CF_DENTRIES, &[], &[], |k, v| {
            f(ino_of_key(k), &k[16..], decode("directory entry", v)?)?;
            Ok(true)
        })
    }

    pub fn for_each_chunk(
        &self,
        mut f: impl FnMut(Ino, u64, ChunkRef) -> Result<()>,
    ) -> Result<()> {
        self.scan_prefix(CF_CHUNKS, &[], &[], |k, v| {
            f(
                ino_of_key(k),
                u64::from_be_bytes(k[8..16].try_into().unwrap()),
                decode("chunk", v)?,
            )?;
            Ok(true)
        })
    }

    pub fn refs(&self) -> Result<HashMap<ShardId, RefRec>> {
        let mut out = HashMap::new();
        self.scan_prefix(CF_REFS, &[], &[], |k, v| {
            let id = ShardId(k.try_into().map_err(|_| Error::Corrupt("ref key".into()))?);
            out.insert(id, decode("reference count", v)?);
            Ok(true)
        })?;
        Ok(out)
    }

    pub fn orphan_count(&self) -> Result<usize> {
        let mut n = 0;
        self.scan_prefix(CF_ORPHANS, &[], &[], |_, _| {
            n += 1;
            Ok(true)
        })?;
        Ok(n)
    }

    /// Forget shards whose count has been zero since before `cutoff` (seconds since
    /// the epoch), calling `delete` on each first; rows are removed only for shards
    /// `delete` succeeded on. Runs under the writer lock, so no commit can take a new
    /// reference to a shard while it goes.
    pub fn collect_garbage(
        &self,
        cutoff: i64,
        delete: &mut dyn FnMut(&ShardId) -> Result<()>,
    ) -> Result<u64> {
        let _g = self.lock();
        let mut batch = rocksdb::WriteBatch::default();
        let mut n = 0;
        for (id, r) in self.refs()? {
            if r.count == 0 && r.zero_since <= cutoff {
                delete(&id)?;
                batch.delete_cf(self.cf(CF_REFS), ref_key(&id));
                n += 1;
            }
        }
        self.db.write(batch).map_err(db_err)?;
        Ok(n)
    }
}

pub fn apply_setattr(rec: &mut InodeRec, set: &SetAttr, now: Timestamp) {
    let resolve = |t: SetTime| match t {
        SetTime::Now => now,
        SetTime::At(t) => t,
    };
    if let Some(p) = set.perm {
        rec.perm = p & 0o7777;
    }
    if let Some(u) = set.uid {
        rec.uid = u;
    }
    if let Some(g) = set.gid {
        rec.gid = g;
    }
    if let Some(t) = set.atime {
        rec.atime = resolve(t);
    }
    if let Some(t) = set.mtime {
        rec.mtime = resolve(t);
    }
    rec.ctime = now;
}

pub fn to_attr(ino: Ino, r: &InodeRec) -> Attr {
    let blocks = match r.kind {
        FileKind::File => r.allocated.min(r.size).div_ceil(512),
        FileKind::Dir => 8,
        _ => 0,
    };
    Attr {
        ino,
        kind: r.kind,
        perm: r.perm,
        uid: r.uid,
        gid: r.gid,
        size: if r.kind == FileKind::Dir {
            4096
        } else {
            r.size
        },
        atime: r.atime,
        mtime: r.mtime,
        ctime: r.ctime,
        crtime: r.crtime,
        nlink: r.nlink,
        rdev: r.rdev,
        blocks,
    }
}
