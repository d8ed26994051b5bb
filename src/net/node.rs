//! `datamesh node`: a storage peer. It holds shards (ciphertext) in the same
//! [`LocalStore`] the embedded volume uses, and nothing else: no keys, no names.
//!
//! The swarm runs on one task. Small requests (a put of a shard up to 64 KiB,
//! `Has` of a few ids, `Stat`) are answered there; the rest from tokio's blocking
//! pool (bounded), so large disk reads and writes never stall the network loop.
//!
//! Every request passes the [`Gate`] first: the caller's authenticated peer id
//! decides what it may ask (the home's id is in `DIR/roles`, from the join
//! token); see [`super::trust`].

use super::gate::Gate;
use super::proto::{MAX_IDS, Request, Response};
use super::root::RootState;
use super::{
    BehaviourEvent, JoinToken, LiveKeys, MeshKeys, NetError, Roles, build_swarm, is_loopback,
    is_unspecified, load_identity, peer_of,
};
use crate::chunk::ShardId;
use crate::store::{LocalStore, ShardStore, StoreError};
use libp2p::futures::StreamExt;
use libp2p::request_response::{self, Message};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, identify};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub struct NodeOptions {
    pub data: PathBuf,
    pub listen: Vec<Multiaddr>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    pub metrics: Option<std::net::SocketAddr>,
    /// Most shard bytes this peer keeps; `None`: as much as its disk holds.
    pub capacity: Option<u64>,
    pub bootstrap: Vec<Multiaddr>,
    pub join: Option<String>,
    /// Fault injection for tests: answer every get with one bit flipped, as a
    /// faulty or lying peer would.
    pub flip_reads: bool,
    /// Fault injection for tests: answer every put and get this late, as a
    /// stalled peer would.
    pub delay: std::time::Duration,
    /// Fault injection for tests: never answer an inventory (`List`) request,
    /// while answering every other one, as a wedged peer would.
    pub mute_lists: bool,
    /// Fault injection for tests: a hostile peer's inventory, in order but
    /// endless (made-up ids, `more` always set).
    pub endless_lists: bool,
    /// Fault injection for tests: answer `Stat` with a 60 MiB text.
    pub huge_answers: bool,
    /// Fault injection for tests: answer every put `Done` without storing it.
    pub lie_done: bool,
}

/// Shard requests answered at once; more queue in the swarm.
const BLOCKING_THREADS: usize = 16;
/// Requests waiting for a blocking thread; past this a node answers "busy"
/// instead of letting the queue (and the shards it holds) grow.
const MAX_QUEUED: usize = 256;
/// Bytes one `Verify` request may hash.
const VERIFY_BYTES: u64 = 256 << 20;

struct Shards {
    store: LocalStore,
    capacity: Option<u64>,
    used: AtomicU64,
    count: AtomicU64,
    flip_reads: bool,
    delay: std::time::Duration,
    endless_lists: bool,
    huge_answers: bool,
    lie_done: bool,
}

/// Up to `max` made-up ids after `after`, in order: an inventory that never ends.
fn endless_page(after: Option<ShardId>, max: u32) -> Response {
    let mut next = after.map_or(0u128, |a| {
        u128::from_be_bytes(a.0[..16].try_into().unwrap()) + 1
    });
    let shards = (0..max.min(MAX_IDS as u32))
        .map(|_| {
            let mut id = [0u8; 32];
            id[..16].copy_from_slice(&next.to_be_bytes());
            next += 1;
            (ShardId(id), 1 << 20, 0)
        })
        .collect();
    Response::List { shards, more: true }
}

