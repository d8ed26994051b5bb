//! `datamesh mount`, `datamesh umount` and `datamesh serve`: the daemon's
//! lifecycle. By default `mount` starts itself again in the foreground as a
//! background process, waits until the kernel shows the mount, and returns;
//! `umount` asks that process to stop (SIGTERM: it flushes every buffered
//! write, then unmounts) and waits for it. `serve` holds the volume for the CLI
//! without a mount, in the foreground, until a signal ends it.

use super::MountArgs;
use crate::home::{Home, InitOptions};
use anyhow::{Context, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn is_mounted(at: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let at = at.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&*at))
}

/// A FUSE mount whose process died answers every access with ENOTCONN.
fn clean_stale_mount(at: &Path) -> anyhow::Result<()> {
    match fs::metadata(at) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            let st = Command::new("fusermount3").arg("-uz").arg(at).status();
            if !matches!(st, Ok(s) if s.success()) {
                bail!(
                    "{}: a stale mount from a process that died is in the way; \
                     remove it with `fusermount3 -uz {}`",
                    at.display(),
                    at.display()
                );
            }
            eprintln!(
                "datamesh: mount: {}: removed a stale mount left by a process that died",
                at.display()
            );
            Ok(())
        }
        _ => Ok(()),
    }
}

fn pid_file(home: &Home) -> PathBuf {
    home.paths().mount_pid()
}

