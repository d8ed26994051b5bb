//! The gateway's WebDAV lock table. dav-server's own (`MemLs`) keeps a lock
//! with no Timeout forever, counts nothing per client, and panics with its
//! mutex held when a lock of the root is removed (after which every request
//! that needs the table fails). This one:
//! - gives every lock a timeout: [`DEFAULT_TIMEOUT`] when the client names
//!   none (or Infinite), never more than [`MAX_TIMEOUT`]; an expired lock is
//!   no lock, and the `webdav-locks` worker drops it;
//! - holds at most [`MAX_PER_OWNER`] locks and [`MAX_OWNER_BYTES`] of them
//!   (path and owner element) per principal (the WebDAV user; all of an
//!   open gateway's clients are one), and [`MAX_LOCKS`] and [`MAX_BYTES`]
//!   in all (davfs2 holds a lock on every file it has not uploaded yet, so
//!   a copied tree means thousands);
//! - never locks the root of the volume (a depth-infinity lock there would
//!   shut every other client out);
//! - survives a panic of a holder: the table is left as it was (each change
//!   is one map operation) and a poisoned mutex is taken as it is.
//!
//! Paths are keys of a sorted map: a lock's ancestors are found by prefix,
//! its descendants by a range.

use dav_server::davpath::DavPath;
use dav_server::ls::{DavLock, DavLockSystem, LsFuture};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use xmltree::Element;

/// A lock's life when the client names none, or Infinite.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest life a lock is given (it may be refreshed).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Locks one principal may hold at once.
pub const MAX_PER_OWNER: usize = 50_000;
/// What one principal's locks may take (see [`cost`]).
pub const MAX_OWNER_BYTES: usize = 16 << 20;
/// Locks the table holds at once.
pub const MAX_LOCKS: usize = 200_000;
/// What the table's locks may take.
pub const MAX_BYTES: usize = 64 << 20;

/// The lock table (a handle: clones share it).
#[derive(Clone, Debug, Default)]
pub struct Locks(Arc<Mutex<Table>>);

#[derive(Debug, Default)]
struct Table {
    /// Locks by path (`/a/b`, never a trailing `/`; the root is never one).
    by_path: BTreeMap<Vec<u8>, Vec<DavLock>>,
    /// Live and expired locks held, by principal ("" for none).
    per_owner: HashMap<String, Held>,
    all: Held,
}

/// Locks held and what they take.
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    count: usize,
    bytes: usize,
}

impl Held {
    fn add(&mut self, cost: usize) {
        self.count += 1;
        self.bytes += cost;
    }
    fn sub(&mut self, cost: usize) {
        self.count = self.count.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(cost);
    }
    /// Whether one more lock of `cost` would pass `count` or `bytes`.
    fn full(&self, cost: usize, count: usize, bytes: usize) -> bool {
        self.count >= count || self.bytes + cost > bytes
    }
}

/// What a lock takes in memory, roughly: its fixed part, its path and its
/// owner element as XML.
fn cost(l: &DavLock) -> usize {
    let mut owner = Vec::new();
    if let Some(o) = &l.owner {
        let _ = o.write(&mut owner);
    }
    256 + l.path.as_bytes().len() + owner.len()
}

/// `path` as a key: `/`-joined names, no trailing `/`.
fn key(path: &DavPath) -> Vec<u8> {
    let mut k = Vec::new();
    for n in path
        .as_bytes()
        .split(|b| *b == b'/')
        .filter(|n| !n.is_empty())
    {
        k.push(b'/');
        k.extend_from_slice(n);
    }
    k
}

/// The strict ancestors of `key` (the root, "", first), then `key` itself.
fn ancestors_and_self(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    let cuts = key
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'/')
        .map(|(i, _)| i)
        .chain(std::iter::once(key.len()));
    cuts.map(move |i| &key[..i])
}

fn live(l: &DavLock, now: SystemTime) -> bool {
    l.timeout_at.is_none_or(|t| t > now)
}

fn owner_of(l: &DavLock) -> String {
    l.principal.clone().unwrap_or_default()
}

/// Whether a request holding `tokens` as `principal` holds `l`.
fn holds(l: &DavLock, principal: Option<&str>, ignore_principal: bool, tokens: &[&str]) -> bool {
    tokens.contains(&l.token.as_str()) && (ignore_principal || principal == l.principal.as_deref())
}

