//! What every engine must do, run against each.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn engines() -> Vec<(Box<dyn Kv>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksKv::open(&dir.path().join("db"), true).unwrap();
    vec![
        (Box::new(rocks), Some(dir)),
        (Box::new(MemoryKv::new()), None),
    ]
}

fn all(kv: &dyn Kv, t: Table, start: &[u8], prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    kv.scan(t, start, prefix, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        Ok(true)
    })
    .unwrap();
    out
}

fn done(c: Committed) -> Rev {
    match c {
        Committed::Done(r) => r,
        Committed::Conflict(i) => panic!("guard {i} failed"),
    }
}

/// Tables are apart, scans are ordered and stop at their prefix, a delete
/// removes, a commit is all or nothing, and revisions grow.
#[test]
fn tables_scans_and_commits_on_every_engine() {
    for (kv, _dir) in engines() {
        let kv = &*kv;
        let mut t = Txn::default();
        t.put(Table::Inodes, b"a1".to_vec(), b"x".to_vec());
        t.put(Table::Inodes, b"a2".to_vec(), b"y".to_vec());
        t.put(Table::Inodes, b"b1".to_vec(), b"z".to_vec());
        t.put(Table::Dentries, b"a1".to_vec(), b"other".to_vec());
        let r1 = done(kv.commit(t).unwrap());
        assert_eq!(kv.revision(), r1, "{}", kv.engine());
        assert_eq!(kv.get(Table::Inodes, b"a1").unwrap().unwrap().0, b"x");
        assert_eq!(kv.get(Table::Dentries, b"a1").unwrap().unwrap().0, b"other");
        assert_eq!(kv.get(Table::Chunks, b"a1").unwrap(), None);
        let keys: Vec<_> = all(kv, Table::Inodes, b"a", b"a")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            vec![b"a1".to_vec(), b"a2".to_vec()],
            "{}",
            kv.engine()
        );
        assert_eq!(all(kv, Table::Inodes, b"a2", b"").len(), 2);
        let mut n = 0;
        kv.scan(Table::Inodes, b"", b"", &mut |_, _| {
            n += 1;
            Ok(n < 2)
        })
        .unwrap();
        assert_eq!(n, 2, "a scan stops when told");
        let mut t = Txn::default();
        t.delete(Table::Inodes, b"a1".to_vec());
        t.put(Table::Inodes, b"a2".to_vec(), b"y2".to_vec());
        let r2 = done(kv.commit(t).unwrap());
        assert!(r2 > r1, "{}", kv.engine());
        assert_eq!(kv.get(Table::Inodes, b"a1").unwrap(), None);
        assert_eq!(
            all(kv, Table::Inodes, b"", b""),
            vec![
                (b"a2".to_vec(), b"y2".to_vec()),
                (b"b1".to_vec(), b"z".to_vec())
            ]
        );
        // A scan longer than the memory engine copies out at once.
        let mut t = Txn::default();
        for i in 0..700u32 {
            t.put(Table::Refs, i.to_be_bytes(), i.to_le_bytes());
        }
        done(kv.commit(t).unwrap());
        let refs = all(kv, Table::Refs, &5u32.to_be_bytes(), b"");
        assert_eq!(refs.len(), 695, "{}", kv.engine());
        assert!(
            refs.iter()
                .zip(5u32..)
                .all(|((k, v), i)| { k[..] == i.to_be_bytes() && v[..] == i.to_le_bytes() })
        );
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy");
        kv.checkpoint(&copy).unwrap();
        let back = RocksKv::open_read_only(&copy).unwrap();
        assert_eq!(
            all(&back, Table::Inodes, b"", b""),
            all(kv, Table::Inodes, b"", b"")
        );
        assert_eq!(all(&back, Table::Dentries, b"", b"").len(), 1);
    }
}