pub fn mount(home: &Home, args: &MountArgs) -> anyhow::Result<()> {
    let mountpoint = args.mountpoint.as_path();
    clean_stale_mount(mountpoint)?;
    crate::fuse::check_mountable(mountpoint)?;
    let mountpoint =
        fs::canonicalize(mountpoint).with_context(|| mountpoint.display().to_string())?;
    if is_mounted(&mountpoint) {
        bail!(
            "{}: something is already mounted here",
            mountpoint.display()
        );
    }
    if !home.exists() {
        home.init(&InitOptions::default())?;
    }
    if args.foreground {
        let pid = pid_file(home);
        let mut opts = args.fs_options();
        if let Some(src) = mount_source(home) {
            opts.source = src;
        }
        let res = daemon(home, &args.daemon, |engine, signals, runner| {
            fs::write(
                &pid,
                format!("{}\n{}\n", std::process::id(), mountpoint.display()),
            )
            .with_context(|| pid.display().to_string())?;
            Ok(crate::fuse::mount(
                engine.clone(),
                &mountpoint,
                &opts,
                signals,
                runner,
            )?)
        });
        let _ = fs::remove_file(&pid);
        return res;
    }
    let log_path = home.paths().mount_log();
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| log_path.display().to_string())?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--home").arg(&home.dir);
    for b in &home.bootstrap {
        cmd.arg("--bootstrap").arg(b);
    }
    cmd.arg("mount")
        .arg("--foreground")
        .args(args.to_flags())
        .arg(&mountpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        // Its own process group: a Ctrl-C meant for the shell must not reach it.
        .process_group(0);
    let mut child = cmd.spawn().context("starting the mount process")?;
    let start = Instant::now();
    while !is_mounted(&mountpoint) {
        if let Some(st) = child.try_wait()? {
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            let last: Vec<&str> = text.lines().rev().take(3).collect();
            let last: Vec<&str> = last.into_iter().rev().collect();
            bail!("the mount process exited ({st}): {}", last.join(" / "));
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            bail!(
                "{}: the mount did not appear within 60 s (see {})",
                mountpoint.display(),
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "datamesh: mounted {} at {} (pid {}, log {})",
        home.dir.display(),
        mountpoint.display(),
        child.id(),
        log_path.display()
    );
    Ok(())
}

/// Runs a volume daemon: opens the volume, answers on its socket, runs the
/// engine's workers and `body` (the mount, or a wait for a signal); then stops
/// the workers and flushes the volume.
fn daemon(
    home: &Home,
    opts: &super::DaemonArgs,
    body: impl FnOnce(
        &Arc<crate::data::Engine>,
        crate::workers::ExitSignals,
        &crate::workers::Runner,
    ) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    // Before the engine opens, so that a signal from then on ends it cleanly.
    let signals = crate::workers::catch_exit_signals()?;
    let (cache_mb, dirty_mb) = (opts.cache_mb, opts.dirty_mb);
    let listen = home.listen_addrs(&opts.listen)?;
    let member = home.is_member();
    if member && !listen.is_empty() {
        bail!("--listen: only the home node answers member devices; this is one");
    }
    let (engine, client) = if member {
        let cfg = home.engine_config(cache_mb, dirty_mb)?;
        let engine =
            crate::member::namespace::open_engine(home, cfg).context("reaching the home node")?;
        (engine, None)
    } else {
        crate::protect::open_daemon(home, cache_mb, dirty_mb)?
    };
    let engine = Arc::new(engine);
    let runner = crate::workers::Runner::new();
    let sock = home.paths().volume_sock();
    let mut protector = None;
    let res = (|| -> anyhow::Result<()> {
        // Read once: every part of the daemon starts from the same settings.
        let cfg = home.config()?;
        let protect = cfg.protect_secs > 0;
        if !protect && client.is_some() {
            tracing::warn!(
                "namespace protection is off (protect_secs = 0): losing this disk loses the volume"
            );
        }
        if let Some(client) = client.as_ref().filter(|_| protect) {
            let p = crate::protect::Protector::start(
                &engine,
                home.paths(),
                &home.volume_key()?,
                client.clone(),
                &cfg,
                &runner,
            )?;
            protector = Some(p);
        }
        if !listen.is_empty() {
            let Some(client) = client else {
                anyhow::bail!(
                    "--listen: member devices store their files on the storage peers, \
                     and this volume has none yet (see `datamesh invite`)"
                );
            };
            for a in listen {
                client.listen(a).map_err(|e| anyhow!(e))?;
            }
            let key = home.volume_key()?;
            crate::member::server::HomeServer::start(&engine, home.paths(), key, client, &runner)?;
        }
        // A member's commands reach the home node themselves: no socket
        // there. Here, last of the parts that answer: whoever waits for the
        // socket finds member devices answered too.
        if !member {
            crate::volume::serve::serve(&sock, &engine, &runner)?;
        }
        engine.spawn_workers(&runner)?;
        if !member {
            crate::protect::schedule::start(
                &engine,
                std::time::Duration::from_secs(cfg.snapshot_every_secs),
                cfg.snapshot_keep,
                &runner,
            )?;
        }
        let dav = cfg.webdav;
        let dav_addr = opts.webdav.or(dav.listen);
        // The dashboard, on every HTTP listener this daemon has.
        let board = if opts.metrics.is_some() || dav_addr.is_some() {
            let protect = (!member).then(|| home.paths().protect());
            Some(crate::dashboard::Board::start(&engine, protect, &runner)?)
        } else {
            None
        };
        let weak = Arc::downgrade(&engine);
        let refresh = move || {
            if let Some(e) = weak.upgrade() {
                e.refresh_metrics();
            }
        };
        if let (Some(addr), Some(board)) = (opts.metrics, &board) {
            if !addr.ip().is_loopback() && !opts.metrics_open {
                bail!(
                    "--metrics {addr}: another address than loopback would serve the metrics \
                     and the dashboard (peer ids, errors, file counts) to anyone who reaches \
                     it, with no login. Use 127.0.0.1, reach the dashboard through --webdav \
                     (behind its users), or say --metrics-open"
                );
            }
            let app = crate::metrics::router(refresh.clone())
                .merge(crate::dashboard::router(board.clone(), false));
            tracing::info!("metrics at http://{addr}/metrics, the dashboard at http://{addr}/");
            crate::metrics::serve_router(addr, "metrics", app, None, &runner)?;
        }
        if let (Some(addr), Some(board)) = (dav_addr, &board) {
            let tls = match (&opts.webdav_cert, &opts.webdav_key, dav.cert, dav.key) {
                (Some(c), Some(k), _, _) => Some((c.clone(), k.clone())),
                (None, None, Some(c), Some(k)) => Some((home.dir.join(c), home.dir.join(k))),
                (None, None, None, None) => None,
                _ => bail!("[webdav] in config.toml: cert and key go together"),
            };
            let o = crate::webdav::Options {
                addr,
                users: dav.users,
                insecure: opts.webdav_insecure || dav.insecure,
                tls,
                users_from: Some(crate::webdav::auth::Source::new(
                    home.paths().config(),
                    |path| {
                        crate::home::Config::load(path.to_path_buf())
                            .map(|c| c.webdav.users)
                            .map_err(|e| e.to_string())
                    },
                )),
            };
            let also = crate::metrics::router(refresh)
                .merge(crate::dashboard::router(board.clone(), true));
            crate::webdav::serve(o, engine.clone(), also, &runner)?;
        }
        body(&engine, signals, &runner)
    })();
    // Workers end before the last flush, so none seals or repairs after it.
    runner.stop();
    let flushed = engine.flush_all().context("flushing the volume");
    // The namespace as it is at the end, protected (a failure is logged:
    // the last round's copy stays).
    if let Some(p) = protector
        && flushed.is_ok()
        && let Err(e) = p.round()
    {
        tracing::warn!("protecting the namespace at the end: {e}");
    }
    let _ = fs::remove_file(&sock);
    res.and(flushed)
}

/// `datamesh serve`: the volume held for this host's CLI, with no mount.
pub fn serve(home: &Home, opts: &super::DaemonArgs) -> anyhow::Result<()> {
    if home.is_member() {
        bail!(
            "this is a member device: the volume's daemon runs on the home node \
             (`datamesh mount` works here)"
        );
    }
    if !home.exists() {
        home.init(&InitOptions::default())?;
    }
    daemon(home, opts, |_, signals, runner| {
        let (stop, stopped) = std::sync::mpsc::channel();
        signals.watch(runner, "stopping", move || {
            let _ = stop.send(());
            Ok(())
        })?;
        eprintln!(
            "datamesh: serving {} on {} (SIGINT or SIGTERM stops it)",
            home.dir.display(),
            home.paths().volume_sock().display()
        );
        let _ = stopped.recv();
        Ok(())
    })
}

/// `datamesh:HOME`, so that /proc/mounts names the volume and `umount` finds its
/// process without `--home`; plain `datamesh` for a path the option syntax
/// cannot carry.
fn mount_source(home: &Home) -> Option<String> {
    let dir = home.dir.to_str()?;
    (!dir.contains([',', ' ', '\t', '\n', '\\'])).then(|| format!("datamesh:{dir}"))
}

/// The home directory named by a datamesh mount's source in /proc/mounts.
fn home_of_mount(at: &Path) -> Option<Home> {
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    let at = at.to_str()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (src, mnt) = (f.next()?, f.next()?);
        let dir = src.strip_prefix("datamesh:").filter(|_| mnt == at)?;
        Some(Home::locate(Some(dir.into())))
    })
}

