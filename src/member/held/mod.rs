//! The directories a member mount was promised (docs/DESIGN.md, "Promises
//! on directories"): the home lets this mount see any other origin's change
//! to one of them before answering it, so while the promise holds, a name
//! this mount knows is not there is answered absent without a round trip.
//! What is known of a directory is what this mount did there since it made
//! it; anything else drops it.

mod here;

use super::wire::NsCall;
use crate::meta::changes::Since;
use crate::meta::promises::{MAX_ASK, MAX_HELD, TRUST};
use crate::types::{Attr, FileKind, Ino};
use crate::util::lock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Instant;

pub struct Held {
    inner: Mutex<Inner>,
    /// What is asked: [`DELEGATE`], then [`PROMISE`] when the home cannot
    /// read `Delegate`, then [`OFF`] (nothing) when it cannot read
    /// `Promise` either.
    level: AtomicU8,
    /// Whether symlinks are made here too (the home makes them:
    /// `FEATURE_MADE_LINKS`).
    links: AtomicBool,
    /// Whether directories are (`FEATURE_MADE_DIRS`).
    dirs: AtomicBool,
}

const OFF: u8 = 0;
const PROMISE: u8 = 1;
const DELEGATE: u8 = 2;

impl Default for Held {
    fn default() -> Held {
        Held {
            inner: Mutex::default(),
            level: AtomicU8::new(DELEGATE),
            links: AtomicBool::new(false),
            dirs: AtomicBool::new(false),
        }
    }
}

#[derive(Default)]
struct Inner {
    dirs: HashMap<Ino, Dir>,
    /// Directories to ask for, with the watch position each was learned at.
    asks: Vec<(Ino, u64)>,
    /// The watch position: every change before it was seen here.
    pos: u64,
    /// Promises are trusted until then (from the last watch that came back
    /// whole).
    until: Option<Instant>,
    /// Inode numbers the home handed this mount and it has not used:
    /// (next, end) ranges, oldest first.
    pool: Vec<(u64, u64)>,
    /// Whether an `Inodes` call is in flight, or the home cannot read it.
    pool_asking: bool,
    pool_off: bool,
}

struct Dir {
    /// Every name in the directory, with its inode when this mount knows
    /// it (it made the entry).
    names: HashMap<Vec<u8>, Option<Ino>>,
    granted: bool,
    /// Granted by `Delegate`: the home recalls it before another origin
    /// reads it.
    delegated: bool,
    /// Its mode and group, as made or set here since (what a file made in
    /// it inherits of a setgid directory).
    perm: u16,
    gid: u32,
    /// Its attributes, while this mount knows them (made or set here, or
    /// answered with a create in it; a file made here moves its times):
    /// the kernel's getattr after each create is answered from them.
    attr: Option<Attr>,
    /// The directory it is in, when known (its `..` in a listing).
    parent: Option<Ino>,
}

impl Held {
    fn on(&self) -> bool {
        self.level.load(Ordering::Relaxed) != OFF
    }

    fn trusted(g: &Inner) -> bool {
        g.until.is_some_and(|t| Instant::now() < t)
    }

    /// The watch position, to learn a directory's contents at.
    pub fn mark(&self) -> u64 {
        lock(&self.inner).pos
    }

    /// This mount made the empty directory `made` with its watch at
    /// `mark`: it is asked for with the next call.
    pub fn made_dir(&self, made: &Attr, mark: u64) {
        let ino = made.ino;
        if !self.on() {
            return;
        }
        let mut g = lock(&self.inner);
        if g.dirs.len() >= MAX_HELD {
            return;
        }
        g.dirs.insert(
            ino,
            Dir {
                names: HashMap::new(),
                granted: false,
                delegated: false,
                perm: made.perm,
                gid: made.gid,
                attr: Some(made.clone()),
                parent: None,
            },
        );
        g.asks.push((ino, mark));
    }

    /// This mount set `a` on an inode: a directory held keeps its mode and
    /// group.
    pub fn set_attr(&self, a: &Attr) {
        if let Some(d) = lock(&self.inner).dirs.get_mut(&a.ino) {
            d.perm = a.perm;
            d.gid = a.gid;
            d.attr = Some(a.clone());
        }
    }

