//! The swarm actor: dials, connection and identify events, requests in flight.

use super::*;

pub(super) async fn actor(
    mut swarm: libp2p::Swarm<crate::net::Behaviour>,
    mut rx: mpsc::UnboundedReceiver<ToActor>,
    me: mpsc::WeakUnboundedSender<ToActor>,
    shared: Arc<Shared>,
    bootstrap: Vec<Multiaddr>,
) {
    let mut pending: HashMap<OutboundRequestId, Reply> = HashMap::new();
    let mut meta_pending: HashMap<OutboundRequestId, MetaReply> = HashMap::new();
    for addr in &bootstrap {
        if let Some(peer) = peer_of(addr) {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            swarm.add_peer_address(peer, addr.clone());
            // Bootstrap and remembered addresses are storage peers until identify
            // says otherwise, so that one that is down shows as such.
            if let Some(p) = lock(&shared.peers).entry(peer) {
                p.addrs.push(bare(addr));
                p.storage = true;
            }
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!("bootstrap {addr}: {e}");
        }
    }
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => break,
                Some(ToActor::Request { peer, req, reply }) => {
                    let id = swarm.behaviour_mut().shard.send_request(&peer, req);
                    pending.insert(id, reply);
                }
                Some(ToActor::Redial) => redial(&mut swarm, &shared),
                Some(ToActor::Meta { peer, bytes, reply }) => {
                    let id = swarm.behaviour_mut().meta.send_request(&peer, bytes);
                    meta_pending.insert(id, reply);
                }
                Some(ToActor::MetaAnswer { channel, bytes }) => {
                    let _ = swarm.behaviour_mut().meta.send_response(channel, bytes);
                }
                Some(ToActor::Listen { addr, reply }) => {
                    let res = swarm.listen_on(addr.clone()).map(drop).map_err(|e| format!("listen on {addr}: {e}"));
                    let _ = reply.send(res);
                }
                Some(ToActor::PushMembers) => push_members(&mut swarm, &shared, None),
            },
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                    let mut t = lock(&shared.peers);
                    if let Some(p) = t.entry(peer_id) {
                        p.connected = true;
                        p.down_since = None;
                        p.dial_failed = false;
                        if endpoint.is_dialer() {
                            let a = bare(endpoint.get_remote_address());
                            if !p.addrs.contains(&a) {
                                p.addrs.insert(0, a);
                            }
                        }
                    }
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, cause, .. } => {
                    if let Some(p) = lock(&shared.peers).entry(peer_id) {
                        if p.storage {
                            let why = cause
                                .map_or_else(|| "closed".to_string(), |c| c.to_string());
                            tracing::warn!("lost storage peer {peer_id}: {why}");
                        }
                        p.connected = false;
                        p.down_since = Some(Instant::now());
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                    peer_id, info, ..
                })) => {
                    let storage = info.agent_version.starts_with("datamesh-node/");
                    if storage {
                        crate::net::learn_listen_addrs(&mut swarm.behaviour_mut().kad, &peer_id, &info.listen_addrs);
                    }
                    let mut t = lock(&shared.peers);
                    let retired = t.admitted.as_ref().is_some_and(|a| a.retired.contains(&peer_id));
                    if let Some(p) = t.entry(peer_id) {
                        p.storage = storage;
                        p.identified = true;
                        for a in info.listen_addrs.iter().filter(|a| !is_unspecified(a)).map(bare) {
                            if !p.addrs.contains(&a) {
                                p.addrs.push(a);
                            }
                        }
                        // A storage peer the home has not admitted proves it was invited.
                        // A retired one is not asked: only `datamesh peers add` brings it back.
                        let hello = storage && !p.admitted && !p.admitting && !retired;
                        if hello {
                            p.admitting = true;
                        }
                        drop(t);
                        if hello {
                            let id = swarm.behaviour_mut().shard.send_request(&peer_id, Request::Hello);
                            let shared = shared.clone();
                            pending.insert(id, Box::new(move |r| shared.take_hello(peer_id, r)));
                        }
                        if storage {
                            tracing::info!("storage peer {peer_id} identified");
                            // Its capacity: placement's weight.
                            let id = swarm.behaviour_mut().shard.send_request(&peer_id, Request::Stat);
                            let s = shared.clone();
                            pending.insert(id, Box::new(move |r| s.take_stat(peer_id, r)));
                            shared.save_peers();
                            push_members(&mut swarm, &shared, Some(peer_id));
                        }
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                    peer, addresses, ..
                })) => {
                    // Only storage peers serve the DHT (home nodes are kad clients),
                    // so a peer found there counts as one from now on.
                    let addresses = addresses.into_vec();
                    if let Some(p) = lock(&shared.peers).entry(peer) {
                        p.storage = true;
                        for a in addresses.iter().filter(|a| !is_unspecified(a)).map(bare) {
                            if !p.addrs.contains(&a) {
                                p.addrs.push(a);
                            }
                        }
                    }
                    if !swarm.is_connected(&peer) {
                        let _ = swarm.dial(DialOpts::peer_id(peer).addresses(addresses).build());
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                    result: kad::QueryResult::Bootstrap(_), step, ..
                })) if step.last => {
                    shared.kad_settled.store(true, Ordering::Relaxed);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                    result: kad::QueryResult::GetClosestPeers(Ok(found)), ..
                })) => found_again(&mut swarm, &shared, found.peers),
                SwarmEvent::Behaviour(BehaviourEvent::Shard(request_response::Event::Message {
                    message: Message::Response { request_id, response },
                    ..
                })) => {
                    if let Some(reply) = pending.remove(&request_id) {
                        reply(Ok(response));
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Shard(
                    request_response::Event::OutboundFailure { request_id, error, peer, .. },
                )) => {
                    if let Some(reply) = pending.remove(&request_id) {
                        reply(Err(format!("peer {peer}: {error}")));
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Meta(request_response::Event::Message {
                    peer, message, ..
                })) => match message {
                    Message::Response { request_id, response } => {
                        if let Some(reply) = meta_pending.remove(&request_id) {
                            reply(Ok(response));
                        }
                    }
                    Message::Request { request, channel, .. } => {
                        let handler = lock(&shared.meta_handler).clone();
                        let busy = shared.meta_queued.load(Ordering::Relaxed) >= MAX_META_QUEUED;
                        match (handler, me.upgrade()) {
                            (Some(handler), Some(tx)) if !busy => {
                                let shared = shared.clone();
                                shared.meta_queued.fetch_add(1, Ordering::Relaxed);
                                tokio::task::spawn_blocking(move || {
                                    let bytes = handler(peer, request);
                                    shared.meta_queued.fetch_sub(1, Ordering::Relaxed);
                                    let _ = tx.send(ToActor::MetaAnswer { channel, bytes });
                                });
                            }
                            (Some(_), Some(_)) => {
                                let busy = crate::net::member::BUSY_ANSWER.to_vec();
                                let _ = swarm.behaviour_mut().meta.send_response(channel, busy);
                            }
                            // An empty answer: this host does not answer members (now).
                            _ => {
                                let _ = swarm.behaviour_mut().meta.send_response(channel, Vec::new());
                            }
                        }
                    }
                },
                SwarmEvent::Behaviour(BehaviourEvent::Meta(
                    request_response::Event::OutboundFailure { request_id, error, peer, .. },
                )) => {
                    if let Some(reply) = meta_pending.remove(&request_id) {
                        let unsent = matches!(error, request_response::OutboundFailure::DialFailure);
                        reply(Err(super::MetaError {
                            unsent,
                            text: format!("the home node {peer}: {error}"),
                        }));
                    }
                }
                SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                    tracing::debug!("dial {peer_id:?}: {error}");
                    let mut t = lock(&shared.peers);
                    if let Some(i) = peer_id.and_then(|id| t.by_id.get(&id).copied()) {
                        let p = &mut t.list[i];
                        p.dial_failed = true;
                        p.dial_failures += 1;
                        p.last_dial_error = short_dial_error(&error);
                    }
                }
                _ => {}
            },
            _ = tick.tick() => {
                ticks += 1;
                // Dead peers are redialled so that a restarted one is used again.
                redial(&mut swarm, &shared);
                shared.reload_admitted();
                if shared.reload_keys() {
                    cut_off(&mut swarm, &shared);
                    push_members(&mut swarm, &shared, None);
                }
                // Peers admitted since they connected learn the members too.
                if ticks % 15 == 2 {
                    push_members(&mut swarm, &shared, None);
                }
                // Every 30 s; every 10 s while a storage peer is down, so one
                // that came back on another address is found again soon.
                let lookup = ticks % 15 == 1 || (ticks % 5 == 1 && any_down(&shared));
                if lookup && swarm.behaviour_mut().kad.bootstrap().is_err() {
                    // No peer to ask: there is nothing to discover.
                    shared.kad_settled.store(true, Ordering::Relaxed);
                }
                // Each storage peer down is looked up by its own id too: the
                // answer names its addresses now, dialled whatever dial to
                // its old one still hangs (another process may hold that
                // port now).
                if lookup {
                    for id in down_storage(&shared) {
                        swarm.behaviour_mut().kad.get_closest_peers(id);
                    }
                }
            }
        }
    }
}

