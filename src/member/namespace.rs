//! A member device's mount: its engine stands on [`RemoteNamespace`], the
//! home node's namespace asked over `/datamesh/meta/1`, with the chunk maps,
//! inode records and shard locations it needs kept while files are open.

use super::defer::{Line, Youngs};
use super::eras::Eras;
use super::held::Held;
use super::link::{bad, learn, reach};
use super::wire::{
    FEATURE_BIG_BATCH, FEATURE_HELD, FEATURE_MADE_DIRS, FEATURE_MADE_LINKS, FEATURE_UNMADE,
    FirstPage, MAP_PAGE, NsCall, NsReply,
};
use crate::Result;
use crate::chunk::ChunkRef;
use crate::home::Home;
use crate::meta::changes::{Changed, Since};
use crate::meta::locks::RangeLock;
use crate::meta::{InodeRec, Namespace, NewNode, VolumeParams};
use crate::net::MeshStore;
use crate::store::ShardStore;
use crate::types::*;
use crate::util::lock;
use crate::volume::calls::buf;
use crate::workers::Runner;
use serde_bytes::ByteBuf;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a member mount asks whether the mesh key was rotated.
const KEYS_EVERY: Duration = Duration::from_secs(60);

/// The engine of a mount on a member device: file bytes sealed and opened
/// here, the namespace the home node's ([`RemoteNamespace`]).
pub fn open_engine(home: &Home, cfg: crate::data::EngineConfig) -> Result<crate::data::Engine> {
    let r = reach(home)?;
    let held = Arc::new(Held::default());
    let mut ns = RemoteNamespace {
        line: Arc::new(Line::new(r.store.client().clone(), r.home, held.clone())),
        held,
        young: Youngs::default(),
        params: None,
        store: r.store.clone(),
        maps: Mutex::new(HashMap::new()),
        inodes: Mutex::new(HashMap::new()),
        eras: Eras::default(),
        releases: Arc::new(Releases::default()),
        fresh: Mutex::new(Fresh::default()),
        home_waits_locks: AtomicBool::new(true),
        home_opens_with_map: AtomicBool::new(true),
        home_reads: 0,
        keys: r.keys.clone(),
    };
    let params = match ns.ns(NsCall::Params)? {
        NsReply::Params(p) => p,
        other => return Err(bad(format!("the home node answered {other:?}"))),
    };
    ns.params = Some(params);
    ns.home_reads = match ns.ns(NsCall::Features) {
        Ok(NsReply::Features(f)) => f,
        // A home older than the call.
        Err(e) if e.kind() == crate::error::Kind::Invalid => 0,
        Err(e) => return Err(e),
        Ok(other) => return Err(bad(format!("the home node answered {other:?}"))),
    };
    if ns.home_reads & FEATURE_HELD != 0 {
        ns.young.guard_held();
    }
    if ns.home_reads & FEATURE_MADE_LINKS != 0 {
        ns.held.make_links();
    }
    if ns.home_reads & FEATURE_MADE_DIRS != 0 {
        ns.held.make_dirs();
    }
    if ns.home_reads & FEATURE_BIG_BATCH != 0 {
        ns.line.big_batches();
    }
    ns.reset_locks("")?;
    let n = r.file.info.data_shards as usize + r.file.info.parity_shards as usize;
    r.store.client().wait_for_peers(n, Duration::from_secs(10));
    crate::data::Engine::with_namespace(Box::new(ns), r.store, r.key, cfg)
}

/// The home node's namespace, asked over the mesh: what a member device's
/// mounted engine stands on. Each call waits at most
/// [`super::link::HOME_WAIT`].
pub struct RemoteNamespace {
    /// Calls to the home, after the changes held back.
    line: Arc<Line>,
    /// The directories the home promised this mount.
    held: Arc<Held>,
    /// The files this mount made and holds open, whose changes are held
    /// back (docs/DESIGN.md, "Changes to a new file").
    young: Youngs,
    /// Asked once, when the mount starts.
    params: Option<VolumeParams>,
    /// Where the home's hints of shard holders go.
    store: Arc<MeshStore>,
    /// Chunk maps of the files open here, fetched a page at a time: a
    /// sequential read asks the home once per [`MAP_PAGE`] chunks, not once
    /// per read. Dropped at each open (close-to-open) and for a file this
    /// device commits to.
    maps: Mutex<HashMap<Ino, ChunkPage>>,
    /// Inode records read by the data path (a read's size, a write's kind),
    /// with the same lifetime as `maps`; any change made here drops them.
    inodes: Mutex<HashMap<Ino, InodeRec>>,
    /// What `maps`, `inodes` and `fresh` may keep of an answer: none asked
    /// before a change here of the same inode.
    eras: Eras,
    /// Closed handles not yet told to the home.
    releases: Arc<Releases>,
    /// The mesh key ring, asked after every minute (a rotation).
    keys: super::link::KeyRing,
    /// What the home told lately of inodes not changed since.
    fresh: Mutex<Fresh>,
    /// Whether the home holds a waiting lock call (`SetlkWait`); a home
    /// older than that call is asked with `Setlk` again and again.
    home_waits_locks: AtomicBool,
    /// Whether the home answers `OpenRead` (an older one: `Open`).
    home_opens_with_map: AtomicBool,
    /// Which of the calls a member may hold back the home reads
    /// (`Features`, asked when the mount starts).
    home_reads: u64,
}

