//! Redundancy over the mesh: how many chunks keep all their shards, and how many
//! peer losses the volume survives right now (`datamesh status`); rebuilding lost
//! shards onto live peers (`datamesh repair`, the mount's repair worker).

use super::{Engine, lock};
use crate::chunk::{self, ChunkRef, ShardId};
use crate::error::Result;
use crate::store::{Holders, PeerNote, Scrubbed, StoreError, Survey};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Redundancy {
    /// Sharded chunks (inline chunks live in the metadata and are not counted).
    pub chunks: u64,
    /// All n shards on reachable peers.
    pub full: u64,
    /// More than k but fewer than n.
    pub reduced: u64,
    /// Exactly k: one more loss and the chunk is gone.
    pub critical: u64,
    /// Fewer than k: unreadable until a peer comes back.
    pub lost: u64,
    /// Fewer than n shards among the peers that answered, while some peer did
    /// not answer: its missing shards may be there.
    #[serde(default)]
    pub unknown: u64,
    /// Storage peers no connection could be made to (their shards are not
    /// counted: they are not available now).
    #[serde(default)]
    pub unreachable: Vec<PeerNote>,
    /// Storage peers that were connected but did not send their inventory.
    #[serde(default)]
    pub silent: Vec<PeerNote>,
    /// Peer losses every chunk survives now; `None` without peers (one host).
    pub survives: Option<usize>,
    /// Shards rebuilt and placed by this pass.
    pub rebuilt: u64,
    /// Shards moved off a peer holding several of their chunk onto one holding
    /// none (peers joined since the chunk was written), and extra copies
    /// dropped (a peer returned after its shards were rebuilt elsewhere).
    pub moved: u64,
    /// Chunks a repair could not fix, with the reason.
    pub failures: Vec<String>,
    /// What the repair moved: shard bytes fetched to rebuild or move
    /// chunks, and shard bytes it placed.
    #[serde(default)]
    pub read_bytes: u64,
    #[serde(default)]
    pub written_bytes: u64,
}

/// The passes over the chunks (surveys, repairs, scrubs) as the dashboard
/// shows them: the last survey's figures, and those running now.
#[derive(Default)]
pub struct Passes {
    last: Mutex<Option<(u64, Redundancy)>>,
    running: Mutex<Vec<(u64, Pass)>>,
    next: AtomicU64,
}

/// A pass running now.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pass {
    /// `survey`, `repair` or `scrub`.
    pub what: String,
    pub done: u64,
    /// 0 while unknown (a scrub counts what the peers hold as it goes).
    pub total: u64,
    /// When it started (unix seconds).
    pub started: u64,
}

/// Repair's bandwidth (`repair_mbps`): one token bucket, in KiB, shared by
/// the pass's threads; they wait here before moving shard bytes.
pub struct RepairLimit {
    bucket: governor::DefaultDirectRateLimiter,
    /// The most taken at once (the bucket's burst), in KiB.
    burst: u32,
}

impl RepairLimit {
    /// A limit of `mbps` MB/s; none for 0.
    pub fn new(mbps: u64) -> Option<RepairLimit> {
        use std::num::NonZeroU32;
        let kib_per_sec = (mbps.saturating_mul(1_000_000) / 1024).min(u32::MAX as u64) as u32;
        let rate = NonZeroU32::new(kib_per_sec)?;
        // A second's worth, and at least a whole shard of a 4 MiB chunk.
        let burst = NonZeroU32::new(kib_per_sec.max(4096)).expect("non-zero");
        Some(RepairLimit {
            bucket: governor::RateLimiter::direct(
                governor::Quota::per_second(rate).allow_burst(burst),
            ),
            burst: burst.get(),
        })
    }

    /// Waits until `bytes` may be moved.
    pub fn take(&self, bytes: u64) {
        use governor::clock::Clock;
        let mut kib = bytes.div_ceil(1024);
        while kib > 0 {
            let n = kib.min(self.burst as u64) as u32;
            let Some(n) = std::num::NonZeroU32::new(n) else {
                return;
            };
            match self.bucket.check_n(n) {
                Ok(Ok(())) => kib -= n.get() as u64,
                Ok(Err(later)) => {
                    std::thread::sleep(later.wait_time_from(self.bucket.clock().now()))
                }
                // Never: n is at most the burst.
                Err(_) => return,
            }
        }
    }
}

impl Pass {
    /// Seconds left at the rate so far, once a chunk is done (`now`: unix
    /// seconds).
    pub fn left_secs(&self, now: u64) -> Option<u64> {
        let secs = now.saturating_sub(self.started).max(1);
        (self.total > 0 && self.done > 0)
            .then(|| self.total.saturating_sub(self.done) * secs / self.done)
    }
}

