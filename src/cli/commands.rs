//! The commands. Each failure is printed as `datamesh: CMD: PATH: cause`; a command
//! that hit any failure exits 1, after doing what it could with the other paths.

use super::output::{count_bar, human, mode_string, time_string};
use super::paths::{base_name, join, resolve, resolve_parent};
use super::{Cmd, bench};
use crate::Error;
use crate::home::{Home, InitOptions};
use crate::types::*;
use crate::volume::{Volume, remote::Remote};
use anyhow::{Context, anyhow};

/// Collects failures of one command run.
pub(super) struct Ctx<'a> {
    pub(super) cmd: &'a str,
    pub(super) vol: &'a dyn Volume,
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

/// Runs `cmd` (named `name` in messages); returns the exit code.
pub fn run(home: &Home, cmd: Cmd, name: &str) -> i32 {
    match run_inner(home, cmd, name) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("datamesh: {name}: {e:#}");
            if format!("{e:#}").contains("in use by another datamesh process") {
                // A daemon that is starting, or one of an older datamesh
                // (which has no volume socket).
                let held = match super::mount::mounted_at(home) {
                    Some(at) => format!("the process mounted at {}", at.display()),
                    None => "another process".to_string(),
                };
                eprintln!(
                    "datamesh: {name}: {held} holds the volume but does not answer on {}: \
                     try again in a moment, or stop it (`datamesh umount`) if it runs an older datamesh",
                    home.paths().volume_sock().display()
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
            meta,
        } => {
            let chunk_size =
                u32::try_from(chunk_size).map_err(|_| anyhow!("chunk size too large"))?;
            let opts = InitOptions {
                chunk_size,
                data_shards,
                parity_shards,
                meta: meta.clone(),
                ..Default::default()
            };
            home.init(&opts)?;
            let at = meta.map_or(String::new(), |url| format!("; namespace in {url}"));
            println!(
                "datamesh: created a volume in {} ({}+{} erasure coding, {} chunks{at})",
                home.dir.display(),
                data_shards,
                parity_shards,
                human(chunk_size as u64)
            );
            Ok(true)
        }
        Cmd::BenchMeta {
            stats,
            creates,
            dir,
        } => {
            let opened = Opened::open(home)?;
            bench::meta(opened.volume(), &dir, stats, creates)?;
            Ok(true)
        }
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = super::Cli::command();
            clap_complete::generate(shell, &mut cmd, "datamesh", &mut std::io::stdout());
            Ok(true)
        }
        Cmd::Man { dir } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
            // datamesh.1, and datamesh-COMMAND.1 for each visible command.
            clap_mangen::generate_to(super::Cli::command(), &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
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
        Cmd::Serve { daemon } => {
            super::mount::serve(home, &daemon)?;
            Ok(true)
        }
        Cmd::Join { token, name } => {
            let name = name.unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "device".into())
            });
            let id = crate::member::client::join(home, &token, &name)?;
            println!(
                "datamesh: {} is now member device {name} of the volume of home node {id}",
                home.dir.display()
            );
            Ok(true)
        }
        Cmd::Members { action } => super::mesh::members(home, action),
        Cmd::Meta {
            action: super::MetaAction::Migrate { to },
        } => {
            println!("datamesh: meta migrate: {}", home.migrate_meta(&to)?);
            Ok(true)
        }
        Cmd::Recover { kit } => {
            super::kit::recover(home, &kit)?;
            Ok(true)
        }
        Cmd::Kit {
            action: super::KitAction::Export { qr },
        } => {
            let id = volume_id(home, name)?;
            super::kit::kit_export(home, id, qr)?;
            Ok(true)
        }
        Cmd::Kit {
            action: super::KitAction::Check { file },
        } => {
            let id = (home.exists() && !home.is_member())
                .then(|| volume_id(home, name))
                .transpose()?;
            super::kit::kit_check(home, &file, id)?;
            Ok(true)
        }
        Cmd::Node(args) => {
            super::mesh::node(args, &home.bootstrap)?;
            Ok(true)
        }
        Cmd::Invite {
            member: true,
            address,
            ttl,
            ..
        } => {
            super::mesh::invite_member(home, &address, ttl)?;
            Ok(true)
        }
        Cmd::Invite {
            address, ttl, uses, ..
        } => {
            super::mesh::invite(home, &address, ttl, uses)?;
            Ok(true)
        }
        Cmd::Peers { action } => super::mesh::peers(home, action),
        Cmd::Status { json } => super::mesh::run(home, crate::volume::Ask::Status, json),
        Cmd::Repair => super::mesh::run(home, crate::volume::Ask::Repair, false),
        Cmd::Scrub => super::mesh::run(home, crate::volume::Ask::Scrub, false),
        Cmd::Webdav { action } => super::webdav::run(home, action).map(|()| true),
        Cmd::Snapshot { action } => with_volume(home, name, Writes::No, |cx| {
            use crate::volume::SnapshotOp;
            let (op, done) = match &action {
                super::SnapshotAction::Create { name } => (
                    SnapshotOp::Create(name.as_bytes().to_vec().into()),
                    Some(format!("snapshot {name} taken: /.snapshots/{name}")),
                ),
                super::SnapshotAction::Delete { name } => (
                    SnapshotOp::Delete(name.as_bytes().to_vec().into()),
                    Some(format!(
                        "snapshot {name} deleted; `datamesh gc` frees what only it held"
                    )),
                ),
                super::SnapshotAction::List => (SnapshotOp::List, None),
            };
            let what = match &action {
                super::SnapshotAction::Create { name } | super::SnapshotAction::Delete { name } => {
                    format!("/.snapshots/{name}")
                }
                super::SnapshotAction::List => "/.snapshots".into(),
            };
            let list = cx.vol.snapshot(op).with_context(|| what)?;
            match done {
                Some(text) => println!("{text}"),
                None => {
                    for s in list {
                        println!(
                            "{:<24} {}  {:>10} only here",
                            String::from_utf8_lossy(&s.name),
                            super::output::time_string(s.created),
                            super::output::human(s.pinned_bytes)
                        );
                    }
                }
            }
            Ok(())
        }),
        Cmd::Gc { grace } => {
            let grace = match grace {
                Some(g) => g,
                None => home.config()?.gc_grace_secs,
            };
            with_volume(home, name, Writes::Yes, |cx| {
                let n = cx.vol.collect_garbage(grace)?;
                println!("datamesh: gc: deleted {n} unreferenced shards");
                Ok(())
            })
        }
        Cmd::Ls {
            long,
            recursive,
            paths,
        } => with_volume(home, name, Writes::No, |cx| {
            let many = paths.len() > 1 || recursive;
            for p in &paths {
                ls(cx, p, long, recursive, many);
            }
            Ok(())
        }),
        Cmd::Mkdir { parents, paths } => with_volume(home, name, Writes::Yes, |cx| {
            for p in &paths {
                if let Err(e) = mkdir(cx, p, parents) {
                    cx.fail(p, e);
                }
            }
            Ok(())
        }),
        Cmd::Mv { mut paths } => with_volume(home, name, Writes::Yes, |cx| {
            let dst = paths.pop().expect("clap requires two paths");
            mv(cx, &paths, &dst);
            Ok(())
        }),
        Cmd::Rm {
            recursive,
            force,
            paths,
        } => with_volume(home, name, Writes::Yes, |cx| {
            for p in &paths {
                rm(cx, p, recursive, force);
            }
            Ok(())
        }),
        Cmd::Put {
            recursive,
            mut paths,
        } => with_volume(home, name, Writes::Yes, |cx| {
            let dst = paths.pop().expect("clap requires two paths");
            super::transfer::put(cx, &paths, &dst, recursive);
            Ok(())
        }),
        Cmd::Get {
            recursive,
            mut paths,
        } => with_volume(home, name, Writes::No, |cx| {
            let dst = paths.pop().expect("clap requires two paths");
            super::transfer::get(cx, &paths, &dst, recursive);
            Ok(())
        }),
        Cmd::Cat { paths } => with_volume(home, name, Writes::No, |cx| {
            for p in &paths {
                let res = resolve(cx.vol, p).and_then(|a| match a.kind {
                    FileKind::Dir => Err(Error::IsDir),
                    _ => cx
                        .vol
                        .read_file(a.ino, &mut std::io::stdout(), &mut |_| {})
                        .map(|_| ()),
                });
                if let Err(e) = res {
                    cx.fail(p, e);
                }
            }
            Ok(())
        }),
        Cmd::Stat { chunks, paths } => with_volume(home, name, Writes::No, |cx| {
            for p in &paths {
                match resolve(cx.vol, p) {
                    Ok(a) => {
                        print_stat(p, &a);
                        if chunks && let Err(e) = print_chunks(cx.vol, a.ino) {
                            cx.fail(p, e);
                        }
                    }
                    Err(e) => cx.fail(p, e),
                }
            }
            Ok(())
        }),
        Cmd::Df => with_volume(home, name, Writes::No, |cx| df(cx.vol)),
        Cmd::Fsck { repair } => with_volume(home, name, Writes::Yes, |cx| {
            // Problems are printed by fsck itself.
            cx.failed = !fsck(cx.vol, repair)?;
            Ok(())
        }),
    }
}

