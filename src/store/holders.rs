//! Who holds which shard: [`Holders`], a set of holder tags, and
//! [`HolderIndex`], the home's compact map from shard to holders, with no
//! ceiling on the number of peers (docs/DESIGN.md, "Holder sets and the
//! holder index").

use crate::chunk::ShardId;
use roaring::RoaringBitmap;
use std::collections::HashMap;
use std::ops::{BitAnd, BitAndAssign, BitOr, BitOrAssign, Sub, SubAssign};

/// A set of shard holders: storage peers by tag (0, 1, 2, …), and
/// [`Holders::LOCAL`] for this host's own store.
#[derive(Clone, Default, PartialEq)]
pub struct Holders(RoaringBitmap);

impl Holders {
    /// The tag of this host's own store (shards written before the volume had
    /// peers); above every peer tag.
    pub const LOCAL: usize = (1 << 31) - 2;

    pub fn new() -> Holders {
        Holders::default()
    }

    /// The set of one holder.
    pub fn one(tag: usize) -> Holders {
        let mut h = Holders::new();
        h.insert(tag);
        h
    }

    pub fn insert(&mut self, tag: usize) -> bool {
        self.0.insert(to_u32(tag))
    }

    pub fn remove(&mut self, tag: usize) -> bool {
        self.0.remove(to_u32(tag))
    }

    pub fn contains(&self, tag: usize) -> bool {
        u32::try_from(tag).is_ok_and(|t| self.0.contains(t))
    }

    pub fn len(&self) -> usize {
        self.0.len() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The tags, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().map(|t| t as usize)
    }

    /// Whether the two sets share a holder.
    pub fn meets(&self, other: &Holders) -> bool {
        !self.0.is_disjoint(&other.0)
    }
}

fn to_u32(tag: usize) -> u32 {
    assert!(tag <= Holders::LOCAL, "holder tag {tag} out of range");
    tag as u32
}

impl std::fmt::Debug for Holders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries(self.iter().map(|t| match t {
                Holders::LOCAL => "local".to_string(),
                t => t.to_string(),
            }))
            .finish()
    }
}

impl FromIterator<usize> for Holders {
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Holders {
        Holders(iter.into_iter().map(to_u32).collect())
    }
}

/// The union of the sets.
impl<'a> FromIterator<&'a Holders> for Holders {
    fn from_iter<I: IntoIterator<Item = &'a Holders>>(iter: I) -> Holders {
        let mut all = Holders::new();
        for h in iter {
            all |= h;
        }
        all
    }
}

macro_rules! set_op {
    ($op:ident, $f:ident, $assign:ident, $fa:ident) => {
        impl $op<&Holders> for &Holders {
            type Output = Holders;
            fn $f(self, other: &Holders) -> Holders {
                Holders($op::$f(&self.0, &other.0))
            }
        }
        impl $assign<&Holders> for Holders {
            fn $fa(&mut self, other: &Holders) {
                $assign::$fa(&mut self.0, &other.0)
            }
        }
    };
}
set_op!(BitOr, bitor, BitOrAssign, bitor_assign);
set_op!(BitAnd, bitand, BitAndAssign, bitand_assign);
set_op!(Sub, sub, SubAssign, sub_assign);

/// The index's key: the first 12 bytes of a shard id (a hint's key; see
/// DESIGN.md for the odds of two sharing one).
pub type Key = [u8; 12];

pub fn key(id: &ShardId) -> Key {
    id.0[..12].try_into().expect("12 bytes")
}

/// One shard's entry: 16 bytes.
#[derive(Clone, Copy)]
struct Entry {
    key: Key,
    word: u32,
}

/// A holder word: below `SIDE` one tag, from `SIDE` on a set in the side
/// table, `NONE` no holder (a tombstone in the sorted vector).
const SIDE: u32 = 1 << 31;
const NONE: u32 = u32::MAX;

