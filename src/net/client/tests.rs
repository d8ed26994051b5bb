//! Placement, the put state machine, fetches and surveys against in-process
//! fake peers (`fake.rs`): dead, full, slow, lying and mute ones, in
//! milliseconds. The multi-process fs-tests cover the same end to end.

use super::fake::{FakeMesh, Mode};
use super::*;

/// `n` shards of one chunk: distinct bytes, ids their hashes.
fn chunk(n: usize, seed: u32) -> Vec<(ShardId, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let b: Vec<u8> = (0..200u32)
                .map(|j| (j * 31 + seed * 7 + i as u32 * 13) as u8)
                .chain(seed.to_le_bytes())
                .chain((i as u32).to_le_bytes())
                .collect();
            (ShardId::of(&b), b)
        })
        .collect()
}

fn put(store: &MeshStore, c: &[(ShardId, Vec<u8>)], need: usize) -> Result<(), StoreError> {
    let shards = c.iter().map(|(id, b)| (*id, b.clone().into())).collect();
    store.put_chunk(shards, need)
}

fn ids(c: &[(ShardId, Vec<u8>)]) -> Vec<ShardId> {
    c.iter().map(|(id, _)| *id).collect()
}

/// Every shard on exactly one peer, and no peer with two shards of the chunk.
fn assert_spread(mesh: &FakeMesh, c: &[(ShardId, Vec<u8>)]) {
    for (id, _) in c {
        let holders = mesh.peers.iter().filter(|p| p.holds(id)).count();
        assert_eq!(holders, 1, "shard {id} on {holders} peers");
    }
    for i in 0..mesh.peers.len() {
        assert!(
            mesh.held_by(i, &ids(c)) <= 1,
            "peer {i} holds two shards of a chunk"
        );
    }
}

#[test]
fn a_chunk_spreads_over_distinct_peers_and_the_load_evens_out() {
    let mesh = FakeMesh::new(&[Mode::Ok; 8]);
    let store = mesh.store();
    let mut per_peer = [0usize; 8];
    for seed in 0..40 {
        let c = chunk(6, seed);
        put(&store, &c, 5).unwrap();
        store.sync().unwrap();
        assert_spread(&mesh, &c);
        for (i, n) in per_peer.iter_mut().enumerate() {
            *n += mesh.held_by(i, &ids(&c));
        }
    }
    // 240 shards over 8 peers: rendezvous hashing gives each a fair share.
    assert!(
        per_peer.iter().all(|&n| (15..=45).contains(&n)),
        "{per_peer:?}"
    );
}

#[test]
fn a_full_peer_is_passed_over() {
    let mut modes = vec![Mode::Ok; 7];
    modes[0] = Mode::Full;
    let mesh = FakeMesh::new(&modes);
    let store = mesh.store();
    for seed in 0..10 {
        let c = chunk(6, seed);
        put(&store, &c, 6).unwrap();
        assert_spread(&mesh, &c);
        assert_eq!(mesh.held_by(0, &ids(&c)), 0);
    }
}

#[test]
fn a_stalled_peer_costs_a_write_one_straggler_wait_not_the_timeout() {
    let mut modes = vec![Mode::Ok; 7];
    modes[3] = Mode::Slow(Duration::from_secs(3));
    let mesh = FakeMesh::new(&modes);
    let store = mesh.store();
    for seed in 0..6 {
        let c = chunk(6, seed);
        let start = Instant::now();
        put(&store, &c, 6).unwrap();
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "put took {:?}",
            start.elapsed()
        );
        // Every shard landed on a peer that answered in time.
        for (id, _) in &c {
            let fast = (0..7).filter(|&i| i != 3).any(|i| mesh.peers[i].holds(id));
            assert!(fast, "shard {id} only on the stalled peer");
        }
    }
}

