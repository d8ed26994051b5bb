//! What member devices and the home node say over `/datamesh/meta/1` (the
//! transport is [`crate::net::member`]'s): a request is postcard
//! [`MetaRequest`]; its answer postcard `Result<MetaReply, WireError>`; an
//! empty answer means the host answers no members (not a home, or not
//! listening for them). New calls are new last variants (see DESIGN).

use crate::chunk::ChunkRef;
use crate::error::Kind;
use crate::meta::changes::Since;
use crate::meta::locks::RangeLock;
use crate::meta::{InodeRec, NewNode, VolumeParams};
use crate::types::{Attr, DirEntry, Ino, RenameFlags, SetAttr, Timestamp};
use crate::volume::NewFile;
use crate::volume::proto::{Reply, Request, WireError};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::time::Duration;

/// The member protocol's version.
/// 2: chunk maps may hold layered chunks (metadata format 2).
pub const VERSION: u32 = 2;

#[derive(Debug, Serialize, Deserialize)]
pub struct MetaRequest {
    pub version: u32,
    pub call: MetaCall,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum MetaCall {
    /// A new device proves it holds a member invitation.
    Join {
        /// `admission_proof(the token's member secret, the device's peer id)`.
        proof: [u8; 32],
        /// Its device public key, to seal the volume secret to.
        device: ByteBuf,
        name: String,
    },
    /// A call of the volume socket that streams nothing.
    Volume(Request),
    /// A file whose chunks the member stored already.
    CommitFile {
        file: NewFile,
        size: u64,
        chunks: Vec<(u64, ChunkRef)>,
        /// Per chunk, per shard, the peers the member stored it on.
        hints: Vec<Vec<Vec<String>>>,
    },
    /// A file's size and chunks.
    ChunkMap(Ino),
    /// The storage peers' addresses.
    Peers,
    /// One operation of the namespace under a member's mounted engine.
    Ns(NsCall),
    /// The mesh key ring, if the home's is newer than generation `have`
    /// (docs/DESIGN.md, "Mesh key rotation").
    MeshKeys { have: u64 },
}

impl MetaCall {
    /// The call's name, as the metrics count it (`home_calls{request=…}`).
    pub fn kind(&self) -> &'static str {
        match self {
            MetaCall::Join { .. } => "join",
            MetaCall::Volume(_) => "volume",
            MetaCall::CommitFile { .. } => "commit_file",
            MetaCall::ChunkMap(_) => "chunk_map",
            MetaCall::Peers => "peers",
            MetaCall::Ns(call) => call.kind(),
            MetaCall::MeshKeys { .. } => "mesh_keys",
        }
    }
}

impl MetaCall {
    /// Whether the call may be asked again when its answer was lost
    /// ([`NsCall::may_repeat`]).
    pub fn may_repeat(&self) -> bool {
        matches!(self, MetaCall::Ns(c) if c.may_repeat())
    }
}

impl NsCall {
    /// Whether the call may be asked again when its connection closed
    /// before the answer, having perhaps run (a batch: all of its calls).
    /// Reads change nothing; a promise or delegation asked again is granted
    /// again; a release of a handle the home does not count for this member
    /// is ignored, and a home that restarted counts none. (A connection
    /// lost after a release ran, with the home up, counts it twice: the
    /// home may then drop an unlinked file another handle of that member
    /// still has open; the file's name was gone already.) Not inode
    /// numbers: a second range drops the oldest the member may still use.
    pub fn may_repeat(&self) -> bool {
        match self {
            NsCall::Release(_)
            | NsCall::Releases(_)
            | NsCall::Promise { .. }
            | NsCall::Delegate { .. } => true,
            NsCall::Batch(calls) => calls.iter().all(NsCall::may_repeat),
            other => other.reads_only(),
        }
    }