/// Keys added since the last merge may wait in the map up to this many, or
/// an eighth of the sorted vector.
const MERGE_AT: usize = 4096;

/// The sets of the shards with more than one holder.
#[derive(Default)]
struct Side {
    sets: Vec<Holders>,
    free: Vec<u32>,
}

impl Side {
    fn get(&self, word: u32) -> Holders {
        match word {
            NONE => Holders::new(),
            w if w < SIDE => Holders::one(w as usize),
            w => self.sets[(w - SIDE) as usize].clone(),
        }
    }

    fn holds(&self, word: u32, tag: usize) -> bool {
        match word {
            NONE => false,
            w if w < SIDE => w as usize == tag,
            w => self.sets[(w - SIDE) as usize].contains(tag),
        }
    }

    fn add(&mut self, word: &mut u32, tag: usize) {
        match *word {
            NONE => *word = to_u32(tag),
            w if w < SIDE => {
                if w as usize != tag {
                    let set = Holders::from_iter([w as usize, tag]);
                    *word = SIDE + self.alloc(set);
                }
            }
            w => {
                self.sets[(w - SIDE) as usize].insert(tag);
            }
        }
    }

    /// Drops `tag` from the word; `NONE` is left when no holder remains.
    fn remove(&mut self, word: &mut u32, tag: usize) {
        match *word {
            NONE => {}
            w if w < SIDE => {
                if w as usize == tag {
                    *word = NONE
                }
            }
            w => {
                let slot = (w - SIDE) as usize;
                let set = &mut self.sets[slot];
                set.remove(tag);
                if set.len() <= 1 {
                    *word = set.iter().next().map_or(NONE, |t| t as u32);
                    self.sets[slot] = Holders::new();
                    self.free.push(slot as u32);
                }
            }
        }
    }

    fn alloc(&mut self, set: Holders) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                self.sets[slot as usize] = set;
                slot
            }
            None => {
                self.sets.push(set);
                (self.sets.len() - 1) as u32
            }
        }
    }
}

/// Where each shard is, for as many shards as a home holds (16 bytes each in
/// a sorted vector; keys added since the last merge in a small map).
#[derive(Default)]
pub struct HolderIndex {
    sorted: Vec<Entry>,
    /// Keys not in `sorted` (never both), merged in when it grows.
    recent: HashMap<Key, u32>,
    side: Side,
    /// Entries of `sorted` with no holder left, dropped at the next merge.
    tombs: usize,
}

impl HolderIndex {
    pub fn new() -> HolderIndex {
        HolderIndex::default()
    }