/// What a call does to a name in a directory.
#[derive(Clone, Copy)]
enum Edit {
    Adds,
    Removes,
}

/// How often a waiting lock asks a home that cannot hold the call.
const OLD_HOME_LOCK_RETRY: Duration = Duration::from_millis(20);

/// What this device learned lately of inodes, from answers it had anyway:
/// a directory's attributes (as a create in it answered them) and which
/// inodes have no extended attributes (made here, or listed by
/// readdirplus). Each is kept [`FRESH`] at most (the kernel's own time-out)
/// and dropped at any change here or change pushed by the home; so the
/// kernel's probes after a create (the directory's attributes, the new
/// file's `security.capability`) and `ls -l`'s (ACLs, SELinux labels) cost
/// no round trip.
#[derive(Default)]
struct Fresh {
    attrs: HashMap<Ino, (Attr, Instant)>,
    bare: HashMap<Ino, Instant>,
}

/// How long what [`Fresh`] holds is trusted.
const FRESH: Duration = Duration::from_secs(1);
/// Entries [`Fresh`] holds at most (then it starts again).
const FRESH_MAX: usize = 65_536;

impl Fresh {
    fn attr(&self, ino: Ino) -> Option<Attr> {
        self.attrs
            .get(&ino)
            .filter(|(_, t)| t.elapsed() < FRESH)
            .map(|(a, _)| a.clone())
    }
    fn is_bare(&self, ino: Ino) -> bool {
        self.bare.get(&ino).is_some_and(|t| t.elapsed() < FRESH)
    }
    fn keep_attr(&mut self, a: Attr) {
        if self.attrs.len() >= FRESH_MAX {
            self.attrs.clear();
        }
        self.attrs.insert(a.ino, (a, Instant::now()));
    }
    fn keep_bare(&mut self, ino: Ino) {
        if self.bare.len() >= FRESH_MAX {
            self.bare.clear();
        }
        self.bare.insert(ino, Instant::now());
    }
    fn drop_ino(&mut self, ino: Ino) {
        self.attrs.remove(&ino);
        self.bare.remove(&ino);
    }
}

/// Releases wait here for the worker `releases`, which tells the home in
/// batches: nothing waits on them, so a close costs no round trip for them.
#[derive(Default)]
struct Releases {
    /// The inodes, and whether the worker runs (when not, a release is
    /// told at once).
    queue: Mutex<(Vec<Ino>, bool)>,
    cond: std::sync::Condvar,
}

fn expect_unit(r: NsReply) -> Result<()> {
    match r {
        NsReply::Unit => Ok(()),
        other => Err(bad(format!("the home node answered {other:?}"))),
    }
}

/// Chunks `from..to` of a file (`to` = `None`: to its end); an index in the
/// range and not in `chunks` is a hole.
struct ChunkPage {
    from: u64,
    to: Option<u64>,
    chunks: HashMap<u64, ChunkRef>,
}

impl ChunkPage {
    /// The page of a map from chunk `from`, `chunks` as the home gives a
    /// page: it ends after its last chunk when full, else at the file's end.
    fn new(from: u64, chunks: Vec<(u64, ChunkRef)>) -> ChunkPage {
        let to = (chunks.len() >= MAP_PAGE).then(|| chunks.last().map_or(from, |(i, _)| i + 1));
        ChunkPage {
            from,
            to,
            chunks: chunks.into_iter().collect(),
        }
    }
}

impl RemoteNamespace {
    fn ns(&self, call: NsCall) -> Result<NsReply> {
        self.line.call(call)
    }

    fn attr(&self, call: NsCall) -> Result<Attr> {
        match self.ns(call)? {
            NsReply::Attr(a) => Ok(a),
            other => Err(bad(format!("the home node answered {other:?}"))),
        }
    }

    /// Forgets what is cached of `ino` (`None`: of every inode), which is
    /// no longer young.
    fn forget(&self, ino: Option<Ino>) {
        self.young.end(ino);
        self.drop_cached(ino);
    }

