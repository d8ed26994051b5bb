//! Random operation sequences on the engine, compared step by step with an
//! in-memory model of the namespace and file contents.

use datamesh::Error;
use datamesh::chunk::VolumeKey;
use datamesh::data::{Engine, EngineConfig};
use datamesh::meta::kv::local_etcd::LocalEtcd;
use datamesh::meta::kv::{EtcdKv, Kv, Limits, MemoryKv};
use datamesh::meta::{MetaStore, VolumeParams};
use datamesh::store::LocalStore;
use datamesh::types::{FileKind, Ino, RenameFlags, SetAttr};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

const CHUNK: u32 = 4096;

pub fn open(dir: &Path, create: bool) -> Engine {
    open_on(dir, create, None)
}

/// The engine with its namespace in RocksDB under `dir`, or in `memory`
/// (made the first time, the same engine after a "restart").
fn open_on(dir: &Path, create: bool, memory: Option<&Arc<dyn Kv>>) -> Engine {
    let params = VolumeParams {
        volume_id: [1; 16],
        chunk_size: CHUNK,
        data_shards: 4,
        parity_shards: 2,
        inline_max: 512,
    };
    let meta = match memory {
        Some(kv) => MetaStore::over(kv.clone(), &dir.join("meta"), create.then_some(params)),
        None => MetaStore::open(&dir.join("meta"), create.then_some(params)),
    }
    .unwrap();
    let store = LocalStore::open(&dir.join("store")).unwrap();
    let cfg = EngineConfig {
        cache_bytes: 8 * CHUNK as usize,
        dirty_bytes: 16 * CHUNK as usize,
        ..Default::default()
    };
    Engine::new(meta, Arc::new(store), VolumeKey::from_bytes([9; 32]), cfg).unwrap()
}

const NAMES: [&str; 3] = ["a", "b", "c"];

#[derive(Clone, Debug)]
enum Op {
    Write {
        path: Vec<u8>,
        off: u64,
        len: usize,
        seed: u8,
    },
    Truncate {
        path: Vec<u8>,
        size: u64,
    },
    PunchHole {
        path: Vec<u8>,
        off: u64,
        len: u64,
    },
    Read {
        path: Vec<u8>,
        off: u64,
        len: usize,
    },
    Mkdir {
        path: Vec<u8>,
    },
    Unlink {
        path: Vec<u8>,
    },
    Rmdir {
        path: Vec<u8>,
    },
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
        noreplace: bool,
    },
    Link {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Flush,
    Reopen,
}

/// Paths of depth 1 or 2 over a tiny alphabet, so operations collide often.
fn path() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (0..3usize).prop_map(|a| NAMES[a].as_bytes().to_vec()),
        (0..3usize, 0..3usize).prop_map(|(a, b)| format!("{}/{}", NAMES[a], NAMES[b]).into_bytes()),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (path(), 0..3 * CHUNK as u64, 0..2 * CHUNK as usize, any::<u8>())
            .prop_map(|(path, off, len, seed)| Op::Write { path, off, len, seed }),
        // Small writes: patches over stored chunks, layered chunks, compaction.
        4 => (path(), 0..3 * CHUNK as u64, 0..700usize, any::<u8>())
            .prop_map(|(path, off, len, seed)| Op::Write { path, off, len, seed }),
        1 => (path(), 0..3 * CHUNK as u64).prop_map(|(path, size)| Op::Truncate { path, size }),
        1 => (path(), 0..3 * CHUNK as u64, 0..2 * CHUNK as u64)
            .prop_map(|(path, off, len)| Op::PunchHole { path, off, len }),
        3 => (path(), 0..3 * CHUNK as u64, 1..2 * CHUNK as usize)
            .prop_map(|(path, off, len)| Op::Read { path, off, len }),
        2 => path().prop_map(|path| Op::Mkdir { path }),
        1 => path().prop_map(|path| Op::Unlink { path }),
        1 => path().prop_map(|path| Op::Rmdir { path }),
        2 => (path(), path(), any::<bool>()).prop_map(|(from, to, noreplace)| Op::Rename { from, to, noreplace }),
        1 => (path(), path()).prop_map(|(from, to)| Op::Link { from, to }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Dir,
    File(usize),
}

/// The model: path → node, files by id so hard links share content.
#[derive(Default)]
struct Model {
    tree: BTreeMap<Vec<u8>, Node>,
    files: Vec<Vec<u8>>,
}

fn parent(p: &[u8]) -> Option<&[u8]> {
    p.iter().rposition(|&c| c == b'/').map(|i| &p[..i])
}

