//! Namespace protection: the daemon's worker that ships consistent RocksDB
//! checkpoints of the namespace onto the storage peers and points every
//! peer's root record at the newest (this file), and `datamesh recover`,
//! which rebuilds a home from them (`recover.rs`). See docs/DESIGN.md,
//! "Namespace protection".

mod open;
mod recover;
pub mod schedule;

pub use open::{open_daemon, open_engine, open_engine_with};
pub use recover::{Recovered, recover};

use crate::chunk::{ChunkRef, VolumeKey, crypto};
use crate::data::Engine;
use crate::home::{HomeError, HomePaths};
use crate::net::root::{RootBody, RootSigner};
use crate::net::trust::now_secs;
use crate::net::{MeshClient, PeerId};
use crate::util::lock;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, SystemTime};

const MANIFEST_VERSION: u8 = 1;
const STATE_VERSION: u8 = 1;

/// One file of a checkpoint, stored as an object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub name: String,
    pub len: u64,
    pub chunks: Vec<ChunkRef>,
}

/// What one checkpoint holds: the database's files and the home's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u8,
    /// Unix seconds.
    pub made: u64,
    /// RocksDB's sequence number when it was taken.
    pub db_sequence: u64,
    pub epoch: u64,
    pub files: Vec<FileRef>,
    /// Home files (`admitted`, `members`, `peers`, `config.toml`) by name.
    pub home: Vec<(String, Vec<u8>)>,
}

/// A checkpoint as the root record lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    pub made: u64,
    pub db_sequence: u64,
    /// The database's bytes.
    pub bytes: u64,
    /// The manifest object.
    pub manifest: Vec<ChunkRef>,
}

/// The sealed part of a root record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootPayload {
    pub data_shards: u8,
    pub parity_shards: u8,
    /// Newest first.
    pub checkpoints: Vec<CheckpointRef>,
}

/// `HOME/protect`: the checkpoints kept, with their manifests.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProtectState {
    version: u8,
    pub epoch: u64,
    /// The last root record's sequence.
    pub sequence: u64,
    /// Newest first.
    pub kept: Vec<(CheckpointRef, Manifest)>,
    /// What the newest checkpoint was taken of: the database's sequence
    /// number and a hash of the home files (a round with both unchanged
    /// ships nothing).
    pub shipped: Option<(u64, [u8; 32])>,
    /// When a round last found the newest copy holding every change (unix
    /// seconds): nothing before then is missing from it.
    pub current_at: u64,
}

impl ProtectState {
    pub fn load(path: &Path) -> Result<ProtectState, HomeError> {
        match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ProtectState::default()),
            Err(source) => Err(HomeError::Io {
                path: path.to_path_buf(),
                source,
            }),
            Ok(b) => match postcard::from_bytes::<ProtectState>(&b) {
                Ok(s) if s.version == STATE_VERSION => Ok(s),
                _ => Err(HomeError::Bad {
                    path: path.to_path_buf(),
                    why: "damaged, or from a newer datamesh (remove it: the next round \
                          ships the whole namespace again)"
                        .into(),
                }),
            },
        }
    }

    pub fn save(&mut self, path: &Path) -> Result<(), HomeError> {
        self.version = STATE_VERSION;
        crate::util::write_secret(path, &postcard::to_allocvec(self).expect("serializes"))
            .map_err(|(path, source)| HomeError::Io { path, source })
    }

    /// Every chunk of the kept checkpoints (once each): gc keeps them and
    /// repair mends them.
    pub fn chunks(&self) -> Vec<ChunkRef> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (c, m) in &self.kept {
            for c in c
                .manifest
                .iter()
                .chain(m.files.iter().flat_map(|f| &f.chunks))
            {
                if c.shard_ids().first().is_some_and(|id| seen.insert(*id)) {
                    out.push(c.clone());
                }
            }
        }
        out
    }
}

