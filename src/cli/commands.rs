//! The commands. Each failure is printed as `datamesh: CMD: PATH: cause`; a command
//! that hit any failure exits 1, after doing what it could with the other paths.

use super::output::{count_bar, human, mode_string, progress_bar, time_string};
use super::paths::{base_name, join, resolve, resolve_parent};
use super::{Cmd, bench};
use crate::Error;
use crate::data::Engine;
use crate::home::{Home, InitOptions};
use crate::types::*;
use anyhow::{Context, anyhow};
use indicatif::ProgressBar;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Collects failures of one command run.
struct Ctx<'a> {
    cmd: &'a str,
    engine: &'a Engine,
    failed: bool,
    uid: u32,
    gid: u32,
}

impl Ctx<'_> {
    fn fail(&mut self, path: &str, err: impl std::fmt::Display) {
        eprintln!("datamesh: {}: {path}: {err}", self.cmd);
        self.failed = true;
    }
}

fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Runs `cmd` (named `name` in messages); returns the exit code.
pub fn run(home: &Home, cmd: Cmd, name: &str) -> i32 {
    match run_inner(home, cmd, name) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("datamesh: {name}: {e:#}");
            if let Some(at) = super::mount::mounted_at(home)
                && format!("{e:#}").contains("in use by another datamesh process")
            {
                eprintln!(
                    "datamesh: {name}: the volume is mounted at {}: use the files there (status, repair and scrub work while mounted), or `datamesh umount {}` first",
                    at.display(),
                    at.display()
                );
            }
            1
        }
    }
}

/// Ok(true) on full success, Ok(false) when some path failed (already reported).
fn run_inner(home: &Home, cmd: Cmd, name: &str) -> anyhow::Result<bool> {
    match cmd {
        Cmd::Init {
            chunk_size,
            data_shards,
            parity_shards,
        } => {
            let chunk_size =
                u32::try_from(chunk_size).map_err(|_| anyhow!("chunk size too large"))?;
            let opts = InitOptions {
                chunk_size,
                data_shards,
                parity_shards,
                ..Default::default()
            };
            home.init(&opts)?;
            println!(
                "datamesh: created a volume in {} ({}+{} erasure coding, {} chunks)",
                home.dir.display(),
                data_shards,
                parity_shards,
                human(chunk_size as u64)
            );
            Ok(true)
        }
        Cmd::Bench { size, dir } => {
            bench::run(size, &dir)?;
            Ok(true)
        }
        Cmd::Mount(args) => {
            let args = args.resolve().map_err(|e| anyhow::anyhow!(e))?;
            super::mount::mount(home, &args)?;
            Ok(true)
        }
        Cmd::Umount { mountpoint } => {
            super::mount::umount(home, &mountpoint)?;
            Ok(true)
        }
        Cmd::Node(args) => {
            super::mesh::node(args, &home.bootstrap)?;
            Ok(true)
        }
        Cmd::Invite { address } => {
            super::mesh::invite(home, &address)?;
            Ok(true)
        }
        Cmd::Status { json } => super::mesh::run(home, crate::admin::Ask::Status, json),
        Cmd::Repair => super::mesh::run(home, crate::admin::Ask::Repair, false),
        Cmd::Scrub => super::mesh::run(home, crate::admin::Ask::Scrub, false),
        Cmd::Gc { grace } => {
            let grace = match grace {
                Some(g) => g,
                None => home.config()?.gc_grace_secs,
            };
            let n = home.open_engine()?.collect_garbage(grace)?;
            println!("datamesh: gc: deleted {n} unreferenced shards");
            Ok(true)
        }
        Cmd::Ls {
            long,
            recursive,
            paths,
        } => with_volume(home, name, |cx| {
            let many = paths.len() > 1 || recursive;
            for p in &paths {
                ls(cx, p, long, recursive, many);
            }
            Ok(())
        }),
        Cmd::Mkdir { parents, paths } => with_volume(home, name, |cx| {
            for p in &paths {
                if let Err(e) = mkdir(cx, p, parents) {
                    cx.fail(p, e);
                }
            }
            Ok(())
        }),
        Cmd::Mv { mut paths } => with_volume(home, name, |cx| {
            let dst = paths.pop().expect("clap requires two paths");
            mv(cx, &paths, &dst);
            Ok(())
        }),
        Cmd::Rm {
            recursive,
            force,
            paths,
        } => with_volume(home, name, |cx| {
            for p in &paths {
                rm(cx, p, recursive, force);
            }
            Ok(())
        }),
        Cmd::Put {
            recursive,
            mut paths,
        } => with_volume(home, name, |cx| {
            let dst = paths.pop().expect("clap requires two paths");
            put(cx, &paths, &dst, recursive);
            Ok(())
        }),
        Cmd::Get {
            recursive,
            mut paths,
        } => with_volume(home, name, |cx| {
            let dst = paths.pop().expect("clap requires two paths");
            get(cx, &paths, &dst, recursive);
            Ok(())
        }),
        Cmd::Cat { paths } => with_volume(home, name, |cx| {
            let stdout = std::io::stdout();
            for p in &paths {
                let res = resolve(cx.engine, p).and_then(|a| match a.kind {
                    FileKind::Dir => Err(Error::IsDir),
                    _ => cx
                        .engine
                        .read_stream(a.ino, &mut stdout.lock(), workers(), &mut |_| {})
                        .map(|_| ()),
                });
                if let Err(e) = res {
                    cx.fail(p, e);
                }
            }
            Ok(())
        }),
        Cmd::Stat { chunks, paths } => with_volume(home, name, |cx| {
            for p in &paths {
                match resolve(cx.engine, p) {
                    Ok(a) => {
                        print_stat(p, &a);
                        if chunks && let Err(e) = print_chunks(cx.engine, a.ino) {
                            cx.fail(p, e);
                        }
                    }
                    Err(e) => cx.fail(p, e),
                }
            }
            Ok(())
        }),
        Cmd::Df => with_volume(home, name, |cx| df(cx.engine)),
        Cmd::Fsck { repair } => with_volume(home, name, |cx| {
            // Problems are printed by fsck itself.
            cx.failed = !fsck(cx.engine, repair)?;
            Ok(())
        }),
    }
}

