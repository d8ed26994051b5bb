//! Changing the namespace: every operation reads, checks and commits one
//! batch under the writer lock (names, links, renames, attributes, chunk maps,
//! xattrs, orphans, garbage).

use super::*;

impl MetaStore {
    pub fn create_node(&self, parent: Ino, name: &[u8], node: NewNode) -> Result<Attr> {
        self.create_node_as(parent, name, node, None)
    }

    /// `create_node`, with the inode number and time given (`made`: a file
    /// a member made in a directory delegated to it; the caller checked the
    /// number is that member's) or taken here.
    pub(super) fn create_node_as(
        &self,
        parent: Ino,
        name: &[u8],
        node: NewNode,
        made: Option<(Ino, Timestamp)>,
    ) -> Result<Attr> {
        check_name(name)?;
        let _g = self.lock();
        let mut tx = self.tx();
        let mut dir = tx.dir(parent)?;
        if self.dentry(parent, name)?.is_some() {
            return Err(Error::Exists);
        }
        let (ino, now) = match made {
            Some((ino, at)) => {
                if tx.inode_opt(ino)?.is_some() {
                    return Err(Error::Invalid("that inode number is in use"));
                }
                (ino, at)
            }
            None => (tx.alloc_ino()?, Timestamp::now()),
        };
        let is_dir = node.kind == FileKind::Dir;
        let size = node.target.as_ref().map_or(0, |t| t.len() as u64);
        // A setgid directory passes on its group, and to directories its
        // setgid bit (decided here, in the batch, so a create asks nothing first).
        let setgid = dir.perm & libc::S_ISGID as u16 != 0;
        let rec = InodeRec {
            kind: node.kind,
            perm: (node.perm
                | if setgid && is_dir {
                    libc::S_ISGID as u16
                } else {
                    0
                })
                & 0o7777,
            uid: node.uid,
            gid: if setgid { dir.gid } else { node.gid },
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

    pub(super) fn check_not_ancestor(&self, tx: &mut Tx<'_>, moving: Ino, dest: Ino) -> Result<()> {
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
    pub(super) fn reparent(&self, tx: &mut Tx<'_>, d: DentryRec, from: Ino, to: Ino) -> Result<()> {
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
        // A member sends these: each chunk once, each index within what a
        // file can address, a size a file can have.
        if size > crate::types::MAX_FILE_SIZE {
            return Err(Error::TooBig);
        }
        let last = u64::MAX / self.params.chunk_size as u64;
        let mut seen = std::collections::HashSet::with_capacity(chunks.len());
        if chunks.iter().any(|(i, _)| *i > last || !seen.insert(*i)) {
            return Err(Error::Invalid(
                "a commit names one chunk twice, or a chunk past the largest file",
            ));
        }
        let _g = self.lock();
        if self.inode(ino)?.kind != FileKind::File {
            return Err(Error::IsDir);
        }
        // More than one transaction of the engine holds: every step but the
        // last a whole write of its chunks, the size growing to cover them
        // (never past the size asked), as a long write a crash cuts short.
        let mut chunks = chunks;
        chunks.sort_by_key(|(i, _)| *i);
        let mut steps = self.chunk_steps(chunks);
        let last = steps.pop().unwrap_or_default();
        let chunk_size = self.params.chunk_size as u64;
        for step in steps {
            let mut tx = self.tx();
            let mut rec = tx.inode(ino)?;
            let end = step.last().map_or(0, |(i, _)| (i + 1) * chunk_size);
            for (idx, chunk) in step {
                self.replace_chunk(&mut tx, &mut rec, ino, idx, chunk)?;
            }
            rec.size = rec.size.max(end.min(size));
            tx.put_inode(ino, rec);
            tx.commit()?;
        }
        let mut tx = self.tx();
        let mut rec = tx.inode(ino)?;
        for (idx, chunk) in last {
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

    pub(super) fn replace_chunk(
        &self,
        tx: &mut Tx<'_>,
        rec: &mut InodeRec,
        ino: Ino,
        idx: u64,
        chunk: Option<ChunkRef>,
    ) -> Result<()> {
        if let Some(old) = tx.chunk(ino, idx)? {
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
        if size > crate::types::MAX_FILE_SIZE {
            return Err(Error::TooBig);
        }
        let chunk_size = self.params.chunk_size as u64;
        let keep = size.div_ceil(chunk_size);
        // The tail is the chunk the new end falls inside, cut there.
        if let Some((idx, chunk)) = &tail {
            let within = size % chunk_size;
            let fits = chunk
                .as_ref()
                .is_none_or(|c| c.plain_len() as u64 <= within);
            if within == 0 || *idx + 1 != keep || !fits {
                return Err(Error::Invalid(
                    "a truncation's tail is not the chunk its new end falls in, cut there",
                ));
            }
        }
        let _g = self.lock();
        match self.inode(ino)?.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(Error::IsDir),
            _ => return Err(Error::Invalid("not a regular file")),
        }
        // More chunks to drop than one transaction holds: all but the last
        // step's worth first, each step a shorter file.
        self.shrink_in_steps(ino, keep)?;
        let mut tx = self.tx();
        let mut rec = tx.inode(ino)?;
        for (idx, old) in tx.chunks_from(ino, keep)? {
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
        let exists = self.db.get(CF_XATTRS, &xattr_key(ino, name))?.is_some();
        if create && exists {
            return Err(Error::Exists);
        }
        if replace && !exists {
            return Err(Error::NoXattr);
        }
        rec.ctime = Timestamp::now();
        tx.put_inode(ino, rec);
        tx.batch.put(CF_XATTRS, xattr_key(ino, name), value);
        tx.commit()
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        let _g = self.lock();
        let mut tx = self.tx();
        let mut rec = tx.inode(ino)?;
        let key = xattr_key(ino, name);
        if self.db.get(CF_XATTRS, &key)?.is_none() {
            return Err(Error::NoXattr);
        }
        rec.ctime = Timestamp::now();
        tx.put_inode(ino, rec);
        tx.batch.delete(CF_XATTRS, key);
        tx.commit()
    }

    /// The last handle of `ino` closed: free it if it has no links left.
    pub fn release_orphan(&self, ino: Ino) -> Result<()> {
        let _g = self.lock();
        match self.tx().inode_opt(ino)? {
            Some(rec) if rec.nlink == 0 => self.free_in_steps(ino),
            _ => Ok(()),
        }
    }

    pub(super) fn free_orphans(&self) -> Result<()> {
        let mut orphans = Vec::new();
        self.scan_prefix(CF_ORPHANS, &[], &[], |k, _| {
            orphans.push(ino_of_key(k));
            Ok(true)
        })?;
        for ino in orphans {
            tracing::info!(%ino, "freeing inode unlinked while open before the last shutdown");
            let _g = self.lock();
            self.free_in_steps(ino)?;
        }
        Ok(())
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
        let pinned = self.snapshot_pins()?;
        let _g = self.lock();
        // Counts still pending are applied before any is read as zero.
        self.apply_pending()?;
        let group = self.step_chunks().unwrap_or(usize::MAX);
        let mut batch = Txn::default();
        let mut n = 0;
        for (id, r) in self.refs()? {
            // A shard a snapshot holds stays (its row too, for when the
            // snapshot goes).
            if r.count == 0 && r.zero_since <= cutoff && !pinned.contains(&id) {
                delete(&id)?;
                batch.delete(CF_REFS, ref_key(&id));
                n += 1;
                if batch.writes.len() >= group {
                    self.write(std::mem::take(&mut batch))?;
                }
            }
        }
        self.write(batch)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sharded(seed: u8) -> ChunkRef {
        ChunkRef::Sharded {
            key: [seed; 32],
            compressed: false,
            plain_len: 1000,
            sealed_len: 1100,
            k: 4,
            shards: (0..6).map(|i| ShardId([seed * 8 + i; 32])).collect(),
        }
    }

    /// Every reference count equals the uses the chunk maps make of its
    /// shard (what fsck checks, and what gc's safety rests on).
    fn assert_counts_match(m: &MetaStore) {
        let mut want: HashMap<ShardId, u64> = HashMap::new();
        m.for_each_chunk(|_, _, c| {
            for id in c.shard_ids() {
                *want.entry(*id).or_default() += 1;
            }
            Ok(())
        })
        .unwrap();
        let have: HashMap<ShardId, u64> = m
            .refs()
            .unwrap()
            .into_iter()
            .filter(|(_, r)| r.count > 0)
            .map(|(id, r)| (id, r.count))
            .collect();
        assert_eq!(have, want);
    }

    /// A chunk replaced twice in one operation drops the references of the
    /// one it replaces (read through the pending batch), not the stored
    /// one's twice; a commit naming one index twice, and a truncation whose
    /// tail lies past the new end, are refused and change nothing.
    #[test]
    fn reference_counts_follow_the_pending_batch_and_bad_commits_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for m in super::test_stores(dir.path()) {
            counts_follow(&m);
        }
    }

    fn counts_follow(m: &MetaStore) {
        let node = crate::meta::test_node(FileKind::File);
        let f = m.create_node(Ino::ROOT, b"f", node).unwrap().ino;
        // One chunk used twice (deduplicated): its shards count 2.
        let twice = vec![(0, Some(sharded(1))), (1, Some(sharded(1)))];
        m.commit_chunks(f, twice, 2000, None).unwrap();
        assert_counts_match(m);
        {
            let _g = m.lock();
            let mut tx = m.tx();
            let mut rec = tx.inode(f).unwrap();
            m.replace_chunk(&mut tx, &mut rec, f, 0, Some(sharded(2)))
                .unwrap();
            m.replace_chunk(&mut tx, &mut rec, f, 0, Some(sharded(3)))
                .unwrap();
            tx.put_inode(f, rec);
            tx.commit().unwrap();
        }
        assert_counts_match(m);
        assert_eq!(m.chunk(f, 1).unwrap(), Some(sharded(1)));

        let repeated = vec![(1, Some(sharded(4))), (1, None)];
        assert!(matches!(
            m.commit_chunks(f, repeated, 2000, None),
            Err(Error::Invalid(_))
        ));
        let set = SetAttr::default();
        for bad in [
            Some((1, None)),
            Some((5, None)),
            Some((0, Some(sharded(5)))),
        ] {
            assert!(matches!(
                m.truncate(f, 10, bad, &set),
                Err(Error::Invalid(_))
            ));
        }
        assert!(matches!(
            m.truncate(f, 64 << 10, Some((0, None)), &set),
            Err(Error::Invalid(_))
        ));
        assert_counts_match(m);
        assert_eq!(m.chunk(f, 1).unwrap(), Some(sharded(1)));

        // The truncation the engine makes: chunk 0 cut to the new end.
        let cut = ChunkRef::Inline {
            key: [6; 32],
            compressed: false,
            plain_len: 10,
            sealed: vec![0; 26],
        };
        m.truncate(f, 10, Some((0, Some(cut))), &set).unwrap();
        assert_counts_match(m);
        assert_eq!(m.chunk(f, 1).unwrap(), None);
    }
}
