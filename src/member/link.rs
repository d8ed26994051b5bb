//! How a member device reaches its home node: its `HOME/member` file, the
//! mesh client it dials the home and the storage peers with, and one call
//! of `/datamesh/meta/1` (asked again while the home says it is busy).
//! Shared by the member's commands ([`super::client`]) and its mount
//! ([`super::namespace`]).

use super::wire::{MetaCall, MetaReply, NsCall, VolumeInfo, decode_answer, encode_request};
use crate::chunk::{ChunkRef, VolumeKey};
use crate::error::Kind;
use crate::home::Home;
use crate::net::{LiveKeys, MeshClient, MeshKeys, MeshStore, Multiaddr, PeerId};
use crate::store::ShardStore;
use crate::util::lock;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a namespace operation waits for the home node.
pub const HOME_WAIT: Duration = crate::net::member::ANSWER_WAIT;
/// How long calls the home could not be dialled for are tried again,
/// from when it was first missed: a home restarting is answering again by
/// then, and once a home has been down this long each call fails at once
/// (until one is answered), not after this long each: a copy into a mount
/// whose home died ends in seconds, not after a wait per chunk.
const REDIAL_WAIT: Duration = Duration::from_secs(3);

/// When each home this process calls was first missed in its present
/// outage (none: it answered last).
fn missed() -> &'static Mutex<HashMap<PeerId, Instant>> {
    static MISSED: OnceLock<Mutex<HashMap<PeerId, Instant>>> = OnceLock::new();
    MISSED.get_or_init(Default::default)
}

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

pub fn bad(e: impl std::fmt::Display) -> Error {
    Error::Remote(Kind::Other, e.to_string())
}

/// Whether `home` went unanswered at this process's last call to it (it
/// is down or restarting): nothing waits on batches to it then.
pub fn missing(home: PeerId) -> bool {
    lock(missed()).contains_key(&home)
}

