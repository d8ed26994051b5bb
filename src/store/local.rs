//! Shards as files: `shards/ab/abcd…`. The 256 fan-out directories are made once at
//! open, so storing a shard never creates a directory.

use super::{ShardInfo, ShardStore, StoreError};
use crate::chunk::ShardId;
use crate::util::{SyncGroup, lock};
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Free space kept back so the metadata can still commit when the disk is nearly full.
const RESERVE: u64 = 32 * 1024 * 1024;

/// Up to this many shards placed since the last sync, a sync fsyncs each of
/// them (and their directories); above it one `syncfs` costs less, though it
/// also waits for other programs' dirty data on the same filesystem.
const SYNC_EACH_MAX: usize = 256;

/// A chunk's shards are written on threads of their own from this many
/// bytes in all (a full 4 MiB chunk is 6 MiB of shards).
const PARALLEL_CHUNK_MIN: usize = 1 << 20;

/// Threads fsyncing shard files at once: a journalling filesystem commits
/// concurrent fsyncs together instead of one journal commit each.
const SYNC_THREADS: usize = 16;

pub struct LocalStore {
    root: PathBuf,
    tmp: PathBuf,
    /// Shards written so far, and how many of them the last finished sync
    /// covered: a sync with nothing new to cover does nothing, so an fsync
    /// of a file whose data is all inline costs one WAL sync.
    written: AtomicU64,
    synced: AtomicU64,
    /// The shards placed since the last sync took them: what the next sync
    /// makes durable. Pushed before `written` counts them.
    unsynced: Mutex<Vec<ShardId>>,
    syncs: SyncGroup,
    /// Every shard a finished sync covered, for the tests to check against.
    #[cfg(test)]
    covered: Mutex<std::collections::HashSet<ShardId>>,
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
            unsynced: Mutex::new(Vec::new()),
            syncs: SyncGroup::default(),
            #[cfg(test)]
            covered: Mutex::default(),
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
            lock(&self.unsynced).push(*id);
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

impl LocalStore {
    /// One `syncfs(2)` on the store's filesystem.
    fn syncfs(&self) -> Result<(), StoreError> {
        let dir = File::open(&self.root).map_err(|e| io_err(&self.root, e))?;
        nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir))
            .map_err(|e| io_err(&self.root, e.into()))
    }

    /// `fdatasync` of each shard file, `fsync` of each fan-out directory
    /// they were renamed into, on up to [`SYNC_THREADS`] threads.
    fn sync_each(&self, ids: &[ShardId]) -> Result<(), StoreError> {
        let files: Vec<PathBuf> = ids.iter().map(|id| self.path_of(id)).collect();
        let mut dirs: Vec<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        dirs.sort_unstable();
        dirs.dedup();
        let todo: Vec<(&Path, bool)> = files
            .iter()
            .map(|f| (f.as_path(), true))
            .chain(dirs.iter().map(|d| (d.as_path(), false)))
            .collect();
        let sync_part = |part: &[(&Path, bool)]| -> Result<(), StoreError> {
            for &(path, data_only) in part {
                let f = match File::open(path) {
                    Ok(f) => f,
                    // Deleted since it was placed: nothing to make durable.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(path, e)),
                };
                if data_only {
                    f.sync_data()
                } else {
                    f.sync_all()
                }
                .map_err(|e| io_err(path, e))?;
            }
            Ok(())
        };
        let per_thread = todo.len().div_ceil(SYNC_THREADS).max(1);
        let jobs = todo.chunks(per_thread).map(|part| move || sync_part(part));
        on_threads(&self.root, "datamesh-fsync", jobs.collect())
    }
}