/// The memory engine checks guards as etcd will: a key's revision or its
/// absence, and a range written to since a revision. A failed guard writes
/// nothing.
#[test]
fn guards_refuse_a_commit_when_what_was_read_changed() {
    let kv = MemoryKv::new();
    let mut t = Txn::default();
    t.put(Table::Inodes, b"k".to_vec(), b"1".to_vec());
    let r1 = done(kv.commit(t).unwrap());
    let (_, rev) = kv.get(Table::Inodes, b"k").unwrap().unwrap();
    assert_eq!(rev, r1);
    let guarded = |guards: Vec<Guard>| {
        let mut t = Txn {
            guards,
            ..Default::default()
        };
        t.put(Table::Meta, b"w".to_vec(), b"!".to_vec());
        t
    };
    let key = |rev| Guard::Key {
        table: Table::Inodes,
        key: b"k".to_vec(),
        rev,
    };
    let absent = Guard::Key {
        table: Table::Inodes,
        key: b"new".to_vec(),
        rev: None,
    };
    let range = |since| Guard::Range {
        table: Table::Dentries,
        start: b"d/".to_vec(),
        end: b"d0".to_vec(),
        since,
    };
    assert!(matches!(
        kv.commit(guarded(vec![key(Some(rev)), absent.clone(), range(r1)]))
            .unwrap(),
        Committed::Done(_)
    ));
    // Someone else writes the key, and an entry in the range.
    let mut t = Txn::default();
    t.put(Table::Inodes, b"k".to_vec(), b"2".to_vec());
    t.put(Table::Dentries, b"d/x".to_vec(), b"".to_vec());
    let r3 = done(kv.commit(t).unwrap());
    kv.commit(Txn {
        writes: vec![Write {
            table: Table::Meta,
            key: b"w".to_vec(),
            value: None,
        }],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        kv.commit(guarded(vec![key(Some(rev))])).unwrap(),
        Committed::Conflict(0)
    );
    assert_eq!(
        kv.commit(guarded(vec![absent.clone(), range(r1)])).unwrap(),
        Committed::Conflict(1)
    );
    assert_eq!(
        kv.commit(guarded(vec![key(None)])).unwrap(),
        Committed::Conflict(0)
    );
    assert_eq!(
        kv.get(Table::Meta, b"w").unwrap(),
        None,
        "a refused commit wrote"
    );
    // A delete in the range counts as a write in it.
    assert!(matches!(
        kv.commit(guarded(vec![range(r3)])).unwrap(),
        Committed::Done(_)
    ));
    let now = kv.revision();
    let mut t = Txn::default();
    t.delete(Table::Dentries, b"d/x".to_vec());
    done(kv.commit(t).unwrap());
    assert_eq!(
        kv.commit(guarded(vec![range(now)])).unwrap(),
        Committed::Conflict(0)
    );
}

proptest! {
    /// Random commits leave every engine holding what a plain map holds, and
    /// scanning it from any start with any prefix answers the same.
    #[test]
    fn every_engine_agrees_with_a_map(
        txns in proptest::collection::vec(
            proptest::collection::vec((0u8..3, proptest::collection::vec(0u8..4, 0..3), proptest::option::of(any::<u8>())), 0..8),
            1..12),
        start in proptest::collection::vec(0u8..4, 0..3),
        prefix in proptest::collection::vec(0u8..4, 0..2),
    ) {
        let table = |n: u8| Table::ALL[n as usize];
        let mut model: BTreeMap<(Table, Vec<u8>), Vec<u8>> = BTreeMap::new();
        for (kv, _dir) in engines() {
            model.clear();
            for writes in &txns {
                let mut t = Txn::default();
                for (tb, k, v) in writes {
                    match v {
                        Some(v) => {
                            t.put(table(*tb), k.clone(), vec![*v]);
                            model.insert((table(*tb), k.clone()), vec![*v]);
                        }
                        None => {
                            t.delete(table(*tb), k.clone());
                            model.remove(&(table(*tb), k.clone()));
                        }
                    }
                }
                done(kv.commit(t).unwrap());
            }
            for tb in 0..3 {
                let want: Vec<(Vec<u8>, Vec<u8>)> = model
                    .iter()
                    .filter(|((t, k), _)| *t == table(tb) && *k >= start && k.starts_with(&prefix))
                    .map(|((_, k), v)| (k.clone(), v.clone()))
                    .collect();
                // A scan stops at the first key without the prefix, as the
                // engines' do: the model's answer is the run from `start`.
                let run: Vec<_> = {
                    let from: Vec<_> = model
                        .iter()
                        .filter(|((t, k), _)| *t == table(tb) && *k >= start)
                        .map(|((_, k), v)| (k.clone(), v.clone()))
                        .collect();
                    from.into_iter().take_while(|(k, _)| k.starts_with(&prefix)).collect()
                };
                let got = all(&*kv, table(tb), &start, &prefix);
                prop_assert_eq!(&got, &run, "{}", kv.engine());
                prop_assert!(got.iter().all(|e| want.contains(e)));
            }
        }
    }
}
