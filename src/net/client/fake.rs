//! In-process fake storage peers for unit tests: a [`MeshClient`] whose
//! requests are answered from maps instead of going through libp2p, with peers
//! that can be dead, full, slow, lying or mute. Everything above the handle
//! (placement, the put state machine, surveys, fetches) is the real code.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Ok,
    /// Not connected; dials to it fail.
    Dead,
    /// Refuses every put for want of room.
    Full,
    /// Answers every request this late.
    Slow(Duration),
    /// Flips a bit of every shard it sends.
    Lying,
    /// Never answers an inventory request (answers the rest).
    Mute,
    /// Predates `GetRange`: cannot read it (answers the rest).
    NoRanges,
    /// Says `Done` to every put and stores nothing.
    LiesDone,
}

pub struct FakePeer {
    pub id: PeerId,
    mode: Mutex<Mode>,
    pub shards: Mutex<HashMap<ShardId, Vec<u8>>>,
    /// Answers a mute peer holds back.
    held: Mutex<Vec<Reply>>,
    /// Reports holding no shards whatever it lists (a lying count).
    understate: AtomicBool,
}

impl FakePeer {
    /// From now on its `Stat` says it holds nothing.
    pub fn understate_count(&self) {
        self.understate.store(true, Ordering::Relaxed);
    }

    pub fn mode(&self) -> Mode {
        *lock(&self.mode)
    }

    pub fn holds(&self, id: &ShardId) -> bool {
        lock(&self.shards).contains_key(id)
    }

    fn answer(&self, req: Request) -> Response {
        let mode = self.mode();
        let mut shards = lock(&self.shards);
        match req {
            Request::Put { .. } if mode == Mode::Full => Response::Full,
            Request::Put { .. } if mode == Mode::LiesDone => Response::Done,
            Request::Put { id, data } => {
                if ShardId::of(&data) != id {
                    return Response::BadHash;
                }
                shards.insert(id, data.to_vec());
                Response::Done
            }
            Request::Get { id } => match shards.get(&id) {
                Some(b) => {
                    let mut b = b.clone();
                    if mode == Mode::Lying {
                        b[0] ^= 1;
                    }
                    Response::Data(b)
                }
                None => Response::Missing,
            },
            Request::GetRange { .. } if mode == Mode::NoRanges => {
                Response::Failed("an unreadable request".into())
            }
            Request::GetRange { id, offset, len } => match shards.get(&id) {
                Some(b) => {
                    let from = (offset as usize).min(b.len());
                    let mut b = b[from..(from + len as usize).min(b.len())].to_vec();
                    if mode == Mode::Lying && !b.is_empty() {
                        b[0] ^= 1;
                    }
                    Response::Data(b)
                }
                None => Response::Missing,
            },
            Request::Has { ids } => {
                Response::Have(ids.iter().map(|i| shards.contains_key(i)).collect())
            }
            Request::Delete { ids } => {
                for id in ids {
                    shards.remove(&id);
                }
                Response::Done
            }
            Request::Sync => Response::Done,
            Request::List { after, max } | Request::Verify { after, max } => {
                let verify = matches!(req, Request::Verify { .. });
                let mut ids: Vec<&ShardId> = shards
                    .keys()
                    .filter(|id| after.is_none_or(|a| **id > a))
                    .collect();
                ids.sort();
                let more = ids.len() > max as usize;
                ids.truncate(max as usize);
                if verify {
                    Response::Verified {
                        checked: ids.len() as u32,
                        bad: Vec::new(),
                        last: ids.last().map(|id| **id),
                        more,
                    }
                } else {
                    Response::List {
                        shards: ids
                            .iter()
                            .map(|id| (**id, shards[*id].len() as u64, 0))
                            .collect(),
                        more,
                    }
                }
            }
            Request::Hello => Response::Failed("fake peers are admitted already".into()),
            Request::Members { .. } | Request::MeshKeys { .. } => Response::Done,
            Request::PutRoot { .. } => Response::Done,
            Request::GetRoot => Response::Root(None),
            Request::Stat => Response::Stat {
                shards: if self.understate.load(Ordering::Relaxed) {
                    0
                } else {
                    shards.len() as u64
                },
                used: shards.values().map(|b| b.len() as u64).sum(),
                capacity: 1 << 40,
            },
        }
    }
}

