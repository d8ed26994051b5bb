//! The WebDAV gateway: the volume over HTTP at `/dav/` for hosts without
//! FUSE (`datamesh serve --webdav ADDR`, `mount --webdav ADDR`). The
//! protocol is `dav-server`'s; this module is its file system over the
//! engine (blocking engine calls run on tokio's blocking pool); `gateway`
//! serves it. See docs/DESIGN.md, "WebDAV gateway".

pub mod auth;
mod browse;
mod file;
mod gateway;
mod guard;
pub mod locks;
mod times;
pub mod tls;

pub use gateway::{Options, app, serve};

use crate::data::Engine;
use crate::error::Error;
use crate::types::{Attr, FileKind, Ino, RenameFlags, SetAttr, SetTime, Timestamp};
use axum::http::StatusCode;
use dav_server::davpath::DavPath;
use dav_server::fs::{
    DavDirEntry, DavFile, DavFileSystem, DavMetaData, DavProp, FsError, FsFuture, FsResult,
    FsStream, OpenOptions, ReadDirMeta,
};
use file::Handle;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Where the volume is served on the listener.
pub const PREFIX: &str = "/dav";

/// What the engine's errors are to a WebDAV client.
fn fs_err(e: Error) -> FsError {
    match e {
        Error::NotFound => FsError::NotFound,
        Error::Exists => FsError::Exists,
        Error::NameTooLong => FsError::PathTooLong,
        Error::NoSpace => FsError::InsufficientStorage,
        Error::TooBig => FsError::TooLarge,
        Error::NotDir
        | Error::IsDir
        | Error::NotEmpty
        | Error::Invalid(_)
        | Error::ReadOnly
        | Error::NotPermitted => FsError::Forbidden,
        other => {
            tracing::warn!("webdav: {other}");
            FsError::GeneralFailure
        }
    }
}

/// Runs a blocking engine call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> FsResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(fs_err),
        Err(_) => Err(FsError::GeneralFailure),
    }
}

/// The names of a request path, each checked (never `.`, `..`, empty, NUL
/// or over-long: a path cannot leave the volume).
fn names(path: &DavPath) -> FsResult<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for n in path
        .as_bytes()
        .split(|b| *b == b'/')
        .filter(|n| !n.is_empty())
    {
        crate::meta::check_name(n).map_err(|e| match e {
            Error::NameTooLong => FsError::PathTooLong,
            _ => FsError::Forbidden,
        })?;
        out.push(n.to_vec());
    }
    Ok(out)
}

fn walk(engine: &Engine, names: &[Vec<u8>]) -> crate::Result<Attr> {
    let mut at = engine.getattr(Ino::ROOT)?;
    for n in names {
        if at.kind != FileKind::Dir {
            return Err(Error::NotDir);
        }
        at = engine.lookup(at.ino, n)?;
    }
    Ok(at)
}

/// A directory's entries: name and attributes.
type Listing = Vec<(Vec<u8>, Attr)>;

/// The node at `names` and, when it is a directory, what it holds: every
/// entry but `.`, `..` and symlinks (WebDAV has none, and a link must not
/// lead a client anywhere).
fn list(engine: &Engine, names: &[Vec<u8>]) -> crate::Result<(Attr, Listing)> {
    let dir = walk(engine, names)?;
    let mut out = Vec::new();
    if dir.kind != FileKind::Dir {
        return Ok((dir, out));
    }
    let mut offset = 2;
    loop {
        let page = engine.readdir_plus(dir.ino, offset, 1024)?;
        let Some((last, _)) = page.last() else { break };
        offset = last.offset;
        out.extend(
            page.into_iter()
                .filter(|(e, a)| e.name != b"." && e.name != b".." && a.kind != FileKind::Symlink)
                .map(|(e, a)| (e.name, a)),
        );
    }
    Ok((dir, out))
}

/// The directory holding `path`'s last name, and that name.
fn parent_of(engine: &Engine, mut names: Vec<Vec<u8>>) -> crate::Result<(Ino, Vec<u8>)> {
    let name = names.pop().ok_or(Error::NotPermitted)?;
    let dir = walk(engine, &names)?;
    if dir.kind != FileKind::Dir {
        return Err(Error::NotDir);
    }
    Ok((dir.ino, name))
}