impl Table {
    /// The live locks that cover `key`: on it, or deep on an ancestor.
    fn covering<'a>(
        &'a self,
        key: &'a [u8],
        now: SystemTime,
    ) -> impl Iterator<Item = &'a DavLock> + 'a {
        ancestors_and_self(key).flat_map(move |k| {
            let on_self = k.len() == key.len();
            self.by_path
                .get(k)
                .into_iter()
                .flatten()
                .filter(move |l| live(l, now) && (on_self || l.deep))
        })
    }

    /// The live locks strictly below `key`.
    fn below<'a>(&'a self, key: &'a [u8], now: SystemTime) -> impl Iterator<Item = &'a DavLock> {
        let mut from = key.to_vec();
        from.push(b'/');
        self.by_path
            .range(from.clone()..)
            .take_while(move |(k, _)| k.starts_with(&from))
            .flat_map(|(_, ls)| ls.iter())
            .filter(move |l| live(l, now))
    }

    fn remove_where(&mut self, mut gone: impl FnMut(&[u8], &DavLock) -> bool) {
        let mut dropped = Vec::new();
        self.by_path.retain(|k, ls| {
            ls.retain(|l| {
                let g = gone(k, l);
                if g {
                    dropped.push((owner_of(l), cost(l)));
                }
                !g
            });
            !ls.is_empty()
        });
        for (o, c) in dropped {
            self.all.sub(c);
            if let Some(h) = self.per_owner.get_mut(&o) {
                h.sub(c);
                if h.count == 0 {
                    self.per_owner.remove(&o);
                }
            }
        }
    }

    /// Why `owner` may not take a lock of `cost`, if so.
    fn refusal(&self, owner: &str, cost: usize) -> Option<String> {
        if self.all.full(cost, MAX_LOCKS, MAX_BYTES) {
            return Some(format!(
                "the gateway holds {} locks, its most",
                self.all.count
            ));
        }
        let held = self.per_owner.get(owner).copied().unwrap_or_default();
        held.full(cost, MAX_PER_OWNER, MAX_OWNER_BYTES).then(|| {
            format!(
                "holds {} locks ({} KiB), the most one user may",
                held.count,
                held.bytes >> 10
            )
        })
    }

    fn sweep(&mut self, now: SystemTime) {
        self.remove_where(|_, l| !live(l, now));
    }
}

impl Locks {
    pub fn new() -> Locks {
        Locks::default()
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        crate::util::lock(&self.0)
    }

    /// Drops the expired locks (the `webdav-locks` worker's pass).
    pub fn sweep(&self) {
        self.table().sweep(SystemTime::now());
    }

    /// Locks held in all.
    pub fn held(&self) -> usize {
        self.table().all.count
    }

    /// Why `principal` may not take another lock now, if so (a new lock
    /// of the most a LOCK body can make it cost).
    pub fn refusal(&self, principal: Option<&str>) -> Option<String> {
        let mut t = self.table();
        let owner = principal.unwrap_or_default();
        let most = 256 + 4096 + super::guard::MAX_LOCK_BODY;
        if t.refusal(owner, most).is_some() {
            t.sweep(SystemTime::now());
        }
        t.refusal(owner, most).map(|why| {
            let who = principal.map_or("this host's clients".to_string(), |p| format!("{p:?}"));
            format!("{who}: {why}")
        })
    }
}

/// A timeout as given: none (or Infinite) is the default, and none is longer
/// than the most.
fn life(timeout: Option<Duration>) -> Duration {
    timeout
        .unwrap_or(DEFAULT_TIMEOUT)
        .clamp(Duration::from_secs(1), MAX_TIMEOUT)
}