/// The keys a root record is sealed and signed with: the seal from the
/// volume secret, the signature by the volume's authority key. The key the
/// secret derives (`legacy`) signed the records of volumes from before the
/// authority key; it now only vouches for the authority key once (the
/// handover every record carries), and opens an old volume's records.
pub struct RootKeys {
    seal: [u8; 32],
    legacy: RootSigner,
    /// `None`: a kit from before the authority key.
    authority: Option<RootSigner>,
}

/// Which key signed a record of this volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignedBy {
    /// The authority key these keys hold.
    Authority,
    /// The key the volume secret derives (records from before the
    /// authority key, or a member device's forgery).
    Legacy,
    /// An authority key these keys do not hold, vouched for by the legacy
    /// key: the volume's own when a peer kept it (only its home can move a
    /// peer to it), so a kit from before the authority key cannot act.
    OtherAuthority,
}

/// A record of this volume, opened.
pub struct Opened {
    pub body: RootBody,
    pub payload: RootPayload,
    pub by: SignedBy,
}

impl RootKeys {
    pub fn of(volume: &VolumeKey, authority: Option<RootSigner>) -> RootKeys {
        RootKeys {
            seal: volume.derive("datamesh 2026 root record v1"),
            legacy: RootSigner::from_seed(volume.derive("datamesh 2026 root signing v1")),
            authority,
        }
    }

    pub fn has_authority(&self) -> bool {
        self.authority.is_some()
    }

    /// A record under the authority key, carrying the legacy key's handover
    /// to it (so a peer that pinned the legacy key moves, when the home
    /// sends it); under the legacy key when these keys hold no authority.
    pub fn record(&self, body: RootBody, payload: &RootPayload) -> Vec<u8> {
        let body = self.sealed(body, payload);
        match &self.authority {
            Some(a) => a.sign(RootBody {
                handover: Some(self.legacy.hand_over(&body.volume, &a.public())),
                ..body
            }),
            None => self.legacy.sign(body),
        }
    }

    /// A record under the legacy key: what a peer that was never handed
    /// over still takes (a recovery moves such peers first, then hands them
    /// over).
    pub fn legacy_record(&self, body: RootBody, payload: &RootPayload) -> Vec<u8> {
        self.legacy.sign(self.sealed(body, payload))
    }

    fn sealed(&self, body: RootBody, payload: &RootPayload) -> RootBody {
        let plain = postcard::to_allocvec(payload).expect("payload serializes");
        RootBody {
            sealed: crypto::seal_random(&self.seal, &plain),
            handover: None,
            ..body
        }
    }

    /// A record's body and payload, when it is this volume's (`None`:
    /// another volume's or another secret's); the error says what is wrong
    /// with it.
    pub fn open(&self, volume: [u8; 16], record: &[u8]) -> Result<Option<Opened>, String> {
        let body = crate::net::root::verify(record)?;
        if body.volume != volume {
            return Ok(None);
        }
        let legacy = self.legacy.public();
        let by = if self
            .authority
            .as_ref()
            .is_some_and(|a| a.public() == body.key)
        {
            SignedBy::Authority
        } else if body.key == legacy {
            SignedBy::Legacy
        } else if body.handover.as_ref().is_some_and(|h| h.old_key == legacy) {
            SignedBy::OtherAuthority
        } else {
            return Ok(None);
        };
        let plain = crypto::open_random(&self.seal, &body.sealed)
            .map_err(|_| "a root record that does not open".to_string())?;
        let payload =
            postcard::from_bytes(&plain).map_err(|_| "a damaged root payload".to_string())?;
        Ok(Some(Opened { body, payload, by }))
    }
}

pub fn when(secs: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .to_string()
}

/// How old the namespace's newest copy on the storage peers is, in words
/// (`status`, the dashboard); `mesh`: the volume has storage peers.
pub fn describe(state: &Path, mesh: bool) -> String {
    if !mesh {
        return "off (no storage peers to keep a copy of the namespace on)".into();
    }
    match ProtectState::load(state) {
        Ok(st) => match st.kept.first() {
            Some((newest, _)) => {
                let at = st.current_at.max(newest.made);
                let age = crate::net::trust::now_secs().saturating_sub(at);
                format!(
                    "copy on the peers current as of {} ({age} s ago; taken {}), root record {}, epoch {}, {} kept",
                    when(at),
                    when(newest.made),
                    st.sequence,
                    st.epoch,
                    st.kept.len()
                )
            }
            None => "no copy yet (a mount or `datamesh serve` makes one)".into(),
        },
        Err(e) => e.to_string(),
    }
}