/// Whether a command changes the volume (and so ends with a durability barrier).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Writes {
    Yes,
    No,
}

/// The volume as this host's commands reach it: through the daemon that holds
/// it (a mount, `datamesh serve`), or opened by this process when none runs.
pub(super) enum Opened {
    Daemon(Remote),
    Here(Box<crate::data::Engine>),
    /// A member device: the home node's volume, over the mesh.
    Member(Box<crate::member::client::MemberVolume>),
}

impl Opened {
    pub(super) fn open(home: &Home) -> anyhow::Result<Opened> {
        if home.is_member() {
            let m = crate::member::client::MemberVolume::open(home)
                .context("reaching the home node")?;
            return Ok(Opened::Member(Box::new(m)));
        }
        match Remote::connect(&home.paths().volume_sock()).map_err(|e| anyhow!(e))? {
            Some(r) => Ok(Opened::Daemon(r)),
            None => Ok(Opened::Here(Box::new(crate::protect::open_engine(home)?))),
        }
    }

    pub(super) fn volume(&self) -> &dyn Volume {
        match self {
            Opened::Daemon(r) => r,
            Opened::Here(e) => &**e,
            Opened::Member(m) => &**m,
        }
    }
}

/// Reaches the volume, runs `f` on it, and (for a command that `writes`, or
/// one that opened the volume itself) ends with its durability barrier;
/// Ok(false) when some path failed (already reported by `f`).
fn with_volume(
    home: &Home,
    name: &str,
    writes: Writes,
    f: impl FnOnce(&mut Ctx) -> anyhow::Result<()>,
) -> anyhow::Result<bool> {
    let opened = Opened::open(home)?;
    let mut cx = Ctx {
        cmd: name,
        vol: opened.volume(),
        failed: false,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    };
    let res = f(&mut cx);
    let failed = cx.failed;
    if writes == Writes::Yes || matches!(opened, Opened::Here(_)) {
        opened.volume().barrier().context("flushing the volume")?;
    }
    res?;
    Ok(!failed)
}