#[derive(Debug, PartialEq)]
enum E {
    NotFound,
    Exists,
    NotDir,
    IsDir,
    NotEmpty,
    Invalid,
    Perm,
}

fn kind(e: &Error) -> E {
    match e {
        Error::NotFound => E::NotFound,
        Error::Exists => E::Exists,
        Error::NotDir => E::NotDir,
        Error::IsDir => E::IsDir,
        Error::NotEmpty => E::NotEmpty,
        Error::Invalid(_) => E::Invalid,
        Error::NotPermitted => E::Perm,
        other => panic!("unexpected engine error: {other}"),
    }
}

impl Model {
    fn dir_ok(&self, dir: Option<&[u8]>) -> Result<(), E> {
        match dir {
            None => Ok(()),
            Some(d) => match self.tree.get(d) {
                Some(Node::Dir) => Ok(()),
                Some(_) => Err(E::NotDir),
                None => Err(E::NotFound),
            },
        }
    }
    fn children(&self, d: &[u8]) -> bool {
        self.tree.keys().any(|k| parent(k) == Some(d))
    }
    fn lookup(&self, p: &[u8]) -> Result<Node, E> {
        self.dir_ok(parent(p))?;
        self.tree.get(p).cloned().ok_or(E::NotFound)
    }
}

/// Engine-side path walk.
fn resolve(e: &Engine, p: &[u8]) -> Result<(Ino, Vec<u8>), Error> {
    let mut ino = Ino::ROOT;
    let parts: Vec<&[u8]> = p.split(|&c| c == b'/').collect();
    for part in &parts[..parts.len() - 1] {
        ino = e.lookup(ino, part)?.ino;
    }
    // As the kernel's path walk: the parent must be a directory.
    if e.getattr(ino)?.kind != FileKind::Dir {
        return Err(Error::NotDir);
    }
    Ok((ino, parts[parts.len() - 1].to_vec()))
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    // Mostly-noise with runs, so some chunks compress and some are all zeros.
    (0..len)
        .map(|i| {
            if seed.is_multiple_of(4) {
                0
            } else {
                ((i as u32).wrapping_mul(seed as u32 * 2654435761) >> 13) as u8
            }
        })
        .collect()
}