fn to_time(t: Timestamp) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(t.secs.max(0) as u64, t.nanos)
}

#[derive(Clone, Debug)]
struct Meta(Attr);

impl DavMetaData for Meta {
    fn len(&self) -> u64 {
        self.0.size
    }
    fn modified(&self) -> FsResult<SystemTime> {
        Ok(to_time(self.0.mtime))
    }
    fn is_dir(&self) -> bool {
        self.0.kind == FileKind::Dir
    }
    fn is_symlink(&self) -> bool {
        self.0.kind == FileKind::Symlink
    }
    fn accessed(&self) -> FsResult<SystemTime> {
        Ok(to_time(self.0.atime))
    }
    fn created(&self) -> FsResult<SystemTime> {
        Ok(to_time(self.0.crtime))
    }
    fn status_changed(&self) -> FsResult<SystemTime> {
        Ok(to_time(self.0.ctime))
    }
    fn executable(&self) -> FsResult<bool> {
        Ok(self.0.perm & 0o100 != 0)
    }
    fn etag(&self) -> Option<String> {
        let m = self.0.mtime;
        Some(format!(
            "{:x}-{:x}-{:x}{:x}",
            self.0.ino.0, self.0.size, m.secs, m.nanos
        ))
    }
}

struct Entry(Vec<u8>, Attr);

impl DavDirEntry for Entry {
    fn name(&self) -> Vec<u8> {
        self.0.clone()
    }
    fn metadata(&self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let m: Box<dyn DavMetaData> = Box::new(Meta(self.1.clone()));
        Box::pin(async move { Ok(m) })
    }
}

/// Where dead properties are kept: xattrs named this and a hash.
const PROP_XATTR: &[u8] = b"user.dav.";

/// A dead property as its xattr holds it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    name: String,
    prefix: Option<String>,
    namespace: Option<String>,
    xml: Option<Vec<u8>>,
}

fn prop_key(p: &DavProp) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(p.namespace.as_deref().unwrap_or("").as_bytes());
    h.update(&[0]);
    h.update(p.name.as_bytes());
    let mut key = PROP_XATTR.to_vec();
    key.extend_from_slice(hex::encode(&h.finalize().as_bytes()[..16]).as_bytes());
    key
}

fn stored_prop(value: &[u8]) -> crate::Result<DavProp> {
    let s: Stored = postcard::from_bytes(value)
        .map_err(|_| Error::Corrupt("a damaged WebDAV property".into()))?;
    Ok(DavProp {
        name: s.name,
        prefix: s.prefix,
        namespace: s.namespace,
        xml: s.xml,
    })
}

/// The volume as a `dav-server` file system.
#[derive(Clone)]
pub struct DavFs {
    engine: Arc<Engine>,
    uid: u32,
    gid: u32,
}

impl DavFs {
    pub fn new(engine: Arc<Engine>) -> DavFs {
        DavFs {
            engine,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }
}

impl DavFs {
    /// Runs `f` on the node at `path`.
    fn on_node<'a, T: Send + 'static>(
        &'a self,
        path: &'a DavPath,
        f: impl FnOnce(&Engine, Attr) -> crate::Result<T> + Send + 'static,
    ) -> FsFuture<'a, T> {
        let engine = self.engine.clone();
        Box::pin(async move {
            let names = names(path)?;
            blocking(move || {
                let node = walk(&engine, &names)?;
                f(&engine, node)
            })
            .await
        })
    }

    /// Runs `f` on the directory holding `path`'s last name, and that name.
    fn in_parent<'a>(
        &'a self,
        path: &'a DavPath,
        f: impl FnOnce(&Engine, Ino, &[u8]) -> crate::Result<()> + Send + 'static,
    ) -> FsFuture<'a, ()> {
        let engine = self.engine.clone();
        Box::pin(async move {
            let names = names(path)?;
            blocking(move || {
                let (dir, name) = parent_of(&engine, names)?;
                f(&engine, dir, &name)
            })
            .await
        })
    }
}