    /// The home makes the symlinks a member made: they are made here too.
    pub fn make_links(&self) {
        self.links.store(true, Ordering::Relaxed);
    }

    /// The home makes the directories a member made, and delegates them
    /// to it: they are made here too.
    pub fn make_dirs(&self) {
        self.dirs.store(true, Ordering::Relaxed);
    }

    /// An `Inodes` call to send in front of the next call: when a
    /// directory is delegated here and fewer than half a range's numbers
    /// are left.
    pub fn take_inodes_ask(&self) -> Option<NsCall> {
        let mut g = lock(&self.inner);
        let wanted = self.wants_inodes(&g);
        if wanted {
            g.pool_asking = true;
        }
        wanted.then_some(NsCall::Inodes)
    }

    /// The home answered `Inodes`: `len` numbers from `start` (`None`: no
    /// answer; `Some(None)`: it cannot read the call, asked no more).
    pub fn inodes_answered(&self, range: Option<Option<(Ino, u64)>>) {
        let mut g = lock(&self.inner);
        g.pool_asking = false;
        match range {
            Some(Some((start, len))) => {
                if let Some(end) = start.0.checked_add(len) {
                    g.pool.push((start.0, end));
                }
            }
            Some(None) => g.pool_off = true,
            None => {}
        }
    }

    /// Whether `name` is known not to be in `parent`.
    pub fn absent(&self, parent: Ino, name: &[u8]) -> bool {
        let g = lock(&self.inner);
        Self::trusted(&g)
            && g.dirs
                .get(&parent)
                .is_some_and(|d| d.granted && !d.names.contains_key(name))
    }

    /// Whether `dir` is delegated to this mount now: what it did there may
    /// wait to be sent, as the home recalls it before anyone else reads it.
    pub fn delegated(&self, dir: Ino) -> bool {
        let g = lock(&self.inner);
        Self::trusted(&g) && g.dirs.get(&dir).is_some_and(|d| d.delegated)
    }

    /// Runs `f` if `dir` is delegated here and trusted, under the lock a
    /// break takes: what `f` queues under `dir`'s delegation goes before
    /// the watch that acknowledges its recall, never after, when the home
    /// would refuse it.
    pub fn while_delegated<T>(&self, dir: Ino, f: impl FnOnce() -> T) -> Option<T> {
        let g = lock(&self.inner);
        let delegated = Self::trusted(&g) && g.dirs.get(&dir).is_some_and(|d| d.delegated);
        delegated.then(f)
    }

    /// This mount added `name` to `parent` (the home answered so; its
    /// attributes now are `dir`'s, if the answer said).
    pub fn added(&self, parent: Ino, name: &[u8], dir: Option<&Attr>) {
        if let Some(d) = lock(&self.inner).dirs.get_mut(&parent) {
            d.names.insert(name.to_vec(), None);
            d.attr = dir.cloned();
        }
    }

    /// The home made `made` in `parent` for this mount (`added` was told),
    /// whose attributes were `before` (from [`Held::dir_attr`]): a held
    /// directory takes the new node's
    /// time as its own, as the home's create does, and counts a new
    /// directory's link. Its attributes after, if known.
    pub fn made_in(&self, parent: Ino, before: Option<Attr>, made: &Attr) -> Option<Attr> {
        let mut g = lock(&self.inner);
        let d = g.dirs.get_mut(&parent)?;
        let mut a = before?;
        a.mtime = made.ctime;
        a.ctime = made.ctime;
        if made.kind == FileKind::Dir {
            a.nlink += 1;
        }
        d.attr = Some(a.clone());
        Some(a)
    }

    /// What is known of `ino`'s attributes, if it is a held directory, is
    /// no longer sure (an xattr of it changed here).
    pub fn forget_attr(&self, ino: Ino) {
        if let Some(d) = lock(&self.inner).dirs.get_mut(&ino) {
            d.attr = None;
        }
    }

