//! The daemon's side of the volume socket: a process that holds the volume (a
//! mount, `datamesh serve`) answers the CLI on `HOME/volume.sock`.
//!
//! The socket is made 0600 (the umask is set before it is bound, so it never
//! exists with a wider mode) inside the 0700 home directory, and each caller is
//! checked by its kernel credentials (SO_PEERCRED): root, or the user who owns
//! the home directory. At most [`MAX_CONNECTIONS`] are served at once, each on
//! a thread of its own; the handshake must arrive within [`HANDSHAKE_TIMEOUT`]
//! (a caller that connects and says nothing holds no slot for long). When the
//! daemon stops, every connection's reading side is shut: an idle caller sees
//! the daemon go, a put under way is undone, and the calls being answered
//! finish before the volume's last flush.

use super::proto::{self, FromDaemon, MAX_TO_DAEMON, Reply, Request, ToDaemon, WireError};
use super::{Volume, mesh_report};
use crate::data::Engine;
use crate::util::lock;
use crate::workers::Runner;
use crate::{Error, Result};
use serde_bytes::ByteBuf;
use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Callers served at once (each CLI command holds one connection while it runs).
pub const MAX_CONNECTIONS: usize = 32;
/// How long a caller may take to send its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Progress frames are sent at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// The connections being served, to cut them when the daemon stops.
#[derive(Default)]
struct Live {
    conns: Mutex<HashMap<u64, UnixStream>>,
    next: AtomicU64,
    stopping: AtomicBool,
}

/// Starts answering on the socket at `path` under `runner` (the worker
/// `volume-socket`, stopped with the runner). A socket that cannot be bound is
/// logged, not fatal: the volume is served without it.
pub fn serve(path: &Path, engine: &Arc<Engine>, runner: &Runner) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let _ = std::fs::remove_file(path);
    // Whoever owns the home directory may ask, and root.
    let owner = path
        .parent()
        .and_then(|d| std::fs::metadata(d).ok())
        .map_or(0, |m| m.uid());
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(
                "{}: {e}: the CLI cannot reach this volume while it is served here",
                path.display()
            );
            return Ok(());
        }
    };
    // Also for a umask that another thread changed meanwhile.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let stopper = listener.try_clone()?;
    let weak = Arc::downgrade(engine);
    let workers = runner.clone();
    let live = Arc::new(Live::default());
    let on_stop = live.clone();
    runner.spawn("volume-socket", move |w| {
        let mut handlers: Vec<std::thread::JoinHandle<()>> = Vec::new();
        for conn in listener.incoming() {
            if w.stopping() {
                break;
            }
            let Ok(conn) = conn else { continue };
            handlers.retain(|h| !h.is_finished());
            if handlers.len() >= MAX_CONNECTIONS {
                let why = format!("busy: {MAX_CONNECTIONS} commands are being served; try again");
                let _ = proto::write_frame(&mut &conn, &proto::welcome(Some(&why)));
                continue;
            }
            let id = live.next.fetch_add(1, Ordering::Relaxed);
            if let Ok(clone) = conn.try_clone() {
                lock(&live.conns).insert(id, clone);
            }
            let (weak, workers, mine) = (weak.clone(), workers.clone(), live.clone());
            let spawned = std::thread::Builder::new()
                .name("datamesh-volume-conn".into())
                .spawn(move || {
                    // Changes made for the CLI are others' to the mount here.
                    let res = crate::meta::changes::with_origin("cli", || {
                        handle(conn, owner, &weak, &workers, &mine)
                    });
                    if let Err(e) = res {
                        tracing::debug!("volume socket: {e}");
                    }
                    lock(&mine.conns).remove(&id);
                });
            match spawned {
                Ok(h) => handlers.push(h),
                Err(e) => {
                    lock(&live.conns).remove(&id);
                    w.round(Err(format!("serving a command: {e}")));
                }
            }
        }
        // Calls being answered finish before the volume is flushed.
        for h in handlers {
            let _ = h.join();
        }
    })?;
    // The accept loop blocks in accept: shutting the listening socket down
    // wakes it (accept then fails at once). Not a connection to the socket's
    // path: the home may have been moved or removed meanwhile, or another
    // mount may have bound a socket of its own there, and the accept would
    // never end. The callers' reading sides are cut so that none keeps its
    // thread.
    runner.on_stop(move || {
        on_stop.stopping.store(true, Ordering::SeqCst);
        for c in lock(&on_stop.conns).values() {
            let _ = c.shutdown(Shutdown::Read);
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stopper);
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
    });
    Ok(())
}