/// Where this home's volume is mounted, if a mount process is serving it.
pub fn mounted_at(home: &Home) -> Option<PathBuf> {
    let t = fs::read_to_string(pid_file(home)).ok()?;
    let mut lines = t.lines();
    let pid: i32 = lines.next()?.parse().ok()?;
    kill(Pid::from_raw(pid), None).ok()?;
    Some(PathBuf::from(lines.next()?))
}

/// The pid of the process serving `mountpoint`, from a home's pid file.
fn owner_in(home: &Home, mountpoint: &Path) -> Option<i32> {
    let t = fs::read_to_string(pid_file(home)).ok()?;
    let mut lines = t.lines();
    let pid: i32 = lines.next()?.parse().ok()?;
    (Path::new(lines.next()?) == mountpoint).then_some(pid)
}

pub fn umount(home: &Home, mountpoint: &Path) -> anyhow::Result<()> {
    let mountpoint = fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    // The mount of this home, or (without --home) of whichever home the
    // mount's source names.
    let owner = owner_in(home, &mountpoint)
        .or_else(|| home_of_mount(&mountpoint).and_then(|h| owner_in(&h, &mountpoint)));
    let Some(pid) = owner.map(Pid::from_raw).filter(|p| kill(*p, None).is_ok()) else {
        // Not ours (another home, or a process that is gone): let the kernel do it.
        let st = Command::new("fusermount3")
            .arg("-u")
            .arg(&mountpoint)
            .status()?;
        if !st.success() {
            bail!("{}: not mounted, or busy", mountpoint.display());
        }
        return Ok(());
    };
    kill(pid, Signal::SIGTERM).map_err(|e| anyhow!("signalling the mount process {pid}: {e}"))?;
    let start = Instant::now();
    // The process unmounts at once, then flushes every buffered write and
    // exits; still mounted a while after the signal means the kernel
    // refused the unmount (a process uses the mount), which fusermount3
    // says plainly, and the mount goes on.
    let mut asked = false;
    while kill(pid, None).is_ok() {
        if !asked && start.elapsed() > Duration::from_secs(3) && is_mounted(&mountpoint) {
            asked = true;
            let out = Command::new("fusermount3")
                .arg("-u")
                .arg(&mountpoint)
                .stdin(Stdio::null())
                .output()?;
            if !out.status.success() {
                bail!(
                    "{}: not unmounted: {} (a process has a file or its working directory \
                     there: see `fuser -vm {}`); the mount goes on",
                    mountpoint.display(),
                    String::from_utf8_lossy(&out.stderr).trim(),
                    mountpoint.display()
                );
            }
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!(
                "{}: the mount process {pid} did not stop within 5 minutes",
                mountpoint.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if is_mounted(&mountpoint) {
        bail!(
            "{}: still mounted after the mount process exited",
            mountpoint.display()
        );
    }
    println!("datamesh: unmounted {}", mountpoint.display());
    Ok(())
}