/// What one round shipped.
#[derive(Debug)]
pub struct Round {
    pub files: usize,
    pub reused: usize,
    pub shipped_bytes: u64,
    pub db_bytes: u64,
    pub peers: usize,
}

/// The daemon's protection: its state, and the wake-up its worker waits on.
pub struct Protector {
    engine: Weak<Engine>,
    client: MeshClient,
    paths: HomePaths,
    keys: RootKeys,
    volume: [u8; 16],
    shards: (u8, u8),
    me: PeerId,
    every: Duration,
    keep: usize,
    /// One round at a time (the worker's, the last one at unmount).
    state: Mutex<ProtectState>,
    /// Set by an fsync or the stop, to start a round before the interval.
    wake: Arc<(Mutex<bool>, Condvar)>,
}

impl Protector {
    /// Checks that this home was not replaced by a recovery (refusing to
    /// start if it was), then runs the worker `protect`.
    pub fn start(
        engine: &Arc<Engine>,
        paths: HomePaths,
        key: &VolumeKey,
        client: MeshClient,
        cfg: &crate::home::Config,
        runner: &crate::workers::Runner,
    ) -> Result<Arc<Protector>, HomeError> {
        let meta = engine.local_meta()?;
        let params = meta.params().clone();
        let epoch = meta.epoch()?;
        let authority =
            crate::home::load_authority(&paths.authority_key())?.ok_or_else(|| HomeError::Bad {
                path: paths.authority_key(),
                why: "missing: the volume's authority key is made when the volume opens".into(),
            })?;
        let keys = RootKeys::of(key, Some(authority));
        let me = crate::net::load_identity(&paths.peer_key())
            .map_err(|e| HomeError::Bad {
                path: paths.peer_key(),
                why: e.to_string(),
            })?
            .public()
            .to_peer_id();
        let mut state = ProtectState::load(&paths.protect())?;
        let seen = check_not_replaced(&client, &keys, params.volume_id, epoch, &paths.dir, false)?;
        state.sequence = state.sequence.max(seen);
        if state.epoch != epoch {
            state.epoch = epoch;
        }
        engine.set_protected(state.chunks());
        let p = Arc::new(Protector {
            engine: Arc::downgrade(engine),
            client,
            paths,
            keys,
            volume: params.volume_id,
            shards: (params.data_shards, params.parity_shards),
            me,
            every: Duration::from_secs(cfg.protect_secs.max(1)),
            keep: cfg.protect_keep.max(1),
            state: Mutex::new(state),
            wake: Default::default(),
        });
        p.announce()?;
        let wake = p.wake.clone();
        engine.on_fsync(move || nudge(&wake));
        let wake = p.wake.clone();
        runner.on_stop(move || nudge(&wake));
        let me = p.clone();
        runner
            .spawn("protect", move |w| {
                loop {
                    if w.stopping() {
                        return;
                    }
                    w.set_state(crate::workers::WorkerState::Busy);
                    w.round(me.round().map(drop).map_err(|e| e.to_string()));
                    w.set_state(crate::workers::WorkerState::Idle);
                    let (lock_, cv) = &*me.wake;
                    let woken = lock(lock_);
                    let (mut woken, _) = cv
                        .wait_timeout_while(woken, me.every, |w| !*w)
                        .unwrap_or_else(|p| p.into_inner());
                    *woken = false;
                }
            })
            .map_err(|source| HomeError::Io {
                path: p.paths.dir.clone(),
                source,
            })?;
        Ok(p)
    }

