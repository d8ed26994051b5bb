//! The home directory of a datamesh device: keys, configuration, the RocksDB
//! namespace and the local shard store.
//!
//! ```text
//! volume.key    32-byte volume secret (0600): the root of confidentiality
//! device.key    this device's secp256k1 key (0600): what volume keys are wrapped to
//! mesh.key      the mesh key (0600): gates every connection to storage peers
//! peer.key      this device's libp2p identity (0600)
//! peers         storage peers seen, one address per line (rewritten as they change)
//! mount.*       while mounted: the log, and the pid + mountpoint (cli/)
//! volume.sock   while a daemon (a mount, `datamesh serve`) holds the volume: its socket
//! config.toml   run-time settings, with commented defaults
//! meta/         the RocksDB namespace
//! store/        shards held by this host (the embedded default, no peers)
//! ```

use crate::chunk::{DeviceKey, VolumeKey};
use crate::data::EngineConfig;
use crate::meta::{MetaStore, VolumeParams};
use crate::store::LocalStore;
use serde::Deserialize;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("{0}: a volume already exists here (remove it first to start over)")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Bad { path: PathBuf, why: String },
    #[error(transparent)]
    Engine(#[from] crate::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HomeError + '_ {
    move |source| HomeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Volume parameters chosen at `init`.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub chunk_size: u32,
    pub data_shards: u8,
    pub parity_shards: u8,
    pub inline_max: u32,
    /// The namespace in etcd (`etcd://HOST:PORT,…`) instead of this host's
    /// RocksDB.
    pub meta: Option<String>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunk_size: 4 << 20,
            data_shards: 4,
            parity_shards: 2,
            inline_max: 32 << 10,
            meta: None,
        }
    }
}

/// `meta-engine.toml`: where a volume's namespace is when it is not in
/// `meta/`.
#[derive(serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaEngine {
    v: u32,
    /// `etcd://HOST:PORT,…`
    url: String,
    /// Every key of this volume in the cluster starts with it.
    prefix: String,
}

const META_ENGINE_V1: u32 = 1;

impl MetaEngine {
    /// The volume of `params` in the cluster at `url`, under its own prefix.
    fn new(url: &str, params: &VolumeParams) -> MetaEngine {
        MetaEngine {
            v: META_ENGINE_V1,
            url: url.to_string(),
            prefix: format!("dm/{}/", hex::encode(params.volume_id)),
        }
    }

    fn connect(&self) -> Result<Arc<dyn crate::meta::kv::Kv>, HomeError> {
        let kv = crate::meta::kv::EtcdKv::connect(&self.url, self.prefix.as_bytes())?;
        Ok(Arc::new(kv))
    }
}

/// Run-time settings from `config.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub cache_mb: usize,
    pub dirty_mb: usize,
    pub gc_grace_secs: u64,
    /// Storage peers to reach at start (multiaddrs ending in /p2p/ID).
    pub bootstrap: Vec<String>,
    /// Seconds a storage peer may be gone before its shards are rebuilt elsewhere.
    pub repair_grace_secs: u64,
    /// Repair's bandwidth in MB/s (shard bytes fetched and placed); 0: no limit.
    pub repair_mbps: u64,
    /// Where a daemon (a mount, `serve`) listens for member devices.
    pub listen: Vec<String>,
    /// The newest copy of the namespace kept on the storage peers is at most
    /// this many seconds old.
    pub protect_secs: u64,
    /// Namespace checkpoints kept on the storage peers.
    pub protect_keep: usize,
    /// Seconds between the daemon's scheduled snapshots (`auto-TIME`); 0: none.
    pub snapshot_every_secs: u64,
    /// Scheduled snapshots kept (the oldest go; others are never touched).
    pub snapshot_keep: usize,
    /// The WebDAV gateway's users (`datamesh webdav adduser`).
    pub webdav: WebdavConfig,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebdavConfig {
    /// Where a daemon serves WebDAV when no --webdav is given.
    pub listen: Option<std::net::SocketAddr>,
    /// Passwords over plain HTTP on a non-loopback address (--webdav-insecure).
    pub insecure: bool,
    /// HTTPS: a certificate (PEM, its chain after it) and its private key
    /// (--webdav-cert, --webdav-key).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub users: Vec<crate::webdav::auth::User>,
}

