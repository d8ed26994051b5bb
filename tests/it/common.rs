use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_datamesh");

/// A volume home in a temp dir, and the binary pointed at it.
pub struct Vol {
    pub dir: tempfile::TempDir,
}

impl Vol {
    pub fn new() -> Vol {
        let dir = tempfile::Builder::new()
            .prefix("datamesh-it")
            .tempdir_in(scratch())
            .unwrap();
        Vol { dir }
    }
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--home")
            .arg(self.home())
            .args(args)
            .stdin(Stdio::null());
        c.env_remove("RUST_LOG");
        c
    }
    /// Run and return the output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    /// Run and require success.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "datamesh {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
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
}

/// Test files go under /var/tmp (a real disk) rather than a RAM-backed /tmp.
pub fn scratch() -> &'static Path {
    Path::new("/var/tmp")
}

/// Deterministic incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
