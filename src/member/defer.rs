//! A member mount's line to its home, and the changes it holds back: a
//! file this mount made and still holds open is *young*; its setattrs and
//! chunk commits are applied to the copy kept here and queued, and the
//! queue goes in front of the next call to the home, in one
//! `NsCall::Batch` (docs/DESIGN.md, "Changes to a new file").

use super::held::Held;
use super::link::{HOME_WAIT, bad, call_home};
use super::wire::{MAX_BATCH, MAX_BATCH_V1, MetaCall, MetaReply, NsCall, NsReply};
use crate::Result;
use crate::chunk::ChunkRef;
use crate::error::Kind;
use crate::meta::{InodeRec, apply_setattr, to_attr};
use crate::net::{MeshClient, PeerId};
use crate::types::*;
use crate::util::lock;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The most bytes of calls the queue holds, and so one batch (well inside
/// a request's 4 MiB).
const QUEUE_BYTES: usize = 1 << 20;
/// Calls of a batch that are not queued ones: the two asks that may go in
/// front (a promise, inode numbers), the releases and the call after.
const BESIDE: usize = 4;
/// Room a change waits for in a full queue (`Line::room`): a few calls,
/// as one operation may hold back several (a file's record and open).
const ROOM_LEFT: usize = 8;
/// The most calls held back. A recall sends them all before another
/// host's look is answered: this bounds its wait (about 20 ms of the
/// home's work).
const QUEUE_CALLS: usize = MAX_BATCH;
/// Once this many calls wait, the `releases` worker sends them (all that
/// wait when it goes) in the background, so a mount making files goes on
/// while its batches travel, and batches grow with the round trip.
const SEND_AT: usize = MAX_BATCH_V1 - BESIDE;
/// A change waits for room in a full queue at most this long (its batches
/// are on their way), then is sent itself: long enough for a few batches
/// over a slow link, short of a home that is down.
const ROOM_WAIT: Duration = Duration::from_secs(3);
/// The most young files at once (each holds its record and chunk map).
const MAX_YOUNG: usize = 4096;
/// The most releases one queued `Releases` call carries.
const MAX_RELEASES: usize = 1024;

fn ns_call(client: &MeshClient, home: PeerId, call: NsCall) -> Result<NsReply> {
    match call_home(client, home, MetaCall::Ns(call), HOME_WAIT)? {
        MetaReply::Ns(r) => Ok(r),
        other => Err(bad(format!("the home node answered {other:?}"))),
    }
}

/// Calls to the home, with the changes held back sent first.
pub struct Line {
    client: MeshClient,
    home: PeerId,
    queue: Mutex<Queue>,
    /// Held while queued changes are in flight, so that a call made after a
    /// change never overtakes it (an unlock, say, the writes it covered).
    order: Mutex<()>,
    /// The first error a queued change of an inode met, until the inode's
    /// next settle answers it.
    failed: Mutex<HashMap<Ino, crate::Error>>,
    /// Whether the home reads `Batch` (an older one does not: nothing is
    /// held back then).
    batches: AtomicBool,
    /// The directories promised to this mount, whose asks go in front of
    /// the next call like the changes held back.
    held: Arc<Held>,
    /// Wakes the worker that sends the queue (a batch's worth waits).
    waker: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Told when calls leave the queue (`room` waits on it).
    drained: Condvar,
    /// The most queued calls one batch carries.
    per_batch: AtomicUsize,
}

/// Changes applied here and not yet sent, oldest first, each with the
/// inode it changes; and their encoded size.
#[derive(Default)]
struct Queue {
    calls: Vec<(Ino, NsCall)>,
    bytes: usize,
    /// Handles closed here, each with the number of calls queued before
    /// it (counted from the mount's first): each goes in the `Releases` at
    /// the end of the first batch that carries all of those. Later than it
    /// was made only keeps a handle counted a little longer; earlier, the
    /// home would drop a count it has not made yet.
    releases: Vec<(u64, Ino)>,
    /// Calls taken from the queue so far.
    taken: u64,
}

impl Queue {
    /// Notes the release of a handle on `ino`; false when too many wait.
    fn release(&mut self, ino: Ino) -> bool {
        // The handle's own open, still queued: the home would count it and
        // drop it with nothing between that reads the count but a remove
        // here, which ends the same (git's re-opens of what it just wrote).
        let open = self.calls.iter().rposition(|(_, c)| match c {
            NsCall::Held { call, .. } => matches!(**call, NsCall::Open(o) if o == ino),
            _ => false,
        });
        if let Some(i) = open {
            let (_, c) = self.calls.remove(i);
            self.bytes -= size_of(&c);
            let at = self.taken + i as u64;
            for r in self.releases.iter_mut().filter(|r| r.0 > at) {
                r.0 -= 1;
            }
            return true;
        }
        if self.releases.len() >= 4 * MAX_RELEASES {
            return false;
        }
        let at = self.taken + self.calls.len() as u64;
        self.releases.push((at, ino));
        true
    }

    /// The oldest calls, at most `per` and [`QUEUE_BYTES`] (at least one),
    /// then a `Releases` of those that may go after them; and whether more
    /// wait behind them.
    fn take(&mut self, per: usize) -> (Vec<(Ino, NsCall)>, bool) {
        let (mut n, mut bytes) = (0, 0);
        for (_, c) in self.calls.iter().take(per) {
            bytes += size_of(c);
            if n > 0 && bytes > QUEUE_BYTES {
                break;
            }
            n += 1;
        }
        let mut taken: Vec<(Ino, NsCall)> = self.calls.drain(..n).collect();
        self.bytes -= taken.iter().map(|(_, c)| size_of(c)).sum::<usize>();
        self.taken += n as u64;
        let upto = self.taken;
        let ready = self
            .releases
            .iter()
            .take(MAX_RELEASES)
            .take_while(|r| r.0 <= upto)
            .count();
        if ready > 0 {
            let inos = self.releases.drain(..ready).map(|r| r.1).collect();
            // Under no inode of its own: a release the home refuses is no
            // change of a file's to answer at its next close.
            taken.push((Ino(0), NsCall::Releases(inos)));
        }
        (taken, !self.calls.is_empty() || !self.releases.is_empty())
    }

    /// Puts calls taken back in front, the releases taken with them
    /// back in front of the releases, due after them.
    fn put_back(&mut self, taken: Vec<(Ino, NsCall)>) {
        let mut released = Vec::new();
        let mut calls = Vec::new();
        for (ino, c) in taken {
            match c {
                NsCall::Releases(inos) if ino == Ino(0) => released.extend(inos),
                c => calls.push((ino, c)),
            }
        }
        self.bytes += calls.iter().map(|(_, c)| size_of(c)).sum::<usize>();
        self.taken -= calls.len() as u64;
        let at = self.taken + calls.len() as u64;
        self.calls.splice(0..0, calls);
        self.releases
            .splice(0..0, released.into_iter().map(|ino| (at, ino)));
    }
}

/// `next` applied after `last` as one call, when both set attributes (no
/// size) of the same inode, under the same delegation if any: each field
/// the later one sets wins, as applying both in turn would leave it.
fn merged_setattr(last: &NsCall, next: &NsCall) -> Option<NsCall> {
    match (last, next) {
        (NsCall::Setattr { ino: a, set: s }, NsCall::Setattr { ino: b, set: t })
            if a == b && s.size.is_none() && t.size.is_none() =>
        {
            Some(NsCall::Setattr {
                ino: *a,
                set: SetAttr {
                    perm: t.perm.or(s.perm),
                    uid: t.uid.or(s.uid),
                    gid: t.gid.or(s.gid),
                    size: None,
                    atime: t.atime.or(s.atime),
                    mtime: t.mtime.or(s.mtime),
                },
            })
        }
        (NsCall::Held { dir: a, call: c }, NsCall::Held { dir: b, call: d }) if a == b => {
            Some(NsCall::Held {
                dir: *a,
                call: Box::new(merged_setattr(c, d)?),
            })
        }
        _ => None,
    }
}

fn size_of(call: &NsCall) -> usize {
    postcard::experimental::serialized_size(call).unwrap_or(QUEUE_BYTES)
}

impl Line {
    pub fn new(client: MeshClient, home: PeerId, held: Arc<Held>) -> Line {
        Line {
            client,
            home,
            queue: Mutex::new(Queue::default()),
            order: Mutex::new(()),
            failed: Mutex::new(HashMap::new()),
            batches: AtomicBool::new(true),
            held,
            waker: std::sync::OnceLock::new(),
            drained: Condvar::new(),
            per_batch: AtomicUsize::new(MAX_BATCH_V1 - BESIDE),
        }
    }

    /// The home reads batches of [`MAX_BATCH`] calls.
    pub fn big_batches(&self) {
        self.per_batch.store(MAX_BATCH - BESIDE, Ordering::Relaxed);
    }

    /// Waits, [`ROOM_WAIT`] at most, while the queue is full, so that a
    /// change made here next is held back rather than sent by itself and
    /// its file kept young: a mount making changes faster than its
    /// batches travel (an untar or `rm -rf` over a slow link) waits for
    /// them instead of paying a round trip a change. Called before the
    /// locks a change is held back under.
    pub fn room(&self) {
        let mut q = lock(&self.queue);
        let start = Instant::now();
        while self.defers()
            && q.calls.len() + ROOM_LEFT > QUEUE_CALLS
            && start.elapsed() < ROOM_WAIT
            && !super::link::missing(self.home)
        {
            if let Some(wake) = self.waker.get() {
                wake();
            }
            q = self
                .drained
                .wait_timeout(q, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// `wake` is called when a batch's worth of changes waits to be sent.
    pub fn on_full_batch(&self, wake: Box<dyn Fn() + Send + Sync>) {
        let _ = self.waker.set(wake);
    }

    /// Whether enough changes wait to be sent in the background.
    pub fn full_batch(&self) -> bool {
        lock(&self.queue).calls.len() >= SEND_AT
    }

    pub fn client(&self) -> &MeshClient {
        &self.client
    }

    pub fn home(&self) -> PeerId {
        self.home
    }

    /// Whether changes may be held back at all (the home reads batches).
    pub fn defers(&self) -> bool {
        self.batches.load(Ordering::Relaxed)
    }

    /// Queues `call`, a change of `ino` about to be applied here; false
    /// (nothing queued) when the queue is full: the change is then sent as
    /// it is made.
    pub fn hold(&self, ino: Ino, call: NsCall) -> bool {
        let size = size_of(&call);
        let mut q = lock(&self.queue);
        if !self.defers() {
            return false;
        }
        // A setattr right after another of the same inode goes in it
        // (tar's chown, chmod and utimens of a file: one call, not three).
        if let Some((last_ino, last)) = q.calls.last_mut()
            && *last_ino == ino
            && let Some(merged) = merged_setattr(last, &call)
        {
            let before = size_of(last);
            let after = size_of(&merged);
            *last = merged;
            q.bytes = q.bytes - before + after;
            return true;
        }
        if q.calls.len() >= QUEUE_CALLS || q.bytes + size > QUEUE_BYTES {
            return false;
        }
        q.bytes += size;
        q.calls.push((ino, call));
        let full = q.calls.len() == SEND_AT;
        drop(q);
        if full && let Some(wake) = self.waker.get() {
            wake();
        }
        true
    }

    /// Holds back the release of a handle on `ino` (closed here): the
    /// home learns of it with the next batch, or within a second; false
    /// when nothing can be held back.
    pub fn hold_release(&self, ino: Ino) -> bool {
        let mut q = lock(&self.queue);
        self.defers() && q.release(ino)
    }

    /// The oldest queued changes, as many as one batch carries beside a
    /// call, then the releases that may go after them; and whether more
    /// wait behind them.
    fn take(&self) -> (Vec<(Ino, NsCall)>, bool) {
        let taken = lock(&self.queue).take(self.per_batch.load(Ordering::Relaxed));
        self.drained.notify_all();
        taken
    }

    /// Puts changes that found no answer back in front of the queue.
    fn put_back(&self, calls: Vec<(Ino, NsCall)>) {
        lock(&self.queue).put_back(calls);
    }

    /// One call to the home, after the changes held back (in one batch with
    /// them). A call the home holds (`Watch`, `SetlkWait`) goes alone after
    /// them, so that it holds up nothing.
    pub fn call(&self, call: NsCall) -> Result<NsReply> {
        if !call.batchable() {
            self.send_queue()?;
            return ns_call(&self.client, self.home, call);
        }
        let order = lock(&self.order);
        loop {
            let (queued, more) = self.take();
            if queued.is_empty() && !self.held.asking() {
                drop(order);
                return ns_call(&self.client, self.home, call);
            }
            if more {
                self.send(queued, None)?;
                continue;
            }
            let reply = self.send(queued, Some(call));
            drop(order);
            return reply.map(|r| r.expect("the call was sent"));
        }
    }

    /// Sends what is held back, if anything.
    pub fn send_queue(&self) -> Result<()> {
        let _order = lock(&self.order);
        loop {
            let (queued, more) = self.take();
            if queued.is_empty() && !self.held.asking() {
                return Ok(());
            }
            self.send(queued, None)?;
            if !more {
                return Ok(());
            }
        }
    }

    /// The error a change of `ino` met since the last settle, if any,
    /// without sending anything.
    pub fn take_failure(&self, ino: Ino) -> Result<()> {
        match lock(&self.failed).remove(&ino) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Everything done here to `ino` is at home: the queue sent, and the
    /// error a change of `ino` met since answered.
    pub fn settle(&self, ino: Ino) -> Result<()> {
        // Only changes of `ino` are waited for: the releases of other files
        // closed before cost a read-only close no round trip. Taking `order`
        // first waits for a batch in flight that may hold some.
        let queued = {
            let _order = lock(&self.order);
            lock(&self.queue).calls.iter().any(|(i, _)| *i == ino)
        };
        if queued {
            self.send_queue()?;
        }
        self.take_failure(ino)
    }

    /// Sends `queued` then `call` (the caller holds `order`). What the home
    /// refused of `queued` is noted per inode; `call`'s answer is returned.
    /// Changes that got no answer go back in front of the queue: sent again
    /// they change nothing more (each sets values, or commits chunks where
    /// they are).
    fn send(&self, queued: Vec<(Ino, NsCall)>, call: Option<NsCall>) -> Result<Option<NsReply>> {
        if !self.defers() {
            self.held.turn_off();
            return self.one_by_one(queued, call);
        }
        // A promise asked for goes first: the call after it may already
        // be answered from it next time. Then inode numbers, when asked.
        let ask = self.held.take_ask();
        let inodes = self.held.take_inodes_ask();
        let mut calls: Vec<NsCall> = ask.iter().chain(&inodes).cloned().collect();
        calls.extend(queued.iter().map(|(_, c)| c.clone()));
        let carries = call.is_some();
        calls.extend(call.clone());
        let n = calls.len();
        match ns_call(&self.client, self.home, NsCall::Batch(calls)) {
            Ok(NsReply::Batch(mut results)) if results.len() == n => {
                let last = carries.then(|| results.pop().expect("n > 0"));
                if let Some(ask) = &ask {
                    match results.remove(0) {
                        Ok(NsReply::Promised(granted)) => self.held.answered(ask, &granted),
                        Ok(_) => self.held.unanswered(ask),
                        Err(e) => {
                            // A home that knows batches but not this ask.
                            tracing::info!(
                                "the home node could not read a promise asked of it: {}",
                                crate::Error::from(e)
                            );
                            self.held.unreadable(ask);
                        }
                    }
                }
                if inodes.is_some() {
                    match results.remove(0) {
                        Ok(NsReply::Inodes { start, len }) => {
                            self.held.inodes_answered(Some(Some((start, len))))
                        }
                        Ok(_) => self.held.inodes_answered(None),
                        Err(e) => {
                            tracing::info!(
                                "the home node hands out no inode numbers ({}): files are \
                                 made there",
                                crate::Error::from(e)
                            );
                            self.held.inodes_answered(Some(None));
                        }
                    }
                }
                for ((ino, c), res) in queued.iter().zip(results) {
                    if let Err(e) = res {
                        self.refused(*ino, c, e.into());
                    }
                }
                last.map(|r| r.map_err(crate::Error::from)).transpose()
            }
            Ok(other) => Err(bad(format!(
                "the home node answered a batch with {other:?}"
            ))),
            Err(e) if e.kind() == Kind::Invalid && (ask.is_some() || inodes.is_some()) => {
                // Unreadable for a call in front (a home older than it,
                // whose batch holds one call it does not know): sent again
                // without inode numbers asked, then with an older ask, or
                // none.
                tracing::info!("the home node could not read a batch with a promise asked: {e}");
                if inodes.is_some() {
                    self.held.inodes_answered(Some(None));
                    if let Some(ask) = &ask {
                        self.held.unanswered(ask);
                    }
                } else if let Some(ask) = &ask {
                    self.held.unreadable(ask);
                }
                self.send(queued, call)
            }
            Err(e) if e.kind() == Kind::Invalid => {
                tracing::info!(
                    "the home node does not read batches ({e}): this mount sends each \
                     change as it is made"
                );
                self.batches.store(false, Ordering::Relaxed);
                self.one_by_one(queued, call)
            }
            Err(e) => {
                if let Some(ask) = &ask {
                    self.held.unanswered(ask);
                }
                if inodes.is_some() {
                    self.held.inodes_answered(None);
                }
                self.put_back(queued);
                Err(e)
            }
        }
    }

    /// The calls one at a time (a home that reads no batches).
    fn one_by_one(
        &self,
        queued: Vec<(Ino, NsCall)>,
        call: Option<NsCall>,
    ) -> Result<Option<NsReply>> {
        for (ino, c) in queued {
            if let Err(e) = ns_call(&self.client, self.home, c.clone()) {
                self.refused(ino, &c, e);
            }
        }
        call.map(|c| ns_call(&self.client, self.home, c))
            .transpose()
    }

    /// The home refused `call`, queued for `ino`.
    fn refused(&self, ino: Ino, call: &NsCall, e: crate::Error) {
        match call {
            NsCall::Releases(_) => {
                tracing::info!("the home node refused releases of handles closed here: {e}")
            }
            NsCall::Made { node, .. } if node.kind == FileKind::Dir => {
                tracing::warn!(
                    "the home node refused directory {ino} this mount made (what is made in \
                     it is refused too): {e}"
                );
                self.held.drop_dir(ino);
            }
            _ => self.failed(ino, e),
        }
    }

    fn failed(&self, ino: Ino, e: crate::Error) {
        tracing::warn!(
            "the home node refused a change this mount made to inode {ino} (its next close \
             or fsync answers the error): {e}"
        );
        lock(&self.failed).entry(ino).or_insert(e);
    }
}

/// A regular file's record as its attributes give it (what the data path
/// reads of one: its kind and size; the blocks it holds).
pub fn file_rec(a: &Attr) -> InodeRec {
    InodeRec {
        kind: a.kind,
        perm: a.perm,
        uid: a.uid,
        gid: a.gid,
        size: a.size,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.crtime,
        nlink: a.nlink,
        rdev: a.rdev,
        parent: 0,
        allocated: a.blocks * 512,
        target: None,
    }
}

/// What a member keeps of a young file: its whole record and chunk map.
struct Young {
    rec: InodeRec,
    chunks: BTreeMap<u64, ChunkRef>,
    /// The directory it was made in, if that was delegated to this mount
    /// when it was made: its close may hold its changes back while the
    /// directory still is (docs/DESIGN.md, "Delegated directories").
    delegated_in: Option<Ino>,
}

/// The young files of a mount, and whether their held-back changes go
/// in a `Held` naming their delegated directory (the home reads it).
#[derive(Default)]
pub struct Youngs(Mutex<HashMap<Ino, Young>>, AtomicBool);

impl Youngs {
    /// `made` was just made and opened here (`CreateOpen`): a regular file,
    /// empty, which only this mount knows open; `delegated_in`: the
    /// directory it was made in, delegated here when the call was sent.
    pub fn made(&self, made: &Attr, line: &Line, delegated_in: Option<Ino>) {
        if made.kind != FileKind::File || made.size != 0 {
            return;
        }
        self.keep(made.ino, file_rec(made), line, delegated_in);
    }

    /// Symlink `made` to `target` was just made here in `dir`, delegated
    /// to this mount: young, its target kept (its readlink and the lchown
    /// and lutimes after are this mount's).
    pub fn made_link(&self, made: &Attr, target: Vec<u8>, line: &Line, dir: Ino) {
        let mut rec = file_rec(made);
        rec.target = Some(target);
        self.keep(made.ino, rec, line, Some(dir));
    }

    fn keep(&self, ino: Ino, rec: InodeRec, line: &Line, delegated_in: Option<Ino>) {
        if !line.defers() {
            return;
        }
        let mut g = lock(&self.0);
        if g.len() < MAX_YOUNG {
            g.insert(
                ino,
                Young {
                    rec,
                    chunks: BTreeMap::new(),
                    delegated_in,
                },
            );
        }
    }

    /// The home reads `Held`: changes held back in a delegated directory
    /// go in one.
    pub fn guard_held(&self) {
        self.1.store(true, Ordering::Relaxed);
    }

    /// `ino` is no longer young (anything but a held-back change touched
    /// it); `None`: no file is.
    pub fn end(&self, ino: Option<Ino>) {
        match ino {
            Some(ino) => drop(lock(&self.0).remove(&ino)),
            None => lock(&self.0).clear(),
        }
    }

    /// No file made in `dir` is young any more (its delegation ended).
    pub fn end_in(&self, dir: Ino) {
        lock(&self.0).retain(|_, y| y.delegated_in != Some(dir));
    }

    /// No file is young any more but those made in a delegated directory
    /// other than `dirs`.
    pub fn end_unless_elsewhere(&self, dirs: &[Ino]) {
        lock(&self.0).retain(|_, y| y.delegated_in.is_some_and(|d| !dirs.contains(&d)));
    }

    /// Young `ino` was renamed here at `time` (in its own directory).
    pub fn renamed(&self, ino: Ino, time: Timestamp) {
        if let Some(y) = lock(&self.0).get_mut(&ino) {
            y.rec.ctime = time;
        }
    }

    pub fn inode(&self, ino: Ino) -> Option<InodeRec> {
        lock(&self.0).get(&ino).map(|y| y.rec.clone())
    }

    pub fn attr(&self, ino: Ino) -> Option<Attr> {
        lock(&self.0).get(&ino).map(|y| to_attr(ino, &y.rec))
    }

    pub fn chunk(&self, ino: Ino, idx: u64) -> Option<Option<ChunkRef>> {
        lock(&self.0).get(&ino).map(|y| y.chunks.get(&idx).cloned())
    }

    pub fn chunks_from(&self, ino: Ino, from: u64) -> Option<Vec<(u64, ChunkRef)>> {
        lock(&self.0).get(&ino).map(|y| {
            y.chunks
                .range(from..)
                .map(|(i, c)| (*i, c.clone()))
                .collect()
        })
    }

    pub fn is(&self, ino: Ino) -> bool {
        lock(&self.0).contains_key(&ino)
    }

    /// The delegated directory young `ino` was made in, if any.
    pub fn delegated_in(&self, ino: Ino) -> Option<Ino> {
        lock(&self.0).get(&ino).and_then(|y| y.delegated_in)
    }

    /// A setattr (no size) of a young file, applied here and held back;
    /// `None` when `ino` is not young or the queue is full (it is then no
    /// longer young: the caller sends the change).
    pub fn setattr(&self, line: &Line, ino: Ino, set: &SetAttr) -> Option<Attr> {
        if set.size.is_some() {
            self.end(Some(ino));
            return None;
        }
        let call = NsCall::Setattr {
            ino,
            set: set.clone(),
        };
        self.change(line, ino, call, |rec, _| {
            apply_setattr(rec, set, Timestamp::now())
        })
    }

    /// A chunk commit of a young file, applied here and held back (as
    /// [`Youngs::setattr`]). `hints`: where its shards were stored.
    pub fn commit(
        &self,
        line: &Line,
        ino: Ino,
        chunks: &[(u64, Option<ChunkRef>)],
        size: u64,
        mtime: Option<Timestamp>,
        hints: Vec<Vec<Vec<String>>>,
    ) -> Option<Attr> {
        let call = NsCall::CommitChunks {
            ino,
            chunks: chunks.to_vec(),
            size,
            mtime,
            hints,
        };
        self.change(line, ino, call, |rec, map| {
            for (idx, chunk) in chunks {
                if let Some(old) = map.remove(idx) {
                    rec.allocated -= old.plain_len() as u64;
                }
                if let Some(c) = chunk {
                    rec.allocated += c.plain_len() as u64;
                    map.insert(*idx, c.clone());
                }
            }
            rec.size = size;
            if let Some(t) = mtime {
                rec.mtime = t;
                rec.ctime = t;
            }
        })
    }

    /// Queues `call`, a change of young `ino`, and applies it to the copy
    /// here; if the queue takes no more, `ino` stops being young instead
    /// and nothing is applied.
    fn change(
        &self,
        line: &Line,
        ino: Ino,
        call: NsCall,
        apply: impl FnOnce(&mut InodeRec, &mut BTreeMap<u64, ChunkRef>),
    ) -> Option<Attr> {
        let mut g = lock(&self.0);
        if !g.contains_key(&ino) {
            return None;
        }
        // Applied at home only while the directory is still delegated here.
        let call = match g[&ino].delegated_in {
            Some(dir) if self.1.load(Ordering::Relaxed) => NsCall::Held {
                dir,
                call: Box::new(call),
            },
            _ => call,
        };
        // Queued under the young files' lock: the changes of a file queue
        // in the order they are applied.
        if !line.hold(ino, call) {
            g.remove(&ino);
            return None;
        }
        let y = g.get_mut(&ino).expect("checked above");
        apply(&mut y.rec, &mut y.chunks);
        Some(to_attr(ino, &y.rec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{SetTime, Timestamp};
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn mark(id: u64) -> NsCall {
        NsCall::Attr(Ino(id))
    }

    fn open(ino: u64) -> NsCall {
        NsCall::Held {
            dir: Ino(3),
            call: Box::new(NsCall::Open(Ino(ino))),
        }
    }

    fn push(q: &mut Queue, call: NsCall) {
        q.bytes += size_of(&call);
        q.calls.push((Ino(1), call));
    }

    /// What a batch carries, as `m<id>`, `o<ino>` and `r<inos>`.
    fn shown(calls: &[(Ino, NsCall)]) -> String {
        let one = |c: &NsCall| match c {
            NsCall::Attr(i) => format!("m{}", i.0),
            NsCall::Held { call, .. } => match **call {
                NsCall::Open(i) => format!("o{}", i.0),
                _ => panic!("{c:?}"),
            },
            NsCall::Releases(inos) => {
                format!(
                    "r{}",
                    inos.iter().map(|i| i.0.to_string()).collect::<String>()
                )
            }
            _ => panic!("{c:?}"),
        };
        calls
            .iter()
            .map(|(_, c)| one(c))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn releases_go_at_the_end_of_the_first_batch_holding_what_was_queued_before_them() {
        let mut q = Queue::default();
        push(&mut q, mark(1));
        push(&mut q, mark(2));
        assert!(q.release(Ino(8)));
        push(&mut q, mark(3));
        assert!(q.release(Ino(9)));
        let (a, more) = q.take(1);
        assert_eq!((shown(&a).as_str(), more), ("m1", true));
        let (b, more) = q.take(1);
        assert_eq!((shown(&b).as_str(), more), ("m2 r8", true));
        // Unanswered: back in front, and taken again the same.
        q.put_back(b);
        let (b, _) = q.take(5);
        assert_eq!(shown(&b), "m2 m3 r89");
        assert_eq!((q.take(5).0.len(), q.bytes, q.taken), (0, 0, 3));
    }

    #[test]
    fn a_release_cancels_its_handles_open_still_queued() {
        let mut q = Queue::default();
        push(&mut q, mark(1));
        push(&mut q, open(5));
        push(&mut q, mark(2));
        assert!(q.release(Ino(7)));
        push(&mut q, open(7));
        assert!(q.release(Ino(5)));
        // The open of 5 gone: r7 still goes right after m2.
        assert_eq!(shown(&q.calls), "m1 m2 o7");
        let (a, more) = q.take(2);
        assert_eq!((shown(&a).as_str(), more), ("m1 m2 r7", true));
        // An open already sent is not cancelled: the release goes.
        let (b, _) = q.take(5);
        assert_eq!(shown(&b), "o7");
        assert!(q.release(Ino(7)));
        assert_eq!(shown(&q.take(5).0), "r7");
        assert_eq!(q.bytes, 0);
    }

    proptest! {
        /// Whatever the batch sizes and lost batches: every call goes
        /// once, in order; a release goes after every call queued before
        /// it (but a cancelled open), so never before its handle's open;
        /// each handle opened and released here is counted so at home.
        #[test]
        fn releases_never_overtake_what_was_queued_before_them(
            ops in proptest::collection::vec((0u8..6, 1u64..4), 0..80),
        ) {
            let mut q = Queue::default();
            let mut sent = Vec::new();
            let mut open_here = [0i64; 4];
            let mut next = 100;
            // Per inode, the last mark queued before each of its releases.
            let mut after: [VecDeque<u64>; 4] = Default::default();
            let mut send = |q: &mut Queue, per: usize, lost: bool| {
                let (taken, _) = q.take(per);
                if lost {
                    q.put_back(taken);
                } else {
                    sent.extend(taken.into_iter().map(|(_, c)| c));
                }
            };
            for (op, ino) in ops {
                let i = ino as usize;
                match op {
                    0 => {
                        push(&mut q, mark(next));
                        next += 1;
                    }
                    1 => {
                        push(&mut q, open(ino));
                        open_here[i] += 1;
                    }
                    2 if open_here[i] > 0 => {
                        let queued_open = shown(&q.calls).split(" ").any(|c| c == format!("o{ino}"));
                        prop_assert!(q.release(Ino(ino)));
                        open_here[i] -= 1;
                        if !queued_open {
                            after[i].push_back(next - 1);
                        }
                    }
                    3 => send(&mut q, i, false),
                    4 => send(&mut q, i, true),
                    _ => {}
                }
            }
            while !q.calls.is_empty() || !q.releases.is_empty() {
                send(&mut q, 2, false);
            }
            prop_assert_eq!(q.bytes, 0);
            let mut counted = [0i64; 4];
            let mut marks = Vec::new();
            for c in &sent {
                match c {
                    NsCall::Attr(m) => marks.push(m.0),
                    NsCall::Held { call, .. } => {
                        let NsCall::Open(o) = **call else { unreachable!() };
                        counted[o.0 as usize] += 1;
                    }
                    NsCall::Releases(inos) => {
                        for r in inos {
                            let i = r.0 as usize;
                            counted[i] -= 1;
                            prop_assert!(counted[i] >= 0, "{} released before opened", i);
                            let last = after[i].pop_front().expect("a release noted");
                            prop_assert!(last < 100 || marks.contains(&last), "r{} before m{}", i, last);
                        }
                    }
                    _ => unreachable!(),
                }
            }
            prop_assert_eq!(marks, (100..next).collect::<Vec<_>>());
            prop_assert_eq!(counted, open_here);
        }
    }

    #[test]
    fn setattrs_of_one_inode_merge_as_if_applied_in_turn() {
        let set = |perm, uid, mtime: Option<i64>| NsCall::Setattr {
            ino: Ino(9),
            set: SetAttr {
                perm,
                uid,
                mtime: mtime.map(|secs| SetTime::At(Timestamp { secs, nanos: 0 })),
                ..SetAttr::default()
            },
        };
        let held = |c| NsCall::Held {
            dir: Ino(3),
            call: Box::new(c),
        };
        let chown = set(None, Some(7), None);
        let chmod = set(Some(0o640), None, None);
        let touch = set(Some(0o600), None, Some(5));
        let one = merged_setattr(&merged_setattr(&chown, &chmod).unwrap(), &touch).unwrap();
        let NsCall::Setattr { set: s, .. } = &one else {
            panic!("{one:?}")
        };
        assert_eq!((s.perm, s.uid), (Some(0o600), Some(7)));
        assert!(s.mtime.is_some());
        assert!(merged_setattr(&held(chown.clone()), &held(chmod.clone())).is_some());
        // Not across delegations, kinds, inodes or sizes.
        let elsewhere = NsCall::Held {
            dir: Ino(4),
            call: Box::new(chmod.clone()),
        };
        assert!(merged_setattr(&held(chown.clone()), &elsewhere).is_none());
        assert!(merged_setattr(&held(chown.clone()), &chmod).is_none());
        let other = NsCall::Setattr {
            ino: Ino(10),
            set: SetAttr::default(),
        };
        assert!(merged_setattr(&chown, &other).is_none());
        let truncate = NsCall::Setattr {
            ino: Ino(9),
            set: SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
        };
        assert!(merged_setattr(&chown, &truncate).is_none());
    }
}
