//! Putting a chunk's shards on peers: placement of each shard, stragglers
//! resent, full peers passed over.

use super::*;

impl MeshStore {
    /// Stores shards `which` of the chunk `ids` again (repair), then checks
    /// with `Has` that each peer that acknowledged one holds it: a peer that
    /// lied is distrusted and the shard placed again (twice at most).
    pub(super) fn place_shards(
        &self,
        ids: &[ShardId],
        which: &[usize],
        bytes: &[&[u8]],
    ) -> Result<(), StoreError> {
        let (mut which, mut bytes) = (which.to_vec(), bytes.to_vec());
        for _ in 0..3 {
            let placed = self.place_once(ids, &which, &bytes)?;
            let mut again = Vec::new();
            for (j, &i) in which.iter().enumerate() {
                let peers = self.client.live_in(&placed[j]);
                let id = ids[i];
                for (tag, peer, r) in self.ask_all(&peers, || Request::Has { ids: vec![id] }) {
                    if let Ok(Response::Have(v)) = r
                        && v.first() != Some(&true)
                    {
                        tracing::error!(
                            "peer {peer} acknowledged shard {id} but does not hold it: \
                             it gets no shards for an hour"
                        );
                        self.forget(&id, tag);
                        lock(&self.distrusted).insert(tag, Instant::now());
                        if !again.contains(&j) {
                            again.push(j);
                        }
                    }
                }
            }
            if again.is_empty() {
                return Ok(());
            }
            which = again.iter().map(|&j| which[j]).collect();
            bytes = again.iter().map(|&j| bytes[j]).collect();
        }
        Err(StoreError::Peer(format!(
            "shard {} could not be placed on a peer that keeps it",
            ids[which[0]]
        )))
    }

    /// One placement round; returns, per shard, the peers that acknowledged it.
    fn place_once(
        &self,
        ids: &[ShardId],
        which: &[usize],
        bytes: &[&[u8]],
    ) -> Result<Vec<Holders>, StoreError> {
        let Some(key) = ids.first() else {
            return Ok(vec![Holders::new(); which.len()]);
        };
        let ranked = self.ranked(key);
        if ranked.is_empty() {
            return Err(Self::no_peers());
        }
        let live: Holders = ranked.iter().map(|(t, _)| *t).collect();
        let mut job = PutJob::new(
            which.iter().map(|&i| ids[i]).collect(),
            bytes
                .iter()
                .map(|b| bytes::Bytes::copy_from_slice(b))
                .collect(),
            ranked,
        );
        // Count what the chunk's other shards already put on each peer, and never
        // send a shard back to a peer that holds (or held a bad copy of) it.
        for held in self.placement(ids).unwrap_or_default() {
            for tag in held.iter() {
                *job.load.entry(tag).or_default() += 1;
            }
        }
        for (j, &i) in which.iter().enumerate() {
            job.tried[j] = &self.holders(&ids[i]) & &live;
        }
        let (tx, rx) = smpsc::channel();
        for j in 0..which.len() {
            if !self.send_put(&mut job, j, &tx) {
                // Every live peer has it already (or refused): put it anywhere.
                job.tried[j] = Holders::new();
                self.send_put(&mut job, j, &tx);
            }
        }
        self.drive(&mut job, &rx, &tx, which.len());
        if job.stored < which.len() {
            if job.full > 0 {
                return Err(StoreError::Full(PathBuf::from("the storage peers")));
            }
            return Err(StoreError::Peer(format!(
                "placed {} of {} shards: {}",
                job.stored,
                which.len(),
                job.last_error
            )));
        }
        // Shards moved off this host are now on peers: the local copies go.
        if let Some(l) = &self.local {
            for &i in which {
                if l.contains(&ids[i]) {
                    l.delete(&ids[i])?;
                    self.forget(&ids[i], Holders::LOCAL);
                }
            }
        }
        Ok(job.stored_on)
    }
    pub(super) fn put_shards(
        &self,
        shards: Vec<(ShardId, bytes::Bytes)>,
        need: usize,
    ) -> Result<(), StoreError> {
        let Some((key, _)) = shards.first() else {
            return Ok(());
        };
        let ranked = self.ranked(key);
        if ranked.is_empty() {
            return Err(Self::no_peers());
        }
        let n = shards.len();
        let (ids, bytes) = shards.into_iter().unzip();
        let mut job = PutJob::new(ids, bytes, ranked);
        let (tx, rx) = smpsc::channel();
        // Shard i starts on the i-th ranked peer (wrapping when there are fewer).
        for i in 0..n {
            let (tag, peer) = job.ranked[i % job.ranked.len()];
            self.send_put_to(&mut job, i, tag, peer, &tx);
        }
        let need = need.min(n);
        self.drive(&mut job, &rx, &tx, need);
        if job.stored < need {
            if job.full > 0 {
                return Err(StoreError::Full(PathBuf::from("the storage peers")));
            }
            let why = if job.last_error.is_empty() {
                "no answer in time"
            } else {
                &job.last_error
            };
            return Err(StoreError::Peer(format!(
                "only {} of {} shards stored: {why}",
                job.stored, n
            )));
        }
        if job.stored < n {
            // The rest land in the background; sync waits for them.
            let Some(this) = self.me.upgrade() else {
                return Ok(());
            };
            // Bounded: a slow peer makes writers wait here rather than pile up
            // chunks of unsent shards in memory.
            let (m, cv) = &self.inflight;
            let mut busy = lock(m);
            while *busy >= MAX_BACKGROUND_PUTS {
                busy = cv.wait(busy).unwrap_or_else(|p| p.into_inner());
            }
            *busy += 1;
            drop(busy);
            std::thread::Builder::new()
                .name("datamesh-put".into())
                .spawn(move || {
                    this.drive(&mut job, &rx, &tx, n);
                    if job.stored < n {
                        tracing::warn!(
                            "{} of {n} shards of a chunk stored; the rest are left to repair",
                            job.stored
                        );
                        this.unplaced.store(true, Ordering::Relaxed);
                    }
                    let (m, cv) = &this.inflight;
                    *lock(m) -= 1;
                    cv.notify_all();
                })
                .map_err(|e| StoreError::Peer(format!("starting a put thread: {e}")))?;
        }
        Ok(())
    }