impl Shards {
    fn answer(&self, from: &libp2p::PeerId, req: Request) -> Response {
        let failed = |e: StoreError| match e {
            StoreError::Full(_) => Response::Full,
            StoreError::Missing(_) => Response::Missing,
            StoreError::Corrupt(id) => {
                tracing::error!("shard {id} is corrupt on this peer's disk");
                Response::Corrupt
            }
            e => Response::Failed(e.to_string()),
        };
        match req {
            Request::Put { .. } if self.lie_done => Response::Done,
            Request::Put { id, data } => {
                std::thread::sleep(self.delay);
                if ShardId::of(&data) != id {
                    tracing::warn!("{from} sent bytes that do not match shard id {id}: refused");
                    return Response::BadHash;
                }
                // The common case, a shard not here yet, is written without
                // looking first: the placing rename refuses an existing name.
                let len = data.len() as u64;
                let over_cap = self
                    .capacity
                    .is_some_and(|cap| self.used.load(Ordering::Relaxed) + len > cap);
                match (!over_cap).then(|| self.store.put_if_absent(&id, &data)) {
                    Some(Ok(true)) => {
                        self.used.fetch_add(len, Ordering::Relaxed);
                        self.count.fetch_add(1, Ordering::Relaxed);
                        return Response::Done;
                    }
                    Some(Ok(false)) => {}
                    // A full peer still answers for a shard it holds.
                    None | Some(Err(StoreError::Full(_))) => {
                        if !self.store.contains(&id) {
                            return Response::Full;
                        }
                    }
                    Some(Err(e)) => return failed(e),
                }
                // Already here, unless the copy here has rotted: a writer
                // re-placing a shard it found bad may pick this peer again.
                match self.store.get(&id) {
                    Err(StoreError::Corrupt(_)) => match self.store.replace(&id, &data) {
                        Ok(()) => {
                            tracing::warn!("shard {id}: rotted copy replaced");
                            Response::Done
                        }
                        Err(e) => failed(e),
                    },
                    _ => Response::Done,
                }
            }
            // Not re-hashed here: the reader checks every shard against its id
            // anyway, and scrub finds rot on this disk.
            Request::Get { id } => {
                std::thread::sleep(self.delay);
                match self.store.get_unverified(&id) {
                    Ok(mut data) => {
                        if self.flip_reads && !data.is_empty() {
                            data[0] ^= 1;
                        }
                        Response::Data(data)
                    }
                    Err(e) => failed(e),
                }
            }
            Request::GetRange { id, offset, len } => {
                std::thread::sleep(self.delay);
                match crate::store::ShardStore::get_range(
                    &self.store,
                    &id,
                    offset.min(super::proto::MAX_SHARD as u64) as usize,
                    len as usize,
                ) {
                    Ok(mut data) => {
                        if self.flip_reads && !data.is_empty() {
                            data[0] ^= 1;
                        }
                        Response::Data(data)
                    }
                    Err(e) => failed(e),
                }
            }
            Request::Has { ids } => {
                Response::Have(ids.iter().map(|i| self.store.contains(i)).collect())
            }
            Request::Delete { ids } => {
                for id in ids {
                    match self.store.remove(&id) {
                        Ok(Some(len)) => {
                            self.used.fetch_sub(len, Ordering::Relaxed);
                            self.count.fetch_sub(1, Ordering::Relaxed);
                        }
                        Ok(None) => {}
                        Err(e) => return failed(e),
                    }
                }
                Response::Done
            }
            Request::Sync => match self.store.sync() {
                Ok(()) => Response::Done,
                Err(e) => failed(e),
            },
            Request::List { after, max } if self.endless_lists => endless_page(after, max),
            Request::Stat if self.huge_answers => Response::Failed("x".repeat(60 << 20)),
            Request::List { after, max } => {
                let (shards, more) = self.store.list_after(after, max as usize);
                Response::List { shards, more }
            }
            Request::Verify { after, max } => {
                let (mut shards, mut more) =
                    self.store.list_after(after, (max as usize).min(MAX_IDS));
                // Paged by bytes too: one request never asks for more than
                // VERIFY_BYTES of hashing, whatever the shards' sizes.
                let mut bytes = 0u64;
                if let Some(cut) = shards.iter().position(|(_, len, _)| {
                    bytes += len;
                    bytes > VERIFY_BYTES
                }) {
                    shards.truncate(cut.max(1));
                    more = true;
                }
                let bad = shards
                    .iter()
                    .filter(|(id, _, _)| matches!(self.store.get(id), Err(StoreError::Corrupt(_))))
                    .map(|(id, _, _)| *id)
                    .collect::<Vec<_>>();
                for id in &bad {
                    tracing::error!("scrub: shard {id} is corrupt on this peer's disk");
                }
                Response::Verified {
                    checked: shards.len() as u32,
                    bad,
                    last: shards.last().map(|s| s.0),
                    more,
                }
            }
            // Answered by the network loop, which knows this peer's id.
            Request::Hello
            | Request::Members { .. }
            | Request::PutRoot { .. }
            | Request::MeshKeys { .. }
            | Request::GetRoot => Response::Failed("answered by the network loop".into()),
            Request::Stat => {
                let used = self.used.load(Ordering::Relaxed);
                let disk = self
                    .store
                    .capacity()
                    .map(|(_, avail)| used + avail)
                    .unwrap_or(used);
                Response::Stat {
                    shards: self.count.load(Ordering::Relaxed),
                    used,
                    capacity: self.capacity.map_or(disk, |c| c.min(disk)),
                }
            }
        }
    }
}