    /// `name` in held `parent` is `ino` (this mount made it).
    pub fn learn(&self, parent: Ino, name: &[u8], ino: Ino) {
        if let Some(d) = lock(&self.inner).dirs.get_mut(&parent)
            && let Some(known) = d.names.get_mut(name)
        {
            *known = Some(ino);
        }
    }

    /// The inode `name` in `parent` is, when `parent` is delegated here,
    /// trusted, and this mount made the entry: no other host can have
    /// changed it.
    pub fn child(&self, parent: Ino, name: &[u8]) -> Option<Ino> {
        let g = lock(&self.inner);
        if !Self::trusted(&g) {
            return None;
        }
        let d = g.dirs.get(&parent).filter(|d| d.delegated)?;
        *d.names.get(name)?
    }

    /// Held directory `dir` is in `parent`.
    pub fn set_parent(&self, dir: Ino, parent: Ino) {
        if let Some(d) = lock(&self.inner).dirs.get_mut(&dir) {
            d.parent = Some(parent);
        }
    }

    /// The attributes of held directory `dir`, if known.
    pub fn dir_attr(&self, dir: Ino) -> Option<Attr> {
        lock(&self.inner).dirs.get(&dir)?.attr.clone()
    }

    /// The attributes of `dir`, if it is delegated here, trusted, and
    /// they are known (this mount's are the only changes to them).
    pub fn delegated_attr(&self, dir: Ino) -> Option<Attr> {
        let g = lock(&self.inner);
        let d = g.dirs.get(&dir).filter(|d| d.delegated)?;
        Self::trusted(&g).then(|| d.attr.clone()).flatten()
    }

    /// This mount removed `name` from `parent`.
    pub fn removed(&self, parent: Ino, name: &[u8]) {
        if let Some(d) = lock(&self.inner).dirs.get_mut(&parent) {
            d.names.remove(name);
            d.attr = None;
        }
    }

    /// What is known of `dir` is no longer sure.
    pub fn drop_dir(&self, dir: Ino) {
        lock(&self.inner).dirs.remove(&dir);
    }

    /// A watch sent at `sent` came back with `s`.
    pub fn watched(&self, sent: Instant, s: &Since) {
        let mut g = lock(&self.inner);
        if s.gap {
            g.dirs.clear();
            g.asks.clear();
        }
        for c in &s.changes {
            g.dirs.remove(&c.touches());
        }
        g.pos = s.next;
        // An answer cut short may not yet hold a change that broke a
        // promise: trusted only once caught up.
        if s.changes.len() < crate::meta::changes::MAX_ANSWER {
            g.until = Some(sent + TRUST);
        }
    }

    /// A watch failed: the home may be gone or another.
    pub fn watch_failed(&self) {
        let mut g = lock(&self.inner);
        g.dirs.clear();
        g.asks.clear();
        g.until = None;
    }

    /// Whether an ask waits to be sent.
    pub fn asking(&self) -> bool {
        let g = lock(&self.inner);
        (self.on() && !g.asks.is_empty()) || self.wants_inodes(&g)
    }

    /// Whether inode numbers should be asked for: a directory is delegated
    /// here and fewer than half a range's numbers are left. Asked before
    /// every call: the directories are looked through last, and only of a
    /// home that delegates.
    fn wants_inodes(&self, g: &Inner) -> bool {
        let left: u64 = g.pool.iter().map(|(n, e)| e - n).sum();
        !g.pool_off
            && !g.pool_asking
            && left < crate::meta::ranges::RANGE_LEN / 2
            && self.level.load(Ordering::Relaxed) == DELEGATE
            && g.dirs.values().any(|d| d.delegated)
    }

    /// The ask to send in front of the next call, if any.
    pub fn take_ask(&self) -> Option<NsCall> {
        if !self.on() {
            return None;
        }
        let mut g = lock(&self.inner);
        // Only directories still known are asked for.
        let Inner { asks, dirs, .. } = &mut *g;
        asks.retain(|(ino, _)| dirs.contains_key(ino));
        if asks.is_empty() {
            return None;
        }
        let n = asks.len().min(MAX_ASK);
        let taken: Vec<(Ino, u64)> = asks.drain(..n).collect();
        // One position for all: the oldest, so each was learned after it.
        let since = taken.iter().map(|(_, m)| *m).min().expect("not empty");
        let dirs = taken.into_iter().map(|(ino, _)| ino).collect();
        Some(if self.level.load(Ordering::Relaxed) == DELEGATE {
            NsCall::Delegate { since, dirs }
        } else {
            NsCall::Promise { since, dirs }
        })
    }