    /// Whether the call only reads the namespace (a batch: all of its calls).
    pub fn reads_only(&self) -> bool {
        match self {
            NsCall::Params
            | NsCall::Inode(_)
            | NsCall::Attr(_)
            | NsCall::Lookup { .. }
            | NsCall::Readdir { .. }
            | NsCall::ReaddirPlus { .. }
            | NsCall::Chunk { .. }
            | NsCall::ChunksFrom { .. }
            | NsCall::Getxattr { .. }
            | NsCall::Listxattr(_)
            | NsCall::Getlk { .. }
            | NsCall::Features => true,
            NsCall::Batch(calls) => calls.iter().all(NsCall::reads_only),
            _ => false,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            NsCall::Params => "params",
            NsCall::Inode(_) => "inode",
            NsCall::Attr(_) => "attr",
            NsCall::Lookup { .. } => "lookup",
            NsCall::Readdir { .. } => "readdir",
            NsCall::Chunk { .. } => "chunk",
            NsCall::ChunksFrom { .. } => "chunks_from",
            NsCall::Getxattr { .. } => "getxattr",
            NsCall::Listxattr(_) => "listxattr",
            NsCall::CreateNode { .. } => "create_node",
            NsCall::Link { .. } => "link",
            NsCall::Unlink { .. } => "unlink",
            NsCall::Rmdir { .. } => "rmdir",
            NsCall::Rename { .. } => "rename",
            NsCall::Setattr { .. } => "setattr",
            NsCall::CommitChunks { .. } => "commit_chunks",
            NsCall::Truncate { .. } => "truncate",
            NsCall::Setxattr { .. } => "setxattr",
            NsCall::Removexattr { .. } => "removexattr",
            NsCall::Sync => "sync",
            NsCall::Open(_) => "open",
            NsCall::Release(_) => "release",
            NsCall::Getlk { .. } => "getlk",
            NsCall::Setlk { .. } => "setlk",
            NsCall::Unlock { .. } => "unlock",
            NsCall::ResetLocks => "reset_locks",
            NsCall::CreateOpen { .. } => "create_open",
            NsCall::Releases(_) => "releases",
            NsCall::ReaddirPlus { .. } => "readdir_plus",
            NsCall::Watch { .. } => "watch",
            NsCall::SetlkWait { .. } => "setlk_wait",
            NsCall::Batch(_) => "batch",
            NsCall::Promise { .. } => "promise",
            NsCall::OpenRead(_) => "open",
            NsCall::Delegate { .. } => "delegate",
            NsCall::Inodes => "inodes",
            NsCall::Made { .. } => "made",
            NsCall::Features => "features",
            NsCall::Unmade { .. } => "unmade",
            NsCall::Held { .. } => "held",
        }
    }
}

