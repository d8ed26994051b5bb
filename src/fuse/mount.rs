//! Mounting: the checks before, the exit signals, the session and its workers.

use super::DatameshFs;
use crate::data::Engine;
use crate::meta::changes::Changed;
use crate::workers::{ExitSignals, Runner};
use fuser::{Config, INodeNo, MountOption, Session, SessionACL};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How a volume is mounted.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Let users other than the mounting one in (`-o allow_other`).
    pub allow_other: bool,
    /// Mount read-only: the kernel refuses every change with EROFS.
    pub read_only: bool,
    /// How long the kernel may cache a file's attributes before asking again.
    pub attr_ttl: Duration,
    /// How long the kernel may cache a name → inode lookup (and a failed one).
    pub entry_ttl: Duration,
    /// What /proc/mounts and df show as the mount's source.
    pub source: String,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: false,
            read_only: false,
            attr_ttl: Duration::from_secs(1),
            source: "datamesh".to_string(),
            entry_ttl: Duration::from_secs(1),
        }
    }
}

/// Whether `mountpoint` can take a FUSE mount here: an existing directory, and
/// /dev/fuse present. Callers check before opening (or creating) a volume.
pub fn check_mountable(mountpoint: &Path) -> io::Result<()> {
    match std::fs::metadata(mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!(
                    "{}: the mountpoint is not a directory",
                    mountpoint.display()
                ),
            ));
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "{}: the mountpoint does not exist or is not a directory ({e})",
                    mountpoint.display()
                ),
            ));
        }
    }
    if std::fs::read_dir(mountpoint).is_ok_and(|mut d| d.next().is_some()) {
        return Err(io::Error::new(
            io::ErrorKind::DirectoryNotEmpty,
            format!(
                "{}: the mountpoint is not empty (its files would be hidden): \
                 mount on an empty directory",
                mountpoint.display()
            ),
        ));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "/dev/fuse is missing: load the fuse kernel module (modprobe fuse) \
             or give the container access to /dev/fuse",
        ));
    }
    Ok(())
}

/// The kernel reads ahead 128 KiB on a FUSE mount unless told otherwise, and the
/// FUSE handshake cannot ask for more: set the mount's read-ahead to one chunk
/// through sysfs (root only; elsewhere the default stays, and reads are slower).
fn raise_readahead(mountpoint: &Path, chunk_size: usize) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = meta.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    match std::fs::write(&knob, format!("{}", chunk_size / 1024)) {
        Ok(()) => tracing::debug!("read-ahead set to {} KiB", chunk_size / 1024),
        Err(e) => tracing::debug!("cannot raise read-ahead ({knob}: {e})"),
    }
}

/// Mounts the volume at `mountpoint` (checked with [`check_mountable`] by the
/// caller) and serves it in the foreground until it is unmounted (`fusermount3
/// -u`, or one of `signals`, which unmounts it). The signal watcher runs under
/// `runner`; the caller stops the runner and flushes the engine once this
/// returns.
pub fn mount(
    engine: Arc<Engine>,
    mountpoint: &Path,
    opts: &MountOptions,
    signals: ExitSignals,
    runner: &Runner,
) -> io::Result<()> {
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName(opts.source.clone()),
        MountOption::Subtype("datamesh".to_string()),
        MountOption::DefaultPermissions,
    ];
    if opts.read_only {
        cfg.mount_options.push(MountOption::RO);
    }
    if opts.allow_other {
        cfg.acl = SessionACL::All;
    }
    cfg.n_threads = Some(4);

    let notifier = Arc::new(std::sync::OnceLock::new());
    let fs = DatameshFs::new(engine.clone(), opts, notifier.clone())?;
    let mut session = Session::new(fs, mountpoint, &cfg).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("mounting at {}: {e}", mountpoint.display()),
        )
    })?;
    let _ = notifier.set(session.notifier());
    spawn_invalidator(&engine, notifier, runner)?;
    let mut unmounter = session.unmount_callable();
    signals.watch(runner, "unmounting", move || unmounter.unmount())?;
    tracing::info!("mounted at {}", mountpoint.display());
    // From another thread: the stat it needs is answered once the session runs.
    let (at, chunk_size) = (mountpoint.to_path_buf(), engine.chunk_size());
    runner.spawn("readahead", move |_| raise_readahead(&at, chunk_size))?;
    // The session owns the filesystem; dropping it (as run ends) waits for
    // requests still being answered on I/O threads, so the caller's flush comes
    // after them.
    session.run()
}

/// The worker `invalidate`: what other hosts (and this host's CLI) change is
/// dropped from this kernel's cache as it happens, not when its time-outs
/// run out (see `meta::changes`).
fn spawn_invalidator(
    engine: &Arc<Engine>,
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    runner: &Runner,
) -> io::Result<()> {
    let e = engine.clone();
    runner.on_stop(move || e.stop_watching());
    let engine = engine.clone();
    runner.spawn("invalidate", move |w| {
        let mut since = 0;
        while !w.stopping() {
            match engine.watch(since, WATCH_WAIT) {
                Ok(s) => {
                    since = s.next;
                    if let Some(n) = notifier.get() {
                        invalidate(n, &s.changes);
                    }
                }
                Err(e) if e.kind() == crate::error::Kind::Invalid => {
                    tracing::warn!(
                        "the home node does not push changes ({e}): this mount sees other \
                         hosts' changes when its cached names and attributes time out"
                    );
                    return;
                }
                Err(e) => {
                    w.round(Err(format!("asking what changed: {e}")));
                    w.sleep(Duration::from_secs(1));
                }
            }
        }
    })
}

/// How long one ask for changes waits at home (a member's waits as long as
/// the home holds it).
const WATCH_WAIT: Duration = Duration::from_secs(2);

fn invalidate(n: &fuser::Notifier, changes: &[Changed]) {
    let mut told = std::collections::HashSet::new();
    for c in changes {
        if !told.insert(c) {
            continue;
        }
        // Errors are the kernel saying it had nothing cached.
        let _ = match c {
            Changed::Entry { parent, name } => {
                n.inval_entry(INodeNo(parent.0), std::ffi::OsStr::from_bytes(name))
            }
            Changed::Inode(ino) => n.inval_inode(INodeNo(ino.0), 0, 0),
        };
    }
}
