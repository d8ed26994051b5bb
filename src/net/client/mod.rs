//! The home node's side of the mesh.
//!
//! [`MeshClient`] runs the swarm as an actor on its own small tokio runtime; the
//! rest of the program holds a cloneable handle and sends it requests, each with
//! a callback for the answer. [`MeshStore`] is the [`ShardStore`] over it: it
//! places the shards of a chunk on distinct peers by rendezvous hashing, keeps a
//! map of which peer holds which shard, and rides over dead or slow peers.
//!
//! The types live here; their code by concern: `handle` (the client handle),
//! `actor` (the swarm task), `peers` (the peer table and the peers file),
//! `store` (where shards are, fetches, the `ShardStore` impl), `put` (placing a
//! chunk's shards, stragglers, full peers), `survey` (inventories and scrub).

use super::proto::{MAX_IDS, Request, Response};
use super::{BehaviourEvent, LiveKeys, MeshKeys, NetError, build_swarm, is_unspecified, peer_of};
use crate::chunk::ShardId;
use crate::store::{
    HolderIndex, HolderKey, Holders, LocalStore, PeerNote, PeerStatus, Scrubbed, ShardInfo,
    ShardStore, StoreError, Survey, holder_key,
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

use crate::util::lock;

mod actor;
#[cfg(test)]
mod fake;
mod handle;
mod peers;
mod put;
mod store;
mod survey;
#[cfg(test)]
mod tests;

/// The most peers a home keeps in its table (tags are never reused): not a
/// size for a mesh, a bound on what a key holder making up new identities
/// can make the home remember.
const TABLE_LIMIT: usize = 1 << 20;
/// How long a peer caught lying about a put is passed over.
const DISTRUST_FOR: Duration = Duration::from_secs(3600);
/// Chunks whose last shards may still be landing after the write returned.
const MAX_BACKGROUND_PUTS: usize = 16;
/// How long a caller waits for any one answer (the request itself times out
/// earlier, inside libp2p).
const ANSWER_WAIT: Duration = Duration::from_secs(40);

/// How long the store waits for peers before it acts; the defaults are for
/// real networks, tests shorten them.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    /// How long a peer that refused a put for want of room, or was too slow
    /// to answer one, is passed over.
    pub avoid_for: Duration,
    /// How long a put waits for a shard before sending it to another peer too.
    pub straggler_wait: Duration,
    /// How long a put waits for answers at all.
    pub answer_wait: Duration,
    /// A survey counts a peer unreachable when no connection to it comes up
    /// within this long (a dial to a vanished host can hang for minutes).
    pub survey_dial_wait: Duration,
    /// A survey counts a connected peer as not answering when one page of its
    /// inventory takes longer than this.
    pub survey_page_wait: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            avoid_for: Duration::from_secs(60),
            straggler_wait: Duration::from_secs(5),
            answer_wait: ANSWER_WAIT,
            survey_dial_wait: Duration::from_secs(10),
            survey_page_wait: Duration::from_secs(20),
        }
    }
}

/// A storage peer's root record (`None`: it keeps none), or why it did not
/// tell.
pub type PeerRoot = Result<Option<Vec<u8>>, String>;

type Reply = Box<dyn FnOnce(Result<Response, String>) + Send>;
type MetaReply = Box<dyn FnOnce(Result<Vec<u8>, MetaError>) + Send>;

/// Why a member's call to its home got no answer.
#[derive(Debug)]
pub struct MetaError {
    /// The request never left this host (the home could not be dialled):
    /// sending it again runs it at most once.
    pub unsent: bool,
    text: String,
}

impl MetaError {
    fn lost(text: impl Into<String>) -> MetaError {
        MetaError {
            unsent: false,
            text: text.into(),
        }
    }
}

impl std::fmt::Display for MetaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Answers a member's metadata request (its authenticated peer id, the
/// request's bytes) with the answer's bytes; runs on a blocking thread.
pub type MetaHandler = Arc<dyn Fn(PeerId, Vec<u8>) -> Vec<u8> + Send + Sync>;

/// Metadata requests answered at once; past it a member is told the home is
/// busy ([`super::member::BUSY_ANSWER`]).
const MAX_META_QUEUED: usize = 512;

enum ToActor {
    Request {
        peer: PeerId,
        req: Request,
        reply: Reply,
    },
    /// Dial every known peer that is not connected, now.
    Redial,
    /// A metadata request to the home (a member's).
    Meta {
        peer: PeerId,
        bytes: Vec<u8>,
        reply: MetaReply,
    },
    /// The answer to a member's metadata request (the home's).
    MetaAnswer {
        channel: request_response::ResponseChannel<Vec<u8>>,
        bytes: Vec<u8>,
    },
    Listen {
        addr: Multiaddr,
        reply: smpsc::Sender<Result<(), String>>,
    },
    /// Tell the storage peers the member list now.
    PushMembers,
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
    /// The home admitted it: shards may be placed on it and it is counted.
    admitted: bool,
    /// A `Hello` to it is in flight.
    admitting: bool,
    /// What it said it can hold (its last `Stat`); 0 until it answers one.
    capacity: u64,
}

