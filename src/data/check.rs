//! Whole-volume views: usage (`df`) and consistency checking (`fsck`).

use super::Engine;
use crate::chunk::{self, ChunkRef, ShardId};
use crate::error::Result;
use crate::store::StoreError;
use crate::types::{FileKind, Ino};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub files: u64,
    pub dirs: u64,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    pub inline_bytes: u64,
    pub shards: u64,
    pub data_shards: usize,
    pub parity_shards: usize,
    pub chunk_size: usize,
    pub disk_total: u64,
    pub disk_avail: u64,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct CheckReport {
    /// One line per problem, naming the file where there is one.
    pub problems: Vec<String>,
    pub inodes: u64,
    pub chunks: u64,
    pub shards_checked: u64,
    /// Chunks that had lost shards but kept at least k (all rebuilt with `repair`).
    pub degraded: u64,
    pub repaired: u64,
    /// Chunks with fewer than k intact shards: their data is gone.
    pub lost: u64,
    pub unreferenced_shards: u64,
}

impl Engine {
    /// Sets the metrics' gauges from what the engine keeps (at each scrape;
    /// asks every reachable peer for its figures).
    pub fn refresh_metrics(&self) {
        let m = crate::metrics::get();
        m.dirty_bytes.set(
            self.s
                .dirty_total
                .load(std::sync::atomic::Ordering::Relaxed) as i64,
        );
        let (cache, memtables) = crate::meta::memory_use();
        m.meta_cache_bytes.set(cache as i64);
        m.meta_memtable_bytes.set(memtables as i64);
        m.chunk_cache_bytes
            .set(crate::util::lock(&self.s.cache).bytes() as i64);
        if let Ok(local) = self.s.local() {
            m.meta_cache_entries.set(local.cache_entries() as i64);
        }
        if let Some(peers) = self.s.store.peers() {
            let admitted: Vec<_> = peers.iter().filter(|p| p.admitted).collect();
            let reachable = || admitted.iter().filter(|p| p.reachable);
            m.peers.set(admitted.len() as i64);
            m.peers_reachable.set(reachable().count() as i64);
            m.peer_capacity_bytes
                .set(reachable().map(|p| p.capacity).sum::<u64>() as i64);
            m.peer_used_bytes
                .set(reachable().map(|p| p.bytes).sum::<u64>() as i64);
        }
    }

    pub fn usage(&self) -> Result<Usage> {
        let mut u = Usage {
            data_shards: self.s.codec.data_shards(),
            parity_shards: self.s.codec.parity_shards(),
            chunk_size: self.chunk_size,
            ..Default::default()
        };
        self.s.local()?.for_each_inode(|_, rec| {
            match rec.kind {
                FileKind::Dir => u.dirs += 1,
                _ => {
                    u.files += 1;
                    u.logical_bytes += rec.size;
                }
            }
            Ok(())
        })?;
        self.s.local()?.for_each_chunk(|_, _, c| {
            for part in c.parts() {
                if let ChunkRef::Inline { sealed, .. } = part {
                    u.inline_bytes += sealed.len() as u64;
                }
            }
            Ok(())
        })?;
        self.s.store.for_each(&mut |info| {
            u.shards += 1;
            u.stored_bytes += info.len;
        })?;
        (u.disk_total, u.disk_avail) = self.s.store.capacity()?;
        Ok(u)
    }