    /// Shards with at least one holder.
    pub fn len(&self) -> usize {
        self.sorted.len() - self.tombs + self.recent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn find(&self, k: &Key) -> Option<usize> {
        self.sorted.binary_search_by(|e| e.key.cmp(k)).ok()
    }

    /// The holders of a shard (empty where none is known).
    pub fn get(&self, id: &ShardId) -> Holders {
        let k = key(id);
        match self.recent.get(&k) {
            Some(&w) => self.side.get(w),
            None => self
                .find(&k)
                .map_or_else(Holders::new, |i| self.side.get(self.sorted[i].word)),
        }
    }

    /// Records that `tag` holds the shard.
    pub fn add(&mut self, id: &ShardId, tag: usize) {
        let k = key(id);
        if let Some(i) = self.find(&k) {
            let word = &mut self.sorted[i].word;
            if *word == NONE {
                self.tombs -= 1;
            }
            self.side.add(word, tag);
            return;
        }
        let word = self.recent.entry(k).or_insert(NONE);
        self.side.add(word, tag);
        if self.recent.len() >= MERGE_AT.max(self.sorted.len() / 8) {
            self.merge();
        }
    }

    /// Records that `tag` no longer holds the shard.
    pub fn remove(&mut self, id: &ShardId, tag: usize) {
        let k = key(id);
        if let Some(word) = self.recent.get_mut(&k) {
            self.side.remove(word, tag);
            if *word == NONE {
                self.recent.remove(&k);
            }
        } else if let Some(i) = self.find(&k) {
            let word = &mut self.sorted[i].word;
            if *word != NONE {
                self.side.remove(word, tag);
                if *word == NONE {
                    self.tombs += 1;
                }
            }
        }
    }

    /// One page of `tag`'s inventory: of the shards with ids in
    /// (`after`, `upto`] (`None`: the start or the end of the id space), it
    /// holds exactly `listed` (in increasing order). `tag` is added to those
    /// and dropped from the rest of the range, except where `keep` says the
    /// entry's key changed since the inventory was taken. Entries added since the
    /// last [`HolderIndex::settle`] are not swept: settle before a survey.
    pub fn inventory(
        &mut self,
        tag: usize,
        after: Option<&ShardId>,
        upto: Option<&ShardId>,
        listed: &[ShardId],
        keep: &dyn Fn(&Key) -> bool,
    ) {
        let lo = after.map_or(0, |a| {
            let a = key(a);
            self.sorted.partition_point(|e| e.key <= a)
        });
        let hi = upto.map_or(self.sorted.len(), |u| {
            let u = key(u);
            self.sorted.partition_point(|e| e.key <= u)
        });
        let mut next = listed.iter().map(key).peekable();
        for e in &mut self.sorted[lo..hi.max(lo)] {
            while next.next_if(|k| *k < e.key).is_some() {}
            let is_listed = next.next_if(|k| *k == e.key).is_some();
            if is_listed || !self.side.holds(e.word, tag) || keep(&e.key) {
                continue;
            }
            self.side.remove(&mut e.word, tag);
            if e.word == NONE {
                self.tombs += 1;
            }
        }
        for id in listed {
            self.add(id, tag);
        }
    }

    /// Merges the keys added since the last merge into the sorted vector.
    pub fn settle(&mut self) {
        if !self.recent.is_empty() || self.tombs > 0 {
            self.merge();
        }
    }

    /// Sorts the new keys, drops tombstones, then merges from the back into
    /// the vector grown in place: the vector is never copied whole.
    fn merge(&mut self) {
        let mut new: Vec<Entry> = self
            .recent
            .drain()
            .map(|(key, word)| Entry { key, word })
            .collect();
        new.sort_unstable_by_key(|e| e.key);
        if self.tombs > 0 {
            self.sorted.retain(|e| e.word != NONE);
            self.tombs = 0;
        }
        let old = self.sorted.len();
        self.sorted.reserve_exact(new.len());
        self.sorted.resize(
            old + new.len(),
            Entry {
                key: [0; 12],
                word: NONE,
            },
        );
        let (mut i, mut j) = (old, new.len());
        while j > 0 {
            let w = i + j - 1;
            if i > 0 && self.sorted[i - 1].key > new[j - 1].key {
                self.sorted[w] = self.sorted[i - 1];
                i -= 1;
            } else {
                self.sorted[w] = new[j - 1];
                j -= 1;
            }
        }
        // The map's room is kept for the next keys, but not past the next
        // merge's size.
        self.recent.shrink_to(MERGE_AT.max(self.sorted.len() / 8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn id(n: u64) -> ShardId {
        ShardId(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    #[test]
    fn sets_combine() {
        let a = Holders::from_iter([1, 5, 200]);
        let b = Holders::from_iter([5, Holders::LOCAL]);
        assert_eq!(
            (&a | &b).iter().collect::<Vec<_>>(),
            [1, 5, 200, Holders::LOCAL]
        );
        assert_eq!((&a & &b).iter().collect::<Vec<_>>(), [5]);
        assert_eq!((&a - &b).len(), 2);
        assert!(a.meets(&b) && !a.meets(&Holders::one(Holders::LOCAL)));
        assert!(!Holders::new().contains(usize::MAX));
        let all: Holders = [a.clone(), b.clone()].iter().collect();
        assert_eq!(all, &a | &b);
    }

    #[test]
    fn a_thousand_peers_hold_one_shard_each() {
        let mut ix = HolderIndex::new();
        for n in 0..20_000u64 {
            ix.add(&id(n), (n % 1000) as usize);
        }
        assert_eq!(ix.len(), 20_000);
        assert_eq!(ix.get(&id(1999)), Holders::one(999));
        ix.add(&id(1999), Holders::LOCAL);
        assert_eq!(ix.get(&id(1999)), Holders::from_iter([999, Holders::LOCAL]));
        ix.remove(&id(1999), 999);
        ix.remove(&id(1999), Holders::LOCAL);
        assert!(ix.get(&id(1999)).is_empty());
        assert_eq!(ix.len(), 19_999);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(u64, usize),
        Remove(u64, usize),
        Settle,
        /// tag, range of the id numbers' sorted positions, which of them
        /// it lists, which are kept.
        Inventory(usize, usize, usize, Vec<bool>, Vec<bool>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..300u64, 0..4usize).prop_map(|(n, t)| Op::Add(n, t)),
            3 => (0..300u64, 0..4usize).prop_map(|(n, t)| Op::Remove(n, t)),
            1 => Just(Op::Settle),
            2 => (0..4usize, 1..=300usize, any::<u16>(), prop::collection::vec(any::<bool>(), 300),
                  prop::collection::vec(prop::bool::weighted(0.1), 300))
                .prop_map(|(t, b, a, l, k)| Op::Inventory(t, a as usize % (b + 1), b, l, k)),
        ]
    }

    proptest! {
        /// The index answers as a map from full ids to sets does, through
        /// adds, removes, merges and inventory pages.
        #[test]
        fn index_matches_a_plain_map(ops in prop::collection::vec(op(), 1..400)) {
            // Every id number, in the order of its id (an inventory's order).
            let mut order: Vec<ShardId> = (0..300).map(id).collect();
            order.sort_by_key(|i| i.0);
            let mut ix = HolderIndex::new();
            let mut model: BTreeMap<[u8; 32], BTreeSet<usize>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Add(n, t) => {
                        ix.add(&id(n), t);
                        model.entry(id(n).0).or_default().insert(t);
                    }
                    Op::Remove(n, t) => {
                        ix.remove(&id(n), t);
                        if let Some(s) = model.get_mut(&id(n).0) {
                            s.remove(&t);
                        }
                    }
                    Op::Settle => ix.settle(),
                    Op::Inventory(t, a, b, l, k) => {
                        ix.settle();
                        // The page covers order[a..b]; b = 300 is the last page.
                        let after = a.checked_sub(1).map(|i| order[i]);
                        let upto = (b < 300).then(|| order[b - 1]);
                        let range: Vec<ShardId> = order[a..b].to_vec();
                        let listed: Vec<ShardId> = range.iter().zip(&l).filter(|(_, l)| **l).map(|(i, _)| *i).collect();
                        let kept: BTreeSet<[u8; 12]> = range.iter().zip(&k).filter(|(_, k)| **k).map(|(i, _)| key(i)).collect();
                        ix.inventory(t, after.as_ref(), upto.as_ref(), &listed, &|k| kept.contains(k));
                        for i in &range {
                            let s = model.entry(i.0).or_default();
                            if listed.contains(i) {
                                s.insert(t);
                            } else if !kept.contains(&key(i)) {
                                s.remove(&t);
                            }
                        }
                    }
                }
            }
            model.retain(|_, s| !s.is_empty());
            prop_assert_eq!(ix.len(), model.len());
            for n in 0..300 {
                let want: Holders = model.get(&id(n).0).into_iter().flatten().copied().collect();
                prop_assert_eq!(ix.get(&id(n)), want);
            }
        }
    }
}
