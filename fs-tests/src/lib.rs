//! Helpers for tests that mount the real `datamesh` binary and drive real tools on
//! the mountpoint. Every mount is undone by a drop guard, even when a test fails.

pub mod locks;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `datamesh` binary built beside this test binary (target/release/datamesh).
pub fn datamesh_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DATAMESH_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/release/deps/<test> → target/release/datamesh
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("datamesh")
}

/// The checkout these tests belong to. Asked at run time (cargo sets
/// `CARGO_MANIFEST_DIR` for the tests it runs): a test binary built in one
/// clone and found fresh by another sharing the target dir would otherwise
/// look for scripts and fixtures where the first clone was.
pub fn repo() -> PathBuf {
    let here = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    here.parent()
        .expect("fs-tests sits in the checkout")
        .to_path_buf()
}

/// Whether this host can mount FUSE filesystems at all.
pub fn fuse_available() -> bool {
    Path::new("/dev/fuse").exists() && Command::new("fusermount3").arg("-V").output().is_ok()
}

/// A volume home and a mountpoint in a temp dir.
pub struct Volume {
    pub dir: tempfile::TempDir,
}

impl Volume {
    pub fn new() -> Volume {
        let dir = tempfile::Builder::new()
            .prefix("datamesh-fs")
            .tempdir_in("/var/tmp")
            .unwrap();
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        Volume { dir }
    }
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }
    pub fn mountpoint(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
    /// `datamesh --home HOME`, ready for a command and its arguments.
    pub fn datamesh(&self) -> Command {
        let mut c = Command::new(datamesh_bin());
        c.arg("--home").arg(self.home());
        c
    }

    /// `datamesh --home HOME ARGS`, with no input and the default log level.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.datamesh();
        c.args(args).stdin(Stdio::null()).env_remove("RUST_LOG");
        c
    }

    /// Runs `datamesh ARGS` and returns its output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs `datamesh ARGS`, which must succeed; returns its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "datamesh {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Where the embedded store keeps shard `id` (hex).
    pub fn shard_path(&self, id: &str) -> PathBuf {
        self.home().join("store/shards").join(&id[0..2]).join(id)
    }

    /// The shard ids of chunk `idx` of a file, from `stat --chunks`.
    pub fn shards_of(&self, path: &str, idx: u64) -> Vec<String> {
        let out = self.ok(&["stat", "--chunks", path]);
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("Chunk: {idx} ")))
            .unwrap_or_else(|| panic!("no chunk {idx} in {out}"));
        line.split("shards ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    /// A join token from `datamesh invite` (its last line), good for many peers.
    pub fn invite(&self) -> String {
        let out = self
            .datamesh()
            .args(["invite", "--uses", "1000"])
            .output()
            .unwrap();
        assert!(out.status.success(), "invite failed");
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines().last().expect("a token line").to_string()
    }

    /// Appends `line` to the home's config.toml (the volume must exist).
    pub fn config(&self, line: &str) {
        let path = self.home().join("config.toml");
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        text.push_str(line);
        text.push('\n');
        std::fs::write(&path, text).unwrap();
    }

    /// `datamesh get REMOTE LOCAL` must succeed and give `expect`'s bytes;
    /// returns what it logged.
    pub fn get_same(&self, remote: &str, local: &Path, expect: &Path) -> String {
        let _ = std::fs::remove_file(local);
        let out = self
            .datamesh()
            .arg("get")
            .arg(remote)
            .arg(local)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "get {remote}: {err}");
        assert!(
            std::fs::read(local).unwrap() == std::fs::read(expect).unwrap(),
            "{remote} differs from {}",
            expect.display()
        );
        err
    }

    /// `datamesh fsck` on the (unmounted) volume must report it clean.
    pub fn assert_fsck_clean(&self) {
        let out = self.datamesh().arg("fsck").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("fsck: clean"),
            "fsck: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Mount in the background; the guard unmounts.
    pub fn mount(&self) -> Mount {
        self.mount_with(&[])
    }

    /// Mount with extra `datamesh mount` flags.
    pub fn mount_with(&self, flags: &[&str]) -> Mount {
        let child = self
            .datamesh()
            .arg("mount")
            .arg("--foreground")
            .args(flags)
            .arg(self.mountpoint())
            .stdin(Stdio::null())
            .spawn()
            .expect("start datamesh mount");
        let mut m = Mount {
            child: Some(child),
            at: self.mountpoint(),
        };
        let start = Instant::now();
        // A stale mount left by a killed process is listed too: wait for a live one.
        while !is_mounted(&m.at) || std::fs::metadata(&m.at).is_err() {
            if let Some(st) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("datamesh mount exited early: {st}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "mount did not appear"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }
}

impl Volume {
    /// `datamesh serve` on this volume, answering once this returns.
    pub fn serve(&self) -> Daemon {
        self.serve_with(&[], &[])
    }

    /// `datamesh GLOBAL… serve ARGS…` (e.g. `--bootstrap` flags, `--listen`).
    pub fn serve_with(&self, global: &[String], args: &[&str]) -> Daemon {
        let child = self
            .datamesh()
            .args(global)
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("start datamesh serve");
        let mut d = Daemon {
            child: Some(child),
            sock: self.home().join("volume.sock"),
        };
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&d.sock).is_err() {
            if let Some(st) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("datamesh serve exited early: {st}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the daemon's socket did not appear"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }
}

/// A running `datamesh serve`; dropping it stops it (SIGTERM, then SIGKILL).
pub struct Daemon {
    child: Option<Child>,
    pub sock: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The daemon's resident set size now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, and the exit status's success (false after 30 s).
    pub fn stop(mut self) -> bool {
        self.end()
    }

    /// `kill -9`, as a crash would (the socket file stays behind).
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn end(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        wait_or_kill(&mut child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.end();
    }
}

/// A mount left behind by a killed mount process (a test that crashes one
/// on purpose, or fails before remounting) is detached when the volume goes,
/// so no stale mount outlives its test.
impl Drop for Volume {
    fn drop(&mut self) {
        let at = self.mountpoint();
        if is_mounted(&at) {
            let _ = Command::new("fusermount3").arg("-uz").arg(&at).status();
        }
    }
}

impl Default for Volume {
    fn default() -> Self {
        Self::new()
    }
}

pub fn is_mounted(at: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let at = at.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&*at))
}

/// A live mount; dropping it unmounts (lazily if busy) and reaps the process.
pub struct Mount {
    child: Option<Child>,
    pub at: PathBuf,
}

impl Mount {
    /// The mount process's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("mount is running").id()
    }

    /// The peak resident set size of the mount process so far, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.child.as_ref().expect("mount is running").id(), "VmHWM")
    }

    /// Whether the mount process exits within `d` (reaped if it did).
    pub fn exits_within(&mut self, d: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < d {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().unwrap().is_some()
            {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Unmount and wait for the process; returns its exit status success.
    pub fn unmount(mut self) -> bool {
        self.stop()
    }

    /// `kill -9` the mount process, leaving a stale mount behind as a crash would.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if is_mounted(&self.at) {
            let ok = Command::new("fusermount3").arg("-u").arg(&self.at).status();
            if !matches!(ok, Ok(s) if s.success()) {
                let _ = Command::new("fusermount3")
                    .arg("-uz")
                    .arg(&self.at)
                    .status();
            }
        }
        wait_or_kill(&mut child)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits up to 30 s for `child` to exit; its success, or false (then killed).
fn wait_or_kill(child: &mut Child) -> bool {
    let start = Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return st.success();
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Skips the calling test (returning early) on a host without FUSE; fails it when
/// one of the tools is missing, since scripts/setup.sh installs them all.
#[macro_export]
macro_rules! require {
    ($($tool:expr),*) => {
        if !$crate::fuse_available() {
            eprintln!("skipped: no /dev/fuse or fusermount3");
            return;
        }
        $(
            assert!(
                $crate::have($tool),
                "{} is not installed: run scripts/setup.sh",
                $tool
            );
        )*
    };
}

/// Whether `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Run a shell command in `dir`, panicking with its output if it fails.
/// Waits until `ok()`, asking every 200 ms; fails the test naming `what`
/// after `secs`. How long it took.
pub fn within(what: &str, secs: u64, ok: &dyn Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

pub fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Storage peers (`datamesh node`) on loopback, each its own process with its
/// own data dir, invited by a [`Volume`]'s home. Dropping it kills them all.
pub struct Cluster {
    dir: PathBuf,
    token: String,
    pub nodes: Vec<Node>,
}

pub struct Node {
    pub data: PathBuf,
    pub port: u16,
    /// `/ip4/127.0.0.1/tcp/PORT/p2p/ID`, as the node printed it.
    pub addr: String,
    /// Joined with another mesh's token.
    pub stranger: bool,
    child: Option<Child>,
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `n` consecutive ports nothing listens on right now.
pub fn free_ports(n: u16) -> u16 {
    loop {
        let first = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let all_free = (1..n).all(|k| {
            first
                .checked_add(k)
                .is_some_and(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        });
        if all_free {
            return first;
        }
    }
}

impl Cluster {
    /// `n` nodes joined with a token from `v`'s `datamesh invite`.
    pub fn start(v: &Volume, n: usize) -> Cluster {
        let mut c = Cluster {
            dir: v.dir.path().join("nodes"),
            token: v.invite(),
            nodes: Vec::new(),
        };
        for _ in 0..n {
            c.add(&[]);
        }
        c
    }

    /// Nodes on data dirs that joined a mesh before (a fixture's), each
    /// started on a new port; the token is unknown (`token()` is empty).
    pub fn adopt(dirs: &[PathBuf]) -> Cluster {
        let mut c = Cluster {
            dir: dirs[0]
                .parent()
                .expect("data dirs are in a dir")
                .join("nodes"),
            token: String::new(),
            nodes: Vec::new(),
        };
        for d in dirs {
            let i = c.nodes.len();
            c.nodes.push(Node {
                data: d.clone(),
                port: free_port(),
                addr: String::new(),
                stranger: false,
                child: None,
            });
            c.launch_fresh(i, &[]);
        }
        c
    }

    /// Starts one more node (with extra `datamesh node` flags); returns its index.
    pub fn add(&mut self, extra: &[&str]) -> usize {
        let i = self.push_node("node", false);
        let token = self.token.clone();
        self.launch_fresh(i, &[&["--join", &token], extra].concat());
        i
    }

    /// Starts one more node joined with `token` (maybe a bad one); returns its
    /// index, or the node's own error when it exits instead of listening.
    pub fn try_add_with_token(&mut self, token: &str) -> Result<usize, String> {
        let i = self.push_node("node", false);
        self.launch(i, &["--join", token]).map(|()| i)
    }

    /// The mesh's join token, as `datamesh invite` printed it.
    pub fn token(&self) -> &str {
        &self.token
    }

    fn push_node(&mut self, name: &str, stranger: bool) -> usize {
        let i = self.nodes.len();
        self.nodes.push(Node {
            data: self.dir.join(format!("{name}{i}")),
            port: free_port(),
            addr: String::new(),
            stranger,
            child: None,
        });
        i
    }

    /// Starts node `i` with another mesh's token (a stranger).
    pub fn add_stranger(&mut self, other: &Volume) -> usize {
        let i = self.push_node("stranger", true);
        self.launch_fresh(i, &["--join", &other.invite()]);
        i
    }

    /// Starts a new node, on another free port if a parallel test took the
    /// one picked meanwhile.
    fn launch_fresh(&mut self, i: usize, extra: &[&str]) {
        for _ in 0..5 {
            match self.launch(i, extra) {
                Ok(()) => return,
                Err(why) if why.contains("Address already in use") => {
                    self.nodes[i].port = free_port();
                }
                Err(why) => panic!("{why}"),
            }
        }
        panic!("node {i}: no free port after 5 tries");
    }

    fn launch(&mut self, i: usize, extra: &[&str]) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).unwrap();
        let out_path = self.dir.join(format!("node{i}.out"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node{i}.log")))
            .unwrap();
        let mut cmd = Command::new(datamesh_bin());
        cmd.arg("node")
            .arg("--data")
            .arg(&self.nodes[i].data)
            .arg("--listen")
            .arg(format!("/ip4/127.0.0.1/tcp/{}", self.nodes[i].port))
            .args(extra);
        if i > 0 {
            cmd.arg("--bootstrap").arg(&self.nodes[0].addr);
        }
        // What a node learns from the home (its member list) is logged at info.
        let child = cmd
            .env("RUST_LOG", "warn,datamesh::net=info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(log)
            .spawn()
            .expect("start datamesh node");
        self.nodes[i].child = Some(child);
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&out_path).unwrap_or_default();
            if let Some(addr) = text
                .lines()
                .find_map(|l| l.strip_prefix("datamesh node: listening on "))
            {
                self.nodes[i].addr = addr.to_string();
                return Ok(());
            }
            if let Some(st) = self.nodes[i].child.as_mut().unwrap().try_wait().unwrap() {
                self.nodes[i].child = None;
                let log = std::fs::read_to_string(self.dir.join(format!("node{i}.log")));
                return Err(format!(
                    "node {i} exited ({st}): {}",
                    log.unwrap_or_default()
                ));
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "node {i} did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Node `i`'s process id.
    pub fn pid(&self, i: usize) -> u32 {
        self.nodes[i].child.as_ref().expect("node is running").id()
    }

    /// Node `i`'s resident set size now, in KiB.
    pub fn rss_kib(&self, i: usize) -> u64 {
        proc_status_kib(
            self.nodes[i].child.as_ref().expect("node is running").id(),
            "VmRSS",
        )
    }

    /// Whether node `i`'s process is still running.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes[i]
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Starts node `i` again on its data dir and port.
    pub fn restart(&mut self, i: usize) {
        self.restart_with(i, &[]);
    }

    /// Starts node `i` again on its data dir, listening on another port (a
    /// machine that came back with a new address).
    pub fn restart_elsewhere(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} is running");
        self.nodes[i].port = free_port();
        self.launch_fresh(i, &[]);
    }

    /// Starts node `i` again on its data dir and port, with extra flags.
    pub fn restart_with(&mut self, i: usize, extra: &[&str]) {
        assert!(self.nodes[i].child.is_none(), "node {i} is running");
        if let Err(why) = self.launch(i, extra) {
            panic!("{why}");
        }
    }

    /// `--bootstrap ADDR` for every node started so far (strangers excluded).
    pub fn bootstrap_flags(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| !n.stranger)
            .flat_map(|n| ["--bootstrap".to_string(), n.addr.clone()])
            .collect()
    }

    /// The shard files node `i` holds.
    pub fn shard_files(&self, i: usize) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let top = self.nodes[i].data.join("store/shards");
        for d in std::fs::read_dir(top).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                out.push(f.path());
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `kB` figure of /proc/PID/status (`VmRSS`, `VmHWM`, …).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// `GET /metrics` on `addr`, the body.
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of the metric line starting with `name` (0 when absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

/// A recovery kit's token as `datamesh kit export` writes it (`dmkit1`
/// without `authority`, `dmkit2` with it), made from parts an attacker may
/// hold: the postcard body (fixed arrays raw, varint lengths and integers)
/// and four bytes of its BLAKE3 hash, in hex.
pub fn forge_kit(
    volume_id: [u8; 16],
    secret: [u8; 32],
    mesh: [u8; 32],
    peers: &[String],
    authority: Option<[u8; 32]>,
) -> String {
    fn varint(out: &mut Vec<u8>, mut n: u64) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    let mut body = Vec::new();
    body.extend(volume_id);
    body.extend(secret);
    body.extend(mesh);
    varint(&mut body, 0); // the home's peer id: not needed to recover
    varint(&mut body, peers.len() as u64);
    for p in peers {
        varint(&mut body, p.len() as u64);
        body.extend(p.as_bytes());
    }
    varint(&mut body, 1_800_000_000);
    let prefix = match authority {
        Some(a) => {
            body.push(1);
            body.extend(a);
            "dmkit2"
        }
        None => "dmkit1",
    };
    let check = blake3::hash(&body);
    format!("{prefix}{}{}\n", hex(&body), hex(&check.as_bytes()[..4]))
}

/// A file's bytes as a fixed-size array (a key file).
pub fn key_file<const N: usize>(path: &Path) -> [u8; N] {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .try_into()
        .unwrap_or_else(|_| panic!("{}: not {N} bytes", path.display()))
}

/// An etcd of `n` members on loopback (Debian's etcd-server), each with its
/// data in a directory of its own, killed when dropped. Its endpoints are
/// [`Etcd::url`].
pub struct Etcd {
    members: Vec<Option<Child>>,
    clients: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    pub fn start(n: usize) -> Etcd {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let first = free_ports(2 * n as u16);
        let peer = |i: usize| format!("http://127.0.0.1:{}", first + 2 * i as u16 + 1);
        let cluster: Vec<String> = (0..n).map(|i| format!("m{i}={}", peer(i))).collect();
        let clients: Vec<u16> = (0..n).map(|i| first + 2 * i as u16).collect();
        let members = (0..n)
            .map(|i| {
                let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).unwrap();
                let client = format!("http://127.0.0.1:{}", clients[i]);
                Some(
                    Command::new("etcd")
                        .arg(format!("--name=m{i}"))
                        .arg(format!(
                            "--data-dir={}",
                            dir.path().join(format!("m{i}")).display()
                        ))
                        .arg(format!("--listen-client-urls={client}"))
                        .arg(format!("--advertise-client-urls={client}"))
                        .arg(format!("--listen-peer-urls={}", peer(i)))
                        .arg(format!("--initial-advertise-peer-urls={}", peer(i)))
                        .arg(format!("--initial-cluster={}", cluster.join(",")))
                        .stdout(Stdio::null())
                        .stderr(log)
                        .spawn()
                        .expect("etcd (scripts/setup.sh installs etcd-server)"),
                )
            })
            .collect();
        let e = Etcd {
            members,
            clients,
            _dir: dir,
        };
        let endpoints = e.endpoints();
        within("etcd answers", 30, &|| {
            Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={endpoints}"))
                .args(["endpoint", "health"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        e
    }

    fn endpoints(&self) -> String {
        let list: Vec<String> = self
            .clients
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        list.join(",")
    }

    /// `etcd://127.0.0.1:P1,127.0.0.1:P2,…`
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints())
    }

    /// `kill -9` of member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
