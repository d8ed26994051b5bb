//! Helpers for tests that mount the real `datamesh` binary and drive real tools on
//! the mountpoint. Every mount is undone by a drop guard, even when a test fails.

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

    /// `datamesh fsck` on the (unmounted) volume must report it clean.
    pub fn assert_fsck_clean(&self) {
        let out = self.datamesh().arg("fsck").output().unwrap();
        assert!(
            out.status.success(),
            "fsck: {}",
            String::from_utf8_lossy(&out.stdout)
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
    /// The peak resident set size of the mount process so far, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("mount is running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
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
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop();
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