/// Removes its pass from the running ones when dropped.
struct Running<'a> {
    passes: &'a Passes,
    id: u64,
}

impl Passes {
    fn begin(&self, what: &'static str) -> Running<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let pass = Pass {
            what: what.to_string(),
            done: 0,
            total: 0,
            started: crate::net::trust::now_secs(),
        };
        lock(&self.running).push((id, pass));
        Running { passes: self, id }
    }

    /// The last survey's figures (status, repair, scrub and the repair
    /// worker each make one) and when (unix seconds); for the metrics too.
    fn publish(&self, r: &Redundancy) {
        publish_metrics(r);
        *lock(&self.last) = Some((crate::net::trust::now_secs(), r.clone()));
    }

    /// The last survey and when it ended (unix seconds).
    pub fn last(&self) -> Option<(u64, Redundancy)> {
        lock(&self.last).clone()
    }

    pub fn running(&self) -> Vec<Pass> {
        lock(&self.running).iter().map(|(_, p)| p.clone()).collect()
    }
}

impl Running<'_> {
    fn progress(&self, done: u64, total: u64) {
        if let Some((_, p)) = lock(&self.passes.running)
            .iter_mut()
            .find(|(id, _)| *id == self.id)
        {
            (p.done, p.total) = (done, total);
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        lock(&self.passes.running).retain(|(id, _)| *id != self.id);
    }
}

fn publish_metrics(r: &Redundancy) {
    let m = crate::metrics::get();
    let health = [
        ("full", r.full),
        ("reduced", r.reduced),
        ("critical", r.critical),
        ("unreadable", r.lost),
        ("unknown", r.unknown),
    ];
    for (health, n) in health {
        let label = crate::metrics::HealthLabel { health };
        m.chunks.get_or_create(&label).set(n as i64);
    }
    m.losses_survivable.set(r.survives.map_or(-1, |s| s as i64));
    m.rebuilt_shards.inc_by(r.rebuilt);
    m.last_survey.set(crate::net::trust::now_secs() as i64);
}

/// What rebuilding or spreading one chunk did: shards placed (or dropped),
/// shard bytes fetched and placed.
#[derive(Default)]
struct Moved {
    shards: u64,
    read: u64,
    written: u64,
}

/// How many holders can go, worst case, before fewer than `k` shards are left:
/// each step removes the holder whose loss costs the most shards.
fn losses_survived(held: &[Holders], k: usize) -> usize {
    let mut held = held.to_vec();
    let mut losses = 0usize;
    loop {
        let left = held.iter().filter(|h| !h.is_empty()).count();
        if left < k {
            return losses.saturating_sub(1);
        }
        let all: Holders = held.iter().collect();
        // The holder that is the only one of the most shards.
        let Some(worst) = all.iter().max_by_key(|&t| {
            held.iter()
                .filter(|h| h.len() == 1 && h.contains(t))
                .count()
        }) else {
            return losses;
        };
        for h in &mut held {
            h.remove(worst);
        }
        losses += 1;
    }
}

