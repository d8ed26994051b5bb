//! [`MeshClient`]: the cloneable handle on the swarm actor.

use super::*;

impl MeshClient {
    /// Starts the swarm and dials `bootstrap` (addresses ending in `/p2p/ID` are
    /// remembered as peers at once). `remember`: a file that keeps the storage
    /// peers' addresses for later runs.
    pub fn start(
        identity: libp2p::identity::Keypair,
        keys: &LiveKeys,
        bootstrap: Vec<Multiaddr>,
        remember: Option<PathBuf>,
        admission: Option<Admission>,
    ) -> Result<MeshClient, NetError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            // Each connection's Noise and Yamux work runs as its own task: one
            // worker per core lets them run side by side.
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .thread_name("datamesh-net")
            .enable_all()
            .build()
            .map_err(|e| NetError::Bad(format!("starting the network runtime: {e}")))?;
        let swarm = {
            let _g = rt.enter();
            build_swarm(identity, keys, false)?
        };
        let shared = Arc::new(Shared {
            peers: Mutex::new(PeerTable::default()),
            remember,
            kad_settled: AtomicBool::new(false),
            admission,
            admitted_read: Mutex::new(None),
            keys: keys.clone(),
            keys_read: Mutex::new(None),
            meta_handler: Mutex::new(None),
            meta_queued: Default::default(),
            members: Mutex::new(None),
            root: Mutex::new(None),
        });
        shared.reload_admitted();
        let (tx, rx) = mpsc::unbounded_channel();
        rt.spawn(super::actor::actor(
            swarm,
            rx,
            tx.downgrade(),
            shared.clone(),
            bootstrap,
        ));
        Ok(MeshClient {
            tx,
            shared,
            _rt: Arc::new(Runtime(Some(rt))),
        })
    }

    /// Sends `req` to `peer`; `reply` gets the answer (on the network thread: it
    /// must only hand it on).
    pub(super) fn request(&self, peer: PeerId, req: Request, reply: Reply) {
        let timer = crate::metrics::shard_request(peer.to_string(), req.right());
        let reply: Reply = Box::new(move |r| {
            // Failed to reach the peer, or an answer of failure.
            let failed = match &r {
                Err(_) => true,
                Ok(resp) => matches!(
                    resp,
                    Response::Failed(_)
                        | Response::Refused(_)
                        | Response::Corrupt
                        | Response::BadHash
                ),
            };
            timer.done(failed);
            reply(r)
        });
        if let Err(mpsc::error::SendError(ToActor::Request { reply, .. })) =
            self.tx.send(ToActor::Request { peer, req, reply })
        {
            reply(Err("the network task has stopped".into()));
        }
    }

    /// Listens on `addr` (for members); the error says why it cannot.
    pub fn listen(&self, addr: Multiaddr) -> Result<(), String> {
        let (reply, rx) = smpsc::channel();
        self.tx
            .send(ToActor::Listen { addr, reply })
            .map_err(|_| "the network task has stopped".to_string())?;
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| Err("the network task did not answer".into()))
    }

    /// Answers members' metadata requests with `handler` from now on.
    pub fn serve_meta(&self, handler: MetaHandler) {
        *lock(&self.shared.meta_handler) = Some(handler);
    }

    /// The member devices the storage peers are to serve; sent to every
    /// connected storage peer now, and to each one as it connects.
    pub fn set_members(&self, ids: Vec<PeerId>) {
        *lock(&self.shared.members) = Some(ids);
        let _ = self.tx.send(ToActor::PushMembers);
    }

    /// A metadata request to the home `peer`, waited for at most `wait`.
    pub fn meta_call(
        &self,
        peer: PeerId,
        bytes: Vec<u8>,
        wait: Duration,
    ) -> Result<Vec<u8>, super::MetaError> {
        let (tx, rx) = smpsc::channel();
        let reply: MetaReply = Box::new(move |r| {
            let _ = tx.send(r);
        });
        if let Err(mpsc::error::SendError(ToActor::Meta { reply, .. })) =
            self.tx.send(ToActor::Meta { peer, bytes, reply })
        {
            reply(Err(super::MetaError::lost("the network task has stopped")));
        }
        rx.recv_timeout(wait).unwrap_or_else(|_| {
            Err(super::MetaError::lost(format!(
                "the home node {peer} did not answer within {} s",
                wait.as_secs()
            )))
        })
    }

    /// One request, waited for.
    pub(super) fn ask(&self, peer: PeerId, req: Request) -> Result<Response, String> {
        let (tx, rx) = smpsc::channel();
        self.request(
            peer,
            req,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv_timeout(ANSWER_WAIT)
            .unwrap_or_else(|_| Err(format!("peer {peer}: no answer in {ANSWER_WAIT:?}")))
    }

    /// `req` to every reachable storage peer at once; each peer's answer
    /// (or why there was none), waited for at most `wait`.
    fn ask_all(&self, req: &Request, wait: Duration) -> Vec<(PeerId, Result<Response, String>)> {
        let live = self.live();
        let (tx, rx) = smpsc::channel();
        for (_, peer) in &live {
            let (tx, peer) = (tx.clone(), *peer);
            self.request(
                peer,
                req.clone(),
                Box::new(move |r| {
                    let _ = tx.send((peer, r));
                }),
            );
        }
        drop(tx);
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < live.len() {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(a) => out.push(a),
                Err(_) => break,
            }
        }
        for (_, peer) in live {
            if !out.iter().any(|(p, _)| *p == peer) {
                out.push((peer, Err(format!("no answer in {wait:?}"))));
            }
        }
        out
    }

    /// Hands a root record to every reachable storage peer; each one's
    /// answer: `Ok` when it keeps it (or a newer one), else why not.
    /// Peers that connect later are handed it as they do.
    pub fn put_root(&self, record: Vec<u8>) -> Vec<(PeerId, Result<(), String>)> {
        *lock(&self.shared.root) = Some(record.clone());
        self.ask_all(&Request::PutRoot { record }, ANSWER_WAIT)
            .into_iter()
            .map(|(p, r)| {
                let r = match r {
                    Ok(Response::Done) => Ok(()),
                    Ok(other) => Err(other.to_string()),
                    Err(e) => Err(e),
                };
                (p, r)
            })
            .collect()
    }

    /// Every reachable storage peer's root record, waited for at most
    /// `wait` (a peer that has not answered by then is one of the errors).
    pub fn get_roots(&self, wait: Duration) -> Vec<(PeerId, PeerRoot)> {
        self.ask_all(&Request::GetRoot, wait)
            .into_iter()
            .map(|(p, r)| {
                let r = match r {
                    Ok(Response::Root(r)) => Ok(r.map(|b| b.into_vec())),
                    Ok(other) => Err(other.to_string()),
                    Err(e) => Err(e),
                };
                (p, r)
            })
            .collect()
    }

    /// Reachable storage peers as (tag, id).
    pub(super) fn live(&self) -> Vec<(usize, PeerId)> {
        lock(&self.shared.peers)
            .list
            .iter()
            .enumerate()
            .filter(|(_, p)| p.usable() && p.connected)
            .map(|(i, p)| (i, p.id))
            .collect()
    }

    /// Each tag's placement weight: its capacity, or the mean of the known
    /// ones while it has not said (1 when none has).
    pub(super) fn weights(&self) -> impl Fn(usize) -> f64 + use<> {
        let caps: Vec<u64> = lock(&self.shared.peers)
            .list
            .iter()
            .map(|p| p.capacity)
            .collect();
        let known: Vec<u64> = caps.iter().copied().filter(|&c| c > 0).collect();
        let mean = if known.is_empty() {
            1.0
        } else {
            known.iter().sum::<u64>() as f64 / known.len() as f64
        };
        move |t| {
            caps.get(t)
                .copied()
                .filter(|&c| c > 0)
                .map_or(mean, |c| c as f64)
        }
    }

    /// Reachable storage peers among `holders`.
    pub(super) fn live_in(&self, holders: &Holders) -> Vec<(usize, PeerId)> {
        let mut live = self.live();
        live.retain(|(t, _)| holders.contains(*t));
        live
    }

    /// The reachable storage peers, as a set of tags.
    pub(super) fn live_set(&self) -> Holders {
        self.live().into_iter().map(|(t, _)| t).collect()
    }

    /// Waits until `want` admitted storage peers are reachable; gives up after
    /// `limit` with none, or with some once every known peer has connected
    /// (and, when new, been identified and admitted or not) or failed to (or 3 s
    /// pass without a new one: a dial to a vanished host can hang).
    pub fn wait_for_peers(&self, want: usize, limit: Duration) -> usize {
        let start = Instant::now();
        let (mut last, mut since) = (0, Instant::now());
        loop {
            let (n, pending) = {
                let t = lock(&self.shared.peers);
                let storage = t.list.iter().filter(|p| p.storage);
                let n = storage
                    .clone()
                    .filter(|p| p.usable() && p.connected)
                    .count();
                (
                    n,
                    // Connected but not identified yet: a Hello may follow.
                    storage
                        .filter(|p| {
                            (!p.connected && !p.dial_failed)
                                || p.admitting
                                || (p.connected && !p.identified && !p.admitted)
                        })
                        .count(),
                )
            };
            if n != last {
                (last, since) = (n, Instant::now());
            }
            let settled = n > 0 && (pending == 0 || since.elapsed() >= Duration::from_secs(3));
            if n >= want || settled || start.elapsed() >= limit {
                return n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every storage peer known, reachable or not, as (tag, entry).
    pub(super) fn storage_peers(&self) -> Vec<(usize, PeerEntry)> {
        lock(&self.shared.peers)
            .list
            .iter()
            .enumerate()
            .filter(|(_, p)| p.usable())
            .map(|(i, p)| (i, p.clone()))
            .collect()
    }

    /// Connected peers that have not said yet whether they store shards.
    pub(super) fn unclassified(&self) -> Vec<PeerId> {
        lock(&self.shared.peers)
            .list
            .iter()
            .filter(|p| (p.connected && !p.identified && !p.storage) || p.admitting)
            .map(|p| p.id)
            .collect()
    }

    /// Dials every known peer that is not connected, without waiting for the
    /// periodic redial.
    pub(super) fn redial(&self) {
        let _ = self.tx.send(ToActor::Redial);
    }

    /// Storage peers known but unreachable now.
    pub(super) fn down(&self) -> usize {
        lock(&self.shared.peers)
            .list
            .iter()
            .filter(|p| p.usable() && !p.connected)
            .count()
    }
}
