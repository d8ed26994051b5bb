//! A member device's side: [`join`] makes its home directory from a member
//! token, and [`MemberVolume`] is the volume as its commands see it — every
//! namespace operation asked of the home node over `/datamesh/meta/1`, file
//! bytes sealed or opened here and moved straight to or from the storage
//! peers.

use super::calls::Caller;
use super::meta::{
    MAP_PAGE, MetaCall, MetaReply, NsCall, NsReply, VolumeInfo, decode_answer, encode_request,
};
use super::proto::{Reply, Request};
use super::{NewFile, Progress, Volume};
use crate::chunk::{ChunkRef, Codec, DeviceKey, VolumeKey};
use crate::error::Kind;
use crate::home::Home;
use crate::meta::locks::RangeLock;
use crate::meta::{InodeRec, Namespace, NewNode, VolumeParams};
use crate::net::{MeshClient, MeshKey, MeshStore, Multiaddr, PeerId};
use crate::store::ShardStore;
use crate::types::*;
use crate::util::lock;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

/// How long a namespace operation waits for the home node.
pub const HOME_WAIT: Duration = crate::net::meta::ANSWER_WAIT;
/// How long a whole operation run at home (fsck, repair, gc) may take.
const LONG_WAIT: Duration = Duration::from_secs(3600);

/// `HOME/member` on a member device (JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberFile {
    pub version: u32,
    /// The home node's peer id and addresses.
    pub home: String,
    pub addrs: Vec<String>,
    pub name: String,
    pub info: VolumeInfo,
}

fn bad(e: impl std::fmt::Display) -> Error {
    Error::Remote(Kind::Other, e.to_string())
}

/// Makes a member device's home directory at `home` from `token` (from
/// `datamesh invite --member`): proves the token to the home node, and keeps
/// the volume secret it sends back sealed to this device's key. Returns the
/// home node's id.
pub fn join(home: &Home, token: &str, name: &str) -> Result<String> {
    let fresh = !home.dir.exists();
    let res = join_inner(home, token, name);
    if res.is_err() {
        // Nothing half-made stays behind: a failed join can be run again.
        let paths = home.paths();
        for f in [
            paths.mesh_key(),
            paths.peer_key(),
            paths.device_key(),
            paths.peers(),
        ] {
            let _ = std::fs::remove_file(f);
        }
        if fresh {
            let _ = std::fs::remove_dir(&home.dir);
        }
    }
    res
}

fn join_inner(home: &Home, token: &str, name: &str) -> Result<String> {
    let paths = home.paths();
    if home.exists() || paths.meta().exists() || home.is_member() {
        return Err(bad(format!(
            "{}: a volume or a member device is here already (use another --home)",
            home.dir.display()
        )));
    }
    let t =
        crate::net::JoinToken::decode_member(token, crate::net::trust::now_secs()).map_err(bad)?;
    let (Some(home_id), Some(secret)) = (t.home, t.admit) else {
        return Err(bad("member token: no home node in it"));
    };
    // The home's addresses, with its id: what this device dials it by.
    let home_addrs: Vec<Multiaddr> = t
        .bootstrap
        .iter()
        .map(|a| a.clone().with_p2p(home_id).unwrap_or_else(|a| a))
        .collect();
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&home.dir)?;
    }
    t.key.save(&paths.mesh_key()).map_err(bad)?;
    let identity = crate::net::load_identity(&paths.peer_key()).map_err(bad)?;
    let me = identity.public().to_peer_id();
    let device = DeviceKey::generate();
    crate::util::write_secret(&paths.device_key(), &device.to_bytes())
        .map_err(|(p, e)| bad(format!("{}: {e}", p.display())))?;
    let client =
        MeshClient::start(identity, &t.key, home_addrs.clone(), None, None).map_err(bad)?;
    let call = MetaCall::Join {
        proof: super::meta::join_proof(&secret, &me),
        device: ByteBuf::from(device.public()),
        name: name.to_string(),
    };
    let answer = client
        .meta_call(home_id, encode_request(call), HOME_WAIT)
        .map_err(bad)?;
    let MetaReply::Joined {
        sealed_key,
        info,
        peers,
    } = decode_answer(&answer)?
    else {
        return Err(bad("the home node answered the join with something else"));
    };
    let key = crate::chunk::unwrap_volume_key(&device, &sealed_key)?;
    let file = MemberFile {
        version: 1,
        home: home_id.to_string(),
        addrs: home_addrs.iter().map(|a| a.to_string()).collect(),
        name: name.to_string(),
        info,
    };
    std::fs::write(paths.peers(), peers.join("\n") + "\n")?;
    let json = serde_json::to_vec_pretty(&file).map_err(bad)?;
    crate::util::write_secret(&paths.member(), &json)
        .map_err(|(p, e)| bad(format!("{}: {e}", p.display())))?;
    // The key last: its presence marks a complete member home.
    crate::util::write_secret(&paths.volume_key(), key.as_bytes())
        .map_err(|(p, e)| bad(format!("{}: {e}", p.display())))?;
    Ok(home_id.to_string())
}

