//! Differential exerciser: seeded random sequences of file operations applied both
//! to the mount and to a plain directory on the local disk. Every result (value or
//! errno) must be the same, and so must the trees after a remount.
//!
//! `DATAMESH_SEED=N` replays a run; `DATAMESH_OPS=N` changes its length.

use fs_tests::{Cluster, Volume, require};
use memmap2::MmapMut;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Names drawn from a small set so operations collide: renames over existing
/// files, links to directories, removing what is open, and so on.
const NAMES: [&str; 6] = ["a", "b", "c", "d1", "d2", "e"];
const MAX_OPEN: usize = 6;
const MAX_SIZE: u64 = 3 << 20;

type Outcome = Result<String, i32>;

fn outcome<T: std::fmt::Debug>(r: io::Result<T>) -> Outcome {
    match r {
        Ok(v) => Ok(format!("{v:?}")),
        Err(e) => Err(e.raw_os_error().unwrap_or(-1)),
    }
}

/// The same file open on both sides.
struct Handle {
    files: [File; 2],
    path: String,
}

struct Run {
    roots: [PathBuf; 2],
    rng: StdRng,
    handles: Vec<Handle>,
    log: Vec<String>,
    /// Operations that succeeded (on both sides), so a run that only met errors shows.
    succeeded: usize,
}

impl Run {
    fn path(&mut self) -> String {
        let depth = self.rng.gen_range(1..=3);
        let parts: Vec<&str> = (0..depth)
            .map(|_| NAMES[self.rng.gen_range(0..NAMES.len())])
            .collect();
        parts.join("/")
    }