fn apply(e: &Engine, m: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match op {
        Op::Write {
            path,
            off,
            len,
            seed,
        } => {
            let data = bytes(*len, *seed);
            let want: Result<usize, E> = (|| {
                m.dir_ok(parent(path))?;
                let id = match m.tree.get(path) {
                    Some(Node::Dir) => return Err(E::IsDir),
                    Some(Node::File(id)) => *id,
                    None => {
                        m.files.push(Vec::new());
                        m.tree.insert(path.clone(), Node::File(m.files.len() - 1));
                        m.files.len() - 1
                    }
                };
                let f = &mut m.files[id];
                let end = *off as usize + len;
                // A zero-length write changes nothing, wherever it points.
                if *len > 0 {
                    if f.len() < end {
                        f.resize(end, 0);
                    }
                    f[*off as usize..end].copy_from_slice(&data);
                }
                Ok(*len)
            })();
            let got = (|| {
                let (dir, n) = resolve(e, path)?;
                let ino = match e.lookup(dir, &n) {
                    Ok(a) if a.kind == FileKind::Dir => return Err(Error::IsDir),
                    Ok(a) => a.ino,
                    Err(Error::NotFound) => e.create(dir, &n, 0o644, 0, 0)?.ino,
                    Err(err) => return Err(err),
                };
                e.write(ino, *off, &data)
            })();
            prop_assert_eq!(got.map_err(|x| kind(&x)), want, "{:?}", op);
        }
        Op::Truncate { path, size } => {
            let want = match m.lookup(path) {
                Ok(Node::File(id)) => {
                    m.files[id].resize(*size as usize, 0);
                    Ok(())
                }
                Ok(Node::Dir) => Err(E::IsDir),
                Err(x) => Err(x),
            };
            let got = resolve(e, path)
                .and_then(|(d, n)| e.lookup(d, &n))
                .and_then(|a| {
                    e.setattr(
                        a.ino,
                        &SetAttr {
                            size: Some(*size),
                            ..Default::default()
                        },
                    )
                    .map(|_| ())
                });
            prop_assert_eq!(got.map_err(|x| kind(&x)), want, "{:?}", op);
        }
        Op::PunchHole { path, off, len } => {
            let want = match m.lookup(path) {
                Ok(Node::File(id)) => {
                    let f = &mut m.files[id];
                    let end = (off + len).min(f.len() as u64) as usize;
                    let start = (*off as usize).min(end);
                    f[start..end].fill(0);
                    Ok(())
                }
                Ok(Node::Dir) => Err(E::Invalid),
                Err(x) => Err(x),
            };
            let got = resolve(e, path)
                .and_then(|(d, n)| e.lookup(d, &n))
                .and_then(|a| e.punch_hole(a.ino, *off, *len));
            prop_assert_eq!(got.map_err(|x| kind(&x)), want, "{:?}", op);
        }
        Op::Read { path, off, len } => {
            let want = match m.lookup(path) {
                Ok(Node::File(id)) => {
                    let f = &m.files[id];
                    let s = (*off as usize).min(f.len());
                    Ok(f[s..(s + len).min(f.len())].to_vec())
                }
                Ok(Node::Dir) => Err(E::IsDir),
                Err(x) => Err(x),
            };
            let mut size = None;
            let got = resolve(e, path)
                .and_then(|(d, n)| e.lookup(d, &n))
                .and_then(|a| {
                    size = Some(a.size);
                    e.read(a.ino, *off, *len)
                });
            if let Ok(Node::File(id)) = m.lookup(path) {
                prop_assert_eq!(size, Some(m.files[id].len() as u64), "size of {:?}", path);
            }
            prop_assert_eq!(got.map_err(|x| kind(&x)), want, "{:?}", op);
        }
        Op::Mkdir { path } => {
            let want = m
                .dir_ok(parent(path))
                .and_then(|_| match m.tree.contains_key(path) {
                    true => Err(E::Exists),
                    false => {
                        m.tree.insert(path.clone(), Node::Dir);
                        Ok(())
                    }
                });
            let got = resolve(e, path).and_then(|(d, n)| e.mkdir(d, &n, 0o755, 0, 0).map(|_| ()));
            prop_assert_eq!(got.map_err(|x| kind(&x)), want, "{:?}", op);
        }
        Op::Unlink { path } => {
            let want = match m.lookup(path) {
                Ok(Node::Dir) => Err(E::IsDir),
                Ok(Node::File(_)) => {
                    m.tree.remove(path);
                    Ok(())
                }
                Err(x) => Err(x),
            };
            let got = resolve(e, path).and_then(|(d, n)| e.unlink(d, &n));
            prop_assert_eq!(got.map_err(|x| kind(&x)), want, "{:?}", op);
        }
        Op::Rmdir { path } => {
            let want = match m.lookup(path) {
                Ok(Node::File(_)) => Err(E::NotDir),
                Ok(Node::Dir) if m.children(path) => Err(E::NotEmpty),
                Ok(Node::Dir) => {
                    m.tree.remove(path);
                    Ok(())
                }
                Err(x) => Err(x),
            };
            let got = resolve(e, path).and_then(|(d, n)| e.rmdir(d, &n));
            prop_assert_eq!(got.map_err(|x| kind(&x)), want, "{:?}", op);
        }
        Op::Rename {
            from,
            to,
            noreplace,
        } => {
            let want = (|| {
                m.dir_ok(parent(from))?;
                m.dir_ok(parent(to))?;
                let src = m.tree.get(from).cloned().ok_or(E::NotFound)?;
                if src == Node::Dir
                    && parent(from) != parent(to)
                    && (to.starts_with(from) && to.get(from.len()) == Some(&b'/'))
                {
                    return Err(E::Invalid);
                }
                match m.tree.get(to).cloned() {
                    Some(_) if *noreplace => return Err(E::Exists),
                    Some(dst) if from == to || (dst == src && src != Node::Dir) => return Ok(()),
                    Some(Node::File(_)) if src == Node::Dir => return Err(E::NotDir),
                    Some(Node::Dir) if src != Node::Dir => return Err(E::IsDir),
                    Some(Node::Dir) if m.children(to) => return Err(E::NotEmpty),
                    _ => {}
                }
                // Move the subtree.
                let moved: Vec<(Vec<u8>, Node)> = m
                    .tree
                    .iter()
                    .filter(|(k, _)| {
                        *k == from || (k.starts_with(from) && k.get(from.len()) == Some(&b'/'))
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                m.tree.remove(to);
                for (k, _) in &moved {
                    m.tree.remove(k);
                }
                for (k, v) in moved {
                    let mut nk = to.clone();
                    nk.extend_from_slice(&k[from.len()..]);
                    m.tree.insert(nk, v);
                }
                Ok(())
            })();
            let flags = RenameFlags {
                noreplace: *noreplace,
                exchange: false,
            };
            let got = resolve(e, from).and_then(|(fd, fname)| {
                let (td, tname) = resolve(e, to)?;
                e.rename(fd, &fname, td, &tname, flags)
            });
            prop_assert_eq!(got.map_err(|x| kind(&x)), want, "{:?}", op);
        }
        Op::Link { from, to } => {
            let want = (|| {
                let src = m.lookup(from)?;
                m.dir_ok(parent(to))?;
                if src == Node::Dir {
                    return Err(E::Perm);
                }
                if m.tree.contains_key(to) {
                    return Err(E::Exists);
                }
                m.tree.insert(to.clone(), src);
                Ok(())
            })();
            let got = resolve(e, from).and_then(|(fd, fname)| {
                let a = e.lookup(fd, &fname)?;
                let (td, tname) = resolve(e, to)?;
                e.link(a.ino, td, &tname).map(|_| ())
            });
            prop_assert_eq!(got.map_err(|x| kind(&x)), want, "{:?}", op);
        }
        Op::Flush | Op::Reopen => unreachable!("handled by the driver"),
    }
    Ok(())
}

/// The whole tree as the engine lists it, in the model's shape.
fn listing(e: &Engine, dir: Ino, prefix: &[u8], out: &mut BTreeMap<Vec<u8>, (bool, u64)>) {
    let mut off = 0;
    loop {
        let batch = e.readdir(dir, off, 2).unwrap();
        let Some(last) = batch.last() else { break };
        off = last.offset;
        for d in batch {
            if d.name == b"." || d.name == b".." {
                continue;
            }
            let mut p = prefix.to_vec();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(&d.name);
            let a = e.getattr(d.ino).unwrap();
            out.insert(p.clone(), (a.kind == FileKind::Dir, a.ino.0));
            if a.kind == FileKind::Dir {
                listing(e, d.ino, &p, out);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        matches_the_model(&ops, None)?;
    }

    /// The same on the memory engine: the namespace's rules do not depend
    /// on RocksDB.
    #[test]
    fn engine_on_the_memory_engine_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let kv: Arc<dyn Kv> = Arc::new(MemoryKv::new());
        matches_the_model(&ops, Some(&kv))?;
    }
}

/// The same on a memory engine that takes at most 10 operations a
/// transaction: reference counts go through the pending record, and chunk
/// commits, truncations and frees are made in steps of 2 chunks.
#[test]
fn engine_within_small_transaction_limits_matches_the_model() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..60), |ops| {
            let kv: Arc<dyn Kv> = Arc::new(MemoryKv::with_limits(Limits {
                ops: 10,
                bytes: 16 << 10,
            }));
            matches_the_model(&ops, Some(&kv))
        })
        .unwrap();
}