/// After a rotation: closes the connections of every peer the new ring
/// does not allow (a revoked member, a removed storage peer).
fn cut_off(swarm: &mut libp2p::Swarm<crate::net::Behaviour>, shared: &Shared) {
    let ring = shared.keys.get();
    let cut: Vec<PeerId> = swarm
        .connected_peers()
        .filter(|p| !ring.allowed().contains(p))
        .copied()
        .collect();
    for p in cut {
        tracing::info!("cut off {p}: the rotated mesh key does not allow it");
        let _ = swarm.disconnect_peer_id(p);
    }
}

/// Sends the mesh key ring (once rotated), the newest root record, then the
/// member list, to `only` (or to every connected storage peer the home
/// admitted), when the home has them. The ring goes first, so that a peer
/// that missed a rotation cuts off whom it no longer allows before it
/// learns the members (and starts serving them).
fn push_members(
    swarm: &mut libp2p::Swarm<crate::net::Behaviour>,
    shared: &Shared,
    only: Option<PeerId>,
) {
    let root = lock(&shared.root).clone();
    let ids = lock(&shared.members).clone();
    let ring = Some(shared.keys.get())
        .filter(|r| shared.admission.is_some() && r.generation() > 0)
        .map(|r| r.encode());
    if root.is_none() && ids.is_none() && ring.is_none() {
        return;
    }
    let to: Vec<PeerId> = lock(&shared.peers)
        .list
        .iter()
        .filter(|p| p.usable() && p.connected && only.is_none_or(|o| o == p.id))
        .map(|p| p.id)
        .collect();
    // The answers only matter as log lines; the next push retries.
    for peer in to {
        if let Some(ring) = &ring {
            swarm
                .behaviour_mut()
                .shard
                .send_request(&peer, Request::MeshKeys { ring: ring.clone() });
        }
        if let Some(record) = &root {
            let record = record.clone();
            swarm
                .behaviour_mut()
                .shard
                .send_request(&peer, Request::PutRoot { record });
        }
        if let Some(ids) = &ids {
            let ids = ids.iter().map(|p| p.to_bytes()).collect();
            swarm
                .behaviour_mut()
                .shard
                .send_request(&peer, Request::Members { ids });
        }
    }
}