    fn data(&mut self) -> Vec<u8> {
        let len = match self.rng.gen_range(0..10) {
            0..=5 => self.rng.gen_range(0..5000),
            6..=8 => self.rng.gen_range(5000..300_000),
            _ => self.rng.gen_range(1 << 20..(1 << 20) + 70_000),
        };
        // Runs of one byte now and then, so zero-filled and repeated chunks occur.
        if self.rng.gen_bool(0.2) {
            vec![self.rng.gen_range(0..2u8); len]
        } else {
            (0..len).map(|_| self.rng.r#gen()).collect()
        }
    }

    fn offset(&mut self) -> u64 {
        match self.rng.gen_range(0..4) {
            0 => 0,
            1 => self.rng.gen_range(0..8192),
            2 => self.rng.gen_range(0..MAX_SIZE),
            _ => (self.rng.gen_range(0..3u64) << 20) + self.rng.gen_range(0..2) * 4095,
        }
    }

    /// Apply `op` to both roots and require the same outcome.
    fn both(&mut self, what: String, op: impl Fn(&Path) -> Outcome) {
        let a = op(&self.roots[0]);
        let b = op(&self.roots[1]);
        self.log.push(what);
        self.check(a, b);
    }

    /// Apply `op` to both sides of handle `h`.
    fn on_handle(&mut self, h: usize, what: String, op: impl Fn(&mut File) -> Outcome) {
        let [m, p] = &mut self.handles[h].files;
        let a = op(m);
        let b = op(p);
        let path = self.handles[h].path.clone();
        let ino = self.handles[h].files[1]
            .metadata()
            .map(|m| m.ino())
            .unwrap_or(0);
        // The local file's inode names it across renames and links.
        self.log
            .push(format!("{what} on handle {h} ({path}, inode {ino} here)"));
        self.check(a, b);
    }

    fn check(&mut self, mount: Outcome, plain: Outcome) {
        self.succeeded += usize::from(mount.is_ok() && plain.is_ok());
        if mount != plain {
            let tail = &self.log[self.log.len().saturating_sub(25)..];
            panic!(
                "mount and local disk differ after {} ops\n  last ops:\n    {}\n  mount: {}\n  local: {}",
                self.log.len(),
                tail.join("\n    "),
                short(&mount),
                short(&plain),
            );
        }
    }

    fn step(&mut self) {
        match self.rng.gen_range(0..100) {
            0..=11 => {
                let path = self.path();
                let create = self.rng.gen_bool(0.7);
                let trunc = self.rng.gen_bool(0.15);
                let append = !trunc && self.rng.gen_bool(0.15);
                let excl = create && self.rng.gen_bool(0.1);
                let open = |root: &Path| {
                    OpenOptions::new()
                        .read(true)
                        .write(!append)
                        .append(append)
                        .create(create)
                        .create_new(excl)
                        .truncate(trunc)
                        .open(root.join(&path))
                };
                let (m, p) = (open(&self.roots[0]), open(&self.roots[1]));
                let what = format!(
                    "open {path} create={create} trunc={trunc} append={append} excl={excl}"
                );
                self.log.push(what);
                match (m, p) {
                    (Ok(m), Ok(p)) => {
                        self.succeeded += 1;
                        if self.handles.len() >= MAX_OPEN {
                            self.handles.remove(0);
                        }
                        self.handles.push(Handle {
                            files: [m, p],
                            path,
                        });
                    }
                    (m, p) => self.check(outcome(m.map(|_| ())), outcome(p.map(|_| ()))),
                }
            }
            12..=29 if !self.handles.is_empty() => {
                let h = self.rng.gen_range(0..self.handles.len());
                let data = self.data();
                let at = self.offset();
                if self.rng.gen_bool(0.5) {
                    let what = format!("pwrite {} bytes at {at}", data.len());
                    self.on_handle(h, what, |f| outcome(f.write_all_at(&data, at)));
                } else {
                    let what = format!("write {} bytes", data.len());
                    self.on_handle(h, what, |f| outcome(f.write_all(&data)));
                }
            }
            30..=41 if !self.handles.is_empty() => {
                let h = self.rng.gen_range(0..self.handles.len());
                let at = self.offset();
                let len = self.rng.gen_range(0..1_500_000);
                let what = format!("pread {len} at {at}");
                self.on_handle(h, what, |f| {
                    let mut buf = vec![0; len];
                    outcome(f.read_at(&mut buf, at).map(|n| digest(&buf[..n])))
                });
            }
            42..=45 if !self.handles.is_empty() => {
                let h = self.rng.gen_range(0..self.handles.len());
                let at = self.offset();
                self.on_handle(h, format!("seek {at} and read"), |f| {
                    let mut buf = Vec::new();
                    outcome(
                        f.seek(SeekFrom::Start(at))
                            .and_then(|_| f.read_to_end(&mut buf))
                            .map(|_| digest(&buf)),
                    )
                });
            }
            46..=50 if !self.handles.is_empty() => {
                let h = self.rng.gen_range(0..self.handles.len());
                let size = self.offset();
                self.on_handle(h, format!("ftruncate {size}"), |f| outcome(f.set_len(size)));
            }
            51..=53 => {
                let path = self.path();
                let size = self.offset();
                self.both(format!("truncate {path} {size}"), |r| {
                    outcome(
                        OpenOptions::new()
                            .write(true)
                            .open(r.join(&path))
                            .and_then(|f| f.set_len(size)),
                    )
                });
            }
            54..=57 if !self.handles.is_empty() => {
                let h = self.rng.gen_range(0..self.handles.len());
                let at = self.rng.gen_range(0..MAX_SIZE / 2) as usize;
                let data = self.data();
                self.on_handle(h, format!("mmap write {} at {at}", data.len()), |f| {
                    outcome(mmap_write(f, at, &data))
                });
            }
            58..=59 if !self.handles.is_empty() => {
                let h = self.rng.gen_range(0..self.handles.len());
                let sync = self.rng.gen_bool(0.5);
                self.on_handle(h, format!("fsync={sync}"), |f| {
                    outcome(if sync { f.sync_all() } else { f.flush() })
                });
            }
            60..=63 if !self.handles.is_empty() => {
                let h = self.rng.gen_range(0..self.handles.len());
                let path = self.handles.remove(h).path;
                self.log.push(format!("close handle {h} ({path})"));
            }
            64..=71 => {
                let (from, to) = (self.path(), self.path());
                self.both(format!("rename {from} {to}"), |r| {
                    outcome(fs::rename(r.join(&from), r.join(&to)))
                });
            }
            72..=76 => {
                let path = self.path();
                self.both(format!("unlink {path}"), |r| {
                    outcome(fs::remove_file(r.join(&path)))
                });
            }
            77..=80 => {
                let (from, to) = (self.path(), self.path());
                self.both(format!("link {from} {to}"), |r| {
                    outcome(fs::hard_link(r.join(&from), r.join(&to)))
                });
            }
            81..=87 => {
                let path = self.path();
                self.both(format!("mkdir {path}"), |r| {
                    outcome(fs::create_dir(r.join(&path)))
                });
            }
            88..=91 => {
                let path = self.path();
                self.both(format!("rmdir {path}"), |r| {
                    outcome(fs::remove_dir(r.join(&path)))
                });
            }
            92..=95 => {
                let path = self.path();
                self.both(format!("stat {path}"), |r| {
                    outcome(fs::symlink_metadata(r.join(&path)).map(|m| describe(&m)))
                });
            }
            _ => {
                let path = self.path();
                self.both(format!("readdir {path}"), |r| {
                    outcome(fs::read_dir(r.join(&path)).and_then(|d| {
                        let mut names = d
                            .map(|e| e.map(|e| e.file_name()))
                            .collect::<io::Result<Vec<_>>>()?;
                        names.sort();
                        Ok(names)
                    }))
                });
            }
        }
    }
}

/// Writes `data` at `at` through a shared mapping, growing the file to fit first
/// (as programs that mmap for writing do), then msyncs.
fn mmap_write(f: &mut File, at: usize, data: &[u8]) -> io::Result<()> {
    let end = (at + data.len()) as u64;
    if f.metadata()?.len() < end {
        f.set_len(end)?;
    }
    if data.is_empty() {
        return Ok(());
    }
    // SAFETY: the mapping is private to this call; the file is not resized while
    // it exists (this thread is the only user of the file).
    let mut map = unsafe { MmapMut::map_mut(&*f)? };
    map[at..at + data.len()].copy_from_slice(data);
    map.flush()
}

fn describe(m: &fs::Metadata) -> String {
    let kind = if m.is_dir() {
        "dir"
    } else if m.is_file() {
        "file"
    } else {
        "other"
    };
    // Directory sizes and link counts are filesystem-specific; files' are not.
    if m.is_dir() {
        kind.to_string()
    } else {
        format!(
            "{kind} size={} nlink={} mode={:o}",
            m.len(),
            m.nlink(),
            m.mode()
        )
    }
}

fn digest(b: &[u8]) -> String {
    format!("{} bytes {}", b.len(), blake3::hash(b).to_hex())
}

fn short(o: &Outcome) -> String {
    match o {
        Ok(s) if s.len() > 200 => format!("Ok({}…)", &s[..200]),
        Ok(s) => format!("Ok({s})"),
        Err(e) => format!("Err({})", io::Error::from_raw_os_error(*e)),
    }
}

/// Every path under `root` with its kind, size, link count and contents' digest.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let mut d = describe(&m);
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                d += &format!(" {}", digest(&fs::read(&p).unwrap()));
            }
            out.insert(rel, d);
        }
    }
    out
}