impl DavLockSystem for Locks {
    fn lock(
        &self,
        path: &DavPath,
        principal: Option<&str>,
        owner: Option<&Element>,
        timeout: Option<Duration>,
        shared: bool,
        deep: bool,
    ) -> LsFuture<'_, Result<DavLock, DavLock>> {
        let r: Result<DavLock, DavLock> = 'r: {
            let k = key(path);
            let now = SystemTime::now();
            let mut t = self.table();
            let compatible = |l: &DavLock| shared && l.shared;
            if let Some(l) = t.covering(&k, now).find(|l| !compatible(l)) {
                break 'r Err(l.clone());
            }
            if deep && let Some(l) = t.below(&k, now).find(|l| !compatible(l)) {
                break 'r Err(l.clone());
            }
            let life = life(timeout);
            let lock = DavLock {
                token: format!("urn:uuid:{}", uuid::Uuid::new_v4()),
                path: path.clone(),
                principal: principal.map(str::to_string),
                owner: owner.cloned(),
                timeout_at: Some(now + life),
                timeout: Some(life),
                shared,
                deep,
            };
            let (who, c) = (owner_of(&lock), cost(&lock));
            // The root is never locked; past a cap the answer is 423 (the
            // gateway's check before this said why, with 503).
            if k.is_empty() || t.refusal(&who, c).is_some() {
                break 'r Err(lock);
            }
            t.by_path.entry(k).or_default().push(lock.clone());
            t.per_owner.entry(who).or_default().add(c);
            t.all.add(c);
            Ok(lock)
        };
        Box::pin(std::future::ready(r))
    }

    fn unlock(&self, path: &DavPath, token: &str) -> LsFuture<'_, Result<(), ()>> {
        let k = key(path);
        let mut t = self.table();
        let now = SystemTime::now();
        let found = t.covering(&k, now).any(|l| l.token == token);
        if found {
            t.remove_where(|_, l| l.token == token);
        }
        Box::pin(std::future::ready(if found { Ok(()) } else { Err(()) }))
    }

    fn refresh(
        &self,
        path: &DavPath,
        token: &str,
        timeout: Option<Duration>,
    ) -> LsFuture<'_, Result<DavLock, ()>> {
        let k = key(path);
        let now = SystemTime::now();
        let mut t = self.table();
        let mut found = Err(());
        for a in ancestors_and_self(&k) {
            let on_self = a.len() == k.len();
            if let Some(ls) = t.by_path.get_mut(a)
                && let Some(l) = ls
                    .iter_mut()
                    .find(|l| l.token == token && live(l, now) && (on_self || l.deep))
            {
                let life = life(timeout);
                l.timeout = Some(life);
                l.timeout_at = Some(now + life);
                found = Ok(l.clone());
                break;
            }
        }
        Box::pin(std::future::ready(found))
    }

    fn check(
        &self,
        path: &DavPath,
        principal: Option<&str>,
        ignore_principal: bool,
        deep: bool,
        submitted_tokens: Vec<&str>,
    ) -> LsFuture<'_, Result<(), DavLock>> {
        let r: Result<(), DavLock> = 'r: {
            let k = key(path);
            let now = SystemTime::now();
            let t = self.table();
            let mine = |l: &DavLock| holds(l, principal, ignore_principal, &submitted_tokens);
            // On the path: an exclusive lock not held refuses; shared locks
            // refuse unless one of the locks there is held.
            let (mut held, mut shared) = (false, None);
            for l in t.covering(&k, now) {
                if mine(l) {
                    held = true;
                } else if !l.shared {
                    break 'r Err(l.clone());
                } else {
                    shared.get_or_insert(l);
                }
            }
            if !held && let Some(l) = shared {
                break 'r Err(l.clone());
            }
            if deep && let Some(l) = t.below(&k, now).find(|l| !mine(l)) {
                break 'r Err(l.clone());
            }
            Ok(())
        };
        Box::pin(std::future::ready(r))
    }

    fn discover(&self, path: &DavPath) -> LsFuture<'_, Vec<DavLock>> {
        let k = key(path);
        let t = self.table();
        let found = t.covering(&k, SystemTime::now()).cloned().collect();
        Box::pin(std::future::ready(found))
    }

    fn delete(&self, path: &DavPath) -> LsFuture<'_, Result<(), ()>> {
        let k = key(path);
        let mut below = k.clone();
        below.push(b'/');
        self.table()
            .remove_where(|p, _| p == k.as_slice() || p.starts_with(&below));
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> DavPath {
        DavPath::new(s).unwrap()
    }

    async fn lock(
        ls: &Locks,
        path: &str,
        who: &str,
        shared: bool,
        deep: bool,
    ) -> Result<DavLock, DavLock> {
        ls.lock(&p(path), Some(who), None, None, shared, deep).await
    }

    #[tokio::test]
    async fn exclusive_and_shared_locks_conflict_as_rfc_4918_says() {
        let ls = Locks::new();
        let a = lock(&ls, "/d/", "ann", false, true).await.unwrap();
        assert_eq!(a.timeout, Some(DEFAULT_TIMEOUT));
        // Under a deep exclusive lock nothing else is taken, and a write
        // needs its token.
        assert!(lock(&ls, "/d/f", "bob", true, false).await.is_err());
        assert!(
            ls.check(&p("/d/f"), Some("bob"), false, false, vec![])
                .await
                .is_err()
        );
        assert!(
            ls.check(&p("/d/f"), Some("ann"), false, false, vec![&a.token])
                .await
                .is_ok()
        );
        // Another principal with the token is still refused.
        assert!(
            ls.check(&p("/d/f"), Some("bob"), false, false, vec![&a.token])
                .await
                .is_err()
        );
        // A sibling is free; so is a file whose name only starts alike.
        assert!(
            ls.check(&p("/dx"), Some("bob"), false, false, vec![])
                .await
                .is_ok()
        );
        assert!(lock(&ls, "/dx", "bob", false, false).await.is_ok());
        // A deep lock above a held lock conflicts with it.
        assert!(lock(&ls, "/e/f/g", "bob", false, false).await.is_ok());
        assert!(lock(&ls, "/e/", "ann", false, true).await.is_err());
        assert!(lock(&ls, "/e/", "ann", false, false).await.is_ok());
        // Shared with shared is fine; exclusive after shared is not.
        assert!(lock(&ls, "/s", "ann", true, false).await.is_ok());
        assert!(lock(&ls, "/s", "bob", true, false).await.is_ok());
        assert!(lock(&ls, "/s", "cat", false, false).await.is_err());
        assert_eq!(ls.discover(&p("/d/f/g")).await.len(), 1);
        assert!(ls.unlock(&p("/d/f"), &a.token).await.is_ok());
        assert!(ls.unlock(&p("/d/f"), &a.token).await.is_err());
        assert!(lock(&ls, "/d/f", "bob", false, false).await.is_ok());
        ls.delete(&p("/d/")).await.unwrap();
        assert!(
            ls.check(&p("/d/f"), Some("cat"), false, false, vec![])
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn the_root_is_never_locked_and_every_lock_expires() {
        let ls = Locks::new();
        assert!(lock(&ls, "/", "ann", false, true).await.is_err());
        assert_eq!(ls.held(), 0);
        let l = ls
            .lock(
                &p("/f"),
                None,
                None,
                Some(Duration::from_secs(1 << 40)),
                false,
                false,
            )
            .await
            .unwrap();
        assert_eq!(l.timeout, Some(MAX_TIMEOUT));
        let l = ls
            .lock(
                &p("/g"),
                None,
                None,
                Some(Duration::from_secs(1)),
                false,
                false,
            )
            .await
            .unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        // Expired: no longer in the way, no longer refreshable, swept.
        assert!(ls.check(&p("/g"), None, false, false, vec![]).await.is_ok());
        assert!(ls.refresh(&p("/g"), &l.token, None).await.is_err());
        ls.sweep();
        assert_eq!(ls.held(), 1);
    }

    #[tokio::test]
    async fn one_user_holds_at_most_its_share() {
        let ls = Locks::new();
        for i in 0..MAX_PER_OWNER {
            lock(&ls, &format!("/f{i}"), "ann", false, false)
                .await
                .unwrap();
        }
        assert!(ls.refusal(Some("ann")).is_some());
        assert!(lock(&ls, "/more", "ann", false, false).await.is_err());
        assert!(ls.refusal(Some("bob")).is_none());
        assert!(lock(&ls, "/more", "bob", false, false).await.is_ok());
        ls.delete(&p("/f1")).await.unwrap();
        assert!(ls.refusal(Some("ann")).is_none());
    }

    #[tokio::test]
    async fn big_owners_count_by_their_size() {
        let ls = Locks::new();
        let owner = Element {
            name: "owner".into(),
            children: vec![xmltree::XMLNode::Text("o".repeat(8000))],
            ..Element::new("owner")
        };
        let mut taken = 0;
        while ls
            .lock(
                &p(&format!("/f{taken}")),
                Some("ann"),
                Some(&owner),
                None,
                false,
                false,
            )
            .await
            .is_ok()
        {
            taken += 1;
        }
        // 16 MiB of ~8.3 KB locks.
        assert!((1900..2100).contains(&taken), "{taken}");
        assert!(
            ls.refusal(Some("ann"))
                .is_some_and(|w| w.contains("the most one user may"))
        );
        assert!(ls.refusal(Some("bob")).is_none());
    }
}
