//! Small helpers every layer uses: poison-tolerant locking, group commit of
//! a durability barrier, secrets written to disk whole or not at all, and
//! reads that fill a buffer.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Locks `m`, taking the data even if a thread panicked while holding it: a
/// panic is a bug reported on its own, and no lock here guards an invariant
/// that a half-done update could break for the readers that follow.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Group commit of a durability barrier (a WAL sync): a caller that comes
/// while a sync runs waits for the next one, which covers every caller
/// waiting by then, instead of each running its own. A sync covers the
/// callers that asked before it started, since what they wrote was written
/// before they asked. A failed sync covers nobody: its caller gets the
/// error, and each waiter tries again.
#[derive(Default)]
pub struct SyncGroup {
    state: Mutex<SyncState>,
    ended: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// Callers so far (each one's number is its ticket).
    asked: u64,
    /// Every ticket up to this one is covered by a finished sync.
    covered: u64,
    running: bool,
}

impl SyncGroup {
    pub fn sync<E>(&self, run: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let mut st = lock(&self.state);
        st.asked += 1;
        let ticket = st.asked;
        loop {
            if st.covered >= ticket {
                return Ok(());
            }
            if !st.running {
                st.running = true;
                let upto = st.asked;
                drop(st);
                let res = run();
                let mut st = lock(&self.state);
                st.running = false;
                if res.is_ok() {
                    st.covered = st.covered.max(upto);
                }
                self.ended.notify_all();
                return res;
            }
            st = self.ended.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Writes a secret (a key) to `path`, mode 0600: to a temporary name first,
/// synced, then renamed, so a crash leaves the old file or the new one, never
/// a torn key. The temporary file is made new and never through a link (a
/// link planted at its name is removed, not followed), and the rename replaces
/// whatever is at `path` instead of writing through it. The error names the
/// file it is about.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), (std::path::PathBuf, std::io::Error)> {
    // A temporary name of this writer's own: two processes (the daemon and
    // the CLI) saving one file at once must not write into each other's.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err((tmp, e)),
        _ => {}
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| (tmp.clone(), e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| (tmp.clone(), e))?;
    fs::rename(&tmp, path).map_err(|e| (path.to_path_buf(), e))
}

/// [`write_secret`], but only when `path` does not exist yet: `false` when
/// it did (another process made it first), and it is left as it was.
pub fn write_secret_new(
    path: &Path,
    bytes: &[u8],
) -> Result<bool, (std::path::PathBuf, std::io::Error)> {
    let tmp = path.with_extension(format!("new.{}", std::process::id()));
    write_secret(&tmp, bytes)?;
    // A link, unlike a rename, fails when the name is taken.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err((path.to_path_buf(), e)),
    }
}

/// Reads until `buf` is full or the source ends; how many bytes were read
/// (fewer than `buf` only at the end of the source).
pub fn read_up_to(src: &mut dyn std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Bytes of BLAKE3 over a body that end a typed secret (a join token, a
/// recovery kit): enough to catch a mistyped or cut one.
const CHECK: usize = 4;

/// `body` as hex, followed by its checksum.
pub fn hex_checked(body: &[u8]) -> String {
    let check = blake3::hash(body);
    format!(
        "{}{}",
        hex::encode(body),
        hex::encode(&check.as_bytes()[..CHECK])
    )
}

/// The body of [`hex_checked`] text, or why it is not one.
pub fn unhex_checked(hexed: &str) -> std::result::Result<Vec<u8>, &'static str> {
    let bytes = hex::decode(hexed)
        .map_err(|_| "not hex after the prefix (a character was mistyped, or it was cut)")?;
    if bytes.len() < CHECK {
        return Err("too short (cut off?)");
    }
    let (body, check) = bytes.split_at(bytes.len() - CHECK);
    if blake3::hash(body).as_bytes()[..CHECK] != *check {
        return Err("its checksum does not match: a character was mistyped, or it was cut");
    }
    Ok(body.to_vec())
}

/// `n` bytes for people: `512 B`, `1.5 MiB`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Concurrent barriers share syncs, and each returns only after a sync
    /// that started after it was asked; a failure reaches its caller.
    #[test]
    fn a_group_sync_covers_every_caller_with_fewer_syncs() {
        use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
        let group = SyncGroup::default();
        let (writes, synced, runs) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..40 {
                        let mine = writes.fetch_add(1, SeqCst) + 1;
                        group
                            .sync(|| {
                                let seen = writes.load(SeqCst);
                                runs.fetch_add(1, SeqCst);
                                std::thread::sleep(std::time::Duration::from_millis(1));
                                synced.fetch_max(seen, SeqCst);
                                Ok::<(), ()>(())
                            })
                            .unwrap();
                        assert!(synced.load(SeqCst) >= mine);
                    }
                });
            }
        });
        let runs = runs.load(SeqCst);
        assert!(runs < 8 * 40 * 3 / 4, "{runs} syncs for 320 barriers");
        assert_eq!(group.sync(|| Err("disk gone")), Err("disk gone"));
        assert_eq!(group.sync(|| Ok::<(), &str>(())), Ok(()));
    }

    /// A link planted where a key goes, or at its temporary name, is replaced,
    /// never written through.
    #[test]
    fn secrets_never_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let key = dir.path().join("mesh.key");
        std::os::unix::fs::symlink(&victim, &key).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("mesh.tmp")).unwrap();
        write_secret(&key, b"secret").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(&key).unwrap(), b"secret");
        assert!(!fs::symlink_metadata(&key).unwrap().file_type().is_symlink());
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