    /// Check dentries ⇄ inodes ⇄ chunk maps ⇄ shards (present and intact) ⇄
    /// reference counts. With `repair`, chunks that lost shards but can still be
    /// read are rebuilt to full redundancy.
    pub fn check(&self, repair: bool, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<CheckReport> {
        let mut r = CheckReport::default();
        let mut inodes = HashMap::new();
        self.s.local()?.for_each_inode(|ino, rec| {
            inodes.insert(ino, (rec.kind, rec.nlink, rec.parent, rec.size));
            Ok(())
        })?;
        r.inodes = inodes.len() as u64;

        // Names, for messages: ino → (parent, name).
        let mut names: HashMap<Ino, (Ino, Vec<u8>)> = HashMap::new();
        let mut links: HashMap<Ino, u32> = HashMap::new();
        let mut subdirs: HashMap<Ino, u32> = HashMap::new();
        let mut dentry_problems = Vec::new();
        self.s.local()?.for_each_dentry(|parent, name, d| {
            let child = Ino(d.ino);
            names
                .entry(child)
                .or_insert_with(|| (parent, name.to_vec()));
            *links.entry(child).or_default() += 1;
            match inodes.get(&parent) {
                Some((FileKind::Dir, ..)) => {}
                _ => dentry_problems.push((parent, name.to_vec(), "its directory does not exist")),
            }
            match inodes.get(&child) {
                None => dentry_problems.push((
                    parent,
                    name.to_vec(),
                    "names an inode that does not exist",
                )),
                Some((kind, ..)) if *kind != d.kind => {
                    dentry_problems.push((parent, name.to_vec(), "records the wrong file type"))
                }
                Some((FileKind::Dir, ..)) => *subdirs.entry(parent).or_default() += 1,
                _ => {}
            }
            Ok(())
        })?;
        let path = |ino: Ino| path_of(&names, ino);
        for (parent, name, why) in dentry_problems {
            r.problems.push(format!(
                "{}/{}: {why}",
                path(parent),
                String::from_utf8_lossy(&name)
            ));
        }
        let mut sorted: Vec<_> = inodes.iter().collect();
        sorted.sort_by_key(|(ino, _)| **ino);
        for (&ino, &(kind, nlink, parent, _)) in sorted {
            let found = links.get(&ino).copied().unwrap_or(0);
            if kind == FileKind::Dir {
                let want = 2 + subdirs.get(&ino).copied().unwrap_or(0);
                if ino != Ino::ROOT && found != 1 {
                    r.problems
                        .push(format!("{}: directory has {found} names, not 1", path(ino)));
                }
                if nlink != want {
                    r.problems.push(format!(
                        "{}: link count {nlink}, should be {want}",
                        path(ino)
                    ));
                }
                if ino != Ino::ROOT && names.get(&ino).is_some_and(|(p, _)| p.0 != parent) {
                    r.problems
                        .push(format!("{}: '..' points to the wrong directory", path(ino)));
                }
            } else if found == 0 {
                r.problems
                    .push(format!("inode {ino}: not linked from any directory (lost)"));
            } else if nlink != found {
                r.problems.push(format!(
                    "{}: link count {nlink}, but {found} names",
                    path(ino)
                ));
            }
        }

        // Chunk maps and their shards.
        let mut chunks = Vec::new();
        self.s.local()?.for_each_chunk(|ino, idx, c| {
            chunks.push((ino, idx, c));
            Ok(())
        })?;
        r.chunks = chunks.len() as u64;
        let mut want_refs: HashMap<ShardId, u64> = HashMap::new();
        for (ino, idx, c) in &chunks {
            match inodes.get(ino) {
                None => r.problems.push(format!(
                    "chunk {idx} of inode {ino}: the inode does not exist"
                )),
                Some((kind, _, _, size)) => {
                    if *kind != FileKind::File {
                        r.problems
                            .push(format!("{}: chunk map on a non-file", path(*ino)));
                    } else if idx * self.chunk_size as u64 >= *size {
                        r.problems.push(format!(
                            "{}: chunk {idx} lies past the end of the file",
                            path(*ino)
                        ));
                    }
                }
            }
            for id in c.shard_ids() {
                *want_refs.entry(*id).or_default() += 1;
            }
        }
        // Chunks only snapshots hold are checked too, named by snapshot.
        let mut labelled: Vec<(Option<String>, Ino, u64, ChunkRef)> = chunks
            .into_iter()
            .map(|(ino, idx, c)| (None, ino, idx, c))
            .collect();
        let mut seen: std::collections::HashSet<ShardId> = want_refs.keys().copied().collect();
        for (snap, db) in self.s.local()?.snapshot_dbs()? {
            let name = String::from_utf8_lossy(&snap.name).into_owned();
            db.for_each_chunk(|ino, idx, c| {
                if c.shard_ids().first().is_some_and(|id| seen.insert(*id)) {
                    labelled.push((Some(name.clone()), ino, idx, c));
                }
                Ok(())
            })?;
        }
        // Every peer heard from first: a command that just started reads as
        // soon as a stripe's worth of peers answers, and a shard whose holder
        // is still being connected to must not be judged missing.
        self.s.store.survey()?;
        let done = Mutex::new((Vec::<String>::new(), 0u64, 0u64, 0u64, 0u64, 0u64));
        let total = labelled.len() as u64;
        labelled.par_iter().for_each(|(snap, ino, idx, c)| {
            let mut problems = Vec::new();
            let (mut checked, mut degraded, mut repaired, mut lost) = (0, 0, 0, 0);
            let where_ = || match snap {
                Some(s) => format!("snapshot {s}: inode {ino}: chunk {idx}"),
                None => format!("{}: chunk {idx}", path(*ino)),
            };
            if let ChunkRef::Layered { len, slices, .. } = c
                && (*len as usize > self.chunk_size
                    || slices.iter().any(|s| {
                        s.end() > *len as usize || !matches!(s.chunk, ChunkRef::Inline { .. })
                    }))
            {
                problems.push(format!("{}: a malformed layered chunk", where_()));
                lost += 1;
            }
            // A layered chunk's base and slices are checked as chunks.
            for c in c.parts() {
                match c {
                    ChunkRef::Layered { .. } => {
                        problems.push(format!(
                            "{}: a layered chunk inside a layered chunk",
                            where_()
                        ));
                        lost += 1;
                    }
                    ChunkRef::Inline { .. } => {
                        if let Err(e) = chunk::open_inline(c) {
                            problems.push(format!("{}: {e}", where_()));
                            lost += 1;
                        }
                    }
                    ChunkRef::Sharded { k, .. } | ChunkRef::Segmented { k, .. } => {
                        let mut bad = Vec::new();
                        for id in c.shard_ids() {
                            checked += 1;
                            match self.s.store.get(id) {
                                Ok(_) => {}
                                Err(StoreError::Missing(_)) => {
                                    bad.push(format!("shard {id} missing"))
                                }
                                Err(StoreError::Corrupt(_)) => {
                                    bad.push(format!("shard {id} corrupt"))
                                }
                                Err(e) => bad.push(format!("shard {id}: {e}")),
                            }
                        }
                        let intact = c.shard_ids().len() - bad.len();
                        if intact < *k as usize {
                            lost += 1;
                            problems.push(format!(
                                "{}: only {intact} of {} shards intact, {k} needed: data lost ({})",
                                where_(),
                                c.shard_ids().len(),
                                bad.join(", ")
                            ));
                        } else if !bad.is_empty() {
                            degraded += 1;
                            let healed = repair && self.fetch_sharded(c, true).is_ok();
                            if healed {
                                repaired += 1;
                            } else {
                                problems.push(format!(
                                    "{}: {} of {} shards lost, still readable ({})",
                                    where_(),
                                    bad.len(),
                                    c.shard_ids().len(),
                                    bad.join(", ")
                                ));
                            }
                        }
                    }
                }
            }
            let mut d = crate::util::lock(&done);
            d.0.extend(problems);
            d.1 += checked;
            d.2 += degraded;
            d.3 += repaired;
            d.4 += lost;
            d.5 += 1;
            progress(d.5, total);
        });
        let (problems, checked, degraded, repaired, lost, _) =
            done.into_inner().unwrap_or_else(|p| p.into_inner());
        r.problems.extend(problems);
        r.shards_checked = checked;
        r.degraded = degraded;
        r.repaired = repaired;
        r.lost = lost;

        // Reference counts.
        let refs = self.s.local()?.refs()?;
        for (id, want) in &want_refs {
            let have = refs.get(id).map_or(0, |r| r.count);
            if have != *want {
                r.problems.push(format!(
                    "shard {id}: reference count {have}, but {want} chunk maps use it"
                ));
            }
        }
        for (id, rec) in &refs {
            if rec.count > 0 && !want_refs.contains_key(id) {
                r.problems.push(format!(
                    "shard {id}: reference count {} but no chunk map uses it",
                    rec.count
                ));
            }
        }
        let mut protected = self.protected_ids();
        protected.extend(self.s.local()?.snapshot_pins()?);
        self.s.store.for_each(&mut |info| {
            if !want_refs.contains_key(&info.id) && !protected.contains(&info.id) {
                r.unreferenced_shards += 1;
            }
        })?;
        Ok(r)
    }
}

/// The volume path of `ino`, as far as the names lead (`?ino` where they stop).
fn path_of(names: &HashMap<Ino, (Ino, Vec<u8>)>, ino: Ino) -> String {
    let mut parts = Vec::new();
    let mut cur = ino;
    while cur != Ino::ROOT {
        match names.get(&cur) {
            Some((p, name)) if parts.len() < 4096 => {
                parts.push(String::from_utf8_lossy(name).into_owned());
                cur = *p;
            }
            _ => {
                parts.push(format!("?{cur}"));
                break;
            }
        }
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}