/// Whether the process at the other end of `conn` may ask: root, or `owner`.
fn check_caller(conn: &UnixStream, owner: u32) -> std::result::Result<(), String> {
    let cred = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("reading the caller's credentials: {e}"))?;
    if cred.uid() == 0 || cred.uid() == owner {
        return Ok(());
    }
    tracing::warn!(
        "volume socket: refused uid {} (pid {})",
        cred.uid(),
        cred.pid()
    );
    Err(format!(
        "refused: uid {} is neither root nor the owner (uid {owner}) of this volume",
        cred.uid()
    ))
}

/// One caller's connection: the handshake, then its calls until it hangs up.
fn handle(
    conn: UnixStream,
    owner: u32,
    engine: &Weak<Engine>,
    runner: &Runner,
    live: &Live,
) -> io::Result<()> {
    conn.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let mut r = BufReader::with_capacity(256 << 10, conn.try_clone()?);
    let mut w = BufWriter::with_capacity(256 << 10, conn.try_clone()?);
    let hello = match proto::read_frame(&mut r, 64) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(()),
        Err(e) => {
            let why = "not a datamesh volume-protocol handshake";
            let _ = proto::write_frame(&mut w, &proto::welcome(Some(why)));
            return Err(e);
        }
    };
    let refused = check_caller(&conn, owner).and_then(|()| proto::check_hello(&hello).map(drop));
    proto::write_frame(
        &mut w,
        &proto::welcome(refused.as_ref().err().map(|s| &**s)),
    )?;
    if refused.is_err() {
        return Ok(());
    }
    // The caller is the volume's owner: it may take its time between calls.
    conn.set_read_timeout(None)?;
    while let Some(msg) = proto::recv::<ToDaemon>(&mut r, MAX_TO_DAEMON)? {
        let ToDaemon::Call(req) = msg else {
            let why = "a data frame outside a put";
            proto::send(&mut w, &done(Err(Error::Invalid(why))))?;
            return Err(io::Error::other(why));
        };
        let Some(engine) = engine.upgrade() else {
            let e = Error::Io(io::Error::other("the volume is being unmounted"));
            return proto::send(&mut w, &done(Err(e)));
        };
        let put = matches!(req, Request::PutFile(_));
        let state = if put { Input::Open } else { Input::Ended };
        let mut input = DataIn::new(&mut r, state, &live.stopping);
        let reply = call(&engine, req, runner, &mut input, &mut w);
        let more = input.state;
        proto::send(&mut w, &done(reply))?;
        // After a put that failed early, the rest of its data is read and dropped.
        if more == Input::Open {
            let mut sink = [0u8; 64 << 10];
            let mut input = DataIn::new(&mut r, more, &live.stopping);
            while matches!(input.read(&mut sink), Ok(n) if n > 0) {}
        }
    }
    Ok(())
}

fn done(reply: Result<Reply>) -> FromDaemon {
    FromDaemon::Done(reply.map_err(|e| WireError::from(&e)))
}

/// Answers one call. `input` carries a put's data; reads stream out through
/// `w`, and long calls report their progress there.
fn call(
    engine: &Engine,
    req: Request,
    runner: &Runner,
    input: &mut DataIn,
    w: &mut BufWriter<UnixStream>,
) -> Result<Reply> {
    Ok(match req {
        Request::PutFile(file) => {
            super::put_file(engine, &file, input, &mut |_| {})?;
            Reply::Unit
        }
        Request::ReadFile(ino) => {
            let mut out = DataOut {
                w,
                buf: Vec::with_capacity(proto::DATA_FRAME),
            };
            let n = engine.read_stream(ino, &mut out, super::workers(), &mut |_| {})?;
            out.flush()?;
            Reply::Count(n)
        }
        Request::Check { repair } => {
            let progress = Progress::new(w)?;
            Reply::Check(engine.check(repair, &|d, t| progress.send(d, t))?)
        }
        Request::Mesh(ask) => {
            let progress = Progress::new(w)?;
            let report = mesh_report(engine, ask, runner.list(), &|d, t| progress.send(d, t))?;
            Reply::Report(Box::new(report))
        }
        other => answer(engine, other, runner)?,
    })
}