    /// Ships a checkpoint if anything changed since the last; `None` when
    /// nothing had.
    pub fn round(&self) -> Result<Option<Round>, HomeError> {
        let Some(engine) = self.engine.upgrade() else {
            return Ok(None);
        };
        let mut state = lock(&self.state);
        let meta = engine.local_meta()?;
        let db_sequence = meta.sequence();
        let home: Vec<(String, Vec<u8>)> = self
            .paths
            .protected_files()
            .iter()
            .filter_map(|p| {
                let bytes = std::fs::read(p).ok()?;
                Some((p.file_name()?.to_string_lossy().into_owned(), bytes))
            })
            .collect();
        let home_hash =
            *blake3::hash(&postcard::to_allocvec(&home).expect("serializes")).as_bytes();
        if state.shipped == Some((db_sequence, home_hash)) {
            state.current_at = now_secs();
            state.save(&self.paths.protect())?;
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let tmp = self.paths.protect_tmp();
        let io = |source| HomeError::Io {
            path: tmp.clone(),
            source,
        };
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io)?;
        }
        // The time of the state, taken before it (a copy "made" after a
        // moment holds everything done before that moment).
        let made = now_secs();
        meta.checkpoint(&tmp)?;
        let shipped = self.ship(&engine, &mut state, &tmp, (made, db_sequence), home);
        let _ = std::fs::remove_dir_all(&tmp);
        let mut round = shipped?;
        state.shipped = Some((db_sequence, home_hash));
        state.current_at = made;
        // The checkpoint is durable on the peers before a record names it.
        engine.store().sync().map_err(crate::Error::from)?;
        let (took, refusals) = self.put_record(&mut state);
        round.peers = took;
        if round.peers == 0 {
            // Shipped, but named by no record: ship again next round.
            state.shipped = None;
        }
        state.save(&self.paths.protect())?;
        if round.peers == 0 {
            return Err(HomeError::Bad {
                path: self.paths.dir.clone(),
                why: format!(
                    "no storage peer took the namespace's root record{}",
                    if refusals.is_empty() {
                        " (none reachable)".to_string()
                    } else {
                        format!(": {}", refusals.join("; "))
                    }
                ),
            });
        }
        if !refusals.is_empty() {
            tracing::warn!("root record refused: {}", refusals.join("; "));
        }
        tracing::info!(
            "namespace protected: {} files ({} reused), {} bytes shipped of {}, root {} on {} peers, in {} ms",
            round.files,
            round.reused,
            round.shipped_bytes,
            round.db_bytes,
            state.sequence,
            round.peers,
            started.elapsed().as_millis()
        );
        Ok(Some(round))
    }

    /// The next root record, naming the kept checkpoints, to every reachable
    /// peer (and to each that connects later); how many took it, and the
    /// refusals.
    fn put_record(&self, state: &mut ProtectState) -> (usize, Vec<String>) {
        state.sequence += 1;
        let payload = RootPayload {
            data_shards: self.shards.0,
            parity_shards: self.shards.1,
            checkpoints: state.kept.iter().map(|(c, _)| c.clone()).collect(),
        };
        let body = RootBody {
            version: 0,
            volume: self.volume,
            epoch: state.epoch,
            sequence: state.sequence,
            home: self.me.to_bytes(),
            key: [0; 32],
            made: now_secs(),
            sealed: Vec::new(),
            handover: None,
        };
        let answers = self.client.put_root(self.keys.record(body, &payload));
        let refusals: Vec<String> = answers
            .iter()
            .filter_map(|(p, r)| r.as_ref().err().map(|e| format!("{p}: {e}")))
            .collect();
        (answers.len() - refusals.len(), refusals)
    }

    /// At start, the kept checkpoints named again under the authority key:
    /// a peer still on the volume's old key is handed over now (and one
    /// that connects later, when it does), before any change is protected.
    fn announce(&self) -> Result<(), HomeError> {
        let mut state = lock(&self.state);
        if state.kept.is_empty() {
            return Ok(());
        }
        let (took, refusals) = self.put_record(&mut state);
        state.save(&self.paths.protect())?;
        if !refusals.is_empty() {
            tracing::warn!("root record refused: {}", refusals.join("; "));
        }
        tracing::debug!("root record {} on {took} peers", state.sequence);
        Ok(())
    }

    /// Stores the checkpoint in `dir` (table files already shipped are
    /// referenced again) and its manifest; keeps it as the newest.
    fn ship(
        &self,
        engine: &Engine,
        state: &mut ProtectState,
        dir: &Path,
        (made, db_sequence): (u64, u64),
        home: Vec<(String, Vec<u8>)>,
    ) -> Result<Round, HomeError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| HomeError::Io { path, source }
        };
        // The checkpoint's files, then every snapshot's (`snapshots/ID/FILE`).
        let mut names: Vec<(String, std::path::PathBuf, u64)> = Vec::new();
        let mut list = |dir: &Path, prefix: &str| -> Result<(), HomeError> {
            for e in std::fs::read_dir(dir).map_err(io(dir))? {
                let e = e.map_err(io(dir))?;
                let len = e.metadata().map_err(io(&e.path()))?.len();
                let name = format!("{prefix}{}", e.file_name().to_string_lossy());
                names.push((name, e.path(), len));
            }
            Ok(())
        };
        list(dir, "")?;
        let snaps = self.paths.snapshots();
        if snaps.is_dir() {
            for e in std::fs::read_dir(&snaps).map_err(io(&snaps))? {
                let e = e.map_err(io(&snaps))?;
                let id = e.file_name().to_string_lossy().into_owned();
                // A snapshot being taken is `ID.tmp` until whole.
                if id.parse::<u16>().is_ok() {
                    list(&e.path(), &format!("snapshots/{id}/"))?;
                }
            }
        }
        names.sort();
        let shipped_before: HashMap<(String, u64), Vec<ChunkRef>> = state
            .kept
            .first()
            .map(|(_, m)| {
                m.files
                    .iter()
                    .filter_map(|f| Some(((reuse_key(&f.name)?, f.len), f.chunks.clone())))
                    .collect()
            })
            .unwrap_or_default();
        let mut round = Round {
            files: names.len(),
            reused: 0,
            shipped_bytes: 0,
            db_bytes: 0,
            peers: 0,
        };
        engine.store_span(|| {
            let mut files = Vec::new();
            for (name, path, len) in &names {
                round.db_bytes += len;
                let before = reuse_key(name).and_then(|k| shipped_before.get(&(k, *len)));
                let chunks = match before {
                    Some(c) => {
                        round.reused += 1;
                        c.clone()
                    }
                    None => {
                        let f = std::fs::File::open(path).map_err(io(path))?;
                        round.shipped_bytes += len;
                        engine.store_object(std::io::BufReader::new(f))?
                    }
                };
                files.push(FileRef {
                    name: name.clone(),
                    len: *len,
                    chunks,
                });
            }
            let manifest = Manifest {
                version: MANIFEST_VERSION,
                made,
                db_sequence,
                epoch: state.epoch,
                files,
                home,
            };
            let bytes = postcard::to_allocvec(&manifest).expect("manifest serializes");
            let refs = engine.store_object(&bytes[..])?;
            let c = CheckpointRef {
                made: manifest.made,
                db_sequence,
                bytes: round.db_bytes,
                manifest: refs,
            };
            state.kept.insert(0, (c, manifest));
            state.kept.truncate(self.keep);
            engine.set_protected(state.chunks());
            Ok::<_, HomeError>(())
        })?;
        Ok(round)
    }
}