/// The same on etcd (one etcd on loopback, a key prefix per case; a
/// "restart" opens the namespace again over the same connection).
#[test]
fn engine_on_etcd_matches_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = LocalEtcd::start(dir.path());
    let n = std::sync::atomic::AtomicU64::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 16,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..60), |ops| {
            let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let kv: Arc<dyn Kv> =
                Arc::new(EtcdKv::connect(&etcd.url, format!("model{n}/").as_bytes()).unwrap());
            matches_the_model(&ops, Some(&kv))
        })
        .unwrap();
}

fn matches_the_model(ops: &[Op], memory: Option<&Arc<dyn Kv>>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = Some(open_on(dir.path(), true, memory));
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Flush => engine.as_ref().unwrap().flush_all().unwrap(),
            Op::Reopen => {
                let e = engine.take().unwrap();
                e.flush_all().unwrap();
                drop(e);
                engine = Some(open_on(dir.path(), false, memory));
            }
            op => apply(engine.as_ref().unwrap(), &mut model, op)?,
        }
    }
    let e = engine.unwrap();
    e.flush_all().unwrap();
    let mut got = BTreeMap::new();
    listing(&e, Ino::ROOT, b"", &mut got);
    let names: Vec<_> = got.keys().cloned().collect();
    let want: Vec<_> = model.tree.keys().cloned().collect();
    prop_assert_eq!(names, want);
    for (p, node) in &model.tree {
        if let Node::File(id) = node {
            let ino = Ino(got[p].1);
            let data = e.read(ino, 0, usize::MAX / 2).unwrap();
            prop_assert!(
                data == model.files[*id],
                "contents of {}",
                String::from_utf8_lossy(p)
            );
        }
    }
    let report = e.check(false, &|_, _| {}).unwrap();
    prop_assert!(report.problems.is_empty(), "fsck: {:?}", report.problems);
    Ok(())
}

