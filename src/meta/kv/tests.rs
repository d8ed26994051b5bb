//! What every engine must do, run against each.

use super::local_etcd::LocalEtcd;
use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// A fresh store on each engine; etcd's keys under a prefix no other test
/// uses.
fn engines(etcd: &LocalEtcd) -> Vec<(Box<dyn Kv>, Option<tempfile::TempDir>)> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksKv::open(&dir.path().join("db"), true).unwrap();
    let on_etcd = EtcdKv::connect(&etcd.url, format!("t{n}/").as_bytes()).unwrap();
    vec![
        (Box::new(rocks), Some(dir)),
        (Box::new(MemoryKv::new()), None),
        (Box::new(on_etcd), None),
    ]
}

fn etcd() -> (LocalEtcd, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (LocalEtcd::start(dir.path()), dir)
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
    let (etcd, _at) = etcd();
    for (kv, _dir) in engines(&etcd) {
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
        let many: Vec<Option<Vec<u8>>> = kv
            .get_many(
                Table::Inodes,
                &[b"b1".to_vec(), b"zz".to_vec(), b"a1".to_vec()],
            )
            .unwrap()
            .into_iter()
            .map(|g| g.map(|(v, _)| v))
            .collect();
        assert_eq!(many, vec![Some(b"z".to_vec()), None, Some(b"x".to_vec())]);
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
        for hundred in 0..7u32 {
            let mut t = Txn::default();
            for i in hundred * 100..(hundred + 1) * 100 {
                t.put(Table::Refs, i.to_be_bytes(), i.to_le_bytes());
            }
            done(kv.commit(t).unwrap());
        }
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

/// An engine with limits refuses a transaction over them, naming them, and
/// writes none of it; the memory engine keeps etcd's when told to.
#[test]
fn a_transaction_over_the_limits_is_refused_whole() {
    let (etcd, _at) = etcd();
    let on_etcd = EtcdKv::connect(&etcd.url, b"limits/").unwrap();
    let limited = MemoryKv::with_limits(Limits::ETCD);
    for kv in [&on_etcd as &dyn Kv, &limited] {
        let l = kv.limits().expect("limits");
        assert_eq!(l, Limits::ETCD);
        let mut t = Txn::default();
        for i in 0..l.ops as u32 {
            t.put(Table::Chunks, i.to_be_bytes(), b"x".to_vec());
        }
        done(kv.commit(t.clone()).unwrap());
        t.put(Table::Chunks, b"one more".to_vec(), b"x".to_vec());
        let e = kv.commit(t).unwrap_err().to_string();
        assert!(e.contains("too many operations"), "{}: {e}", kv.engine());
        assert_eq!(kv.get(Table::Chunks, b"one more").unwrap(), None);
        let mut t = Txn::default();
        t.put(Table::Xattrs, b"big".to_vec(), vec![7; l.bytes]);
        let e = kv.commit(t).unwrap_err().to_string();
        assert!(e.contains("too large"), "{}: {e}", kv.engine());
        assert_eq!(kv.get(Table::Xattrs, b"big").unwrap(), None);
    }
    assert_eq!(MemoryKv::new().limits(), None);
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(RocksKv::open(dir.path(), true).unwrap().limits(), None);
}

/// The memory engine checks guards as etcd will: a key's revision or its
/// absence, and a range written to since a revision. A failed guard writes
/// nothing.
#[test]
fn guards_refuse_a_commit_when_what_was_read_changed() {
    let (etcd, _at) = etcd();
    let on_etcd = EtcdKv::connect(&etcd.url, b"guards/").unwrap();
    guards_refuse(&MemoryKv::new());
    guards_refuse(&on_etcd);
}

fn guards_refuse(kv: &dyn Kv) {
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
    done(kv.commit(t).unwrap());
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
    // A delete in the range is no put in it; a put is.
    let now = kv.revision();
    let mut t = Txn::default();
    t.delete(Table::Dentries, b"d/x".to_vec());
    done(kv.commit(t).unwrap());
    assert!(matches!(
        kv.commit(guarded(vec![range(now)])).unwrap(),
        Committed::Done(_)
    ));
    let mut t = Txn::default();
    t.put(Table::Dentries, b"d/y".to_vec(), b"".to_vec());
    done(kv.commit(t).unwrap());
    assert_eq!(
        kv.commit(guarded(vec![range(now)])).unwrap(),
        Committed::Conflict(0)
    );
}

/// Random commits leave every engine holding what a plain map holds, and
/// scanning it from any start with any prefix answers the same (one etcd
/// for every case).
#[test]
fn every_engine_agrees_with_a_map() {
    let (etcd, _at) = etcd();
    let txns = proptest::collection::vec(
        proptest::collection::vec(
            (
                0u8..3,
                proptest::collection::vec(0u8..4, 0..3),
                proptest::option::of(any::<u8>()),
            ),
            0..8,
        ),
        1..12,
    );
    let start = proptest::collection::vec(0u8..4, 0..3);
    let prefix = proptest::collection::vec(0u8..4, 0..2);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    });
    runner
        .run(&(txns, start, prefix), |(txns, start, prefix)| {
            agrees_with_a_map(&etcd, &txns, &start, &prefix)
        })
        .unwrap();
}

type Writes = Vec<(u8, Vec<u8>, Option<u8>)>;

fn agrees_with_a_map(
    etcd: &LocalEtcd,
    txns: &[Writes],
    start: &[u8],
    prefix: &[u8],
) -> std::result::Result<(), TestCaseError> {
    let table = |n: u8| Table::ALL[n as usize];
    let mut model: BTreeMap<(Table, Vec<u8>), Vec<u8>> = BTreeMap::new();
    for (kv, _dir) in engines(etcd) {
        model.clear();
        for writes in txns {
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
            // A scan stops at the first key without the prefix, as the
            // engines' do: the model's answer is the run from `start`.
            let run: Vec<_> = model
                .iter()
                .filter(|((t, k), _)| *t == table(tb) && k.as_slice() >= start)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .take_while(|(k, _)| k.starts_with(prefix))
                .collect();
            let got = all(&*kv, table(tb), start, prefix);
            prop_assert_eq!(&got, &run, "{}", kv.engine());
        }
    }
    Ok(())
}
