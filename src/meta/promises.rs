//! Promises the home made to member mounts: that any other origin's change
//! to a directory is seen by the holder before that change is answered
//! (docs/DESIGN.md, "Promises on directories"). The table lives beside the
//! change journal, under its lock, so a grant and the changes it is checked
//! against are ordered; what a broken promise owes is waited for by the
//! thread that made the change, once it let go of the writer lock.

use crate::types::Ino;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a promise outlives its holder's last watch, and the longest a
/// change waits for a holder to acknowledge that it saw it.
pub const LEASE: Duration = Duration::from_secs(10);
/// How long a member trusts its promises after it sent a watch that came
/// back: less than [`LEASE`], so that it stops before the home stops
/// waiting for it.
pub const TRUST: Duration = Duration::from_secs(8);
/// The most directories promised to one holder.
pub const MAX_HELD: usize = 4096;
/// The most directories one ask names.
pub const MAX_ASK: usize = 64;
/// How long a holder that let a lease pass without acknowledging a break
/// is promised nothing: a member that asks and never answers delays
/// others' changes once, not again and again.
pub const SHUNNED: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(super) struct Promises {
    /// Per directory, who holds a promise of it.
    by_dir: HashMap<Ino, Vec<Arc<str>>>,
    holders: HashMap<Arc<str>, Holder>,
    /// Grants changed since last taken, for the records that outlive a
    /// restart ([`Promises::take_dirty`]).
    dirty: Vec<(Ino, Option<Grant>)>,
}

/// Who may send held-back changes of a directory: its holder, delegated
/// it, or recalled from it (since `recalled`, Unix ms) and not yet
/// acknowledged (docs/DESIGN.md, "The grant table outlives the home").
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    pub holder: Arc<str>,
    pub recalled: Option<u64>,
}