/// The namespace operations a member's engine asks (see
/// [`crate::meta::Namespace`]); each is one batch at home.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum NsCall {
    Params,
    Inode(Ino),
    Attr(Ino),
    Lookup {
        parent: Ino,
        name: ByteBuf,
    },
    Readdir {
        ino: Ino,
        offset: u64,
        max: u32,
    },
    Chunk {
        ino: Ino,
        idx: u64,
    },
    ChunksFrom {
        ino: Ino,
        from: u64,
    },
    Getxattr {
        ino: Ino,
        name: ByteBuf,
    },
    Listxattr(Ino),
    CreateNode {
        parent: Ino,
        name: ByteBuf,
        node: NewNode,
    },
    Link {
        ino: Ino,
        parent: Ino,
        name: ByteBuf,
    },
    Unlink {
        parent: Ino,
        name: ByteBuf,
    },
    Rmdir {
        parent: Ino,
        name: ByteBuf,
    },
    Rename {
        parent: Ino,
        name: ByteBuf,
        new_parent: Ino,
        new_name: ByteBuf,
        flags: RenameFlags,
    },
    Setattr {
        ino: Ino,
        set: SetAttr,
    },
    CommitChunks {
        ino: Ino,
        chunks: Vec<(u64, Option<ChunkRef>)>,
        size: u64,
        mtime: Option<Timestamp>,
        /// Per chunk, per shard, the peers the member stored it on.
        hints: Vec<Vec<Vec<String>>>,
    },
    Truncate {
        ino: Ino,
        size: u64,
        tail: Option<(u64, Option<ChunkRef>)>,
        set: SetAttr,
    },
    Setxattr {
        ino: Ino,
        name: ByteBuf,
        value: ByteBuf,
        create: bool,
        replace: bool,
    },
    Removexattr {
        ino: Ino,
        name: ByteBuf,
    },
    Sync,
    /// A handle opened on the member: the home keeps the file while it is
    /// (answered with the file's attributes).
    Open(Ino),
    Release(Ino),
    Getlk {
        ino: Ino,
        owner: u64,
        want: RangeLock,
    },
    Setlk {
        ino: Ino,
        owner: u64,
        want: RangeLock,
    },
    Unlock {
        ino: Ino,
        owner: u64,
    },
    /// The member's mount starts: locks left by an earlier one go.
    ResetLocks,
    /// Makes a node and counts it open (an `O_CREAT` create in one call).
    CreateOpen {
        parent: Ino,
        name: ByteBuf,
        node: NewNode,
    },
    /// Handles closed on the member since its last `Releases`.
    Releases(Vec<Ino>),
    /// A page of entries with their attributes.
    ReaddirPlus {
        ino: Ino,
        offset: u64,
        max: u32,
    },
    /// What other hosts changed since `since`; held until a change or
    /// [`WATCH_HOLD`]. Also the member's lease on its locks.
    Watch {
        since: u64,
    },
    /// `Setlk` for a lock the caller waits for: the home holds the call up
    /// to `hold_ms` (at most [`LOCK_HOLD`]) until the lock is free, and
    /// answers `Locked(true)` once taken, `Locked(false)` if still in the
    /// way (the member asks again), or a deadlock error. A home older than
    /// this call finds it unreadable: the member then asks with `Setlk`.
    SetlkWait {
        ino: Ino,
        owner: u64,
        want: RangeLock,
        hold_ms: u32,
    },
    /// Calls run in order, each as if sent alone (its own batch at home),
    /// answered `Batch` with a result each: a member's queued changes to
    /// the files it is writing, in front of its next call (docs/DESIGN.md,
    /// "Changes to a new file"). At most [`MAX_BATCH`] calls; never a
    /// `Batch`, `Watch` or `SetlkWait` inside.
    Batch(Vec<NsCall>),
    /// Asks the home to promise that this mount sees any other origin's
    /// change to each of `dirs` before that change is answered; `since` is
    /// the mount's watch position when it learned their contents
    /// (docs/DESIGN.md, "Promises on directories"). At most
    /// [`crate::meta::promises::MAX_ASK`] directories.
    Promise {
        since: u64,
        dirs: Vec<Ino>,
    },
    /// `Open`, answered with the file's attributes and, for a regular
    /// file, the first [`MAP_PAGE`] chunks of its map with their holders
    /// (`Opened`): a read after an open costs no second round trip. A home
    /// older than this call finds it unreadable: the member opens with
    /// `Open` then.
    OpenRead(Ino),
    /// `Promise`, and each directory granted is *delegated*: the home
    /// recalls it (the holder's watch wakes with its inode changed, and
    /// the holder's next watch brings what it held back) before another
    /// origin reads it (docs/DESIGN.md, "Delegated directories"). Answered
    /// `Promised`. A home older than this call finds it unreadable: the
    /// member asks `Promise` then.
    Delegate {
        since: u64,
        dirs: Vec<Ino>,
    },
    /// A range of inode numbers for the files this mount makes in its
    /// delegated directories (answered `Inodes`; docs/DESIGN.md, "Delegated
    /// directories: files made locally").
    Inodes,
    /// A regular file this mount made, and opened, in a directory delegated
    /// to it, with a number of its ranges, at `time`: `CreateOpen` with
    /// the number and time given. Answered `Created`.
    Made {
        parent: Ino,
        name: ByteBuf,
        node: NewNode,
        ino: Ino,
        time: Timestamp,
    },
    /// What of the calls after this one the home reads: answered
    /// `Features` (a bit set of `FEATURE_*`). A home older than it finds
    /// it unreadable: none.
    Features,
    /// `name` in `parent`, inode `ino`, removed by this mount in a
    /// directory delegated to it: `Unlink` (`Rmdir` when `dir`), applied
    /// only while the directory is delegated and the name still `ino`
    /// (docs/DESIGN.md, "Delegated directories: removes held back").
    /// Answered `Unit`.
    Unmade {
        parent: Ino,
        name: ByteBuf,
        ino: Ino,
        dir: bool,
    },
    /// A change held back under the delegation of `dir`: answered as
    /// `call` alone, but only while `dir` is delegated to this device
    /// (docs/DESIGN.md, "Delegated directories: changes held back only
    /// while held"). Not nested.
    Held {
        dir: Ino,
        call: Box<NsCall>,
    },
}

/// The home reads `Unmade`.
pub const FEATURE_UNMADE: u64 = 1;
/// The home reads `Held`.
pub const FEATURE_HELD: u64 = 2;
/// The home makes symlinks a member made (`Made`).
pub const FEATURE_MADE_LINKS: u64 = 4;
/// The home makes directories a member made (`Made`), delegated to it.
pub const FEATURE_MADE_DIRS: u64 = 8;
/// The home reads batches of up to [`MAX_BATCH`] calls (an older one,
/// [`MAX_BATCH_V1`]).
pub const FEATURE_BIG_BATCH: u64 = 16;
/// What this home reads, as `Features` answers.
pub const FEATURES: u64 =
    FEATURE_UNMADE | FEATURE_HELD | FEATURE_MADE_LINKS | FEATURE_MADE_DIRS | FEATURE_BIG_BATCH;