/// Opens the volume, runs `f` on it, and flushes it; Ok(false) when some path
/// failed (already reported by `f`).
fn with_volume(
    home: &Home,
    name: &str,
    f: impl FnOnce(&mut Ctx) -> anyhow::Result<()>,
) -> anyhow::Result<bool> {
    let engine = home.open_engine()?;
    let mut cx = Ctx {
        cmd: name,
        engine: &engine,
        failed: false,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    };
    f(&mut cx)?;
    engine.flush_all().context("flushing the volume")?;
    Ok(!cx.failed)
}

fn mkdir(cx: &Ctx, path: &str, parents: bool) -> crate::Result<()> {
    if !parents {
        let (dir, name) = resolve_parent(cx.engine, path)?;
        return cx
            .engine
            .mkdir(dir, &name, 0o755, cx.uid, cx.gid)
            .map(|_| ());
    }
    let mut ino = Ino::ROOT;
    for c in super::paths::components(path)? {
        ino = match cx.engine.lookup(ino, c) {
            Ok(a) if a.kind == FileKind::Dir => a.ino,
            Ok(_) => return Err(Error::NotDir),
            Err(Error::NotFound) => match cx.engine.mkdir(ino, c, 0o755, cx.uid, cx.gid) {
                Ok(a) => a.ino,
                // Someone made it meanwhile.
                Err(Error::Exists) => cx.engine.lookup(ino, c)?.ino,
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        };
    }
    Ok(())
}

fn mv(cx: &mut Ctx, srcs: &[String], dst: &str) {
    let into_dir = matches!(resolve(cx.engine, dst), Ok(a) if a.kind == FileKind::Dir);
    if srcs.len() > 1 && !into_dir {
        cx.fail(
            dst,
            "Not a directory (moving several paths needs a directory)",
        );
        return;
    }
    for src in srcs {
        let target = if into_dir {
            join(dst, base_name(src))
        } else {
            dst.to_string()
        };
        let res = resolve_parent(cx.engine, src).and_then(|(sp, sn)| {
            let (dp, dn) = resolve_parent(cx.engine, &target)?;
            cx.engine.rename(sp, &sn, dp, &dn, RenameFlags::default())
        });
        if let Err(e) = res {
            cx.fail(src, e);
        }
    }
}

fn rm(cx: &mut Ctx, path: &str, recursive: bool, force: bool) {
    let res = resolve_parent(cx.engine, path).and_then(|(dir, name)| {
        let attr = cx.engine.lookup(dir, &name)?;
        if attr.kind != FileKind::Dir {
            return cx.engine.unlink(dir, &name);
        }
        if !recursive {
            return Err(Error::IsDir);
        }
        remove_tree(cx.engine, attr.ino)?;
        cx.engine.rmdir(dir, &name)
    });
    match res {
        Err(Error::NotFound) if force => {}
        Err(e) => cx.fail(path, e),
        Ok(()) => {}
    }
}

fn remove_tree(engine: &Engine, dir: Ino) -> crate::Result<()> {
    loop {
        let entries = engine.readdir(dir, 2, 1024)?;
        if entries.is_empty() {
            return Ok(());
        }
        for e in entries {
            if e.kind == FileKind::Dir {
                remove_tree(engine, e.ino)?;
                engine.rmdir(dir, &e.name)?;
            } else {
                engine.unlink(dir, &e.name)?;
            }
        }
    }
}

fn local_size(path: &Path) -> u64 {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::read_dir(path)
            .map(|rd| rd.flatten().map(|e| local_size(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) if m.is_file() => m.len(),
        _ => 0,
    }
}

fn put(cx: &mut Ctx, srcs: &[String], dst: &str, recursive: bool) {
    let into_dir = matches!(resolve(cx.engine, dst), Ok(a) if a.kind == FileKind::Dir);
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
        let res = resolve_parent(cx.engine, dst).and_then(|(dir, name)| {
            match cx
                .engine
                .mkdir(dir, &name, (meta.mode() & 0o7777) as u16, cx.uid, cx.gid)
            {
                Ok(_) => Ok(()),
                Err(Error::Exists) if resolve(cx.engine, dst)?.kind == FileKind::Dir => Ok(()),
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
            let (dir, name) = resolve_parent(cx.engine, dst)?;
            let target = t.as_os_str().as_encoded_bytes();
            match cx.engine.symlink(dir, &name, target, cx.uid, cx.gid) {
                Err(Error::Exists) => {
                    cx.engine.unlink(dir, &name)?;
                    cx.engine
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

/// Write `src` to a hidden temp name beside `dst`, then rename it over `dst`: an
/// interrupted or failed put leaves the old contents (or nothing) in place.
fn put_file(
    cx: &Ctx,
    src: &mut (dyn Read + Send),
    perm: u16,
    dst: &str,
    pb: &ProgressBar,
) -> crate::Result<()> {
    let (dir, name) = resolve_parent(cx.engine, dst)?;
    match cx.engine.lookup(dir, &name) {
        Ok(a) if a.kind == FileKind::Dir => return Err(Error::IsDir),
        Ok(a) if a.kind != FileKind::File => {
            return Err(Error::Invalid("exists and is not a regular file"));
        }
        Ok(_) | Err(Error::NotFound) => {}
        Err(e) => return Err(e),
    }
    let mut tmp = format!(
        ".{}.put-{:08x}",
        String::from_utf8_lossy(&name),
        rand::random::<u32>()
    );
    tmp.truncate(NAME_MAX);
    let attr = cx
        .engine
        .create(dir, tmp.as_bytes(), perm, cx.uid, cx.gid)?;
    let base = pb.position();
    let res = cx
        .engine
        .write_stream(attr.ino, src, workers(), &mut |n| pb.set_position(base + n))
        .and_then(|_| {
            cx.engine
                .rename(dir, tmp.as_bytes(), dir, &name, RenameFlags::default())
        });
    if res.is_err() {
        let _ = cx.engine.unlink(dir, tmp.as_bytes());
    }
    res
}

fn get(cx: &mut Ctx, srcs: &[String], dst: &str, recursive: bool) {
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
        let attr = match resolve(cx.engine, src) {
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
    let engine = cx.engine;
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
                    let entries = engine.readdir(attr.ino, offset, 1024)?;
                    let Some(last) = entries.last() else { break };
                    offset = last.offset;
                    for e in entries {
                        let name = String::from_utf8_lossy(&e.name).into_owned();
                        let child_src = join(src, &name);
                        match engine.getattr(e.ino) {
                            Ok(a) => get_one(cx, &child_src, &a, &dst.join(&name), recursive, pb),
                            Err(err) => cx.fail(&child_src, err),
                        }
                    }
                }
            }
            FileKind::Symlink => {
                let target = engine.readlink(attr.ino)?;
                let target = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&target);
                let _ = fs::remove_file(dst);
                std::os::unix::fs::symlink(target, dst)
                    .with_context(|| dst.display().to_string())?;
            }
            FileKind::File if dst.as_os_str() == "-" => {
                engine.read_stream(
                    attr.ino,
                    &mut std::io::stdout().lock(),
                    workers(),
                    &mut |_| {},
                )?;
            }
            FileKind::File => {
                let mut f = fs::File::create(dst).with_context(|| dst.display().to_string())?;
                let base = pb.position();
                engine.read_stream(attr.ino, &mut f, workers(), &mut |n| {
                    pb.set_position(base + n)
                })?;
                f.flush()?;
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

fn ls(cx: &mut Ctx, path: &str, long: bool, recursive: bool, header: bool) {
    let attr = match resolve(cx.engine, path) {
        Ok(a) => a,
        Err(e) => return cx.fail(path, e),
    };
    if attr.kind != FileKind::Dir {
        print_entry(cx.engine, path, &attr, long);
        return;
    }
    let mut entries = Vec::new();
    let mut offset = 2;
    loop {
        match cx.engine.readdir(attr.ino, offset, 1024) {
            Ok(batch) if batch.is_empty() => break,
            Ok(batch) => {
                offset = batch.last().expect("non-empty").offset;
                entries.extend(batch);
            }
            Err(e) => return cx.fail(path, e),
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    if header {
        println!("{path}:");
    }
    let mut subdirs = Vec::new();
    for e in &entries {
        let name = String::from_utf8_lossy(&e.name).into_owned();
        match cx.engine.getattr(e.ino) {
            Ok(a) => {
                print_entry(cx.engine, &name, &a, long);
                if a.kind == FileKind::Dir {
                    subdirs.push(join(path, &name));
                }
            }
            Err(err) => cx.fail(&join(path, &name), err),
        }
    }
    if recursive {
        for d in subdirs {
            println!();
            ls(cx, &d, long, recursive, true);
        }
    }
}

fn print_entry(engine: &Engine, name: &str, a: &Attr, long: bool) {
    if !long {
        println!("{name}");
        return;
    }
    let link = if a.kind == FileKind::Symlink {
        engine
            .readlink(a.ino)
            .map(|t| format!(" -> {}", String::from_utf8_lossy(&t)))
            .unwrap_or_default()
    } else {
        String::new()
    };
    println!(
        "{} {:>3} {:>5} {:>5} {:>12} {} {name}{link}",
        mode_string(a),
        a.nlink,
        a.uid,
        a.gid,
        a.size,
        time_string(a.mtime)
    );
}

fn print_stat(path: &str, a: &Attr) {
    let kind = match a.kind {
        FileKind::File => "regular file",
        FileKind::Dir => "directory",
        FileKind::Symlink => "symbolic link",
        FileKind::Fifo => "fifo",
        FileKind::Socket => "socket",
        FileKind::CharDev => "character device",
        FileKind::BlockDev => "block device",
    };
    println!("  File: {path}");
    println!("  Size: {:<12} Blocks: {:<10} {kind}", a.size, a.blocks);
    println!(" Inode: {:<12} Links: {}", a.ino, a.nlink);
    println!(
        "Access: ({:04o}/{})  Uid: {}  Gid: {}",
        a.perm,
        mode_string(a),
        a.uid,
        a.gid
    );
    println!("Access: {}", time_string(a.atime));
    println!("Modify: {}", time_string(a.mtime));
    println!("Change: {}", time_string(a.ctime));
    println!(" Birth: {}", time_string(a.crtime));
}

fn print_chunks(engine: &Engine, ino: Ino) -> crate::Result<()> {
    for (idx, c) in engine.meta().chunks_from(ino, 0)? {
        match c.shard_ids() {
            [] => println!(" Chunk: {idx} inline, {} bytes", c.plain_len()),
            ids => {
                let ids: Vec<String> = ids.iter().map(|i| i.to_hex()).collect();
                println!(
                    " Chunk: {idx} {} bytes, shards {}",
                    c.plain_len(),
                    ids.join(" ")
                );
            }
        }
    }
    Ok(())
}

fn df(engine: &Engine) -> anyhow::Result<()> {
    let u = engine.usage()?;
    let stored = u.stored_bytes + u.inline_bytes;
    println!("files         {}", u.files);
    println!("directories   {}", u.dirs);
    println!(
        "logical       {} ({} bytes)",
        human(u.logical_bytes),
        u.logical_bytes
    );
    println!(
        "stored        {} ({} bytes, shards {} + inline {})",
        human(stored),
        stored,
        u.stored_bytes,
        u.inline_bytes
    );
    println!("shards        {}", u.shards);
    println!(
        "erasure       {}+{} (any {} of {} shards rebuild a chunk)",
        u.data_shards,
        u.parity_shards,
        u.data_shards,
        u.data_shards + u.parity_shards
    );
    println!("chunk size    {}", human(u.chunk_size as u64));
    println!(
        "disk          {} free of {}",
        human(u.disk_avail),
        human(u.disk_total)
    );
    Ok(())
}

fn fsck(engine: &Engine, repair: bool) -> anyhow::Result<bool> {
    let pb = count_bar();
    let report = engine.check(repair, &|done, total| {
        pb.set_length(total);
        pb.set_position(done);
    })?;
    pb.finish_and_clear();
    for p in &report.problems {
        println!("problem: {p}");
    }
    println!(
        "datamesh: fsck: {} inodes, {} chunks, {} shards checked; {} degraded ({} repaired), {} lost; {} unreferenced shards (gc removes them)",
        report.inodes,
        report.chunks,
        report.shards_checked,
        report.degraded,
        report.repaired,
        report.lost,
        report.unreferenced_shards
    );
    if report.problems.is_empty() {
        println!("datamesh: fsck: clean");
        Ok(true)
    } else {
        println!("datamesh: fsck: {} problems", report.problems.len());
        Ok(false)
    }
}
