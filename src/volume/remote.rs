//! The caller's side of the volume socket: [`Remote`] is a [`Volume`] whose
//! every operation is a call to the daemon that holds the volume.

use super::calls::Caller;
use super::proto::{self, FromDaemon, MAX_FROM_DAEMON, Reply, Request, ToDaemon};
use super::{NewFile, Progress};
use crate::types::*;
use crate::util::lock;
use crate::{Error, Result};
use serde_bytes::ByteBuf;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// How long the daemon may take to answer the handshake.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

/// Where a read's data frames go.
type DataSink<'a> = dyn FnMut(&[u8]) -> io::Result<()> + 'a;

/// A connection to the daemon serving a volume.
pub struct Remote {
    path: PathBuf,
    conn: Mutex<Conn>,
}

struct Conn {
    r: BufReader<UnixStream>,
    w: BufWriter<UnixStream>,
}

impl Remote {
    /// Connects to the daemon at `path`; `Ok(None)` when none is listening
    /// (no socket, or one left by a process that is gone).
    pub fn connect(path: &Path) -> std::result::Result<Option<Remote>, String> {
        let stream = match UnixStream::connect(path) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let at = |e: io::Error| format!("{}: {e}", path.display());
        stream.set_read_timeout(Some(HANDSHAKE_WAIT)).map_err(at)?;
        let mut r = BufReader::with_capacity(256 << 10, stream.try_clone().map_err(at)?);
        let mut w = BufWriter::with_capacity(256 << 10, stream.try_clone().map_err(at)?);
        proto::write_frame(&mut w, &proto::hello()).map_err(at)?;
        let answer = match proto::read_frame(&mut r, 64 << 10) {
            Ok(Some(a)) => a,
            Ok(None) => return Err(at(io::ErrorKind::UnexpectedEof.into())),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(format!(
                    "{}: the daemon did not answer within {} s",
                    path.display(),
                    HANDSHAKE_WAIT.as_secs()
                ));
            }
            Err(e) => return Err(at(e)),
        };
        proto::check_welcome(&answer).map_err(|e| format!("the volume's daemon: {e}"))?;
        // Calls such as repair may run long: no timeout on their answers.
        stream.set_read_timeout(None).map_err(at)?;
        Ok(Some(Remote {
            path: path.to_path_buf(),
            conn: Mutex::new(Conn { r, w }),
        }))
    }

    fn lost(&self, e: io::Error) -> Error {
        let why = match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe => {
                "the daemon closed the connection (it stopped?)".to_string()
            }
            _ => e.to_string(),
        };
        Error::Io(io::Error::other(format!("{}: {why}", self.path.display())))
    }

    /// Makes a call; `progress` gets its progress frames, `data` its data.
    fn call_with(
        &self,
        req: Request,
        progress: Progress,
        mut data: Option<&mut DataSink>,
    ) -> Result<Reply> {
        let mut c = lock(&self.conn);
        proto::send(&mut c.w, &ToDaemon::Call(req)).map_err(|e| self.lost(e))?;
        let mut local: Option<io::Error> = None;
        loop {
            let msg = proto::recv::<FromDaemon>(&mut c.r, MAX_FROM_DAEMON)
                .and_then(|m| m.ok_or_else(|| io::ErrorKind::UnexpectedEof.into()))
                .map_err(|e| self.lost(e))?;
            match msg {
                FromDaemon::Progress { done, total } => progress(done, total),
                FromDaemon::Data(bytes) => {
                    // After a local failure (a full disk, say), the rest is
                    // read and dropped so the connection stays usable.
                    if local.is_none()
                        && let Some(f) = data.as_mut()
                        && let Err(e) = f(&bytes)
                    {
                        local = Some(e);
                    }
                }
                FromDaemon::Done(reply) => {
                    if let Some(e) = local {
                        return Err(Error::Io(e));
                    }
                    return reply.map_err(Error::from);
                }
            }
        }
    }
}

impl Caller for Remote {
    fn call(&self, req: Request, progress: Progress) -> Result<Reply> {
        self.call_with(req, progress, None)
    }

    fn send_file(
        &self,
        file: &NewFile,
        src: &mut (dyn Read + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let mut c = lock(&self.conn);
        let Conn { r, w } = &mut *c;
        proto::send(w, &ToDaemon::Call(Request::PutFile(file.clone())))
            .map_err(|e| self.lost(e))?;
        let mut frame = vec![0u8; proto::DATA_FRAME];
        let mut sent = 0u64;
        let mut local = None;
        loop {
            // The daemon answers early when the put failed (the name is a
            // directory, the peers are full): stop sending then.
            if answered_early(r.get_ref()) || !r.buffer().is_empty() {
                break;
            }
            let n = match crate::util::read_up_to(src, &mut frame) {
                Ok(n) => n,
                Err(e) => {
                    let _ = proto::send(w, &ToDaemon::Abort(e.to_string()));
                    local = Some(e);
                    break;
                }
            };
            if n == 0 {
                break;
            }
            let data = ToDaemon::Data(ByteBuf::from(frame[..n].to_vec()));
            if let Err(e) = proto::send(w, &data) {
                // The daemon may have answered and hung up: its answer says why.
                local.get_or_insert(e);
                break;
            }
            sent += n as u64;
            progress(sent);
        }
        if local.is_none() {
            let _ = proto::send(w, &ToDaemon::End);
        }
        let answer = proto::recv::<FromDaemon>(r, MAX_FROM_DAEMON)
            .and_then(|m| m.ok_or_else(|| io::ErrorKind::UnexpectedEof.into()));
        match (answer, local) {
            (_, Some(e)) => Err(Error::Io(e)),
            (Ok(FromDaemon::Done(Err(e))), None) => Err(e.into()),
            (Ok(FromDaemon::Done(Ok(Reply::Unit))), None) => Ok(()),
            (Ok(_), None) => Err(Error::Io(io::Error::other(
                "the daemon answered a put out of turn",
            ))),
            (Err(e), None) => Err(self.lost(e)),
        }
    }

    fn fetch_file(
        &self,
        ino: Ino,
        dst: &mut (dyn Write + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        let mut got = 0u64;
        let mut sink = |b: &[u8]| {
            dst.write_all(b)?;
            got += b.len() as u64;
            progress(got);
            Ok(())
        };
        let n = match self.call_with(Request::ReadFile(ino), &|_, _| {}, Some(&mut sink))? {
            Reply::Count(n) => n,
            other => {
                return Err(Error::Io(io::Error::other(format!(
                    "the daemon answered a read with {other:?}"
                ))));
            }
        };
        dst.flush()?;
        Ok(n)
    }

    fn sync(&self) -> Result<()> {
        match self.call_with(Request::Barrier, &|_, _| {}, None)? {
            Reply::Unit => Ok(()),
            other => Err(Error::Io(io::Error::other(format!(
                "the daemon answered the barrier with {other:?}"
            )))),
        }
    }
}

/// Whether the daemon has sent something (its early answer) without waiting.
fn answered_early(s: &UnixStream) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    matches!(recv(s.as_raw_fd(), &mut b, flags), Ok(n) if n > 0)
}
