//! Reading the namespace: inodes (through the cache), names, directory
//! listings, chunk maps, xattrs, and the scans fsck and gc use.

use super::*;

impl MetaStore {
    pub fn inode(&self, ino: Ino) -> Result<InodeRec> {
        self.inode_opt(ino)?.ok_or(Error::NotFound)
    }

    pub(super) fn inode_opt(&self, ino: Ino) -> Result<Option<InodeRec>> {
        let epoch = match self.cache.inode(ino) {
            Cached::Hit(rec) => return Ok(Some(rec)),
            Cached::Miss(epoch) => epoch,
        };
        match self.db.get(CF_INODES, &ino_key(ino))? {
            Some((v, _)) => {
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

    pub(super) fn dentry(&self, parent: Ino, name: &[u8]) -> Result<Option<DentryRec>> {
        let epoch = match self.cache.dentry(parent, name) {
            Cached::Hit(d) => return Ok(d),
            Cached::Miss(epoch) => epoch,
        };
        let d = match self.db.get(CF_DENTRIES, &dentry_key(parent, name))? {
            Some((v, _)) => Some(decode("directory entry", &v)?),
            None => None,
        };
        self.cache.fill_dentry(epoch, parent, name, d);
        Ok(d)
    }

    pub(super) fn dir(&self, ino: Ino) -> Result<InodeRec> {
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
        self.scan_prefix(CF_DENTRIES, &start, &ino.0.to_be_bytes(), |k, v| {
            if out.len() >= max {
                return Ok(false);
            }
            let d: DentryRec = decode("directory entry", v)?;
            let cookie = u64::from_be_bytes(k[8..16].try_into().unwrap());
            out.push(DirEntry {
                ino: Ino(d.ino),
                offset: cookie,
                kind: d.kind,
                name: k[16..].to_vec(),
            });
            Ok(true)
        })?;
        Ok(out)
    }

    pub(super) fn is_empty_dir(&self, ino: Ino) -> Result<bool> {
        let mut empty = true;
        self.scan_prefix(CF_DENTRIES, &ino_key(ino), &ino_key(ino), |_, _| {
            empty = false;
            Ok(false)
        })?;
        Ok(empty)
    }

    pub fn chunk(&self, ino: Ino, idx: u64) -> Result<Option<ChunkRef>> {
        match self.db.get(CF_CHUNKS, &chunk_key(ino, idx))? {
            Some((v, _)) => Ok(Some(decode("chunk", &v)?)),
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
    pub(super) fn scan_prefix(
        &self,
        table: Table,
        start: &[u8],
        prefix: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        self.db.scan(table, start, prefix, &mut f)
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.inode(ino)?;
        self.db
            .get(CF_XATTRS, &xattr_key(ino, name))?
            .map(|(v, _)| v)
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
}
