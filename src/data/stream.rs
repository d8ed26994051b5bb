//! Bulk writes: a whole file from a reader, sealed on all cores with bounded memory.

use super::Engine;
use crate::chunk::ChunkRef;
use crate::error::{Error, Result};
use crate::types::{FileKind, Ino, SetAttr, Timestamp};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};

type Sealed = Result<(u64, usize, Option<ChunkRef>)>;

impl Engine {
    /// Replace the contents of regular file `ino` with all of `src`. Chunks are
    /// sealed in parallel (at most two per core in flight) and committed in order,
    /// so a reader sees a growing prefix; `progress` gets the bytes committed so far.
    pub fn write_stream(
        &self,
        ino: Ino,
        src: &mut (dyn Read + Send),
        workers: usize,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        // Shards stored by the workers are committed in batches by this thread.
        let _span = self.s.gate.span();
        self.setattr(
            ino,
            &SetAttr {
                size: Some(0),
                ..Default::default()
            },
        )?;
        let workers = workers.max(1);
        let cs = self.chunk_size;
        std::thread::scope(|s| {
            let (work_tx, work_rx) = sync_channel::<(u64, Vec<u8>)>(workers);
            let (done_tx, done_rx) = sync_channel::<Sealed>(workers * 2);
            let work_rx = Arc::new(Mutex::new(work_rx));
            for _ in 0..workers {
                let (work_rx, done_tx) = (work_rx.clone(), done_tx.clone());
                s.spawn(move || {
                    loop {
                        let next = crate::util::lock(&work_rx).recv();
                        let Ok((idx, buf)) = next else { break };
                        let len = buf.len();
                        let res = if buf.iter().all(|&b| b == 0) {
                            Ok((idx, len, None))
                        } else {
                            self.seal_and_store_owned(buf).map(|c| (idx, len, Some(c)))
                        };
                        if done_tx.send(res).is_err() {
                            break;
                        }
                    }
                });
            }
            let reader_done = done_tx.clone();
            drop(done_tx);
            s.spawn(move || {
                for idx in 0.. {
                    match read_full(src, cs) {
                        Ok(buf) if buf.is_empty() => break,
                        Ok(buf) => {
                            let last = buf.len() < cs;
                            if work_tx.send((idx, buf)).is_err() || last {
                                break;
                            }
                        }
                        Err(e) => {
                            let _ = reader_done.send(Err(Error::Io(e)));
                            break;
                        }
                    }
                }
            });
            self.commit_in_order(ino, done_rx, progress)
        })
    }

    /// Copy all of file `ino` to `dst`, fetching and decoding `workers` chunks at a
    /// time in parallel.
    pub fn read_stream(
        &self,
        ino: Ino,
        dst: &mut dyn Write,
        workers: usize,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        self.flush(ino)?;
        let size = self.getattr(ino)?.size;
        let cs = self.chunk_size as u64;
        let nchunks = size.div_ceil(cs);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers.max(1))
            .build()
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let mut idx = 0;
        while idx < nchunks {
            let window: Vec<u64> = (idx..nchunks.min(idx + workers.max(1) as u64 * 2)).collect();
            let bufs: Vec<Vec<u8>> = pool.install(|| {
                window
                    .par_iter()
                    .map(|&i| self.read(ino, i * cs, cs as usize))
                    .collect::<Result<_>>()
            })?;
            for buf in bufs {
                dst.write_all(&buf)?;
            }
            idx += window.len() as u64;
            progress((idx * cs).min(size));
        }
        dst.flush()?;
        Ok(size)
    }

    fn commit_in_order(
        &self,
        ino: Ino,
        done: Receiver<Sealed>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        let cs = self.chunk_size as u64;
        let mut pending = BTreeMap::new();
        let mut next = 0u64;
        let mut size = 0u64;
        for res in done.iter() {
            let (idx, len, chunk) = res?;
            pending.insert(idx, (len, chunk));
            let mut batch = Vec::new();
            while let Some((len, chunk)) = pending.remove(&next) {
                size = next * cs + len as u64;
                batch.push((next, chunk));
                next += 1;
            }
            if !batch.is_empty() {
                self.s
                    .meta
                    .commit_chunks(ino, batch, size, Some(Timestamp::now()))?;
                progress(size);
            }
        }
        Ok(size)
    }
}

/// A file whose chunks a member device sealed and stored itself.
pub struct CommittedFile<'a> {
    pub dir: Ino,
    pub name: &'a [u8],
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Chunks by index; indexes not listed are holes.
    pub chunks: Vec<(u64, ChunkRef)>,
}

impl Engine {
    /// Puts a file whose chunks are stored already: a hidden temporary name
    /// gets the whole chunk map in one commit, then is renamed over `name`,
    /// so the namespace holds the old file or the new one. Refused when this
    /// process's gc deleted one of the shards (they had no references yet
    /// when it ran): the caller puts the file again.
    pub fn commit_file(&self, f: CommittedFile) -> Result<()> {
        let cs = self.chunk_size as u64;
        if f.chunks
            .iter()
            .any(|(idx, _)| idx.saturating_mul(cs) >= f.size.max(1))
        {
            return Err(Error::Invalid("a chunk past the end of the file"));
        }
        put_target(self.lookup(f.dir, f.name))?;
        let refs: Vec<ChunkRef> = f.chunks.iter().map(|(_, c)| c.clone()).collect();
        self.commit_stored(&refs, || self.put_committed(f))
    }