impl Engine {
    /// Counts chunks by redundancy over a complete survey of the peers; with
    /// `repair`, rebuilds every missing shard of a readable chunk onto live
    /// peers, then counts again over a fresh survey. `progress(done, total)`.
    pub fn redundancy(
        &self,
        repair: bool,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<Redundancy> {
        let pass = self.passes.begin(if repair { "repair" } else { "survey" });
        let r = self.survey_and_repair(repair, &|done, total| {
            pass.progress(done, total);
            progress(done, total)
        })?;
        self.passes.publish(&r);
        Ok(r)
    }

    fn survey_and_repair(
        &self,
        repair: bool,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<Redundancy> {
        let _one_pass = repair.then(|| lock(&self.repairing));
        let survey = self.s.store.survey()?;
        let mut r = self.pass(&survey, repair, progress)?;
        if !repair {
            return Ok(r);
        }
        // A pass leaves alone the chunks whose missing shards may be on a
        // peer that did not answer its survey in time (a busy peer, not a
        // gone one). When a new survey hears from every peer, those chunks
        // are repaired then, instead of reported repaired and left reduced.
        for _ in 0..2 {
            if r.unknown == 0 {
                break;
            }
            let again = self.s.store.survey()?;
            if !again.silent.is_empty() {
                break;
            }
            let more = self.pass(&again, true, progress)?;
            r.rebuilt += more.rebuilt;
            r.moved += more.moved;
            r.read_bytes += more.read_bytes;
            r.written_bytes += more.written_bytes;
            r.failures.extend(more.failures);
            r.unknown = more.unknown;
        }
        if r.failures.is_empty() && r.unknown == 0 {
            self.s.store.repaired();
        }
        // What the repair did is told by the peers, not by its own bookkeeping.
        let after = self.s.store.survey()?;
        Ok(Redundancy {
            rebuilt: r.rebuilt,
            moved: r.moved,
            failures: r.failures,
            read_bytes: r.read_bytes,
            written_bytes: r.written_bytes,
            ..self.pass(&after, false, &|_, _| {})?
        })
    }

    /// One pass over every distinct sharded chunk, counting holders among the
    /// peers that answered `survey`; with `repair`, fixing what is known broken.
    fn pass(
        &self,
        survey: &Survey,
        repair: bool,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<Redundancy> {
        let mut chunks: Vec<ChunkRef> = Vec::new();
        let mut seen = HashSet::new();
        // What repair mends is the sharded part (a layered chunk's base).
        let mut add = |c: ChunkRef| {
            if let Some(c) = c.sharded()
                && let Some(first) = c.shard_ids().first()
                && seen.insert(*first)
            {
                chunks.push(c.clone());
            }
        };
        self.s.local()?.for_each_chunk(|_, _, c| {
            add(c);
            Ok(())
        })?;
        // Snapshots' chunks, and the namespace's copies on the peers, are
        // mended like the live files'.
        for (_, db) in self.s.local()?.snapshot_dbs()? {
            db.for_each_chunk(|_, _, c| {
                add(c);
                Ok(())
            })?;
        }
        lock(&self.s.protected).0.iter().cloned().for_each(add);
        let total = chunks.len() as u64;
        progress(0, total);
        let k = self.s.codec.data_shards();
        let r = Mutex::new(Redundancy {
            chunks: total,
            unreachable: survey.unreachable.clone(),
            silent: survey.silent.clone(),
            ..Default::default()
        });
        // What a rebuild (or a spread) of one chunk did, counted.
        let note = |m: &Moved, spread: bool| {
            let mut r = lock(&r);
            if spread {
                r.moved += m.shards;
            } else {
                r.rebuilt += m.shards;
            }
            r.read_bytes += m.read;
            r.written_bytes += m.written;
        };
        let done = AtomicU64::new(0);
        let survives = AtomicU64::new(u64::MAX);
        let one_host = self.s.store.placement(&[]).is_none();
        let local = self.s.store.local();
        // Holders that were heard from: a peer that connected after the survey
        // has not told what it holds.
        let placement = |ids: &[ShardId]| -> Vec<Holders> {
            match self.s.store.placement(ids) {
                Some(held) => held.iter().map(|h| h & &survey.answered).collect(),
                None => vec![Holders::one(0); ids.len()],
            }
        };
        let incomplete = !survey.silent.is_empty();
        // Its own pool: a pass blocks on the network, and must not hold up
        // read-ahead on rayon's global pool while a mount is serving.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .thread_name(|i| format!("datamesh-repair-{i}"))
            .build()
            .map_err(|e| crate::Error::Io(std::io::Error::other(e)))?;
        pool.install(|| {
            chunks.par_iter().for_each(|c| {
                let ids = c.shard_ids();
                let mut held = placement(ids);
                let present = held.iter().filter(|h| !h.is_empty()).count();
                if incomplete && present < ids.len() {
                    // Its missing shards may be on a peer that did not answer.
                    lock(&r).unknown += 1;
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
                    return;
                }
                // Shards only in this host's store (from before it had peers).
                let stranded = held
                    .iter()
                    .any(|h| !h.is_empty() && (h - &local).is_empty());
                if repair && present >= k && (present < ids.len() || stranded) {
                    match self.rebuild(c, &held, &local) {
                        Ok(m) => {
                            note(&m, false);
                            held = placement(ids);
                        }
                        Err(e) => lock(&r).failures.push(format!("chunk {}: {e}", ids[0])),
                    }
                }
                if repair && present >= k {
                    match self.spread(c, &held, &local) {
                        Ok(m) if m.shards == 0 => {}
                        Ok(m) => {
                            note(&m, true);
                            held = placement(ids);
                        }
                        Err(e) => lock(&r).failures.push(format!("chunk {}: {e}", ids[0])),
                    }
                }
                let present = held.iter().filter(|h| !h.is_empty()).count();
                survives.fetch_min(losses_survived(&held, k) as u64, Ordering::Relaxed);
                {
                    let mut r = lock(&r);
                    match present {
                        p if p == ids.len() => r.full += 1,
                        p if p > k => r.reduced += 1,
                        p if p == k => r.critical += 1,
                        _ => r.lost += 1,
                    }
                }
                progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
            })
        });
        let mut r = r.into_inner().unwrap_or_else(|p| p.into_inner());
        if !one_host {
            let s = survives.into_inner();
            r.survives = Some(if s == u64::MAX {
                self.s.codec.parity_shards()
            } else {
                s as usize
            });
        }
        Ok(r)
    }

    /// The last survey and the passes running now (the dashboard's).
    pub fn passes(&self) -> &Passes {
        &self.passes
    }

    /// The repair worker calls this periodically: a full repair pass when a
    /// storage peer has been gone past the grace time or a write left shards
    /// unplaced. An error is the worker's to report.
    pub fn repair_if_due(&self) -> std::result::Result<(), String> {
        if !self.s.store.wants_repair(self.repair_grace) {
            return Ok(());
        }
        tracing::warn!("repairing: a storage peer is gone or shards are unplaced");
        match self.redundancy(true, &|_, _| {}) {
            Ok(r) => tracing::warn!(
                "repair: rebuilt {} shards; {} chunks full, {} reduced, {} critical, {} unreadable, {} unknown ({} peers did not answer)",
                r.rebuilt,
                r.full,
                r.reduced,
                r.critical,
                r.lost,
                r.unknown,
                r.silent.len()
            ),
            Err(e) => return Err(format!("repair: {e}")),
        }
        Ok(())
    }

    /// Fetches k shards of `c`, rebuilds the rest and places the missing ones
    /// and those held only by this host (`local`) on peers.
    fn rebuild(&self, c: &ChunkRef, held: &[Holders], local: &Holders) -> Result<Moved> {
        let ids = c.shard_ids();
        let k = self.s.codec.data_shards();
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; ids.len()];
        // Shards found missing or bad while fetching: gone from their holder by
        // now (a bad copy is dropped there), so rebuilt and placed too.
        let mut lost = vec![false; ids.len()];
        let mut have = 0;
        let mut moved = Moved::default();
        for (i, id) in ids.iter().enumerate() {
            if have == k {
                break;
            }
            if held[i].is_empty() {
                continue;
            }
            match self.s.store.get(id) {
                Ok(b) => {
                    moved.read += b.len() as u64;
                    self.limit_repair(b.len() as u64);
                    shards[i] = Some(b);
                    have += 1;
                }
                Err(e) => {
                    tracing::warn!("repair: shard {id}: {e}");
                    lost[i] = matches!(e, StoreError::Missing(_) | StoreError::Corrupt(_));
                }
            }
        }
        chunk::open_sharded(c, &self.s.codec, &mut shards, true)?;
        let which: Vec<usize> = (0..ids.len())
            .filter(|&i| (&held[i] - local).is_empty() || lost[i])
            .collect();
        let bytes: Vec<&[u8]> = which
            .iter()
            .map(|&i| shards[i].as_deref().expect("rebuilt"))
            .collect();
        for (&i, b) in which.iter().zip(&bytes) {
            if ShardId::of(b) != ids[i] {
                return Err(crate::Error::Corrupt(format!(
                    "rebuilt shard {} does not match its id",
                    ids[i]
                )));
            }
        }
        let written: u64 = bytes.iter().map(|b| b.len() as u64).sum();
        self.limit_repair(written);
        self.s.store.place(ids, &which, &bytes)?;
        moved.shards = which.len() as u64;
        moved.written = written;
        Ok(moved)
    }

    /// Waits for repair's bandwidth (`repair_mbps`) to allow `bytes`.
    fn limit_repair(&self, bytes: u64) {
        if let Some(l) = &self.repair_limit {
            l.take(bytes);
        }
    }

    /// Drops extra copies of a whole chunk's shards (a peer came back after its
    /// shards were rebuilt elsewhere), keeping each on the holder with the fewest
    /// other shards of the chunk; then moves shards off peers that hold several
    /// onto reachable peers that hold none, while there are such peers.
    fn spread(&self, c: &ChunkRef, held: &[Holders], local: &Holders) -> Result<Moved> {
        let ids = c.shard_ids();
        let mut held = held.to_vec();
        let mut moved = Moved::default();
        if held.iter().all(|h| !(h - local).is_empty()) {
            for i in 0..held.len() {
                let on_peers = &held[i] - local;
                if on_peers.len() < 2 {
                    continue;
                }
                let others = |t: usize| {
                    held.iter()
                        .enumerate()
                        .filter(|&(j, h)| j != i && h.contains(t))
                        .count()
                };
                let keep = on_peers
                    .iter()
                    .min_by_key(|&t| others(t))
                    .map(Holders::one)
                    .expect("two holders");
                self.s.store.release(&ids[i], &(&on_peers - &keep));
                held[i] = &keep | &(&held[i] & local);
                moved.shards += 1;
            }
        }
        let used: Holders = held.iter().collect();
        let free = (&(&self.s.store.holders_up() - &used) - local).len();
        if free == 0 {
            return Ok(moved);
        }
        let mut seen = Holders::new();
        let mut moves = Vec::new();
        for (i, h) in held.iter().enumerate() {
            // A shard whose one holder already holds another shard of the chunk.
            if h.len() == 1 && !(h - local).is_empty() {
                if seen.meets(h) {
                    moves.push(i);
                }
                seen |= h;
            }
        }
        moves.truncate(free);
        for i in moves {
            let bytes = self.s.store.get(&ids[i])?;
            let n = bytes.len() as u64;
            self.limit_repair(2 * n);
            self.s.store.place(ids, &[i], &[&bytes])?;
            self.s.store.release(&ids[i], &held[i]);
            moved.shards += 1;
            moved.read += n;
            moved.written += n;
        }
        Ok(moved)
    }

    /// Asks the holders to re-hash every shard; bad ones are dropped and rebuilt.
    pub fn scrub(&self, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<(Scrubbed, Redundancy)> {
        let pass = self.passes.begin("scrub");
        let scrubbed = self.s.store.scrub(&|n| {
            pass.progress(n, 0);
            progress(n, 0)
        })?;
        drop(pass);
        let bad = &scrubbed.bad;
        if self.s.store.placement(&[]).is_none() && !bad.is_empty() {
            // One host: the bad copies are still in place; reading every chunk
            // that has one rebuilds and rewrites it.
            let bad_set: HashSet<ShardId> = bad.iter().copied().collect();
            let mut hit = Vec::new();
            self.s.local()?.for_each_chunk(|_, _, c| {
                if let Some(c) = c.sharded()
                    && c.shard_ids().iter().any(|id| bad_set.contains(id))
                {
                    hit.push(c.clone());
                }
                Ok(())
            })?;
            for c in hit {
                self.fetch_sharded(&c, true)?;
            }
        }
        let r = self.redundancy(true, progress)?;
        Ok((scrubbed, r))
    }
}

#[cfg(test)]
mod tests {
    use super::{Holders, Passes, Redundancy, losses_survived};

    #[test]
    fn losses_survived_counts_the_worst_case() {
        let on =
            |tags: &[usize]| -> Vec<Holders> { tags.iter().map(|&t| Holders::one(t)).collect() };
        // Six shards on six peers, k = 4: any two may go.
        let spread = on(&[0, 1, 2, 3, 4, 5]);
        assert_eq!(losses_survived(&spread, 4), 2);
        // The same with peer tags past any 64-bit mask.
        assert_eq!(losses_survived(&on(&[70, 900, 64, 63, 4000, 1]), 4), 2);
        // Six shards on three peers, two each: one loss leaves four.
        assert_eq!(losses_survived(&on(&[0, 0, 1, 1, 2, 2]), 4), 1);
        // One peer holds everything: no loss survivable.
        assert_eq!(losses_survived(&on(&[0; 6]), 4), 0);
        // Two shards gone already on a six-peer spread.
        let mut degraded = spread.clone();
        degraded[0] = Holders::new();
        degraded[1] = Holders::new();
        assert_eq!(losses_survived(&degraded, 4), 0);
        // Fewer than k present: nothing survives.
        let mut few = on(&[0, 1]);
        few.resize(6, Holders::new());
        assert_eq!(losses_survived(&few, 4), 0);
        // A shard with two holders survives either's loss.
        let mut doubled = on(&[0, 1, 2, 3, 4, 5]);
        doubled[0].insert(1);
        doubled[2].insert(1);
        assert_eq!(losses_survived(&doubled, 4), 2);
    }

    #[test]
    fn running_passes_show_their_progress_and_go_when_done() {
        let p = Passes::default();
        let repair = p.begin("repair");
        let survey = p.begin("survey");
        repair.progress(3, 10);
        let now = p.running();
        assert_eq!(now.len(), 2);
        assert_eq!(
            (now[0].what.as_str(), now[0].done, now[0].total),
            ("repair", 3, 10)
        );
        drop(repair);
        assert_eq!(p.running().len(), 1);
        assert_eq!(p.running()[0].what, "survey");
        drop(survey);
        assert!(p.running().is_empty());
        assert!(p.last().is_none());
        p.publish(&Redundancy {
            chunks: 5,
            full: 5,
            ..Default::default()
        });
        assert_eq!(p.last().unwrap().1.full, 5);
    }
}