/// The volume as a member device's commands see it.
pub struct MemberVolume {
    home: PeerId,
    store: Arc<MeshStore>,
    key: VolumeKey,
    codec: Codec,
    info: VolumeInfo,
    /// The storage peers were waited for (once, by the first command that
    /// moves file bytes; a listing does not wait on them).
    peers_waited: std::sync::Once,
}

/// A member device's way to its volume: the home node's id, this device's
/// volume key, and the mesh (the swarm and the storage peers).
struct Reach {
    file: MemberFile,
    home: PeerId,
    key: VolumeKey,
    store: Arc<MeshStore>,
}

fn reach(home: &Home) -> Result<Reach> {
    let paths = home.paths();
    let file: MemberFile = serde_json::from_slice(&std::fs::read(paths.member())?)
        .map_err(|e| bad(format!("{}: {e}", paths.member().display())))?;
    let home_id: PeerId = file.home.parse().map_err(bad)?;
    let key = home.volume_key().map_err(bad)?;
    let mesh = MeshKey::load(&paths.mesh_key(), false).map_err(bad)?;
    let identity = crate::net::load_identity(&paths.peer_key()).map_err(bad)?;
    let mut boot: Vec<Multiaddr> = Vec::new();
    let remembered = std::fs::read_to_string(paths.peers()).unwrap_or_default();
    for a in file
        .addrs
        .iter()
        .map(String::as_str)
        .chain(remembered.lines())
    {
        if let Ok(a) = a.trim().parse()
            && !boot.contains(&a)
        {
            boot.push(a);
        }
    }
    let client =
        MeshClient::start(identity, &mesh, boot, Some(paths.peers()), None).map_err(bad)?;
    Ok(Reach {
        file,
        home: home_id,
        key,
        store: MeshStore::new(client, None),
    })
}

/// The engine of a mount on a member device: file bytes sealed and opened
/// here, the namespace the home node's ([`RemoteNamespace`]).
pub fn open_engine(home: &Home, cfg: crate::data::EngineConfig) -> Result<crate::data::Engine> {
    let r = reach(home)?;
    let mut ns = RemoteNamespace {
        client: r.store.client().clone(),
        home: r.home,
        params: None,
        store: r.store.clone(),
        maps: Mutex::new(HashMap::new()),
        inodes: Mutex::new(HashMap::new()),
    };
    let params = match ns.ns(NsCall::Params)? {
        NsReply::Params(p) => p,
        other => return Err(bad(format!("the home node answered {other:?}"))),
    };
    ns.params = Some(params);
    ns.reset_locks("")?;
    let n = r.file.info.data_shards as usize + r.file.info.parity_shards as usize;
    r.store.client().wait_for_peers(n, Duration::from_secs(10));
    crate::data::Engine::with_namespace(Box::new(ns), r.store, r.key, cfg)
}

