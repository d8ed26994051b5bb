//! The mesh key ring and the handshake that uses it (docs/DESIGN.md, "Mesh
//! key rotation"): which keys a host holds, which it may be reached under and
//! by whom, how a ring is kept on disk and sent, and [`MeshSecurity`], the
//! transport's security upgrade (Noise, its prologue from the key the two
//! ends agreed on by name).
//!
//! A rotation adds a key that only the home (and a recovery kit) can derive;
//! a connection under an older key is kept only with a peer the last
//! rotation allowed, so a revoked device fails every handshake, under any
//! peer id, on every host that holds the newest ring.

use super::{MeshKey, NetError};
use futures_util::future::BoxFuture;
use libp2p::PeerId;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::identity::Keypair;
use libp2p::noise;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::{Arc, RwLock};

/// Keys a ring keeps (older ones reach nothing any more).
pub const MAX_KEYS: usize = 8;
/// Peer ids a ring allows at most (the home, its peers and its members).
pub const MAX_ALLOWED: usize = 16_384;
/// Generations `recover` tries past the key its kit carries.
pub const RECOVERY_WINDOW: u64 = 64;
const MAGIC: &[u8] = b"dmmesh2\n";
const RING_VERSION: u8 = 1;
/// What binaries from before rotation name the handshake (with the newest key).
const LEGACY_NAME: &str = "/noise";

#[derive(Serialize, Deserialize)]
struct RingFile {
    version: u8,
    generation: u64,
    /// Newest first, each with its generation.
    keys: Vec<(u64, [u8; 32])>,
    allowed: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Eq)]
struct Held {
    generation: u64,
    key: MeshKey,
    /// The protocol name a handshake under this key is negotiated by.
    name: String,
}

impl Held {
    fn new(generation: u64, key: MeshKey) -> Held {
        let id = blake3::derive_key("datamesh 2026 mesh key id", key.as_bytes());
        Held {
            generation,
            name: format!("/datamesh/noise/1/{}", hex::encode(&id[..8])),
            key,
        }
    }
}

/// A host's mesh keys: the newest, the older ones still held, and who may
/// still use an older one.
#[derive(Clone, PartialEq, Eq)]
pub struct MeshKeys {
    generation: u64,
    /// Newest first; never empty.
    keys: Vec<Held>,
    /// The peers the last rotation allowed to use an older key.
    allowed: Vec<PeerId>,
    /// `recover` only: the rotation seed, to take up the generation the
    /// peers answer to (see [`MeshKeys::recovering`]).
    seed: Option<[u8; 32]>,
}

impl std::fmt::Debug for MeshKeys {
    /// Never the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshKeys")
            .field("generation", &self.generation)
            .field("keys", &self.keys.len())
            .field("allowed", &self.allowed.len())
            .finish_non_exhaustive()
    }
}

/// Generation `g`'s key, from the rotation seed (which only the authority
/// key's holders can make).
fn derive(seed: &[u8; 32], generation: u64) -> MeshKey {
    let mut material = seed.to_vec();
    material.extend_from_slice(&generation.to_le_bytes());
    MeshKey(blake3::derive_key("datamesh 2026 mesh key", &material))
}

