//! Shards as files: `shards/ab/abcd…`. The 256 fan-out directories are made once at
//! open, so storing a shard never creates a directory.

use super::{ShardInfo, ShardStore, StoreError};
use crate::chunk::ShardId;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Free space kept back so the metadata can still commit when the disk is nearly full.
const RESERVE: u64 = 32 * 1024 * 1024;

pub struct LocalStore {
    root: PathBuf,
    tmp: PathBuf,
    /// Shards written so far, and how many of them the last finished sync
    /// covered: a sync with nothing new to cover skips the `syncfs`, so an
    /// fsync of a file whose data is all inline costs one WAL sync.
    written: AtomicU64,
    synced: AtomicU64,
}

impl LocalStore {
    pub fn open(root: &Path) -> Result<LocalStore, StoreError> {
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
        // Temp files left by a crash were never renamed into place: nothing refers to them.
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let shards = root.join("shards");
        if !shards.join("ff").is_dir() {
            for b in 0..=255u8 {
                let d = shards.join(format!("{b:02x}"));
                fs::create_dir_all(&d).map_err(|e| io_err(&d, e))?;
            }
        }
        Ok(LocalStore {
            root: root.to_path_buf(),
            tmp,
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
        })
    }

    pub fn path_of(&self, id: &ShardId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join("shards").join(&hex[0..2]).join(hex)
    }

    /// A shard's bytes as stored, for a caller that checks them itself.
    pub fn get_unverified(&self, id: &ShardId) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(id);
        fs::read(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => StoreError::Missing(*id),
            _ => io_err(&path, e),
        })
    }

    pub fn contains(&self, id: &ShardId) -> bool {
        self.path_of(id).exists()
    }

    pub fn len_of(&self, id: &ShardId) -> Option<u64> {
        fs::metadata(self.path_of(id)).ok().map(|m| m.len())
    }

    /// Up to `max` shards with ids above `after`, in id order, as
    /// `(id, length, mtime seconds)`, and whether more follow. The fan-out
    /// directories are the first byte of the id, so a page reads few of them.
    pub fn list_after(
        &self,
        after: Option<ShardId>,
        max: usize,
    ) -> (Vec<(ShardId, u64, i64)>, bool) {
        let mut out = Vec::new();
        let start = after.map_or(0, |a| a.0[0]);
        for b in start..=255u8 {
            let dir = self.root.join("shards").join(format!("{b:02x}"));
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            let mut here: Vec<(ShardId, u64, i64)> = rd
                .flatten()
                .filter_map(|e| {
                    let id = e.file_name().to_str().and_then(ShardId::from_hex)?;
                    let m = e.metadata().ok()?;
                    let mtime = std::os::unix::fs::MetadataExt::mtime(&m);
                    Some((id, m.len(), mtime))
                })
                .filter(|(id, _, _)| after.is_none_or(|a| *id > a))
                .collect();
            here.sort_unstable_by_key(|s| s.0);
            for s in here {
                if out.len() == max {
                    return (out, true);
                }
                out.push(s);
            }
        }
        (out, false)
    }

    /// Stores a shard unless it is here already; true when this call stored it
    /// (so that concurrent puts of one id count its bytes once).
    pub fn put_if_absent(&self, id: &ShardId, bytes: &[u8]) -> Result<bool, StoreError> {
        let mut fresh = false;
        self.write_with(id, bytes, &mut |tmp, dest| {
            fresh = place_if_absent(tmp, dest)?;
            if !fresh {
                fs::remove_file(tmp)?;
            }
            Ok(())
        })?;
        Ok(fresh)
    }

    /// Deletes a shard; its length when this call removed it (`None` when it
    /// was not here, or a concurrent delete took it first).
    pub fn remove(&self, id: &ShardId) -> Result<Option<u64>, StoreError> {
        let path = self.path_of(id);
        let Some(len) = self.len_of(id) else {
            return Ok(None);
        };
        match fs::remove_file(&path) {
            Ok(()) => Ok(Some(len)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    fn write_new(&self, id: &ShardId, bytes: &[u8]) -> Result<(), StoreError> {
        self.write_with(id, bytes, &mut |tmp, dest| fs::rename(tmp, dest))
    }

    /// Writes `bytes` to a temporary file, then `place`s it at the shard's name.
    fn write_with(
        &self,
        id: &ShardId,
        bytes: &[u8],
        place: &mut dyn FnMut(&Path, &Path) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        let (_, avail) = self.capacity()?;
        if avail < RESERVE + bytes.len() as u64 {
            return Err(StoreError::Full(self.root.clone()));
        }
        let dest = self.path_of(id);
        let tmp = self
            .tmp
            .join(format!("{}.{:016x}", id.to_hex(), rand::random::<u64>()));
        let res = (|| {
            // Owner-only: shards are ciphertext, but their sizes and ids are
            // still nobody else's business.
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            place(&tmp, &dest)
        })();
        if res.is_ok() {
            self.written.fetch_add(1, Ordering::Release);
        }
        res.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            if e.kind() == ErrorKind::StorageFull || e.kind() == ErrorKind::QuotaExceeded {
                StoreError::Full(self.root.clone())
            } else {
                io_err(&dest, e)
            }
        })
    }
}