impl Config {
    /// config.toml at `path`; the defaults when there is none.
    pub fn load(path: PathBuf) -> Result<Config, HomeError> {
        match fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| HomeError::Bad {
                path,
                why: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(HomeError::Io { path, source: e }),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cache_mb: 32,
            dirty_mb: 256,
            gc_grace_secs: 3600,
            bootstrap: Vec::new(),
            repair_grace_secs: 600,
            repair_mbps: 0,
            listen: Vec::new(),
            protect_secs: 30,
            protect_keep: 3,
            snapshot_every_secs: 0,
            snapshot_keep: 24,
            webdav: WebdavConfig::default(),
        }
    }
}

const CONFIG_TEMPLATE: &str = "\
# datamesh settings for this device. Every line shown is the default.

# Decoded chunks kept in memory (MiB).
# cache_mb = 32

# Unsealed writes held in memory across all files before writers flush (MiB).
# dirty_mb = 256

# Seconds a shard must stay unreferenced before `datamesh gc` deletes it.
# gc_grace_secs = 3600

# Storage peers (`datamesh node`) to reach at start, as multiaddrs ending in
# /p2p/PEER_ID. With none here, on the command line or remembered in `peers`,
# shards stay in this host's store/.
# bootstrap = []

# Seconds a storage peer may be unreachable before the mount rebuilds its
# shards on the others.
# repair_grace_secs = 600

# MB/s a repair may move (shards fetched to rebuild, and placed), so that
# rebuilding after a lost peer leaves the link to the mount; 0: no limit.
# repair_mbps = 0

# Where a daemon (a mount, `datamesh serve`) listens for member devices
# (`datamesh invite --member`), e.g. [\"/ip4/0.0.0.0/tcp/4720\"]. With none,
# this home reaches out to storage peers only.
# listen = []

# With storage peers, the daemon copies the namespace onto them (sealed) so
# that `datamesh recover --kit` can rebuild this home if its disk is lost: the
# copy is at most protect_secs old, and the last protect_keep copies are kept.
# 0 turns protection off (then losing this disk loses the volume).
# protect_secs = 30
# protect_keep = 3

# The daemon takes a snapshot named auto-TIME every snapshot_every_secs (0:
# never) and keeps the last snapshot_keep of them (e.g. 3600 and 24: hourly,
# for a day). Snapshots you take yourself are never deleted by it.
# snapshot_every_secs = 0
# snapshot_keep = 24

# The WebDAV gateway (like --webdav ADDR): where a daemon serves the volume
# at http://ADDR/dav/. Users are added with `datamesh webdav adduser NAME`.
# The same listener serves the dashboard at / and metrics at /metrics. With
# cert and key (PEM files) it serves HTTPS, and any address may have users.
# [webdav]
# listen = \"127.0.0.1:8080\"
# insecure = false
# cert = \"/etc/ssl/certs/mesh.pem\"
# key = \"/etc/ssl/private/mesh.key\"
";

/// Where each file of a home directory is: the one place these names are
/// spelled (see the module doc for what each holds).
#[derive(Clone, Debug)]
pub struct HomePaths {
    pub dir: PathBuf,
}

