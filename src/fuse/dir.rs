//! Directory listings for the kernel: plain (`readdir`) and with attributes
//! (`readdirplus`), filled a batch of entries at a time.

use super::DatameshFs;
use super::convert::{err, file_attr, file_type};
use crate::types::Ino;
use crate::util::lock;
use fuser::{Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Directory entries fetched from the engine per batch while filling a reply.
const READDIR_BATCH: usize = 128;

impl DatameshFs {
    /// `dir`'s entries after `offset`, as many as the kernel's buffer holds.
    pub(super) fn list(&self, dir: Ino, offset: u64, mut reply: ReplyDirectory) {
        let mut offset = offset;
        loop {
            let batch = match self.engine.readdir(dir, offset, READDIR_BATCH) {
                Ok(b) => b,
                Err(e) => return reply.error(err(&e)),
            };
            let last = batch.len() < READDIR_BATCH;
            for ent in batch {
                let name = OsStr::from_bytes(&ent.name);
                if reply.add(INodeNo(ent.ino.0), ent.offset, file_type(ent.kind), name) {
                    return reply.ok();
                }
                offset = ent.offset;
            }
            if last {
                return reply.ok();
            }
        }
    }

    /// The same with attributes. A page fetched from the namespace that the
    /// kernel's buffer could not hold is kept for its next call, which asks
    /// from where this one ended.
    pub(super) fn list_plus(&self, dir: Ino, offset: u64, mut reply: ReplyDirectoryPlus) {
        let mut offset = offset;
        loop {
            let kept = lock(&self.plus_rest).pop(&(dir, offset));
            let (page, last) = match kept {
                Some(k) => k,
                None => match self.engine.readdir_plus(dir, offset, READDIR_BATCH) {
                    Ok(p) => {
                        let last = p.len() < READDIR_BATCH;
                        (p, last)
                    }
                    Err(e) => return reply.error(err(&e)),
                },
            };
            let mut page = page.into_iter();
            while let Some((ent, a)) = page.next() {
                let name = OsStr::from_bytes(&ent.name);
                let attr = file_attr(&a);
                if reply.add(
                    INodeNo(ent.ino.0),
                    ent.offset,
                    name,
                    &self.entry_ttl,
                    &attr,
                    Generation(0),
                ) {
                    let rest = std::iter::once((ent, a)).chain(page).collect();
                    lock(&self.plus_rest).put((dir, offset), (rest, last));
                    return reply.ok();
                }
                offset = ent.offset;
            }
            if last {
                return reply.ok();
            }
        }
    }
}