    /// Drops what is cached of `ino` (`None`: of every inode) but leaves
    /// young files young.
    fn drop_cached(&self, ino: Option<Ino>) {
        self.eras.bump(ino);
        match ino {
            Some(ino) => {
                lock(&self.maps).remove(&ino);
                lock(&self.inodes).remove(&ino);
                lock(&self.fresh).drop_ino(ino);
            }
            None => {
                lock(&self.inodes).clear();
                *lock(&self.fresh) = Fresh::default();
            }
        }
    }

    /// Forgets what an unlink or rmdir of `name` in `parent` makes stale:
    /// the entry's inode and the directory when this mount knows which
    /// inode that is (it made it in a directory delegated here), else
    /// everything cached, and the youth of files that could be the entry:
    /// not those made in another directory delegated here (each has one
    /// name, there), so `rm -rf` of a tree goes on listing and removing
    /// what this mount made with no call after a name it did not make.
    fn forget_entry(&self, parent: Ino, name: &[u8]) {
        match self.held.child(parent, name) {
            Some(victim) => {
                self.forget(Some(victim));
                self.forget(Some(parent));
            }
            None => {
                self.young.end_unless_elsewhere(&[parent]);
                self.drop_cached(None);
            }
        }
    }

    /// Forgets what is cached of `ino`, whose attributes or content change
    /// here, all but that it has no xattrs: no such change adds one (a
    /// chown may remove `security.capability`), and tar's chown, chmod and
    /// utimens of a new file would each make the kernel's probe before the
    /// next write a round trip again.
    /// The era after (`eras`).
    fn forget_changed(&self, ino: Ino) -> u64 {
        self.young.end(Some(ino));
        let era = self.eras.bump(Some(ino));
        lock(&self.maps).remove(&ino);
        lock(&self.inodes).remove(&ino);
        lock(&self.fresh).attrs.remove(&ino);
        era
    }

    /// `call`'s answer, kept as `ino`'s attributes for the kernel's next
    /// getattr (as a create's are) unless another change of `ino` ran
    /// beside it. What was read of `ino` while the call ran is dropped
    /// again after: it may be from before the change.
    fn changed(&self, ino: Ino, call: NsCall) -> Result<Attr> {
        let before = self.forget_changed(ino);
        let a = RemoteNamespace::attr(self, call);
        let after = self.forget_changed(ino);
        let a = a?;
        if after == before + 1 {
            self.keep_attr(after, a.clone());
        }
        Ok(a)
    }

    /// Whether `ino` is known to have no xattrs: said so within a second,
    /// or made here in (or as) a directory still delegated here, whose
    /// attributes this mount keeps (an xattr set here ends that; one set
    /// elsewhere recalls the directory first).
    fn known_bare(&self, ino: Ino) -> bool {
        lock(&self.fresh).is_bare(ino)
            || self
                .young
                .delegated_in(ino)
                .is_some_and(|dir| self.held.delegated(dir))
            || self.held.delegated_attr(ino).is_some()
    }

    /// A page of the listing of `dir` made here, when it is delegated here
    /// and this mount made every entry in it and keeps its attributes
    /// ([`Held::listing`]): `rm -rf`, `ls -l` and git's walks of a tree
    /// made here cost no round trip.
    fn local_listing(&self, dir: Ino, offset: u64, max: usize) -> Option<Vec<(DirEntry, Attr)>> {
        if !self.line.defers() {
            return None;
        }
        self.held
            .listing(dir, offset, max, |ino| self.young.attr(ino))
    }

    /// Keeps `a` for the kernel's next getattr if its inode's era is still
    /// `era`.
    fn keep_attr(&self, era: u64, a: Attr) {
        let mut fresh = lock(&self.fresh);
        if self.eras.still(a.ino, era) {
            fresh.keep_attr(a);
        }
    }

    /// What a node this mount made in `parent` by itself leaves known: it
    /// has no xattrs, and the directory's attributes are `dir` (or, not
    /// known, are asked again).
    fn made_here_in(&self, parent: Ino, made: Ino, dir: Option<Attr>) {
        let mut fresh = lock(&self.fresh);
        fresh.keep_bare(made);
        match dir {
            Some(dir) => fresh.keep_attr(dir),
            None => drop(fresh.attrs.remove(&parent)),
        }
    }

    /// Removes `name` from `parent` here, the `Unmade` call held back, when
    /// the home reads it and the directory is delegated here
    /// ([`Held::unmake_here`]); false: remove it at home.
    fn unmake_here(&self, parent: Ino, name: &[u8], dir: bool) -> bool {
        if self.home_reads & FEATURE_UNMADE == 0 || !self.line.defers() {
            return false;
        }
        let Some((victim, attr)) = self
            .held
            .unmake_here(parent, name, dir, |ino, call| self.line.hold(ino, call))
        else {
            return false;
        };
        self.forget(Some(victim));
        self.forget(Some(parent));
        // The kernel's getattr of the directory before its next remove
        // (a permission check) is answered from it.
        if let Some(a) = attr {
            self.keep_attr(self.eras.of(parent), a);
        }
        true
    }

