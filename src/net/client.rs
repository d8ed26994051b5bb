//! The home node's side of the mesh.
//!
//! [`MeshClient`] runs the swarm as an actor on its own small tokio runtime; the
//! rest of the program holds a cloneable handle and sends it requests, each with
//! a callback for the answer. [`MeshStore`] is the [`ShardStore`] over it: it
//! places the shards of a chunk on distinct peers by rendezvous hashing, keeps a
//! map of which peer holds which shard, and rides over dead or slow peers.

use super::proto::{MAX_IDS, Request, Response};
use super::{BehaviourEvent, MeshKey, NetError, build_swarm, is_unspecified, peer_of};
use crate::chunk::ShardId;
use crate::store::{
    LocalStore, PeerNote, PeerStatus, Scrubbed, ShardInfo, ShardStore, StoreError, Survey,
};
use libp2p::futures::StreamExt;
use libp2p::request_response::{self, Message, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId, identify, kad};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as smpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// Peer tags are bits of a u64 mask: a mesh of up to 63 storage peers, and the
/// last bit for shards still in this host's own store.
pub const MAX_PEERS: usize = 63;
const LOCAL_TAG: usize = 63;
/// How long a peer that refused a put for want of room, or was too slow to
/// answer one, is passed over.
const AVOID_FOR: Duration = Duration::from_secs(60);
/// How long a put waits for a shard before sending it to another peer too.
const STRAGGLER_WAIT: Duration = Duration::from_secs(5);
/// Chunks whose last shards may still be landing after the write returned.
const MAX_BACKGROUND_PUTS: usize = 16;
/// How long a caller waits for any one answer (the request itself times out
/// earlier, inside libp2p).
const ANSWER_WAIT: Duration = Duration::from_secs(40);
/// A survey counts a peer unreachable when no connection to it comes up
/// within this long (a dial to a vanished host can hang for minutes).
const SURVEY_DIAL_WAIT: Duration = Duration::from_secs(10);
/// A survey counts a connected peer as not answering when one page of its
/// inventory takes longer than this.
const SURVEY_PAGE_WAIT: Duration = Duration::from_secs(20);

type Reply = Box<dyn FnOnce(Result<Response, String>) + Send>;

enum Cmd {
    Request {
        peer: PeerId,
        req: Request,
        reply: Reply,
    },
    /// Dial every known peer that is not connected, now.
    Redial,
}

#[derive(Clone)]
struct PeerEntry {
    id: PeerId,
    addrs: Vec<Multiaddr>,
    connected: bool,
    storage: bool,
    /// Since when it has been unreachable (None while connected).
    down_since: Option<Instant>,
    /// The last dial failed (it is down, not merely not answered yet).
    dial_failed: bool,
    /// Identify has told what it is (a storage peer or not).
    identified: bool,
    /// Failed dials so far, and the last one's error.
    dial_failures: u64,
    last_dial_error: String,
}

#[derive(Default)]
struct PeerTable {
    /// Index = tag. Only storage peers get a tag.
    list: Vec<PeerEntry>,
    by_id: HashMap<PeerId, usize>,
}

impl PeerTable {
    fn entry(&mut self, id: PeerId) -> Option<&mut PeerEntry> {
        if let Some(&i) = self.by_id.get(&id) {
            return Some(&mut self.list[i]);
        }
        if self.list.len() >= MAX_PEERS {
            tracing::warn!("peer {id} ignored: a mesh holds at most {MAX_PEERS} storage peers");
            return None;
        }
        self.by_id.insert(id, self.list.len());
        self.list.push(PeerEntry {
            id,
            addrs: Vec::new(),
            connected: false,
            storage: false,
            down_since: Some(Instant::now()),
            dial_failed: false,
            identified: false,
            dial_failures: 0,
            last_dial_error: String::new(),
        });
        self.list.last_mut()
    }
}

struct Shared {
    peers: Mutex<PeerTable>,
    /// Where the addresses of the storage peers seen are remembered.
    remember: Option<PathBuf>,
    /// The first Kademlia bootstrap has finished: the peers it found are known.
    kad_settled: AtomicBool,
}

use crate::util::lock;

impl Shared {
    fn save_peers(&self) {
        let Some(path) = &self.remember else { return };
        let text: String = lock(&self.peers)
            .list
            .iter()
            .filter(|p| p.storage)
            .flat_map(|p| p.addrs.first().map(|a| format!("{a}/p2p/{}\n", p.id)))
            .collect();
        if std::fs::read_to_string(path).ok().as_deref() != Some(text.as_str()) {
            // Its own temp name: a mount and a command may both be saving.
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            if let Err(e) = std::fs::write(&tmp, &text).and_then(|_| std::fs::rename(&tmp, path)) {
                tracing::warn!("{}: {e}", path.display());
            }
        }
    }
}

/// A handle on the swarm actor; cheap to clone.
#[derive(Clone)]
pub struct MeshClient {
    tx: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
    _rt: Arc<Runtime>,
}

