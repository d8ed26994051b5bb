//! The mesh: libp2p peers that hold shards. This module owns everything libp2p:
//! identities, the mesh key that gates every connection, join tokens, the shard
//! protocol ([`proto`]), the storage peer ([`node`]) and the home node's side
//! ([`client`]: a swarm actor with a cloneable handle, and [`MeshStore`], the
//! [`crate::store::ShardStore`] that places shards on peers).
//!
//! Privacy of the mesh: the Noise handshake's prologue is derived from the mesh
//! key, so a process without the key fails the handshake and never gets a stream.
//! (libp2p's pre-shared-key transport does the same at a third of the throughput.)

pub mod client;
mod gate;
pub mod keys;
pub mod member;
pub mod node;
pub mod proto;
pub mod root;
pub mod trust;

pub use client::{Admission, MeshClient, MeshStore, Timings};
pub use keys::{LiveKeys, MeshKeys};
/// Peer addresses, for the command line and the configuration to parse.
pub use libp2p::{Multiaddr, PeerId};
pub use trust::{JoinToken, Role, Roles};

use libp2p::identity::Keypair;
use libp2p::kad;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, noise, ping, request_response, tcp, yamux};
use std::fs;
use std::path::Path;
use std::time::Duration;

/// What identify announces: storage peers serve shards, home nodes only ask.
pub const AGENT_NODE: &str = concat!("datamesh-node/", env!("CARGO_PKG_VERSION"));
pub const AGENT_HOME: &str = concat!("datamesh-home/", env!("CARGO_PKG_VERSION"));
const KAD_PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/datamesh/kad/1");
/// How long one shard request may take before the peer counts as failing it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests in flight on one connection; more wait for a free stream.
pub const STREAMS_PER_PEER: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Bad(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> NetError + '_ {
    move |source| NetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// 32 random bytes shared by every member of one mesh.
#[derive(Clone, PartialEq, Eq)]
pub struct MeshKey([u8; 32]);

/// Never the key: a short fingerprint of it.
impl std::fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = blake3::derive_key("datamesh 2026 mesh key id", &self.0);
        write!(f, "MeshKey({})", hex::encode(&id[..4]))
    }
}

impl MeshKey {
    pub fn generate() -> MeshKey {
        MeshKey(rand::random())
    }