    /// The home answered an ask: the directories granted are promised.
    pub fn answered(&self, ask: &NsCall, granted: &[bool]) {
        let (dirs, delegated) = match ask {
            NsCall::Promise { dirs, .. } => (dirs, false),
            NsCall::Delegate { dirs, .. } => (dirs, true),
            _ => return,
        };
        let mut g = lock(&self.inner);
        for (dir, ok) in dirs.iter().zip(granted) {
            if *ok {
                if let Some(d) = g.dirs.get_mut(dir) {
                    d.granted = true;
                    d.delegated = delegated;
                }
            } else {
                g.dirs.remove(dir);
            }
        }
    }

    /// The home cannot read `ask`: `Promise` is asked from now on after an
    /// unreadable `Delegate`, nothing after an unreadable `Promise`.
    pub fn unreadable(&self, ask: &NsCall) {
        self.unanswered(ask);
        if matches!(ask, NsCall::Delegate { .. }) {
            tracing::info!(
                "the home node delegates no directories: this mount sends each close's \
                 changes at the close"
            );
            self.level.store(PROMISE, Ordering::Relaxed);
        } else {
            tracing::info!("the home node makes no promises: this mount asks it about every name");
            self.turn_off();
        }
    }

    /// Nothing is asked from now on (the home reads no batches).
    pub fn turn_off(&self) {
        self.level.store(OFF, Ordering::Relaxed);
        let mut g = lock(&self.inner);
        g.dirs.clear();
        g.asks.clear();
    }