/// The volume's id, asked of the volume (through its daemon when one runs).
fn volume_id(home: &Home, name: &str) -> anyhow::Result<[u8; 16]> {
    if home.is_member() {
        anyhow::bail!("this is a member device: the kit is the home node's to export");
    }
    if !home.exists() {
        anyhow::bail!("{}: no volume here", home.dir.display());
    }
    let mut id = None;
    with_volume(home, name, Writes::No, |cx| {
        id = Some(cx.vol.params()?.volume_id);
        Ok(())
    })?;
    Ok(id.expect("set when with_volume succeeds"))
}

fn mkdir(cx: &Ctx, path: &str, parents: bool) -> crate::Result<()> {
    if !parents {
        let (dir, name) = resolve_parent(cx.vol, path)?;
        return cx.vol.mkdir(dir, &name, 0o755, cx.uid, cx.gid).map(|_| ());
    }
    let mut ino = Ino::ROOT;
    for c in super::paths::components(path)? {
        ino = match cx.vol.lookup(ino, c) {
            Ok(a) if a.kind == FileKind::Dir => a.ino,
            Ok(_) => return Err(Error::NotDir),
            Err(Error::NotFound) => match cx.vol.mkdir(ino, c, 0o755, cx.uid, cx.gid) {
                Ok(a) => a.ino,
                // Someone made it meanwhile.
                Err(Error::Exists) => cx.vol.lookup(ino, c)?.ino,
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        };
    }
    Ok(())
}

fn mv(cx: &mut Ctx, srcs: &[String], dst: &str) {
    let into_dir = matches!(resolve(cx.vol, dst), Ok(a) if a.kind == FileKind::Dir);
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
        let res = resolve_parent(cx.vol, src).and_then(|(sp, sn)| {
            let (dp, dn) = resolve_parent(cx.vol, &target)?;
            cx.vol.rename(sp, &sn, dp, &dn)
        });
        if let Err(e) = res {
            cx.fail(src, e);
        }
    }
}

