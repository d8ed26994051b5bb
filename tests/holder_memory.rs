//! The home's memory per shard for knowing where shards are: at most 24
//! bytes (docs/DESIGN.md, "Holder sets and the holder index"), measured as
//! the heap bytes the index holds, with a counting allocator. Its own test
//! binary, so that no other test allocates while it counts.

use datamesh::chunk::ShardId;
use datamesh::store::{HolderIndex, Holders};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only the
// byte count is kept on the side.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn id(n: u64) -> ShardId {
    ShardId(*blake3::hash(&n.to_le_bytes()).as_bytes())
}

#[test]
fn the_index_keeps_at_most_24_bytes_per_shard() {
    const SHARDS: u64 = 1_000_000;
    // 300 peers: past any fixed-width mask.
    const PEERS: u64 = 300;
    let before = LIVE.load(Ordering::Relaxed);
    let mut ix = HolderIndex::new();
    let mut worst = 0f64;
    for n in 0..SHARDS {
        ix.add(&id(n), (n % PEERS) as usize);
        // A shard in a thousand has a second holder (a straggler's copy).
        if n % 1000 == 0 {
            ix.add(&id(n), ((n + 1) % PEERS) as usize);
        }
        if n > 100_000 && n % 50_000 == 0 {
            let per = (LIVE.load(Ordering::Relaxed) - before) as f64 / n as f64;
            worst = worst.max(per);
        }
    }
    let per = (LIVE.load(Ordering::Relaxed) - before) as f64 / SHARDS as f64;
    worst = worst.max(per);
    println!(
        "holder index: {per:.1} bytes per shard at {SHARDS} shards, worst {worst:.1} while filling"
    );
    assert!(worst <= 24.0, "{worst:.1} bytes per shard");
    assert_eq!(ix.len(), SHARDS as usize);
    assert_eq!(ix.get(&id(1000)), Holders::from_iter([100, 101]));
    assert_eq!(ix.get(&id(299)), Holders::one(299));
    // A survey's pages (the whole inventory of peer 7, in id order) change
    // entries in place: no second copy of the index.
    ix.settle();
    let settled = LIVE.load(Ordering::Relaxed) - before;
    let mut held: Vec<ShardId> = (0..SHARDS).filter(|n| n % PEERS == 7).map(id).collect();
    held.sort_by_key(|i| i.0);
    held.retain(|i| i.0[0] != 0);
    let page_peak = {
        let mut peak = 0isize;
        let mut after = None;
        for page in held.chunks(16_384) {
            let upto = page.last().copied();
            ix.inventory(7, after.as_ref(), upto.as_ref(), page, &|_| false);
            after = upto;
            peak = peak.max(LIVE.load(Ordering::Relaxed) - before);
        }
        ix.inventory(7, after.as_ref(), None, &[], &|_| false);
        peak
    };
    let held_ids = held.len() as isize * 32;
    assert!(
        page_peak - held_ids <= settled + settled / 8,
        "a survey grew the index from {settled} to {page_peak} bytes"
    );
    // Peer 7 did not list the shards whose ids start with a zero byte.
    let dropped = (0..SHARDS)
        .filter(|n| n % PEERS == 7 && id(*n).0[0] == 0)
        .count();
    assert!(dropped > 0);
    assert_eq!(ix.len(), SHARDS as usize - dropped);
}
