//! The namespace as the engine serves it: names, attributes and xattrs from
//! [`crate::meta`], with sizes and times of unsealed writes laid over them;
//! truncation, preallocation and hole punching; open and release.

use super::*;

impl Engine {
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        let attr = self.s.meta.lookup(parent, name)?;
        Ok(self.with_dirty(attr))
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        let attr = self.s.meta.attr(ino)?;
        Ok(self.with_dirty(attr))
    }

    /// Attributes as the writer sees them: size and mtime include unsealed writes.
    pub(super) fn with_dirty(&self, mut attr: Attr) -> Attr {
        if let Some(st) = self.state(attr.ino) {
            let st = lock(&st.state);
            if let Some(size) = st.size {
                attr.size = size;
                attr.blocks = attr.blocks.max(size.div_ceil(512));
            }
            if let Some(t) = st.mtime {
                attr.mtime = t;
                attr.ctime = t;
            }
        }
        attr
    }

    pub fn mkdir(&self, parent: Ino, name: &[u8], perm: u16, uid: u32, gid: u32) -> Result<Attr> {
        let node = NewNode {
            kind: FileKind::Dir,
            perm,
            uid,
            gid,
            rdev: 0,
            target: None,
        };
        self.s.meta.create_node(parent, name, node)
    }

    pub fn create(&self, parent: Ino, name: &[u8], perm: u16, uid: u32, gid: u32) -> Result<Attr> {
        self.s
            .meta
            .create_node(parent, name, file_node(perm, uid, gid))
    }

    /// Makes a regular file and opens it: one call to the namespace (one
    /// round trip from a member).
    pub fn create_open(
        &self,
        parent: Ino,
        name: &[u8],
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        let attr = self
            .s
            .meta
            .create_open(parent, name, file_node(perm, uid, gid))?;
        *lock(&self.opens).entry(attr.ino).or_default() += 1;
        Ok(attr)
    }

    /// Special files: fifos, sockets, devices (and regular files, as mknod allows).
    pub fn mknod(&self, parent: Ino, name: &[u8], node: NewNode) -> Result<Attr> {
        if matches!(node.kind, FileKind::Dir | FileKind::Symlink) || node.target.is_some() {
            return Err(Error::Invalid("mknod cannot make directories or symlinks"));
        }
        self.s.meta.create_node(parent, name, node)
    }

    pub fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        if target.is_empty() {
            return Err(Error::NotFound);
        }
        if target.len() > 4095 {
            return Err(Error::NameTooLong);
        }
        let node = NewNode {
            kind: FileKind::Symlink,
            perm: 0o777,
            uid,
            gid,
            rdev: 0,
            target: Some(target.to_vec()),
        };
        self.s.meta.create_node(parent, name, node)
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let rec = self.s.meta.inode(ino)?;
        rec.target.ok_or(Error::Invalid("not a symbolic link"))
    }

    pub fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> Result<Attr> {
        let attr = self.s.meta.link(ino, parent, name)?;
        Ok(self.with_dirty(attr))
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.s.meta.unlink(parent, name, &self.is_open())
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.s.meta.rmdir(parent, name)
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        self.s
            .meta
            .rename(parent, name, new_parent, new_name, flags, &self.is_open())
    }

    pub fn readdir(&self, ino: Ino, offset: u64, max: usize) -> Result<Vec<DirEntry>> {
        self.s.meta.readdir(ino, offset, max)
    }

    /// A page of entries with their attributes as this host sees them.
    pub fn readdir_plus(&self, ino: Ino, offset: u64, max: usize) -> Result<Vec<(DirEntry, Attr)>> {
        let page = self.s.meta.readdir_plus(ino, offset, max)?;
        Ok(page
            .into_iter()
            .map(|(e, a)| (e, self.with_dirty(a)))
            .collect())
    }

    /// What other hosts changed since `since` (see [`crate::meta::changes`]).
    pub fn watch(
        &self,
        since: u64,
        wait: std::time::Duration,
    ) -> Result<crate::meta::changes::Since> {
        self.s.meta.watch(since, wait)
    }

    /// A mark to ask [`Engine::changed_elsewhere`] from later: None where
    /// the namespace is another host's (a member device cannot tell).
    pub fn change_mark(&self) -> Option<u64> {
        self.s.meta.local().map(|m| m.changes().next())
    }

    /// Whether a host other than this one (or this host's CLI) may have
    /// changed `ino` since `mark`: always yes without a mark.
    pub fn changed_elsewhere(&self, ino: Ino, mark: Option<u64>) -> bool {
        match (self.s.meta.local(), mark) {
            (Some(m), Some(seq)) => m.changes().changed_by_others(ino, seq),
            _ => true,
        }
    }

    pub fn stop_watching(&self) {
        self.s.meta.stop_watching();
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.s.meta.getxattr(ino, name)
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.s.meta.listxattr(ino)
    }

    pub fn setxattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> Result<()> {
        self.s.meta.setxattr(ino, name, value, create, replace)
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.s.meta.removexattr(ino, name)
    }

    pub fn setattr(&self, ino: Ino, set: &SetAttr) -> Result<Attr> {
        let Some(size) = set.size else {
            if set.atime.is_some() || set.mtime.is_some() {
                // Unsealed writes carry their own mtime: seal them first so the
                // times set here are the ones that stay.
                self.flush(ino)?;
            }
            let attr = self.s.meta.setattr(ino, set)?;
            return Ok(self.with_dirty(attr));
        };
        let cell = self.state_or_new(ino);
        let st = self.flush_locked(ino, &cell, lock(&cell.state))?;
        let _span = self.s.gate.span();
        let idx = size / self.chunk_size as u64;
        let within = (size % self.chunk_size as u64) as usize;
        // The chunk the new end falls in keeps only the bytes before it.
        let tail = match self.read_chunk(ino, idx)? {
            Some(plain) if within > 0 && plain.len() > within => {
                Some((idx, Some(self.seal_and_store(&plain[..within])?)))
            }
            _ => None,
        };
        let attr = self.s.meta.truncate(ino, size, tail, set);
        drop(st);
        attr
    }

    /// Extends the file to `offset + len` (unless `keep_size`) after checking the
    /// store has room for that much data. Nothing is reserved: shards are written
    /// when data is, so a later write can still meet a full disk.
    pub fn allocate(&self, ino: Ino, offset: u64, len: u64, keep_size: bool) -> Result<()> {
        let end = offset.checked_add(len).ok_or(Error::TooBig)?;
        if end > crate::types::MAX_FILE_SIZE {
            return Err(Error::TooBig);
        }
        let attr = self.getattr(ino)?;
        if attr.kind != FileKind::File {
            return Err(Error::Invalid("not a regular file"));
        }
        let want = end.saturating_sub(attr.size);
        if want > self.statfs()?.avail_bytes {
            return Err(Error::NoSpace);
        }
        if !keep_size && end > attr.size {
            self.setattr(
                ino,
                &SetAttr {
                    size: Some(end),
                    ..Default::default()
                },
            )?;
        }
        Ok(())
    }

    /// Zeroes `[offset, offset + len)` within the file, keeping its size: whole
    /// chunks become holes, the chunks at either edge are rewritten.
    pub fn punch_hole(&self, ino: Ino, offset: u64, len: u64) -> Result<()> {
        let cell = self.state_or_new(ino);
        let st = self.flush_locked(ino, &cell, lock(&cell.state))?;
        let _span = self.s.gate.span();
        let rec = self.s.meta.inode(ino)?;
        if rec.kind != FileKind::File {
            return Err(Error::Invalid("not a regular file"));
        }
        let end = offset.saturating_add(len).min(rec.size);
        if offset >= end {
            return Ok(());
        }
        let cs = self.chunk_size as u64;
        let mut changes = Vec::new();
        for idx in offset / cs..end.div_ceil(cs) {
            let (from, to) = (
                offset.max(idx * cs) - idx * cs,
                end.min((idx + 1) * cs) - idx * cs,
            );
            let Some(plain) = self.read_chunk(ino, idx)? else {
                continue; // already a hole
            };
            if from == 0 && to as usize >= plain.len() {
                changes.push((idx, None));
                continue;
            }
            let (from, to) = (from as usize, (to as usize).min(plain.len()));
            if from >= to {
                continue; // past this chunk's stored bytes: already zeros
            }
            let mut buf = plain.to_vec();
            buf[from..to].fill(0);
            changes.push((idx, self.s.seal_or_hole(&buf)?));
        }
        let res = self
            .s
            .meta
            .commit_chunks(ino, changes, rec.size, Some(Timestamp::now()));
        drop(st);
        res.map(drop)
    }

    /// Refuses a write to a snapshot's file (`ReadOnly`) before it is opened.
    pub fn writable(&self, ino: Ino) -> Result<()> {
        if crate::meta::snapshots::is_snapshot(ino) {
            return Err(Error::ReadOnly);
        }
        Ok(())
    }

    pub fn open(&self, ino: Ino) -> Result<Attr> {
        let attr = match self.s.meta.opened(ino)? {
            Some(a) => self.with_dirty(a),
            None => self.getattr(ino)?,
        };
        *lock(&self.opens).entry(ino).or_default() += 1;
        Ok(attr)
    }

    /// The last release of an inode seals its writes and frees it if unlinked meanwhile.
    pub fn release(&self, ino: Ino) -> Result<()> {
        let res = self.flush_closing(ino);
        let told = self.s.meta.released(ino);
        let last = {
            let mut opens = lock(&self.opens);
            match opens.get_mut(&ino) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    opens.remove(&ino);
                    true
                }
                None => false,
            }
        };
        if last {
            {
                let mut files = lock(&self.files);
                if files.get(&ino).is_some_and(|c| lock(&c.state).idle()) {
                    files.remove(&ino);
                }
            }
            lock(&self.readahead).remove(&ino);
            lock(&self.locked).remove(&ino);
            self.s.meta.release_orphan(ino)?;
        }
        res.and(told)
    }

    /// The lock in the way of `want` for `owner` (this host's kernel lock
    /// owner), if any; locks are kept by the home node for every host.
    pub fn getlk(&self, owner: u64, ino: Ino, want: RangeLock) -> Result<Option<RangeLock>> {
        self.s.meta.getlk("", ino, owner, want)
    }

    /// Takes or drops a lock (`Error::WouldBlock` when another owner, on any
    /// host, holds a conflicting one).
    pub fn setlk(&self, owner: u64, ino: Ino, want: RangeLock) -> Result<()> {
        if want.typ != libc::F_UNLCK {
            lock(&self.locked).insert(ino);
        }
        self.s.meta.setlk("", ino, owner, want)
    }

    /// Takes a lock, waiting up to about `hold` for it: `Ok(false)` if it is
    /// still taken then (see [`crate::meta::Namespace::setlk_wait`]).
    pub fn setlk_wait(
        &self,
        owner: u64,
        ino: Ino,
        want: RangeLock,
        hold: std::time::Duration,
    ) -> Result<bool> {
        lock(&self.locked).insert(ino);
        self.s.meta.setlk_wait("", ino, owner, want, hold)
    }

    /// Forgets what is cached of `ino`'s metadata here (its chunk map and
    /// record, on a member device); decoded chunks are named by their
    /// contents and stay.
    pub fn forget_cached(&self, ino: Ino) {
        self.s.meta.forget_cached(ino);
    }

    /// Drops `owner`'s locks on `ino`: its file was closed.
    pub fn unlock(&self, owner: u64, ino: Ino) -> Result<()> {
        if !lock(&self.locked).contains(&ino) {
            return Ok(());
        }
        self.s.meta.unlock("", ino, owner)
    }

    pub fn statfs(&self) -> Result<FsStats> {
        let (total, avail) = self.s.store.capacity()?;
        // Each stored byte costs (k+m)/k bytes of disk: report what files can still use.
        let k = self.s.codec.data_shards() as u64;
        let n = self.s.codec.total_shards() as u64;
        Ok(FsStats {
            block_size: 4096,
            total_bytes: total / n * k,
            free_bytes: avail / n * k,
            avail_bytes: avail / n * k,
            files: u32::MAX as u64,
            free_files: u32::MAX as u64 / 2,
            name_max: NAME_MAX as u32,
        })
    }
}

fn file_node(perm: u16, uid: u32, gid: u32) -> NewNode {
    NewNode {
        kind: FileKind::File,
        perm,
        uid,
        gid,
        rdev: 0,
        target: None,
    }
}