/// The most calls one [`NsCall::Batch`] carries to a home that reads
/// [`FEATURE_BIG_BATCH`].
pub const MAX_BATCH: usize = 256;
/// The most calls one [`NsCall::Batch`] carries to a home older than
/// [`FEATURE_BIG_BATCH`].
pub const MAX_BATCH_V1: usize = 64;

impl NsCall {
    /// Whether this call may go inside a [`NsCall::Batch`]: not a batch,
    /// nor a call the home holds until something happens (`Watch`,
    /// `SetlkWait`), which would hold up the calls behind it.
    pub fn batchable(&self) -> bool {
        !matches!(
            self,
            NsCall::Watch { .. } | NsCall::SetlkWait { .. } | NsCall::Batch(_)
        )
    }
}

/// The longest the home holds a `SetlkWait`: well within a member's
/// [`crate::net::member::ANSWER_WAIT`], and short enough that a member sees
/// its waiting process's signals soon.
pub const LOCK_HOLD: Duration = Duration::from_millis(500);

/// How long the home holds a `Watch` with nothing to tell.
pub const WATCH_HOLD: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, Deserialize)]
pub enum NsReply {
    Params(VolumeParams),
    Inode(InodeRec),
    Attr(Attr),
    Entries(Vec<DirEntry>),
    /// A chunk, with where its shards are (peer ids per shard, as far as
    /// the home knows): the member asks those peers first.
    Chunk {
        chunk: Option<ChunkRef>,
        hints: Vec<Vec<String>>,
    },
    Chunks {
        chunks: Vec<(u64, ChunkRef)>,
        hints: Vec<Vec<Vec<String>>>,
    },
    Bytes(ByteBuf),
    Names(Vec<ByteBuf>),
    Lock(Option<RangeLock>),
    Unit,
    EntriesPlus(Vec<PlusEntry>),
    Changes(Since),
    /// A node made and opened, with its directory's new attributes.
    Created {
        attr: Attr,
        parent: Attr,
    },
    /// Whether a `SetlkWait` took its lock.
    Locked(bool),
    /// A `Batch`'s results, one per call, in order.
    Batch(Vec<std::result::Result<NsReply, WireError>>),
    /// Per directory asked, whether it is promised.
    Promised(Vec<bool>),
    /// An `OpenRead`'s answer; `map` is `None` for what is not a regular
    /// file (or when the map could not be read: the member asks for it).
    Opened {
        attr: Attr,
        map: Option<FirstPage>,
    },
    /// A range of inode numbers handed to this mount: `len` from `start`.
    Inodes {
        start: Ino,
        len: u64,
    },
    /// The calls the home reads of those a member may hold back
    /// (`FEATURE_*`).
    Features(u64),
}

/// The first page of a file's chunk map, as `Chunks` gives a page.
#[derive(Debug, Serialize, Deserialize)]
pub struct FirstPage {
    pub chunks: Vec<(u64, ChunkRef)>,
    pub hints: Vec<Vec<Vec<String>>>,
}

/// An entry of a readdirplus page.
#[derive(Debug, Serialize, Deserialize)]
pub struct PlusEntry {
    pub entry: DirEntry,
    pub attr: Attr,
    /// Whether the inode has extended attributes (a member answers the
    /// kernel's and `ls`'s probes of one without any itself).
    pub xattrs: bool,
}

/// The volume's parameters a member seals chunks with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub chunk_size: u32,
    pub data_shards: u8,
    pub parity_shards: u8,
    pub inline_max: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum MetaReply {
    Joined {
        /// The volume secret, sealed (ECIES) to the device's public key.
        sealed_key: ByteBuf,
        info: VolumeInfo,
        peers: Vec<String>,
    },
    Volume(Reply),
    ChunkMap {
        size: u64,
        chunks: Vec<(u64, ChunkRef)>,
        /// Per chunk, per shard, the peers known to hold it.
        hints: Vec<Vec<Vec<String>>>,
    },
    Peers(Vec<String>),
    Ns(NsReply),
    /// The home's ring, sealed (ECIES) to the member's device key; `None`
    /// when the member's is as new.
    MeshKeys(Option<ByteBuf>),
}

pub fn encode_request(call: MetaCall) -> Vec<u8> {
    postcard::to_stdvec(&MetaRequest {
        version: VERSION,
        call,
    })
    .expect("requests serialize")
}

