//! A hostile member device. A real home (`datamesh serve --listen`, three
//! storage peers) admits a member with `datamesh join`; this process then
//! speaks `/datamesh/meta/1` with that member's keys, sending well-formed
//! calls no datamesh would send (chunk references bent out of shape, chunks
//! named twice, releases of files it never opened, locks on anything, huge
//! offsets), while the home's CLI puts honest files beside it. After each
//! run of calls: the home still answers, every honest file reads back, and
//! once the member's own files are removed, `fsck` (names, chunk maps,
//! reference counts against a recount) is clean. At the end `gc --grace 0`
//! deletes no shard an honest file uses.
//!
//! `DATAMESH_HOSTILE_CASES` sets the number of runs (default 120),
//! `DATAMESH_HOSTILE_MINUTES` a time after which the remaining runs are
//! skipped (`scripts/hostile-member.sh` runs it for half an hour), and
//! `DATAMESH_BIN` the binary (default: the one built beside this test).

use crate::common::{Vol, noise};
use datamesh::chunk::ChunkRef;
use datamesh::member::wire::{MetaCall, MetaReply, NsCall, NsReply, decode_answer, encode_request};
use datamesh::meta::NewNode;
use datamesh::meta::locks::RangeLock;
use datamesh::net::{LiveKeys, MeshClient, MeshKeys, PeerId};
use datamesh::types::{FileKind, Ino, RenameFlags, SetAttr, SetTime, Timestamp};
use datamesh::volume::proto::Request;
use fs_tests::{Cluster, Daemon};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_bytes::ByteBuf;
use std::time::{Duration, Instant};

/// What a run of hostile calls is made of. Inodes and chunks are picked
/// from what the member could learn (`Pick`), or made up.
#[derive(Clone, Debug)]
enum Op {
    /// A file of its own gets chunks: real ones (maybe an honest file's,
    /// which dedup makes shared), bent ones, indexes repeated or huge.
    Commit {
        file: Pick,
        chunks: Vec<(Idx, Pick, Bend)>,
        size: u64,
    },
    /// A whole file committed at once, as `put` does.
    CommitFile {
        name: Vec<u8>,
        chunks: Vec<(Idx, Pick, Bend)>,
        size: u64,
    },
    Truncate {
        file: Pick,
        size: u64,
        tail: Option<(Idx, Pick, Bend)>,
    },
    Release(Pick),
    Releases(Vec<Pick>),
    Open(Pick),
    OpenRead(Pick),
    /// Promises asked of any inodes, from any watch position (more than
    /// an ask may hold, too).
    Promise {
        since: u64,
        dirs: Vec<Pick>,
    },
    Lock {
        ino: Pick,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        wait: bool,
    },
    Unlock {
        ino: Pick,
        owner: u64,
    },
    Read {
        ino: Pick,
        offset: u64,
        max: u32,
    },
    Create {
        name: Vec<u8>,
        kind: u8,
        perm: u16,
        target: Option<Vec<u8>>,
        open: bool,
    },
    Link {
        ino: Pick,
        name: Vec<u8>,
    },
    Unlink(Vec<u8>),
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
        into: Pick,
        exchange: bool,
    },
    /// Its own directory moved into a directory below itself.
    Cycle,
    Setxattr {
        ino: Pick,
        name: Vec<u8>,
        len: usize,
    },
    Setattr {
        ino: Pick,
        size: Option<u64>,
        secs: i64,
    },
    Watch(u64),
    ResetLocks,
    OwnerOnly,
    /// Calls in one `Batch`: more than it may hold, a watch or a lock wait
    /// inside, and anything else.
    Batch(Vec<Op>),
}

/// An index into what the member learned (inodes, chunks), or past it.
#[derive(Clone, Copy, Debug)]
struct Pick(usize);

#[derive(Clone, Copy, Debug)]
enum Idx {
    Small(u64),
    Huge(u64),
}

/// How a real chunk reference is bent before it is sent.
#[derive(Clone, Copy, Debug)]
enum Bend {
    None,
    ZeroK,
    HugeLen,
    NoShards,
    NoSegments,
    LayeredOver,
    Absent,
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "[a-d]{1,3}".prop_map(String::into_bytes),
        1 => Just(b"..".to_vec()),
        1 => Just(b"a/b".to_vec()),
        1 => Just(Vec::new()),
        1 => Just(vec![b'n'; 300]),
        1 => proptest::collection::vec(any::<u8>(), 1..20),
    ]
}