impl HomePaths {
    pub fn volume_key(&self) -> PathBuf {
        self.dir.join("volume.key")
    }
    pub fn device_key(&self) -> PathBuf {
        self.dir.join("device.key")
    }
    pub fn mesh_key(&self) -> PathBuf {
        self.dir.join("mesh.key")
    }
    /// The volume's authority key: signs what storage peers obey from the
    /// home (root records). Never leaves the home but in the recovery kit.
    pub fn authority_key(&self) -> PathBuf {
        self.dir.join("authority.key")
    }
    pub fn peer_key(&self) -> PathBuf {
        self.dir.join("peer.key")
    }
    pub fn peers(&self) -> PathBuf {
        self.dir.join("peers")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    /// Invitations handed out and not used up (`datamesh invite`).
    pub fn invites(&self) -> PathBuf {
        self.dir.join("invites")
    }
    /// The storage peers this home admitted.
    pub fn admitted(&self) -> PathBuf {
        self.dir.join("admitted")
    }
    pub fn meta(&self) -> PathBuf {
        self.dir.join("meta")
    }
    /// Where the namespace is when it is not in `meta/` (an etcd cluster).
    pub fn meta_engine(&self) -> PathBuf {
        self.dir.join("meta-engine.toml")
    }
    pub fn store(&self) -> PathBuf {
        self.dir.join("store")
    }
    /// The background mount's log.
    pub fn mount_log(&self) -> PathBuf {
        self.dir.join("mount.log")
    }
    /// The mount process's pid and mountpoint, while mounted.
    pub fn mount_pid(&self) -> PathBuf {
        self.dir.join("mount.pid")
    }
    /// The member devices of this home node's volume.
    pub fn members(&self) -> PathBuf {
        self.dir.join("members")
    }
    /// Invitations for member devices not used up.
    pub fn member_invites(&self) -> PathBuf {
        self.dir.join("member-invites")
    }
    /// On a member device: its home node and the volume's parameters.
    pub fn member(&self) -> PathBuf {
        self.dir.join("member")
    }
    /// The volume daemon's socket (a mount's, or `datamesh serve`'s).
    pub fn volume_sock(&self) -> PathBuf {
        self.dir.join("volume.sock")
    }
    /// What namespace protection keeps: the checkpoints shipped (their
    /// manifests) and the last root record's sequence.
    pub fn protect(&self) -> PathBuf {
        self.dir.join("protect")
    }
    /// Snapshots of the namespace, one RocksDB checkpoint each (`ID/`).
    pub fn snapshots(&self) -> PathBuf {
        self.dir.join("snapshots")
    }
    /// Snapshots being recovered, until they are whole.
    pub fn snapshots_recovering(&self) -> PathBuf {
        self.dir.join("snapshots.recovering")
    }
    /// A checkpoint being shipped.
    pub fn protect_tmp(&self) -> PathBuf {
        self.dir.join("protect.tmp")
    }
    /// A namespace being recovered, until it is whole.
    pub fn meta_recovering(&self) -> PathBuf {
        self.dir.join("meta.recovering")
    }
    /// The home files a checkpoint carries beside the namespace (never keys).
    pub fn protected_files(&self) -> [PathBuf; 4] {
        [self.admitted(), self.members(), self.peers(), self.config()]
    }
    /// A storage peer's default data directory, beside this home.
    pub fn default_node_dir(&self) -> PathBuf {
        self.dir.with_file_name("datamesh-node")
    }
}

pub struct Home {
    pub dir: PathBuf,
    /// Storage peers given on the command line (`--bootstrap`), beside the
    /// configured and remembered ones.
    pub bootstrap: Vec<String>,
}

impl Home {
    /// `--home`/`DATAMESH_HOME` if given, else `$XDG_DATA_HOME/datamesh`, else
    /// `~/.local/share/datamesh`.
    pub fn locate(explicit: Option<PathBuf>) -> Home {
        let dir = explicit.unwrap_or_else(|| {
            let base = std::env::var_os("XDG_DATA_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
                    PathBuf::from(home).join(".local/share")
                });
            base.join("datamesh")
        });
        Home {
            dir,
            bootstrap: Vec::new(),
        }
    }

    pub fn paths(&self) -> HomePaths {
        HomePaths {
            dir: self.dir.clone(),
        }
    }

    fn key_path(&self) -> PathBuf {
        self.paths().volume_key()
    }

    pub fn exists(&self) -> bool {
        self.key_path().exists()
    }

    /// The volume's namespace: in etcd when `meta-engine.toml` says so,
    /// else this host's RocksDB in `meta/`.
    pub fn open_meta(&self) -> Result<MetaStore, HomeError> {
        match self.meta_engine()? {
            None => Ok(MetaStore::open(&self.paths().meta(), None)?),
            Some(engine) => Ok(MetaStore::over(
                engine.connect()?,
                &self.paths().meta(),
                None,
            )?),
        }
    }