/// The seed and length of a run (`DATAMESH_SEED`, `DATAMESH_OPS`).
fn seed_and_ops() -> (u64, usize) {
    let seed: u64 = std::env::var("DATAMESH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let ops: usize = std::env::var("DATAMESH_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    eprintln!("differential run: DATAMESH_SEED={seed} DATAMESH_OPS={ops}");
    (seed, ops)
}

/// Runs `ops` random operations in `root` (made here, on a mount) and in
/// `plain`, comparing each outcome and the trees at the end.
fn differential(root: PathBuf, plain: &Path, seed: u64, ops: usize) {
    let mut run = Run {
        roots: [root.clone(), plain.to_path_buf()],
        rng: StdRng::seed_from_u64(seed),
        handles: Vec::new(),
        log: Vec::new(),
        succeeded: 0,
    };
    fs::create_dir(&root).unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for _ in 0..ops {
            run.step();
        }
        run.handles.clear();
        eprintln!("{} of {ops} operations succeeded", run.succeeded);
        assert!(
            run.succeeded * 3 > ops,
            "too few operations succeeded to test much"
        );
        assert_eq!(tree(&root), tree(plain), "trees differ at the end");
    }));
    if let Err(e) = result {
        eprintln!("differential run failed: replay with DATAMESH_SEED={seed} DATAMESH_OPS={ops}");
        std::panic::resume_unwind(e);
    }
}

#[test]
fn random_operations_match_a_local_directory() {
    require!();
    let (seed, ops) = seed_and_ops();
    let v = Volume::new();
    let plain = v.dir.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let m = v.mount();
    differential(m.at.join("x"), &plain, seed, ops);
    assert!(m.unmount());
    let m = v.mount();
    assert_eq!(
        tree(&m.at.join("x")),
        tree(&plain),
        "trees differ after a remount (DATAMESH_SEED={seed})"
    );
    drop(m);
    v.assert_fsck_clean();
}

/// The same on a member device's mount, in a directory it made: delegated
/// to it, so it makes files there itself and answers for the names it made
/// (docs/DESIGN.md, "Delegated directories"); the home's mount reads the
/// same tree after.
#[test]
fn random_operations_on_a_member_mount_match_a_local_directory() {
    require!();
    let (seed, ops) = seed_and_ops();
    let home = Volume::new();
    let cluster = Cluster::start(&home, 6);
    let listen = format!("/ip4/127.0.0.1/tcp/{}", fs_tests::free_ports(1));
    let mut flags = cluster.bootstrap_flags();
    flags.extend(["--listen".to_string(), listen.clone()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let hm = home.mount_with(&flags);
    let token = home.ok(&["invite", "--member", "--address", &listen]);
    let member = Volume::new();
    let token = token.lines().last().unwrap_or_default().trim();
    member.ok(&["join", token, "--name", "m"]);
    let plain = member.dir.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let m = member.mount();
    differential(m.at.join("x"), &plain, seed, ops);
    // The home reads what the member did there (a recall first).
    assert_eq!(
        tree(&hm.at.join("x")),
        tree(&plain),
        "the home's mount sees another tree (DATAMESH_SEED={seed})"
    );
    assert!(m.unmount() && hm.unmount());
    home.assert_fsck_clean();
}