fn idx() -> impl Strategy<Value = Idx> {
    prop_oneof![
        6 => (0u64..4).prop_map(Idx::Small),
        1 => any::<u64>().prop_map(Idx::Huge),
    ]
}

fn bend() -> impl Strategy<Value = Bend> {
    prop_oneof![
        6 => Just(Bend::None),
        1 => Just(Bend::ZeroK),
        1 => Just(Bend::HugeLen),
        1 => Just(Bend::NoShards),
        1 => Just(Bend::NoSegments),
        1 => Just(Bend::LayeredOver),
        1 => Just(Bend::Absent),
    ]
}

fn pick() -> impl Strategy<Value = Pick> {
    (0usize..64).prop_map(Pick)
}

fn chunks() -> impl Strategy<Value = Vec<(Idx, Pick, Bend)>> {
    proptest::collection::vec((idx(), pick(), bend()), 0..5)
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..400_000, 1 => any::<u64>()]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        16 => one_op(),
        1 => proptest::collection::vec(one_op(), 0..70).prop_map(Op::Batch),
    ]
}

fn one_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (pick(), chunks(), size()).prop_map(|(file, chunks, size)| Op::Commit { file, chunks, size }),
        3 => (name(), chunks(), size()).prop_map(|(name, chunks, size)| Op::CommitFile { name, chunks, size }),
        3 => (pick(), size(), proptest::option::of((idx(), pick(), bend())))
            .prop_map(|(file, size, tail)| Op::Truncate { file, size, tail }),
        3 => pick().prop_map(Op::Release),
        2 => proptest::collection::vec(pick(), 0..40).prop_map(Op::Releases),
        2 => pick().prop_map(Op::Open),
        2 => pick().prop_map(Op::OpenRead),
        2 => (any::<u64>(), proptest::collection::vec(pick(), 0..70))
            .prop_map(|(since, dirs)| Op::Promise { since, dirs }),
        3 => (pick(), 0u64..4, any::<u64>(), any::<u64>(), prop_oneof![Just(0), Just(1), Just(2), any::<i32>()], any::<bool>())
            .prop_map(|(ino, owner, start, end, typ, wait)| Op::Lock { ino, owner, start, end, typ, wait }),
        1 => (pick(), 0u64..4).prop_map(|(ino, owner)| Op::Unlock { ino, owner }),
        3 => (pick(), any::<u64>(), any::<u32>()).prop_map(|(ino, offset, max)| Op::Read { ino, offset, max }),
        4 => (name(), 0u8..8, any::<u16>(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..5000)), any::<bool>())
            .prop_map(|(name, kind, perm, target, open)| Op::Create { name, kind, perm, target, open }),
        2 => (pick(), name()).prop_map(|(ino, name)| Op::Link { ino, name }),
        2 => name().prop_map(Op::Unlink),
        2 => (name(), name(), pick(), any::<bool>()).prop_map(|(from, to, into, exchange)| Op::Rename { from, to, into, exchange }),
        1 => Just(Op::Cycle),
        2 => (pick(), name(), prop_oneof![0usize..100, 60_000usize..70_000]).prop_map(|(ino, name, len)| Op::Setxattr { ino, name, len }),
        2 => (pick(), proptest::option::of(size()), any::<i64>()).prop_map(|(ino, size, secs)| Op::Setattr { ino, size, secs }),
        1 => any::<u64>().prop_map(Op::Watch),
        1 => Just(Op::ResetLocks),
        1 => Just(Op::OwnerOnly),
    ]
}

/// The home, its peers, the member's client, and what it learned.
struct Rig {
    home: Vol,
    _cluster: Cluster,
    daemon: Option<Daemon>,
    _member: Vol,
    client: MeshClient,
    home_id: PeerId,
    /// The member's own directory, `/evil`, and what it made there.
    evil: Ino,
    own: Vec<Ino>,
    /// Inodes of honest files and directories it looked up.
    seen: Vec<Ino>,
    /// Real chunk references, from honest files' chunk maps.
    pool: Vec<ChunkRef>,
    /// Honest files (path, contents) put at the home.
    honest: Vec<(String, Vec<u8>)>,
    /// Answers seen: (taken, refused), and each refusal's text once.
    answers: (u64, u64),
    refusals: std::collections::BTreeSet<String>,
}