impl PeerEntry {
    /// A storage peer this home uses.
    fn usable(&self) -> bool {
        self.storage && self.admitted
    }
}

#[derive(Default)]
struct PeerTable {
    /// Index = tag. Only storage peers get a tag.
    list: Vec<PeerEntry>,
    by_id: HashMap<PeerId, usize>,
    /// `None`: no admission (every storage peer is used); else whom the home
    /// admitted and retired.
    admitted: Option<super::trust::Admitted>,
}

/// Where a home keeps whom it admitted, the invitations it handed out, and
/// its mesh key ring (re-read when a command rotates it).
pub struct Admission {
    pub admitted: PathBuf,
    pub invites: PathBuf,
    pub keys: PathBuf,
}

struct Shared {
    peers: Mutex<PeerTable>,
    /// Where the addresses of the storage peers seen are remembered.
    remember: Option<PathBuf>,
    /// The first Kademlia bootstrap has finished: the peers it found are known.
    kad_settled: AtomicBool,
    admission: Option<Admission>,
    /// When the admitted file was last read (it is re-read when it changes).
    admitted_read: Mutex<Option<SystemTime>>,
    /// The mesh key ring the transport uses.
    keys: LiveKeys,
    /// When the home's ring file was last read.
    keys_read: Mutex<Option<SystemTime>>,
    /// Answers members' metadata requests (set by a daemon that listens).
    meta_handler: Mutex<Option<MetaHandler>>,
    meta_queued: std::sync::atomic::AtomicUsize,
    /// The member devices storage peers are told of (`None`: none are told).
    members: Mutex<Option<Vec<PeerId>>>,
    /// The volume's newest root record this home made: handed to each
    /// storage peer as it connects (one that was down through a recovery
    /// learns its new home so).
    root: Mutex<Option<Vec<u8>>>,
}

/// A handle on the swarm actor; cheap to clone.
#[derive(Clone)]
pub struct MeshClient {
    tx: mpsc::UnboundedSender<ToActor>,
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

/// Rendezvous (highest-random-weight) score of a peer for a placement key.
fn score(key: &ShardId, peer: &PeerId) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&key.0);
    h.update(&peer.to_bytes());
    u64::from_be_bytes(h.finalize().as_bytes()[..8].try_into().unwrap())
}

/// Weighted rendezvous: `weight / -ln(u)`, u the score as a fraction in
/// (0, 1). Equal weights order peers as their plain scores do.
fn weighted_score(key: &ShardId, peer: &PeerId, weight: f64) -> f64 {
    let u = (score(key, peer) as f64 + 0.5) / (u64::MAX as f64 + 1.0);
    weight / -u.ln()
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
    /// Which peers hold each shard.
    loc: Mutex<HolderIndex>,
    /// When each peer last refused a put for want of room, or was too slow
    /// to answer one.
    avoid: Mutex<HashMap<usize, Instant>>,
    /// While a survey runs: the shards stored meanwhile (by the first 12
    /// bytes of their ids, as the holder index keys them).
    touched: Mutex<Option<std::collections::HashSet<HolderKey>>>,
    /// Chunks whose last shards are still landing in the background.
    inflight: (Mutex<usize>, Condvar),
    /// Peers that took puts since the last sync.
    written: Mutex<Holders>,
    /// Groups concurrent syncs (see `sync`).
    syncs: crate::util::SyncGroup,
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
    repaired: Mutex<Holders>,
    /// One survey at a time; callers that ask meanwhile may share its result.
    surveying: Mutex<()>,
    /// Numbers survey calls and runs, so a caller knows whether a run started
    /// after it asked.
    survey_ticket: AtomicU64,
    /// The last survey run: its ticket and what it heard.
    last_survey: Mutex<Option<(u64, Survey)>>,
    /// Peers caught acknowledging shards they did not store, and when: no
    /// shards go to them for `DISTRUST_FOR` while there are others.
    distrusted: Mutex<HashMap<usize, Instant>>,
    t: Timings,
}

type PutAnswer = (usize, usize, Result<Response, String>);
type PutTx = smpsc::Sender<PutAnswer>;
type PutRx = smpsc::Receiver<PutAnswer>;

/// One chunk's shards on their way to peers.
struct PutJob {
    ids: Vec<ShardId>,
    bytes: Vec<bytes::Bytes>,
    ranked: Vec<(usize, PeerId)>,
    /// Per shard, the peers tried.
    tried: Vec<Holders>,
    /// Per shard, the peers whose answer is awaited.
    pending: Vec<Holders>,
    /// Per shard, stored somewhere.
    done: Vec<bool>,
    /// Per shard, the peers that said they stored it.
    stored_on: Vec<Holders>,
    /// Shards of this chunk per peer.
    load: HashMap<usize, usize>,
    outstanding: usize,
    stored: usize,
    failed: usize,
    full: usize,
    last_error: String,
}