fn unix_ms(at: Instant) -> u64 {
    let ago = at.elapsed();
    std::time::SystemTime::now()
        .checked_sub(ago)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

struct Holder {
    dirs: HashSet<Ino>,
    /// Those of `dirs` delegated: recalled before another origin reads them.
    delegated: HashSet<Ino>,
    /// Delegations broken whose holder has not yet acknowledged the break
    /// (its watch asking from past the sequence number kept), with when:
    /// what it made there is still taken, until a lease from the break.
    returning: HashMap<Ino, (u64, Instant)>,
    /// Its watch asked from here: it has seen every change before.
    acked: u64,
    /// Its last watch (or ask) arrived then.
    seen: Instant,
    /// It let a break go unanswered: promised nothing until then.
    shunned: Option<Instant>,
}

/// What a change that broke a promise waits for: `holder`'s watch asking
/// from `upto` on.
#[derive(Debug)]
pub(super) struct Owed {
    holder: Arc<str>,
    upto: u64,
    broken: Instant,
}

impl Promises {
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }

    /// `holder`'s watch asks from `seq`: it saw every change before it.
    /// Whether that may settle a change waiting for it.
    pub fn watched(&mut self, holder: &str, seq: u64) -> bool {
        match self.holders.get_mut(holder) {
            Some(h) => {
                h.seen = Instant::now();
                let news = seq > h.acked;
                h.acked = h.acked.max(seq);
                let dirty = &mut self.dirty;
                let delegated = &h.delegated;
                h.returning.retain(|dir, (upto, _)| {
                    let keep = *upto > seq;
                    if !keep && !delegated.contains(dir) {
                        dirty.push((*dir, None));
                    }
                    keep
                });
                news
            }
            None => false,
        }
    }

    /// Grants `holder` what it may be promised of `dirs`, asked with its
    /// watch at `since`: not a directory `changed` (by another origin since
    /// `since`), nor past [`MAX_HELD`]; `delegate`: delegated, recalled
    /// before another origin reads one.
    pub fn grant(
        &mut self,
        holder: &str,
        since: u64,
        dirs: &[Ino],
        changed: &HashSet<Ino>,
        delegate: bool,
    ) -> Vec<bool> {
        self.expire();
        let key: Arc<str> = match self.holders.get_key_value(holder) {
            Some((k, _)) => k.clone(),
            None => Arc::from(holder),
        };
        let h = self.holders.entry(key.clone()).or_insert_with(|| Holder {
            dirs: HashSet::new(),
            delegated: HashSet::new(),
            returning: HashMap::new(),
            acked: 0,
            seen: Instant::now(),
            shunned: None,
        });
        h.seen = Instant::now();
        h.acked = h.acked.max(since);
        if h.shunned.is_some_and(|t| Instant::now() < t) {
            return vec![false; dirs.len()];
        }
        dirs.iter()
            .map(|dir| {
                if changed.contains(dir) || (h.dirs.len() >= MAX_HELD && !h.dirs.contains(dir)) {
                    return false;
                }
                if h.dirs.insert(*dir) {
                    self.by_dir.entry(*dir).or_default().push(key.clone());
                }
                if delegate && h.delegated.insert(*dir) {
                    self.dirty.push((
                        *dir,
                        Some(Grant {
                            holder: key.clone(),
                            recalled: None,
                        }),
                    ));
                }
                true
            })
            .collect()
    }

    /// Delegates `dir`, a directory `holder` just made under a delegation
    /// of its parent, to it: no other origin can know it yet. What the
    /// holder is counted as having seen stays (a recall waiting on it still
    /// waits). Not to a holder shunned, unknown, or holding twice
    /// [`MAX_HELD`].
    pub fn grant_made(&mut self, holder: &str, dir: Ino) -> bool {
        let Some((key, h)) = self.holders.get_key_value(holder) else {
            return false;
        };
        if h.shunned.is_some_and(|t| Instant::now() < t) || h.dirs.len() >= 2 * MAX_HELD {
            return false;
        }
        let key = key.clone();
        let h = self.holders.get_mut(holder).expect("found above");
        if h.dirs.insert(dir) {
            self.by_dir.entry(dir).or_default().push(key.clone());
        }
        if h.delegated.insert(dir) {
            let grant = Grant {
                holder: key,
                recalled: None,
            };
            self.dirty.push((dir, Some(grant)));
        }
        true
    }

    /// A change by `origin` to `ino`, noted at `seq`: the promises of it
    /// to others end, and what each living holder owes is added to `owed`.
    pub fn broken(&mut self, origin: &str, ino: Ino, seq: u64, owed: &mut Vec<Owed>) {
        let Some(list) = self.by_dir.get_mut(&ino) else {
            return;
        };
        let now = Instant::now();
        list.retain(|holder| {
            if &**holder == origin {
                return true;
            }
            if let Some(h) = self.holders.get_mut(holder) {
                h.dirs.remove(&ino);
                if h.delegated.remove(&ino) {
                    h.returning.insert(ino, (seq + 1, now));
                    let grant = Grant {
                        holder: holder.clone(),
                        recalled: Some(unix_ms(now)),
                    };
                    self.dirty.push((ino, Some(grant)));
                }
                if now.duration_since(h.seen) <= LEASE {
                    owed.push(Owed {
                        holder: holder.clone(),
                        upto: seq + 1,
                        broken: now,
                    });
                }
            }
            false
        });
        if list.is_empty() {
            self.by_dir.remove(&ino);
        }
    }

    /// Whether `dir` is delegated to a living holder other than `origin`:
    /// `origin` must recall it before it reads there.
    pub fn delegated_elsewhere(&self, origin: &str, dir: Ino) -> bool {
        let Some(list) = self.by_dir.get(&dir) else {
            return false;
        };
        let now = Instant::now();
        list.iter().any(|holder| {
            &**holder != origin
                && self.holders.get(holder).is_some_and(|h| {
                    h.delegated.contains(&dir) && now.duration_since(h.seen) <= LEASE
                })
        })
    }

    /// Whether `dir` is delegated to `holder`, or was until a break it has
    /// not yet acknowledged (within a lease): what it made there is taken.
    pub fn holds(&self, holder: &str, dir: Ino) -> bool {
        self.holders.get(holder).is_some_and(|h| {
            h.delegated.contains(&dir)
                || h.returning
                    .get(&dir)
                    .is_some_and(|(_, at)| at.elapsed() <= LEASE)
        })
    }

    /// Every delegated directory.
    pub fn delegated(&self) -> Vec<Ino> {
        let mut all: Vec<Ino> = self
            .holders
            .values()
            .flat_map(|h| h.delegated.iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Whether `o` is paid: its holder saw the change, or is gone, or the
    /// lease since the break ran out (then said once, in the log).
    pub fn settled(&mut self, o: &Owed, now: Instant) -> bool {
        let Some(h) = self.holders.get_mut(&o.holder) else {
            return true;
        };
        if h.acked >= o.upto {
            return true;
        }
        if now.duration_since(h.seen) > LEASE || now.duration_since(o.broken) >= LEASE {
            tracing::warn!(
                "member device {} did not acknowledge, within {} s, another host's change \
                 to a directory it was promised; going on without it, and promising it \
                 nothing for {} s",
                o.holder,
                LEASE.as_secs(),
                SHUNNED.as_secs()
            );
            h.shunned = Some(now + SHUNNED);
            return true;
        }
        false
    }

    /// When `o` stops waiting if its holder says nothing.
    pub fn deadline(o: &Owed) -> Instant {
        o.broken + LEASE
    }

    /// Holders whose watch stopped a lease ago lose their promises.
    fn expire(&mut self) {
        let now = Instant::now();
        let gone: Vec<Arc<str>> = self
            .holders
            .iter()
            .filter(|(_, h)| now.duration_since(h.seen) > LEASE)
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            if let Some(h) = self.holders.remove(&k) {
                let granted = h.delegated.iter().chain(h.returning.keys());
                self.dirty.extend(granted.map(|dir| (*dir, None)));
                for dir in h.dirs {
                    if let Some(list) = self.by_dir.get_mut(&dir) {
                        list.retain(|x| *x != k);
                        if list.is_empty() {
                            self.by_dir.remove(&dir);
                        }
                    }
                }
            }
        }
    }

    /// Grants changed since the last call: each directory's grant now
    /// (`None`: none).
    pub fn take_dirty(&mut self) -> Vec<(Ino, Option<Grant>)> {
        std::mem::take(&mut self.dirty)
    }

    /// A grant recorded by an earlier run of the home: delegated again,
    /// its holder's lease starting now; or recalled, as long ago as it was
    /// (past a lease: false, nothing restored).
    pub fn restore(&mut self, dir: Ino, grant: &Grant, upto: u64) -> bool {
        let now = Instant::now();
        let at = match grant.recalled {
            None => None,
            Some(ms) => {
                let then = std::time::UNIX_EPOCH + Duration::from_millis(ms);
                let ago = std::time::SystemTime::now()
                    .duration_since(then)
                    .unwrap_or_default();
                if ago > LEASE {
                    return false;
                }
                Some(now.checked_sub(ago).unwrap_or(now))
            }
        };
        let key = grant.holder.clone();
        let h = self.holders.entry(key.clone()).or_insert_with(|| Holder {
            dirs: HashSet::new(),
            delegated: HashSet::new(),
            returning: HashMap::new(),
            acked: 0,
            seen: now,
            shunned: None,
        });
        match at {
            None => {
                if h.dirs.insert(dir) {
                    self.by_dir.entry(dir).or_default().push(key);
                }
                h.delegated.insert(dir);
            }
            Some(at) => {
                h.returning.insert(dir, (upto, at));
            }
        }
        true
    }

    /// How many directories `holder` is promised.
    #[cfg(test)]
    pub fn held(&self, holder: &str) -> usize {
        self.holders.get(holder).map_or(0, |h| h.dirs.len())
    }
}