    /// Moves the namespace to etcd (`to` an `etcd://` address) or back into
    /// this host's RocksDB (`to` `rocksdb`), with no daemon holding the
    /// volume: every key copied, the two compared, then the home pointed
    /// at the copy. The old copy stays (`meta.before-etcd/`, or the keys
    /// in etcd) for whoever wants to remove it. Says what it did.
    pub fn migrate_meta(&self, to: &str) -> Result<String, HomeError> {
        use crate::meta::kv::{self, Kv};
        let bad = |path: PathBuf, why: String| HomeError::Bad { path, why };
        if std::os::unix::net::UnixStream::connect(self.paths().volume_sock()).is_ok() {
            return Err(bad(
                self.paths().volume_sock(),
                "a daemon (a mount or `datamesh serve`) holds the volume: stop it first".into(),
            ));
        }
        let engine_file = self.paths().meta_engine();
        let meta = self.paths().meta();
        let moved = |n: u64, (_, d): (u64, [u8; 32])| {
            format!(
                "{n} keys copied and compared (digest {})",
                &hex::encode(d)[..16]
            )
        };
        if to == "rocksdb" {
            let engine = self.meta_engine()?.ok_or_else(|| {
                bad(
                    meta.clone(),
                    "the namespace is in this host's RocksDB already".into(),
                )
            })?;
            if meta.exists() {
                return Err(bad(meta, "is in the way: move it aside first".into()));
            }
            let src = engine.connect()?;
            let dst = kv::RocksKv::open(&meta, true)?;
            let n = kv::copy_tables(&mut |t, f| src.scan(t, b"", b"", f), &dst)?;
            let (a, b) = (kv::digest(&*src)?, kv::digest(&dst)?);
            if a != b {
                return Err(bad(
                    meta,
                    "the copy differs from etcd's: left as it is".into(),
                ));
            }
            dst.sync()?;
            drop(dst);
            let aside = engine_file.with_extension("toml.migrated");
            fs::rename(&engine_file, &aside).map_err(io(&engine_file))?;
            return Ok(format!(
                "{}; the namespace is in {} now ({} keeps the keys in etcd under {})",
                moved(n, b),
                meta.display(),
                engine.url,
                engine.prefix
            ));
        }
        if self.meta_engine()?.is_some() {
            return Err(bad(engine_file, "the namespace is in etcd already".into()));
        }
        let aside = meta.with_file_name("meta.before-etcd");
        if aside.exists() {
            return Err(bad(
                aside,
                "is in the way (an earlier copy): move it aside first".into(),
            ));
        }
        let src = kv::RocksKv::open(&meta, false)?;
        let (raw, _) = src
            .get(kv::Table::Meta, b"params")?
            .ok_or_else(|| bad(meta.clone(), "not a volume".into()))?;
        let params: VolumeParams = postcard::from_bytes(&raw)
            .map_err(|e| bad(meta.clone(), format!("volume parameters: {e}")))?;
        let engine = MetaEngine::new(to, &params);
        let dst = engine.connect()?;
        if dst.get(kv::Table::Meta, b"format")?.is_some() {
            return Err(bad(
                meta,
                format!(
                    "{} holds a namespace for this volume already, under {}: remove it \
                     (etcdctl del --prefix {}) to copy again",
                    engine.url, engine.prefix, engine.prefix
                ),
            ));
        }
        let n = kv::copy_tables(&mut |t, f| src.scan(t, b"", b"", f), &*dst)?;
        let (a, b) = (kv::digest(&src)?, kv::digest(&*dst)?);
        if a != b {
            return Err(bad(
                meta,
                "etcd's copy differs: the volume stays here".into(),
            ));
        }
        drop(src);
        let text = toml::to_string(&engine).map_err(|e| bad(engine_file.clone(), e.to_string()))?;
        fs::rename(&meta, &aside).map_err(io(&meta))?;
        crate::util::write_secret(&engine_file, text.as_bytes()).map_err(|(p, e)| io(&p)(e))?;
        Ok(format!(
            "{}; the namespace is in {} under {} now ({} is the old copy)",
            moved(n, b),
            engine.url,
            engine.prefix,
            aside.display()
        ))
    }