impl MeshKeys {
    /// A ring of one key, at generation 0 (a mesh that never rotated, or a
    /// key from a join token, which the home's push then dates).
    pub fn single(key: MeshKey) -> MeshKeys {
        MeshKeys {
            generation: 0,
            keys: vec![Held::new(0, key)],
            allowed: Vec::new(),
            seed: None,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The newest key: what tokens and kits carry.
    pub fn current(&self) -> &MeshKey {
        &self.newest().key
    }

    /// The key of the ring's generation (the first, but in a recovering
    /// ring, whose later ones are guesses).
    fn newest(&self) -> &Held {
        self.keys
            .iter()
            .find(|h| h.generation == self.generation)
            .unwrap_or(&self.keys[0])
    }

    pub fn allowed(&self) -> &[PeerId] {
        &self.allowed
    }

    /// The ring after one rotation: a new key of the next generation, which
    /// only holders of `seed` could make, and `allowed` as the peers that
    /// may still use the older keys.
    pub fn rotate(&self, seed: &[u8; 32], allowed: Vec<PeerId>) -> Result<MeshKeys, NetError> {
        let generation = self
            .generation
            .checked_add(1)
            .ok_or_else(|| NetError::Bad("the mesh key cannot be rotated again".into()))?;
        if allowed.len() > MAX_ALLOWED {
            return Err(NetError::Bad(format!(
                "a mesh key ring allows at most {MAX_ALLOWED} peers and members; this mesh has {}",
                allowed.len()
            )));
        }
        let mut keys = vec![Held::new(generation, derive(seed, generation))];
        keys.extend(self.keys.iter().take(MAX_KEYS - 1).cloned());
        Ok(MeshKeys {
            generation,
            keys,
            allowed,
            seed: None,
        })
    }

    /// `recover`'s ring: the kit's key and the keys of the next
    /// [`RECOVERY_WINDOW`] generations, so that it reaches peers that took
    /// rotations after the kit was made; the first handshake under a later
    /// generation makes the ring that generation's.
    pub fn recovering(kit_key: MeshKey, seed: [u8; 32]) -> MeshKeys {
        // Newest first: a peer takes the first name it holds, and takes an
        // older key than its newest only from the peers it allows.
        let mut keys: Vec<Held> = (1..=RECOVERY_WINDOW)
            .rev()
            .map(|g| Held::new(g, derive(&seed, g)))
            .collect();
        // The kit's key is one of them when the kit was made after a rotation.
        let generation = match keys.iter().find(|h| h.key == kit_key) {
            Some(h) => h.generation,
            None => {
                keys.push(Held::new(0, kit_key));
                0
            }
        };
        MeshKeys {
            generation,
            keys,
            allowed: Vec::new(),
            seed: Some(seed),
        }
    }

    /// The ring of generation `g`, for a recovering home whose handshake
    /// under that generation's key succeeded.
    fn adopt(&self, generation: u64) -> Option<MeshKeys> {
        let seed = self.seed.as_ref()?;
        if generation <= self.generation {
            return None;
        }
        let keys = (generation.saturating_sub(MAX_KEYS as u64 - 1).max(1)..=generation)
            .rev()
            .map(|g| Held::new(g, derive(seed, g)))
            .collect();
        Some(MeshKeys {
            generation,
            keys,
            allowed: Vec::new(),
            seed: None,
        })
    }

    /// A rotating ring written as a member receives it: keys only.
    pub fn without_allowed(&self) -> MeshKeys {
        MeshKeys {
            allowed: Vec::new(),
            ..self.clone()
        }
    }

    /// The ring as kept on disk and sent: 32 bytes for a ring that never
    /// rotated (what older datamesh reads), else the versioned ring.
    pub fn encode(&self) -> Vec<u8> {
        // A recovering ring's later generations are guesses, not keys held.
        let held = || self.keys.iter().filter(|h| h.generation <= self.generation);
        if self.generation == 0 && held().count() == 1 && self.allowed.is_empty() {
            return self.newest().key.as_bytes().to_vec();
        }
        let file = RingFile {
            version: RING_VERSION,
            generation: self.generation,
            keys: held()
                .take(MAX_KEYS)
                .map(|h| (h.generation, *h.key.as_bytes()))
                .collect(),
            allowed: self.allowed.iter().map(|p| p.to_bytes()).collect(),
        };
        let mut out = MAGIC.to_vec();
        out.extend(postcard::to_allocvec(&file).expect("rings serialize"));
        out
    }

    /// Reads what [`MeshKeys::encode`] wrote; `what` names it in errors.
    pub fn decode(bytes: &[u8], what: &str) -> Result<MeshKeys, NetError> {
        let bad = |why: &str| NetError::Bad(format!("{what}: {why}"));
        if let Ok(key) = <[u8; 32]>::try_from(bytes) {
            return Ok(MeshKeys::single(MeshKey(key)));
        }
        let body = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| bad("a mesh key is 32 bytes, or a key ring"))?;
        let (file, rest): (RingFile, _) =
            postcard::take_from_bytes(body).map_err(|_| bad("a damaged mesh key ring"))?;
        if !rest.is_empty() || file.version != RING_VERSION {
            return Err(bad("a damaged mesh key ring, or one from a newer datamesh"));
        }
        if file.keys.is_empty() || file.keys.len() > MAX_KEYS || file.allowed.len() > MAX_ALLOWED {
            return Err(bad("a mesh key ring with too many or no keys or peers"));
        }
        if file.keys[0].0 != file.generation || file.keys.windows(2).any(|w| w[0].0 <= w[1].0) {
            return Err(bad("a mesh key ring out of order"));
        }
        let allowed = file
            .allowed
            .iter()
            .map(|b| PeerId::from_bytes(b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad("a mesh key ring naming a bad peer id"))?;
        Ok(MeshKeys {
            generation: file.generation,
            keys: file
                .keys
                .into_iter()
                .map(|(g, k)| Held::new(g, MeshKey(k)))
                .collect(),
            allowed,
            seed: None,
        })
    }

    /// The ring at `path`; with `create`, a new single key is made there
    /// when there is none.
    pub fn load(path: &Path, create: bool) -> Result<MeshKeys, NetError> {
        match std::fs::read(path) {
            Ok(b) => MeshKeys::decode(&b, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let keys = MeshKeys::single(MeshKey::generate());
                keys.save(path)?;
                Ok(keys)
            }
            Err(source) => Err(NetError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), NetError> {
        super::write_secret(path, &self.encode())
    }

    /// Which held key a protocol name means.
    fn by_name(&self, name: &str) -> Option<&Held> {
        if name == LEGACY_NAME {
            return Some(self.newest());
        }
        self.keys.iter().find(|h| h.name == name)
    }

    /// Whether a connection under generation `g`'s key may be kept with
    /// `peer`: the newest key with anyone who holds it, an older one only
    /// with the peers the last rotation allowed (and a recovering home with
    /// the peers it dials: they choose the key).
    fn may_use(&self, generation: u64, peer: &PeerId) -> bool {
        generation >= self.generation || self.allowed.contains(peer) || self.seed.is_some()
    }
}

/// The ring a transport uses, shared with whoever rotates it: a swap takes
/// effect at the next handshake, and connections already made stay.
#[derive(Clone, Debug)]
pub struct LiveKeys(Arc<RwLock<MeshKeys>>);

impl LiveKeys {
    pub fn new(keys: MeshKeys) -> LiveKeys {
        LiveKeys(Arc::new(RwLock::new(keys)))
    }

    /// A copy of the ring now.
    pub fn get(&self) -> MeshKeys {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn generation(&self) -> u64 {
        self.0.read().unwrap_or_else(|p| p.into_inner()).generation
    }

    /// Takes `keys` when it is newer than the ring held; whether it did.
    pub fn take_newer(&self, keys: MeshKeys) -> bool {
        let mut held = self.0.write().unwrap_or_else(|p| p.into_inner());
        if keys.generation <= held.generation {
            return false;
        }
        *held = keys;
        true
    }
}

/// The transport's security upgrade: Noise, under the key both ends name
/// (docs/DESIGN.md, "Mesh key rotation").
#[derive(Clone)]
pub(super) struct MeshSecurity {
    identity: Keypair,
    keys: LiveKeys,
}

impl MeshSecurity {
    pub(super) fn new(identity: &Keypair, keys: LiveKeys) -> MeshSecurity {
        MeshSecurity {
            identity: identity.clone(),
            keys,
        }
    }

    /// The Noise configuration for the key `name` means, and its generation.
    fn noise(&self, name: &str) -> Result<(noise::Config, u64), noise::Error> {
        let ring = self.keys.get();
        let held = ring
            .by_name(name)
            .ok_or_else(|| refused(format!("{name}: not a mesh key this host holds (any more)")))?;
        let config = noise::Config::new(&self.identity)?.with_prologue(held.key.prologue());
        Ok((config, held.generation))
    }

    /// Keeps the connection with `peer` only if the ring lets it use the key
    /// of `generation`; a recovering ring takes up the generation that answered.
    fn check(&self, peer: &PeerId, generation: u64) -> Result<(), noise::Error> {
        let ring = self.keys.get();
        if let Some(newer) = ring.adopt(generation) {
            tracing::info!("the mesh's keys are at generation {generation}: taken up");
            self.keys.take_newer(newer);
            return Ok(());
        }
        if ring.may_use(generation, peer) {
            Ok(())
        } else {
            Err(refused(format!(
                "{peer} used the mesh key of generation {generation}, and the rotation to \
                 generation {} did not allow it (a revoked member or a removed peer)",
                ring.generation
            )))
        }
    }
}

fn refused(why: String) -> noise::Error {
    noise::Error::Io(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        why,
    ))
}

impl UpgradeInfo for MeshSecurity {
    type Info = String;
    type InfoIter = Vec<String>;

    /// Newest key first (a dialer proposes in this order), then the name
    /// binaries from before rotation use.
    fn protocol_info(&self) -> Self::InfoIter {
        let ring = self.keys.get();
        ring.keys
            .iter()
            .map(|h| h.name.clone())
            .chain(std::iter::once(LEGACY_NAME.to_string()))
            .collect()
    }
}

impl MeshSecurity {
    /// Noise under the key `name` means, as the dialer or the listener,
    /// then the ring's word on the authenticated caller.
    async fn secure<T>(
        self,
        socket: T,
        name: String,
        dialer: bool,
    ) -> Result<(PeerId, noise::Output<T>), noise::Error>
    where
        T: futures_util::AsyncRead + futures_util::AsyncWrite + Unpin + Send + 'static,
    {
        let (config, generation) = self.noise(&name)?;
        let (peer, out) = if dialer {
            config.upgrade_outbound(socket, LEGACY_NAME).await?
        } else {
            config.upgrade_inbound(socket, LEGACY_NAME).await?
        };
        self.check(&peer, generation)?;
        Ok((peer, out))
    }
}

impl<T> InboundConnectionUpgrade<T> for MeshSecurity
where
    T: futures_util::AsyncRead + futures_util::AsyncWrite + Unpin + Send + 'static,
{
    type Output = (PeerId, noise::Output<T>);
    type Error = noise::Error;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: T, name: String) -> Self::Future {
        Box::pin(self.secure(socket, name, false))
    }
}

impl<T> OutboundConnectionUpgrade<T> for MeshSecurity
where
    T: futures_util::AsyncRead + futures_util::AsyncWrite + Unpin + Send + 'static,
{
    type Output = (PeerId, noise::Output<T>);
    type Error = noise::Error;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: T, name: String) -> Self::Future {
        Box::pin(self.secure(socket, name, true))
    }
}

#[cfg(test)]
mod tests;
