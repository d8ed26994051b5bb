//! [`MeshStore`]: where shards are, fetching and asking peers, and the
//! [`ShardStore`] implementation.

use super::*;

impl MeshStore {
    /// The handle on the swarm this store uses.
    pub fn client(&self) -> &MeshClient {
        &self.client
    }

    pub fn new(client: MeshClient, local: Option<LocalStore>) -> Arc<MeshStore> {
        MeshStore::with_timings(client, local, Timings::default())
    }

    pub fn with_timings(
        client: MeshClient,
        local: Option<LocalStore>,
        t: Timings,
    ) -> Arc<MeshStore> {
        Arc::new_cyclic(|me| MeshStore {
            t,
            client,
            loc: Mutex::new(HolderIndex::new()),
            touched: Mutex::new(None),
            avoid: Mutex::new(HashMap::new()),
            inflight: (Mutex::new(0), Condvar::new()),
            written: Mutex::new(Holders::new()),
            syncs: crate::util::SyncGroup::default(),
            unplaced: AtomicBool::new(false),
            fetch_us: AtomicU64::new(20_000),
            repaired: Mutex::new(Holders::new()),
            surveying: Mutex::new(()),
            survey_ticket: AtomicU64::new(0),
            last_survey: Mutex::new(None),
            distrusted: Mutex::new(HashMap::new()),
            me: me.clone(),
            local,
        })
    }