/// Refuses a home whose epoch is below the newest root record any reachable
/// storage peer holds (a recovery replaced it); else the highest sequence of
/// this epoch's records seen.
///
/// Once this home holds the authority key (`authority_new` false: it did
/// before this start), a higher record under the legacy key is no recovery
/// of the owner's: a holder of the volume secret (a member device) signed
/// it on a peer that was not handed over yet. It is reported, not obeyed.
pub fn check_not_replaced(
    client: &MeshClient,
    keys: &RootKeys,
    volume: [u8; 16],
    epoch: u64,
    dir: &Path,
    authority_new: bool,
) -> Result<u64, HomeError> {
    let mut seen = 0;
    // Asked at every open of the volume: a peer slow to answer delays no
    // command long (it is refused anyway if this home is fenced).
    for (peer, rec) in client.get_roots(Duration::from_secs(5)) {
        let Ok(Some(rec)) = rec else { continue };
        match keys.open(volume, &rec) {
            Ok(Some(o)) if o.body.epoch > epoch => {
                let body = o.body;
                let home = PeerId::from_bytes(&body.home)
                    .map_or_else(|_| "?".to_string(), |p| p.to_string());
                if o.by == SignedBy::Legacy && !authority_new {
                    tracing::warn!(
                        "storage peer {peer} was moved to home {home} (epoch {}) under the \
                         volume's old signing key, which member devices hold: not by this \
                         volume's authority. It refuses this home until it is joined again; \
                         `datamesh peers remove {peer}` retires it",
                        body.epoch
                    );
                    continue;
                }
                return Err(HomeError::Bad {
                    path: dir.to_path_buf(),
                    why: format!(
                        "this home node was replaced: the volume was recovered onto home \
                         {home} (epoch {}, last protected {}; this home is epoch {epoch}), \
                         and the storage peers refuse this one. Use the recovered home, or \
                         `datamesh recover --kit` to move the volume here again",
                        body.epoch,
                        when(body.made)
                    ),
                });
            }
            Ok(Some(o)) if o.body.epoch == epoch => seen = seen.max(o.body.sequence),
            Ok(_) => {}
            Err(why) => tracing::warn!("storage peer {peer}: {why}"),
        }
    }
    Ok(seen)
}