/// Runs `jobs` at once, the first on this thread and each other on a scoped
/// thread of its own; the first error, once all have ended.
fn on_threads<F>(root: &Path, name: &str, mut jobs: Vec<F>) -> Result<(), StoreError>
where
    F: FnOnce() -> Result<(), StoreError> + Send,
{
    if jobs.is_empty() {
        return Ok(());
    }
    let first = jobs.remove(0);
    std::thread::scope(|s| {
        let others: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn_scoped(s, job)
            })
            .collect();
        let mut res = first();
        for t in others {
            let r = match t {
                Ok(handle) => handle.join().unwrap_or_else(|_| {
                    Err(io_err(
                        root,
                        std::io::Error::other(format!("{name} thread panicked")),
                    ))
                }),
                Err(e) => Err(io_err(root, e)),
            };
            res = res.and(r);
        }
        res
    })
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ShardStore for LocalStore {
    /// The shards of a large chunk are written at once, one thread each: on a
    /// busy disk each write may be held back by the kernel's dirty-page
    /// throttling, and a barrier waiting for this chunk waits for the
    /// slowest write rather than their sum. A small chunk's shards are
    /// written in turn: starting threads would cost more than the writes.
    fn put_chunk(
        &self,
        shards: Vec<(ShardId, bytes::Bytes)>,
        need: usize,
    ) -> Result<(), StoreError> {
        let _ = need;
        if shards.iter().map(|(_, b)| b.len()).sum::<usize>() < PARALLEL_CHUNK_MIN {
            return shards.iter().try_for_each(|(id, b)| self.put(id, b));
        }
        let jobs = shards.iter().map(|(id, b)| move || self.put(id, b));
        on_threads(&self.root, "datamesh-shard", jobs.collect())
    }

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
        if self.written.load(Ordering::Acquire) == self.synced.load(Ordering::Acquire) {
            return Ok(());
        }
        // Grouped: a caller whose shards a running sync took waits for the
        // next one, which starts after it asked.
        self.syncs.sync(|| {
            // Every shard counted in `written` is in `unsynced` by now.
            let written = self.written.load(Ordering::Acquire);
            let ids = std::mem::take(&mut *lock(&self.unsynced));
            let res = if ids.len() > SYNC_EACH_MAX {
                self.syncfs()
            } else {
                self.sync_each(&ids)
            };
            match res {
                Ok(()) => {
                    #[cfg(test)]
                    lock(&self.covered).extend(ids.iter().copied());
                    self.synced.fetch_max(written, Ordering::AcqRel);
                    Ok(())
                }
                Err(e) => {
                    lock(&self.unsynced).extend(ids);
                    Err(e)
                }
            }
        })
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
            // The losers' temp files are gone as well as the winner's.
            assert!(
                fs::read_dir(dir.path().join("tmp"))
                    .unwrap()
                    .next()
                    .is_none()
            );
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

    fn unsynced(store: &LocalStore) -> usize {
        lock(&store.unsynced).len()
    }

    fn put_n(store: &LocalStore, from: usize, n: usize) -> Vec<ShardId> {
        (from..from + n)
            .map(|i| {
                let bytes = format!("shard {i}").into_bytes();
                let id = ShardId::of(&bytes);
                store.put(&id, &bytes).unwrap();
                id
            })
            .collect()
    }

    /// A sync covers every shard placed before it: a few one by one, many with
    /// one syncfs; one deleted meanwhile is skipped; nothing is left for the
    /// next sync, which then does nothing.
    #[test]
    fn sync_covers_what_was_placed_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let ids = put_n(&store, 0, 10);
        store.remove(&ids[3]).unwrap();
        assert_eq!(unsynced(&store), 10);
        store.sync().unwrap();
        assert_eq!(unsynced(&store), 0);
        put_n(&store, 10, SYNC_EACH_MAX + 1);
        store.sync().unwrap();
        assert_eq!(unsynced(&store), 0);
        assert_eq!(
            store.written.load(Ordering::Relaxed),
            store.synced.load(Ordering::Relaxed)
        );
        store.sync().unwrap();
    }

    /// Threads placing and syncing at once: each sync returns only once what
    /// its thread placed is covered.
    #[test]
    fn concurrent_syncs_each_cover_their_own_shards() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        std::thread::scope(|s| {
            for t in 0..6 {
                let store = &store;
                s.spawn(move || {
                    for round in 0..20 {
                        let mine = put_n(store, (t * 20 + round) * 5, 5);
                        store.sync().unwrap();
                        let covered = lock(&store.covered);
                        assert!(mine.iter().all(|id| covered.contains(id)));
                    }
                });
            }
        });
        assert_eq!(unsynced(&store), 0);
    }

    /// A sync that fails names the shard and keeps every id for the next one.
    #[test]
    fn a_failed_sync_leaves_its_shards_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let ids = put_n(&store, 0, 3);
        // A symlink loop where a shard file was: opening it fails (ELOOP).
        let path = store.path_of(&ids[1]);
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&path, &path).unwrap();
        let err = store.sync().unwrap_err().to_string();
        assert!(err.contains(&ids[1].to_hex()), "{err}");
        assert_eq!(unsynced(&store), 3);
        fs::remove_file(&path).unwrap();
        store.sync().unwrap();
        assert_eq!(unsynced(&store), 0);
    }
}