    /// Waits for the puts still landing, then asks every peer that took puts
    /// since the last sync to sync.
    fn sync_peers(&self) -> Result<(), StoreError> {
        let (m, cv) = &self.inflight;
        let mut n = lock(m);
        while *n > 0 {
            n = cv.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        drop(n);
        let written = std::mem::take(&mut *lock(&self.written));
        let targets = self.client.live_in(&written);
        if targets.len() < written.len() {
            // Some took puts and are gone: what they took may not be on
            // their disks, so the next repair pass counts what is missing.
            self.unplaced.store(true, Ordering::Relaxed);
        }
        for (_, peer, r) in self.ask_all(&targets, || Request::Sync) {
            match r {
                Ok(Response::Done) => {}
                Ok(other) => {
                    // The next sync asks them all again.
                    let mut w = lock(&self.written);
                    for t in written.iter() {
                        w.insert(t);
                    }
                    return Err(StoreError::Peer(format!("sync on peer {peer}: {other}")));
                }
                // Gone before it answered, as one gone before the sync was
                // asked: what it took may not be on its disk, so the next
                // repair pass counts (and rebuilds) what is missing; the
                // chunks' shards on the other peers are synced.
                Err(e) => {
                    tracing::warn!(
                        "sync: storage peer {peer} went away before it synced ({e}); \
                         a repair pass checks the shards it took"
                    );
                    self.unplaced.store(true, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    /// Live peers ordered by weighted rendezvous score for `key` (weights:
    /// their capacities).
    /// Peers that were full or too slow within `avoid_for` are left out while
    /// there are others, so each chunk does not pay for them again.
    pub(super) fn ranked(&self, key: &ShardId) -> Vec<(usize, PeerId)> {
        let live = self.client.live();
        let weights = self.client.weights();
        let mut scored: Vec<(f64, (usize, PeerId))> = live
            .into_iter()
            .map(|(t, p)| (weighted_score(key, &p, weights(t)), (t, p)))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let live: Vec<(usize, PeerId)> = scored.into_iter().map(|(_, p)| p).collect();
        // Peers caught lying are left out first, then the full or slow ones.
        let live = pass_over(live, &lock(&self.distrusted), DISTRUST_FOR);
        pass_over(live, &lock(&self.avoid), self.t.avoid_for)
    }

    /// Storage peers unreachable for longer than `grace`.
    pub(super) fn gone(&self, grace: Duration) -> Holders {
        lock(&self.client.shared.peers)
            .list
            .iter()
            .enumerate()
            .filter(|(_, p)| p.usable() && p.down_since.is_some_and(|t| t.elapsed() >= grace))
            .map(|(t, _)| t)
            .collect()
    }

    pub(super) fn holders(&self, id: &ShardId) -> Holders {
        lock(&self.loc).get(id)
    }

    pub(super) fn record(&self, id: ShardId, tag: usize) {
        if let Some(t) = lock(&self.touched).as_mut() {
            t.insert(holder_key(&id));
        }
        lock(&self.loc).add(&id, tag);
    }

    pub(super) fn forget(&self, id: &ShardId, tag: usize) {
        lock(&self.loc).remove(id, tag);
    }

    pub(super) fn no_peers() -> StoreError {
        StoreError::Peer(
            "no storage peer is reachable (start some with `datamesh node`, see `datamesh status`)"
                .into(),
        )
    }

    /// Fetches a shard from `peer`, checking what comes back against its id.
    pub(super) fn fetch_from(
        &self,
        tag: usize,
        peer: PeerId,
        id: &ShardId,
    ) -> Result<Vec<u8>, StoreError> {
        let start = Instant::now();
        match self.client.ask(peer, Request::Get { id: *id }) {
            Ok(Response::Data(b)) if ShardId::of(&b) == *id => {
                let us = start.elapsed().as_micros() as u64;
                let old = self.fetch_us.load(Ordering::Relaxed);
                self.fetch_us.store((old * 7 + us) / 8, Ordering::Relaxed);
                Ok(b)
            }
            Ok(Response::Data(_)) => {
                tracing::error!(
                    "peer {peer} sent bytes that do not match shard {id} (damaged on its disk, in transit or on purpose): ignored, fetching it elsewhere"
                );
                // The bad copy goes (the peer is told to drop it, without waiting
                // for its answer) and the rebuilt one is placed afresh, on
                // another peer: this one is passed over for a while (a put there
                // could also race the delete).
                self.client
                    .request(peer, Request::Delete { ids: vec![*id] }, Box::new(drop));
                self.forget(id, tag);
                lock(&self.avoid).insert(tag, Instant::now());
                Err(StoreError::Corrupt(*id))
            }
            Ok(Response::Missing) => {
                self.forget(id, tag);
                Err(StoreError::Missing(*id))
            }
            Ok(Response::Corrupt) => {
                tracing::warn!("peer {peer} holds a damaged copy of shard {id}");
                self.forget(id, tag);
                Err(StoreError::Corrupt(*id))
            }
            Ok(other) => Err(StoreError::Peer(format!(
                "peer {peer}: unexpected answer: {other}"
            ))),
            Err(e) => Err(StoreError::Peer(e)),
        }
    }

    /// Asks every live peer not in `skip` whether it has `id`; records the holders.
    pub(super) fn find(&self, id: &ShardId, skip: &Holders) -> Holders {
        let mut peers = self.client.live();
        peers.retain(|(t, _)| !skip.contains(*t));
        let mut found = Holders::new();
        for (tag, _, r) in self.ask_all(&peers, || Request::Has { ids: vec![*id] }) {
            if let Ok(Response::Have(v)) = r
                && v.first() == Some(&true)
            {
                self.record(*id, tag);
                found.insert(tag);
            }
        }
        found
    }

    /// Sends one request to each of `peers` at once and collects the answers.
    pub(super) fn ask_all(
        &self,
        peers: &[(usize, PeerId)],
        req: impl Fn() -> Request,
    ) -> Vec<(usize, PeerId, Result<Response, String>)> {
        let (tx, rx) = smpsc::channel();
        for &(tag, peer) in peers {
            let tx = tx.clone();
            self.client.request(
                peer,
                req(),
                Box::new(move |r| {
                    let _ = tx.send((tag, peer, r));
                }),
            );
        }
        drop(tx);
        let mut out: Vec<(usize, PeerId, Result<Response, String>)> = Vec::new();
        while out.len() < peers.len() {
            match rx.recv_timeout(self.t.answer_wait) {
                Ok(r) => out.push(r),
                Err(_) => break,
            }
        }
        // Whoever has not answered by now is reported as such.
        for &(tag, peer) in peers {
            if !out.iter().any(|(t, _, _)| *t == tag) {
                out.push((tag, peer, Err(format!("peer {peer}: no answer"))));
            }
        }
        out
    }

    /// Every shard a live peer holds, page by page.
    pub(super) fn inventory(
        &self,
        tag: usize,
        peer: PeerId,
        f: &mut dyn FnMut(ShardInfo),
    ) -> Result<(), StoreError> {
        let mut after = None;
        loop {
            match self.client.ask(
                peer,
                Request::List {
                    after,
                    max: MAX_IDS as u32,
                },
            ) {
                Ok(Response::List { shards, more }) => {
                    let ordered = shards.windows(2).all(|w| w[0].0 < w[1].0)
                        && after.is_none_or(|a| shards.first().is_none_or(|s| s.0 > a));
                    if !ordered || shards.len() > MAX_IDS || (more && shards.is_empty()) {
                        return Err(StoreError::Peer(format!(
                            "peer {peer} sent an inventory page out of order: cut off"
                        )));
                    }
                    after = shards.last().map(|s| s.0);
                    let mut loc = lock(&self.loc);
                    for (id, len, mtime) in shards {
                        loc.add(&id, tag);
                        f(ShardInfo {
                            id,
                            len,
                            modified: SystemTime::UNIX_EPOCH
                                + Duration::from_secs(mtime.max(0) as u64),
                        });
                    }
                    if !more {
                        return Ok(());
                    }
                }
                Ok(other) => {
                    return Err(StoreError::Peer(format!(
                        "peer {peer}: unexpected answer: {other}"
                    )));
                }
                Err(e) => return Err(StoreError::Peer(e)),
            }
        }
    }
}

impl ShardStore for MeshStore {
    fn put(&self, id: &ShardId, bytes: &[u8]) -> Result<(), StoreError> {
        self.put_chunk(vec![(*id, bytes::Bytes::copy_from_slice(bytes))], 1)
    }

    fn replace(&self, id: &ShardId, bytes: &[u8]) -> Result<(), StoreError> {
        // A holder with a damaged copy would keep it (puts of a shard it has are
        // no-ops): store it on another peer.
        self.place(&[*id], &[0], &[bytes])
    }

    fn get(&self, id: &ShardId) -> Result<Vec<u8>, StoreError> {
        let live: HashMap<usize, PeerId> = self.client.live().into_iter().collect();
        if live.is_empty() {
            return match self.local.as_ref().map(|l| l.get(id)) {
                Some(Ok(b)) => Ok(b),
                _ => Err(Self::no_peers()),
            };
        }
        let mut tried = Holders::new();
        let mut last = StoreError::Missing(*id);
        let known = self.holders(id);
        for round in 0..2 {
            let holders = if round == 0 {
                known.clone()
            } else {
                self.find(id, &tried)
            };
            for (&tag, &peer) in &live {
                if !holders.contains(tag) || !tried.insert(tag) {
                    continue;
                }
                match self.fetch_from(tag, peer, id) {
                    Ok(b) => return Ok(b),
                    Err(e) => last = e,
                }
            }
        }
        // A holder still being connected to (a command that just started
        // reads once a stripe's worth of peers answers, and a large mesh
        // has more): asked too, the request waiting for the connection,
        // rather than the shard counted missing.
        for (tag, p) in self.client.storage_peers() {
            if p.connected || p.dial_failed || !known.contains(tag) || !tried.insert(tag) {
                continue;
            }
            match self.fetch_from(tag, p.id, id) {
                Ok(b) => return Ok(b),
                Err(e) => last = e,
            }
        }
        if let Some(b) = self.local.as_ref().and_then(|l| l.get(id).ok()) {
            return Ok(b);
        }
        // Not lost while a peer that may hold it is only unreachable.
        let down = self.client.down();
        if matches!(last, StoreError::Missing(_)) && down > 0 {
            return Err(StoreError::Peer(format!(
                "shard {id} is on no reachable peer ({down} storage peers unreachable)"
            )));
        }
        Err(last)
    }

    /// One holder asked for the range (or this node's own copy read); on any
    /// failure, the whole shard, fetched and verified as `get` does.
    fn get_range(&self, id: &ShardId, offset: usize, len: usize) -> Result<Vec<u8>, StoreError> {
        if let Some(l) = &self.local
            && l.contains(id)
            && let Ok(b) = l.get_range(id, offset, len)
        {
            return Ok(b);
        }
        let holders = self.holders(id);
        let peer = self
            .client
            .live()
            .into_iter()
            .find(|(tag, _)| holders.contains(*tag));
        if let Some((_, peer)) = peer {
            let req = Request::GetRange {
                id: *id,
                offset: offset as u64,
                len: len as u32,
            };
            match self.client.ask(peer, req) {
                Ok(Response::Data(b)) if b.len() <= len => return Ok(b),
                other => tracing::debug!(
                    "peer {peer}: no range of shard {id} ({}): fetching it whole",
                    match other {
                        Ok(r) => r.to_string(),
                        Err(e) => e,
                    }
                ),
            }
        }
        let whole = self.get(id)?;
        let from = offset.min(whole.len());
        Ok(whole[from..(from + len).min(whole.len())].to_vec())
    }

    fn delete(&self, id: &ShardId) -> Result<(), StoreError> {
        let holders = self.holders(id);
        let targets = if holders.is_empty() {
            self.client.live()
        } else {
            self.client.live_in(&holders)
        };
        if let Some(l) = &self.local {
            l.delete(id)?;
        }
        for (tag, peer, r) in self.ask_all(&targets, || Request::Delete { ids: vec![*id] }) {
            match r {
                Ok(Response::Done) => self.forget(id, tag),
                Ok(other) => tracing::warn!("delete {id} on {peer}: {other}"),
                Err(e) => tracing::warn!("delete {id}: {e}"),
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        // Grouped: a sync that took the peers' names away from a concurrent
        // caller must have finished before that caller returns.
        self.syncs.sync(|| self.sync_peers())
    }

    fn for_each(&self, f: &mut dyn FnMut(ShardInfo)) -> Result<(), StoreError> {
        let mut seen = std::collections::HashSet::new();
        if let Some(l) = &self.local {
            l.for_each(&mut |info| {
                if seen.insert(info.id) {
                    f(info)
                }
            })?;
        }
        for (tag, peer) in self.client.live() {
            self.inventory(tag, peer, &mut |info| {
                if seen.insert(info.id) {
                    f(info)
                }
            })?;
        }
        Ok(())
    }

    fn capacity(&self) -> Result<(u64, u64), StoreError> {
        let (mut total, mut avail) = (0, 0);
        for (_, _, r) in self.ask_all(&self.client.live(), || Request::Stat) {
            if let Ok(Response::Stat { used, capacity, .. }) = r {
                total += capacity;
                avail += capacity.saturating_sub(used);
            }
        }
        Ok((total, avail))
    }

    fn remote(&self) -> bool {
        true
    }

    fn holders_of(&self, ids: &[ShardId]) -> Vec<Vec<String>> {
        let loc = lock(&self.loc);
        let t = lock(&self.client.shared.peers);
        ids.iter()
            .map(|id| {
                let holders = loc.get(id);
                t.list
                    .iter()
                    .enumerate()
                    .filter(|(tag, _)| holders.contains(*tag))
                    .map(|(_, p)| p.id.to_string())
                    .collect()
            })
            .collect()
    }

    fn learn(&self, id: &ShardId, peers: &[String]) {
        let tags: Vec<usize> = {
            let t = lock(&self.client.shared.peers);
            peers
                .iter()
                .filter_map(|p| p.parse::<PeerId>().ok())
                .filter_map(|p| t.by_id.get(&p).copied())
                .collect()
        };
        for tag in tags {
            self.record(*id, tag);
        }
    }

    fn holders_up(&self) -> Holders {
        self.client.live_set()
    }

    fn release(&self, id: &ShardId, holders: &Holders) {
        let targets = self.client.live_in(holders);
        for (tag, peer, r) in self.ask_all(&targets, || Request::Delete { ids: vec![*id] }) {
            match r {
                Ok(Response::Done) => self.forget(id, tag),
                Ok(other) => tracing::warn!("dropping the moved copy of {id} on {peer}: {other}"),
                Err(e) => tracing::warn!("dropping the moved copy of {id}: {e}"),
            }
        }
    }

    fn local(&self) -> Holders {
        if self.local.is_some() {
            Holders::one(Holders::LOCAL)
        } else {
            Holders::new()
        }
    }

    fn hedge_after(&self) -> Option<Duration> {
        // Three times a typical fetch: a peer that slow is probably stalled.
        let us = self
            .fetch_us
            .load(Ordering::Relaxed)
            .clamp(10_000, 2_000_000);
        Some(Duration::from_micros(us * 3))
    }

    fn survey(&self) -> Result<Survey, StoreError> {
        let asked = self.survey_ticket.fetch_add(1, Ordering::SeqCst);
        let _one = lock(&self.surveying);
        // A run that started after this call asked is as fresh as one of its own.
        if let Some((ticket, s)) = &*lock(&self.last_survey)
            && *ticket > asked
        {
            return Ok(s.clone());
        }
        let ticket = self.survey_ticket.fetch_add(1, Ordering::SeqCst);
        let s = self.run_survey()?;
        *lock(&self.last_survey) = Some((ticket, s.clone()));
        Ok(s)
    }

    fn placement(&self, ids: &[ShardId]) -> Option<Vec<Holders>> {
        let live = &self.client.live_set() | &self.local();
        let loc = lock(&self.loc);
        Some(ids.iter().map(|id| &loc.get(id) & &live).collect())
    }

    fn place(&self, ids: &[ShardId], which: &[usize], bytes: &[&[u8]]) -> Result<(), StoreError> {
        self.place_shards(ids, which, bytes)
    }

    fn peers(&self) -> Option<Vec<PeerStatus>> {
        let table: Vec<PeerEntry> = lock(&self.client.shared.peers).list.clone();
        let live = self.client.live();
        let mut stats: HashMap<usize, (u64, u64, u64)> = HashMap::new();
        for (tag, _, r) in self.ask_all(&live, || Request::Stat) {
            if let Ok(Response::Stat {
                shards,
                used,
                capacity,
            }) = r
            {
                stats.insert(tag, (shards, used, capacity));
            }
        }
        // Placement's weights follow what the peers say now.
        {
            let mut t = lock(&self.client.shared.peers);
            for (&tag, &(_, _, capacity)) in &stats {
                if let Some(e) = t.list.get_mut(tag) {
                    e.capacity = capacity;
                }
            }
        }
        Some(
            table
                .iter()
                .enumerate()
                .filter(|(_, p)| p.storage)
                .map(|(tag, p)| {
                    let (shards, bytes, capacity) = stats.get(&tag).copied().unwrap_or_default();
                    PeerStatus {
                        tag: tag as u32,
                        id: p.id.to_string(),
                        address: p.addrs.first().map(|a| a.to_string()).unwrap_or_default(),
                        reachable: stats.contains_key(&tag),
                        shards,
                        bytes,
                        capacity,
                        admitted: p.admitted,
                    }
                })
                .collect(),
        )
    }

    fn wants_repair(&self, grace: Duration) -> bool {
        if self.unplaced.load(Ordering::Relaxed) {
            return true;
        }
        let gone = self.gone(grace);
        !(&gone - &lock(&self.repaired)).is_empty()
    }

    fn repaired(&self) {
        self.unplaced.store(false, Ordering::Relaxed);
        // Peers gone now were repaired around; one that returns and goes again
        // counts anew.
        *lock(&self.repaired) = self.gone(Duration::ZERO);
    }

    fn scrub(&self, progress: &dyn Fn(u64)) -> Result<Scrubbed, StoreError> {
        self.verify_peers(progress)
    }

    fn put_chunk(
        &self,
        shards: Vec<(ShardId, bytes::Bytes)>,
        need: usize,
    ) -> Result<(), StoreError> {
        self.put_shards(shards, need)
    }
}

/// `peers` without those marked in `marks` within the last `for_`, unless that
/// leaves none.
fn pass_over(
    peers: Vec<(usize, PeerId)>,
    marks: &HashMap<usize, Instant>,
    for_: Duration,
) -> Vec<(usize, PeerId)> {
    let kept: Vec<_> = peers
        .iter()
        .filter(|(t, _)| marks.get(t).is_none_or(|at| at.elapsed() > for_))
        .copied()
        .collect();
    if kept.is_empty() { peers } else { kept }
}