impl MemberVolume {
    pub fn open(home: &Home) -> Result<MemberVolume> {
        let r = reach(home)?;
        let codec = Codec::new(
            r.file.info.data_shards as usize,
            r.file.info.parity_shards as usize,
        )?;
        Ok(MemberVolume {
            home: r.home,
            store: r.store,
            key: r.key,
            codec,
            info: r.file.info,
            peers_waited: std::sync::Once::new(),
        })
    }

    fn ask(&self, call: MetaCall, wait: Duration) -> Result<MetaReply> {
        let answer = self
            .store
            .client()
            .meta_call(self.home, encode_request(call), wait)
            .map_err(bad)?;
        decode_answer(&answer)
    }

    /// The shard store, once enough storage peers are connected to spread a
    /// chunk over (or 10 s went by).
    fn shards(&self) -> Arc<dyn ShardStore> {
        self.peers_waited.call_once(|| {
            let n = self.codec.data_shards() + self.codec.parity_shards();
            self.store
                .client()
                .wait_for_peers(n, Duration::from_secs(10));
        });
        self.store.clone()
    }

    /// Seals and stores a batch of chunks at once, a thread each (their
    /// time is mostly waiting on the peers: k+1 shards of each acknowledged);
    /// holes are left out.
    fn store_chunks(&self, batch: Vec<(u64, Vec<u8>)>) -> Result<Vec<(u64, ChunkRef)>> {
        let store = self.shards();
        let store = &*store;
        each_on_a_thread(
            batch
                .into_iter()
                .filter(|(_, plain)| plain.iter().any(|&b| b != 0))
                .collect(),
            |(idx, plain)| {
                let sealed = crate::chunk::seal_owned(
                    &self.key,
                    &self.codec,
                    plain,
                    self.info.inline_max as usize,
                );
                crate::data::store_sealed(store, &self.codec, sealed).map(|c| (idx, c))
            },
        )
    }
}

impl Caller for MemberVolume {
    fn call(&self, req: Request, _progress: Progress) -> Result<Reply> {
        let wait = match req {
            Request::Check { .. } | Request::Gc { .. } | Request::Mesh(_) => LONG_WAIT,
            _ => HOME_WAIT,
        };
        match self.ask(MetaCall::Volume(req), wait)? {
            MetaReply::Volume(r) => Ok(r),
            other => Err(bad(format!("the home node answered {other:?}"))),
        }
    }