impl Rig {
    fn start() -> Rig {
        let home = Vol::new();
        home.ok(&[
            "init",
            "--chunk-size",
            "64K",
            "--data-shards",
            "2",
            "--parity-shards",
            "1",
        ]);
        home.config("protect_secs = 0");
        let cluster = Cluster::start(&home, 3);
        let listen = format!("/ip4/127.0.0.1/tcp/{}", fs_tests::free_ports(1));
        let daemon = home.serve_with(&cluster.bootstrap_flags(), &["--listen", &listen]);
        let token = home.ok(&["invite", "--member", "--address", &listen]);
        let member = Vol::new();
        member.ok(&[
            "join",
            token.lines().last().unwrap().trim(),
            "--name",
            "hostile",
        ]);
        let file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(member.home().join("member")).unwrap()).unwrap();
        let home_id: PeerId = file["home"].as_str().unwrap().parse().unwrap();
        let addrs = file["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().parse().unwrap())
            .collect();
        let identity = datamesh::net::load_identity(&member.home().join("peer.key")).unwrap();
        let mesh = MeshKeys::load(&member.home().join("mesh.key"), false).unwrap();
        let client = MeshClient::start(identity, &LiveKeys::new(mesh), addrs, None, None).unwrap();
        let mut rig = Rig {
            home,
            _cluster: cluster,
            daemon: Some(daemon),
            _member: member,
            client,
            home_id,
            evil: Ino::ROOT,
            own: Vec::new(),
            seen: vec![Ino::ROOT],
            pool: Vec::new(),
            honest: Vec::new(),
            answers: (0, 0),
            refusals: Default::default(),
        };
        rig.home.ok(&["mkdir", "/honest"]);
        for i in 0..4 {
            rig.put_honest(i);
        }
        rig.fresh_evil();
        rig
    }

    /// One honest file: every other one has the contents of the one before
    /// (so their chunks are shared), sizes from inline to several chunks.
    fn put_honest(&mut self, i: usize) {
        let len = [100, 70_000, 300_000, 5_000][i % 4];
        let data = noise(len, (i / 2) as u64);
        let local = self.home.dir.path().join(format!("h{i}"));
        std::fs::write(&local, &data).unwrap();
        let path = format!("/honest/h{i}");
        self.home.ok(&["put", local.to_str().unwrap(), &path]);
        self.honest.push((path, data));
    }

    fn ask(&self, call: MetaCall) -> Result<MetaReply, datamesh::Error> {
        let bytes = self
            .client
            .meta_call(self.home_id, encode_request(call), Duration::from_secs(20))
            .map_err(|e| datamesh::Error::Remote(datamesh::error::Kind::Other, e.to_string()))?;
        decode_answer(&bytes)
    }

    /// A hostile call's answer, counted.
    fn note<T>(&mut self, r: Result<T, datamesh::Error>) {
        match r {
            Ok(_) => self.answers.0 += 1,
            Err(e) => {
                self.answers.1 += 1;
                let text: String = e
                    .to_string()
                    .chars()
                    .filter(|c| !c.is_ascii_digit())
                    .collect();
                if self.refusals.len() < 200 {
                    self.refusals.insert(text);
                }
            }
        }
    }

    fn ns(&self, call: NsCall) -> Result<NsReply, datamesh::Error> {
        match self.ask(MetaCall::Ns(call))? {
            MetaReply::Ns(r) => Ok(r),
            other => panic!("the home answered {other:?}"),
        }
    }

    fn lookup(&self, parent: Ino, name: &str) -> Option<Ino> {
        match self.ns(NsCall::Lookup {
            parent,
            name: ByteBuf::from(name.as_bytes().to_vec()),
        }) {
            Ok(NsReply::Attr(a)) => Some(a.ino),
            _ => None,
        }
    }