#[test]
fn a_lying_peer_is_caught_and_the_shard_read_from_another() {
    let mesh = FakeMesh::new(&[Mode::Lying, Mode::Ok, Mode::Ok]);
    let store = mesh.store();
    let (id, bytes) = chunk(1, 9).remove(0);
    for p in &mesh.peers[..2] {
        lock(&p.shards).insert(id, bytes.clone());
    }
    let survey = store.survey().unwrap();
    assert_eq!(survey.answered.len(), 3);
    // Holders are tried in no set order: read until the liar has been asked
    // (every read returns the true bytes meanwhile).
    let start = Instant::now();
    while mesh.peers[0].holds(&id) {
        assert_eq!(store.get(&id).unwrap(), bytes);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the bad copy stays"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The liar is no holder any more: the store asked it to drop its copy.
    assert!(!store.placement(&[id]).unwrap()[0].contains(0));
    assert_eq!(store.get(&id).unwrap(), bytes);
}

/// A range of a shard comes from a holder; a holder that predates
/// `GetRange` is asked for the whole shard instead, verified, and cut.
#[test]
fn a_range_is_read_from_a_holder_or_cut_from_the_whole_shard() {
    for mode in [Mode::Ok, Mode::NoRanges] {
        let mesh = FakeMesh::new(&[mode]);
        let store = mesh.store();
        let (id, bytes) = chunk(1, 3).remove(0);
        lock(&mesh.peers[0].shards).insert(id, bytes.clone());
        store.survey().unwrap();
        assert_eq!(
            store.get_range(&id, 10, 50).unwrap(),
            &bytes[10..60],
            "{mode:?}"
        );
        // Past the end: what there is.
        assert_eq!(
            store.get_range(&id, 190, 100).unwrap(),
            &bytes[190..],
            "{mode:?}"
        );
    }
}

#[test]
fn a_survey_hears_from_every_peer_or_says_why_not() {
    let mesh = FakeMesh::new(&[
        Mode::Ok,
        Mode::Ok,
        Mode::Dead,
        Mode::Ok,
        Mode::Mute,
        Mode::Ok,
    ]);
    let store = mesh.store();
    let c = chunk(6, 1);
    for (i, (id, b)) in c.iter().enumerate() {
        lock(&mesh.peers[i].shards).insert(*id, b.clone());
    }
    let start = Instant::now();
    let s = store.survey().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(s.answered, Holders::from_iter([0, 1, 3, 5]));
    assert_eq!(s.unreachable.len(), 1);
    assert_eq!(s.unreachable[0].id, mesh.peers[2].id.to_string());
    assert!(
        s.unreachable[0].why.contains("refused"),
        "{:?}",
        s.unreachable
    );
    assert_eq!(s.silent.len(), 1);
    assert_eq!(s.silent[0].id, mesh.peers[4].id.to_string());
    // Holders counted from the peers that answered only.
    let held = store.placement(&ids(&c)).unwrap();
    let heard: Vec<bool> = held.iter().map(|h| h.meets(&s.answered)).collect();
    assert_eq!(heard, [true, true, false, true, false, true]);
}

#[test]
fn with_every_peer_dead_a_put_says_so() {
    let mesh = FakeMesh::new(&[Mode::Dead; 3]);
    let store = mesh.store();
    let err = put(&store, &chunk(6, 2), 5).unwrap_err().to_string();
    assert!(err.contains("no storage peer is reachable"), "{err}");
}

#[test]
fn repair_rebuilds_a_dead_peers_shards_onto_the_live_ones() {
    use crate::data::{Engine, EngineConfig};
    use crate::meta::{MetaStore, VolumeParams};
    let mesh = FakeMesh::new(&[Mode::Ok; 8]);
    let dir = tempfile::tempdir().unwrap();
    let params = VolumeParams {
        volume_id: [7; 16],
        chunk_size: 64 << 10,
        data_shards: 4,
        parity_shards: 2,
        inline_max: 1024,
    };
    let meta = MetaStore::open(&dir.path().join("meta"), Some(params)).unwrap();
    let key = crate::chunk::VolumeKey::generate();
    let engine = Engine::new(meta, mesh.store(), key, EngineConfig::default()).unwrap();
    let f = engine
        .create(crate::types::Ino::ROOT, b"f", 0o644, 0, 0)
        .unwrap();
    let data: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    engine.write(f.ino, 0, &data).unwrap();
    engine.fsync(f.ino).unwrap();
    let healthy = engine.redundancy(false, &|_, _| {}).unwrap();
    assert_eq!(healthy.full, healthy.chunks);
    assert_eq!(healthy.survives, Some(2));

    mesh.kill(2);
    mesh.kill(5);
    let hurt = engine.redundancy(false, &|_, _| {}).unwrap();
    assert!(hurt.reduced + hurt.critical > 0, "{hurt:?}");
    assert_eq!(hurt.lost, 0);
    assert_eq!(hurt.unreachable.len(), 2);

    let r = engine.redundancy(true, &|_, _| {}).unwrap();
    assert!(r.rebuilt > 0 && r.failures.is_empty(), "{r:?}");
    assert_eq!(r.full, r.chunks, "{r:?}");
    assert_eq!(r.survives, Some(2), "six live peers for six shards");
    // The rebuilt shards went to the live peers, and the data reads back
    // with the dead peers still dead.
    let back = engine.read(f.ino, 0, data.len()).unwrap();
    assert!(back == data);
}

#[test]
fn an_inventory_out_of_order_or_longer_than_its_count_is_cut_off() {
    // A peer whose count says 0 but which lists shards: more than it holds.
    let mesh = FakeMesh::new(&[Mode::Ok, Mode::Ok]);
    let store = mesh.store();
    for i in 0..1500u32 {
        let b = i.to_le_bytes().to_vec();
        lock(&mesh.peers[1].shards).insert(ShardId::of(&b), b);
    }
    mesh.peers[1].understate_count();
    let s = store.survey().unwrap();
    assert_eq!(s.answered, Holders::one(0));
    assert!(
        s.silent[0].why.contains("more shards than"),
        "{:?}",
        s.silent
    );
}

#[test]
fn a_peer_that_acknowledges_puts_it_does_not_keep_is_caught_by_repair() {
    let mesh = FakeMesh::new(&[Mode::LiesDone, Mode::LiesDone, Mode::Ok]);
    let store = mesh.store();
    let c = chunk(2, 5);
    let id_list = ids(&c);
    // Repair places shard 1 of a chunk whose shard 0 is on the honest peer.
    lock(&mesh.peers[2].shards).insert(c[0].0, c[0].1.clone());
    store.survey().unwrap();
    lock(&mesh.peers[2].shards).remove(&c[0].0);
    store.place(&id_list, &[1], &[&c[1].1]).unwrap();
    assert!(
        mesh.peers[2].holds(&id_list[1]),
        "the shard is on the honest peer"
    );
    assert_eq!(
        store.placement(&id_list[1..]).unwrap()[0],
        Holders::one(2),
        "only the honest peer is its holder"
    );
    // A liar caught once is passed over from then on.
    let c2 = chunk(1, 6);
    store.place(&ids(&c2), &[0], &[&c2[0].1]).unwrap();
    assert!(mesh.peers[2].holds(&c2[0].0));
}

#[test]
fn weighted_rendezvous_follows_capacity_and_keeps_the_plain_order_for_equal_weights() {
    let peers: Vec<PeerId> = (0..2).map(|_| PeerId::random()).collect();
    let mut heavy_first = 0u32;
    let n = 20_000u32;
    for i in 0..n {
        let key = ShardId(*blake3::hash(&i.to_le_bytes()).as_bytes());
        let plain = score(&key, &peers[0]) > score(&key, &peers[1]);
        let equal = weighted_score(&key, &peers[0], 7.0) > weighted_score(&key, &peers[1], 7.0);
        assert_eq!(plain, equal, "equal weights keep the plain order");
        if weighted_score(&key, &peers[1], 2.0) > weighted_score(&key, &peers[0], 1.0) {
            heavy_first += 1;
        }
    }
    // Twice the capacity: ranked first two times in three.
    let share = heavy_first as f64 / n as f64;
    assert!((share - 2.0 / 3.0).abs() < 0.02, "{share}");
}