    /// Starts putting shard `i` to the best candidate not tried yet for it
    /// (a peer holding no shard of this chunk, else the least used one); false
    /// when every live peer has been tried.
    pub(super) fn send_put(&self, job: &mut PutJob, i: usize, tx: &PutTx) -> bool {
        let pick = job
            .ranked
            .iter()
            .filter(|(tag, _)| !job.tried[i].contains(*tag))
            .min_by_key(|(tag, _)| job.load.get(tag).copied().unwrap_or(0))
            .copied();
        match pick {
            Some((tag, peer)) => {
                self.send_put_to(job, i, tag, peer, tx);
                true
            }
            None => false,
        }
    }

    pub(super) fn send_put_to(
        &self,
        job: &mut PutJob,
        i: usize,
        tag: usize,
        peer: PeerId,
        tx: &PutTx,
    ) {
        job.tried[i].insert(tag);
        job.pending[i].insert(tag);
        *job.load.entry(tag).or_default() += 1;
        job.outstanding += 1;
        let tx = tx.clone();
        self.client.request(
            peer,
            Request::Put {
                id: job.ids[i],
                data: job.bytes[i].clone(),
            },
            Box::new(move |r| {
                let _ = tx.send((i, tag, r));
            }),
        );
    }

    /// Takes answers until `until` shards are stored or nothing is pending. A
    /// shard unanswered for `straggler_wait` is sent to another peer as well,
    /// and the slow peer is passed over for a while: a stalled peer costs a
    /// write seconds, not the request timeout.
    pub(super) fn drive(&self, job: &mut PutJob, rx: &PutRx, tx: &PutTx, until: usize) {
        let start = Instant::now();
        while job.stored < until && job.outstanding > 0 {
            match rx.recv_timeout(self.t.straggler_wait) {
                Ok(answer) => self.take_answer(job, answer, tx),
                Err(smpsc::RecvTimeoutError::Timeout) if start.elapsed() < self.t.answer_wait => {
                    for i in 0..job.ids.len() {
                        if job.done[i] || job.pending[i].is_empty() {
                            continue;
                        }
                        {
                            let mut avoid = lock(&self.avoid);
                            for tag in job.pending[i].iter() {
                                avoid.insert(tag, Instant::now());
                            }
                        }
                        if self.send_put(job, i, tx) {
                            tracing::info!(
                                "shard {} is slow to store: sent to another peer too",
                                job.ids[i]
                            );
                        }
                    }
                }
                Err(_) => break,
            }
        }
    }

    pub(super) fn take_answer(&self, job: &mut PutJob, (i, tag, res): PutAnswer, tx: &PutTx) {
        job.outstanding -= 1;
        job.pending[i].remove(tag);
        match res {
            Ok(Response::Done) => {
                if !job.done[i] {
                    job.done[i] = true;
                    job.stored += 1;
                    // Never sent again: its bytes need not outlive the answer.
                    job.bytes[i] = bytes::Bytes::new();
                }
                job.stored_on[i].insert(tag);
                self.record(job.ids[i], tag);
                lock(&self.written).insert(tag);
            }
            _ if job.done[i] => {}
            other => {
                *job.load.entry(tag).or_default() -= 1;
                let why = match other {
                    Ok(Response::Full) => {
                        job.full += 1;
                        lock(&self.avoid).insert(tag, Instant::now());
                        "it is full".to_string()
                    }
                    Ok(r) => r.to_string(),
                    Err(e) => e,
                };
                tracing::info!(
                    "shard {} not stored on peer {tag}: {why}; placing it elsewhere",
                    job.ids[i]
                );
                if job.pending[i].is_empty() && !self.send_put(job, i, tx) {
                    job.failed += 1;
                    job.last_error = why;
                }
            }
        }
    }
}

impl PutJob {
    pub(super) fn new(
        ids: Vec<ShardId>,
        bytes: Vec<bytes::Bytes>,
        ranked: Vec<(usize, PeerId)>,
    ) -> PutJob {
        PutJob {
            tried: vec![Holders::new(); ids.len()],
            pending: vec![Holders::new(); ids.len()],
            done: vec![false; ids.len()],
            stored_on: vec![Holders::new(); ids.len()],
            ids,
            bytes,
            ranked,
            load: HashMap::new(),
            outstanding: 0,
            stored: 0,
            failed: 0,
            full: 0,
            last_error: String::new(),
        }
    }
}