impl DavFileSystem for DavFs {
    fn open<'a>(&'a self, path: &'a DavPath, o: OpenOptions) -> FsFuture<'a, Box<dyn DavFile>> {
        let engine = self.engine.clone();
        let (uid, gid) = (self.uid, self.gid);
        Box::pin(async move {
            let names = names(path)?;
            let e = engine.clone();
            let (ino, target) = blocking(move || -> crate::Result<_> {
                if o.write && (o.truncate || o.create_new) {
                    let (dir, name) = parent_of(&e, names)?;
                    match e.lookup(dir, &name) {
                        Ok(_) if o.create_new => return Err(Error::Exists),
                        Ok(a) if a.kind == FileKind::Dir => return Err(Error::IsDir),
                        Err(Error::NotFound) if !o.create && !o.create_new => {
                            return Err(Error::NotFound);
                        }
                        Ok(_) | Err(Error::NotFound) => {}
                        Err(other) => return Err(other),
                    }
                    let tmp = crate::data::hidden_temp(&name, "dav");
                    let a = e.create(dir, &tmp, 0o644, uid, gid)?;
                    e.open(a.ino)?;
                    return Ok((a.ino, Some((dir, tmp, name))));
                }
                let a = match walk(&e, &names) {
                    Err(Error::NotFound) if o.write && o.create => {
                        let (dir, name) = parent_of(&e, names)?;
                        e.create(dir, &name, 0o644, uid, gid)?
                    }
                    other => other?,
                };
                match a.kind {
                    FileKind::File => {}
                    FileKind::Dir => return Err(Error::IsDir),
                    _ => return Err(Error::NotPermitted),
                }
                if o.write {
                    e.writable(a.ino)?;
                }
                e.open(a.ino)?;
                Ok((a.ino, None))
            })
            .await?;
            Ok(Box::new(Handle {
                engine,
                ino,
                pos: 0,
                target,
            }) as Box<dyn DavFile>)
        })
    }

