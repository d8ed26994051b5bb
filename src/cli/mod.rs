//! The `datamesh` command line: argument parsing, the commands, and how errors are
//! shown (`datamesh: CMD: PATH: cause`, exit 1; usage errors exit 2).

mod bench;
mod commands;
mod kit;
mod mesh;
mod mount;
mod output;
mod paths;
mod transfer;
mod webdav;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum KitAction {
    /// Print the kit, to keep on paper or in a password manager.
    Export {
        /// Also print it as a QR code.
        #[arg(long)]
        qr: bool,
    },
    /// Read a kit (FILE, or - for standard input) and say what it holds.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
pub enum MetaAction {
    /// Move the namespace into an etcd cluster (--to etcd://HOST:PORT,…) or
    /// back into this host's RocksDB (--to rocksdb), with no mount or serve
    /// running: every key is copied and compared before the volume uses
    /// the copy; the old copy is kept.
    Migrate {
        #[arg(long, value_name = "etcd://HOST:PORT,…|rocksdb")]
        to: String,
    },
}

#[derive(Subcommand)]
pub enum WebdavAction {
    /// Add a user of the WebDAV gateway (the password is asked, or read
    /// from standard input's first line when it is not a terminal).
    Adduser {
        name: String,
        /// The user may read but change nothing.
        #[arg(long)]
        read_only: bool,
    },
    /// Remove a user of the WebDAV gateway (a running daemon refuses them
    /// within a second).
    Deluser {
        name: String,
        /// Remove the last user too: a gateway on a loopback address that
        /// starts with no users serves everyone on this host, unasked.
        #[arg(long)]
        open: bool,
    },
    /// The users of the WebDAV gateway.
    Users,
}

#[derive(Subcommand)]
pub enum SnapshotAction {
    /// Take a read-only snapshot of the whole volume now (no file data is
    /// copied); it is seen at /.snapshots/NAME.
    Create { name: String },
    /// Every snapshot: its name, when it was taken, and the stored bytes only
    /// it holds (what deleting it and `gc` would free).
    List,
    /// Delete a snapshot; `gc` then frees what only it held.
    Delete { name: String },
}

#[derive(Subcommand)]
pub enum PeersAction {
    /// Admit a peer by id (one that joined without a token from this home).
    Add { id: String },
    /// Retire a peer: it gets no new shards and is no longer counted, so
    /// `repair` rebuilds what it held on the others.
    Remove { id: String },
}

#[derive(clap::Subcommand)]
pub enum MembersAction {
    /// Cut a device off at once: the home refuses its requests, the storage
    /// peers its shard requests.
    Revoke { id: String },
}

#[derive(Parser)]
#[command(
    name = "datamesh",
    version,
    about = "An encrypted, erasure-coded filesystem you can mount"
)]
pub struct Cli {
    /// The device's home directory (keys, namespace, local shards).
    #[arg(long, global = true, env = "DATAMESH_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// A storage peer to reach (multiaddr ending in /p2p/PEER_ID); repeatable.
    /// Peers seen are remembered in the home directory, so later runs need none.
    #[arg(long, global = true, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// Log more (repeat for more still); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new volume in the home directory.
    Init {
        /// Chunk size (e.g. 4M, 1M, 256K): a power of two from 64K to 64M.
        #[arg(long, default_value = "4M", value_parser = parse_size)]
        chunk_size: u64,
        /// Data shards per chunk (k).
        #[arg(long, default_value_t = 4)]
        data_shards: u8,
        /// Parity shards per chunk (m): how many lost shards a chunk survives.
        #[arg(long, default_value_t = 2)]
        parity_shards: u8,
        /// Keep the namespace in an etcd cluster (etcd://HOST:PORT,HOST:PORT,…)
        /// instead of this host's RocksDB.
        #[arg(long, value_name = "etcd://HOST:PORT,…")]
        meta: Option<String>,
    },
    /// List a directory.
    Ls {
        /// Long listing: mode, links, owner, size, mtime.
        #[arg(short, long)]
        long: bool,
        /// List subdirectories too.
        #[arg(short = 'R', long)]
        recursive: bool,
        #[arg(default_value = "/")]
        paths: Vec<String>,
    },
    /// Create directories.
    Mkdir {
        /// Create missing parents; an existing directory is fine.
        #[arg(short, long)]
        parents: bool,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Rename or move files and directories (into DST if it is a directory).
    Mv {
        #[arg(required = true, num_args = 2..)]
        paths: Vec<String>,
    },
    /// Remove files (and directories with -r).
    Rm {
        #[arg(short, long)]
        recursive: bool,
        /// Ignore paths that do not exist.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Copy local files into the volume (`-` reads standard input).
    Put {
        #[arg(short, long)]
        recursive: bool,
        /// LOCAL… REMOTE
        #[arg(required = true, num_args = 2..)]
        paths: Vec<String>,
    },
    /// Copy files out of the volume (`-` as LOCAL writes standard output).
    Get {
        #[arg(short, long)]
        recursive: bool,
        /// REMOTE… LOCAL
        #[arg(required = true, num_args = 2..)]
        paths: Vec<String>,
    },
    /// Print files to standard output.
    Cat {
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Show a file's attributes.
    Stat {
        /// Also list each chunk and the ids of its shards.
        #[arg(long)]
        chunks: bool,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Show space used: logical bytes, stored bytes, shards, k+m.
    Df,
    /// Check the volume: names, inodes, chunk maps, shards, reference counts.
    Fsck {
        /// Rebuild chunks that lost shards but are still readable.
        #[arg(long)]
        repair: bool,
    },
    /// Delete shards that nothing has referenced for the grace period.
    Gc {
        /// Seconds a shard must have been unreferenced (default: config.toml's gc_grace_secs).
        #[arg(long)]
        grace: Option<u64>,
    },
    /// Mount the volume at MOUNTPOINT; returns once it is ready and serves in the background.
    Mount(MountArgs),
    /// Flush everything buffered, then unmount.
    Umount { mountpoint: PathBuf },
    /// Hold the volume for this host's commands without mounting it (a
    /// headless home node); stays in the foreground until SIGINT or SIGTERM.
    Serve {
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Run a storage peer: holds shards for the mesh, no keys, no names.
    Node(mesh::NodeArgs),
    /// Print a join token for a new storage peer, or with --member for a
    /// member device (its last line).
    Invite {
        /// A token for a member device (`datamesh join`), not a storage peer.
        #[arg(long)]
        member: bool,
        /// An address of a running peer to put in the token (repeatable); the
        /// known storage peers are put in too.
        #[arg(long, value_name = "MULTIADDR")]
        address: Vec<String>,
        /// How long the token stays valid (e.g. 24h, 30m, 7d).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// How many storage peers the token may admit.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        uses: u32,
    },
    /// Show the storage peers and how much loss the volume survives now.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild lost shards onto reachable peers until every chunk is whole again.
    Repair,
    /// Ask every peer to re-hash what it holds, then repair what was bad.
    Scrub,
    /// Make this home directory a member device of another host's volume,
    /// with a token from `datamesh invite --member` there.
    Join {
        token: String,
        /// This device's name in the home's member list [default: the host name].
        #[arg(long)]
        name: Option<String>,
    },
    /// List the member devices of this volume; revoke one.
    Members {
        #[command(subcommand)]
        action: Option<MembersAction>,
    },
    /// List the storage peers this home admitted; add or remove one.
    Peers {
        #[command(subcommand)]
        action: Option<PeersAction>,
    },
    /// The recovery kit: the volume's master key and where its peers are,
    /// to keep away from its machines.
    Kit {
        #[command(subcommand)]
        action: KitAction,
    },
    /// Where the volume's namespace is kept.
    Meta {
        #[command(subcommand)]
        action: MetaAction,
    },
    /// Rebuild this home from the copy of the namespace on the storage peers,
    /// after the home's disk is lost: needs the recovery kit (`kit export`).
    /// The volume's home moves here; the old home node is refused from then
    /// on.
    Recover {
        /// The kit's file (`-`: standard input).
        #[arg(long)]
        kit: PathBuf,
    },
    /// Users of the WebDAV gateway (`serve --webdav`), kept in config.toml.
    Webdav {
        #[command(subcommand)]
        action: WebdavAction,
    },
    /// Read-only, point-in-time copies of the whole volume, seen at
    /// /.snapshots/NAME/ (restore with `cp` or `datamesh get` out of them).
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write man pages for datamesh and each command into DIR (for packaging).
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// Time namespace calls and small-file creates (see scripts/bench-members.sh).
    #[command(hide = true)]
    BenchMeta {
        /// getattr calls to time.
        #[arg(long, default_value_t = 2000)]
        stats: usize,
        /// 4 KiB files to put.
        #[arg(long, default_value_t = 300)]
        creates: usize,
        /// The volume directory to work in (made when missing).
        dir: String,
    },
    /// Measure the chunk pipeline (see scripts/bench-engine.sh).
    #[command(hide = true)]
    Bench {
        /// Bytes to write and read through the pipeline.
        #[arg(long, default_value = "1G", value_parser = parse_size)]
        size: u64,
        /// Directory for the scratch volume.
        #[arg(long, default_value = "/var/tmp")]
        dir: PathBuf,
    },
}

/// Sizes like `4M`, `512K`, `1G` or plain bytes.
/// `--FLAG VALUE` for each flag that has a value.
fn push_flags<const N: usize>(out: &mut Vec<String>, named: [(&str, Option<String>); N]) {
    for (flag, value) in named {
        if let Some(v) = value {
            out.push(flag.to_string());
            out.push(v);
        }
    }
}

fn absolute(p: &Option<PathBuf>) -> Option<String> {
    p.as_ref()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .map(|p| p.display().to_string())
}

/// What a volume daemon (`mount`, `serve`) is started with.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DaemonArgs {
    /// Decoded chunks kept in memory, MiB (overrides config.toml's cache_mb).
    #[arg(long, value_name = "MIB")]
    pub cache_mb: Option<usize>,
    /// Unsealed writes held in memory, MiB (overrides config.toml's dirty_mb).
    #[arg(long, value_name = "MIB")]
    pub dirty_mb: Option<usize>,
    /// Listen for member devices here (repeatable; overrides config.toml's listen).
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Serve --metrics (and its dashboard) on a non-loopback address with no
    /// login: anyone who reaches it reads them.
    #[arg(long)]
    pub metrics_open: bool,
    /// Serve the volume over WebDAV at http://ADDR/dav/ (e.g. 127.0.0.1:8080;
    /// another address needs users: `webdav adduser`).
    #[arg(long, value_name = "ADDR")]
    pub webdav: Option<std::net::SocketAddr>,
    /// Allow passwords over plain HTTP on a non-loopback --webdav address.
    #[arg(long)]
    pub webdav_insecure: bool,
    /// The certificate (PEM, its chain after it) to serve --webdav over
    /// HTTPS with.
    #[arg(long, value_name = "PEM", requires = "webdav_key")]
    pub webdav_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "webdav_cert")]
    pub webdav_key: Option<PathBuf>,
}

impl DaemonArgs {
    /// The flags that give the same daemon again (for the background process).
    pub fn to_flags(&self) -> Vec<String> {
        let mut out = Vec::new();
        let named = [
            ("--cache-mb", self.cache_mb.map(|v| v.to_string())),
            ("--dirty-mb", self.dirty_mb.map(|v| v.to_string())),
            ("--metrics", self.metrics.map(|v| v.to_string())),
            ("--webdav", self.webdav.map(|v| v.to_string())),
            // Absolute: the background process may not start where this did.
            ("--webdav-cert", absolute(&self.webdav_cert)),
            ("--webdav-key", absolute(&self.webdav_key)),
        ];
        push_flags(&mut out, named);
        for a in &self.listen {
            out.push("--listen".to_string());
            out.push(a.clone());
        }
        if self.webdav_insecure {
            out.push("--webdav-insecure".to_string());
        }
        if self.metrics_open {
            out.push("--metrics-open".to_string());
        }
        out
    }
}

/// `datamesh mount`: flags, or the same as `-o` options (as /etc/fstab gives them).
#[derive(clap::Args, Clone, Debug)]
pub struct MountArgs {
    pub mountpoint: PathBuf,
    /// Stay attached (for systemd and tests); SIGINT/SIGTERM unmount.
    #[arg(long)]
    pub foreground: bool,
    /// Let other users access the mount (needs user_allow_other in /etc/fuse.conf).
    #[arg(long)]
    pub allow_other: bool,
    /// Mount read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Seconds the kernel caches file attributes [default: 1].
    #[arg(long, value_name = "SECS")]
    pub attr_ttl: Option<f64>,
    /// Seconds the kernel caches name lookups [default: 1].
    #[arg(long, value_name = "SECS")]
    pub entry_ttl: Option<f64>,
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Comma-separated mount options: allow_other, ro, rw, attr_ttl=SECS,
    /// entry_ttl=SECS, cache_mb=MIB, dirty_mb=MIB; fstab's generic options
    /// (defaults, _netdev, nofail, noauto, user, …) are accepted and ignored.
    #[arg(short = 'o', value_name = "OPTS", value_delimiter = ',')]
    pub options: Vec<String>,
}

impl MountArgs {
    /// Folds the `-o` options into the flags; an unknown option is an error.
    pub fn resolve(mut self) -> Result<MountArgs, String> {
        for opt in std::mem::take(&mut self.options) {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt.as_str(), None),
            };
            let secs = |v: Option<&str>| -> Result<f64, String> {
                v.and_then(|v| v.parse::<f64>().ok())
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| format!("-o {opt}: expected a number of seconds"))
            };
            let mib = |v: Option<&str>| -> Result<usize, String> {
                v.and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("-o {opt}: expected a size in MiB"))
            };
            match key {
                "allow_other" => self.allow_other = true,
                "ro" => self.read_only = true,
                "rw" => self.read_only = false,
                "attr_ttl" | "attr_timeout" => self.attr_ttl = Some(secs(value)?),
                "entry_ttl" | "entry_timeout" => self.entry_ttl = Some(secs(value)?),
                "cache_mb" => self.daemon.cache_mb = Some(mib(value)?),
                "dirty_mb" => self.daemon.dirty_mb = Some(mib(value)?),
                "defaults"
                | "_netdev"
                | "nofail"
                | "noauto"
                | "auto"
                | "user"
                | "users"
                | "nouser"
                | "exec"
                | "noexec"
                | "suid"
                | "nosuid"
                | "dev"
                | "nodev"
                | "atime"
                | "noatime"
                | "relatime"
                | "x-systemd.automount" => {}
                k if k.starts_with("x-") || k.starts_with("comment=") => {}
                _ => return Err(format!("-o {opt}: unknown mount option")),
            }
        }
        for (name, v) in [("attr-ttl", self.attr_ttl), ("entry-ttl", self.entry_ttl)] {
            if v.is_some_and(|s| !s.is_finite() || s < 0.0) {
                return Err(format!("--{name}: expected a number of seconds"));
            }
        }
        Ok(self)
    }

    /// The flags that give the same mount again (for the background process).
    pub fn to_flags(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.allow_other {
            out.push("--allow-other".to_string());
        }
        if self.read_only {
            out.push("--read-only".to_string());
        }
        let named = [
            ("--attr-ttl", self.attr_ttl.map(|v| v.to_string())),
            ("--entry-ttl", self.entry_ttl.map(|v| v.to_string())),
        ];
        push_flags(&mut out, named);
        out.extend(self.daemon.to_flags());
        out
    }

    pub fn fs_options(&self) -> crate::fuse::MountOptions {
        let d = crate::fuse::MountOptions::default();
        let dur = |s: Option<f64>, d| s.map_or(d, std::time::Duration::from_secs_f64);
        crate::fuse::MountOptions {
            allow_other: self.allow_other,
            read_only: self.read_only,
            attr_ttl: dur(self.attr_ttl, d.attr_ttl),
            entry_ttl: dur(self.entry_ttl, d.entry_ttl),
            source: d.source,
        }
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1u64 << 40,
                _ => return Err(format!("unknown size suffix in '{s}' (use K, M, G or T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("'{s}' is not a size (like 4M or 1G)"))
}

/// Run the command line; returns the process exit code.
pub fn main() -> i32 {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let name = matches.subcommand_name().unwrap_or("datamesh").to_string();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    use tracing_subscriber::prelude::*;
    // The log to stderr, and the dashboard's recent warnings and errors.
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .with(
            crate::dashboard::recent::Recent
                .with_filter(tracing_subscriber::filter::LevelFilter::WARN),
        )
        .init();
    let mut home = crate::home::Home::locate(cli.home);
    home.bootstrap = cli.bootstrap;
    commands::run(&home, cli.cmd, &name)
}

#[cfg(test)]
mod tests {
    /// clap checks names, defaults and conflicts only in debug builds: run
    /// those checks here, where everything builds in release.
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
