//! `put` and `get`: copying files and trees between this host and the volume,
//! with progress bars; special files are skipped and reported.

use super::commands::Ctx;
use super::output::progress_bar;
use super::paths::{base_name, join, resolve, resolve_parent};
use crate::Error;
use crate::types::*;
use crate::volume::NewFile;
use anyhow::{Context, anyhow};
use indicatif::ProgressBar;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn local_size(path: &Path) -> u64 {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::read_dir(path)
            .map(|rd| rd.flatten().map(|e| local_size(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) if m.is_file() => m.len(),
        _ => 0,
    }
}

pub(super) fn put(cx: &mut Ctx, srcs: &[String], dst: &str, recursive: bool) {
    let into_dir = matches!(resolve(cx.vol, dst), Ok(a) if a.kind == FileKind::Dir);
    if srcs.len() > 1 && !into_dir {
        cx.fail(
            dst,
            "Not a directory (copying several paths needs a directory)",
        );
        return;
    }
    let total = srcs.iter().map(|s| local_size(Path::new(s))).sum();
    let pb = progress_bar(total);
    for src in srcs {
        let target = if into_dir && src != "-" {
            join(dst, base_name(src))
        } else if into_dir {
            cx.fail(dst, Error::IsDir);
            continue;
        } else {
            dst.to_string()
        };
        put_one(cx, Path::new(src), &target, recursive, &pb);
    }
    pb.finish_and_clear();
}

fn put_one(cx: &mut Ctx, src: &Path, dst: &str, recursive: bool, pb: &ProgressBar) {
    let shown = src.display().to_string();
    if shown == "-" {
        if let Err(e) = put_file(cx, &mut std::io::stdin(), 0o644, dst, pb) {
            cx.fail(dst, e);
        }
        return;
    }
    let meta = match fs::symlink_metadata(src) {
        Ok(m) => m,
        Err(e) => return cx.fail(&shown, e),
    };
    let ft = meta.file_type();
    if ft.is_dir() {
        if !recursive {
            return cx.fail(&shown, "Is a directory (use -r to copy directories)");
        }
        let res = resolve_parent(cx.vol, dst).and_then(|(dir, name)| {
            match cx
                .vol
                .mkdir(dir, &name, (meta.mode() & 0o7777) as u16, cx.uid, cx.gid)
            {
                Ok(_) => Ok(()),
                Err(Error::Exists) if resolve(cx.vol, dst)?.kind == FileKind::Dir => Ok(()),
                Err(e) => Err(e),
            }
        });
        if let Err(e) = res {
            return cx.fail(dst, e);
        }
        let entries = match fs::read_dir(src) {
            Ok(rd) => rd,
            Err(e) => return cx.fail(&shown, e),
        };
        let mut names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for n in names {
            let child = join(dst, &n.to_string_lossy());
            put_one(cx, &src.join(&n), &child, recursive, pb);
        }
    } else if ft.is_symlink() {
        let res = fs::read_link(src).map_err(Error::Io).and_then(|t| {
            let (dir, name) = resolve_parent(cx.vol, dst)?;
            let target = t.as_os_str().as_encoded_bytes();
            match cx.vol.symlink(dir, &name, target, cx.uid, cx.gid) {
                Err(Error::Exists) => {
                    cx.vol.unlink(dir, &name)?;
                    cx.vol
                        .symlink(dir, &name, target, cx.uid, cx.gid)
                        .map(|_| ())
                }
                other => other.map(|_| ()),
            }
        });
        if let Err(e) = res {
            cx.fail(dst, e);
        }
    } else if ft.is_file() {
        match fs::File::open(src) {
            Ok(mut f) => {
                if let Err(e) = put_file(cx, &mut f, (meta.mode() & 0o7777) as u16, dst, pb) {
                    cx.fail(dst, e);
                }
            }
            Err(e) => cx.fail(&shown, e),
        }
    } else {
        cx.fail(&shown, "not a regular file, directory or symlink; skipped");
    }
}

/// Writes `src` to `dst` through [`crate::volume::Volume::put_file`]: a
/// failed or interrupted put leaves the old contents (or nothing) in place.
fn put_file(
    cx: &Ctx,
    src: &mut (dyn Read + Send),
    perm: u16,
    dst: &str,
    pb: &ProgressBar,
) -> crate::Result<()> {
    let (dir, name) = resolve_parent(cx.vol, dst)?;
    let file = NewFile {
        dir,
        name,
        perm,
        uid: cx.uid,
        gid: cx.gid,
    };
    let base = pb.position();
    cx.vol
        .put_file(&file, src, &mut |n| pb.set_position(base + n))
}

pub(super) fn get(cx: &mut Ctx, srcs: &[String], dst: &str, recursive: bool) {
    let dst_path = Path::new(dst);
    let into_dir = dst != "-" && dst_path.is_dir();
    if srcs.len() > 1 && !into_dir && dst != "-" {
        cx.fail(
            dst,
            "Not a directory (copying several paths needs a directory)",
        );
        return;
    }
    for src in srcs {
        let attr = match resolve(cx.vol, src) {
            Ok(a) => a,
            Err(e) => {
                cx.fail(src, e);
                continue;
            }
        };
        let target = if into_dir {
            dst_path.join(base_name(src))
        } else {
            dst_path.to_path_buf()
        };
        let pb = progress_bar(attr.size);
        get_one(cx, src, &attr, &target, recursive, &pb);
        pb.finish_and_clear();
    }
}

fn get_one(cx: &mut Ctx, src: &str, attr: &Attr, dst: &PathBuf, recursive: bool, pb: &ProgressBar) {
    let vol = cx.vol;
    let res: anyhow::Result<()> = (|| {
        match attr.kind {
            FileKind::Dir => {
                if !recursive {
                    return Err(anyhow!("Is a directory (use -r to copy directories)"));
                }
                match fs::create_dir(dst) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                        return Err(anyhow!("{}: {e}", dst.display()));
                    }
                    _ => {}
                }
                let mut offset = 2;
                loop {
                    let entries = vol.readdir(attr.ino, offset, 1024)?;
                    let Some(last) = entries.last() else { break };
                    offset = last.offset;
                    for e in entries {
                        let name = String::from_utf8_lossy(&e.name).into_owned();
                        let child_src = join(src, &name);
                        match vol.getattr(e.ino) {
                            Ok(a) => get_one(cx, &child_src, &a, &dst.join(&name), recursive, pb),
                            Err(err) => cx.fail(&child_src, err),
                        }
                    }
                }
            }
            FileKind::Symlink => {
                let target = vol.readlink(attr.ino)?;
                let target = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&target);
                let _ = fs::remove_file(dst);
                std::os::unix::fs::symlink(target, dst)
                    .with_context(|| dst.display().to_string())?;
            }
            FileKind::File if dst.as_os_str() == "-" => {
                vol.read_file(attr.ino, &mut std::io::stdout(), &mut |_| {})?;
            }
            FileKind::File => {
                let f = fs::File::create(dst).with_context(|| dst.display().to_string())?;
                let mut f = Sparse { file: f, at: 0 };
                let base = pb.position();
                vol.read_file(attr.ino, &mut f, &mut |n| pb.set_position(base + n))?;
                f.finish().with_context(|| dst.display().to_string())?;
                let perm = fs::Permissions::from_mode(attr.perm as u32);
                fs::set_permissions(dst, perm).with_context(|| dst.display().to_string())?;
            }
            _ => return Err(anyhow!("a special file; skipped")),
        }
        Ok(())
    })();
    if let Err(e) = res {
        cx.fail(src, format!("{e:#}"));
    }
}

/// A file written from a stream that leaves holes where the stream has
/// whole blocks of zeros (as `cp --sparse=auto` does): a sparse file of the
/// volume copied out takes the disk space of its data, not of its size.
struct Sparse {
    file: fs::File,
    at: u64,
}

impl Sparse {
    const BLOCK: usize = 4096;

    /// Sets the length (a hole at the end has no block to mark it).
    fn finish(self) -> std::io::Result<()> {
        self.file.set_len(self.at)?;
        Ok(())
    }
}

impl std::io::Write for Sparse {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use std::io::{Seek, SeekFrom};
        for block in buf.chunks(Self::BLOCK) {
            if block.len() == Self::BLOCK && block.iter().all(|&b| b == 0) {
                self.file.seek(SeekFrom::Current(Self::BLOCK as i64))?;
            } else {
                self.file.write_all(block)?;
            }
            self.at += block.len() as u64;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
