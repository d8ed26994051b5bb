//! `datamesh recover --kit`: a home rebuilt from the newest readable
//! checkpoint on the storage peers, the volume's epoch raised and its home
//! moved here (docs/DESIGN.md, "Namespace protection", Recovery).

use super::*;
use crate::home::Home;
use crate::kit::Kit;
use crate::meta::MetaStore;
use crate::net::Multiaddr;
use crate::store::ShardStore;
use crate::types::FileKind;
use std::os::unix::fs::DirBuilderExt;

/// What a recovery restored.
#[derive(Debug)]
pub struct Recovered {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// When the restored checkpoint was taken (unix seconds).
    pub made: u64,
    pub epoch: u64,
    pub peers: usize,
    /// Newer checkpoints that could not be read, and why.
    pub skipped: Vec<String>,
}

fn bad(path: &Path, why: impl Into<String>) -> HomeError {
    HomeError::Bad {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HomeError + '_ {
    move |source| HomeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Rebuilds `home` (which must hold no volume) from the storage peers the
/// kit names and `bootstrap`. `say` hears each step.
pub fn recover(
    home: &Home,
    kit: &Kit,
    bootstrap: Vec<Multiaddr>,
    say: &mut dyn FnMut(&str),
) -> Result<Recovered, HomeError> {
    let paths = home.paths();
    if home.exists() || paths.meta().exists() || home.is_member() {
        return Err(HomeError::Exists(home.dir.clone()));
    }
    let mut addrs: Vec<Multiaddr> = kit.peers.iter().filter_map(|a| a.parse().ok()).collect();
    addrs.extend(bootstrap);
    if addrs.is_empty() {
        return Err(bad(
            &home.dir,
            "no storage peer to ask: the kit names none; give one with --bootstrap",
        ));
    }
    let fresh = !home.dir.exists();
    let res = rebuild(home, kit, addrs, say);
    if res.is_err() {
        // A failed recovery leaves nothing behind: the next one starts over.
        if fresh {
            let _ = std::fs::remove_dir_all(&home.dir);
        } else {
            let _ = std::fs::remove_dir_all(paths.meta_recovering());
            let _ = std::fs::remove_dir_all(paths.snapshots_recovering());
        }
    }
    res
}

/// [`recover`] once the home is known free: the storage peers at `addrs`
/// asked.
fn rebuild(
    home: &Home,
    kit: &Kit,
    addrs: Vec<Multiaddr>,
    say: &mut dyn FnMut(&str),
) -> Result<Recovered, HomeError> {
    let paths = home.paths();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&home.dir)
        .map_err(io(&home.dir))?;
    // The kit's key, and (with its authority key) the later generations'
    // keys: peers that took rotations since the kit was made answer to one.
    let kit_key = crate::net::MeshKey::from_bytes(kit.mesh_key);
    let mesh = crate::net::LiveKeys::new(match kit.authority {
        Some(seed) => crate::net::MeshKeys::recovering(
            kit_key,
            crate::net::root::RootSigner::from_seed(seed).rotation_seed(),
        ),
        None => crate::net::MeshKeys::single(kit_key),
    });
    let save_keys = |mesh: &crate::net::LiveKeys| {
        mesh.get()
            .save(&paths.mesh_key())
            .map_err(|e| bad(&paths.mesh_key(), e.to_string()))
    };
    save_keys(&mesh)?;
    let identity = crate::net::load_identity(&paths.peer_key())
        .map_err(|e| bad(&paths.peer_key(), e.to_string()))?;
    let me = identity.public().to_peer_id();
    say(&format!(
        "reaching the storage peers ({} addresses)",
        addrs.len()
    ));
    let client = crate::net::MeshClient::start(identity, &mesh, addrs, None, None)
        .map_err(|e| bad(Path::new("mesh"), e.to_string()))?;
    let reached = client.wait_for_peers(64, Duration::from_secs(10));
    if reached == 0 {
        return Err(bad(
            Path::new("mesh"),
            "no storage peer answered at the kit's addresses (or --bootstrap): check that \
             they run (name a reachable one with --bootstrap), and that this is the kit of \
             their mesh (a wrong kit's mesh key fails every handshake)",
        ));
    }
    // The generation the peers answered to, from now on this home's.
    save_keys(&mesh)?;

    // The newest record this volume signed.
    let volume_key = VolumeKey::from_bytes(kit.volume_secret);
    let keys = RootKeys::of(
        &volume_key,
        kit.authority.map(crate::net::root::RootSigner::from_seed),
    );
    let (mut best, mut foreign, mut damaged) = (None::<Opened>, 0, Vec::new());
    let mut on_legacy = 0;
    let roots = client.get_roots(Duration::from_secs(40));
    if roots.iter().all(|(_, r)| r.is_err()) {
        // Noise's initiator finishes first: a peer that refuses this
        // host's key drops the connection only after it seemed made.
        let errors: Vec<String> = roots.iter().map(|(p, r)| format!("{p}: {r:?}")).collect();
        return Err(bad(
            Path::new("mesh"),
            format!(
                "the {reached} storage peers reached closed the connection without answering: \
                 this kit's mesh key is not one they take (a wrong kit's mesh key fails every \
                 handshake; so does a kit more than {} rotations of the mesh key old){}",
                crate::net::keys::RECOVERY_WINDOW,
                if errors.is_empty() {
                    String::new()
                } else {
                    format!("; {}", errors.join("; "))
                }
            ),
        ));
    }
    for (peer, rec) in roots {
        match rec {
            Ok(Some(rec)) => match keys.open(kit.volume_id, &rec) {
                Ok(Some(o)) => {
                    on_legacy += usize::from(o.by == SignedBy::Legacy);
                    // A record under an authority key outranks any under the
                    // legacy key, whatever its epoch: a member device can sign
                    // those, on a peer that was down when the home moved to
                    // its authority key.
                    let rank = |x: &Opened| {
                        let authority = x.by != SignedBy::Legacy;
                        (authority, x.body.epoch, x.body.sequence)
                    };
                    if best.as_ref().is_none_or(|x| rank(&o) > rank(x)) {
                        best = Some(o);
                    }
                }
                Ok(None) => foreign += 1,
                Err(why) => damaged.push(format!("{peer}: {why}")),
            },
            Ok(None) => {}
            Err(why) => damaged.push(format!("{peer}: {why}")),
        }
    }
    let volume = hex::encode(kit.volume_id);
    let Some(Opened { body, payload, by }) = best else {
        let why = if foreign > 0 {
            format!(
                "the root records on {foreign} storage peer(s) are not signed by this kit's \
                 keys for volume {volume}: is this the right kit?"
            )
        } else {
            format!(
                "none of the {reached} storage peers reached holds a root record of volume \
                 {volume} (was the namespace ever protected? it is, by a mount or \
                 `datamesh serve` with storage peers){}",
                if damaged.is_empty() {
                    String::new()
                } else {
                    format!("; {}", damaged.join("; "))
                }
            )
        };
        return Err(bad(Path::new("mesh"), why));
    };
    if by == SignedBy::OtherAuthority {
        return Err(bad(
            Path::new("mesh"),
            format!(
                "the storage peers obey volume {volume}'s authority key, which this kit does \
                 not hold: {}. Recover with a kit exported (`datamesh kit export`) since the \
                 home made that key",
                if keys.has_authority() {
                    "it holds another one (a kit of this volume made elsewhere, or a forged one)"
                } else {
                    "it is a kit from before the volume had one (dmkit1)"
                }
            ),
        ));
    }
    if payload.checkpoints.is_empty() {
        return Err(bad(
            Path::new("mesh"),
            "the root record lists no checkpoint",
        ));
    }

    // Move the volume's home here: the peers serve this host from now on,
    // and refuse the old home. Peers still on the volume's legacy key are
    // moved under it first; the record after it hands them over to the
    // authority key (which only the home may do).
    // Both below `MAX_COUNT` (checked by `verify`): no overflow.
    let epoch = body.epoch + 1;
    let mut sequence = body.sequence + 1;
    let mut rehome = RootBody {
        epoch,
        sequence,
        home: me.to_bytes(),
        made: now_secs(),
        ..body.clone()
    };
    let authority = match kit.authority {
        Some(seed) => crate::net::root::RootSigner::from_seed(seed),
        None => crate::home::authority_or_make(&paths.authority_key())?.0,
    };
    let keys = RootKeys::of(&volume_key, Some(authority));
    if on_legacy > 0 {
        let moved = client.put_root(keys.legacy_record(rehome.clone(), &payload));
        let took = moved.iter().filter(|(_, r)| r.is_ok()).count();
        tracing::info!("{took} storage peers moved under the volume's legacy key");
        sequence += 1;
        rehome.sequence = sequence;
    }
    let answers = client.put_root(keys.record(rehome, &payload));
    let took = answers.iter().filter(|(_, r)| r.is_ok()).count();
    if took == 0 {
        let why: Vec<String> = answers
            .iter()
            .filter_map(|(p, r)| r.as_ref().err().map(|e| format!("{p}: {e}")))
            .collect();
        return Err(bad(
            Path::new("mesh"),
            format!(
                "no storage peer took this host as the new home: {}",
                why.join("; ")
            ),
        ));
    }
    say(&format!(
        "this host is the volume's home now (epoch {epoch}; {took} of {} storage peers told)",
        answers.len()
    ));

    let store: Arc<dyn ShardStore> = crate::net::MeshStore::new(client, None);
    let codec =
        crate::chunk::Codec::new(payload.data_shards as usize, payload.parity_shards as usize)
            .map_err(crate::Error::from)?;
    let work = paths.meta_recovering();
    let mut skipped = Vec::new();
    let mut restored = None;
    for c in &payload.checkpoints {
        say(&format!("reading the checkpoint of {}", when(c.made)));
        match restore(&store, &codec, c, &work, kit.volume_id, epoch) {
            Ok(r) => {
                restored = Some(r);
                break;
            }
            Err(e) => {
                let why = format!("checkpoint of {}: {e}", when(c.made));
                say(&format!("{why}; trying the one before"));
                skipped.push(why);
            }
        }
    }
    let Some((manifest, counts)) = restored else {
        let _ = std::fs::remove_dir_all(&work);
        return Err(bad(
            Path::new("mesh"),
            format!("no checkpoint could be read: {}", skipped.join("; ")),
        ));
    };

    // The home files, then the namespace, and the volume key last.
    for (name, bytes) in &manifest.home {
        let Some(path) = paths
            .protected_files()
            .into_iter()
            .find(|p| p.file_name().is_some_and(|n| n == name.as_str()))
        else {
            continue;
        };
        crate::util::write_secret(&path, bytes)
            .map_err(|(path, source)| HomeError::Io { path, source })?;
    }
    if !paths.config().exists() {
        std::fs::write(paths.config(), "").map_err(io(&paths.config()))?;
    }
    home.make_device_key()?;
    let mut state = ProtectState {
        epoch,
        sequence,
        ..Default::default()
    };
    // The checkpoints kept before stay protected (their manifests as read).
    for c in &payload.checkpoints {
        if let Ok(bytes) = crate::data::read_object(&store, &codec, &c.manifest)
            && let Ok(m) = postcard::from_bytes::<Manifest>(&bytes)
        {
            state.kept.push((c.clone(), m));
        }
    }
    state.save(&paths.protect())?;
    std::fs::rename(&work, paths.meta()).map_err(io(&work))?;
    let snaps = paths.snapshots_recovering();
    if snaps.exists() {
        std::fs::rename(&snaps, paths.snapshots()).map_err(io(&snaps))?;
    }
    if let Some(seed) = kit.authority {
        crate::util::write_secret(&paths.authority_key(), &seed)
            .map_err(|(path, source)| HomeError::Io { path, source })?;
    }
    // Everything the key marks complete is on disk before it.
    nix::unistd::sync();
    home.complete(&volume_key)?;
    Ok(Recovered {
        files: counts.0,
        dirs: counts.1,
        bytes: counts.2,
        made: manifest.made,
        epoch,
        peers: took,
        skipped,
    })
}

/// One checkpoint's files into `work`, opened and checked as this volume's,
/// its epoch set; the manifest and (files, directories, bytes).
fn restore(
    store: &Arc<dyn ShardStore>,
    codec: &crate::chunk::Codec,
    c: &CheckpointRef,
    work: &Path,
    volume: [u8; 16],
    epoch: u64,
) -> Result<(Manifest, (u64, u64, u64)), HomeError> {
    if work.exists() {
        std::fs::remove_dir_all(work).map_err(io(work))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(work)
        .map_err(io(work))?;
    let bytes = crate::data::read_object(store, codec, &c.manifest)?;
    let manifest: Manifest =
        postcard::from_bytes(&bytes).map_err(|_| bad(work, "a damaged manifest"))?;
    if manifest.version != MANIFEST_VERSION {
        return Err(bad(
            work,
            format!(
                "a manifest of version {} (this datamesh reads {MANIFEST_VERSION})",
                manifest.version
            ),
        ));
    }
    // Snapshots' files (`snapshots/ID/FILE`) go beside the database.
    let snaps = work.with_file_name("snapshots.recovering");
    if snaps.exists() {
        std::fs::remove_dir_all(&snaps).map_err(io(&snaps))?;
    }
    let plain = |n: &str| !n.is_empty() && !n.contains('/') && !n.starts_with('.');
    for f in &manifest.files {
        let path = match f
            .name
            .strip_prefix("snapshots/")
            .and_then(|r| r.split_once('/'))
        {
            Some((id, file)) if id.parse::<u16>().is_ok() && plain(file) => {
                let dir = snaps.join(id);
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(io(&dir))?;
                dir.join(file)
            }
            _ if plain(&f.name) => work.join(&f.name),
            _ => return Err(bad(work, format!("a manifest naming {:?}", f.name))),
        };
        let data = crate::data::read_object(store, codec, &f.chunks)?;
        if data.len() as u64 != f.len {
            return Err(bad(
                work,
                format!("{}: {} bytes, expected {}", f.name, data.len(), f.len),
            ));
        }
        std::fs::write(&path, &data).map_err(io(&path))?;
    }
    let meta = MetaStore::open(work, None)?;
    if meta.params().volume_id != volume {
        return Err(bad(work, "the checkpoint is of another volume"));
    }
    meta.set_epoch(epoch)?;
    let mut counts = (0, 0, 0);
    meta.for_each_inode(|_, rec| {
        if rec.kind == FileKind::Dir {
            counts.1 += 1;
        } else {
            counts.0 += 1;
            counts.2 += rec.size;
        }
        Ok(())
    })?;
    meta.sync()?;
    drop(meta);
    Ok((manifest, counts))
}
