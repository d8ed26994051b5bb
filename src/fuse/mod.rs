//! The fuser adapter: the only place errno values are chosen.
//!
//! [`DatameshFs`] turns kernel requests into [`Engine`] calls; [`errno`] maps every
//! engine error to the errno the kernel sees, and [`mount`] runs a session in the
//! foreground until the volume is unmounted.
//!
//! By concern: this file holds the struct and fuser's `Filesystem` impl (one
//! trait, so one block of thin translations, one engine call each);
//! `convert` the errno values and attribute translations, `dir` listings,
//! `lockwait` locks and their waits, `acl` and `acl_mode` POSIX ACLs, and
//! `mount` mounting (checks, signals, the session).

mod acl;
mod acl_mode;
mod convert;
mod dir;
mod lockwait;
mod mount;

pub use convert::{errno, file_attr};
pub use mount::{MountOptions, check_mountable, mount};

use convert::{err, err_inode, ino, new_perm, set_time};

use crate::data::Engine;
use crate::meta::NewNode;
use crate::meta::locks::RangeLock;
use crate::types::{Attr, DirEntry, FileKind, FsStats, Ino, RenameFlags as DmRenameFlags, SetAttr};
use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Threads that answer requests which may wait on storage (reads, flushes, fsyncs,
/// releases), so the FUSE threads keep taking requests meanwhile.
const IO_THREADS: usize = 16;

/// A datamesh volume as a FUSE filesystem.
pub struct DatameshFs {
    engine: Arc<Engine>,
    attr_ttl: Duration,
    entry_ttl: Duration,
    io: tokio::runtime::Runtime,
    /// Tells the kernel to drop what it cached of a file (set once the
    /// session runs).
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    /// Readdirplus entries fetched but not yet given to the kernel, by
    /// (directory, the offset its next call asks from); and whether the
    /// directory ends after them.
    plus_rest: Mutex<lru::LruCache<(Ino, u64), PlusPage>>,
    /// Per file, where the change journal stood when this mount last took a
    /// lock on it (at the home only): a lock drops the kernel's cache of the
    /// file only when another host changed it since.
    lock_marks: Arc<Mutex<std::collections::HashMap<Ino, u64>>>,
    /// Locks waited for now (each on a thread of its own).
    lock_waits: Arc<lockwait::LockWaits>,
}

/// Readdirplus entries, and whether the directory ends after them.
type PlusPage = (Vec<(DirEntry, Attr)>, bool);

/// A mount that ends answers its waiting locks (EINTR) instead of leaving
/// their processes to wait on a connection that is gone.
impl Drop for DatameshFs {
    fn drop(&mut self) {
        self.lock_waits.stop();
        if self.lock_waits.count() > 0 {
            tracing::info!(
                "the mount ends: {} waiting locks are answered EINTR",
                self.lock_waits.count()
            );
        }
    }
}

impl DatameshFs {
    pub fn new(
        engine: Arc<Engine>,
        opts: &MountOptions,
        notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    ) -> io::Result<DatameshFs> {
        let io = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(IO_THREADS)
            .thread_name("datamesh-io")
            .build()?;
        Ok(DatameshFs {
            engine,
            attr_ttl: opts.attr_ttl,
            entry_ttl: opts.entry_ttl,
            io,
            notifier,
            plus_rest: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(32).expect("non-zero"),
            )),
            lock_marks: Default::default(),
            lock_waits: Default::default(),
        })
    }

    /// Cached pages outlive a file's opens on the home node, whose namespace
    /// sees every change; on a member device each open starts afresh
    /// (close-to-open: what another host closed is what this open reads).
    fn open_flags(&self) -> FopenFlags {
        if self.engine.is_home() {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        }
    }

    /// Runs `work` on an I/O thread; it answers the request itself.
    /// `op` names it in the metrics, timed until it has answered.
    fn spawn(&self, op: &'static str, work: impl FnOnce(&Engine) + Send + 'static) {
        let engine = self.engine.clone();
        let timer = crate::metrics::op(op);
        self.io.spawn_blocking(move || {
            work(&engine);
            drop(timer);
        });
    }

    /// How long the kernel may keep `a`.
    fn attr_ttl(&self, _a: &Attr) -> Duration {
        self.attr_ttl
    }

    fn reply_entry(&self, res: crate::Result<Attr>, reply: ReplyEntry) {
        match res {
            Ok(a) => reply.entry_with_ttls(
                &self.attr_ttl(&a),
                &self.entry_ttl,
                &file_attr(&a),
                Generation(0),
            ),
            Err(e) => reply.error(err(&e)),
        }
    }

    fn reply_data(res: crate::Result<Vec<u8>>, reply: ReplyData) {
        match res {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(err(&e)),
        }
    }

    fn reply_empty(res: crate::Result<()>, reply: ReplyEmpty) {
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(&e)),
        }
    }

    /// Replies with an xattr value or name list, honouring size-0 probes.
    fn reply_xattr(data: &[u8], size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(data.len() as u32);
        } else if data.len() > size as usize {
            reply.error(Errno::from_i32(libc::ERANGE));
        } else {
            reply.data(data);
        }
    }
}