/// One writer and several readers (plain reads and a parallel stream) on the same
/// file at once: nothing deadlocks, and the file ends as the writer left it.
#[test]
fn concurrent_readers_and_a_writer_finish_and_agree() {
    let dir = tempfile::tempdir_in(crate::common::scratch()).unwrap();
    let e = Arc::new(open(dir.path(), true));
    let ino = e.create(Ino::ROOT, b"f", 0o644, 0, 0).unwrap().ino;
    e.open(ino).unwrap();
    let len = 64 * CHUNK as usize;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let worker = {
        let e = e.clone();
        std::thread::spawn(move || {
            let mut expect = vec![0u8; len];
            std::thread::scope(|s| {
                for r in 0..3u64 {
                    let e = &e;
                    s.spawn(move || {
                        for i in 0..300u64 {
                            let off = (i * 7919 + r * 104_729) % len as u64;
                            e.read(ino, off, 3 * CHUNK as usize).unwrap();
                            if i % 50 == 0 {
                                e.read_stream(ino, &mut std::io::sink(), 4, &mut |_| {})
                                    .unwrap();
                            }
                        }
                    });
                }
                for i in 0..400usize {
                    let off = (i * 48_271) % (len - 5000);
                    let data = crate::common::noise(1 + i * 37 % 9000, i as u64);
                    let n = data.len().min(len - off);
                    e.write(ino, off as u64, &data[..n]).unwrap();
                    expect[off..off + n].copy_from_slice(&data[..n]);
                    if i % 97 == 0 {
                        e.flush(ino).unwrap();
                    }
                }
            });
            e.release(ino).unwrap();
            let got = e.read(ino, 0, len).unwrap();
            done_tx.send(got == expect[..got.len()]).unwrap();
        })
    };
    let same = done_rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("readers and writer did not finish within 120 s: deadlock");
    worker.join().unwrap();
    assert!(same, "file contents differ from what was written");
}

/// A small overwrite of a stored chunk is appended to its entry as a slice
/// (the chunk is not read or resealed); enough of them compact it back into
/// a plain chunk. Contents, reopening and fsck agree all along.
#[test]
fn small_overwrites_become_slices_then_compact() {
    use datamesh::chunk::ChunkRef;
    let dir = tempfile::tempdir_in(crate::common::scratch()).unwrap();
    let mut e = open(dir.path(), true);
    let ino = e.create(Ino::ROOT, b"f", 0o644, 0, 0).unwrap().ino;
    let mut expect = crate::common::noise(3 * CHUNK as usize, 1);
    e.write(ino, 0, &expect).unwrap();
    e.flush(ino).unwrap();
    let base = e.meta().chunk(ino, 1).unwrap().unwrap();
    assert!(matches!(base, ChunkRef::Segmented { .. }), "{base:?}");
    let mut layered_seen = 0;
    for i in 0..40usize {
        let at = CHUNK as usize + (i * 211) % (CHUNK as usize - 100);
        let data = crate::common::noise(100, 100 + i as u64);
        e.write(ino, at as u64, &data).unwrap();
        expect[at..at + 100].copy_from_slice(&data);
        // Before the flush the patch is laid over the committed chunk.
        assert_eq!(e.read(ino, 0, expect.len()).unwrap(), expect, "write {i}");
        e.flush(ino).unwrap();
        assert_eq!(e.read(ino, 0, expect.len()).unwrap(), expect, "write {i}");
        match e.meta().chunk(ino, 1).unwrap().unwrap() {
            ChunkRef::Layered {
                base: b,
                slices,
                len,
            } => {
                layered_seen += 1;
                assert_eq!(len, CHUNK);
                assert!(!slices.is_empty());
                // Until compaction the base is the chunk as first stored.
                if layered_seen == i + 1 {
                    assert_eq!(b.as_deref(), Some(&base));
                }
            }
            plain => assert!(layered_seen > 0, "compacted before any slice: {plain:?}"),
        }
        if i == 20 {
            e.flush_all().unwrap();
            drop(e);
            e = open(dir.path(), false);
        }
    }
    assert!(layered_seen >= 2, "slices accumulate before compaction");
    assert!(layered_seen < 40, "compaction happens");
    // The other chunks were never touched.
    assert!(matches!(
        e.meta().chunk(ino, 0).unwrap().unwrap(),
        ChunkRef::Segmented { .. }
    ));
    assert_eq!(e.read(ino, 0, expect.len()).unwrap(), expect);
    let report = e.check(false, &|_, _| {}).unwrap();
    assert!(report.problems.is_empty(), "fsck: {:?}", report.problems);
}
