//! The home's side of `/datamesh/meta/1` (its messages are
//! [`super::wire`]'s): who may ask (members not revoked; anyone may
//! `Join` with a good proof), and the answers, from the daemon's engine. The
//! member's side is [`super::client`] and [`super::namespace`].

use super::wire::{
    FirstPage, LOCK_HOLD, MAP_PAGE, MAX_BATCH, MetaCall, MetaReply, MetaRequest, NsCall, NsReply,
    PlusEntry, VERSION, VolumeInfo, WATCH_HOLD, encode_answer, refused,
};
use crate::chunk::ChunkRef;
use crate::data::{CommittedFile, Engine};
use crate::error::Kind;
use crate::home::HomePaths;
use crate::meta::changes::with_origin;
use crate::net::trust::{Invites, Member, Members, admission_proof, now_secs};
use crate::net::{MeshClient, PeerId};
use crate::types::{FileKind, Ino};
use crate::util::lock;
use crate::volume::proto::{Reply, Request, WireError};
use crate::volume::serve;
use crate::volume::{Ask, SnapshotOp};
use crate::workers::Runner;
use crate::{Error, Result};
use serde_bytes::ByteBuf;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

/// A member mount that has not watched for this long has its locks dropped.
pub const LOCK_LEASE: Duration = Duration::from_secs(15);

/// The home's side: answers members from the daemon's engine.
pub struct HomeServer {
    engine: Weak<Engine>,
    paths: HomePaths,
    key: crate::chunk::VolumeKey,
    client: MeshClient,
    runner: Runner,
    /// The member list and when its file was last changed.
    members: Mutex<(Option<SystemTime>, Members)>,
    /// Callers refused already (each is logged once).
    logged: Mutex<HashSet<PeerId>>,
    /// When each member mount last watched: its lease on its locks.
    leases: Mutex<HashMap<PeerId, Instant>>,
    /// The handles each member holds open, per inode: a member releases
    /// only what it opened (another's release would let the home free a
    /// file still open elsewhere), and what a member held goes with its
    /// lease, its revocation or its mount's restart.
    opens: Mutex<HashMap<PeerId, MemberOpens>>,
    budget: Budget,
}

/// The handles one member holds open: per inode, and in all (the bound).
#[derive(Default)]
struct MemberOpens {
    total: u32,
    by_ino: HashMap<Ino, u32>,
}

/// Handles one member device may hold open at once at the home.
const MAX_MEMBER_OPENS: u32 = 1 << 20;

/// Calls a second one member may make (a token bucket of as many).
const MEMBER_CALLS_PER_SEC: u32 = 20_000;
/// Calls of one member the home answers at once.
const MAX_MEMBER_CALLS: u32 = 128;
/// `Watch` calls of one member the home holds at once.
const MAX_MEMBER_WATCHES: u32 = 4;

/// What one member may make the home hold at once (docs/DESIGN.md, "What
/// one member can make the home hold"). Its keys are listed members only:
/// a call is counted after the caller was found to be one.
struct Budget {
    rate: governor::DefaultKeyedRateLimiter<PeerId>,
    /// Per member: (calls being answered, of them `Watch`es).
    busy: Mutex<HashMap<PeerId, (u32, u32)>>,
}

/// A call counted in its member's budget until dropped.
struct Held<'a> {
    budget: &'a Budget,
    peer: PeerId,
    watch: bool,
}