impl Filesystem for DatameshFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // The kernel interprets POSIX ACLs (stored as ordinary xattrs) and keeps the
        // mode in step with them, as a local filesystem does.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_POSIX_ACL) {
            tracing::debug!("kernel lacks {missing:?}: POSIX ACLs are plain xattrs");
        }
        // At home, cached pages of a file outlive its opens (FOPEN_KEEP_CACHE)
        // and are dropped when its size or mtime is seen to change. A member
        // drops them at each open instead: with this flag the kernel would
        // ask for the attributes before every read, a call to the home node.
        if self.engine.is_home()
            && let Err(missing) = config.add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA)
        {
            tracing::debug!("kernel lacks {missing:?}");
        }
        // Every listing comes with the entries' attributes (from the inode
        // cache), so a listing followed by `stat` of its names (`ls -l`,
        // `stat *` after a shell glob, rsync's and backup tools' scans, `rm
        // -r`) finds them in the kernel's cache instead of asking a lookup
        // per name. Not READDIRPLUS_AUTO: it falls back to plain pages when
        // the names are looked up only after the whole listing, as a glob
        // does (10 000 `stat`s: 0.25 s with every page plus, 0.7 s with AUTO).
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS) {
            tracing::debug!("kernel lacks {missing:?}");
        }
        // Locks go to the home node's table, shared by every host's mount.
        if let Err(missing) =
            config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS)
        {
            tracing::debug!("kernel lacks {missing:?}: locks are this host's alone");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _t = crate::metrics::op("lookup");
        self.reply_entry(self.engine.lookup(ino(parent), name.as_bytes()), reply);
    }

    fn getattr(&self, _req: &Request, i: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _t = crate::metrics::op("getattr");
        match self.engine.getattr(ino(i)) {
            Ok(a) => reply.attr(&self.attr_ttl(&a), &file_attr(&a)),
            Err(e) => reply.error(err_inode(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        i: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _t = crate::metrics::op("setattr");
        // The engine seals buffered writes before setting times, so the times
        // set here are the ones that stay.
        let set = SetAttr {
            perm: mode.map(|m| (m & 0o7777) as u16),
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        };
        let res = self.engine.setattr(ino(i), &set).and_then(|a| {
            if let Some(perm) = set.perm {
                self.chmod_acl(ino(i), perm)?;
            }
            Ok(a)
        });
        match res {
            Ok(a) => reply.attr(&self.attr_ttl(&a), &file_attr(&a)),
            Err(e) => reply.error(err(&e)),
        }
    }

    fn readlink(&self, _req: &Request, i: INodeNo, reply: ReplyData) {
        let _t = crate::metrics::op("readlink");
        Self::reply_data(self.engine.readlink(ino(i)), reply);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _t = crate::metrics::op("mknod");
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => FileKind::File,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDev,
            libc::S_IFBLK => FileKind::BlockDev,
            _ => return reply.error(Errno::from_i32(libc::EINVAL)),
        };
        // The group of a node in a setgid directory is the namespace's to
        // decide (`create_node`).
        let node = NewNode {
            kind,
            perm: new_perm(mode, umask),
            uid: req.uid(),
            gid: req.gid(),
            rdev: match kind {
                FileKind::CharDev | FileKind::BlockDev => rdev,
                _ => 0,
            },
            target: None,
        };
        self.reply_entry(self.engine.mknod(ino(parent), name.as_bytes(), node), reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _t = crate::metrics::op("mkdir");
        let perm = new_perm(mode, umask);
        let res = self
            .engine
            .mkdir(ino(parent), name.as_bytes(), perm, req.uid(), req.gid());
        self.reply_entry(res, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = crate::metrics::op("unlink");
        Self::reply_empty(self.engine.unlink(ino(parent), name.as_bytes()), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = crate::metrics::op("rmdir");
        Self::reply_empty(self.engine.rmdir(ino(parent), name.as_bytes()), reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _t = crate::metrics::op("symlink");
        let target = target.as_os_str().as_bytes();
        let res = self.engine.symlink(
            ino(parent),
            link_name.as_bytes(),
            target,
            req.uid(),
            req.gid(),
        );
        self.reply_entry(res, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _t = crate::metrics::op("rename");
        let known = RenameFlags::RENAME_NOREPLACE | RenameFlags::RENAME_EXCHANGE;
        if !known.contains(flags) {
            return reply.error(Errno::from_i32(libc::EINVAL));
        }
        let flags = DmRenameFlags {
            noreplace: flags.contains(RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(RenameFlags::RENAME_EXCHANGE),
        };
        let res = self.engine.rename(
            ino(parent),
            name.as_bytes(),
            ino(newparent),
            newname.as_bytes(),
            flags,
        );
        Self::reply_empty(res, reply);
    }

    fn link(
        &self,
        _req: &Request,
        i: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _t = crate::metrics::op("link");
        self.reply_entry(
            self.engine.link(ino(i), ino(newparent), newname.as_bytes()),
            reply,
        );
    }

    fn open(&self, _req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _t = crate::metrics::op("open");
        let i = ino(i);
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY
            && let Err(e) = self.engine.writable(i)
        {
            return reply.error(err(&e));
        }
        let attr = match self.engine.open(i) {
            Ok(a) => a,
            Err(e) => return reply.error(err_inode(&e)),
        };
        if !self.engine.is_home()
            && let Some(n) = self.notifier.get()
        {
            // Close-to-open: the size and times another host's close
            // committed are asked afresh, not taken from the kernel's cache.
            let _ = n.inval_inode(INodeNo(i.0), -1, 0);
        }
        if flags.0 & libc::O_TRUNC != 0 && attr.kind == FileKind::File && attr.size != 0 {
            let set = SetAttr {
                size: Some(0),
                ..Default::default()
            };
            if let Err(e) = self.engine.setattr(i, &set) {
                // Undo the open: the kernel sends no release for a failed open.
                let _ = self.engine.release(i);
                return reply.error(err(&e));
            }
        }
        reply.opened(FileHandle(0), self.open_flags());
    }

    fn read(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn("read", move |engine| {
            Self::reply_data(engine.read(ino(i), offset, size as usize), reply)
        });
    }

    fn write(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _t = crate::metrics::op("write");
        match self.engine.write(ino(i), offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(err(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // A close drops the closing owner's POSIX locks on the file.
        self.spawn("flush", move |engine| {
            let res = engine
                .flush_closing(ino(i))
                .and(engine.unlock(lock_owner.0, ino(i)));
            Self::reply_empty(res, reply)
        });
    }

    fn release(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The last close of an open file description drops its flock.
        self.spawn("release", move |engine| {
            let unlocked = lock_owner.map_or(Ok(()), |o| engine.unlock(o.0, ino(i)));
            Self::reply_empty(engine.release(ino(i)).and(unlocked), reply)
        });
    }

    /// Locks are the home node's to keep, for every host's mount: a lock
    /// taken here holds against every other host's (flock is a lock of the
    /// whole file).
    fn getlk(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let want = RangeLock {
            start,
            end,
            typ,
            pid,
        };
        self.spawn("getlk", move |engine| {
            match engine.getlk(lock_owner.0, ino(i), want) {
                Ok(Some(l)) => reply.locked(l.start, l.end, l.typ, l.pid),
                Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
                Err(e) => reply.error(err(&e)),
            }
        });
    }

    fn setlk(
        &self,
        req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let want = RangeLock {
            start,
            end,
            typ,
            pid,
        };
        let ask = lockwait::Ask {
            owner: lock_owner.0,
            ino: ino(i),
            want,
            sleep,
            caller: req.pid(),
        };
        let taken = lockwait::LockTaken {
            notifier: self.notifier.clone(),
            marks: self.lock_marks.clone(),
        };
        let waits = self.lock_waits.clone();
        // At home a lock is a step in memory: answered here, with no
        // hand-over to the I/O pool (a wait moves to a thread of its own),
        // unless an unlock has the file's writes to commit first, which may
        // wait on storage.
        if self.engine.is_home() && (typ != libc::F_UNLCK || self.engine.nothing_to_flush(ask.ino))
        {
            let _t = crate::metrics::op("setlk");
            lockwait::set_lock(&self.engine, &waits, taken, ask, reply);
        } else {
            let engine = self.engine.clone();
            self.spawn("setlk", move |_| {
                lockwait::set_lock(&engine, &waits, taken, ask, reply)
            });
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn("fsync", move |engine| {
            Self::reply_empty(engine.fsync(ino(i)), reply)
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let i = ino(i);
        let (keep_size, punch) = match mode {
            0 => (false, false),
            libc::FALLOC_FL_KEEP_SIZE => (true, false),
            m if m == libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE => (true, true),
            // Zero-range, collapse and insert: tools fall back to writing.
            _ => return reply.error(Errno::from_i32(libc::EOPNOTSUPP)),
        };
        self.spawn("fallocate", move |engine| {
            let res = if punch {
                engine.punch_hole(i, offset, length)
            } else {
                engine.allocate(i, offset, length, keep_size)
            };
            Self::reply_empty(res, reply)
        });
    }

    fn opendir(&self, _req: &Request, i: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _t = crate::metrics::op("opendir");
        match self.engine.getattr(ino(i)) {
            Ok(a) if a.kind == FileKind::Dir => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::from_i32(libc::ENOTDIR)),
            Err(e) => reply.error(err(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let _t = crate::metrics::op("readdir");
        self.list(ino(i), offset, reply);
    }

    /// Entries with their attributes (see `init`).
    fn readdirplus(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let _t = crate::metrics::op("readdirplus");
        self.list_plus(ino(i), offset, reply);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _t = crate::metrics::op("releasedir");
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace changes are committed to the metadata store as they
        // happen; this makes them durable (the WAL synced), as an fsync does.
        self.spawn("fsyncdir", move |engine| {
            Self::reply_empty(engine.sync_committed(), reply)
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _t = crate::metrics::op("statfs");
        match self.engine.statfs() {
            Ok(s) => {
                let FsStats {
                    block_size,
                    total_bytes,
                    free_bytes,
                    avail_bytes,
                    files,
                    free_files,
                    name_max,
                } = s;
                let bs = u64::from(block_size.max(1));
                reply.statfs(
                    total_bytes / bs,
                    free_bytes / bs,
                    avail_bytes / bs,
                    files,
                    free_files,
                    block_size,
                    name_max,
                    block_size,
                );
            }
            Err(e) => reply.error(err(&e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        i: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        let _t = crate::metrics::op("setxattr");
        if position != 0 || flags & !(libc::XATTR_CREATE | libc::XATTR_REPLACE) != 0 {
            return reply.error(Errno::from_i32(libc::EINVAL));
        }
        let (create, replace) = (
            flags & libc::XATTR_CREATE != 0,
            flags & libc::XATTR_REPLACE != 0,
        );
        let res = if name.as_bytes() == acl::ACCESS {
            self.set_access_acl(ino(i), value, create, replace)
        } else {
            self.engine
                .setxattr(ino(i), name.as_bytes(), value, create, replace)
        };
        Self::reply_empty(res, reply);
    }

    fn getxattr(&self, _req: &Request, i: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _t = crate::metrics::op("getxattr");
        match self.engine.getxattr(ino(i), name.as_bytes()) {
            Ok(v) => Self::reply_xattr(&v, size, reply),
            Err(e) => reply.error(err(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, i: INodeNo, size: u32, reply: ReplyXattr) {
        let _t = crate::metrics::op("listxattr");
        match self.engine.listxattr(ino(i)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                Self::reply_xattr(&buf, size, reply);
            }
            Err(e) => reply.error(err(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, i: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _t = crate::metrics::op("removexattr");
        Self::reply_empty(self.engine.removexattr(ino(i), name.as_bytes()), reply);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let _t = crate::metrics::op("access");
        // Mounted with default_permissions: the kernel checks access itself.
        reply.ok();
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        let _t = crate::metrics::op("ioctl");
        // No ioctls (isatty() probes land here): quietly "not a terminal".
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let _t = crate::metrics::op("create");
        let perm = new_perm(mode, umask);
        let made =
            self.engine
                .create_open(ino(parent), name.as_bytes(), perm, req.uid(), req.gid());
        match made {
            Ok(a) => reply.created(
                &self.entry_ttl,
                &file_attr(&a),
                Generation(0),
                FileHandle(0),
                self.open_flags(),
            ),
            Err(e) => reply.error(err(&e)),
        }
    }
}