    /// `meta-engine.toml`, when the namespace is not in `meta/`.
    fn meta_engine(&self) -> Result<Option<MetaEngine>, HomeError> {
        let path = self.paths().meta_engine();
        if !path.exists() {
            return Ok(None);
        }
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let engine: MetaEngine = toml::from_str(&text).map_err(|e| HomeError::Bad {
            path: path.clone(),
            why: e.to_string(),
        })?;
        if engine.v != META_ENGINE_V1 {
            return Err(HomeError::Bad {
                path,
                why: format!(
                    "version {} (this datamesh reads {META_ENGINE_V1})",
                    engine.v
                ),
            });
        }
        Ok(Some(engine))
    }

    /// A member device's home: the volume is another host's.
    pub fn is_member(&self) -> bool {
        self.paths().member().exists()
    }

    /// The addresses a daemon listens on for members: `given`, else config.toml's.
    pub fn listen_addrs(&self, given: &[String]) -> Result<Vec<crate::net::Multiaddr>, HomeError> {
        let cfg = self.config()?;
        let list = if given.is_empty() { &cfg.listen } else { given };
        list.iter()
            .map(|a| {
                a.parse().map_err(|e| HomeError::Bad {
                    path: self.paths().config(),
                    why: format!("listen address {a}: {e}"),
                })
            })
            .collect()
    }

    /// Create a new volume here; refuses to touch an existing one.
    pub fn init(&self, opts: &InitOptions) -> Result<(), HomeError> {
        if self.exists() || self.paths().meta().exists() {
            return Err(HomeError::Exists(self.dir.clone()));
        }
        if !opts.chunk_size.is_power_of_two() || !(64 << 10..=64 << 20).contains(&opts.chunk_size) {
            return Err(HomeError::Bad {
                path: self.dir.clone(),
                why: "chunk size must be a power of two from 64K to 64M".into(),
            });
        }
        crate::chunk::Codec::new(opts.data_shards as usize, opts.parity_shards as usize)
            .map_err(crate::Error::from)?;
        let params = VolumeParams {
            volume_id: rand::random(),
            chunk_size: opts.chunk_size,
            data_shards: opts.data_shards,
            parity_shards: opts.parity_shards,
            inline_max: opts.inline_max.min(opts.chunk_size),
        };
        // The cluster reached before anything is written here.
        let etcd = match &opts.meta {
            Some(url) => {
                let engine = MetaEngine::new(url, &params);
                let kv = engine.connect()?;
                Some((engine, kv))
            }
            None => None,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io(&self.dir))?;
        self.make_device_key()?;
        let cfg = self.paths().config();
        if !cfg.exists() {
            fs::write(&cfg, CONFIG_TEMPLATE).map_err(io(&cfg))?;
        }
        match etcd {
            Some((engine, kv)) => {
                let path = self.paths().meta_engine();
                let text = toml::to_string(&engine).map_err(|e| HomeError::Bad {
                    path: path.clone(),
                    why: e.to_string(),
                })?;
                MetaStore::over(kv, &self.paths().meta(), Some(params))?;
                crate::util::write_secret(&path, text.as_bytes()).map_err(|(p, e)| io(&p)(e))?;
            }
            None => {
                MetaStore::open(&self.paths().meta(), Some(params))?;
                // RocksDB makes its directory with the umask's mode; it holds
                // the chunk keys.
                use std::os::unix::fs::PermissionsExt;
                let meta = self.paths().meta();
                fs::set_permissions(&meta, fs::Permissions::from_mode(0o700)).map_err(io(&meta))?;
            }
        }
        self.mesh_key()?;
        authority_or_make(&self.paths().authority_key())?;
        self.complete(&VolumeKey::generate())
    }

    /// A new device key (what a home's, or a member's, volume secret is
    /// sealed to).
    pub(crate) fn make_device_key(&self) -> Result<(), HomeError> {
        write_secret(
            &self.paths().device_key(),
            &DeviceKey::generate().to_bytes(),
        )
    }

    /// Writes the volume key, last: its presence marks a complete volume (a
    /// new one, or one a recovery rebuilt).
    pub(crate) fn complete(&self, key: &VolumeKey) -> Result<(), HomeError> {
        write_secret(&self.key_path(), key.as_bytes())
    }