/// The actor's runtime, shut down without waiting when the last handle goes
/// (it may go from inside another runtime's blocking thread).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl MeshClient {
    /// Starts the swarm and dials `bootstrap` (addresses ending in `/p2p/ID` are
    /// remembered as peers at once). `remember`: a file that keeps the storage
    /// peers' addresses for later runs.
    pub fn start(
        identity: libp2p::identity::Keypair,
        key: &MeshKey,
        bootstrap: Vec<Multiaddr>,
        remember: Option<PathBuf>,
    ) -> Result<MeshClient, NetError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            // Each connection's Noise and Yamux work runs as its own task: one
            // worker per core lets them run side by side.
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .thread_name("datamesh-net")
            .enable_all()
            .build()
            .map_err(|e| NetError::Bad(format!("starting the network runtime: {e}")))?;
        let swarm = {
            let _g = rt.enter();
            build_swarm(identity, key, false)?
        };
        let shared = Arc::new(Shared {
            peers: Mutex::new(PeerTable::default()),
            remember,
            kad_settled: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        rt.spawn(actor(swarm, rx, shared.clone(), bootstrap));
        Ok(MeshClient {
            tx,
            shared,
            _rt: Arc::new(Runtime(Some(rt))),
        })
    }

    /// Sends `req` to `peer`; `reply` gets the answer (on the network thread: it
    /// must only hand it on).
    fn request(&self, peer: PeerId, req: Request, reply: Reply) {
        if let Err(mpsc::error::SendError(Cmd::Request { reply, .. })) =
            self.tx.send(Cmd::Request { peer, req, reply })
        {
            reply(Err("the network task has stopped".into()));
        }
    }

    /// One request, waited for.
    fn ask(&self, peer: PeerId, req: Request) -> Result<Response, String> {
        let (tx, rx) = smpsc::channel();
        self.request(
            peer,
            req,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv_timeout(ANSWER_WAIT)
            .unwrap_or_else(|_| Err(format!("peer {peer}: no answer in {ANSWER_WAIT:?}")))
    }

    /// Reachable storage peers as (tag, id).
    fn live(&self) -> Vec<(usize, PeerId)> {
        lock(&self.shared.peers)
            .list
            .iter()
            .enumerate()
            .filter(|(_, p)| p.storage && p.connected)
            .map(|(i, p)| (i, p.id))
            .collect()
    }

    /// Reachable storage peers among the tags in `mask`.
    fn live_in(&self, mask: u64) -> Vec<(usize, PeerId)> {
        let mut live = self.live();
        live.retain(|(t, _)| mask & bit(*t) != 0);
        live
    }

    /// The tags of the reachable storage peers, as a mask.
    fn live_mask(&self) -> u64 {
        self.live().iter().fold(0, |m, (t, _)| m | bit(*t))
    }

    /// Waits until `want` storage peers are reachable; gives up after `limit`
    /// with none, or with some once every known peer has connected or failed
    /// to (or 3 s pass without a new one: a dial to a vanished host can hang).
    pub fn wait_for_peers(&self, want: usize, limit: Duration) -> usize {
        let start = Instant::now();
        let (mut last, mut since) = (0, Instant::now());
        loop {
            let (n, pending) = {
                let t = lock(&self.shared.peers);
                let storage = t.list.iter().filter(|p| p.storage);
                let n = storage.clone().filter(|p| p.connected).count();
                (
                    n,
                    storage.filter(|p| !p.connected && !p.dial_failed).count(),
                )
            };
            if n != last {
                (last, since) = (n, Instant::now());
            }
            let settled = n > 0 && (pending == 0 || since.elapsed() >= Duration::from_secs(3));
            if n >= want || settled || start.elapsed() >= limit {
                return n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every storage peer known, reachable or not, as (tag, entry).
    fn storage_peers(&self) -> Vec<(usize, PeerEntry)> {
        lock(&self.shared.peers)
            .list
            .iter()
            .enumerate()
            .filter(|(_, p)| p.storage)
            .map(|(i, p)| (i, p.clone()))
            .collect()
    }

    /// Connected peers that have not said yet whether they store shards.
    fn unclassified(&self) -> Vec<PeerId> {
        lock(&self.shared.peers)
            .list
            .iter()
            .filter(|p| p.connected && !p.identified && !p.storage)
            .map(|p| p.id)
            .collect()
    }

    /// Dials every known peer that is not connected, without waiting for the
    /// periodic redial.
    fn redial(&self) {
        let _ = self.tx.send(Cmd::Redial);
    }

    /// Storage peers known but unreachable now.
    fn down(&self) -> usize {
        lock(&self.shared.peers)
            .list
            .iter()
            .filter(|p| p.storage && !p.connected)
            .count()
    }
}

async fn actor(
    mut swarm: libp2p::Swarm<super::Behaviour>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    shared: Arc<Shared>,
    bootstrap: Vec<Multiaddr>,
) {
    let mut pending: HashMap<OutboundRequestId, Reply> = HashMap::new();
    for addr in &bootstrap {
        if let Some(peer) = peer_of(addr) {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            swarm.add_peer_address(peer, addr.clone());
            // Bootstrap and remembered addresses are storage peers until identify
            // says otherwise, so that one that is down shows as such.
            if let Some(p) = lock(&shared.peers).entry(peer) {
                p.addrs.push(bare(addr));
                p.storage = true;
            }
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!("bootstrap {addr}: {e}");
        }
    }
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => break,
                Some(Cmd::Request { peer, req, reply }) => {
                    let id = swarm.behaviour_mut().shard.send_request(&peer, req);
                    pending.insert(id, reply);
                }
                Some(Cmd::Redial) => redial(&mut swarm, &shared),
            },
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                    let mut t = lock(&shared.peers);
                    if let Some(p) = t.entry(peer_id) {
                        p.connected = true;
                        p.down_since = None;
                        p.dial_failed = false;
                        if endpoint.is_dialer() {
                            let a = bare(endpoint.get_remote_address());
                            if !p.addrs.contains(&a) {
                                p.addrs.insert(0, a);
                            }
                        }
                    }
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, cause, .. } => {
                    if let Some(p) = lock(&shared.peers).entry(peer_id) {
                        if p.storage {
                            tracing::warn!("lost storage peer {peer_id}: {cause:?}");
                        }
                        p.connected = false;
                        p.down_since = Some(Instant::now());
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                    peer_id, info, ..
                })) => {
                    let storage = info.agent_version.starts_with("datamesh-node/");
                    if storage {
                        for a in &info.listen_addrs {
                            swarm.behaviour_mut().kad.add_address(&peer_id, a.clone());
                        }
                    }
                    let mut t = lock(&shared.peers);
                    if let Some(p) = t.entry(peer_id) {
                        p.storage = storage;
                        p.identified = true;
                        for a in info.listen_addrs.iter().filter(|a| !is_unspecified(a)).map(bare) {
                            if !p.addrs.contains(&a) {
                                p.addrs.push(a);
                            }
                        }
                        drop(t);
                        if storage {
                            tracing::info!("storage peer {peer_id} identified");
                            shared.save_peers();
                        }
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                    peer, addresses, ..
                })) => {
                    // Only storage peers serve the DHT (home nodes are kad clients),
                    // so a peer found there counts as one from now on.
                    let addresses = addresses.into_vec();
                    if let Some(p) = lock(&shared.peers).entry(peer) {
                        p.storage = true;
                        for a in addresses.iter().filter(|a| !is_unspecified(a)).map(bare) {
                            if !p.addrs.contains(&a) {
                                p.addrs.push(a);
                            }
                        }
                    }
                    if !swarm.is_connected(&peer) {
                        let _ = swarm.dial(DialOpts::peer_id(peer).addresses(addresses).build());
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                    result: kad::QueryResult::Bootstrap(_), step, ..
                })) if step.last => {
                    shared.kad_settled.store(true, Ordering::Relaxed);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Shard(request_response::Event::Message {
                    message: Message::Response { request_id, response },
                    ..
                })) => {
                    if let Some(reply) = pending.remove(&request_id) {
                        reply(Ok(response));
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Shard(
                    request_response::Event::OutboundFailure { request_id, error, peer, .. },
                )) => {
                    if let Some(reply) = pending.remove(&request_id) {
                        reply(Err(format!("peer {peer}: {error}")));
                    }
                }
                SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                    tracing::debug!("dial {peer_id:?}: {error}");
                    let mut t = lock(&shared.peers);
                    if let Some(i) = peer_id.and_then(|id| t.by_id.get(&id).copied()) {
                        let p = &mut t.list[i];
                        p.dial_failed = true;
                        p.dial_failures += 1;
                        p.last_dial_error = short_dial_error(&error);
                    }
                }
                _ => {}
            },
            _ = tick.tick() => {
                ticks += 1;
                // Dead peers are redialled so that a restarted one is used again.
                redial(&mut swarm, &shared);
                if ticks % 15 == 1 && swarm.behaviour_mut().kad.bootstrap().is_err() {
                    // No peer to ask: there is nothing to discover.
                    shared.kad_settled.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Dials the known peers that are not connected (a dial already under way for
/// a peer is left to finish).
fn redial(swarm: &mut libp2p::Swarm<super::Behaviour>, shared: &Shared) {
    let down: Vec<PeerEntry> = lock(&shared.peers)
        .list
        .iter()
        .filter(|p| !p.connected && !p.addrs.is_empty())
        .cloned()
        .collect();
    for p in down {
        if !swarm.is_connected(&p.id) {
            let _ = swarm.dial(DialOpts::peer_id(p.id).addresses(p.addrs).build());
        }
    }
}

/// A dial error in one line: libp2p's lists every address tried with its
/// whole error chain.
fn short_dial_error(e: &libp2p::swarm::DialError) -> String {
    let mut text = e.to_string();
    if let libp2p::swarm::DialError::Transport(tries) = e
        && let Some((addr, err)) = tries.first()
    {
        let mut cause: &dyn std::error::Error = err;
        while let Some(next) = cause.source() {
            cause = next;
        }
        text = format!("{addr}: {cause}");
    }
    text
}

/// An address without its trailing `/p2p/ID` (kept once, beside the peer id).
fn bare(a: &Multiaddr) -> Multiaddr {
    a.iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect()
}

/// Rendezvous (highest-random-weight) score of a peer for a placement key.
fn score(key: &ShardId, peer: &PeerId) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&key.0);
    h.update(&peer.to_bytes());
    u64::from_be_bytes(h.finalize().as_bytes()[..8].try_into().unwrap())
}

fn bit(tag: usize) -> u64 {
    1u64 << tag
}

fn note(p: &PeerEntry, why: String) -> PeerNote {
    PeerNote {
        id: p.id.to_string(),
        address: p.addrs.first().map(|a| a.to_string()).unwrap_or_default(),
        why,
    }
}

/// Shards spread over storage peers.
pub struct MeshStore {
    client: MeshClient,
    /// Which peers (tag bits) hold each shard.
    loc: Mutex<HashMap<ShardId, u64>>,
    /// When each peer last refused a put for want of room, or was too slow
    /// to answer one.
    avoid: Mutex<HashMap<usize, Instant>>,
    /// While a survey runs: the shards stored meanwhile.
    touched: Mutex<Option<std::collections::HashSet<ShardId>>>,
    /// Chunks whose last shards are still landing in the background.
    inflight: (Mutex<usize>, Condvar),
    /// Peers that took puts since the last sync.
    written: AtomicU64,
    /// A background put could not place every shard: repair has work.
    unplaced: AtomicBool,
    /// This store, for the threads that finish puts in the background.
    me: std::sync::Weak<MeshStore>,
    /// Shards written before the volume had peers: still read from here, and
    /// moved onto peers by repair.
    local: Option<LocalStore>,
    /// Exponential average of a shard fetch, in microseconds (for hedging).
    fetch_us: AtomicU64,
    /// Peers that have been gone past the grace time and were repaired around.
    repaired_mask: AtomicU64,
    /// One survey at a time; callers that ask meanwhile may share its result.
    surveying: Mutex<()>,
    /// Numbers survey calls and runs, so a caller knows whether a run started
    /// after it asked.
    survey_ticket: AtomicU64,
    /// The last survey run: its ticket and what it heard.
    last_survey: Mutex<Option<(u64, Survey)>>,
}

impl MeshStore {
    pub fn new(client: MeshClient, local: Option<LocalStore>) -> Arc<MeshStore> {
        Arc::new_cyclic(|me| MeshStore {
            client,
            loc: Mutex::new(HashMap::new()),
            touched: Mutex::new(None),
            avoid: Mutex::new(HashMap::new()),
            inflight: (Mutex::new(0), Condvar::new()),
            written: AtomicU64::new(0),
            unplaced: AtomicBool::new(false),
            fetch_us: AtomicU64::new(20_000),
            repaired_mask: AtomicU64::new(0),
            surveying: Mutex::new(()),
            survey_ticket: AtomicU64::new(0),
            last_survey: Mutex::new(None),
            me: me.clone(),
            local,
        })
    }

    /// Live peers ordered by rendezvous score for `key`.
    /// Peers that were full or too slow within [`AVOID_FOR`] are left out while
    /// there are others, so each chunk does not pay for them again.
    fn ranked(&self, key: &ShardId) -> Vec<(usize, PeerId)> {
        let mut live = self.client.live();
        live.sort_by_key(|(_, p)| std::cmp::Reverse(score(key, p)));
        let avoid = lock(&self.avoid);
        let roomy: Vec<_> = live
            .iter()
            .filter(|(t, _)| avoid.get(t).is_none_or(|at| at.elapsed() > AVOID_FOR))
            .copied()
            .collect();
        if roomy.is_empty() { live } else { roomy }
    }

    /// Storage peers unreachable for longer than `grace`.
    fn gone_mask(&self, grace: Duration) -> u64 {
        lock(&self.client.shared.peers)
            .list
            .iter()
            .enumerate()
            .filter(|(_, p)| p.storage && p.down_since.is_some_and(|t| t.elapsed() >= grace))
            .fold(0, |m, (t, _)| m | bit(t))
    }

    fn holders(&self, id: &ShardId) -> u64 {
        lock(&self.loc).get(id).copied().unwrap_or(0)
    }

    fn record(&self, id: ShardId, tag: usize) {
        if let Some(t) = lock(&self.touched).as_mut() {
            t.insert(id);
        }
        *lock(&self.loc).entry(id).or_default() |= bit(tag);
    }

    fn forget(&self, id: &ShardId, tag: usize) {
        let mut loc = lock(&self.loc);
        if let Some(m) = loc.get_mut(id) {
            *m &= !bit(tag);
            if *m == 0 {
                loc.remove(id);
            }
        }
    }

    fn no_peers() -> StoreError {
        StoreError::Peer(
            "no storage peer is reachable (start some with `datamesh node`, see `datamesh status`)"
                .into(),
        )
    }

    /// Fetches a shard from `peer`, checking what comes back against its id.
    fn fetch_from(&self, tag: usize, peer: PeerId, id: &ShardId) -> Result<Vec<u8>, StoreError> {
        let start = Instant::now();
        match self.client.ask(peer, Request::Get { id: *id }) {
            Ok(Response::Data(b)) if ShardId::of(&b) == *id => {
                let us = start.elapsed().as_micros() as u64;
                let old = self.fetch_us.load(Ordering::Relaxed);
                self.fetch_us.store((old * 7 + us) / 8, Ordering::Relaxed);
                Ok(b)
            }
            Ok(Response::Data(_)) => {
                tracing::error!(
                    "peer {peer} sent bytes that do not match shard {id} (damaged on its disk, in transit or on purpose): ignored, fetching it elsewhere"
                );
                // The bad copy goes (the peer is told to drop it, without waiting
                // for its answer) and the rebuilt one is placed afresh, on
                // another peer: this one is passed over for a while (a put there
                // could also race the delete).
                self.client
                    .request(peer, Request::Delete { ids: vec![*id] }, Box::new(drop));
                self.forget(id, tag);
                lock(&self.avoid).insert(tag, Instant::now());
                Err(StoreError::Corrupt(*id))
            }
            Ok(Response::Missing) => {
                self.forget(id, tag);
                Err(StoreError::Missing(*id))
            }
            Ok(Response::Corrupt) => {
                tracing::warn!("peer {peer} holds a damaged copy of shard {id}");
                self.forget(id, tag);
                Err(StoreError::Corrupt(*id))
            }
            Ok(other) => Err(StoreError::Peer(format!(
                "peer {peer}: unexpected answer: {other}"
            ))),
            Err(e) => Err(StoreError::Peer(e)),
        }
    }

    /// Asks every live peer not in `skip` whether it has `id`; records the holders.
    fn find(&self, id: &ShardId, skip: u64) -> u64 {
        let peers = self.client.live_in(!skip);
        let mut found = 0;
        for (tag, _, r) in self.ask_all(&peers, || Request::Has { ids: vec![*id] }) {
            if let Ok(Response::Have(v)) = r
                && v.first() == Some(&true)
            {
                self.record(*id, tag);
                found |= bit(tag);
            }
        }
        found
    }

    /// Sends one request to each of `peers` at once and collects the answers.
    fn ask_all(
        &self,
        peers: &[(usize, PeerId)],
        req: impl Fn() -> Request,
    ) -> Vec<(usize, PeerId, Result<Response, String>)> {
        let (tx, rx) = smpsc::channel();
        for &(tag, peer) in peers {
            let tx = tx.clone();
            self.client.request(
                peer,
                req(),
                Box::new(move |r| {
                    let _ = tx.send((tag, peer, r));
                }),
            );
        }
        drop(tx);
        let mut out: Vec<(usize, PeerId, Result<Response, String>)> = Vec::new();
        while out.len() < peers.len() {
            match rx.recv_timeout(ANSWER_WAIT) {
                Ok(r) => out.push(r),
                Err(_) => break,
            }
        }
        // Whoever has not answered by now is reported as such.
        for &(tag, peer) in peers {
            if !out.iter().any(|(t, _, _)| *t == tag) {
                out.push((tag, peer, Err(format!("peer {peer}: no answer"))));
            }
        }
        out
    }

    /// One survey: every known storage peer ends answered, unreachable or
    /// silent (docs/DESIGN.md, "A complete survey"); peers found meanwhile are
    /// included. Inventory pages of all peers are asked for in parallel.
    fn run_survey(&self) -> Result<Survey, StoreError> {
        enum Stage {
            Dialing { since: Instant, failures: u64 },
            Listing { since: Instant },
            Answered,
            Unreachable(String),
            Silent(String),
        }
        // Shards stored while the inventories are taken are recorded here, so
        // that an inventory taken just before they landed does not unlist them.
        *lock(&self.touched) = Some(std::collections::HashSet::new());
        self.client.redial();
        let (tx, rx) = smpsc::channel::<(usize, Result<Response, String>)>();
        let list = |peer: PeerId, tag: usize, after: Option<ShardId>| {
            let tx = tx.clone();
            let req = Request::List {
                after,
                max: MAX_IDS as u32,
            };
            self.client.request(
                peer,
                req,
                Box::new(move |r| {
                    let _ = tx.send((tag, r));
                }),
            );
        };
        let mut stage: HashMap<usize, (PeerEntry, Stage)> = HashMap::new();
        let mut fresh: HashMap<ShardId, u64> = HashMap::new();
        // Connected peers not yet identified, since when: they may be storage
        // peers found through the DHT.
        let mut classifying: HashMap<PeerId, Instant> = HashMap::new();
        let start = Instant::now();
        loop {
            let now = Instant::now();
            let table = self.client.storage_peers();
            // A bootstrap address that identified as something else is no peer.
            stage.retain(|t, _| table.iter().any(|(tag, _)| tag == t));
            for (tag, p) in table {
                let (entry, st) = stage.entry(tag).or_insert_with(|| {
                    let dialing = Stage::Dialing {
                        since: now,
                        failures: p.dial_failures,
                    };
                    (p.clone(), dialing)
                });
                *entry = p;
                match st {
                    Stage::Dialing { since, failures } => {
                        if entry.connected {
                            list(entry.id, tag, None);
                            *st = Stage::Listing { since: now };
                        } else if entry.dial_failures > *failures {
                            *st = Stage::Unreachable(entry.last_dial_error.clone());
                        } else if since.elapsed() >= SURVEY_DIAL_WAIT {
                            *st = Stage::Unreachable(format!(
                                "no connection within {}s",
                                SURVEY_DIAL_WAIT.as_secs()
                            ));
                        }
                    }
                    Stage::Listing { since } if since.elapsed() >= SURVEY_PAGE_WAIT => {
                        *st = Stage::Silent(format!(
                            "no answer to an inventory request within {}s",
                            SURVEY_PAGE_WAIT.as_secs()
                        ));
                    }
                    _ => {}
                }
            }
            let busy = |s: &Stage| matches!(s, Stage::Dialing { .. } | Stage::Listing { .. });
            // Peers may still be found: the DHT's first walk, and peers connected
            // but not yet identified, each waited for no longer than a dial.
            let discovering = !self.client.shared.kad_settled.load(Ordering::Relaxed)
                && start.elapsed() < SURVEY_DIAL_WAIT;
            let classifying_now = self.client.unclassified();
            classifying.retain(|id, _| classifying_now.contains(id));
            let identifying = classifying_now
                .into_iter()
                .any(|id| classifying.entry(id).or_insert(now).elapsed() < SURVEY_DIAL_WAIT);
            if !stage.values().any(|(_, s)| busy(s)) && !discovering && !identifying {
                break;
            }
            let first = rx.recv_timeout(Duration::from_millis(20)).ok();
            for (tag, r) in first
                .into_iter()
                .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            {
                let Some((entry, st @ Stage::Listing { .. })) = stage.get_mut(&tag) else {
                    continue; // late: the peer was already counted as silent
                };
                *st = match r {
                    Ok(Response::List { shards, more }) => {
                        let last = shards.last().map(|sh| sh.0);
                        let mut loc = lock(&self.loc);
                        for (id, _, _) in shards {
                            *loc.entry(id).or_default() |= bit(tag);
                            *fresh.entry(id).or_default() |= bit(tag);
                        }
                        drop(loc);
                        if more {
                            list(entry.id, tag, last);
                            Stage::Listing {
                                since: Instant::now(),
                            }
                        } else {
                            Stage::Answered
                        }
                    }
                    Ok(other) => Stage::Silent(format!("unexpected answer: {other}")),
                    Err(e) => Stage::Silent(e),
                };
            }
        }
        let mut out = Survey {
            answered: self.local_bit(),
            ..Default::default()
        };
        let res = match &self.local {
            Some(l) => l.for_each(&mut |info| *fresh.entry(info.id).or_default() |= bit(LOCAL_TAG)),
            None => Ok(()),
        };
        let touched = lock(&self.touched).take().unwrap_or_default();
        res?;
        let mut tags: Vec<_> = stage.into_iter().collect();
        tags.sort_by_key(|(t, _)| *t);
        for (tag, (entry, st)) in tags {
            match st {
                Stage::Answered => out.answered |= bit(tag),
                Stage::Unreachable(why) => {
                    tracing::info!("survey: peer {} unreachable: {why}", entry.id);
                    out.unreachable.push(note(&entry, why));
                }
                Stage::Silent(why) => {
                    tracing::info!("survey: peer {} did not answer: {why}", entry.id);
                    out.silent.push(note(&entry, why));
                }
                Stage::Dialing { .. } | Stage::Listing { .. } => unreachable!("survey ended"),
            }
        }
        // What the peers that answered did not list, they do not hold; other
        // peers keep their entries (their shards count again if they return).
        let mut loc = lock(&self.loc);
        for (id, m) in loc.iter_mut() {
            if !touched.contains(id) {
                *m = (*m & !out.answered) | fresh.get(id).copied().unwrap_or(0);
            }
        }
        for (id, m) in fresh {
            *loc.entry(id).or_default() |= m;
        }
        loc.retain(|_, m| *m != 0);
        Ok(out)
    }

    /// Every shard a live peer holds, page by page.
    fn inventory(
        &self,
        tag: usize,
        peer: PeerId,
        f: &mut dyn FnMut(ShardInfo),
    ) -> Result<(), StoreError> {
        let mut after = None;
        loop {
            match self.client.ask(
                peer,
                Request::List {
                    after,
                    max: MAX_IDS as u32,
                },
            ) {
                Ok(Response::List { shards, more }) => {
                    after = shards.last().map(|s| s.0);
                    let mut loc = lock(&self.loc);
                    for (id, len, mtime) in shards {
                        *loc.entry(id).or_default() |= bit(tag);
                        f(ShardInfo {
                            id,
                            len,
                            modified: SystemTime::UNIX_EPOCH
                                + Duration::from_secs(mtime.max(0) as u64),
                        });
                    }
                    if !more {
                        return Ok(());
                    }
                }
                Ok(other) => {
                    return Err(StoreError::Peer(format!(
                        "peer {peer}: unexpected answer: {other}"
                    )));
                }
                Err(e) => return Err(StoreError::Peer(e)),
            }
        }
    }

    /// Starts putting shard `i` to the best candidate not tried yet for it
    /// (a peer holding no shard of this chunk, else the least used one); false
    /// when every live peer has been tried.
    fn send_put(&self, job: &mut PutJob, i: usize, tx: &PutTx) -> bool {
        let pick = job
            .ranked
            .iter()
            .filter(|(tag, _)| job.tried[i] & bit(*tag) == 0)
            .min_by_key(|(tag, _)| job.load.get(tag).copied().unwrap_or(0))
            .copied();
        match pick {
            Some((tag, peer)) => {
                self.send_put_to(job, i, tag, peer, tx);
                true
            }
            None => false,
        }
    }

    fn send_put_to(&self, job: &mut PutJob, i: usize, tag: usize, peer: PeerId, tx: &PutTx) {
        job.tried[i] |= bit(tag);
        job.pending[i] |= bit(tag);
        *job.load.entry(tag).or_default() += 1;
        job.outstanding += 1;
        let tx = tx.clone();
        self.client.request(
            peer,
            Request::Put {
                id: job.ids[i],
                data: job.bytes[i].clone(),
            },
            Box::new(move |r| {
                let _ = tx.send((i, tag, r));
            }),
        );
    }

    /// Takes answers until `until` shards are stored or nothing is pending. A
    /// shard unanswered for [`STRAGGLER_WAIT`] is sent to another peer as well,
    /// and the slow peer is passed over for a while: a stalled peer costs a
    /// write seconds, not the request timeout.
    fn drive(&self, job: &mut PutJob, rx: &PutRx, tx: &PutTx, until: usize) {
        let start = Instant::now();
        while job.stored < until && job.outstanding > 0 {
            match rx.recv_timeout(STRAGGLER_WAIT) {
                Ok(answer) => self.take_answer(job, answer, tx),
                Err(smpsc::RecvTimeoutError::Timeout) if start.elapsed() < ANSWER_WAIT => {
                    for i in 0..job.ids.len() {
                        if job.done[i] || job.pending[i] == 0 {
                            continue;
                        }
                        {
                            let mut avoid = lock(&self.avoid);
                            for tag in (0..MAX_PEERS).filter(|t| job.pending[i] & bit(*t) != 0) {
                                avoid.insert(tag, Instant::now());
                            }
                        }
                        if self.send_put(job, i, tx) {
                            tracing::info!(
                                "shard {} is slow to store: sent to another peer too",
                                job.ids[i]
                            );
                        }
                    }
                }
                Err(_) => break,
            }
        }
    }

    fn take_answer(&self, job: &mut PutJob, (i, tag, res): PutAnswer, tx: &PutTx) {
        job.outstanding -= 1;
        job.pending[i] &= !bit(tag);
        match res {
            Ok(Response::Done) => {
                if !job.done[i] {
                    job.done[i] = true;
                    job.stored += 1;
                    // Never sent again: its bytes need not outlive the answer.
                    job.bytes[i] = Vec::new();
                }
                self.record(job.ids[i], tag);
                self.written.fetch_or(bit(tag), Ordering::Relaxed);
            }
            _ if job.done[i] => {}
            other => {
                *job.load.entry(tag).or_default() -= 1;
                let why = match other {
                    Ok(Response::Full) => {
                        job.full += 1;
                        lock(&self.avoid).insert(tag, Instant::now());
                        "it is full".to_string()
                    }
                    Ok(r) => r.to_string(),
                    Err(e) => e,
                };
                tracing::info!(
                    "shard {} not stored on peer {tag}: {why}; placing it elsewhere",
                    job.ids[i]
                );
                if job.pending[i] == 0 && !self.send_put(job, i, tx) {
                    job.failed += 1;
                    job.last_error = why;
                }
            }
        }
    }
}

type PutAnswer = (usize, usize, Result<Response, String>);
type PutTx = smpsc::Sender<PutAnswer>;
type PutRx = smpsc::Receiver<PutAnswer>;

/// One chunk's shards on their way to peers.
struct PutJob {
    ids: Vec<ShardId>,
    bytes: Vec<Vec<u8>>,
    ranked: Vec<(usize, PeerId)>,
    /// Per shard, the peers tried.
    tried: Vec<u64>,
    /// Per shard, the peers whose answer is awaited.
    pending: Vec<u64>,
    /// Per shard, stored somewhere.
    done: Vec<bool>,
    /// Shards of this chunk per peer.
    load: HashMap<usize, usize>,
    outstanding: usize,
    stored: usize,
    failed: usize,
    full: usize,
    last_error: String,
}

impl PutJob {
    fn new(ids: Vec<ShardId>, bytes: Vec<Vec<u8>>, ranked: Vec<(usize, PeerId)>) -> PutJob {
        PutJob {
            tried: vec![0; ids.len()],
            pending: vec![0; ids.len()],
            done: vec![false; ids.len()],
            ids,
            bytes,
            ranked,
            load: HashMap::new(),
            outstanding: 0,
            stored: 0,
            failed: 0,
            full: 0,
            last_error: String::new(),
        }
    }
}

impl ShardStore for MeshStore {
    fn put(&self, id: &ShardId, bytes: &[u8]) -> Result<(), StoreError> {
        self.put_chunk(&[(*id, bytes)], 1)
    }

    fn replace(&self, id: &ShardId, bytes: &[u8]) -> Result<(), StoreError> {
        // A holder with a damaged copy would keep it (puts of a shard it has are
        // no-ops): store it on another peer.
        self.place(&[*id], &[0], &[bytes])
    }

    fn get(&self, id: &ShardId) -> Result<Vec<u8>, StoreError> {
        let live: HashMap<usize, PeerId> = self.client.live().into_iter().collect();
        if live.is_empty() {
            return match self.local.as_ref().map(|l| l.get(id)) {
                Some(Ok(b)) => Ok(b),
                _ => Err(Self::no_peers()),
            };
        }
        let mut tried = 0u64;
        let mut last = StoreError::Missing(*id);
        for round in 0..2 {
            let mask = if round == 0 {
                self.holders(id)
            } else {
                self.find(id, tried)
            };
            for (&tag, &peer) in &live {
                if mask & bit(tag) == 0 || tried & bit(tag) != 0 {
                    continue;
                }
                tried |= bit(tag);
                match self.fetch_from(tag, peer, id) {
                    Ok(b) => return Ok(b),
                    Err(e) => last = e,
                }
            }
        }
        if let Some(b) = self.local.as_ref().and_then(|l| l.get(id).ok()) {
            return Ok(b);
        }
        // Not lost while a peer that may hold it is only unreachable.
        let down = self.client.down();
        if matches!(last, StoreError::Missing(_)) && down > 0 {
            return Err(StoreError::Peer(format!(
                "shard {id} is on no reachable peer ({down} storage peers unreachable)"
            )));
        }
        Err(last)
    }

    fn delete(&self, id: &ShardId) -> Result<(), StoreError> {
        let holders = self.holders(id);
        let targets = self.client.live_in(if holders == 0 { !0 } else { holders });
        if let Some(l) = &self.local {
            l.delete(id)?;
        }
        for (tag, peer, r) in self.ask_all(&targets, || Request::Delete { ids: vec![*id] }) {
            match r {
                Ok(Response::Done) => self.forget(id, tag),
                Ok(other) => tracing::warn!("delete {id} on {peer}: {other}"),
                Err(e) => tracing::warn!("delete {id}: {e}"),
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        let (m, cv) = &self.inflight;
        let mut n = lock(m);
        while *n > 0 {
            n = cv.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        drop(n);
        let mask = self.written.swap(0, Ordering::Relaxed);
        let targets = self.client.live_in(mask);
        for (_, peer, r) in self.ask_all(&targets, || Request::Sync) {
            match r {
                Ok(Response::Done) => {}
                Ok(other) => {
                    return Err(StoreError::Peer(format!("sync on peer {peer}: {other}")));
                }
                Err(e) => return Err(StoreError::Peer(format!("sync: {e}"))),
            }
        }
        Ok(())
    }

    fn for_each(&self, f: &mut dyn FnMut(ShardInfo)) -> Result<(), StoreError> {
        let mut seen = std::collections::HashSet::new();
        if let Some(l) = &self.local {
            l.for_each(&mut |info| {
                if seen.insert(info.id) {
                    f(info)
                }
            })?;
        }
        for (tag, peer) in self.client.live() {
            self.inventory(tag, peer, &mut |info| {
                if seen.insert(info.id) {
                    f(info)
                }
            })?;
        }
        Ok(())
    }

    fn capacity(&self) -> Result<(u64, u64), StoreError> {
        let (mut total, mut avail) = (0, 0);
        for (_, _, r) in self.ask_all(&self.client.live(), || Request::Stat) {
            if let Ok(Response::Stat { used, capacity, .. }) = r {
                total += capacity;
                avail += capacity.saturating_sub(used);
            }
        }
        Ok((total, avail))
    }

    fn remote(&self) -> bool {
        true
    }

    fn holders_up(&self) -> u64 {
        self.client.live_mask()
    }

    fn release(&self, id: &ShardId, mask: u64) {
        let targets = self.client.live_in(mask);
        for (tag, peer, r) in self.ask_all(&targets, || Request::Delete { ids: vec![*id] }) {
            match r {
                Ok(Response::Done) => self.forget(id, tag),
                Ok(other) => tracing::warn!("dropping the moved copy of {id} on {peer}: {other}"),
                Err(e) => tracing::warn!("dropping the moved copy of {id}: {e}"),
            }
        }
    }

    fn local_bit(&self) -> u64 {
        if self.local.is_some() {
            bit(LOCAL_TAG)
        } else {
            0
        }
    }

    fn hedge_after(&self) -> Option<Duration> {
        // Three times a typical fetch: a peer that slow is probably stalled.
        let us = self
            .fetch_us
            .load(Ordering::Relaxed)
            .clamp(10_000, 2_000_000);
        Some(Duration::from_micros(us * 3))
    }

    fn survey(&self) -> Result<Survey, StoreError> {
        let asked = self.survey_ticket.fetch_add(1, Ordering::SeqCst);
        let _one = lock(&self.surveying);
        // A run that started after this call asked is as fresh as one of its own.
        if let Some((ticket, s)) = &*lock(&self.last_survey)
            && *ticket > asked
        {
            return Ok(s.clone());
        }
        let ticket = self.survey_ticket.fetch_add(1, Ordering::SeqCst);
        let s = self.run_survey()?;
        *lock(&self.last_survey) = Some((ticket, s.clone()));
        Ok(s)
    }

    fn placement(&self, ids: &[ShardId]) -> Option<Vec<u64>> {
        let live = self.client.live_mask() | self.local_bit();
        let loc = lock(&self.loc);
        Some(
            ids.iter()
                .map(|id| loc.get(id).copied().unwrap_or(0) & live)
                .collect(),
        )
    }

    fn place(&self, ids: &[ShardId], which: &[usize], bytes: &[&[u8]]) -> Result<(), StoreError> {
        let Some(key) = ids.first() else {
            return Ok(());
        };
        let ranked = self.ranked(key);
        if ranked.is_empty() {
            return Err(Self::no_peers());
        }
        let live_mask = ranked.iter().fold(0, |m, (t, _)| m | bit(*t));
        let mut job = PutJob::new(
            which.iter().map(|&i| ids[i]).collect(),
            bytes.iter().map(|b| b.to_vec()).collect(),
            ranked,
        );
        // Count what the chunk's other shards already put on each peer, and never
        // send a shard back to a peer that holds (or held a bad copy of) it.
        for m in self.placement(ids).unwrap_or_default() {
            for tag in 0..MAX_PEERS {
                if m & bit(tag) != 0 {
                    *job.load.entry(tag).or_default() += 1;
                }
            }
        }
        for (j, &i) in which.iter().enumerate() {
            job.tried[j] = self.holders(&ids[i]) & live_mask;
        }
        let (tx, rx) = smpsc::channel();
        for j in 0..which.len() {
            if !self.send_put(&mut job, j, &tx) {
                // Every live peer has it already (or refused): put it anywhere.
                job.tried[j] = 0;
                self.send_put(&mut job, j, &tx);
            }
        }
        self.drive(&mut job, &rx, &tx, which.len());
        if job.stored < which.len() {
            if job.full > 0 {
                return Err(StoreError::Full(PathBuf::from("the storage peers")));
            }
            return Err(StoreError::Peer(format!(
                "placed {} of {} shards: {}",
                job.stored,
                which.len(),
                job.last_error
            )));
        }
        // Shards moved off this host are now on peers: the local copies go.
        if let Some(l) = &self.local {
            for &i in which {
                if l.contains(&ids[i]) {
                    l.delete(&ids[i])?;
                    self.forget(&ids[i], LOCAL_TAG);
                }
            }
        }
        Ok(())
    }

    fn peers(&self) -> Option<Vec<PeerStatus>> {
        let table: Vec<PeerEntry> = lock(&self.client.shared.peers).list.clone();
        let live = self.client.live();
        let mut stats: HashMap<usize, (u64, u64, u64)> = HashMap::new();
        for (tag, _, r) in self.ask_all(&live, || Request::Stat) {
            if let Ok(Response::Stat {
                shards,
                used,
                capacity,
            }) = r
            {
                stats.insert(tag, (shards, used, capacity));
            }
        }
        Some(
            table
                .iter()
                .enumerate()
                .filter(|(_, p)| p.storage)
                .map(|(tag, p)| {
                    let (shards, bytes, capacity) = stats.get(&tag).copied().unwrap_or_default();
                    PeerStatus {
                        tag: tag as u32,
                        id: p.id.to_string(),
                        address: p.addrs.first().map(|a| a.to_string()).unwrap_or_default(),
                        reachable: stats.contains_key(&tag),
                        shards,
                        bytes,
                        capacity,
                    }
                })
                .collect(),
        )
    }

    fn wants_repair(&self, grace: Duration) -> bool {
        if self.unplaced.load(Ordering::Relaxed) {
            return true;
        }
        let gone = self.gone_mask(grace);
        gone & !self.repaired_mask.load(Ordering::Relaxed) != 0
    }

    fn repaired(&self) {
        self.unplaced.store(false, Ordering::Relaxed);
        // Peers gone now were repaired around; one that returns and goes again
        // counts anew.
        self.repaired_mask
            .store(self.gone_mask(Duration::ZERO), Ordering::Relaxed);
    }

    fn scrub(&self, progress: &dyn Fn(u64)) -> Result<Scrubbed, StoreError> {
        // Every known peer is settled first, so none is skipped for being slow
        // to connect; those the survey could not hear from are reported.
        let survey = self.survey()?;
        let mut out = Scrubbed {
            skipped: survey
                .unreachable
                .into_iter()
                .chain(survey.silent)
                .collect(),
            ..Default::default()
        };
        let mut checked = 0u64;
        let table = self.client.storage_peers();
        for (tag, entry) in table.iter().filter(|(t, _)| survey.answered & bit(*t) != 0) {
            let peer = entry.id;
            let mut after = None;
            loop {
                let why = match self.client.ask(peer, Request::Verify { after, max: 256 }) {
                    Ok(Response::Verified {
                        checked: c,
                        bad,
                        last,
                        more,
                    }) => {
                        checked += c as u64;
                        progress(checked);
                        if !bad.is_empty() {
                            tracing::warn!("scrub: peer {peer} holds {} corrupt shards", bad.len());
                            // The peer drops its bad copies; repair puts good ones back.
                            let _ = self.client.ask(peer, Request::Delete { ids: bad.clone() });
                            for id in &bad {
                                self.forget(id, *tag);
                            }
                            out.bad.extend(bad);
                        }
                        after = last;
                        if !more {
                            break;
                        }
                        continue;
                    }
                    Ok(other) => format!("unexpected answer: {other}"),
                    Err(e) => e,
                };
                tracing::warn!("scrub: peer {peer}: {why}");
                out.skipped.push(note(entry, format!("verify: {why}")));
                break;
            }
        }
        if !out.bad.is_empty() {
            self.unplaced.store(true, Ordering::Relaxed);
        }
        Ok(out)
    }

    fn put_chunk(&self, shards: &[(ShardId, &[u8])], need: usize) -> Result<(), StoreError> {
        let Some((key, _)) = shards.first() else {
            return Ok(());
        };
        let ranked = self.ranked(key);
        if ranked.is_empty() {
            return Err(Self::no_peers());
        }
        let n = shards.len();
        let mut job = PutJob::new(
            shards.iter().map(|s| s.0).collect(),
            shards.iter().map(|s| s.1.to_vec()).collect(),
            ranked,
        );
        let (tx, rx) = smpsc::channel();
        // Shard i starts on the i-th ranked peer (wrapping when there are fewer).
        for i in 0..n {
            let (tag, peer) = job.ranked[i % job.ranked.len()];
            self.send_put_to(&mut job, i, tag, peer, &tx);
        }
        let need = need.min(n);
        self.drive(&mut job, &rx, &tx, need);
        if job.stored < need {
            if job.full > 0 {
                return Err(StoreError::Full(PathBuf::from("the storage peers")));
            }
            let why = if job.last_error.is_empty() {
                "no answer in time"
            } else {
                &job.last_error
            };
            return Err(StoreError::Peer(format!(
                "only {} of {} shards stored: {why}",
                job.stored, n
            )));
        }
        if job.stored < n {
            // The rest land in the background; sync waits for them.
            let Some(this) = self.me.upgrade() else {
                return Ok(());
            };
            // Bounded: a slow peer makes writers wait here rather than pile up
            // chunks of unsent shards in memory.
            let (m, cv) = &self.inflight;
            let mut busy = lock(m);
            while *busy >= MAX_BACKGROUND_PUTS {
                busy = cv.wait(busy).unwrap_or_else(|p| p.into_inner());
            }
            *busy += 1;
            drop(busy);
            std::thread::Builder::new()
                .name("datamesh-put".into())
                .spawn(move || {
                    this.drive(&mut job, &rx, &tx, n);
                    if job.stored < n {
                        tracing::warn!(
                            "{} of {n} shards of a chunk stored; the rest are left to repair",
                            job.stored
                        );
                        this.unplaced.store(true, Ordering::Relaxed);
                    }
                    let (m, cv) = &this.inflight;
                    *lock(m) -= 1;
                    cv.notify_all();
                })
                .map_err(|e| StoreError::Peer(format!("starting a put thread: {e}")))?;
        }
        Ok(())
    }
}