    fn send_file(
        &self,
        file: &NewFile,
        src: &mut (dyn Read + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let cs = self.info.chunk_size as usize;
        let window = super::workers() * 2;
        let (mut chunks, mut size, mut idx, mut done) = (Vec::new(), 0u64, 0u64, false);
        while !done {
            let mut batch = Vec::new();
            while batch.len() < window {
                let mut plain = vec![0u8; cs];
                let n = super::remote::read_some(src, &mut plain)?;
                plain.truncate(n);
                if n > 0 {
                    size += n as u64;
                    batch.push((idx, plain));
                    idx += 1;
                }
                if n < cs {
                    done = true;
                    break;
                }
            }
            if idx == batch.len() as u64 && !done {
                // A large file: its target is checked before gigabytes are
                // stored for nothing (the home checks again at commit; a
                // small file is only checked there, one call fewer).
                match Volume::lookup(self, file.dir, &file.name) {
                    Ok(a) if a.kind == FileKind::Dir => return Err(Error::IsDir),
                    Ok(a) if a.kind != FileKind::File => {
                        return Err(Error::Invalid("exists and is not a regular file"));
                    }
                    Ok(_) | Err(Error::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
            chunks.extend(self.store_chunks(batch)?);
            progress(size);
        }
        // Nothing is in the namespace until this one commit: a put that
        // fails or is killed before it leaves only unreferenced shards.
        let hints = chunks
            .iter()
            .map(|(_, c)| self.store.holders_of(c.shard_ids()))
            .collect();
        self.ask(
            MetaCall::CommitFile {
                file: file.clone(),
                size,
                chunks,
                hints,
            },
            HOME_WAIT,
        )
        .map(drop)
    }

    fn fetch_file(
        &self,
        ino: Ino,
        dst: &mut (dyn Write + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        let MetaReply::ChunkMap {
            size,
            chunks,
            hints,
        } = self.ask(MetaCall::ChunkMap(ino), HOME_WAIT)?
        else {
            return Err(bad(
                "the home node answered a chunk map request with something else",
            ));
        };
        let cs = self.info.chunk_size as u64;
        for ((_, c), h) in chunks.iter().zip(&hints) {
            learn(&*self.store, c, h);
        }
        let map: std::collections::BTreeMap<u64, ChunkRef> = chunks.into_iter().collect();
        let store = self.shards();
        let n = size.div_ceil(cs);
        let window = super::workers() as u64 * 2;
        let mut at = 0u64;
        while at < n {
            let idxs: Vec<u64> = (at..n.min(at + window)).collect();
            let count = idxs.len() as u64;
            let plains = each_on_a_thread(idxs, |i| {
                let want = (size - i * cs).min(cs) as usize;
                let mut plain = match map.get(&i) {
                    Some(c) => crate::data::decode_chunk(&store, &self.codec, c)?,
                    None => Vec::new(),
                };
                // A chunk shorter than its share of the file ends in zeros.
                plain.resize(want, 0);
                Ok(plain)
            })?;
            for p in plains {
                dst.write_all(&p)?;
            }
            at += count;
            progress((at * cs).min(size));
        }
        dst.flush()?;
        Ok(size)
    }

    fn sync(&self) -> Result<()> {
        // This device's shards: every one stored, not only k+1 of each chunk.
        self.store.sync()?;
        self.call(Request::Barrier, &|_, _| {}).map(drop)
    }
}

/// `f` over each item on a thread of its own (the work waits on the network
/// more than it computes); the results in the items' order.
fn each_on_a_thread<T: Send, R: Send>(
    items: Vec<T>,
    f: impl Fn(T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .into_iter()
            .map(|item| {
                let f = &f;
                s.spawn(move || f(item))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(bad("a worker thread panicked")))
            })
            .collect()
    })
}

/// The home node's namespace, asked over the mesh: what a member device's
/// mounted engine stands on. Each call waits at most [`HOME_WAIT`].
pub struct RemoteNamespace {
    client: MeshClient,
    home: PeerId,
    /// Asked once, when the mount starts.
    params: Option<VolumeParams>,
    /// Where the home's hints of shard holders go.
    store: Arc<MeshStore>,
    /// Chunk maps of the files open here, fetched a page at a time: a
    /// sequential read asks the home once per [`MAP_PAGE`] chunks, not once
    /// per read. Dropped at each open (close-to-open) and for a file this
    /// device commits to.
    maps: Mutex<HashMap<Ino, ChunkPage>>,
    /// Inode records read by the data path (a read's size, a write's kind),
    /// with the same lifetime as `maps`; any change made here drops them.
    inodes: Mutex<HashMap<Ino, InodeRec>>,
}

/// Chunks `from..to` of a file (`to` = `None`: to its end); an index in the
/// range and not in `chunks` is a hole.
struct ChunkPage {
    from: u64,
    to: Option<u64>,
    chunks: HashMap<u64, ChunkRef>,
}

/// Takes the home's hints of where `chunk`'s shards are.
fn learn(store: &dyn ShardStore, chunk: &ChunkRef, hints: &[Vec<String>]) {
    for (id, peers) in chunk.shard_ids().iter().zip(hints) {
        store.learn(id, peers);
    }
}

impl RemoteNamespace {
    fn ns(&self, call: NsCall) -> Result<NsReply> {
        let answer = self
            .client
            .meta_call(self.home, encode_request(MetaCall::Ns(call)), HOME_WAIT)
            .map_err(bad)?;
        match decode_answer(&answer)? {
            MetaReply::Ns(r) => Ok(r),
            other => Err(bad(format!("the home node answered {other:?}"))),
        }
    }

    fn attr(&self, call: NsCall) -> Result<Attr> {
        match self.ns(call)? {
            NsReply::Attr(a) => Ok(a),
            other => Err(bad(format!("the home node answered {other:?}"))),
        }
    }

    /// Forgets what is cached of `ino` (`None`: of every inode).
    fn forget(&self, ino: Option<Ino>) {
        match ino {
            Some(ino) => {
                lock(&self.maps).remove(&ino);
                lock(&self.inodes).remove(&ino);
            }
            None => lock(&self.inodes).clear(),
        }
    }

    fn unit(&self, call: NsCall) -> Result<()> {
        match self.ns(call)? {
            NsReply::Unit => Ok(()),
            other => Err(bad(format!("the home node answered {other:?}"))),
        }
    }
}

fn bytes(b: &[u8]) -> ByteBuf {
    ByteBuf::from(b.to_vec())
}

impl Namespace for RemoteNamespace {
    fn params(&self) -> &VolumeParams {
        self.params.as_ref().expect("asked when the mount starts")
    }
    fn inode(&self, ino: Ino) -> Result<InodeRec> {
        if let Some(r) = lock(&self.inodes).get(&ino) {
            return Ok(r.clone());
        }
        match self.ns(NsCall::Inode(ino))? {
            NsReply::Inode(r) => {
                lock(&self.inodes).insert(ino, r.clone());
                Ok(r)
            }
            other => Err(bad(format!("the home node answered {other:?}"))),
        }
    }
    fn attr(&self, ino: Ino) -> Result<Attr> {
        RemoteNamespace::attr(self, NsCall::Attr(ino))
    }
    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        let name = bytes(name);
        RemoteNamespace::attr(self, NsCall::Lookup { parent, name })
    }
    fn readdir(&self, ino: Ino, offset: u64, max: usize) -> Result<Vec<DirEntry>> {
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        match self.ns(NsCall::Readdir { ino, offset, max })? {
            NsReply::Entries(e) => Ok(e),
            other => Err(bad(format!("the home node answered {other:?}"))),
        }
    }
    fn chunk(&self, ino: Ino, idx: u64) -> Result<Option<ChunkRef>> {
        if let Some(p) = lock(&self.maps).get(&ino)
            && idx >= p.from
            && p.to.is_none_or(|to| idx < to)
        {
            return Ok(p.chunks.get(&idx).cloned());
        }
        let chunks = Namespace::chunks_from(self, ino, idx)?;
        let to = (chunks.len() >= MAP_PAGE).then(|| chunks.last().map_or(idx, |(i, _)| i + 1));
        let page = ChunkPage {
            from: idx,
            to,
            chunks: chunks.into_iter().collect(),
        };
        let found = page.chunks.get(&idx).cloned();
        lock(&self.maps).insert(ino, page);
        Ok(found)
    }
    fn chunks_from(&self, ino: Ino, from: u64) -> Result<Vec<(u64, ChunkRef)>> {
        match self.ns(NsCall::ChunksFrom { ino, from })? {
            NsReply::Chunks { chunks, hints } => {
                for ((_, c), h) in chunks.iter().zip(&hints) {
                    learn(&*self.store, c, h);
                }
                Ok(chunks)
            }
            other => Err(bad(format!("the home node answered {other:?}"))),
        }
    }
    fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        let name = bytes(name);
        match self.ns(NsCall::Getxattr { ino, name })? {
            NsReply::Bytes(b) => Ok(b.into_vec()),
            other => Err(bad(format!("the home node answered {other:?}"))),
        }
    }
    fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        match self.ns(NsCall::Listxattr(ino))? {
            NsReply::Names(n) => Ok(n.into_iter().map(ByteBuf::into_vec).collect()),
            other => Err(bad(format!("the home node answered {other:?}"))),
        }
    }
    fn create_node(&self, parent: Ino, name: &[u8], node: NewNode) -> Result<Attr> {
        let name = bytes(name);
        RemoteNamespace::attr(self, NsCall::CreateNode { parent, name, node })
    }
    fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> Result<Attr> {
        self.forget(Some(ino));
        let name = bytes(name);
        RemoteNamespace::attr(self, NsCall::Link { ino, parent, name })
    }
    // Which inodes are open is the home's to know (this device tells it).
    fn unlink(&self, parent: Ino, name: &[u8], _: &dyn Fn(Ino) -> bool) -> Result<()> {
        self.forget(None);
        let name = bytes(name);
        self.unit(NsCall::Unlink { parent, name })
    }
    fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        let name = bytes(name);
        self.unit(NsCall::Rmdir { parent, name })
    }
    fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
        _: &dyn Fn(Ino) -> bool,
    ) -> Result<()> {
        self.forget(None);
        let (name, new_name) = (bytes(name), bytes(new_name));
        self.unit(NsCall::Rename {
            parent,
            name,
            new_parent,
            new_name,
            flags,
        })
    }
    fn setattr(&self, ino: Ino, set: &SetAttr) -> Result<Attr> {
        self.forget(Some(ino));
        let set = set.clone();
        RemoteNamespace::attr(self, NsCall::Setattr { ino, set })
    }
    fn commit_chunks(
        &self,
        ino: Ino,
        chunks: Vec<(u64, Option<ChunkRef>)>,
        size: u64,
        mtime: Option<Timestamp>,
    ) -> Result<Attr> {
        self.forget(Some(ino));
        let hints = chunks
            .iter()
            .filter_map(|(_, c)| c.as_ref())
            .map(|c| self.store.holders_of(c.shard_ids()))
            .collect();
        RemoteNamespace::attr(
            self,
            NsCall::CommitChunks {
                ino,
                chunks,
                size,
                mtime,
                hints,
            },
        )
    }
    fn truncate(
        &self,
        ino: Ino,
        size: u64,
        tail: Option<(u64, Option<ChunkRef>)>,
        set: &SetAttr,
    ) -> Result<Attr> {
        self.forget(Some(ino));
        let set = set.clone();
        RemoteNamespace::attr(
            self,
            NsCall::Truncate {
                ino,
                size,
                tail,
                set,
            },
        )
    }
    fn setxattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> Result<()> {
        self.forget(Some(ino));
        let (name, value) = (bytes(name), bytes(value));
        self.unit(NsCall::Setxattr {
            ino,
            name,
            value,
            create,
            replace,
        })
    }
    fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.forget(Some(ino));
        let name = bytes(name);
        self.unit(NsCall::Removexattr { ino, name })
    }
    // The home frees an orphan at the last release anywhere (`released`).
    fn release_orphan(&self, _: Ino) -> Result<()> {
        Ok(())
    }
    fn sync(&self) -> Result<()> {
        self.unit(NsCall::Sync)
    }
    fn opened(&self, ino: Ino) -> Result<()> {
        // What another host committed since is read afresh.
        self.forget(Some(ino));
        self.unit(NsCall::Open(ino))
    }
    fn getlk(&self, _: &str, ino: Ino, owner: u64, want: RangeLock) -> Result<Option<RangeLock>> {
        match self.ns(NsCall::Getlk { ino, owner, want })? {
            NsReply::Lock(l) => Ok(l),
            other => Err(bad(format!("the home node answered {other:?}"))),
        }
    }
    fn setlk(&self, _: &str, ino: Ino, owner: u64, want: RangeLock) -> Result<()> {
        self.unit(NsCall::Setlk { ino, owner, want })
    }
    fn unlock(&self, _: &str, ino: Ino, owner: u64) -> Result<()> {
        self.unit(NsCall::Unlock { ino, owner })
    }
    fn forget_cached(&self, ino: Ino) {
        self.forget(Some(ino));
    }
    fn reset_locks(&self, _: &str) -> Result<()> {
        self.unit(NsCall::ResetLocks)
    }
    fn released(&self, ino: Ino) -> Result<()> {
        self.forget(Some(ino));
        self.unit(NsCall::Release(ino))
    }
}