    /// The home directory must be its user's alone: one owned by another
    /// user is refused (unless this is root), and the directory and `meta/`
    /// are put back to 0700 if something widened them (a pre-created
    /// /var/lib/datamesh, say): RocksDB's files hold the chunk keys.
    pub(crate) fn check_private(&self) -> Result<(), HomeError> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let me = nix::unistd::geteuid();
        for dir in [self.dir.clone(), self.paths().meta()] {
            if dir != self.dir && self.paths().meta_engine().exists() {
                continue;
            }
            let meta = fs::metadata(&dir).map_err(io(&dir))?;
            if !me.is_root() && meta.uid() != me.as_raw() {
                return Err(HomeError::Bad {
                    path: dir,
                    why: format!(
                        "owned by uid {}, not by this user (uid {me}): refusing to use a volume \
                         another user could read or change",
                        meta.uid()
                    ),
                });
            }
            if meta.mode() & 0o077 != 0 {
                tracing::warn!(
                    "{}: was mode {:o}; set to 0700 (it holds the volume's keys)",
                    dir.display(),
                    meta.mode() & 0o777
                );
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
            }
        }
        Ok(())
    }

    pub fn config(&self) -> Result<Config, HomeError> {
        Config::load(self.paths().config())
    }

    pub fn volume_key(&self) -> Result<VolumeKey, HomeError> {
        let path = self.key_path();
        let bytes = fs::read(&path).map_err(io(&path))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| HomeError::Bad {
            path,
            why: "volume key is not 32 bytes".into(),
        })?;
        Ok(VolumeKey::from_bytes(arr))
    }

    /// The mesh key ring, made on first use (volumes from before the mesh
    /// have none).
    pub fn mesh_keys(&self) -> Result<crate::net::MeshKeys, HomeError> {
        crate::net::MeshKeys::load(&self.paths().mesh_key(), true).map_err(net_err)
    }

    /// The newest mesh key: what tokens and kits carry.
    pub fn mesh_key(&self) -> Result<crate::net::MeshKey, HomeError> {
        Ok(self.mesh_keys()?.current().clone())
    }

    /// This device's peer id (its libp2p identity, made on first use): what
    /// storage peers know the home node by.
    pub fn peer_id(&self) -> Result<crate::net::PeerId, HomeError> {
        let identity = crate::net::load_identity(&self.paths().peer_key()).map_err(net_err)?;
        Ok(identity.public().to_peer_id())
    }

    /// Every storage peer address known: `--bootstrap`, config.toml's
    /// `bootstrap`, and the peers remembered from earlier runs.
    pub fn peer_addrs(&self) -> Result<Vec<crate::net::Multiaddr>, HomeError> {
        let cfg = self.config()?;
        let remembered = fs::read_to_string(self.paths().peers()).unwrap_or_default();
        let mut out: Vec<crate::net::Multiaddr> = Vec::new();
        let given = self
            .bootstrap
            .iter()
            .chain(&cfg.bootstrap)
            .map(String::as_str);
        for a in given.chain(remembered.lines().map(str::trim)) {
            if a.is_empty() || a.starts_with('#') {
                continue;
            }
            let addr = a.parse().map_err(|e| HomeError::Bad {
                path: self.paths().config(),
                why: format!("bootstrap address {a}: {e}"),
            })?;
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
        Ok(out)
    }

    /// The mesh store when storage peers are known, else `None` (shards stay local).
    pub(crate) fn mesh_store(
        &self,
        n: usize,
    ) -> Result<Option<Arc<crate::net::MeshStore>>, HomeError> {
        let addrs = self.peer_addrs()?;
        if addrs.is_empty() {
            return Ok(None);
        }
        let keys = crate::net::LiveKeys::new(self.mesh_keys()?);
        let identity = crate::net::load_identity(&self.paths().peer_key()).map_err(net_err)?;
        let paths = self.paths();
        if !paths.admitted().exists() {
            // The first run that admits peers: those this home used so far
            // (remembered in `peers`) stay admitted.
            let known: std::collections::HashSet<crate::net::PeerId> =
                fs::read_to_string(paths.peers())
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .filter_map(|a| crate::net::peer_of(&a))
                    .collect();
            let list = crate::net::trust::Admitted {
                peers: known,
                retired: Default::default(),
            };
            list.save(&paths.admitted()).map_err(net_err)?;
        }
        let admission = crate::net::Admission {
            admitted: paths.admitted(),
            invites: paths.invites(),
            keys: paths.mesh_key(),
        };
        let client = crate::net::MeshClient::start(
            identity,
            &keys,
            addrs,
            Some(paths.peers()),
            Some(admission),
        )
        .map_err(net_err)?;
        let live = client.wait_for_peers(n, std::time::Duration::from_secs(10));
        if live < n {
            tracing::warn!("{live} of the {n} storage peers a chunk spreads over are reachable");
        }
        // Shards from before the volume had peers stay readable from here until
        // `datamesh repair` moves them onto peers.
        let dir = self.paths().store();
        let local = if dir.join("shards").is_dir() {
            Some(LocalStore::open(&dir).map_err(crate::Error::from)?)
        } else {
            None
        };
        let store = crate::net::MeshStore::new(client, local);
        // Learn where shards are in the background, so that first reads go
        // straight to their holders instead of asking every peer.
        let bg = store.clone();
        std::thread::Builder::new()
            .name("datamesh-survey".into())
            .spawn(move || {
                if let Err(e) = crate::store::ShardStore::survey(&*bg) {
                    tracing::warn!("listing the peers' shards: {e}");
                }
            })
            .map_err(|e| HomeError::Io {
                path: self.dir.clone(),
                source: e,
            })?;
        Ok(Some(store))
    }

    /// The engine's settings: config.toml's, with the cache and dirty
    /// budgets (MiB) overridden when given.
    pub fn engine_config(
        &self,
        cache_mb: Option<usize>,
        dirty_mb: Option<usize>,
    ) -> Result<EngineConfig, HomeError> {
        let cfg = self.config()?;
        Ok(EngineConfig {
            cache_bytes: cache_mb.unwrap_or(cfg.cache_mb) << 20,
            dirty_bytes: dirty_mb.unwrap_or(cfg.dirty_mb) << 20,
            repair_grace: std::time::Duration::from_secs(cfg.repair_grace_secs),
            repair_mbps: cfg.repair_mbps,
        })
    }
}