    /// `/evil` made anew by the member, and what it can learn of the
    /// honest files: their inodes and chunks.
    fn fresh_evil(&mut self) {
        self.ns(NsCall::CreateNode {
            parent: Ino::ROOT,
            name: ByteBuf::from(b"evil".to_vec()),
            node: node(FileKind::Dir, 0o755, None),
        })
        .expect("the member makes its directory");
        self.evil = self.lookup(Ino::ROOT, "evil").unwrap();
        self.own = vec![self.evil];
        let sub = self.ns(NsCall::CreateNode {
            parent: self.evil,
            name: ByteBuf::from(b"sub".to_vec()),
            node: node(FileKind::Dir, 0o755, None),
        });
        if let Ok(NsReply::Attr(a)) = sub {
            self.own.push(a.ino);
        }
        let honest_dir = self.lookup(Ino::ROOT, "honest").unwrap();
        self.seen = vec![Ino::ROOT, honest_dir];
        self.pool.clear();
        // What it learns: the shared-content files and the newest.
        let n = self.honest.len();
        for (_, (path, _)) in self
            .honest
            .iter()
            .enumerate()
            .filter(|(i, _)| *i < 4 || i + 8 >= n)
        {
            let ino = self
                .lookup(honest_dir, path.rsplit('/').next().unwrap())
                .unwrap();
            self.seen.push(ino);
            if let Ok(MetaReply::ChunkMap { chunks, .. }) = self.ask(MetaCall::ChunkMap(ino)) {
                self.pool.extend(chunks.into_iter().map(|(_, c)| c));
            }
        }
    }

    fn any_ino(&self, p: Pick) -> Ino {
        let all = self.seen.len() + self.own.len();
        match p.0 % (all + 1) {
            i if i < self.seen.len() => self.seen[i],
            i if i < all => self.own[i - self.seen.len()],
            _ => Ino(p.0 as u64 * 7919 + 1_000_000),
        }
    }

    fn own_ino(&self, p: Pick) -> Ino {
        self.own[p.0 % self.own.len()]
    }

    fn chunk(&self, p: Pick, bend: Bend) -> Option<ChunkRef> {
        let c = self.pool.get(p.0 % self.pool.len().max(1))?.clone();
        Some(match (bend, c) {
            (Bend::None, c) => c,
            (Bend::Absent, _) => return None,
            (
                Bend::ZeroK,
                ChunkRef::Segmented {
                    key,
                    plain_len,
                    segments,
                    shards,
                    ..
                },
            ) => ChunkRef::Segmented {
                key,
                plain_len,
                segments,
                k: 0,
                shards,
            },
            (
                Bend::HugeLen,
                ChunkRef::Segmented {
                    key,
                    segments,
                    k,
                    shards,
                    ..
                },
            ) => ChunkRef::Segmented {
                key,
                plain_len: u32::MAX,
                segments,
                k,
                shards,
            },
            (
                Bend::HugeLen,
                ChunkRef::Inline {
                    key,
                    compressed,
                    sealed,
                    ..
                },
            ) => ChunkRef::Inline {
                key,
                compressed,
                plain_len: u32::MAX,
                sealed,
            },
            (
                Bend::NoShards,
                ChunkRef::Segmented {
                    key,
                    plain_len,
                    segments,
                    k,
                    ..
                },
            ) => ChunkRef::Segmented {
                key,
                plain_len,
                segments,
                k,
                shards: vec![],
            },
            (
                Bend::NoSegments,
                ChunkRef::Segmented {
                    key,
                    plain_len,
                    k,
                    shards,
                    ..
                },
            ) => ChunkRef::Segmented {
                key,
                plain_len,
                segments: vec![],
                k,
                shards,
            },
            (Bend::LayeredOver, c) => ChunkRef::Layered {
                len: 1 << 30,
                base: Some(Box::new(c.clone())),
                slices: vec![datamesh::chunk::Slice {
                    offset: u32::MAX - 3,
                    chunk: c,
                }],
            },
            (_, c) => c,
        })
    }

    fn index(i: Idx) -> u64 {
        match i {
            Idx::Small(i) => i,
            Idx::Huge(i) => i,
        }
    }

