//! Translations between the engine's types and fuser's: the errno of every
//! engine error (the one place errno values are chosen), attributes, times
//! and inode numbers.

use crate::Error;
use crate::types::{Attr, FileKind, Ino, SetTime, Timestamp};
use fuser::{Errno, FileAttr, FileType, INodeNo, TimeOrNow};

/// The errno for an engine error. Unexpected errors (metadata, shards, I/O) are
/// logged here and reported as `EIO`.
pub fn errno(e: &Error) -> i32 {
    use crate::error::Kind;
    match e.kind() {
        Kind::NotFound => libc::ENOENT,
        Kind::Exists => libc::EEXIST,
        Kind::NotDir => libc::ENOTDIR,
        Kind::IsDir => libc::EISDIR,
        Kind::NotEmpty => libc::ENOTEMPTY,
        Kind::Invalid => libc::EINVAL,
        Kind::NameTooLong => libc::ENAMETOOLONG,
        Kind::NoSpace => libc::ENOSPC,
        Kind::NoXattr => libc::ENODATA,
        Kind::NotPermitted => libc::EPERM,
        Kind::TooBig => libc::EFBIG,
        Kind::ReadOnly => libc::EROFS,
        Kind::WouldBlock => libc::EAGAIN,
        Kind::Deadlock => libc::EDEADLK,
        Kind::Interrupted => libc::EINTR,
        Kind::NoLocks => libc::ENOLCK,
        Kind::Other | Kind::Busy => {
            tracing::error!("I/O error: {e}");
            libc::EIO
        }
    }
}

pub(super) fn err(e: &Error) -> Errno {
    crate::metrics::get().fuse_errors.inc();
    Errno::from_i32(errno(e))
}

/// The errno for an operation on an inode the kernel found by a cached name:
/// an inode that is gone was removed through another host (or the CLI), and
/// ESTALE makes the kernel look the name up again instead of failing.
pub(super) fn err_inode(e: &Error) -> Errno {
    match e.kind() {
        crate::error::Kind::NotFound => {
            crate::metrics::get().fuse_errors.inc();
            Errno::from_i32(libc::ESTALE)
        }
        _ => err(e),
    }
}

pub(super) fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
    }
}

/// The kernel's view of an inode's attributes.
pub fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime.into(),
        mtime: a.mtime.into(),
        ctime: a.ctime.into(),
        crtime: a.crtime.into(),
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

pub(super) fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(Timestamp::from(t)),
    }
}

pub(super) fn ino(i: INodeNo) -> Ino {
    Ino(i.0)
}

/// Permission bits of a new node: the requested mode less the umask.
pub(super) fn new_perm(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}