/// Answers a call that streams nothing: every call but `PutFile` and
/// `ReadFile` (which are refused here); fsck and the mesh calls report no
/// progress. The volume socket and the member protocol both answer with it.
pub fn answer(engine: &Engine, req: Request, runner: &Runner) -> Result<Reply> {
    let attr = Reply::Attr;
    let unit = |()| Reply::Unit;
    Ok(match req {
        Request::Lookup { parent, name } => attr(engine.lookup(parent, &name)?),
        Request::Getattr(ino) => attr(engine.getattr(ino)?),
        Request::Readdir { ino, offset, max } => {
            Reply::Entries(engine.readdir(ino, offset, (max as usize).min(4096))?)
        }
        Request::Params => Reply::Params(engine.meta().params().clone()),
        Request::Snapshot(op) => Reply::Snapshots(Volume::snapshot(engine, op)?),
        Request::ReaddirPlus { ino, offset, max } => {
            Reply::EntriesPlus(engine.readdir_plus(ino, offset, (max as usize).min(4096))?)
        }
        Request::Readlink(ino) => Reply::Bytes(ByteBuf::from(engine.readlink(ino)?)),
        Request::Mkdir {
            parent,
            name,
            perm,
            uid,
            gid,
        } => attr(engine.mkdir(parent, &name, perm, uid, gid)?),
        Request::Symlink {
            parent,
            name,
            target,
            uid,
            gid,
        } => attr(engine.symlink(parent, &name, &target, uid, gid)?),
        Request::Unlink { parent, name } => unit(engine.unlink(parent, &name)?),
        Request::Rmdir { parent, name } => unit(engine.rmdir(parent, &name)?),
        Request::Rename {
            from,
            name,
            to,
            new_name,
        } => unit(Volume::rename(engine, from, &name, to, &new_name)?),
        Request::PutFile(_) | Request::ReadFile(_) => {
            return Err(Error::Invalid("file data is not carried by this call"));
        }
        Request::Chunks(ino) => Reply::Chunks(Volume::chunks(engine, ino)?),
        Request::Usage => Reply::Usage(engine.usage()?),
        Request::Check { repair } => Reply::Check(engine.check(repair, &|_, _| {})?),
        Request::Gc { grace_secs } => Reply::Count(engine.collect_garbage(grace_secs)?),
        Request::Mesh(ask) => Reply::Report(Box::new(mesh_report(
            engine,
            ask,
            runner.list(),
            &|_, _| {},
        )?)),
        Request::Barrier => unit(engine.sync_committed()?),
    })
}

/// Where a put's data stands on the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    /// Data frames may follow.
    Open,
    /// The caller sent `End` (or `Abort`), or this call takes no data.
    Ended,
}

/// A put's data, read from the caller's data frames.
struct DataIn<'a> {
    r: &'a mut BufReader<UnixStream>,
    state: Input,
    stopping: &'a AtomicBool,
    /// The last frame's bytes, from `at` on not yet read.
    pending: Vec<u8>,
    at: usize,
}

impl<'a> DataIn<'a> {
    fn new(r: &'a mut BufReader<UnixStream>, state: Input, stopping: &'a AtomicBool) -> Self {
        DataIn {
            r,
            state,
            stopping,
            pending: Vec::new(),
            at: 0,
        }
    }
}

impl Read for DataIn<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.at < self.pending.len() {
                let n = buf.len().min(self.pending.len() - self.at);
                buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            if self.state == Input::Ended {
                return Ok(0);
            }
            let stopping = self.stopping.load(Ordering::SeqCst);
            let msg = proto::recv::<ToDaemon>(self.r, MAX_TO_DAEMON);
            self.state = Input::Ended;
            match msg {
                Ok(Some(ToDaemon::Data(d))) => {
                    self.state = Input::Open;
                    self.pending = d.into_vec();
                    self.at = 0;
                }
                Ok(Some(ToDaemon::End)) => return Ok(0),
                Ok(Some(ToDaemon::Abort(why))) => {
                    return Err(io::Error::other(format!("the caller gave up: {why}")));
                }
                Ok(Some(ToDaemon::Call(_))) => {
                    return Err(io::Error::other("a call in the middle of a put's data"));
                }
                _ if stopping || self.stopping.load(Ordering::SeqCst) => {
                    return Err(io::Error::other("the daemon is stopping"));
                }
                Ok(None) => {
                    return Err(io::Error::other(
                        "the caller hung up in the middle of the data",
                    ));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A read's bytes, sent to the caller in data frames.
struct DataOut<'a> {
    w: &'a mut BufWriter<UnixStream>,
    buf: Vec<u8>,
}

impl Write for DataOut<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(proto::DATA_FRAME - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == proto::DATA_FRAME {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let frame = FromDaemon::Data(ByteBuf::from(std::mem::take(&mut self.buf)));
            proto::send(self.w, &frame)?;
            self.buf.reserve(proto::DATA_FRAME);
        }
        Ok(())
    }
}

/// Progress frames of a long call, from whichever thread reports, at most
/// one per [`PROGRESS_EVERY`].
struct Progress {
    w: Mutex<(UnixStream, Option<Instant>)>,
}

impl Progress {
    fn new(w: &mut BufWriter<UnixStream>) -> io::Result<Progress> {
        w.flush()?;
        Ok(Progress {
            w: Mutex::new((w.get_ref().try_clone()?, None)),
        })
    }

    fn send(&self, done: u64, total: u64) {
        let mut g = lock(&self.w);
        if g.1.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) && done < total {
            return;
        }
        g.1 = Some(Instant::now());
        // A caller that went away learns nothing more; the call's answer fails too.
        let _ = proto::send(&mut g.0, &FromDaemon::Progress { done, total });
    }
}