impl Budget {
    fn new() -> Budget {
        let per_sec = std::num::NonZeroU32::new(MEMBER_CALLS_PER_SEC).expect("not zero");
        Budget {
            rate: governor::RateLimiter::keyed(governor::Quota::per_second(per_sec)),
            busy: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a call of `peer`, or says which bound it is past (the call
    /// is then not run).
    fn take(&self, peer: PeerId, watch: bool) -> std::result::Result<Held<'_>, WireError> {
        let busy = |text: String| WireError {
            kind: Kind::Busy,
            text,
        };
        if self.rate.check_key(&peer).is_err() {
            return Err(busy(format!(
                "busy: this device asked more than {MEMBER_CALLS_PER_SEC} calls a second"
            )));
        }
        let mut g = lock(&self.busy);
        let (calls, watches) = g.entry(peer).or_default();
        if *calls >= MAX_MEMBER_CALLS {
            return Err(busy(format!(
                "busy: {MAX_MEMBER_CALLS} calls of this device are being answered"
            )));
        }
        if watch && *watches >= MAX_MEMBER_WATCHES {
            return Err(busy(format!(
                "busy: {MAX_MEMBER_WATCHES} watches of this device are being held"
            )));
        }
        *calls += 1;
        *watches += u32::from(watch);
        Ok(Held {
            budget: self,
            peer,
            watch,
        })
    }

    /// Counts `n` calls more of `peer` against its rate (a batch's).
    fn charge(&self, peer: PeerId, n: usize) -> std::result::Result<(), WireError> {
        let Some(more) = u32::try_from(n.saturating_sub(1))
            .ok()
            .and_then(std::num::NonZeroU32::new)
        else {
            return Ok(());
        };
        match self.rate.check_key_n(&peer, more) {
            Ok(Ok(())) => Ok(()),
            _ => Err(WireError {
                kind: Kind::Busy,
                text: format!(
                    "busy: this device asked more than {MEMBER_CALLS_PER_SEC} calls a second"
                ),
            }),
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut g = lock(&self.budget.busy);
        if let Some((calls, watches)) = g.get_mut(&self.peer) {
            *calls -= 1;
            *watches -= u32::from(self.watch);
            if *calls == 0 {
                g.remove(&self.peer);
            }
        }
    }
}

/// How often a member's `last_seen` is written back, at most.
const SEEN_EVERY: u64 = 60;

impl HomeServer {
    /// Answers members from now on, and keeps the storage peers told who
    /// they are (checked every 2 s, by the worker `members`).
    pub fn start(
        engine: &Arc<Engine>,
        paths: HomePaths,
        key: crate::chunk::VolumeKey,
        client: MeshClient,
        runner: &Runner,
    ) -> std::io::Result<()> {
        let server = Arc::new(HomeServer {
            engine: Arc::downgrade(engine),
            paths,
            key,
            client: client.clone(),
            runner: runner.clone(),
            members: Mutex::new((None, Members::default())),
            logged: Mutex::new(HashSet::new()),
            leases: Mutex::new(HashMap::new()),
            opens: Mutex::new(HashMap::new()),
            budget: Budget::new(),
        });
        if let Err(e) = server.reload(true) {
            tracing::warn!("{e}");
        }
        let handler = server.clone();
        client.serve_meta(Arc::new(move |peer, bytes| handler.handle(peer, &bytes)));
        runner.every("members", Duration::from_secs(2), move || {
            server.expire_leases();
            server.reload(false).map_err(|e| e.to_string())
        })
    }

    /// Drops the locks of member mounts that stopped watching.
    fn expire_leases(&self) {
        let expired: Vec<PeerId> = {
            let mut leases = lock(&self.leases);
            let gone: Vec<PeerId> = leases
                .iter()
                .filter(|(_, seen)| seen.elapsed() >= LOCK_LEASE)
                .map(|(p, _)| *p)
                .collect();
            for p in &gone {
                leases.remove(p);
            }
            gone
        };
        for peer in expired {
            tracing::info!(
                "member device {peer}: its mount has not been heard from for {} s; \
                 its locks and open files are dropped",
                LOCK_LEASE.as_secs()
            );
            self.drop_member_state(&peer);
        }
    }

    /// Drops what a member holds at the home: its locks and its opens.
    fn drop_member_state(&self, peer: &PeerId) {
        let Some(engine) = self.engine.upgrade() else {
            return;
        };
        if let Err(e) = engine.meta().reset_locks(&peer.to_string()) {
            tracing::warn!("dropping the locks of {peer}: {e}");
        }
        self.release_opens(&engine, peer);
    }

    /// Releases every handle `peer` holds open (its mount is gone).
    fn release_opens(&self, engine: &Engine, peer: &PeerId) {
        let held = lock(&self.opens).remove(peer).unwrap_or_default();
        for (ino, n) in held.by_ino {
            for _ in 0..n {
                if let Err(e) = engine.release(ino) {
                    tracing::warn!("releasing inode {} held by {peer}: {e}", ino.0);
                }
            }
        }
    }

    /// Counts a handle `peer` opened on `ino`.
    fn note_open(&self, peer: PeerId, ino: Ino) {
        let mut opens = lock(&self.opens);
        let mine = opens.entry(peer).or_default();
        mine.total += 1;
        *mine.by_ino.entry(ino).or_default() += 1;
    }

    /// Takes back a handle `peer` opened on `ino`; false when it holds none
    /// (a release from before the home restarted, or one that is not the
    /// member's to make): nothing is released then.
    fn take_open(&self, peer: &PeerId, ino: Ino) -> bool {
        let mut opens = lock(&self.opens);
        let Some(mine) = opens.get_mut(peer) else {
            return false;
        };
        let Some(n) = mine.by_ino.get_mut(&ino) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            mine.by_ino.remove(&ino);
        }
        mine.total -= 1;
        true
    }

    /// Releases a handle `peer` holds on `ino` (see [`Self::take_open`]).
    fn release_one(&self, engine: &Engine, peer: &PeerId, ino: Ino) -> Result<()> {
        if !self.take_open(peer, ino) {
            tracing::debug!(
                "member {peer}: a release of inode {} it holds no handle on",
                ino.0
            );
            return Ok(());
        }
        engine.release(ino)
    }

    /// A member's open, release and mount start, kept in step with its
    /// handles here; any other call is [`ns_answer`]'s.
    fn member_call(
        &self,
        engine: &Engine,
        peer: PeerId,
        mount: &str,
        call: NsCall,
    ) -> Result<NsReply> {
        match call {
            NsCall::Release(ino) => self.release_one(engine, &peer, ino).map(|()| NsReply::Unit),
            NsCall::Releases(inos) => {
                // Each one counted, whatever the others do.
                let mut res = Ok(());
                for ino in inos {
                    res = res.and(self.release_one(engine, &peer, ino));
                }
                res.map(|()| NsReply::Unit)
            }
            NsCall::Open(_) | NsCall::OpenRead(_) | NsCall::CreateOpen { .. } => {
                let held = lock(&self.opens).get(&peer).map_or(0, |m| m.total);
                if held >= MAX_MEMBER_OPENS {
                    return Err(Error::Invalid("too many files open on this member device"));
                }
                let reply = ns_answer(engine, mount, call)?;
                match &reply {
                    NsReply::Attr(a)
                    | NsReply::Created { attr: a, .. }
                    | NsReply::Opened { attr: a, .. } => self.note_open(peer, a.ino),
                    _ => {}
                }
                Ok(reply)
            }
            NsCall::Promise { since, dirs } => {
                let local = engine
                    .meta()
                    .local()
                    .ok_or(Error::Invalid("this host is not a home"))?;
                Ok(NsReply::Promised(
                    local.changes().promise(mount, since, &dirs),
                ))
            }
            NsCall::ResetLocks => {
                // The member's mount starts: the handles of an earlier one are gone.
                self.release_opens(engine, &peer);
                ns_answer(engine, mount, NsCall::ResetLocks)
            }
            other => ns_answer(engine, mount, other),
        }
    }

    /// Re-reads the member list when its file changed (or `force`), and tells
    /// the storage peers.
    fn reload(&self, force: bool) -> Result<()> {
        let path = self.paths.members();
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let mut g = lock(&self.members);
        if !force && g.0 == mtime {
            return Ok(());
        }
        let list = Members::load(&path).map_err(|e| Error::Remote(Kind::Other, e.to_string()))?;
        *g = (mtime, list);
        self.client.set_members(g.1.active());
        let revoked: Vec<PeerId> =
            g.1.list
                .iter()
                .filter(|m| m.revoked.is_some())
                .filter_map(|m| m.id.parse().ok())
                .collect();
        drop(g);
        // A revoked device's locks and open files go at once.
        for peer in revoked {
            lock(&self.leases).remove(&peer);
            self.drop_member_state(&peer);
        }
        Ok(())
    }

    fn handle(&self, peer: PeerId, bytes: &[u8]) -> Vec<u8> {
        let req = match postcard::from_bytes::<MetaRequest>(bytes) {
            Ok(r) if r.version == VERSION => r,
            Ok(r) => {
                return encode_answer(Err(WireError {
                    kind: Kind::Other,
                    text: format!(
                        "the home node speaks member protocol version {VERSION}, this device {}: \
                         use the same datamesh on both",
                        r.version
                    ),
                }));
            }
            Err(e) => {
                return encode_answer(Err(WireError {
                    kind: Kind::Invalid,
                    text: format!("an unreadable request: {e}"),
                }));
            }
        };
        encode_answer(self.answer(peer, req.call))
    }

    fn answer(&self, peer: PeerId, call: MetaCall) -> std::result::Result<MetaReply, WireError> {
        let _ = self.reload(false);
        if let MetaCall::Join {
            proof,
            device,
            name,
        } = call
        {
            return self.join(peer, proof, &device, name);
        }
        self.check_member(peer)?;
        let watch = matches!(call, MetaCall::Ns(NsCall::Watch { .. }));
        let _held = self.budget.take(peer, watch)?;
        // The lease starts at a member's first call, so one that never
        // watches (not a mount; or a hostile device) loses its locks and
        // opens 15 s later all the same; only `Watch` renews it.
        lock(&self.leases).entry(peer).or_insert_with(Instant::now);
        let engine = self
            .engine
            .upgrade()
            .ok_or_else(|| refused("the volume is being unmounted".into()))?;
        let wire = |e: Error| WireError::from(&e);
        // What a member's mount changes is its own (its watch skips it); what
        // its CLI changes is news to its mount.
        let (mount, cli) = (peer.to_string(), format!("cli:{peer}"));
        match call {
            MetaCall::Join { .. } => unreachable!("answered above"),
            MetaCall::Volume(req) => {
                if let Some(what) = owner_only(&req) {
                    return Err(refused(format!(
                        "refused: a member device may not {what}; run it on the home node"
                    )));
                }
                with_origin(&cli, || serve::answer(&engine, req, &self.runner))
                    .map(MetaReply::Volume)
                    .map_err(wire)
            }
            MetaCall::CommitFile {
                file,
                size,
                chunks,
                hints,
            } => {
                check_chunks(&engine, chunks.iter().map(|(_, c)| c)).map_err(wire)?;
                take_hints(&engine, chunks.iter().map(|(_, c)| c), &hints);
                let file = CommittedFile {
                    dir: file.dir,
                    name: &file.name,
                    perm: file.perm,
                    uid: file.uid,
                    gid: file.gid,
                    size,
                    chunks,
                };
                with_origin(&cli, || engine.commit_file(file))
                    .map(|()| MetaReply::Volume(Reply::Unit))
                    .map_err(wire)
            }
            MetaCall::ChunkMap(ino) => engine
                .chunk_map(ino)
                .map(|(size, chunks)| MetaReply::ChunkMap {
                    size,
                    hints: hints(&engine, chunks.iter().map(|(_, c)| c)),
                    chunks,
                })
                .map_err(wire),
            MetaCall::Peers => Ok(MetaReply::Peers(storage_peers(&engine))),
            MetaCall::MeshKeys { have } => self.mesh_keys(peer, have),
            MetaCall::Ns(NsCall::Watch { since }) => {
                lock(&self.leases).insert(peer, Instant::now());
                let local = engine
                    .meta()
                    .local()
                    .ok_or_else(|| refused("not a home".into()))?;
                let since = local.changes().since(since, &mount, WATCH_HOLD);
                lock(&self.leases).insert(peer, Instant::now());
                Ok(MetaReply::Ns(NsReply::Changes(since)))
            }
            MetaCall::Ns(NsCall::Batch(calls)) => {
                if calls.len() > MAX_BATCH || !calls.iter().all(NsCall::batchable) {
                    return Err(wire(Error::Invalid(
                        "a batch of more than 64 calls, or with a batch, watch or waiting lock",
                    )));
                }
                // Each call counts against the member's rate.
                self.budget.charge(peer, calls.len())?;
                let results = calls
                    .into_iter()
                    .map(|call| {
                        with_origin(&mount, || self.member_call(&engine, peer, &mount, call))
                            .map_err(wire)
                    })
                    .collect();
                Ok(MetaReply::Ns(NsReply::Batch(results)))
            }
            MetaCall::Ns(call) => {
                with_origin(&mount, || self.member_call(&engine, peer, &mount, call))
                    .map(MetaReply::Ns)
                    .map_err(wire)
            }
        }
    }

    /// The home's mesh key ring when it is newer than the member's, sealed
    /// to the device key the member joined with; without the allowed list
    /// (a member dials, it does not judge who dials it).
    fn mesh_keys(&self, peer: PeerId, have: u64) -> std::result::Result<MetaReply, WireError> {
        let other = |e: &dyn std::fmt::Display| WireError {
            kind: Kind::Other,
            text: e.to_string(),
        };
        let ring =
            crate::net::MeshKeys::load(&self.paths.mesh_key(), false).map_err(|e| other(&e))?;
        if ring.generation() <= have {
            return Ok(MetaReply::MeshKeys(None));
        }
        let device = lock(&self.members)
            .1
            .get_mut(&peer)
            .map(|m| m.device.clone())
            .unwrap_or_default();
        let device = hex::decode(device).map_err(|e| other(&e))?;
        let sealed = crate::chunk::seal_to_device(&device, &ring.without_allowed().encode())
            .map_err(|e| other(&e))?;
        Ok(MetaReply::MeshKeys(Some(ByteBuf::from(sealed))))
    }

    /// A member not revoked may ask; its last sighting is noted.
    fn check_member(&self, peer: PeerId) -> std::result::Result<(), WireError> {
        let now = now_secs();
        let mut g = lock(&self.members);
        let Some(m) = g.1.get_mut(&peer).filter(|m| m.revoked.is_none()) else {
            drop(g);
            if lock(&self.logged).insert(peer) {
                tracing::warn!(
                    "member protocol: refused {peer}: not a member device of this volume"
                );
            }
            return Err(refused(format!(
                "refused: {peer} is not a member device of this volume (never joined, or revoked)"
            )));
        };
        if m.last_seen.is_none_or(|t| t + SEEN_EVERY <= now) {
            m.last_seen = Some(now);
            // Read afresh and saved under the list's lock, so a revocation
            // the CLI wrote meanwhile stays; the next reload reads it (and
            // tells the peers), as the file changed.
            let saved = Members::update(&self.paths.members(), |list| {
                if let Some(m) = list.get_mut(&peer) {
                    m.last_seen = Some(now);
                }
                Ok(())
            });
            if let Err(e) = saved {
                tracing::warn!("noting when member {peer} was last seen: {e}");
            }
        }
        Ok(())
    }

    fn join(
        &self,
        peer: PeerId,
        proof: [u8; 32],
        device: &[u8],
        name: String,
    ) -> std::result::Result<MetaReply, WireError> {
        let now = now_secs();
        let other = |e: &dyn std::fmt::Display| WireError {
            kind: Kind::Other,
            text: e.to_string(),
        };
        let ok = Invites::redeem(&self.paths.member_invites(), &peer, &proof, now)
            .map_err(|e| other(&e))?;
        if !ok {
            tracing::warn!("member protocol: {peer} tried to join without a good invitation");
            return Err(refused(
                "refused: the token matches no open member invitation of this home \
                 (used already, expired, or from another volume)"
                    .into(),
            ));
        }
        let sealed = crate::chunk::wrap_volume_key(device, &self.key).map_err(|e| other(&e))?;
        let engine = self
            .engine
            .upgrade()
            .ok_or_else(|| refused("the volume is being unmounted".into()))?;
        {
            let mut g = lock(&self.members);
            Members::update(&self.paths.members(), |list| {
                list.version = 1;
                list.list.retain(|m| m.id != peer.to_string());
                list.list.push(Member {
                    id: peer.to_string(),
                    name: name.clone(),
                    device: hex::encode(device),
                    joined: now,
                    last_seen: Some(now),
                    revoked: None,
                });
                Ok(())
            })
            .map_err(|e| other(&e))?;
            g.0 = None;
        }
        self.reload(true).map_err(|e| other(&e))?;
        tracing::info!("member device {peer} ({name}) joined");
        let p = engine.meta().params();
        Ok(MetaReply::Joined {
            sealed_key: ByteBuf::from(sealed),
            info: VolumeInfo {
                chunk_size: p.chunk_size,
                data_shards: p.data_shards,
                parity_shards: p.parity_shards,
                inline_max: p.inline_max,
            },
            peers: storage_peers(&engine),
        })
    }
}

/// A member engine's namespace call, answered by the home's engine: names
/// through the engine (so that its open handles, the member's among them,
/// decide what becomes an orphan), the rest by the namespace itself. Chunk
/// maps the member stored are committed with gc kept out.
fn ns_answer(engine: &Engine, host: &str, call: NsCall) -> Result<NsReply> {
    let ns = engine.meta();
    let attr = NsReply::Attr;
    let unit = |()| NsReply::Unit;
    Ok(match call {
        NsCall::Params => NsReply::Params(ns.params().clone()),
        NsCall::Inode(ino) => NsReply::Inode(ns.inode(ino)?),
        NsCall::Attr(ino) => attr(ns.attr(ino)?),
        NsCall::Lookup { parent, name } => attr(ns.lookup(parent, &name)?),
        NsCall::Readdir { ino, offset, max } => {
            NsReply::Entries(ns.readdir(ino, offset, (max as usize).min(4096))?)
        }
        NsCall::Chunk { ino, idx } => {
            let chunk = ns.chunk(ino, idx)?;
            let hints = chunk
                .as_ref()
                .map(|c| engine.store().holders_of(c.shard_ids()))
                .unwrap_or_default();
            NsReply::Chunk { chunk, hints }
        }
        NsCall::ChunksFrom { ino, from } => {
            let mut chunks = ns.chunks_from(ino, from)?;
            chunks.truncate(MAP_PAGE);
            let hints = hints(engine, chunks.iter().map(|(_, c)| c));
            NsReply::Chunks { chunks, hints }
        }
        NsCall::Getxattr { ino, name } => NsReply::Bytes(ByteBuf::from(ns.getxattr(ino, &name)?)),
        NsCall::Listxattr(ino) => {
            NsReply::Names(ns.listxattr(ino)?.into_iter().map(ByteBuf::from).collect())
        }
        NsCall::CreateNode { parent, name, node } => attr(ns.create_node(parent, &name, node)?),
        NsCall::Link { ino, parent, name } => attr(ns.link(ino, parent, &name)?),
        NsCall::Unlink { parent, name } => unit(engine.unlink(parent, &name)?),
        NsCall::Rmdir { parent, name } => unit(engine.rmdir(parent, &name)?),
        NsCall::Rename {
            parent,
            name,
            new_parent,
            new_name,
            flags,
        } => unit(engine.rename(parent, &name, new_parent, &new_name, flags)?),
        NsCall::Setattr { ino, set } => attr(ns.setattr(ino, &set)?),
        NsCall::CommitChunks {
            ino,
            chunks,
            size,
            mtime,
            hints,
        } => {
            let refs: Vec<ChunkRef> = chunks.iter().filter_map(|(_, c)| c.clone()).collect();
            check_chunks(engine, refs.iter())?;
            take_hints(engine, refs.iter(), &hints);
            attr(engine.commit_stored(&refs, || ns.commit_chunks(ino, chunks, size, mtime))?)
        }
        NsCall::Truncate {
            ino,
            size,
            tail,
            set,
        } => {
            let refs: Vec<ChunkRef> = tail.iter().filter_map(|(_, c)| c.clone()).collect();
            check_chunks(engine, refs.iter())?;
            attr(engine.commit_stored(&refs, || ns.truncate(ino, size, tail, &set))?)
        }
        NsCall::Setxattr {
            ino,
            name,
            value,
            create,
            replace,
        } => unit(ns.setxattr(ino, &name, &value, create, replace)?),
        NsCall::Removexattr { ino, name } => unit(ns.removexattr(ino, &name)?),
        NsCall::Sync => unit(ns.sync()?),
        NsCall::Open(ino) => attr(engine.open(ino)?),
        NsCall::OpenRead(ino) => {
            let attr = engine.open(ino)?;
            // Opened now: a map that cannot be read is the member's to ask
            // for, not an error that would leave this open uncounted there.
            let map = (attr.kind == FileKind::File)
                .then(|| ns.chunks_from(ino, 0).ok())
                .flatten()
                .map(|mut chunks| {
                    chunks.truncate(MAP_PAGE);
                    let hints = hints(engine, chunks.iter().map(|(_, c)| c));
                    FirstPage { chunks, hints }
                });
            NsReply::Opened { attr, map }
        }
        NsCall::Getlk { ino, owner, want } => NsReply::Lock(ns.getlk(host, ino, owner, want)?),
        NsCall::Setlk { ino, owner, want } => unit(ns.setlk(host, ino, owner, want)?),
        NsCall::SetlkWait {
            ino,
            owner,
            want,
            hold_ms,
        } => {
            let hold = Duration::from_millis(hold_ms.into()).min(LOCK_HOLD);
            NsReply::Locked(ns.setlk_wait(host, ino, owner, want, hold)?)
        }
        NsCall::Unlock { ino, owner } => unit(ns.unlock(host, ino, owner)?),
        NsCall::ResetLocks => unit(ns.reset_locks(host)?),
        NsCall::CreateOpen { parent, name, node } => {
            let made = ns.create_node(parent, &name, node)?;
            NsReply::Created {
                attr: engine.open(made.ino)?,
                parent: ns.attr(parent)?,
            }
        }
        NsCall::ReaddirPlus { ino, offset, max } => NsReply::EntriesPlus(
            ns.readdir_plus(ino, offset, (max as usize).min(1024))?
                .into_iter()
                .map(|(entry, attr)| {
                    let xattrs = !ns.listxattr(entry.ino)?.is_empty();
                    Ok(PlusEntry {
                        entry,
                        attr,
                        xattrs,
                    })
                })
                .collect::<Result<_>>()?,
        ),
        NsCall::Watch { .. } | NsCall::Batch(_) | NsCall::Promise { .. } => {
            return Err(Error::Invalid(
                "a watch, a batch or a promise is the member server's",
            ));
        }
        // Kept in step with the member's handles by the member server.
        NsCall::Release(_) | NsCall::Releases(_) => {
            return Err(Error::Invalid("a release is the member server's"));
        }
    })
}

/// What of the volume a member device may not do (`None`: it may), as the
/// words of its refusal. A member is one of the team's devices: every file
/// operation is its right, and what it removes or overwrites is undone from
/// snapshots. So it may take and list snapshots but not delete them, and
/// may not run the upkeep that deletes or rewrites stored data (gc, repair,
/// scrub, fsck's repair). Admitting peers and members, the snapshot schedule
/// and the recovery kit are the home's files, which no call reaches.
fn owner_only(req: &Request) -> Option<&'static str> {
    match req {
        Request::Snapshot(SnapshotOp::Delete(_)) => Some("delete snapshots"),
        Request::Gc { .. } => Some("collect garbage (gc)"),
        Request::Check { repair: true } => Some("repair with fsck"),
        Request::Mesh(Ask::Repair) => Some("run a repair"),
        Request::Mesh(Ask::Scrub) => Some("run a scrub"),
        Request::Lookup { .. }
        | Request::Getattr(_)
        | Request::Readdir { .. }
        | Request::Readlink(_)
        | Request::Mkdir { .. }
        | Request::Symlink { .. }
        | Request::Unlink { .. }
        | Request::Rmdir { .. }
        | Request::Rename { .. }
        | Request::PutFile(_)
        | Request::ReadFile(_)
        | Request::Chunks(_)
        | Request::Usage
        | Request::Check { repair: false }
        | Request::Mesh(Ask::Status)
        | Request::Barrier
        | Request::ReaddirPlus { .. }
        | Request::Params
        | Request::Snapshot(SnapshotOp::Create(_) | SnapshotOp::List) => None,
    }
}

/// Refuses chunk references the volume's code could not have made (see
/// [`ChunkRef::check`]): every host reads what the home keeps.
fn check_chunks<'a>(engine: &Engine, mut chunks: impl Iterator<Item = &'a ChunkRef>) -> Result<()> {
    let p = engine.meta().params();
    let limits = crate::chunk::Limits {
        chunk_size: p.chunk_size as usize,
        data_shards: p.data_shards as usize,
        total_shards: p.data_shards as usize + p.parity_shards as usize,
    };
    chunks
        .try_for_each(|c| c.check(&limits))
        .map_err(Error::Invalid)
}

