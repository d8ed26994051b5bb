use super::*;
use futures_util::StreamExt;
use libp2p::core::transport::{DialOpts, ListenerId, MemoryTransport, PortUse, TransportEvent};
use libp2p::core::upgrade::Version;
use libp2p::core::{Endpoint, Transport};
use proptest::prelude::*;

fn key(b: u8) -> MeshKey {
    MeshKey([b; 32])
}

fn peer() -> PeerId {
    Keypair::generate_ed25519().public().to_peer_id()
}

const SEED: [u8; 32] = [7; 32];

#[test]
fn a_ring_that_never_rotated_is_the_32_bytes_older_datamesh_reads() {
    let ring = MeshKeys::single(key(1));
    assert_eq!(ring.encode(), vec![1; 32]);
    let back = MeshKeys::decode(&ring.encode(), "t").unwrap();
    assert_eq!(back, ring);
    assert_eq!(back.generation(), 0);
    assert_eq!(back.current(), &key(1));
}

#[test]
fn a_rotation_adds_a_key_of_the_next_generation_and_keeps_the_older_ones() {
    let (a, b) = (peer(), peer());
    let ring = MeshKeys::single(key(1))
        .rotate(&SEED, vec![a])
        .unwrap()
        .rotate(&SEED, vec![a, b])
        .unwrap();
    assert_eq!(ring.generation(), 2);
    assert_ne!(ring.current(), &key(1));
    assert_eq!(ring.keys.len(), 3);
    assert_eq!(ring.allowed(), &[a, b]);
    let back = MeshKeys::decode(&ring.encode(), "t").unwrap();
    assert_eq!(back, ring);
    // Another seed makes other keys: only the authority's holders can rotate.
    let other = MeshKeys::single(key(1)).rotate(&[8; 32], vec![]).unwrap();
    assert_ne!(other.current(), &ring.keys[1].key);
}

#[test]
fn a_ring_keeps_at_most_max_keys() {
    let mut ring = MeshKeys::single(key(1));
    for _ in 0..20 {
        ring = ring.rotate(&SEED, vec![]).unwrap();
    }
    assert_eq!(ring.generation(), 20);
    assert_eq!(ring.keys.len(), MAX_KEYS);
    assert_eq!(MeshKeys::decode(&ring.encode(), "t").unwrap(), ring);
}

#[test]
fn an_older_key_is_kept_only_with_the_peers_the_rotation_allowed() {
    let (friend, revoked) = (peer(), peer());
    let ring = MeshKeys::single(key(1))
        .rotate(&SEED, vec![friend])
        .unwrap();
    assert!(
        ring.may_use(1, &revoked),
        "the newest key: anyone who holds it"
    );
    assert!(ring.may_use(0, &friend));
    assert!(!ring.may_use(0, &revoked));
    // What binaries from before rotation speak means the newest key.
    assert_eq!(ring.by_name(LEGACY_NAME).unwrap().generation, 1);
    assert!(ring.by_name("/datamesh/noise/1/0000000000000000").is_none());
}

#[test]
fn a_recovering_ring_finds_the_generation_the_home_rotated_to() {
    let mut ring = MeshKeys::single(key(1));
    let mut kit_keys = vec![ring.current().clone()];
    for _ in 0..10 {
        ring = ring.rotate(&SEED, vec![]).unwrap();
        kit_keys.push(ring.current().clone());
    }
    // A kit made at generation 3 reaches peers at generation 10.
    let recovering = MeshKeys::recovering(kit_keys[3].clone(), SEED);
    assert_eq!(recovering.generation(), 3);
    assert!(recovering.by_name(&ring.keys[0].name).is_some());
    let adopted = recovering.adopt(10).unwrap();
    assert_eq!(adopted.generation(), 10);
    assert_eq!(adopted.current(), ring.current());
    assert!(adopted.adopt(11).is_none(), "only a recovering ring adopts");
    // A kit from before any rotation: its key, newest guesses first.
    let first = MeshKeys::recovering(key(1), SEED);
    assert_eq!(first.generation(), 0);
    assert_eq!(first.current(), &key(1));
    assert_eq!(first.keys[0].generation, RECOVERY_WINDOW);
    // Saved before it adopts: the kit's key only (what older datamesh reads).
    assert_eq!(first.encode(), vec![1; 32]);
}

#[test]
fn only_a_newer_ring_replaces_the_live_one() {
    let one = MeshKeys::single(key(1)).rotate(&SEED, vec![]).unwrap();
    let live = LiveKeys::new(one.clone());
    assert!(!live.take_newer(MeshKeys::single(key(2))));
    assert!(!live.take_newer(one.clone()));
    assert!(live.take_newer(one.rotate(&SEED, vec![]).unwrap()));
    assert_eq!(live.generation(), 2);
}

#[test]
fn damaged_rings_are_refused() {
    let ring = MeshKeys::single(key(1))
        .rotate(&SEED, vec![peer()])
        .unwrap();
    let good = ring.encode();
    for bad in [
        &good[..good.len() - 1],
        &good[1..],
        &[0u8; 31][..],
        &[0u8; 33][..],
        b"dmmesh2\n",
    ] {
        assert!(MeshKeys::decode(bad, "t").is_err());
    }
    let file = |version, generation, keys: Vec<(u64, [u8; 32])>| {
        let mut out = MAGIC.to_vec();
        out.extend(
            postcard::to_allocvec(&RingFile {
                version,
                generation,
                keys,
                allowed: vec![],
            })
            .unwrap(),
        );
        out
    };
    assert!(MeshKeys::decode(&file(1, 2, vec![(2, [1; 32]), (1, [2; 32])]), "t").is_ok());
    for bad in [
        file(2, 2, vec![(2, [1; 32])]),
        file(1, 2, vec![]),
        file(1, 3, vec![(2, [1; 32])]),
        file(1, 2, vec![(2, [1; 32]), (2, [2; 32])]),
        file(1, 9, (1..=9).rev().map(|g| (g, [g as u8; 32])).collect()),
    ] {
        assert!(MeshKeys::decode(&bad, "t").is_err());
    }
}

