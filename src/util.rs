//! Small helpers every layer uses: poison-tolerant locking, and secrets
//! written to disk whole or not at all.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking the data even if a thread panicked while holding it: a
/// panic is a bug reported on its own, and no lock here guards an invariant
/// that a half-done update could break for the readers that follow.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes a secret (a key) to `path`, mode 0600: to a temporary name first,
/// synced, then renamed, so a crash leaves the old file or the new one, never
/// a torn key. The error names the file it is about.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), (std::path::PathBuf, std::io::Error)> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| (tmp.clone(), e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| (tmp.clone(), e))?;
    fs::rename(&tmp, path).map_err(|e| (path.to_path_buf(), e))
}