/// A mesh of fake peers and the client handle on it.
pub struct FakeMesh {
    pub peers: Vec<Arc<FakePeer>>,
    pub client: MeshClient,
}

impl FakeMesh {
    pub fn new(modes: &[Mode]) -> FakeMesh {
        let peers: Vec<Arc<FakePeer>> = modes
            .iter()
            .map(|&mode| {
                Arc::new(FakePeer {
                    id: PeerId::random(),
                    mode: Mutex::new(mode),
                    shards: Mutex::new(HashMap::new()),
                    held: Mutex::new(Vec::new()),
                    understate: AtomicBool::new(false),
                })
            })
            .collect();
        let shared = Arc::new(Shared {
            peers: Mutex::new(PeerTable::default()),
            remember: None,
            kad_settled: AtomicBool::new(true),
            admission: None,
            admitted_read: Mutex::new(None),
            keys: LiveKeys::new(MeshKeys::single(crate::net::MeshKey::generate())),
            keys_read: Mutex::new(None),
            meta_handler: Mutex::new(None),
            meta_queued: Default::default(),
            members: Mutex::new(None),
            root: Mutex::new(None),
        });
        for p in &peers {
            let mut t = lock(&shared.peers);
            let e = t.entry(p.id).expect("room in the table");
            e.storage = true;
            e.identified = true;
            e.addrs = vec!["/ip4/127.0.0.1/tcp/9".parse().expect("an address")];
            e.connected = p.mode() != Mode::Dead;
            if e.connected {
                e.down_since = None;
            }
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<ToActor>();
        let (by_id, table) = (peers.clone(), shared.clone());
        std::thread::spawn(move || {
            while let Some(cmd) = rx.blocking_recv() {
                match cmd {
                    ToActor::Request { peer, req, reply } => {
                        let p = by_id
                            .iter()
                            .find(|p| p.id == peer)
                            .expect("a fake peer")
                            .clone();
                        match p.mode() {
                            Mode::Dead => reply(Err(format!("peer {peer}: dial failure"))),
                            Mode::Mute if matches!(req, Request::List { .. }) => {
                                lock(&p.held).push(reply)
                            }
                            Mode::Slow(d) => {
                                std::thread::spawn(move || {
                                    std::thread::sleep(d);
                                    reply(Ok(p.answer(req)));
                                });
                            }
                            _ => reply(Ok(p.answer(req))),
                        }
                    }
                    ToActor::Redial => {
                        for e in lock(&table.peers).list.iter_mut().filter(|e| !e.connected) {
                            e.dial_failed = true;
                            e.dial_failures += 1;
                            e.last_dial_error = "Connection refused".into();
                        }
                    }
                    ToActor::Meta { reply, .. } => {
                        reply(Err(super::MetaError::lost("no home among fake peers")))
                    }
                    ToActor::Listen { reply, .. } => {
                        let _ = reply.send(Err("fake peers do not listen".into()));
                    }
                    ToActor::MetaAnswer { .. } | ToActor::PushMembers => {}
                }
            }
        });
        FakeMesh {
            peers,
            client: MeshClient {
                tx,
                shared,
                _rt: Arc::new(Runtime(None)),
            },
        }
    }

    /// Peer `i` dies: its connection drops and dials to it fail from now on.
    pub fn kill(&self, i: usize) {
        *lock(&self.peers[i].mode) = Mode::Dead;
        let mut t = lock(&self.client.shared.peers);
        let e = &mut t.list[i];
        e.connected = false;
        e.down_since = Some(Instant::now());
    }

    /// The store over this mesh, with waits short enough for unit tests.
    pub fn store(&self) -> Arc<MeshStore> {
        MeshStore::with_timings(
            self.client.clone(),
            None,
            Timings {
                avoid_for: Duration::from_secs(60),
                straggler_wait: Duration::from_millis(100),
                answer_wait: Duration::from_secs(5),
                survey_dial_wait: Duration::from_millis(300),
                survey_page_wait: Duration::from_millis(300),
            },
        )
    }

    /// How many of `ids` fake peer `i` holds.
    pub fn held_by(&self, i: usize, ids: &[ShardId]) -> usize {
        ids.iter().filter(|id| self.peers[i].holds(id)).count()
    }
}