/// Moves `tmp` to `dest` unless `dest` exists; false (and `tmp` left) if it
/// does. One `renameat2(RENAME_NOREPLACE)` where the filesystem has it (a
/// storage peer does this for every shard it takes), else a hard link and an
/// unlink of the temp name.
fn place_if_absent(tmp: &Path, dest: &Path) -> std::io::Result<bool> {
    use nix::errno::Errno;
    use nix::fcntl::{RenameFlags, renameat2};
    match renameat2(None, tmp, None, dest, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => return Ok(true),
        Err(Errno::EEXIST) => return Ok(false),
        Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {}
        Err(e) => return Err(e.into()),
    }
    match fs::hard_link(tmp, dest) {
        Ok(()) => fs::remove_file(tmp).map(|()| true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ShardStore for LocalStore {
    fn put(&self, id: &ShardId, bytes: &[u8]) -> Result<(), StoreError> {
        match fs::metadata(self.path_of(id)) {
            Ok(m) if m.len() == bytes.len() as u64 => Ok(()),
            _ => self.write_new(id, bytes),
        }
    }

    fn replace(&self, id: &ShardId, bytes: &[u8]) -> Result<(), StoreError> {
        self.write_new(id, bytes)
    }

    fn get(&self, id: &ShardId) -> Result<Vec<u8>, StoreError> {
        let bytes = self.get_unverified(id)?;
        if ShardId::of(&bytes) != *id {
            return Err(StoreError::Corrupt(*id));
        }
        Ok(bytes)
    }

    fn get_range(&self, id: &ShardId, offset: usize, len: usize) -> Result<Vec<u8>, StoreError> {
        use std::os::unix::fs::FileExt;
        let path = self.path_of(id);
        let f = File::open(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => StoreError::Missing(*id),
            _ => io_err(&path, e),
        })?;
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match f.read_at(&mut buf[got..], (offset + got) as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(&path, e)),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    fn delete(&self, id: &ShardId) -> Result<(), StoreError> {
        let path = self.path_of(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io_err(&path, e)),
            _ => Ok(()),
        }
    }

    fn sync(&self) -> Result<(), StoreError> {
        // Every shard counted in `written` was in place before this load, so
        // a syncfs started after it covers them all.
        let written = self.written.load(Ordering::Acquire);
        if written == self.synced.load(Ordering::Acquire) {
            return Ok(());
        }
        // One syncfs flushes every shard written since the last barrier: a grouped
        // fsync instead of one per shard file.
        let dir = File::open(&self.root).map_err(|e| io_err(&self.root, e))?;
        nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir))
            .map_err(|e| io_err(&self.root, e.into()))?;
        self.synced.fetch_max(written, Ordering::AcqRel);
        Ok(())
    }

    fn for_each(&self, f: &mut dyn FnMut(ShardInfo)) -> Result<(), StoreError> {
        let top = self.root.join("shards");
        let Ok(level1) = fs::read_dir(&top) else {
            return Ok(());
        };
        for dir in level1.flatten() {
            let rd = fs::read_dir(dir.path()).map_err(|e| io_err(&dir.path(), e))?;
            for file in rd.flatten() {
                let name = file.file_name();
                let Some(id) = name.to_str().and_then(ShardId::from_hex) else {
                    continue;
                };
                let Ok(meta) = file.metadata() else { continue };
                f(ShardInfo {
                    id,
                    len: meta.len(),
                    modified: meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                });
            }
        }
        Ok(())
    }

    fn capacity(&self) -> Result<(u64, u64), StoreError> {
        let st =
            nix::sys::statvfs::statvfs(&self.root).map_err(|e| io_err(&self.root, e.into()))?;
        let frag = st.fragment_size() as u64;
        Ok((
            st.blocks() as u64 * frag,
            st.blocks_available() as u64 * frag,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node counts a shard's bytes once however many puts or deletes of it
    /// race: exactly one of them is told it stored, or removed, the shard.
    #[test]
    fn racing_puts_and_deletes_of_one_shard_count_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let bytes = vec![5u8; 100_000];
        let id = ShardId::of(&bytes);
        for _ in 0..5 {
            let stored: usize = std::thread::scope(|s| {
                let hs: Vec<_> = (0..8)
                    .map(|_| s.spawn(|| store.put_if_absent(&id, &bytes).unwrap()))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap() as usize).sum()
            });
            assert_eq!(stored, 1);
            assert_eq!(store.get(&id).unwrap(), bytes);
            let removed: Vec<Option<u64>> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..8)
                    .map(|_| s.spawn(|| store.remove(&id).unwrap()))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(removed.iter().flatten().count(), 1);
            assert_eq!(removed.iter().flatten().next(), Some(&100_000));
            assert!(!store.contains(&id));
        }
    }
}