    /// Renames `name` to `new_name` in `parent` here, the `Rename` held
    /// back, when both are young files or symlinks made in `parent`, a
    /// directory delegated here ([`Held::rename_here`]): git's
    /// `config.lock` to `config`. False: rename at home.
    fn rename_here(&self, parent: Ino, names: (&[u8], &[u8]), flags: RenameFlags) -> bool {
        if self.home_reads & FEATURE_HELD == 0 || !self.line.defers() || flags.exchange {
            return false;
        }
        let time = Timestamp::now();
        let Some((ino, victim, attr)) = self.held.rename_here(
            parent,
            names,
            flags.noreplace,
            time,
            |ino| self.young.delegated_in(ino) == Some(parent),
            |ino, call| self.line.hold(ino, call),
        ) else {
            return false;
        };
        // The file moved stays young: it has one name still, in `parent`.
        self.young.renamed(ino, time);
        if let Some(victim) = victim {
            self.forget(Some(victim));
        }
        self.forget(Some(parent));
        if let Some(a) = attr {
            self.keep_attr(self.eras.of(parent), a);
        }
        true
    }

    fn unit(&self, call: NsCall) -> Result<()> {
        expect_unit(self.ns(call)?)
    }

    /// Opens `ino` at home: its attributes, and the first page of its
    /// chunk map when the home sends it with them (`OpenRead`).
    fn open_read(&self, ino: Ino) -> Result<(Attr, Option<FirstPage>)> {
        if self.home_opens_with_map.load(Ordering::Relaxed) {
            match self.ns(NsCall::OpenRead(ino)) {
                Ok(NsReply::Opened { attr, map }) => return Ok((attr, map)),
                Ok(other) => return Err(bad(format!("the home node answered {other:?}"))),
                // An older home cannot read the call (and opened nothing).
                Err(e) if e.kind() == crate::error::Kind::Invalid => {
                    tracing::info!(
                        "the home node sends no chunk map with an open ({e}): \
                         a read after an open asks for it"
                    );
                    self.home_opens_with_map.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        Ok((RemoteNamespace::attr(self, NsCall::Open(ino))?, None))
    }

    /// `call` adds `name` to `parent` or removes it, as the promised
    /// directories learn; a call that fails leaves what `parent` holds
    /// unsure.
    fn names<T>(
        &self,
        parent: Ino,
        name: &[u8],
        edit: Edit,
        call: impl FnOnce(ByteBuf) -> Result<T>,
    ) -> Result<T> {
        match call(buf(name)) {
            Ok(t) => {
                match edit {
                    Edit::Adds => self.held.added(parent, name, None),
                    Edit::Removes => self.held.removed(parent, name),
                }
                Ok(t)
            }
            Err(e) => {
                self.held.drop_dir(parent);
                Err(e)
            }
        }
    }
}

impl Namespace for RemoteNamespace {
    fn params(&self) -> &VolumeParams {
        self.params.as_ref().expect("asked when the mount starts")
    }
    fn inode(&self, ino: Ino) -> Result<InodeRec> {
        if let Some(r) = self.young.inode(ino) {
            return Ok(r);
        }
        if let Some(r) = lock(&self.inodes).get(&ino) {
            return Ok(r.clone());
        }
        let era = self.eras.of(ino);
        match self.ns(NsCall::Inode(ino))? {
            NsReply::Inode(r) => {
                let mut inodes = lock(&self.inodes);
                if self.eras.still(ino, era) {
                    inodes.insert(ino, r.clone());
                }
                Ok(r)
            }
            other => Err(bad(format!("the home node answered {other:?}"))),
        }
    }
    fn attr(&self, ino: Ino) -> Result<Attr> {
        if let Some(a) = self.young.attr(ino) {
            return Ok(a);
        }
        if let Some(a) = lock(&self.fresh).attr(ino) {
            return Ok(a);
        }
        // A directory delegated here whose attributes this mount knows.
        if let Some(a) = self.held.delegated_attr(ino) {
            return Ok(a);
        }
        RemoteNamespace::attr(self, NsCall::Attr(ino))
    }
    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        if self.held.absent(parent, name) {
            return Err(crate::Error::NotFound);
        }
        // An entry this mount made in a directory delegated here, whose
        // attributes it keeps (a young file, a held directory).
        if let Some(ino) = self.held.child(parent, name)
            && let Some(a) = self.young.attr(ino).or_else(|| self.held.dir_attr(ino))
        {
            return Ok(a);
        }
        let name = buf(name);
        RemoteNamespace::attr(self, NsCall::Lookup { parent, name })
    }
    fn readdir(&self, ino: Ino, offset: u64, max: usize) -> Result<Vec<DirEntry>> {
        if let Some(page) = self.local_listing(ino, offset, max) {
            return Ok(page.into_iter().map(|(e, _)| e).collect());
        }
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        match self.ns(NsCall::Readdir { ino, offset, max })? {
            NsReply::Entries(e) => Ok(e),
            other => Err(bad(format!("the home node answered {other:?}"))),
        }
    }
    fn chunk(&self, ino: Ino, idx: u64) -> Result<Option<ChunkRef>> {
        if let Some(c) = self.young.chunk(ino, idx) {
            return Ok(c);
        }
        if let Some(p) = lock(&self.maps).get(&ino)
            && idx >= p.from
            && p.to.is_none_or(|to| idx < to)
        {
            return Ok(p.chunks.get(&idx).cloned());
        }
        let era = self.eras.of(ino);
        let page = ChunkPage::new(idx, Namespace::chunks_from(self, ino, idx)?);
        let found = page.chunks.get(&idx).cloned();
        let mut maps = lock(&self.maps);
        if self.eras.still(ino, era) {
            maps.insert(ino, page);
        }
        Ok(found)
    }
    fn chunks_from(&self, ino: Ino, from: u64) -> Result<Vec<(u64, ChunkRef)>> {
        if let Some(c) = self.young.chunks_from(ino, from) {
            return Ok(c);
        }
        match self.ns(NsCall::ChunksFrom { ino, from })? {
            NsReply::Chunks { chunks, hints } => {
                for ((_, c), h) in chunks.iter().zip(&hints) {
                    learn(&*self.store, c, h);
                }
                Ok(chunks)
            }
            other => Err(bad(format!("the home node answered {other:?}"))),
        }
    }
    fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        if self.known_bare(ino) {
            return Err(crate::Error::NoXattr);
        }
        let name = buf(name);
        match self.ns(NsCall::Getxattr { ino, name })? {
            NsReply::Bytes(b) => Ok(b.into_vec()),
            other => Err(bad(format!("the home node answered {other:?}"))),
        }
    }
    fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        if self.known_bare(ino) {
            return Ok(Vec::new());
        }
        match self.ns(NsCall::Listxattr(ino))? {
            NsReply::Names(n) => Ok(n.into_iter().map(ByteBuf::into_vec).collect()),
            other => Err(bad(format!("the home node answered {other:?}"))),
        }
    }
    fn create_node(&self, parent: Ino, name: &[u8], node: NewNode) -> Result<Attr> {
        self.line.room();
        // A symlink or directory in a directory delegated here is made here
        // (as a file made with an open is, `create_open`); a directory is
        // held here, delegated, from then on.
        if matches!(node.kind, FileKind::Symlink | FileKind::Dir)
            && self.line.defers()
            && let Some((attr, dir)) = self.held.make_here(parent, name, &node, |a, call| {
                // Young under the lock a recall takes, so never young in a
                // directory no longer delegated here.
                let held = self.line.hold(a.ino, call);
                if let (true, Some(target)) = (held, &node.target) {
                    self.young.made_link(a, target.clone(), &self.line, parent);
                }
                held
            })
        {
            // A new entry adds no xattr to its directory.
            self.forget_changed(parent);
            self.made_here_in(parent, attr.ino, dir);
            return Ok(attr);
        }
        self.forget_changed(parent);
        let mark = self.held.mark();
        let before = self.held.dir_attr(parent);
        let made = self.names(parent, name, Edit::Adds, |name| {
            RemoteNamespace::attr(self, NsCall::CreateNode { parent, name, node })
        })?;
        // The home set the directory's times to the new node's (and counted
        // a new directory's link): a directory held here knows its own
        // attributes after, and the kernel's getattr of it is answered.
        self.held.learn(parent, name, made.ino);
        if let Some(dir) = self.held.made_in(parent, before, &made) {
            lock(&self.fresh).keep_attr(dir);
        }
        lock(&self.fresh).keep_bare(made.ino);
        if made.kind == FileKind::Dir {
            self.held.made_dir(&made, mark);
            self.held.set_parent(made.ino, parent);
        }
        Ok(made)
    }
    fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> Result<Attr> {
        self.forget(Some(ino));
        self.forget(Some(parent));
        self.names(parent, name, Edit::Adds, |name| {
            RemoteNamespace::attr(self, NsCall::Link { ino, parent, name })
        })
    }
    // Which inodes are open is the home's to know (this device tells it).
    fn unlink(&self, parent: Ino, name: &[u8], _: &dyn Fn(Ino) -> bool) -> Result<()> {
        self.line.room();
        if self.unmake_here(parent, name, false) {
            return Ok(());
        }
        self.forget_entry(parent, name);
        self.names(parent, name, Edit::Removes, |name| {
            self.unit(NsCall::Unlink { parent, name })
        })
    }
    fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.line.room();
        if self.unmake_here(parent, name, true) {
            return Ok(());
        }
        self.forget_entry(parent, name);
        self.names(parent, name, Edit::Removes, |name| {
            self.unit(NsCall::Rmdir { parent, name })
        })
    }
    fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
        _: &dyn Fn(Ino) -> bool,
    ) -> Result<()> {
        self.line.room();
        if parent == new_parent && self.rename_here(parent, (name, new_name), flags) {
            return Ok(());
        }
        // A rename changes the entry it moves, any it replaces, and both
        // directories. A young file made in another directory delegated
        // here is neither (it has one name, there: a link or rename of it
        // ended its youth), so it stays young and opens here; cat, git's
        // checkout after its lock-file renames, and the like pay no round
        // trip for it.
        self.young.end_unless_elsewhere(&[parent, new_parent]);
        self.drop_cached(None);
        let call = NsCall::Rename {
            parent,
            name: buf(name),
            new_parent,
            new_name: buf(new_name),
            flags,
        };
        match self.unit(call) {
            Ok(()) => {
                // An exchange leaves both names in place.
                if !flags.exchange {
                    self.held.removed(parent, name);
                    self.held.added(new_parent, new_name, None);
                }
                Ok(())
            }
            Err(e) => {
                self.held.drop_dir(parent);
                self.held.drop_dir(new_parent);
                Err(e)
            }
        }
    }
    fn setattr(&self, ino: Ino, set: &SetAttr) -> Result<Attr> {
        self.line.room();
        if let Some(a) = self.young.setattr(&self.line, ino, set) {
            return Ok(a);
        }
        // A directory delegated here (tar's chmod and utimens of each it made).
        if self.home_reads & FEATURE_HELD != 0
            && self.line.defers()
            && let Some(a) = self
                .held
                .set_here(ino, set, |dir, call| self.line.hold(dir, call))
        {
            let era = self.forget_changed(ino);
            self.keep_attr(era, a.clone());
            return Ok(a);
        }
        let set = set.clone();
        let a = self.changed(ino, NsCall::Setattr { ino, set })?;
        self.held.set_attr(&a);
        Ok(a)
    }
    fn commit_chunks(
        &self,
        ino: Ino,
        chunks: Vec<(u64, Option<ChunkRef>)>,
        size: u64,
        mtime: Option<Timestamp>,
    ) -> Result<Attr> {
        let hints: Vec<_> = chunks
            .iter()
            .filter_map(|(_, c)| c.as_ref())
            .map(|c| self.store.holders_of(c.shard_ids()))
            .collect();
        if self.young.is(ino) {
            self.line.room();
        }
        if self.young.is(ino)
            && let Some(a) = self
                .young
                .commit(&self.line, ino, &chunks, size, mtime, hints.clone())
        {
            return Ok(a);
        }
        self.changed(
            ino,
            NsCall::CommitChunks {
                ino,
                chunks,
                size,
                mtime,
                hints,
            },
        )
    }
    fn truncate(
        &self,
        ino: Ino,
        size: u64,
        tail: Option<(u64, Option<ChunkRef>)>,
        set: &SetAttr,
    ) -> Result<Attr> {
        let set = set.clone();
        self.changed(
            ino,
            NsCall::Truncate {
                ino,
                size,
                tail,
                set,
            },
        )
    }
    fn setxattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> Result<()> {
        self.forget(Some(ino));
        self.held.forget_attr(ino);
        let (name, value) = (buf(name), buf(value));
        self.unit(NsCall::Setxattr {
            ino,
            name,
            value,
            create,
            replace,
        })
    }
    fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.forget(Some(ino));
        self.held.forget_attr(ino);
        let name = buf(name);
        self.unit(NsCall::Removexattr { ino, name })
    }
    // The home frees an orphan at the last release anywhere (`released`).
    fn release_orphan(&self, _: Ino) -> Result<()> {
        Ok(())
    }
    fn sync(&self) -> Result<()> {
        self.unit(NsCall::Sync)
    }
    fn settle(&self, ino: Ino) -> Result<()> {
        self.line.settle(ino)
    }
    fn settle_closing(&self, ino: Ino) -> Result<()> {
        // A file made in a directory still delegated here: its changes
        // wait for the next call, watch or second (docs/DESIGN.md,
        // "Delegated directories"); the home recalls them before anyone
        // else can read it.
        if let Some(dir) = self.young.delegated_in(ino)
            && self.held.delegated(dir)
        {
            return self.line.take_failure(ino);
        }
        self.line.settle(ino)
    }
    fn opened(&self, ino: Ino) -> Result<Option<Attr>> {
        self.line.room();
        // A young file made in a directory still delegated here: no other
        // host has seen it (a look there recalls first), so it is opened
        // here; the open is held back for the home to count, in front of
        // any remove of the file and its release.
        if self.home_reads & FEATURE_HELD != 0
            && let Some(dir) = self.young.delegated_in(ino)
            && let Some(a) = self.young.attr(ino)
        {
            let call = NsCall::Held {
                dir,
                call: Box::new(NsCall::Open(ino)),
            };
            // Queued under the lock a recall takes: before the watch that
            // acknowledges it, when the home still takes it.
            if self.held.while_delegated(dir, || self.line.hold(ino, call)) == Some(true) {
                return Ok(Some(a));
            }
        }
        // What another host committed since is read afresh.
        self.forget(Some(ino));
        let era = self.eras.of(ino);
        let (a, map) = self.open_read(ino)?;
        // As fresh as it gets: the kernel's getattr after the open and the
        // data path's first read need not ask again.
        if a.kind == FileKind::File {
            let mut inodes = lock(&self.inodes);
            if self.eras.still(ino, era) {
                inodes.insert(ino, super::defer::file_rec(&a));
            }
        }
        if let Some(map) = map {
            for ((_, c), h) in map.chunks.iter().zip(&map.hints) {
                learn(&*self.store, c, h);
            }
            let mut maps = lock(&self.maps);
            if self.eras.still(ino, era) {
                maps.insert(ino, ChunkPage::new(0, map.chunks));
            }
        }
        self.keep_attr(era, a.clone());
        Ok(Some(a))
    }
    fn getlk(&self, _: &str, ino: Ino, owner: u64, want: RangeLock) -> Result<Option<RangeLock>> {
        match self.ns(NsCall::Getlk { ino, owner, want })? {
            NsReply::Lock(l) => Ok(l),
            other => Err(bad(format!("the home node answered {other:?}"))),
        }
    }
    fn setlk(&self, _: &str, ino: Ino, owner: u64, want: RangeLock) -> Result<()> {
        self.unit(NsCall::Setlk { ino, owner, want })
    }
    fn setlk_wait(
        &self,
        host: &str,
        ino: Ino,
        owner: u64,
        want: RangeLock,
        hold: Duration,
    ) -> Result<bool> {
        if self.home_waits_locks.load(Ordering::Relaxed) {
            let hold_ms = u32::try_from(hold.as_millis()).unwrap_or(u32::MAX);
            let call = NsCall::SetlkWait {
                ino,
                owner,
                want: want.clone(),
                hold_ms,
            };
            match self.ns(call) {
                Ok(NsReply::Locked(taken)) => return Ok(taken),
                Ok(other) => return Err(bad(format!("the home node answered {other:?}"))),
                // An older home cannot read the call.
                Err(e) if e.kind() == crate::error::Kind::Invalid => {
                    tracing::info!(
                        "the home node does not hold waiting locks ({e}): \
                         waiting locks ask it every {} ms",
                        OLD_HOME_LOCK_RETRY.as_millis()
                    );
                    self.home_waits_locks.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        match self.setlk(host, ino, owner, want) {
            Ok(()) => Ok(true),
            Err(crate::Error::WouldBlock) => {
                std::thread::sleep(OLD_HOME_LOCK_RETRY.min(hold));
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
    fn unlock(&self, _: &str, ino: Ino, owner: u64) -> Result<()> {
        self.unit(NsCall::Unlock { ino, owner })
    }
    fn forget_cached(&self, ino: Ino) {
        self.forget(Some(ino));
    }
    fn reset_locks(&self, _: &str) -> Result<()> {
        self.unit(NsCall::ResetLocks)
    }
    fn released(&self, ino: Ino) -> Result<()> {
        // A file made in a directory still delegated here stays young after
        // its close: what is done to it by path after (tar's utimens, chown
        // and chmod) is held back too. Anything another host does to it
        // comes after a recall, and ends it.
        match self.young.delegated_in(ino) {
            Some(dir) if self.held.delegated(dir) => {
                lock(&self.maps).remove(&ino);
                lock(&self.inodes).remove(&ino);
            }
            _ => self.forget(Some(ino)),
        }
        {
            let mut q = lock(&self.releases.queue);
            // With the next call (the worker sends what no call took).
            if q.1 && self.line.hold_release(ino) {
                return Ok(());
            }
            if q.1 {
                q.0.push(ino);
                self.releases.cond.notify_one();
                return Ok(());
            }
        }
        self.unit(NsCall::Release(ino))
    }
    fn create_open(&self, parent: Ino, name: &[u8], node: NewNode) -> Result<Attr> {
        self.line.room();
        // A new entry adds no xattr to its directory.
        self.forget_changed(parent);
        // Made here, in a directory delegated to this mount: the home makes
        // it when the queue goes (docs/DESIGN.md, "Delegated directories:
        // files made locally").
        if self.line.defers()
            && let Some(made) = self.held.make_here(parent, name, &node, |a, call| {
                // Young under the lock a recall takes (as a symlink).
                let held = self.line.hold(a.ino, call);
                if held {
                    self.young.made(a, &self.line, Some(parent));
                }
                held
            })
        {
            let (attr, dir) = made;
            self.made_here_in(parent, attr.ino, dir);
            return Ok(attr);
        }
        let mark = self.held.mark();
        // Asked before the call is sent: delegated now, the file is made at
        // home after the grant, so no one else learns of it but through a
        // recall of `parent`.
        let delegated = self.held.delegated(parent);
        let (attr, dir) = self.names(parent, name, Edit::Adds, |name| {
            match self.ns(NsCall::CreateOpen { parent, name, node })? {
                NsReply::Created { attr, parent } => Ok((attr, parent)),
                other => Err(bad(format!("the home node answered {other:?}"))),
            }
        })?;
        self.held.added(parent, name, Some(&dir));
        self.held.learn(parent, name, attr.ino);
        let mut fresh = lock(&self.fresh);
        fresh.keep_attr(dir);
        fresh.keep_bare(attr.ino);
        drop(fresh);
        // Still delegated, under the lock a recall takes: its changes are
        // held back under the delegation. Recalled meanwhile: they go with
        // its close.
        let young_there = delegated
            && self
                .held
                .while_delegated(parent, || self.young.made(&attr, &self.line, Some(parent)))
                .is_some();
        if !young_there {
            self.young.made(&attr, &self.line, None);
        }
        if attr.kind == FileKind::Dir {
            self.held.made_dir(&attr, mark);
            self.held.set_parent(attr.ino, parent);
        }
        Ok(attr)
    }
    fn readdir_plus(&self, ino: Ino, offset: u64, max: usize) -> Result<Vec<(DirEntry, Attr)>> {
        // A directory delegated here whose every entry this mount made.
        if let Some(page) = self.local_listing(ino, offset, max) {
            return Ok(page);
        }
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        match self.ns(NsCall::ReaddirPlus { ino, offset, max })? {
            NsReply::EntriesPlus(page) => {
                let mut fresh = lock(&self.fresh);
                Ok(page
                    .into_iter()
                    .map(|p| {
                        if !p.xattrs {
                            fresh.keep_bare(p.entry.ino);
                        }
                        (p.entry, p.attr)
                    })
                    .collect())
            }
            other => Err(bad(format!("the home node answered {other:?}"))),
        }
    }
    fn watch(&self, since: u64, _wait: Duration) -> Result<Since> {
        // The home holds the call for up to `WATCH_HOLD`.
        let sent = Instant::now();
        let reply = self.ns(NsCall::Watch { since });
        if reply.is_err() {
            self.held.watch_failed();
        }
        match reply? {
            NsReply::Changes(s) => {
                self.held.watched(sent, &s);
                if s.gap {
                    self.forget(None);
                }
                for c in &s.changes {
                    if let Changed::Inode(ino) = c {
                        self.forget(Some(*ino));
                        // A recall: the files made there are no longer
                        // this mount's alone.
                        self.young.end_in(*ino);
                    }
                }
                Ok(s)
            }
            other => Err(bad(format!("the home node answered {other:?}"))),
        }
    }
    fn spawn_workers(&self, runner: &Runner) -> std::io::Result<()> {
        let (keys, line) = (self.keys.clone(), self.line.clone());
        runner.every("mesh-keys", KEYS_EVERY, move || {
            keys.refresh(line.client(), line.home())
                .map(drop)
                .map_err(|e| format!("asking the home node for the mesh key: {e}"))
        })?;
        let (rel, line) = (self.releases.clone(), self.line.clone());
        lock(&rel.queue).1 = true;
        let wake = rel.clone();
        runner.on_stop(move || wake.cond.notify_all());
        let wake = rel.clone();
        line.on_full_batch(Box::new(move || wake.cond.notify_one()));
        // Also sends, every second, changes held back that no call took
        // (a file written and left open; a batch that found no answer),
        // and at once when a batch's worth waits.
        runner.spawn("releases", move |w| {
            loop {
                let (batch, stopping) = {
                    let mut q = lock(&rel.queue);
                    if q.0.is_empty() && !w.stopping() && !line.full_batch() {
                        q = rel
                            .cond
                            .wait_timeout(q, Duration::from_secs(1))
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                    let stopping = w.stopping() && q.0.is_empty();
                    if stopping {
                        // All told: from now on a release goes at once.
                        q.1 = false;
                    }
                    (std::mem::take(&mut q.0), stopping)
                };
                w.set_state(crate::workers::WorkerState::Busy);
                let res = if batch.is_empty() {
                    line.send_queue()
                } else {
                    line.call(NsCall::Releases(batch)).and_then(expect_unit)
                };
                w.round(res.map_err(|e| format!("telling the home of closed files: {e}")));
                w.set_state(crate::workers::WorkerState::Idle);
                if stopping {
                    return;
                }
            }
        })
    }
}