/// Dials the known peers that are not connected (a dial already under way for
/// a peer is left to finish).
/// Whether a storage peer the home knows is unreachable.
/// The storage peers down now (at most a few: each is looked up).
fn down_storage(shared: &Shared) -> Vec<PeerId> {
    lock(&shared.peers)
        .list
        .iter()
        .filter(|p| p.storage && !p.connected)
        .map(|p| p.id)
        .take(8)
        .collect()
}

/// A lookup's answer: the down storage peers it names, at addresses not
/// known for them yet, are dialled there.
fn found_again(
    swarm: &mut libp2p::Swarm<crate::net::Behaviour>,
    shared: &Shared,
    peers: Vec<kad::PeerInfo>,
) {
    for info in peers {
        let fresh: Vec<Multiaddr> = {
            let mut t = lock(&shared.peers);
            let Some(p) = t.entry(info.peer_id).filter(|p| p.storage && !p.connected) else {
                continue;
            };
            let fresh: Vec<Multiaddr> = info
                .addrs
                .iter()
                .filter(|a| !is_unspecified(a))
                .map(bare)
                .filter(|a| !p.addrs.contains(a))
                .collect();
            for a in fresh.iter().rev() {
                p.addrs.insert(0, a.clone());
            }
            fresh
        };
        if !fresh.is_empty() {
            tracing::info!("storage peer {} found at {fresh:?}", info.peer_id);
            let opts = DialOpts::peer_id(info.peer_id)
                .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                .addresses(fresh)
                .build();
            let _ = swarm.dial(opts);
        }
    }
}

fn any_down(shared: &Shared) -> bool {
    lock(&shared.peers)
        .list
        .iter()
        .any(|p| p.storage && !p.connected)
}

pub(super) fn redial(swarm: &mut libp2p::Swarm<crate::net::Behaviour>, shared: &Shared) {
    let down: Vec<PeerEntry> = lock(&shared.peers)
        .list
        .iter()
        .filter(|p| !p.connected && !p.addrs.is_empty())
        .cloned()
        .collect();
    for p in down {
        if !swarm.is_connected(&p.id) {
            let _ = swarm.dial(DialOpts::peer_id(p.id).addresses(p.addrs).build());
        }
    }
}

/// A dial error in one line: libp2p's lists every address tried with its
/// whole error chain.
pub(super) fn short_dial_error(e: &libp2p::swarm::DialError) -> String {
    let mut text = e.to_string();
    if let libp2p::swarm::DialError::Transport(tries) = e
        && let Some((addr, err)) = tries.first()
    {
        text = format!("{addr}: {}", crate::net::root_cause(err));
    }
    text
}

/// An address without its trailing `/p2p/ID` (kept once, beside the peer id).
pub(super) fn bare(a: &Multiaddr) -> Multiaddr {
    a.iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect()
}