    /// Sends one hostile call; what it answers does not matter, only that
    /// it answers.
    fn send(&mut self, op: &Op) {
        let call = match op {
            Op::Batch(ops) => NsCall::Batch(ops.iter().filter_map(|o| self.call_of(o)).collect()),
            op => match self.call_of(op) {
                Some(call) => call,
                None => return,
            },
        };
        let r = self.ns(call);
        self.note(r);
    }

    /// The call `op` makes (`None`: it asked something else already).
    fn call_of(&mut self, op: &Op) -> Option<NsCall> {
        Some(match op.clone() {
            Op::Commit { file, chunks, size } => NsCall::CommitChunks {
                ino: self.own_ino(file),
                chunks: chunks
                    .iter()
                    .map(|&(i, p, b)| (Self::index(i), self.chunk(p, b)))
                    .collect(),
                size,
                mtime: None,
                hints: vec![],
            },
            Op::CommitFile { name, chunks, size } => {
                let call = MetaCall::CommitFile {
                    file: datamesh::volume::NewFile {
                        dir: self.evil,
                        name,
                        perm: 0o644,
                        uid: 0,
                        gid: 0,
                    },
                    size,
                    chunks: chunks
                        .iter()
                        .filter_map(|&(i, p, b)| Some((Self::index(i), self.chunk(p, b)?)))
                        .collect(),
                    hints: vec![],
                };
                let r = self.ask(call);
                self.note(r);
                return None;
            }
            Op::Truncate { file, size, tail } => NsCall::Truncate {
                ino: self.own_ino(file),
                size,
                tail: tail.map(|(i, p, b)| (Self::index(i), self.chunk(p, b))),
                set: SetAttr::default(),
            },
            Op::Release(p) => NsCall::Release(self.any_ino(p)),
            Op::Releases(ps) => NsCall::Releases(ps.iter().map(|&p| self.any_ino(p)).collect()),
            Op::Open(p) => NsCall::Open(self.any_ino(p)),
            Op::OpenRead(p) => NsCall::OpenRead(self.any_ino(p)),
            Op::Promise { since, dirs } => NsCall::Promise {
                since,
                dirs: dirs.into_iter().map(|p| self.any_ino(p)).collect(),
            },
            Op::Lock {
                ino,
                owner,
                start,
                end,
                typ,
                wait,
            } => {
                let want = RangeLock {
                    start,
                    end,
                    typ,
                    pid: 1,
                };
                let ino = self.any_ino(ino);
                if wait {
                    NsCall::SetlkWait {
                        ino,
                        owner,
                        want,
                        hold_ms: u32::MAX,
                    }
                } else {
                    NsCall::Setlk { ino, owner, want }
                }
            }
            Op::Unlock { ino, owner } => NsCall::Unlock {
                ino: self.any_ino(ino),
                owner,
            },
            Op::Read { ino, offset, max } => {
                let ino = self.any_ino(ino);
                match offset % 5 {
                    0 => NsCall::ReaddirPlus { ino, offset, max },
                    1 => NsCall::Readdir { ino, offset, max },
                    2 => NsCall::ChunksFrom { ino, from: offset },
                    3 => NsCall::Chunk { ino, idx: offset },
                    _ => NsCall::Listxattr(ino),
                }
            }
            Op::Create {
                name,
                kind,
                perm,
                target,
                open,
            } => {
                let kind = [
                    FileKind::File,
                    FileKind::Dir,
                    FileKind::Symlink,
                    FileKind::Fifo,
                    FileKind::Socket,
                    FileKind::CharDev,
                    FileKind::BlockDev,
                    FileKind::File,
                ][kind as usize % 8];
                let parent = self.own[name.len() % self.own.len()];
                let made = self.ns(if open {
                    NsCall::CreateOpen {
                        parent,
                        name: ByteBuf::from(name),
                        node: node(kind, perm, target),
                    }
                } else {
                    NsCall::CreateNode {
                        parent,
                        name: ByteBuf::from(name),
                        node: node(kind, perm, target),
                    }
                });
                match &made {
                    Ok(NsReply::Attr(a)) | Ok(NsReply::Created { attr: a, .. }) => {
                        self.own.push(a.ino)
                    }
                    _ => {}
                }
                self.note(made);
                return None;
            }
            Op::Link { ino, name } => NsCall::Link {
                ino: self.any_ino(ino),
                parent: self.evil,
                name: ByteBuf::from(name),
            },
            Op::Unlink(name) => NsCall::Unlink {
                parent: self.evil,
                name: ByteBuf::from(name),
            },
            Op::Rename {
                from,
                to,
                into,
                exchange,
            } => NsCall::Rename {
                parent: self.evil,
                name: ByteBuf::from(from),
                new_parent: self.own_ino(into),
                new_name: ByteBuf::from(to),
                flags: RenameFlags {
                    noreplace: false,
                    exchange,
                },
            },
            Op::Cycle => NsCall::Rename {
                parent: Ino::ROOT,
                name: ByteBuf::from(b"evil".to_vec()),
                new_parent: *self.own.get(1).unwrap_or(&self.evil),
                new_name: ByteBuf::from(b"loop".to_vec()),
                flags: RenameFlags::default(),
            },
            Op::Setxattr { ino, name, len } => NsCall::Setxattr {
                ino: self.own_ino(ino),
                name: ByteBuf::from([b"user.".to_vec(), name].concat()),
                value: ByteBuf::from(vec![7; len]),
                create: false,
                replace: false,
            },
            Op::Setattr { ino, size, secs } => NsCall::Setattr {
                ino: self.own_ino(ino),
                set: SetAttr {
                    perm: Some(0o4777),
                    uid: Some(0),
                    gid: None,
                    size,
                    atime: Some(SetTime::At(Timestamp {
                        secs,
                        nanos: u32::MAX,
                    })),
                    mtime: Some(SetTime::Now),
                },
            },
            Op::Watch(since) => NsCall::Watch { since },
            Op::ResetLocks => NsCall::ResetLocks,
            Op::OwnerOnly => {
                let r = self.ask(MetaCall::Volume(Request::Gc { grace_secs: 0 }));
                self.note(r);
                return None;
            }
            Op::Batch(ops) => NsCall::Batch(ops.iter().filter_map(|o| self.call_of(o)).collect()),
        })
    }