fn rm(cx: &mut Ctx, path: &str, recursive: bool, force: bool) {
    let res = resolve_parent(cx.vol, path).and_then(|(dir, name)| {
        let attr = cx.vol.lookup(dir, &name)?;
        if attr.kind != FileKind::Dir {
            return cx.vol.unlink(dir, &name);
        }
        if !recursive {
            return Err(Error::IsDir);
        }
        remove_tree(cx.vol, attr.ino)?;
        cx.vol.rmdir(dir, &name)
    });
    match res {
        Err(Error::NotFound) if force => {}
        Err(e) => cx.fail(path, e),
        Ok(()) => {}
    }
}

fn remove_tree(vol: &dyn Volume, dir: Ino) -> crate::Result<()> {
    loop {
        let entries = vol.readdir(dir, 2, 1024)?;
        if entries.is_empty() {
            return Ok(());
        }
        for e in entries {
            if e.kind == FileKind::Dir {
                remove_tree(vol, e.ino)?;
                vol.rmdir(dir, &e.name)?;
            } else {
                vol.unlink(dir, &e.name)?;
            }
        }
    }
}

fn ls(cx: &mut Ctx, path: &str, long: bool, recursive: bool, header: bool) {
    let attr = match resolve(cx.vol, path) {
        Ok(a) => a,
        Err(e) => return cx.fail(path, e),
    };
    if attr.kind != FileKind::Dir {
        print_entry(cx.vol, path, &attr, long);
        return;
    }
    // Entries and their attributes a page at a time: one call per page from
    // another process or host, not one per name.
    let mut entries = Vec::new();
    let mut offset = 2;
    loop {
        match cx.vol.readdir_plus(attr.ino, offset, 1024) {
            Ok(batch) if batch.is_empty() => break,
            Ok(batch) => {
                offset = batch.last().expect("non-empty").0.offset;
                entries.extend(batch);
            }
            Err(e) => return cx.fail(path, e),
        }
    }
    entries.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    if header {
        println!("{path}:");
    }
    let mut subdirs = Vec::new();
    for (e, a) in &entries {
        let name = String::from_utf8_lossy(&e.name).into_owned();
        print_entry(cx.vol, &name, a, long);
        if a.kind == FileKind::Dir {
            subdirs.push(join(path, &name));
        }
    }
    if recursive {
        for d in subdirs {
            println!();
            ls(cx, &d, long, recursive, true);
        }
    }
}

fn print_entry(vol: &dyn Volume, name: &str, a: &Attr, long: bool) {
    if !long {
        println!("{name}");
        return;
    }
    let link = if a.kind == FileKind::Symlink {
        vol.readlink(a.ino)
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

fn print_chunks(vol: &dyn Volume, ino: Ino) -> crate::Result<()> {
    for c in vol.chunks(ino)? {
        if c.shards.is_empty() {
            println!(" Chunk: {} inline, {} bytes", c.index, c.plain_len);
        } else {
            println!(
                " Chunk: {} {} bytes, shards {}",
                c.index,
                c.plain_len,
                c.shards.join(" ")
            );
        }
    }
    Ok(())
}

fn df(vol: &dyn Volume) -> anyhow::Result<()> {
    let u = vol.usage()?;
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

fn fsck(vol: &dyn Volume, repair: bool) -> anyhow::Result<bool> {
    let pb = count_bar();
    let report = vol.check(repair, &|done, total| {
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