/// A member's call to its home node, asked again while the home answers
/// that this device is past one of its bounds (`Kind::Busy`: the call ran
/// nothing there), with pauses from 5 ms doubling to 100 ms, until `wait`
/// is spent (docs/DESIGN.md, "What one member can make the home hold");
/// and, for [`REDIAL_WAIT`] at most, while the home cannot be dialled (a
/// home restarting: the call never left), or a call that may be repeated
/// ([`MetaCall::may_repeat`]) found no answer.
pub fn call_home(
    client: &MeshClient,
    home: PeerId,
    call: MetaCall,
    wait: Duration,
) -> Result<MetaReply> {
    // Counted once per call, however often a busy home is asked again: the
    // round trips a member pays per operation (`home_calls`).
    let timer = crate::metrics::home_call(call.kind());
    // What each round trip was for, when asked (RUST_LOG=datamesh::home_calls=trace).
    if tracing::enabled!(target: "datamesh::home_calls", tracing::Level::TRACE) {
        // A batch as the kinds of its calls (held ones as `held:kind`);
        // other calls as they are, cut at 1 000 characters.
        let what = match &call {
            MetaCall::Ns(NsCall::Batch(calls)) => {
                let kinds: Vec<String> = calls
                    .iter()
                    .map(|c| match c {
                        NsCall::Held { call, .. } => format!("held:{}", call.kind()),
                        c => c.kind().to_string(),
                    })
                    .collect();
                format!("Batch[{}] {}", calls.len(), kinds.join(" "))
            }
            _ => format!("{call:?}"),
        };
        let mut end = what.len().min(1000);
        while !what.is_char_boundary(end) {
            end -= 1;
        }
        tracing::trace!(target: "datamesh::home_calls", "{}", &what[..end]);
    }
    // A call that only reads (or releases) may be asked again if its
    // connection closed before the answer (a home killed as it was sent).
    let may_repeat = call.may_repeat();
    let bytes = encode_request(call);
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    let answer = loop {
        let answer = match client.meta_call(home, bytes.clone(), wait) {
            Ok(a) => {
                lock(missed()).remove(&home);
                a
            }
            Err(e) if e.unsent || may_repeat => {
                let first = *lock(missed()).entry(home).or_insert(start);
                let redial =
                    first.elapsed() + pause < REDIAL_WAIT && start.elapsed() + pause < wait;
                if !redial {
                    break Err(bad(e));
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
                continue;
            }
            Err(e) => break Err(bad(e)),
        };
        match decode_answer(&answer) {
            Err(e) if e.kind() == Kind::Busy && start.elapsed() + pause < wait => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => break other,
        }
    };
    timer.done(answer.is_err());
    answer
}

/// A member device's way to its volume: the home node's id, this device's
/// volume key, and the mesh (the swarm and the storage peers).
pub struct Reach {
    pub file: MemberFile,
    pub home: PeerId,
    pub key: VolumeKey,
    pub store: Arc<MeshStore>,
    pub keys: KeyRing,
}

/// A member's mesh key ring: the one its transport uses, where it is kept,
/// and the device key a rotated one comes sealed to.
#[derive(Clone)]
pub struct KeyRing {
    live: LiveKeys,
    path: std::path::PathBuf,
    device: std::path::PathBuf,
}

impl KeyRing {
    /// Asks the home for a ring newer than this device's, and takes it up
    /// (docs/DESIGN.md, "Mesh key rotation"); whether there was one.
    pub fn refresh(&self, client: &MeshClient, home: PeerId) -> Result<bool> {
        let have = self.live.generation();
        let sealed = match call_home(client, home, MetaCall::MeshKeys { have }, HOME_WAIT)? {
            MetaReply::MeshKeys(None) => return Ok(false),
            MetaReply::MeshKeys(Some(sealed)) => sealed,
            other => return Err(bad(format!("the home node answered {other:?}"))),
        };
        let device = std::fs::read(&self.device)?;
        let device: [u8; 32] = device
            .try_into()
            .map_err(|_| bad(format!("{}: not a device key", self.device.display())))?;
        let device = crate::chunk::DeviceKey::from_bytes(&device).map_err(bad)?;
        let ring = crate::chunk::open_sealed(&device, &sealed)
            .map_err(|_| bad("the home's mesh key ring is not sealed to this device"))?;
        let ring = MeshKeys::decode(&ring, "the home's mesh key ring").map_err(bad)?;
        let generation = ring.generation();
        if generation <= have {
            return Ok(false);
        }
        ring.save(&self.path).map_err(bad)?;
        self.live.take_newer(ring);
        tracing::info!("took up the rotated mesh key (generation {generation})");
        Ok(true)
    }
}

pub fn reach(home: &Home) -> Result<Reach> {
    let paths = home.paths();
    let file: MemberFile = serde_json::from_slice(&std::fs::read(paths.member())?)
        .map_err(|e| bad(format!("{}: {e}", paths.member().display())))?;
    let home_id: PeerId = file.home.parse().map_err(bad)?;
    let key = home.volume_key().map_err(bad)?;
    let keys = KeyRing {
        live: LiveKeys::new(MeshKeys::load(&paths.mesh_key(), false).map_err(bad)?),
        path: paths.mesh_key(),
        device: paths.device_key(),
    };
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
        MeshClient::start(identity, &keys.live, boot, Some(paths.peers()), None).map_err(bad)?;
    // A device that was off through a rotation reaches the home under the
    // older key (the home allows it by id) and takes up the new one now.
    if let Err(e) = keys.refresh(&client, home_id) {
        tracing::warn!("asking the home node for the mesh key: {e}");
    }
    Ok(Reach {
        file,
        home: home_id,
        key,
        store: MeshStore::new(client, None),
        keys,
    })
}

/// Takes the home's hints of where `chunk`'s shards are.
pub fn learn(store: &dyn ShardStore, chunk: &ChunkRef, hints: &[Vec<String>]) {
    for (id, peers) in chunk.shard_ids().iter().zip(hints) {
        store.learn(id, peers);
    }
}