/// libp2p listens with SO_REUSEPORT (so that dials can reuse the port), which
/// lets a second node bind the same port and silently take half its
/// connections. A plain bind first turns that into an error.
fn check_port_free(addr: &Multiaddr) -> Result<(), NetError> {
    let port = addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Tcp(p) if p != 0 => Some(p),
        _ => None,
    });
    if let (Some(ip), Some(port)) = (super::ip_of(addr), port) {
        std::net::TcpListener::bind((ip, port))
            .map_err(|e| NetError::Bad(format!("listen on {addr}: {e}")))?;
    }
    Ok(())
}

/// Joins the mesh of `token` with the data dir `data`: keeps the mesh key
/// (written only when missing) and the home's id. Everything is checked
/// before anything is written.
fn join(data: &Path, token: &str) -> Result<Vec<Multiaddr>, NetError> {
    let now = super::trust::now_secs();
    let t = JoinToken::decode_any_age(token)?;
    let (key_path, roles_path) = (data.join("mesh.key"), data.join("roles"));
    let have = match MeshKeys::load(&key_path, false) {
        Ok(have) => Some(have.current().clone()),
        Err(NetError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let roles = Roles::load(&roles_path)?;
    // A peer that joined with this very token already may be started with it
    // again (a service's environment keeps it); anything new needs it fresh.
    let joined = have.as_ref() == Some(&t.key)
        && (t.home.is_none() || roles.as_ref().and_then(Roles::home) == t.home);
    if !joined {
        JoinToken::decode(token, now)?;
    }
    if have.as_ref().is_some_and(|have| *have != t.key) {
        return Err(NetError::Bad(format!(
            "{}: this peer already belongs to another mesh (remove its data dir to rejoin)",
            data.display()
        )));
    }
    if let (Some(old), Some(new)) = (roles.as_ref().and_then(Roles::home), t.home)
        && old != new
    {
        return Err(NetError::Bad(format!(
            "{}: this peer already serves the home node {old}, and the token names {new} \
             (remove its data dir to join another home)",
            data.display()
        )));
    }
    create_private_dir(data)?;
    if have.is_none() {
        t.key.save(&key_path)?;
    }
    if let (None, Some(home)) = (&roles, t.home) {
        Roles::new(home, t.admit).save(&roles_path)?;
    }
    Ok(t.bootstrap)
}

/// `dir`, created if missing, readable by its owner only.
fn create_private_dir(dir: &Path) -> Result<(), NetError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(super::io_err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(super::io_err(dir))
}

/// Runs a storage peer until SIGTERM or SIGINT.
pub fn run(opts: NodeOptions) -> Result<(), NetError> {
    let key_path = opts.data.join("mesh.key");
    let mut bootstrap = opts.bootstrap.clone();
    if let Some(token) = &opts.join {
        bootstrap.extend(join(&opts.data, token)?);
    }
    let keys = MeshKeys::load(&key_path, false).map_err(|e| match e {
        NetError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            NetError::Bad(format!(
                "{}: no mesh key yet: start with --join TOKEN (the last line of `datamesh invite`)",
                opts.data.display()
            ))
        }
        e => e,
    })?;
    create_private_dir(&opts.data)?;
    let roles = Roles::load(&opts.data.join("roles"))?;
    match roles.as_ref().and_then(Roles::home) {
        Some(home) => tracing::info!("serving the home node {home}"),
        None => tracing::warn!(
            "{}: this peer predates roles and answers every holder of the mesh key, \
             deletes included: join it again with a token from `datamesh invite` \
             (`datamesh node --join TOKEN`, same data dir; shards are kept)",
            opts.data.display()
        ),
    }
    let identity = load_identity(&opts.data.join("node.key"))?;
    let store =
        LocalStore::open(&opts.data.join("store")).map_err(|e| NetError::Bad(e.to_string()))?;
    let (mut used, mut count) = (0, 0);
    store
        .for_each(&mut |info| {
            used += info.len;
            count += 1;
        })
        .map_err(|e| NetError::Bad(e.to_string()))?;
    let shards = Arc::new(Shards {
        store,
        capacity: opts.capacity,
        used: AtomicU64::new(used),
        count: AtomicU64::new(count),
        flip_reads: opts.flip_reads,
        delay: opts.delay,
        endless_lists: opts.endless_lists,
        huge_answers: opts.huge_answers,
        lie_done: opts.lie_done,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("datamesh-node")
        .enable_all()
        .build()
        .map_err(super::io_err(&opts.data))?;
    if let Some(addr) = opts.metrics {
        let listener =
            crate::metrics::bind(addr, "metrics").map_err(|e| NetError::Bad(e.to_string()))?;
        let figures = shards.clone();
        let refresh = move || {
            let m = crate::metrics::get();
            m.node_shards
                .set(figures.count.load(Ordering::Relaxed) as i64);
            m.node_used_bytes
                .set(figures.used.load(Ordering::Relaxed) as i64);
            m.node_capacity_bytes
                .set(figures.capacity.map_or(-1, |c| c as i64));
        };
        // Ends with the process (the runtime is dropped as `run` returns).
        rt.spawn(async move {
            let served = async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                axum::serve(listener, crate::metrics::router(refresh)).await
            };
            if let Err(e) = served.await {
                tracing::warn!("serving metrics: {e}");
            }
        });
    }
    rt.block_on(serve(
        identity,
        LiveKeys::new(keys),
        opts.listen,
        bootstrap,
        shards,
        Gate::new(
            roles,
            opts.data.join("roles"),
            RootState::load(&opts.data.join("root"))?,
            opts.data.join("root"),
            key_path,
        ),
        opts.mute_lists,
    ))
}

async fn serve(
    identity: libp2p::identity::Keypair,
    keys: LiveKeys,
    listen: Vec<Multiaddr>,
    bootstrap: Vec<Multiaddr>,
    shards: Arc<Shards>,
    mut gate: Gate,
    mute_lists: bool,
) -> Result<(), NetError> {
    use tokio::signal::unix::{SignalKind, signal};
    let me = identity.public().to_peer_id();
    let mut swarm = build_swarm(identity, &keys, true)?;
    let on_any = listen.iter().any(is_unspecified);
    for addr in listen {
        check_port_free(&addr)?;
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Bad(format!("listen on {addr}: {e}")))?;
    }
    for addr in &bootstrap {
        if let Some(peer) = peer_of(addr) {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!("bootstrap {addr}: {e}");
        }
    }
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut term = signal(SignalKind::terminate()).map_err(|e| NetError::Bad(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| NetError::Bad(e.to_string()))?;
    let mut discover = tokio::time::interval(Duration::from_secs(30));
    // The one "listening on" line names the most useful address: on 0.0.0.0
    // the interfaces are reported one by one, loopback first, so the line waits
    // a moment for one that other machines can reach.
    let mut heard: Vec<Multiaddr> = Vec::new();
    let mut announce_at: Option<tokio::time::Instant> = None;
    let mut announced = false;
    // Inventory requests held unanswered (fault injection).
    let mut muted = Vec::new();
    // Requests handed to the blocking pool and not answered yet.
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let due = announce_at.filter(|_| !announced);
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::NewListenAddr { address, .. } => {
                    tracing::info!("listening on {address}/p2p/{me}");
                    if !announced {
                        let reachable = !is_loopback(&address) || !on_any;
                        heard.push(address);
                        announce_at = Some(if reachable {
                            tokio::time::Instant::now()
                        } else {
                            announce_at.unwrap_or_else(|| {
                                tokio::time::Instant::now() + Duration::from_millis(300)
                            })
                        });
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Shard(request_response::Event::Message {
                    peer,
                    message: Message::Request { request, channel, .. },
                    ..
                })) => {
                    let counted = crate::metrics::RequestLabel { request: request.right() };
                    let m = crate::metrics::get();
                    m.node_requests.get_or_create(&counted).inc();
                    if let Some(refusal) = gate.check(&peer, &request) {
                        m.node_refusals.get_or_create(&counted).inc();
                        let _ = swarm.behaviour_mut().shard.send_response(channel, refusal);
                    } else if matches!(request, Request::Hello) {
                        let _ = swarm.behaviour_mut().shard.send_response(channel, gate.hello(&me));
                    } else if let Request::Members { ids } = request {
                        let resp = gate.set_members(ids);
                        let _ = swarm.behaviour_mut().shard.send_response(channel, resp);
                    } else if let Request::MeshKeys { ring } = &request {
                        let resp = gate.take_keys(&keys, ring, &mut swarm);
                        let _ = swarm.behaviour_mut().shard.send_response(channel, resp);
                    } else if let Request::PutRoot { record } = &request {
                        let resp = gate.put_root(&peer, record);
                        let _ = swarm.behaviour_mut().shard.send_response(channel, resp);
                    } else if matches!(request, Request::GetRoot) {
                        let _ = swarm.behaviour_mut().shard.send_response(channel, gate.get_root());
                    } else if mute_lists && matches!(request, Request::List { .. }) {
                        muted.push(channel);
                    } else if request.is_quick() {
                        // Two thread hops would cost more than the work itself.
                        let resp = shards.answer(&peer, request);
                        let _ = swarm.behaviour_mut().shard.send_response(channel, resp);
                    } else if queued.load(Ordering::Relaxed) >= MAX_QUEUED {
                        let busy = Response::Failed(format!(
                            "busy: {MAX_QUEUED} requests waiting; try another peer or later"
                        ));
                        let _ = swarm.behaviour_mut().shard.send_response(channel, busy);
                    } else {
                        let shards = shards.clone();
                        let done = done_tx.clone();
                        let queued = queued.clone();
                        queued.fetch_add(1, Ordering::Relaxed);
                        tokio::task::spawn_blocking(move || {
                            let resp = shards.answer(&peer, request);
                            queued.fetch_sub(1, Ordering::Relaxed);
                            let _ = done.send((channel, resp));
                        });
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Shard(request_response::Event::InboundFailure {
                    peer, error, ..
                })) => tracing::info!("request from {peer} failed: {error}"),
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                    peer_id, info, ..
                })) if info.agent_version.starts_with("datamesh-node/") => {
                    super::learn_listen_addrs(&mut swarm.behaviour_mut().kad, &peer_id, &info.listen_addrs);
                }
                SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                    let why = super::root_cause(&error);
                    tracing::info!("refused a connection from {send_back_addr}: {why}");
                }
                _ => {}
            },
            Some((channel, resp)) = done_rx.recv() => {
                let _ = swarm.behaviour_mut().shard.send_response(channel, resp);
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                announced = true;
                let best = heard.iter().find(|a| !is_loopback(a)).unwrap_or(&heard[0]);
                println!("datamesh node: listening on {best}/p2p/{me}");
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }
            _ = discover.tick() => {
                let _ = swarm.behaviour_mut().kad.bootstrap();
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Everything acknowledged is made durable before the peer goes.
    let s = shards.clone();
    let _ = tokio::task::spawn_blocking(move || s.store.sync()).await;
    tracing::info!("datamesh node {me}: stopped");
    Ok(())
}
