//! The commands. Each failure is printed as `datamesh: CMD: PATH: cause`; a command
//! that hit any failure exits 1, after doing what it could with the other paths.

use super::output::{count_bar, human, mode_string, time_string};
use super::paths::{base_name, join, resolve, resolve_parent};
use super::{Cmd, bench};
use crate::Error;
use crate::data::Engine;
use crate::home::{Home, InitOptions};
use crate::types::*;
use anyhow::{Context, anyhow};

/// Collects failures of one command run.
pub(super) struct Ctx<'a> {
    pub(super) cmd: &'a str,
    pub(super) engine: &'a Engine,
    pub(super) failed: bool,
    pub(super) uid: u32,
    pub(super) gid: u32,
}

impl Ctx<'_> {
    pub(super) fn fail(&mut self, path: &str, err: impl std::fmt::Display) {
        eprintln!("datamesh: {}: {path}: {err}", self.cmd);
        self.failed = true;
    }
}

pub(super) fn workers() -> usize {
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
        Cmd::Invite { address, ttl, uses } => {
            super::mesh::invite(home, &address, ttl, uses)?;
            Ok(true)
        }
        Cmd::Peers { action } => super::mesh::peers(home, action),
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
            super::transfer::put(cx, &paths, &dst, recursive);
            Ok(())
        }),
        Cmd::Get {
            recursive,
            mut paths,
        } => with_volume(home, name, |cx| {
            let dst = paths.pop().expect("clap requires two paths");
            super::transfer::get(cx, &paths, &dst, recursive);
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