    /// What must hold after any run of hostile calls.
    fn check(&mut self) -> Result<(), TestCaseError> {
        self.check_files(false)
    }

    /// [`Rig::check`]; `all`: every honest file is read back, else the
    /// first four (the ones whose chunks are shared) and the last eight.
    fn check_files(&mut self, all: bool) -> Result<(), TestCaseError> {
        // An honest host reads what the member made (its files up to 64 MiB:
        // a larger one may be a sparse file of exabytes, read for ever, as
        // on any filesystem): errors are fine, a crash or a hang is not.
        let listing = self.home.ok(&["ls", "-l", "/evil"]);
        for line in listing.lines().filter(|l| l.starts_with('-')) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(size), Some(name)) = (f.get(4), f.get(6)) else {
                continue;
            };
            let size: u64 = size.parse().unwrap_or(0);
            prop_assert!(
                size <= i64::MAX as u64,
                "/evil/{name} is {size} bytes: past what a file can hold"
            );
            if size <= 64 << 20 {
                let start = Instant::now();
                let out = std::process::Command::new("timeout")
                    .arg("60")
                    .arg(fs_tests::datamesh_bin())
                    .arg("--home")
                    .arg(self.home.home())
                    .args(["cat", &format!("/evil/{name}")])
                    .stdout(std::process::Stdio::null())
                    .output()
                    .unwrap();
                prop_assert!(
                    out.status.code() != Some(124),
                    "reading /evil/{name} did not end ({:?})",
                    start.elapsed()
                );
            }
        }
        let alive = self.daemon.as_mut().is_some_and(|d| d.is_running());
        prop_assert!(alive, "the home daemon died");
        let n = self.honest.len();
        let read = |i: usize| all || i < 4 || i + 8 >= n;
        for (_, (path, want)) in self.honest.iter().enumerate().filter(|(i, _)| read(*i)) {
            let back = self.home.dir.path().join("back");
            let out = self.home.run(&["get", path, back.to_str().unwrap()]);
            prop_assert!(
                out.status.success(),
                "{path}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            prop_assert!(std::fs::read(&back).unwrap() == *want, "{path} changed");
        }
        // The member's mount "restarts" (its opens go), its files go, and
        // what is left must be whole.
        let _ = self.ns(NsCall::ResetLocks);
        let out = self.home.run(&["rm", "-r", "/evil"]);
        prop_assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = self.home.run(&["fsck"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        prop_assert!(
            out.status.success() && text.contains("fsck: clean"),
            "fsck after hostile calls: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

fn node(kind: FileKind, perm: u16, target: Option<Vec<u8>>) -> NewNode {
    NewNode {
        kind,
        perm,
        uid: 0,
        gid: 0,
        rdev: 0,
        target,
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn a_hostile_member_breaks_nothing_an_honest_host_keeps() {
    let mut rig = Rig::start();
    let cases = env_or("DATAMESH_HOSTILE_CASES", 120) as u32;
    let until = Instant::now() + Duration::from_secs(60 * env_or("DATAMESH_HOSTILE_MINUTES", 60));
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        // A failing run is reported as it is: shrinking would replay it
        // against a volume the failure already changed.
        max_shrink_iters: 0,
        ..Config::default()
    });
    let rig_cell = std::cell::RefCell::new(&mut rig);
    let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
        if Instant::now() > until {
            return Ok(());
        }
        let mut rig = rig_cell.borrow_mut();
        let honest_next = rig.honest.len();
        // Honest work at the home while the hostile calls go on.
        let home = rig.home.home();
        let local = rig.home.dir.path().join(format!("h{honest_next}"));
        let data = noise([5_000, 300_000][honest_next % 2], (honest_next / 2) as u64);
        std::fs::write(&local, &data).unwrap();
        let path = format!("/honest/h{honest_next}");
        let put = std::thread::spawn({
            let (local, path) = (local.clone(), path.clone());
            move || {
                std::process::Command::new(fs_tests::datamesh_bin())
                    .arg("--home")
                    .arg(home)
                    .arg("put")
                    .arg(local)
                    .arg(path)
                    .output()
                    .unwrap()
            }
        });
        for op in &ops {
            rig.send(op);
        }
        let out = put.join().unwrap();
        prop_assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        rig.honest.push((path, data));
        rig.check()?;
        rig.fresh_evil();
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The honest chunks all survive a collection with no grace.
    let rig = rig_cell.into_inner();
    eprintln!(
        "hostile runs: {} (honest files {}); calls: {} answered, {} refused; refusals:\n  {}",
        rig.honest.len() - 4,
        rig.honest.len(),
        rig.answers.0,
        rig.answers.1,
        rig.refusals
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    rig.home.ok(&["gc", "--grace", "0"]);
    rig.check_files(true).unwrap();
    if let Some(d) = rig.daemon.take() {
        assert!(d.stop(), "the home daemon ends cleanly");
    }
}

/// A member past its bounds is told `Busy` (the call not run), the home
/// serves everyone else meanwhile, and the member is served again once it
/// is back within them.
#[test]
fn a_member_past_its_bounds_is_told_busy_and_the_home_serves_on() {
    let rig = Rig::start();
    let next = match rig.ns(NsCall::Watch { since: 0 }) {
        Ok(NsReply::Changes(s)) => s.next,
        other => panic!("the home answered {other:?}"),
    };
    // Twelve watches at once: the home holds four, and tells the rest the
    // member is busy at once (a watch is held for seconds when nothing
    // changes).
    let start = Instant::now();
    let answers: Vec<Result<NsReply, datamesh::Error>> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..12)
            .map(|_| s.spawn(|| rig.ns(NsCall::Watch { since: next })))
            .collect();
        // The home's own CLI is not held up by them.
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        rig.home.ok(&["ls", "/honest"]);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let busy = answers
        .iter()
        .filter(|a| matches!(a, Err(e) if e.kind() == datamesh::error::Kind::Busy))
        .count();
    let held = answers.iter().filter(|a| a.is_ok()).count();
    assert!(busy >= 8, "{busy} of 12 told busy: {answers:?}");
    assert!(held <= 4, "{held} watches held at once");
    assert!(start.elapsed() < Duration::from_secs(30));
    // Within its bounds again, the member is served.
    assert!(matches!(rig.ns(NsCall::Params), Ok(NsReply::Params(_))));
}
