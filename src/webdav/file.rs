//! An open file of the WebDAV gateway: reads and writes at a position
//! through the engine; a whole-file write lands in a hidden file renamed over
//! its target once whole.

use super::{Meta, blocking};
use crate::data::Engine;
use crate::types::{Ino, RenameFlags};
use bytes::{Buf, Bytes};
use dav_server::fs::{DavFile, DavMetaData, FsError, FsFuture};
use std::io::SeekFrom;
use std::sync::Arc;

/// An open file. A whole-file write (PUT) goes to a hidden file beside the
/// target, renamed over it at the end: readers see the old or the new
/// version, never a part, and of concurrent PUTs one whole version wins.
pub(super) struct Handle {
    pub(super) engine: Arc<Engine>,
    pub(super) ino: Ino,
    pub(super) pos: u64,
    /// For a PUT: where the hidden file goes once whole.
    pub(super) target: Option<(Ino, Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("ino", &self.ino)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let (engine, ino) = (self.engine.clone(), self.ino);
        let target = self.target.take();
        // Not renamed into place (the client went away): the hidden file goes.
        let _ = std::thread::Builder::new()
            .name("datamesh-dav-close".into())
            .spawn(move || {
                let _ = engine.release(ino);
                if let Some((dir, tmp, _)) = target {
                    let _ = engine.unlink(dir, &tmp);
                }
            });
    }
}

impl DavFile for Handle {
    fn metadata(&mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let (engine, ino) = (self.engine.clone(), self.ino);
        Box::pin(async move {
            let a = blocking(move || engine.getattr(ino)).await?;
            Ok(Box::new(Meta(a)) as Box<dyn DavMetaData>)
        })
    }
    fn write_buf(&mut self, mut buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        self.write_bytes(bytes)
    }
    fn write_bytes(&mut self, buf: Bytes) -> FsFuture<'_, ()> {
        let (engine, ino, pos) = (self.engine.clone(), self.ino, self.pos);
        Box::pin(async move {
            let n = blocking(move || engine.write(ino, pos, &buf)).await?;
            self.pos += n as u64;
            Ok(())
        })
    }
    fn read_bytes(&mut self, count: usize) -> FsFuture<'_, Bytes> {
        let (engine, ino, pos) = (self.engine.clone(), self.ino, self.pos);
        Box::pin(async move {
            let data = blocking(move || engine.read(ino, pos, count)).await?;
            self.pos += data.len() as u64;
            Ok(Bytes::from(data))
        })
    }
    fn seek(&mut self, to: SeekFrom) -> FsFuture<'_, u64> {
        let (engine, ino) = (self.engine.clone(), self.ino);
        Box::pin(async move {
            let base = match to {
                SeekFrom::Start(n) => {
                    self.pos = n;
                    return Ok(n);
                }
                SeekFrom::Current(d) => (self.pos, d),
                SeekFrom::End(d) => (blocking(move || engine.getattr(ino)).await?.size, d),
            };
            let pos = base
                .0
                .checked_add_signed(base.1)
                .ok_or(FsError::Forbidden)?;
            self.pos = pos;
            Ok(pos)
        })
    }
    fn flush(&mut self) -> FsFuture<'_, ()> {
        let (engine, ino) = (self.engine.clone(), self.ino);
        let target = self.target.take();
        Box::pin(async move {
            blocking(move || {
                engine.flush(ino)?;
                if let Some((dir, tmp, name)) = target {
                    engine.rename(dir, &tmp, dir, &name, RenameFlags::default())?;
                }
                Ok(())
            })
            .await
        })
    }
}