/// The home's authority key (`HOME/authority.key`, a random ed25519 seed);
/// `None` when the home has none yet (a volume from before it).
pub fn load_authority(path: &Path) -> Result<Option<crate::net::root::RootSigner>, HomeError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(HomeError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut seed: [u8; 32] = bytes.try_into().map_err(|_| HomeError::Bad {
        path: path.to_path_buf(),
        why: "the authority key is not 32 bytes".into(),
    })?;
    let signer = crate::net::root::RootSigner::from_seed(seed);
    zeroize::Zeroize::zeroize(&mut seed);
    Ok(Some(signer))
}

/// The home's authority key, made now (random, 0600) if it has none; and
/// whether it was made by this call (`false`: it was there, or another
/// process made it at the same moment and this one reads it).
pub fn authority_or_make(path: &Path) -> Result<(crate::net::root::RootSigner, bool), HomeError> {
    let mut seed: [u8; 32] = rand::random();
    let made = crate::util::write_secret_new(path, &seed)
        .map_err(|(path, source)| HomeError::Io { path, source })?;
    zeroize::Zeroize::zeroize(&mut seed);
    let signer = load_authority(path)?.ok_or_else(|| HomeError::Bad {
        path: path.to_path_buf(),
        why: "vanished as it was made".into(),
    })?;
    Ok((signer, made))
}

fn net_err(e: crate::net::NetError) -> HomeError {
    match e {
        crate::net::NetError::Io { path, source } => HomeError::Io { path, source },
        crate::net::NetError::Bad(why) => HomeError::Bad {
            path: PathBuf::from("mesh"),
            why,
        },
    }
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), HomeError> {
    crate::util::write_secret(path, bytes).map_err(|(path, source)| HomeError::Io { path, source })
}
