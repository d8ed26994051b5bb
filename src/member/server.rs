//! The home's side of `/datamesh/meta/1` (its messages are
//! [`super::wire`]'s): who may ask (members not revoked; anyone may
//! `Join` with a good proof), and the answers, from the daemon's engine. The
//! member's side is [`super::client`] and [`super::namespace`].

use super::answer::{check_chunks, hints, ns_answer, owner_only, storage_peers, take_hints};
use super::budget::Budget;
use super::wire::{
    MAX_BATCH, MetaCall, MetaReply, MetaRequest, NsCall, NsReply, VERSION, VolumeInfo, WATCH_HOLD,
    encode_answer, refused,
};
use crate::data::{CommittedFile, Engine};
use crate::error::Kind;
use crate::home::HomePaths;
use crate::meta::changes::with_origin;
use crate::net::trust::{Invites, Member, Members, admission_proof, now_secs};
use crate::net::{MeshClient, PeerId};
use crate::types::{FileKind, Ino};
use crate::util::lock;
use crate::volume::proto::{Reply, WireError};
use crate::volume::serve;
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
        // Before any member is answered: what they held back under the
        // delegations of an earlier run is taken.
        if let Some(Err(e)) = engine.meta().local().map(|m| m.restore_grants()) {
            tracing::warn!(
                "reading the delegations of the last run: {e} (what member devices held                  back then is refused)"
            );
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
    /// Refuses an open past [`MAX_MEMBER_OPENS`] handles of `peer`.
    fn may_open(&self, peer: &PeerId) -> Result<()> {
        let held = lock(&self.opens).get(peer).map_or(0, |m| m.total);
        if held >= MAX_MEMBER_OPENS {
            return Err(Error::Invalid("too many files open on this member device"));
        }
        Ok(())
    }

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
                self.may_open(&peer)?;
                let reply = ns_answer(engine, mount, call)?;
                match &reply {
                    NsReply::Attr(a)
                    | NsReply::Created { attr: a, .. }
                    | NsReply::Opened { attr: a, .. } => self.note_open(peer, a.ino),
                    _ => {}
                }
                Ok(reply)
            }
            NsCall::Promise { since, ref dirs } | NsCall::Delegate { since, ref dirs } => {
                let delegate = matches!(call, NsCall::Delegate { .. });
                let local = home_store(engine)?;
                Ok(NsReply::Promised(
                    local.changes().promise(mount, since, dirs, delegate),
                ))
            }
            NsCall::Inodes => {
                let local = home_store(engine)?;
                let start = local.take_inodes(mount)?;
                Ok(NsReply::Inodes {
                    start,
                    len: crate::meta::ranges::RANGE_LEN,
                })
            }
            NsCall::Made {
                parent,
                name,
                node,
                ino,
                time,
            } => {
                let local = home_store(engine)?;
                if !local.changes().holds(mount, parent) {
                    tracing::warn!(
                        "member device {peer} made {:?} in directory {parent}, which is not \
                         delegated to it (a recall it answered late?): refused",
                        String::from_utf8_lossy(&name)
                    );
                    return Err(Error::Invalid(
                        "the directory is not delegated to this device (any more)",
                    ));
                }
                if node.kind == FileKind::Dir {
                    // Made, and delegated to its maker.
                    let made = local.made(mount, parent, &name, node, ino, time)?;
                    if !local.changes().delegate_made(mount, made.ino) {
                        tracing::warn!(
                            "member device {peer} made directory {:?} ({}) in directory \
                             {parent}, but may hold no more delegations: what it makes in it \
                             is refused",
                            String::from_utf8_lossy(&name),
                            made.ino
                        );
                    }
                    return Ok(NsReply::Attr(made));
                }
                if node.kind == FileKind::Symlink {
                    // Made, not opened.
                    return Ok(NsReply::Attr(
                        local.made(mount, parent, &name, node, ino, time)?,
                    ));
                }
                self.may_open(&peer)?;
                let made = local.made(mount, parent, &name, node, ino, time)?;
                let attr = engine.open(made.ino)?;
                self.note_open(peer, attr.ino);
                Ok(NsReply::Created {
                    attr,
                    parent: engine.meta().attr(parent)?,
                })
            }
            NsCall::Held { dir, call } => {
                if matches!(
                    *call,
                    NsCall::Held { .. }
                        | NsCall::Batch(_)
                        | NsCall::Watch { .. }
                        | NsCall::SetlkWait { .. }
                ) {
                    return Err(Error::Invalid("a held-back change holds one change"));
                }
                let local = home_store(engine)?;
                if !local.changes().holds(mount, dir) {
                    tracing::warn!(
                        "member device {peer} sent a {} held back under directory {dir}, which \
                         is not delegated to it (a recall it answered late?): refused",
                        call.kind()
                    );
                    return Err(Error::Invalid(
                        "the directory is not delegated to this device (any more)",
                    ));
                }
                self.member_call(engine, peer, mount, *call)
            }
            NsCall::Features => Ok(NsReply::Features(super::wire::FEATURES)),
            NsCall::Unmade {
                parent,
                name,
                ino,
                dir,
            } => {
                let local = home_store(engine)?;
                let what = String::from_utf8_lossy(&name).into_owned();
                if !local.changes().holds(mount, parent) {
                    tracing::warn!(
                        "member device {peer} removed {what:?} in directory {parent}, which is \
                         not delegated to it (a recall it answered late?): refused"
                    );
                    return Err(Error::Invalid(
                        "the directory is not delegated to this device (any more)",
                    ));
                }
                let found = engine.meta().lookup(parent, &name)?;
                if found.ino != ino || (found.kind == FileKind::Dir) != dir {
                    tracing::warn!(
                        "member device {peer} removed {what:?} in directory {parent} as inode \
                         {ino}, which is inode {} there: refused",
                        found.ino
                    );
                    return Err(Error::Invalid(
                        "the name is another inode than the device's",
                    ));
                }
                let call = if dir {
                    NsCall::Rmdir { parent, name }
                } else {
                    NsCall::Unlink { parent, name }
                };
                ns_answer(engine, mount, call)
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
                        "a batch of more than 256 calls, or with a batch, watch or waiting lock",
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

/// The home's namespace store: what promises, delegations and inode
/// ranges are kept in.
fn home_store(engine: &Engine) -> Result<&crate::meta::MetaStore> {
    engine
        .meta()
        .local()
        .ok_or(Error::Invalid("this host is not a home"))
}

/// The proof a joining device sends: bound to its own peer id.
pub fn join_proof(secret: &[u8; 32], me: &PeerId) -> [u8; 32] {
    admission_proof(secret, me)
}