    /// Reads the key at `path`; with `create`, makes one there if there is none.
    pub fn load(path: &Path, create: bool) -> Result<MeshKey, NetError> {
        match fs::read(path) {
            Ok(b) => b
                .try_into()
                .map(MeshKey)
                .map_err(|_| NetError::Bad(format!("{}: a mesh key is 32 bytes", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let key = MeshKey::generate();
                key.save(path)?;
                Ok(key)
            }
            Err(e) => Err(NetError::Io {
                path: path.to_path_buf(),
                source: e,
            }),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), NetError> {
        write_secret(path, &self.0)
    }

    /// The key a recovery kit carries.
    pub fn from_bytes(b: [u8; 32]) -> MeshKey {
        MeshKey(b)
    }

    /// The key itself (for the recovery kit).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The Noise prologue: both ends of a handshake must have the same one.
    fn prologue(&self) -> Vec<u8> {
        blake3::derive_key("datamesh 2026 mesh noise prologue", &self.0).to_vec()
    }
}

/// The innermost cause of a libp2p error: its outer layers ("Handshake
/// failed", "Transport error") say where, not why.
pub(crate) fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), NetError> {
    crate::util::write_secret(path, bytes).map_err(|(path, source)| NetError::Io { path, source })
}

/// This process's libp2p identity, kept at `path` so its peer id is stable.
pub fn load_identity(path: &Path) -> Result<Keypair, NetError> {
    match fs::read(path) {
        Ok(b) => Keypair::from_protobuf_encoding(&b)
            .map_err(|e| NetError::Bad(format!("{}: not a peer key: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let kp = Keypair::generate_ed25519();
            let bytes = kp
                .to_protobuf_encoding()
                .map_err(|e| NetError::Bad(e.to_string()))?;
            write_secret(path, &bytes)?;
            Ok(kp)
        }
        Err(e) => Err(NetError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// The peer id at the end of an address (`…/p2p/ID`), if any.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

/// The IP of an address, if it has one.
fn ip_of(a: &Multiaddr) -> Option<std::net::IpAddr> {
    a.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => Some(ip.into()),
        libp2p::multiaddr::Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}

/// `0.0.0.0` / `::`: every interface.
pub fn is_unspecified(a: &Multiaddr) -> bool {
    ip_of(a).is_some_and(|ip| ip.is_unspecified())
}

fn is_loopback(a: &Multiaddr) -> bool {
    ip_of(a).is_some_and(|ip| ip.is_loopback())
}

/// Puts what a storage peer says it listens on (identify) in the DHT's
/// table in place of what was known. Kademlia keeps every address it ever
/// heard and a lookup takes each answerer's list whole, the last answer
/// winning: a peer back on a new port stays unfound while any peer still
/// answers with only the old one. Identify is the peer's own word, so it
/// replaces.
fn learn_listen_addrs(
    kad: &mut kad::Behaviour<kad::store::MemoryStore>,
    peer: &PeerId,
    addrs: &[Multiaddr],
) {
    let usable: Vec<&Multiaddr> = addrs.iter().filter(|a| !is_unspecified(a)).collect();
    if usable.is_empty() {
        return;
    }
    let stale = kad.kbucket(*peer).and_then(|bucket| {
        bucket
            .iter()
            .find(|e| e.node.key.preimage() == peer)
            .map(|e| {
                e.node
                    .value
                    .iter()
                    .any(|a| !usable.iter().any(|u| bare_eq(u, a)))
            })
    });
    if stale == Some(true) {
        kad.remove_peer(peer);
    }
    for a in usable {
        kad.add_address(peer, a.clone());
    }
}

/// Two addresses equal once a trailing `/p2p/ID` is dropped.
fn bare_eq(a: &Multiaddr, b: &Multiaddr) -> bool {
    let strip = |m: &Multiaddr| -> Multiaddr {
        m.iter()
            .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
            .collect()
    };
    strip(a) == strip(b)
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    /// First, so a connection over the limits is refused before the others
    /// see it.
    limits: libp2p::connection_limits::Behaviour,
    shard: request_response::Behaviour<proto::WireCodec>,
    meta: request_response::Behaviour<member::MetaCodec>,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// A swarm on TCP + Noise (prologue from the mesh key both ends name: see
/// [`keys`]) + Yamux.
fn build_swarm(
    identity: Keypair,
    keys: &LiveKeys,
    serve: bool,
) -> Result<libp2p::Swarm<Behaviour>, NetError> {
    let ring = keys.clone();
    let bad = |e: &dyn std::fmt::Display| NetError::Bad(format!("starting libp2p: {e}"));
    let swarm = libp2p::SwarmBuilder::with_existing_identity(identity)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            move |kp: &Keypair| Ok::<_, noise::Error>(keys::MeshSecurity::new(kp, ring)),
            yamux::Config::default,
        )
        .map_err(|e| bad(&e))?
        .with_behaviour(|kp| {
            let id = kp.public().to_peer_id();
            let support = if serve {
                request_response::ProtocolSupport::Full
            } else {
                request_response::ProtocolSupport::Outbound
            };
            let rr = request_response::Config::default()
                .with_request_timeout(REQUEST_TIMEOUT)
                .with_max_concurrent_streams(STREAMS_PER_PEER);
            let mut kad = kad::Behaviour::with_config(
                id,
                kad::store::MemoryStore::new(id),
                kad::Config::new(KAD_PROTOCOL),
            );
            kad.set_mode(Some(if serve {
                kad::Mode::Server
            } else {
                kad::Mode::Client
            }));
            // One connection per peer is the norm (two while both dial at once);
            // a mesh of hundreds of peers fits under the total.
            let limits = libp2p::connection_limits::ConnectionLimits::default()
                .with_max_established_per_peer(Some(4))
                .with_max_pending_incoming(Some(64))
                .with_max_established_incoming(Some(512))
                .with_max_established(Some(1024));
            Behaviour {
                limits: libp2p::connection_limits::Behaviour::new(limits),
                shard: request_response::Behaviour::new([(proto::PROTOCOL, support)], rr.clone()),
                // Homes answer members, members ask homes; storage peers neither.
                meta: request_response::Behaviour::new(
                    [(
                        member::PROTOCOL,
                        if serve {
                            request_response::ProtocolSupport::Outbound
                        } else {
                            request_response::ProtocolSupport::Full
                        },
                    )],
                    request_response::Config::default()
                        .with_request_timeout(member::ANSWER_WAIT)
                        .with_max_concurrent_streams(STREAMS_PER_PEER),
                ),
                kad,
                identify: identify::Behaviour::new(
                    identify::Config::new("/datamesh/id/1".into(), kp.public())
                        .with_agent_version(if serve { AGENT_NODE } else { AGENT_HOME }.into()),
                ),
                ping: ping::Behaviour::new(ping::Config::new()),
            }
        })
        .map_err(|e| bad(&e))?
        .with_swarm_config(|c| {
            // Each request opens a substream. V1Lazy sends the request with
            // the protocol proposal instead of waiting a round trip for its
            // acceptance (every substream we open names one protocol): a
            // call costs one round trip, not two.
            c.with_idle_connection_timeout(Duration::from_secs(3600))
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        })
        .build();
    Ok(swarm)
}