proptest! {
    #[test]
    fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = MeshKeys::decode(&bytes, "t");
        let mut framed = MAGIC.to_vec();
        framed.extend(&bytes);
        let _ = MeshKeys::decode(&framed, "t");
    }
}

type Side = libp2p::core::transport::Boxed<PeerId>;

/// A transport with the mesh's handshake, as a swarm has it.
fn mesh(kp: &Keypair, live: LiveKeys) -> Side {
    MemoryTransport::default()
        .upgrade(Version::V1)
        .authenticate(MeshSecurity::new(kp, live))
        .multiplex(libp2p::yamux::Config::default())
        .map(|(p, _), _| p)
        .boxed()
}

/// One connection from `client` to `server` over memory: the peer id each
/// side authenticated, or why it failed.
async fn meet(
    mut server: Side,
    mut client: Side,
) -> (Result<PeerId, String>, Result<PeerId, String>) {
    let port = rand::random::<u64>().max(1);
    let addr: libp2p::Multiaddr = format!("/memory/{port}").parse().unwrap();
    server.listen_on(ListenerId::next(), addr.clone()).unwrap();
    let opts = DialOpts {
        role: Endpoint::Dialer,
        port_use: PortUse::New,
    };
    let dial = client.dial(addr, opts).unwrap();
    let accept = async {
        loop {
            if let Some(TransportEvent::Incoming { upgrade, .. }) = server.next().await {
                return upgrade.await.map_err(|e| crate::net::root_cause(&e));
            }
        }
    };
    let (d, l) = futures_util::join!(dial, accept);
    (d.map_err(|e| crate::net::root_cause(&e)), l)
}

/// A listener and a dialer, each with its own identity and ring.
async fn handshake(
    listener: (&Keypair, MeshKeys),
    dialer: (&Keypair, MeshKeys),
) -> (Result<PeerId, String>, Result<PeerId, String>) {
    meet(
        mesh(listener.0, LiveKeys::new(listener.1)),
        mesh(dialer.0, LiveKeys::new(dialer.1)),
    )
    .await
}

#[tokio::test]
async fn a_revoked_device_fails_the_handshake_whatever_id_it_takes() {
    let (home, friend, revoked) = (
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
    );
    let old = MeshKeys::single(key(1));
    let new = old
        .rotate(&SEED, vec![friend.public().to_peer_id()])
        .unwrap();
    // Both on the newest key: any holder of it.
    let (d, l) = handshake((&home, new.clone()), (&revoked, new.clone())).await;
    assert!(d.is_ok() && l.is_ok(), "{d:?} {l:?}");
    // A device that missed the rotation and is allowed: still gets in.
    let (d, l) = handshake((&home, new.clone()), (&friend, old.clone())).await;
    assert_eq!(l.unwrap(), friend.public().to_peer_id());
    assert!(d.is_ok());
    // The revoked device, with the old key, under its id or a new one.
    for kp in [revoked, Keypair::generate_ed25519()] {
        let (_, l) = handshake((&home, new.clone()), (&kp, old.clone())).await;
        let e = l.unwrap_err();
        assert!(e.contains("did not allow"), "{e}");
    }
    // A host with the new ring does not keep a connection it dialed to a
    // revoked device that listens with the old key either.
    let stranger = Keypair::generate_ed25519();
    let (d, _) = handshake((&stranger, old.clone()), (&home, new.clone())).await;
    assert!(d.is_err());
    // Another mesh's key never gets through.
    let (d, l) = handshake((&home, new), (&friend, MeshKeys::single(key(9)))).await;
    assert!(d.is_err() && l.is_err());
}

#[tokio::test]
async fn binaries_from_before_rotation_still_meet_on_the_legacy_name() {
    // A plain Noise listener with the same prologue: what an older peer runs.
    let (old_peer, home) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let older = MemoryTransport::default()
        .upgrade(Version::V1)
        .authenticate(
            noise::Config::new(&old_peer)
                .unwrap()
                .with_prologue(key(1).prologue()),
        )
        .multiplex(libp2p::yamux::Config::default())
        .map(|(p, _), _| p)
        .boxed();
    let ring = LiveKeys::new(MeshKeys::single(key(1)));
    let (d, l) = meet(older, mesh(&home, ring)).await;
    assert_eq!(d.unwrap(), old_peer.public().to_peer_id());
    assert_eq!(l.unwrap(), home.public().to_peer_id());
}

#[tokio::test]
async fn a_recovering_home_reaches_peers_that_rotated_since_its_kit_and_takes_up_their_generation()
{
    let (peer_kp, home) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let mut ring = MeshKeys::single(key(1));
    for _ in 0..5 {
        ring = ring.rotate(&SEED, vec![]).unwrap();
    }
    let live = LiveKeys::new(MeshKeys::recovering(key(1), SEED));
    let (d, l) = meet(
        mesh(&peer_kp, LiveKeys::new(ring.clone())),
        mesh(&home, live.clone()),
    )
    .await;
    assert!(d.is_ok() && l.is_ok(), "{d:?} {l:?}");
    assert_eq!(live.generation(), 5);
    assert_eq!(live.get().current(), ring.current());
}