/// What makes a shipped file reusable in a later checkpoint: table files
/// are never rewritten under their number (a snapshot's are hard links of
/// the database's), and a snapshot's other files never change.
fn reuse_key(name: &str) -> Option<String> {
    let base = name.rsplit('/').next().unwrap_or(name);
    if base.ends_with(".sst") {
        Some(format!("sst:{base}"))
    } else if name.starts_with("snapshots/") {
        Some(name.to_string())
    } else {
        None
    }
}

fn nudge(wake: &(Mutex<bool>, Condvar)) {
    *lock(&wake.0) = true;
    wake.1.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_record_opens_with_its_volume_secret_only() {
        let (key, other) = (VolumeKey::generate(), VolumeKey::generate());
        let keys = RootKeys::of(&key, Some(RootSigner::from_seed([6; 32])));
        let payload = RootPayload {
            data_shards: 4,
            parity_shards: 2,
            checkpoints: vec![],
        };
        let body = RootBody {
            version: 0,
            volume: [1; 16],
            epoch: 2,
            sequence: 3,
            home: vec![],
            key: [0; 32],
            made: 4,
            sealed: vec![],
            handover: None,
        };
        let rec = keys.record(body.clone(), &payload);
        let o = keys.open([1; 16], &rec).unwrap().unwrap();
        assert_eq!(
            (o.body.epoch, o.body.sequence, o.payload, o.by),
            (2, 3, payload.clone(), SignedBy::Authority)
        );
        // Another volume id, or another secret (a wrong kit): not this volume's.
        assert!(keys.open([2; 16], &rec).unwrap().is_none());
        let wrong = RootKeys::of(&other, Some(RootSigner::from_seed([7; 32])));
        assert!(wrong.open([1; 16], &rec).unwrap().is_none());
        // A kit without the authority key knows the record for the volume's
        // (vouched for by the secret's key), and that it cannot sign so.
        let old_kit = RootKeys::of(&key, None);
        let o = old_kit.open([1; 16], &rec).unwrap().unwrap();
        assert_eq!(o.by, SignedBy::OtherAuthority);
        let o = keys
            .open([1; 16], &old_kit.record(body, &payload))
            .unwrap()
            .unwrap();
        assert_eq!(o.by, SignedBy::Legacy);
    }
}