    /// An ask that found no answer: its directories stay unpromised.
    pub fn unanswered(&self, ask: &NsCall) {
        if let NsCall::Promise { dirs, .. } | NsCall::Delegate { dirs, .. } = ask {
            let mut g = lock(&self.inner);
            for dir in dirs {
                g.dirs.remove(dir);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::NewNode;
    use crate::meta::changes::Changed;
    use crate::meta::schema::name_cookie;
    use crate::types::Timestamp;
    use serde_bytes::ByteBuf;

    fn since(next: u64, changes: Vec<Changed>) -> Since {
        Since {
            next,
            changes,
            gap: false,
        }
    }

    fn dir(ino: u64) -> Attr {
        let t = Timestamp::default();
        Attr {
            ino: Ino(ino),
            kind: FileKind::Dir,
            perm: 0o2775,
            uid: 1,
            gid: 50,
            size: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            nlink: 2,
            rdev: 0,
            blocks: 0,
        }
    }

    fn file(gid: u32) -> NewNode {
        NewNode {
            kind: FileKind::File,
            perm: 0o640,
            uid: 7,
            gid,
            rdev: 0,
            target: None,
        }
    }

    #[test]
    fn files_are_made_here_in_a_delegated_directory_with_numbers_handed_out() {
        let h = Held::default();
        let queued = std::cell::RefCell::new(Vec::new());
        let hold = |ino: Ino, call: NsCall| {
            queued.borrow_mut().push((ino, call));
            true
        };
        assert!(
            h.make_here(Ino(7), b"a", &file(9), |a: &Attr, c| hold(a.ino, c))
                .is_none(),
            "nothing held"
        );
        granted_dir(&h);
        assert!(
            h.asking(),
            "numbers are asked for once a directory is delegated"
        );
        assert!(
            h.make_here(Ino(7), b"a", &file(9), |a: &Attr, c| hold(a.ino, c))
                .is_none(),
            "no numbers yet"
        );
        let ask = h.take_inodes_ask().expect("asked");
        assert!(matches!(ask, NsCall::Inodes));
        assert!(h.take_inodes_ask().is_none(), "one ask in flight");
        h.inodes_answered(Some(Some((Ino(1000), 2))));
        let (a, d) = h
            .make_here(Ino(7), b"a", &file(9), |a: &Attr, c| hold(a.ino, c))
            .expect("made here");
        let d = d.expect("the directory's attributes, as made");
        assert_eq!((d.ino, d.mtime), (Ino(7), a.mtime), "its times moved");
        // The setgid directory's group, the node's mode and owner.
        assert_eq!(
            (a.ino, a.gid, a.perm, a.uid, a.nlink),
            (Ino(1000), 50, 0o640, 7, 1)
        );
        assert!(!h.absent(Ino(7), b"a"), "now there");
        assert_eq!(h.child(Ino(7), b"a"), Some(Ino(1000)), "and known");
        assert_eq!(h.child(Ino(7), b"first"), None);
        assert!(
            h.make_here(Ino(7), b"a", &file(9), |a: &Attr, c| hold(a.ino, c))
                .is_none(),
            "taken"
        );
        assert!(
            h.make_here(Ino(8), b"b", &file(9), |a: &Attr, c| hold(a.ino, c))
                .is_none(),
            "not delegated"
        );
        let mut sym = file(9);
        sym.kind = FileKind::Symlink;
        assert!(
            h.make_here(Ino(7), b"s", &sym, |a: &Attr, c| hold(a.ino, c))
                .is_none(),
            "not a file"
        );
        h.set_attr(&Attr {
            perm: 0o755,
            ..dir(7)
        });
        let (b, _) = h
            .make_here(Ino(7), b"b", &file(9), |a: &Attr, c| hold(a.ino, c))
            .unwrap();
        assert_eq!((b.ino, b.gid), (Ino(1001), 9), "no longer setgid");
        assert!(
            h.make_here(Ino(7), b"c", &file(9), |a: &Attr, c| hold(a.ino, c))
                .is_none(),
            "numbers spent"
        );
        let q = queued.borrow();
        assert_eq!(q.len(), 2);
        assert!(matches!(
            &q[0],
            (
                Ino(1000),
                NsCall::Made {
                    parent: Ino(7),
                    ino: Ino(1000),
                    ..
                }
            )
        ));
        // A queue that takes no more: nothing is made.
        h.inodes_answered(Some(Some((Ino(2000), 5))));
        assert!(
            h.make_here(Ino(7), b"d", &file(9), |_: &Attr, _| false)
                .is_none()
        );
        assert!(h.absent(Ino(7), b"d"));
        // A directory made in it at home: its times and links follow.
        let before = h.dir_attr(Ino(7));
        let sub = Attr {
            ctime: Timestamp { secs: 77, nanos: 1 },
            ..dir(70)
        };
        h.added(Ino(7), b"sub", None);
        let after = h.made_in(Ino(7), before.clone(), &sub).expect("known");
        assert_eq!(
            (after.mtime, after.nlink),
            (sub.ctime, before.unwrap().nlink + 1)
        );
        h.forget_attr(Ino(7));
        assert!(h.dir_attr(Ino(7)).is_none());
        // A break ends it.
        h.watched(Instant::now(), &since(9, vec![Changed::Inode(Ino(7))]));
        assert_eq!(h.child(Ino(7), b"a"), None);
        assert!(
            h.make_here(Ino(7), b"e", &file(9), |a: &Attr, c| hold(a.ino, c))
                .is_none()
        );
        // A home that cannot read `Inodes` is not asked again.
        let h = Held::default();
        granted_dir(&h);
        h.take_inodes_ask().unwrap();
        h.inodes_answered(Some(None));
        assert!(h.take_inodes_ask().is_none() && !h.asking());
    }

    #[test]
    fn directories_are_made_here_delegated_and_held_once_the_home_makes_them() {
        let h = Held::default();
        let queued = std::cell::RefCell::new(Vec::new());
        let hold = |ino: Ino, call: NsCall| {
            queued.borrow_mut().push((ino, call));
            true
        };
        let mkdir = NewNode {
            kind: FileKind::Dir,
            perm: 0o750,
            ..file(9)
        };
        granted_dir(&h);
        h.take_inodes_ask().unwrap();
        h.inodes_answered(Some(Some((Ino(1000), 10))));
        assert!(
            h.make_here(Ino(7), b"sub", &mkdir, |a: &Attr, c| hold(a.ino, c))
                .is_none(),
            "the home did not say it makes directories"
        );
        h.make_dirs();
        let nlink = h.dir_attr(Ino(7)).unwrap().nlink;
        let (sub, d) = h
            .make_here(Ino(7), b"sub", &mkdir, |a: &Attr, c| hold(a.ino, c))
            .expect("made here");
        // The setgid parent's group and setgid bit; two links; the
        // parent's link count one higher.
        assert_eq!(
            (sub.ino, sub.kind, sub.perm, sub.gid, sub.nlink),
            (Ino(1000), FileKind::Dir, 0o2750, 50, 2)
        );
        assert_eq!(d.unwrap().nlink, nlink + 1);
        assert!(h.delegated(Ino(1000)), "held, delegated");
        assert_eq!(h.dir_attr(Ino(1000)), Some(sub.clone()));
        assert!(h.absent(Ino(1000), b"x"), "known empty");
        // What is made in it is made here too, behind it in the queue.
        let (f, _) = h
            .make_here(Ino(1000), b"f", &file(9), |a: &Attr, c| hold(a.ino, c))
            .unwrap();
        assert_eq!(f.gid, 50, "passed on by the new setgid directory");
        let (_, _) = h
            .make_here(Ino(1000), b"deeper", &mkdir, |a: &Attr, c| hold(a.ino, c))
            .unwrap();
        assert!(h.delegated(Ino(1002)));
        let q = queued.borrow();
        assert!(
            matches!(
                &q[..],
                [
                    (
                        Ino(1000),
                        NsCall::Made {
                            parent: Ino(7),
                            node: NewNode {
                                kind: FileKind::Dir,
                                ..
                            },
                            ..
                        }
                    ),
                    (
                        Ino(1001),
                        NsCall::Made {
                            parent: Ino(1000),
                            ..
                        }
                    ),
                    (
                        Ino(1002),
                        NsCall::Made {
                            parent: Ino(1000),
                            ..
                        }
                    ),
                ]
            ),
            "{q:?}"
        );
        drop(q);
        // Listed here as the home lists: its cookies, in their order, a
        // page at a time; not once a name's attributes are unknown.
        let sub_attr = |ino: Ino| {
            (ino == Ino(1001)).then(|| Attr {
                ino,
                kind: FileKind::File,
                ..dir(0)
            })
        };
        let all = h.listing(Ino(1000), 0, 100, sub_attr).expect("listed here");
        let names: Vec<&[u8]> = all.iter().map(|(e, _)| e.name.as_slice()).collect();
        let mut want: Vec<&[u8]> = vec![b"f", b"deeper"];
        want.sort_by_key(|n| crate::meta::schema::name_cookie(n));
        assert_eq!(names[..2], [b".".as_slice(), b".."]);
        assert_eq!(names[2..], want[..]);
        assert_eq!(
            (all[1].0.ino, all[2].0.offset),
            (Ino(7), name_cookie(want[0]))
        );
        for (e, a) in &all[2..] {
            let kind = if e.name == b"f" {
                FileKind::File
            } else {
                FileKind::Dir
            };
            assert_eq!((e.kind, a.kind), (kind, kind));
        }
        let rest = h
            .listing(Ino(1000), all[2].0.offset, 100, sub_attr)
            .unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].0.name, want[1]);
        assert_eq!(h.listing(Ino(1000), 0, 3, sub_attr).unwrap().len(), 3);
        assert!(
            h.listing(Ino(1000), 0, 100, |_| None).is_none(),
            "f unknown"
        );
        assert!(
            h.listing(Ino(7), 0, 100, sub_attr).is_none(),
            "names made elsewhere"
        );
        // A break of the new directory ends it as any other.
        h.watched(Instant::now(), &since(9, vec![Changed::Inode(Ino(1000))]));
        assert!(!h.delegated(Ino(1000)) && h.delegated(Ino(7)));
        assert!(
            h.make_here(Ino(1000), b"g", &file(9), |a: &Attr, c| hold(a.ino, c))
                .is_none()
        );
    }

    fn granted_dir(h: &Held) {
        h.made_dir(&dir(7), 5);
        let ask = h.take_ask().expect("asked");
        assert!(matches!(&ask, NsCall::Delegate { since: 5, dirs } if dirs == &[Ino(7)]));
        h.answered(&ask, &[true]);
        h.watched(Instant::now(), &since(6, vec![]));
    }

    #[test]
    fn entries_made_here_are_renamed_here_in_their_delegated_directory() {
        let h = Held::default();
        let queued = std::cell::RefCell::new(Vec::new());
        let hold = |ino: Ino, call: NsCall| {
            queued.borrow_mut().push((ino, call));
            true
        };
        let t = Timestamp { secs: 99, nanos: 3 };
        let rename = |from: &[u8], to: &[u8], noreplace: bool| {
            h.rename_here(Ino(7), (from, to), noreplace, t, |_| true, hold)
        };
        assert!(rename(b"a", b"b", false).is_none(), "nothing held");
        granted_dir(&h);
        h.take_inodes_ask().unwrap();
        h.inodes_answered(Some(Some((Ino(1000), 9))));
        for name in [b"config.lock".as_slice(), b"config", b"HEAD.lock"] {
            h.make_here(Ino(7), name, &file(9), |a: &Attr, c| hold(a.ino, c))
                .unwrap();
        }
        h.added(Ino(7), b"from-home", None);
        h.set_attr(&dir(7));
        queued.borrow_mut().clear();
        // Over a name made here: the file moved, the one replaced.
        let (moved, victim, d) = rename(b"config.lock", b"config", false).expect("here");
        assert_eq!((moved, victim), (Ino(1000), Some(Ino(1001))));
        assert_eq!(d.map(|d| (d.mtime, d.ctime)), Some((t, t)));
        assert_eq!(h.child(Ino(7), b"config"), Some(Ino(1000)));
        assert!(h.absent(Ino(7), b"config.lock"));
        // To a name absent, RENAME_NOREPLACE or not.
        let (moved, victim, _) = rename(b"HEAD.lock", b"HEAD", true).unwrap();
        assert_eq!((moved, victim), (Ino(1002), None));
        {
            let q = queued.borrow();
            assert_eq!(q.len(), 2);
            let NsCall::Held { dir, call } = &q[0].1 else {
                panic!("{:?}", q[0])
            };
            assert_eq!((q[0].0, *dir), (Ino(1000), Ino(7)));
            assert!(matches!(
                &**call,
                NsCall::Rename { parent: Ino(7), name, new_parent: Ino(7), new_name, flags }
                    if name.as_slice() == b"config.lock" && new_name.as_slice() == b"config"
                        && !flags.noreplace && !flags.exchange
            ));
        }
        // At home: a name kept by RENAME_NOREPLACE, one whose inode is not
        // known, one made elsewhere, an entry onto itself, what may not
        // move, a directory not delegated, a queue that takes no more.
        assert!(rename(b"HEAD", b"config", true).is_none());
        assert!(rename(b"HEAD", b"from-home", false).is_none());
        assert!(rename(b"from-home", b"x", false).is_none());
        assert!(rename(b"HEAD", b"HEAD", false).is_none());
        assert!(
            h.rename_here(Ino(7), (b"HEAD", b"y"), false, t, |i| i != Ino(1002), hold)
                .is_none()
        );
        assert!(
            h.rename_here(
                Ino(7),
                (b"HEAD", b"config"),
                false,
                t,
                |i| i != Ino(1000),
                hold
            )
            .is_none()
        );
        assert!(
            h.rename_here(Ino(8), (b"HEAD", b"y"), false, t, |_| true, hold)
                .is_none()
        );
        assert!(
            h.rename_here(Ino(7), (b"HEAD", b"y"), false, t, |_| true, |_, _| false)
                .is_none()
        );
        assert_eq!(queued.borrow().len(), 2, "none of those queued");
        assert_eq!(h.child(Ino(7), b"HEAD"), Some(Ino(1002)), "nor renamed");
        // A break ends it.
        h.watched(Instant::now(), &since(9, vec![Changed::Inode(Ino(7))]));
        assert!(rename(b"HEAD", b"z", false).is_none());
    }

    #[test]
    fn a_home_that_cannot_read_delegate_is_asked_promise_then_nothing() {
        let h = Held::default();
        granted_dir(&h);
        assert!(h.delegated(Ino(7)));
        h.made_dir(&dir(8), 6);
        let ask = h.take_ask().unwrap();
        h.unreadable(&ask);
        assert!(h.delegated(Ino(7)), "what was granted stays");
        h.made_dir(&dir(9), 7);
        let ask = h.take_ask().unwrap();
        assert!(matches!(&ask, NsCall::Promise { dirs, .. } if dirs == &[Ino(9)]));
        h.answered(&ask, &[true]);
        assert!(h.absent(Ino(9), b"a"), "promised");
        assert!(!h.delegated(Ino(9)), "but not delegated");
        h.made_dir(&dir(10), 8);
        let ask = h.take_ask().unwrap();
        h.unreadable(&ask);
        h.made_dir(&dir(11), 9);
        assert!(h.take_ask().is_none(), "nothing asked");
        assert!(!h.delegated(Ino(7)));
    }

    #[test]
    fn names_are_absent_only_while_promised_and_trusted() {
        let h = Held::default();
        h.made_dir(&dir(7), 5);
        assert!(!h.absent(Ino(7), b"a"), "not yet granted");
        let ask = h.take_ask().unwrap();
        h.answered(&ask, &[true]);
        assert!(!h.absent(Ino(7), b"a"), "no watch came back yet");
        h.watched(Instant::now(), &since(6, vec![]));
        assert!(h.absent(Ino(7), b"a"));
        h.added(Ino(7), b"a", None);
        assert!(!h.absent(Ino(7), b"a"));
        h.removed(Ino(7), b"a");
        assert!(h.absent(Ino(7), b"a"));
        assert!(!h.absent(Ino(8), b"a"), "another directory");
        // A watch sent longer ago than the trust lasts.
        h.watched(Instant::now() - TRUST, &since(6, vec![]));
        assert!(!h.absent(Ino(7), b"a"));
    }

    #[test]
    fn a_change_pushed_a_gap_or_a_watch_error_ends_a_promise() {
        for end in 0..4 {
            let h = Held::default();
            granted_dir(&h);
            assert!(h.absent(Ino(7), b"x"));
            match end {
                0 => h.watched(
                    Instant::now(),
                    &since(
                        9,
                        vec![Changed::Entry {
                            parent: Ino(7),
                            name: ByteBuf::from(b"x".to_vec()),
                        }],
                    ),
                ),
                1 => h.watched(Instant::now(), &since(9, vec![Changed::Inode(Ino(7))])),
                2 => h.watched(
                    Instant::now(),
                    &Since {
                        next: 100,
                        changes: vec![],
                        gap: true,
                    },
                ),
                _ => h.watch_failed(),
            }
            assert!(!h.absent(Ino(7), b"x"), "end {end}");
        }
    }

    #[test]
    fn a_refused_or_unanswered_ask_and_a_cut_short_answer_trust_nothing() {
        let h = Held::default();
        h.made_dir(&dir(7), 5);
        let ask = h.take_ask().unwrap();
        h.answered(&ask, &[false]);
        h.watched(Instant::now(), &since(6, vec![]));
        assert!(!h.absent(Ino(7), b"a"));
        h.made_dir(&dir(8), 6);
        let ask = h.take_ask().unwrap();
        h.unanswered(&ask);
        h.answered(&ask, &[true]);
        assert!(!h.absent(Ino(8), b"a"), "dropped when unanswered");
        let h = Held::default();
        h.made_dir(&dir(7), 5);
        let ask = h.take_ask().unwrap();
        h.answered(&ask, &[true]);
        let full = vec![Changed::Inode(Ino(1)); crate::meta::changes::MAX_ANSWER];
        h.watched(Instant::now(), &since(6, full));
        assert!(!h.absent(Ino(7), b"a"), "not caught up");
        h.turn_off();
        h.made_dir(&dir(9), 6);
        assert!(h.take_ask().is_none());
    }
}