    fn read_dir<'a>(
        &'a self,
        path: &'a DavPath,
        _meta: ReadDirMeta,
    ) -> FsFuture<'a, FsStream<Box<dyn DavDirEntry>>> {
        let engine = self.engine.clone();
        Box::pin(async move {
            let names = names(path)?;
            let (_, listed) = blocking(move || list(&engine, &names)).await?;
            let entries = listed
                .into_iter()
                .map(|(name, a)| Ok(Box::new(Entry(name, a)) as Box<dyn DavDirEntry>))
                .collect::<Vec<_>>();
            Ok(Box::pin(futures_util::stream::iter(entries)) as FsStream<Box<dyn DavDirEntry>>)
        })
    }

    fn metadata<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, Box<dyn DavMetaData>> {
        let engine = self.engine.clone();
        Box::pin(async move {
            let names = names(path)?;
            let a = blocking(move || walk(&engine, &names)).await?;
            if a.kind == FileKind::Symlink {
                return Err(FsError::Forbidden);
            }
            Ok(Box::new(Meta(a)) as Box<dyn DavMetaData>)
        })
    }

    fn create_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        let (uid, gid) = (self.uid, self.gid);
        self.in_parent(path, move |e, dir, name| {
            e.mkdir(dir, name, 0o755, uid, gid).map(drop)
        })
    }

    fn remove_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        self.in_parent(path, |e, dir, name| e.rmdir(dir, name))
    }

    fn remove_file<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        self.in_parent(path, |e, dir, name| e.unlink(dir, name))
    }

    fn rename<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        let engine = self.engine.clone();
        Box::pin(async move {
            let (from, to) = (names(from)?, names(to)?);
            blocking(move || {
                let (a, an) = parent_of(&engine, from)?;
                let (b, bn) = parent_of(&engine, to)?;
                let flags = RenameFlags::default();
                match engine.rename(a, &an, b, &bn, flags) {
                    // A collection MOVEd over a file with `Overwrite: T`
                    // replaces it (RFC 4918 §9.9.4); dav-server deletes
                    // only a collection in the way, and rename(2) will
                    // not put a directory over a file.
                    Err(Error::NotDir)
                        if engine.lookup(a, &an)?.kind == FileKind::Dir
                            && engine.lookup(b, &bn)?.kind != FileKind::Dir =>
                    {
                        engine.unlink(b, &bn)?;
                        engine.rename(a, &an, b, &bn, flags)
                    }
                    r => r,
                }
            })
            .await
        })
    }

    fn copy<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        let (engine, uid, gid) = (self.engine.clone(), self.uid, self.gid);
        Box::pin(async move {
            let (from, to) = (names(from)?, names(to)?);
            blocking(move || {
                let src = walk(&engine, &from)?;
                if src.kind != FileKind::File {
                    return Err(Error::NotPermitted);
                }
                let (dir, name) = parent_of(&engine, to)?;
                engine.put_via_temp(dir, &name, src.perm, uid, gid, |dst| {
                    let step = engine.chunk_size() as u64;
                    let mut at = 0;
                    while at < src.size {
                        let data = engine.read(src.ino, at, step as usize)?;
                        if data.is_empty() {
                            break;
                        }
                        engine.write(dst, at, &data)?;
                        at += data.len() as u64;
                    }
                    engine.flush(dst)
                })
            })
            .await
        })
    }

    fn set_modified<'a>(&'a self, path: &'a DavPath, tm: SystemTime) -> FsFuture<'a, ()> {
        let engine = self.engine.clone();
        Box::pin(async move {
            let names = names(path)?;
            let d = tm
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            let set = SetAttr {
                mtime: Some(SetTime::At(Timestamp {
                    secs: d.as_secs() as i64,
                    nanos: d.subsec_nanos(),
                })),
                ..Default::default()
            };
            blocking(move || {
                let a = walk(&engine, &names)?;
                engine.setattr(a.ino, &set).map(drop)
            })
            .await
        })
    }

    // Dead properties (PROPPATCH): one xattr each, `user.dav.` and a hash
    // of the property's namespace and name, holding the property.
    fn have_props<'a>(
        &'a self,
        _path: &'a DavPath,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        Box::pin(async { true })
    }

    fn patch_props<'a>(
        &'a self,
        path: &'a DavPath,
        patch: Vec<(bool, DavProp)>,
    ) -> FsFuture<'a, Vec<(StatusCode, DavProp)>> {
        self.on_node(path, move |engine, node| {
            let mut out = Vec::new();
            for (set, p) in patch {
                let key = prop_key(&p);
                let res = if set {
                    let stored = Stored {
                        name: p.name.clone(),
                        prefix: p.prefix.clone(),
                        namespace: p.namespace.clone(),
                        xml: p.xml.clone(),
                    };
                    let value = postcard::to_allocvec(&stored).expect("serializes");
                    engine.setxattr(node.ino, &key, &value, false, false)
                } else {
                    match engine.removexattr(node.ino, &key) {
                        Err(Error::NoXattr) => Ok(()),
                        other => other,
                    }
                };
                let status = match res {
                    Ok(()) => StatusCode::OK,
                    Err(Error::ReadOnly | Error::NotPermitted) => StatusCode::FORBIDDEN,
                    Err(Error::NoSpace | Error::TooBig | Error::Invalid(_)) => {
                        StatusCode::INSUFFICIENT_STORAGE
                    }
                    Err(e) => return Err(e),
                };
                out.push((status, DavProp { xml: None, ..p }));
            }
            Ok(out)
        })
    }

    fn get_props<'a>(&'a self, path: &'a DavPath, do_content: bool) -> FsFuture<'a, Vec<DavProp>> {
        self.on_node(path, move |engine, node| {
            let mut out = Vec::new();
            for key in engine.listxattr(node.ino)? {
                if !key.starts_with(PROP_XATTR) {
                    continue;
                }
                let Ok(p) = stored_prop(&engine.getxattr(node.ino, &key)?) else {
                    continue;
                };
                out.push(DavProp {
                    xml: if do_content { p.xml } else { None },
                    ..p
                });
            }
            Ok(out)
        })
    }

    fn get_prop<'a>(&'a self, path: &'a DavPath, prop: DavProp) -> FsFuture<'a, Vec<u8>> {
        let key = prop_key(&prop);
        self.on_node(path, move |engine, node| {
            let value = match engine.getxattr(node.ino, &key) {
                Err(Error::NoXattr) => return Err(Error::NotFound),
                other => other?,
            };
            stored_prop(&value)?.xml.ok_or(Error::NotFound)
        })
    }

    fn get_quota(&self) -> FsFuture<'_, (u64, Option<u64>)> {
        let engine = self.engine.clone();
        Box::pin(async move {
            let s = blocking(move || engine.statfs()).await?;
            Ok((s.total_bytes - s.free_bytes, Some(s.total_bytes)))
        })
    }
}