/// What a member says of where it stored the shards of `chunks`.
fn take_hints<'a>(
    engine: &Engine,
    chunks: impl Iterator<Item = &'a ChunkRef>,
    hints: &[Vec<Vec<String>>],
) {
    for (c, h) in chunks.zip(hints) {
        for (id, peers) in c.shard_ids().iter().zip(h) {
            engine.store().learn(id, peers);
        }
    }
}

/// Where the shards of `chunks` are, as far as the home knows.
fn hints<'a>(engine: &Engine, chunks: impl Iterator<Item = &'a ChunkRef>) -> Vec<Vec<Vec<String>>> {
    chunks
        .map(|c| engine.store().holders_of(c.shard_ids()))
        .collect()
}

/// The admitted storage peers, as addresses ending in `/p2p/ID`.
fn storage_peers(engine: &Engine) -> Vec<String> {
    engine
        .store()
        .peers()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.admitted && !p.address.is_empty())
        .map(|p| format!("{}/p2p/{}", p.address, p.id))
        .collect()
}

/// The proof a joining device sends: bound to its own peer id.
pub fn join_proof(secret: &[u8; 32], me: &PeerId) -> [u8; 32] {
    admission_proof(secret, me)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_past_its_budget_is_told_busy_and_its_calls_free_it_as_they_end() {
        let b = Budget::new();
        let (a, other) = (PeerId::random(), PeerId::random());
        let held: Vec<Held> = (0..MAX_MEMBER_CALLS)
            .map(|i| b.take(a, i < MAX_MEMBER_WATCHES).unwrap())
            .collect();
        let e = b.take(a, false).err().expect("past the calls in flight");
        assert!(
            e.kind == Kind::Busy && e.text.contains("being answered"),
            "{e:?}"
        );
        // Another member is not held up by this one.
        let o = b.take(other, true).unwrap();
        drop(held);
        drop(o);
        assert!(lock(&b.busy).is_empty(), "ended calls leave nothing behind");
        let watches: Vec<Held> = (0..MAX_MEMBER_WATCHES)
            .map(|_| b.take(a, true).unwrap())
            .collect();
        let e = b.take(a, true).err().expect("past the watches held");
        assert!(e.text.contains("watches"), "{e:?}");
        assert!(b.take(a, false).is_ok(), "a watch bound stops watches only");
        drop(watches);
        // The rate: a burst of a second's calls, then busy.
        let mut n = 0u32;
        while b.take(other, false).is_ok() {
            n += 1;
            assert!(n <= 2 * MEMBER_CALLS_PER_SEC, "no rate bound");
        }
        assert!(n >= MEMBER_CALLS_PER_SEC - 10, "{n}");
        let e = b.take(other, false).err().unwrap();
        assert!(e.text.contains("a second"), "{e:?}");
    }
}