pub(super) fn encode_answer(answer: std::result::Result<MetaReply, WireError>) -> Vec<u8> {
    postcard::to_stdvec(&answer).unwrap_or_else(|e| {
        let e = WireError {
            kind: Kind::Other,
            text: format!("the answer could not be written: {e}"),
        };
        postcard::to_stdvec(&Err::<MetaReply, _>(e)).expect("errors serialize")
    })
}

/// A member's reading of the home's answer.
pub fn decode_answer(bytes: &[u8]) -> Result<MetaReply> {
    if bytes == crate::net::member::BUSY_ANSWER {
        return Err(Error::Remote(
            Kind::Busy,
            "busy: the home node is answering as many member calls as it takes".into(),
        ));
    }
    if bytes.is_empty() {
        return Err(Error::Remote(
            Kind::Other,
            "the home node does not answer member devices now (is its daemon running with --listen?)"
                .into(),
        ));
    }
    match postcard::from_bytes::<std::result::Result<MetaReply, WireError>>(bytes) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(Error::Remote(
            Kind::Other,
            format!("an unreadable answer from the home node: {e}"),
        )),
    }
}

pub(super) fn refused(text: String) -> WireError {
    WireError {
        kind: Kind::NotPermitted,
        text,
    }
}

/// The most chunks one `ChunksFrom` answers with (a member asks on from the
/// last one when it needs more).
pub const MAP_PAGE: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_busy_home_is_told_apart_from_every_answer() {
        let e = decode_answer(crate::net::member::BUSY_ANSWER).unwrap_err();
        assert_eq!(e.kind(), Kind::Busy, "{e}");
        let e = WireError {
            kind: Kind::Busy,
            text: "busy: test".into(),
        };
        let bytes = encode_answer(Err(e));
        assert_ne!(bytes, crate::net::member::BUSY_ANSWER);
        assert_eq!(decode_answer(&bytes).unwrap_err().kind(), Kind::Busy);
        let ok = encode_answer(Ok(MetaReply::Peers(vec![])));
        assert_ne!(ok, crate::net::member::BUSY_ANSWER);
    }

    proptest! {
        #[test]
        fn damaged_requests_and_answers_are_errors_not_panics(
            junk in proptest::collection::vec(any::<u8>(), 0..200)
        ) {
            let _ = postcard::from_bytes::<MetaRequest>(&junk);
            let _ = decode_answer(&junk);
        }

        #[test]
        fn requests_round_trip(ino in any::<u64>(), name in ".{0,40}") {
            let bytes = encode_request(MetaCall::Join {
                proof: [7; 32],
                device: ByteBuf::from(vec![1, 2, 3]),
                name: name.clone(),
            });
            let back: MetaRequest = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(back.version, VERSION);
            match back.call {
                MetaCall::Join { name: n, .. } => prop_assert_eq!(n, name),
                other => prop_assert!(false, "{:?}", other),
            }
            let bytes = encode_request(MetaCall::ChunkMap(Ino(ino)));
            let back: MetaRequest = postcard::from_bytes(&bytes).unwrap();
            prop_assert!(matches!(back.call, MetaCall::ChunkMap(Ino(i)) if i == ino));
        }

        #[test]
        fn promises_round_trip_in_a_batch(
            since in any::<u64>(),
            dirs in proptest::collection::vec(any::<u64>(), 0..64),
            granted in proptest::collection::vec(any::<bool>(), 0..64),
        ) {
            let dirs: Vec<Ino> = dirs.into_iter().map(Ino).collect();
            for delegate in [false, true] {
                let ask = if delegate {
                    NsCall::Delegate { since, dirs: dirs.clone() }
                } else {
                    NsCall::Promise { since, dirs: dirs.clone() }
                };
                prop_assert!(ask.batchable());
                let bytes = encode_request(MetaCall::Ns(NsCall::Batch(vec![ask, NsCall::Sync])));
                let back: MetaRequest = postcard::from_bytes(&bytes).unwrap();
                match back.call {
                    MetaCall::Ns(NsCall::Batch(calls)) => {
                        prop_assert_eq!(calls.len(), 2);
                        let same = match &calls[0] {
                            NsCall::Promise { since: s, dirs: d } => !delegate && *s == since && *d == dirs,
                            NsCall::Delegate { since: s, dirs: d } => delegate && *s == since && *d == dirs,
                            _ => false,
                        };
                        prop_assert!(same, "{:?}", calls[0]);
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
            }
            let reply = Ok(MetaReply::Ns(NsReply::Batch(vec![Ok(NsReply::Promised(granted.clone()))])));
            match decode_answer(&encode_answer(reply)) {
                Ok(MetaReply::Ns(NsReply::Batch(r))) => {
                    let same = matches!(&r[0], Ok(NsReply::Promised(g)) if *g == granted);
                    prop_assert!(same, "{:?}", r[0]);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }

    proptest! {
        #[test]
        fn removes_held_back_and_features_round_trip(
            parent in any::<u64>(),
            ino in any::<u64>(),
            name in proptest::collection::vec(any::<u8>(), 1..255),
            dir in any::<bool>(),
            features in any::<u64>(),
        ) {
            let call = NsCall::Unmade {
                parent: Ino(parent),
                name: ByteBuf::from(name.clone()),
                ino: Ino(ino),
                dir,
            };
            let bytes = encode_request(MetaCall::Ns(NsCall::Batch(vec![call, NsCall::Features])));
            let back: MetaRequest = postcard::from_bytes(&bytes).unwrap();
            let same = matches!(
                &back.call,
                MetaCall::Ns(NsCall::Batch(c)) if matches!(
                    &c[..],
                    [NsCall::Unmade { parent: p, name: n, ino: i, dir: d }, NsCall::Features]
                        if p.0 == parent && n.as_ref() == &name[..] && i.0 == ino && *d == dir
                )
            );
            prop_assert!(same, "{:?}", back.call);
            let reply = Ok(MetaReply::Ns(NsReply::Features(features)));
            let same = matches!(
                decode_answer(&encode_answer(reply)),
                Ok(MetaReply::Ns(NsReply::Features(f))) if f == features
            );
            prop_assert!(same);
        }
    }

    #[test]
    fn only_calls_that_change_nothing_are_reads_and_few_others_repeat() {
        let lookup = NsCall::Lookup {
            parent: Ino(1),
            name: ByteBuf::from(b"a".to_vec()),
        };
        assert!(MetaCall::Ns(lookup.clone()).may_repeat());
        assert!(NsCall::Batch(vec![lookup.clone(), NsCall::Attr(Ino(2))]).reads_only());
        let releases = NsCall::Releases(vec![Ino(2)]);
        assert!(!releases.reads_only());
        assert!(NsCall::Batch(vec![releases, lookup.clone()]).may_repeat());
        let unlink = NsCall::Unlink {
            parent: Ino(1),
            name: ByteBuf::from(b"a".to_vec()),
        };
        for change in [NsCall::Sync, NsCall::Inodes, unlink] {
            assert!(!change.reads_only(), "{change:?}");
            assert!(!NsCall::Batch(vec![change, lookup.clone()]).may_repeat());
        }
        assert!(!NsCall::Watch { since: 0 }.may_repeat());
        assert!(!MetaCall::Peers.may_repeat());
    }

    #[test]
    fn an_open_answer_round_trips_with_and_without_its_map() {
        let t = Timestamp::default();
        let attr = Attr {
            ino: Ino(9),
            kind: crate::types::FileKind::File,
            perm: 0o644,
            uid: 1,
            gid: 1,
            size: 5,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            nlink: 1,
            rdev: 0,
            blocks: 1,
        };
        for map in [
            None,
            Some(FirstPage {
                chunks: vec![],
                hints: vec![],
            }),
        ] {
            let had = map.is_some();
            let reply = Ok(MetaReply::Ns(NsReply::Opened {
                attr: attr.clone(),
                map,
            }));
            match decode_answer(&encode_answer(reply)) {
                Ok(MetaReply::Ns(NsReply::Opened { attr: a, map })) => {
                    assert_eq!(a.ino, Ino(9));
                    assert_eq!(map.is_some(), had);
                }
                other => panic!("{other:?}"),
            }
        }
        let back: MetaRequest =
            postcard::from_bytes(&encode_request(MetaCall::Ns(NsCall::OpenRead(Ino(3))))).unwrap();
        assert!(matches!(back.call, MetaCall::Ns(NsCall::OpenRead(Ino(3)))));
    }

    #[test]
    fn an_empty_answer_says_the_home_answers_no_members() {
        let err = decode_answer(&[]).unwrap_err().to_string();
        assert!(err.contains("does not answer member devices"), "{err}");
        let refusal = encode_answer(Err(refused("refused: x".into())));
        let err = decode_answer(&refusal).unwrap_err();
        assert_eq!(err.kind(), Kind::NotPermitted);
    }
}
