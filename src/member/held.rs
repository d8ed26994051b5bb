//! The directories a member mount was promised (docs/DESIGN.md, "Promises
//! on directories"): the home lets this mount see any other origin's change
//! to one of them before answering it, so while the promise holds, a name
//! this mount knows is not there is answered absent without a round trip.
//! What is known of a directory is what this mount did there since it made
//! it; anything else drops it.

use super::wire::NsCall;
use crate::meta::changes::Since;
use crate::meta::promises::{MAX_ASK, MAX_HELD, TRUST};
use crate::types::Ino;
use crate::util::lock;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

pub struct Held {
    inner: Mutex<Inner>,
    /// What is asked: [`DELEGATE`], then [`PROMISE`] when the home cannot
    /// read `Delegate`, then [`OFF`] (nothing) when it cannot read
    /// `Promise` either.
    level: AtomicU8,
}

const OFF: u8 = 0;
const PROMISE: u8 = 1;
const DELEGATE: u8 = 2;

impl Default for Held {
    fn default() -> Held {
        Held {
            inner: Mutex::default(),
            level: AtomicU8::new(DELEGATE),
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
}

struct Dir {
    /// Every name in the directory.
    names: HashSet<Vec<u8>>,
    granted: bool,
    /// Granted by `Delegate`: the home recalls it before another origin
    /// reads it.
    delegated: bool,
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

    /// This mount made the empty directory `ino` with its watch at `mark`:
    /// it is asked for with the next call.
    pub fn made_dir(&self, ino: Ino, mark: u64) {
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
                names: HashSet::new(),
                granted: false,
                delegated: false,
            },
        );
        g.asks.push((ino, mark));
    }

    /// Whether `name` is known not to be in `parent`.
    pub fn absent(&self, parent: Ino, name: &[u8]) -> bool {
        let g = lock(&self.inner);
        Self::trusted(&g)
            && g.dirs
                .get(&parent)
                .is_some_and(|d| d.granted && !d.names.contains(name))
    }

    /// Whether `dir` is delegated to this mount now: what it did there may
    /// wait to be sent, as the home recalls it before anyone else reads it.
    pub fn delegated(&self, dir: Ino) -> bool {
        let g = lock(&self.inner);
        Self::trusted(&g) && g.dirs.get(&dir).is_some_and(|d| d.delegated)
    }

    /// This mount added `name` to `parent` (the home answered so).
    pub fn added(&self, parent: Ino, name: &[u8]) {
        if let Some(d) = lock(&self.inner).dirs.get_mut(&parent) {
            d.names.insert(name.to_vec());
        }
    }

    /// This mount removed `name` from `parent`.
    pub fn removed(&self, parent: Ino, name: &[u8]) {
        if let Some(d) = lock(&self.inner).dirs.get_mut(&parent) {
            d.names.remove(name);
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
        self.on() && !lock(&self.inner).asks.is_empty()
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
    use crate::meta::changes::Changed;
    use serde_bytes::ByteBuf;

    fn since(next: u64, changes: Vec<Changed>) -> Since {
        Since {
            next,
            changes,
            gap: false,
        }
    }

    fn granted_dir(h: &Held) {
        h.made_dir(Ino(7), 5);
        let ask = h.take_ask().expect("asked");
        assert!(matches!(&ask, NsCall::Delegate { since: 5, dirs } if dirs == &[Ino(7)]));
        h.answered(&ask, &[true]);
        h.watched(Instant::now(), &since(6, vec![]));
    }

    #[test]
    fn a_home_that_cannot_read_delegate_is_asked_promise_then_nothing() {
        let h = Held::default();
        granted_dir(&h);
        assert!(h.delegated(Ino(7)));
        h.made_dir(Ino(8), 6);
        let ask = h.take_ask().unwrap();
        h.unreadable(&ask);
        assert!(h.delegated(Ino(7)), "what was granted stays");
        h.made_dir(Ino(9), 7);
        let ask = h.take_ask().unwrap();
        assert!(matches!(&ask, NsCall::Promise { dirs, .. } if dirs == &[Ino(9)]));
        h.answered(&ask, &[true]);
        assert!(h.absent(Ino(9), b"a"), "promised");
        assert!(!h.delegated(Ino(9)), "but not delegated");
        h.made_dir(Ino(10), 8);
        let ask = h.take_ask().unwrap();
        h.unreadable(&ask);
        h.made_dir(Ino(11), 9);
        assert!(h.take_ask().is_none(), "nothing asked");
        assert!(!h.delegated(Ino(7)));
    }

    #[test]
    fn names_are_absent_only_while_promised_and_trusted() {
        let h = Held::default();
        h.made_dir(Ino(7), 5);
        assert!(!h.absent(Ino(7), b"a"), "not yet granted");
        let ask = h.take_ask().unwrap();
        h.answered(&ask, &[true]);
        assert!(!h.absent(Ino(7), b"a"), "no watch came back yet");
        h.watched(Instant::now(), &since(6, vec![]));
        assert!(h.absent(Ino(7), b"a"));
        h.added(Ino(7), b"a");
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
        h.made_dir(Ino(7), 5);
        let ask = h.take_ask().unwrap();
        h.answered(&ask, &[false]);
        h.watched(Instant::now(), &since(6, vec![]));
        assert!(!h.absent(Ino(7), b"a"));
        h.made_dir(Ino(8), 6);
        let ask = h.take_ask().unwrap();
        h.unanswered(&ask);
        h.answered(&ask, &[true]);
        assert!(!h.absent(Ino(8), b"a"), "dropped when unanswered");
        let h = Held::default();
        h.made_dir(Ino(7), 5);
        let ask = h.take_ask().unwrap();
        h.answered(&ask, &[true]);
        let full = vec![Changed::Inode(Ino(1)); crate::meta::changes::MAX_ANSWER];
        h.watched(Instant::now(), &since(6, full));
        assert!(!h.absent(Ino(7), b"a"), "not caught up");
        h.turn_off();
        h.made_dir(Ino(9), 6);
        assert!(h.take_ask().is_none());
    }
}