    /// Runs `commit`, which references `chunks` stored by another process (a
    /// member device), with gc kept out; refused when this process's gc
    /// deleted one of their shards already (they had no references when it
    /// ran): the caller stores them again.
    pub fn commit_stored<T>(
        &self,
        chunks: &[ChunkRef],
        commit: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        // Held until the map is committed: gc deletes nothing meanwhile.
        let _span = self.s.gate.span();
        {
            let collected = crate::util::lock(&self.s.collected);
            if chunks
                .iter()
                .flat_map(|c| c.shard_ids())
                .any(|id| collected.contains(id))
            {
                return Err(Error::Remote(
                    crate::error::Kind::Other,
                    "gc deleted some of this file's shards while it was being written: \
                     nothing was changed; write it again"
                        .into(),
                ));
            }
        }
        commit()
    }

    fn put_committed(&self, f: CommittedFile) -> Result<()> {
        let chunks = f.chunks.into_iter().map(|(i, c)| (i, Some(c))).collect();
        self.put_via_temp(f.dir, f.name, f.perm, f.uid, f.gid, |ino| {
            self.s
                .meta
                .commit_chunks(ino, chunks, f.size, Some(Timestamp::now()))
                .map(drop)
        })
    }

    /// Makes a file at `name` in `dir` through a hidden temporary name beside
    /// it: `fill` gives the new inode its contents, then it is renamed over
    /// `name`; on any failure the temporary name is removed. The namespace
    /// holds the old file or the new one, never part of one.
    pub fn put_via_temp(
        &self,
        dir: Ino,
        name: &[u8],
        perm: u16,
        uid: u32,
        gid: u32,
        fill: impl FnOnce(Ino) -> Result<()>,
    ) -> Result<()> {
        let tmp = hidden_temp(name, "put");
        let attr = self.create(dir, &tmp, perm, uid, gid)?;
        let res = fill(attr.ino)
            .and_then(|()| self.rename(dir, &tmp, dir, name, crate::types::RenameFlags::default()));
        if res.is_err() {
            let _ = self.unlink(dir, &tmp);
        }
        res
    }

    /// A regular file's size and every chunk it has (holes are not listed),
    /// after its unsealed writes landed: what a member device reads it by.
    pub fn chunk_map(&self, ino: Ino) -> Result<(u64, Vec<(u64, ChunkRef)>)> {
        self.flush(ino)?;
        let attr = self.getattr(ino)?;
        if attr.kind != FileKind::File {
            return Err(if attr.kind == FileKind::Dir {
                Error::IsDir
            } else {
                Error::Invalid("not a regular file")
            });
        }
        Ok((attr.size, self.s.meta.chunks_from(ino, 0)?))
    }
}

/// Whether a file may be put at a name whose lookup gave `found`: nothing
/// there, or a regular file to replace.
pub fn put_target(found: Result<crate::types::Attr>) -> Result<()> {
    match found {
        Ok(a) if a.kind == FileKind::Dir => Err(Error::IsDir),
        Ok(a) if a.kind != FileKind::File => {
            Err(Error::Invalid("exists and is not a regular file"))
        }
        Ok(_) | Err(Error::NotFound) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Read up to `n` bytes, fewer only at the end of the input.
fn read_full(src: &mut dyn Read, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(n + crate::chunk::SEAL_HEADROOM);
    buf.resize(n, 0);
    let got = crate::util::read_up_to(src, &mut buf)?;
    buf.truncate(got);
    Ok(buf)
}

/// A hidden name beside `name` for a file being made, `.NAME.KIND-XXXXXXXX`
/// (8 random hex digits). A long name is cut, never the random part, so two
/// makers of one long name do not meet.
pub fn hidden_temp(name: &[u8], kind: &str) -> Vec<u8> {
    let suffix = format!(".{kind}-{:08x}", rand::random::<u32>());
    let keep = name
        .len()
        .min(crate::types::NAME_MAX.saturating_sub(1 + suffix.len()));
    let mut tmp = Vec::with_capacity(1 + keep + suffix.len());
    tmp.push(b'.');
    tmp.extend_from_slice(&name[..keep]);
    tmp.extend_from_slice(suffix.as_bytes());
    tmp
}

#[cfg(test)]
mod tests {
    use super::hidden_temp;

    #[test]
    fn a_hidden_temporary_name_keeps_its_random_part_and_fits() {
        let t = hidden_temp(b"notes.txt", "put");
        assert!(t.starts_with(b".notes.txt.put-") && t.len() == 23, "{t:?}");
        // 250 bytes of a three-byte character: cut in the name, never the suffix.
        let long = "語".repeat(84).into_bytes();
        let t = hidden_temp(&long[..250], "dav");
        assert_eq!(t.len(), crate::types::NAME_MAX);
        assert_eq!(&t[t.len() - 13..t.len() - 8], b".dav-");
        assert_ne!(hidden_temp(&long, "dav"), hidden_temp(&long, "dav"));
    }
}
