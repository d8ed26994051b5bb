//! The lock table's tests: unit cases and a model of waiting owners.

use super::*;
use proptest::prelude::*;

fn who(host: &str, owner: u64) -> LockOwner {
    LockOwner::new(host, owner)
}

fn range(start: u64, end: u64, typ: LockType) -> RangeLock {
    RangeLock {
        start,
        end,
        typ,
        pid: 1,
    }
}

#[test]
fn two_hosts_exclude_each_other_and_a_release_lets_the_other_in() {
    let t = LockTable::default();
    let (a, b) = (who("", 1), who("12D3KooWb", 1));
    let whole = |typ| range(0, u64::MAX, typ);
    t.set(Ino(5), &a, whole(libc::F_WRLCK)).unwrap();
    assert!(matches!(
        t.set(Ino(5), &b, whole(libc::F_WRLCK)),
        Err(Error::WouldBlock)
    ));
    assert_eq!(
        t.test(Ino(5), &b, &whole(libc::F_RDLCK)).unwrap().typ,
        libc::F_WRLCK
    );
    // Another file is free.
    t.set(Ino(6), &b, whole(libc::F_WRLCK)).unwrap();
    t.release(Ino(5), &a);
    t.set(Ino(5), &b, whole(libc::F_WRLCK)).unwrap();
    // Readers share.
    t.set(Ino(7), &a, whole(libc::F_RDLCK)).unwrap();
    t.set(Ino(7), &b, whole(libc::F_RDLCK)).unwrap();
    t.release_host("12D3KooWb");
    assert!(t.test(Ino(5), &a, &whole(libc::F_WRLCK)).is_none());
}

#[test]
fn a_release_wakes_a_waiter_and_a_cycle_is_refused() {
    let t = std::sync::Arc::new(LockTable::default());
    let (a, b, c) = (who("", 1), who("", 2), who("m", 1));
    let long = Duration::from_secs(10);
    t.set(Ino(1), &a, range(0, 9, libc::F_WRLCK)).unwrap();
    t.set(Ino(1), &b, range(10, 19, libc::F_WRLCK)).unwrap();
    // A waits for B's range; B asking for A's would wait forever.
    let (t2, a2) = (t.clone(), a.clone());
    let waiter = std::thread::spawn(move || {
        t2.lock_or_wait(Ino(1), &a2, range(10, 19, libc::F_WRLCK), long)
    });
    while t.waiting() == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(matches!(
        t.lock_or_wait(Ino(1), &b, range(0, 9, libc::F_WRLCK), long),
        Err(Error::Deadlock)
    ));
    // C waiting for A closes no cycle: it waits, and gives up after its hold.
    assert!(
        !t.lock_or_wait(
            Ino(1),
            &c,
            range(5, 5, libc::F_RDLCK),
            Duration::from_millis(30)
        )
        .unwrap()
    );
    // B's unlock hands A the range.
    t.set(Ino(1), &b, range(10, 19, libc::F_UNLCK)).unwrap();
    assert!(waiter.join().unwrap().unwrap());
    assert_eq!(
        t.test(Ino(1), &b, &range(15, 15, libc::F_RDLCK))
            .unwrap()
            .start,
        10
    );
    assert_eq!(t.waiting(), 0);
}

impl LockTable {
    fn is_waiting(&self, owner: &LockOwner) -> bool {
        lock(&self.state)
            .waiting
            .values()
            .any(|w| &w.owner == owner)
    }
}

#[test]
fn a_member_host_holds_and_waits_for_a_bounded_number_of_locks() {
    let t = std::sync::Arc::new(LockTable::default());
    let (member, home) = (who("m", 1), who("", 1));
    let one = |i: u64| range(i, i, libc::F_WRLCK);
    let mut took = 0;
    while t.set(Ino(took + 1), &member, one(0)).is_ok() {
        took += 1;
    }
    assert!(matches!(
        t.set(Ino(1), &member, one(5)),
        Err(Error::TooManyLocks)
    ));
    assert!(took as usize >= MAX_MEMBER_LOCKS - 2 && took as usize <= MAX_MEMBER_LOCKS);
    // The home's own are not counted; an unlock makes room again.
    t.set(Ino(1), &home, one(7)).unwrap();
    t.set(Ino(1), &member, range(0, 0, libc::F_UNLCK)).unwrap();
    t.set(Ino(2), &member, range(0, 0, libc::F_UNLCK)).unwrap();
    t.set(Ino(1), &member, one(9)).unwrap();
    t.release_host("m");
    assert_eq!(lock(&t.state).per_host.get("m"), None);
    // Waits: the home holds a lock; the member's waits past the bound are refused.
    t.set(Ino(1), &home, one(0)).unwrap();
    let waiters: Vec<_> = (0..MAX_MEMBER_WAITS as u64)
        .map(|i| {
            let t = t.clone();
            std::thread::spawn(move || {
                t.lock_or_wait(Ino(1), &who("m", 100 + i), one(0), Duration::from_secs(30))
            })
        })
        .collect();
    while t.waiting() < MAX_MEMBER_WAITS {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(matches!(
        t.lock_or_wait(Ino(1), &who("m", 1), one(0), Duration::from_secs(1)),
        Err(Error::TooManyLocks)
    ));
    t.release_host("m");
    for w in waiters {
        assert!(matches!(w.join().unwrap(), Err(Error::Interrupted)));
    }
}

/// What a driven owner is doing: nothing, or waiting on a thread of its
/// own for a lock.
type Wait = (std::thread::JoinHandle<Result<bool>>, Ino, RangeLock);

#[derive(Clone, Debug)]
enum Op {
    Lock {
        who: usize,
        ino: u64,
        start: u64,
        len: u64,
        write: bool,
        wait: bool,
    },
    Unlock {
        who: usize,
        ino: u64,
        start: u64,
        len: u64,
    },
    /// The owner closes the file: all its locks on it go.
    Close { who: usize, ino: u64 },
    /// A signal to a waiting owner's process.
    Interrupt { who: usize },
    /// The owner's process ends (killed, if it was waiting).
    Exit { who: usize },
    /// The member host goes away.
    HostGone,
}

fn op() -> impl Strategy<Value = Op> {
    let who = 0usize..4;
    prop_oneof![
        6 => (who.clone(), 0u64..2, 0u64..12, 0u64..6, any::<bool>(), any::<bool>())
            .prop_map(|(who, ino, start, len, write, wait)| Op::Lock { who, ino, start, len, write, wait }),
        3 => (who.clone(), 0u64..2, 0u64..12, 0u64..6)
            .prop_map(|(who, ino, start, len)| Op::Unlock { who, ino, start, len }),
        1 => (who.clone(), 0u64..2).prop_map(|(who, ino)| Op::Close { who, ino }),
        1 => who.clone().prop_map(|who| Op::Interrupt { who }),
        1 => who.prop_map(|who| Op::Exit { who }),
        1 => Just(Op::HostGone),
    ]
}

/// Owners 0 and 1 are on the home, 2 and 3 on a member host "m".
fn owner_of(who: usize) -> LockOwner {
    self::who(if who < 2 { "" } else { "m" }, who as u64)
}

/// Ends `who`'s wait: interrupts it and takes its answer (taken or
/// not: a grant may come first, as a signal may come after a grant).
fn end_wait(t: &LockTable, waits: &mut [Option<Wait>], who: usize) {
    if let Some((h, ..)) = waits[who].take() {
        let owner = owner_of(who);
        t.cancel_waits(|o| *o == owner);
        let _ = h.join().unwrap();
    }
}

/// No two owners hold overlapping locks of which one is a write lock,
/// and the count of each host's locks is right.
fn assert_no_conflict(t: &LockTable) {
    let st = lock(&t.state);
    let mut per_host: HashMap<String, usize> = HashMap::new();
    for (o, _) in st.held.values().flatten() {
        *per_host.entry(o.host.clone()).or_default() += 1;
    }
    assert_eq!(per_host, st.per_host);
    for list in st.held.values() {
        for (i, (oa, la)) in list.iter().enumerate() {
            for (ob, lb) in &list[i + 1..] {
                if oa != ob && overlaps(la, lb.start, lb.end) {
                    assert!(la.typ == libc::F_RDLCK && lb.typ == libc::F_RDLCK);
                }
            }
        }
    }
}

/// Every waiter whose range is free gets it (or another waiter's new
/// lock is in its way) promptly: no wake-up is lost. Every other waiter
/// is in the table's list (so an interrupt finds it).
fn assert_settles(t: &LockTable, waits: &mut [Option<Wait>]) {
    let start = Instant::now();
    loop {
        for w in waits.iter_mut() {
            if w.as_ref().is_some_and(|(h, ..)| h.is_finished()) {
                let (h, ..) = w.take().unwrap();
                let _ = h.join().unwrap();
            }
        }
        let stuck: Vec<usize> = (0..waits.len())
            .filter(|&i| {
                waits[i].as_ref().is_some_and(|(_, ino, want)| {
                    t.test(*ino, &owner_of(i), want).is_none() || !t.is_waiting(&owner_of(i))
                })
            })
            .collect();
        if stuck.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "owners {stuck:?} still wait for ranges that are free (or are not listed)"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random locks, unlocks, waits, interrupts, closes, process exits
    /// and host losses from four owners on two hosts: no two
    /// incompatible locks are ever held, and no waiter sleeps on while
    /// its range is free.
    #[test]
    fn waiters_are_woken_and_locks_never_conflict(ops in proptest::collection::vec(op(), 1..40)) {
        let t = std::sync::Arc::new(LockTable::default());
        let mut waits: Vec<Option<Wait>> = (0..4).map(|_| None).collect();
        for op in ops {
            match op {
                Op::Lock { who, ino, start, len, write, wait } => {
                    if waits[who].is_some() {
                        continue; // blocked in its own fcntl
                    }
                    let typ = if write { libc::F_WRLCK } else { libc::F_RDLCK };
                    let want = range(start, start + len, typ);
                    if !wait {
                        let _ = t.set(Ino(ino), &owner_of(who), want);
                        continue;
                    }
                    // One long wait: only a wake-up from the table ends it.
                    let (t2, want2) = (t.clone(), want.clone());
                    let h = std::thread::spawn(move || {
                        t2.lock_or_wait(Ino(ino), &owner_of(who), want2, Duration::from_secs(60))
                    });
                    waits[who] = Some((h, Ino(ino), want));
                }
                Op::Unlock { who, ino, start, len } => {
                    if waits[who].is_none() {
                        t.set(Ino(ino), &owner_of(who), range(start, start + len, libc::F_UNLCK)).unwrap();
                    }
                }
                Op::Close { who, ino } => {
                    if waits[who].is_none() {
                        t.release(Ino(ino), &owner_of(who));
                    }
                }
                Op::Interrupt { who } => end_wait(&t, &mut waits, who),
                Op::Exit { who } => {
                    end_wait(&t, &mut waits, who);
                    for ino in 0..2 {
                        t.release(Ino(ino), &owner_of(who));
                    }
                }
                Op::HostGone => {
                    // The host's waits end with its locks.
                    t.release_host("m");
                    for who in [2, 3] {
                        if let Some((h, ..)) = waits[who].take() {
                            let _ = h.join().unwrap();
                        }
                    }
                }
            }
            assert_no_conflict(&t);
            assert_settles(&t, &mut waits);
            assert_no_conflict(&t);
        }
        for who in 0..4 {
            end_wait(&t, &mut waits, who);
        }
        prop_assert_eq!(t.waiting(), 0);
    }
}

proptest! {
    /// After any sequence of sets by two owners, no two owners hold
    /// overlapping locks of which one is a write lock, and an owner's
    /// unlock of a range leaves it nothing there.
    #[test]
    fn locks_never_conflict(ops in proptest::collection::vec(
        (0u64..2, 0u64..40, 0u64..20, prop_oneof![
            Just(libc::F_RDLCK), Just(libc::F_WRLCK), Just(libc::F_UNLCK)
        ]),
        1..60,
    )) {
        let t = LockTable::default();
        for (o, start, len, typ) in ops {
            let owner = who(if o == 0 { "" } else { "m" }, 1);
            let _ = t.set(Ino(1), &owner, range(start, start + len, typ));
            if typ == libc::F_UNLCK {
                let st = lock(&t.state);
                let mine = st.held.get(&Ino(1)).map_or(0, |l| {
                    l.iter().filter(|(w, l)| *w == owner && overlaps(l, start, start + len)).count()
                });
                prop_assert_eq!(mine, 0);
            }
        }
        let st = lock(&t.state);
        let list = st.held.get(&Ino(1)).cloned().unwrap_or_default();
        for (i, (oa, la)) in list.iter().enumerate() {
            for (ob, lb) in &list[i + 1..] {
                if oa != ob && overlaps(la, lb.start, lb.end) {
                    prop_assert!(la.typ == libc::F_RDLCK && lb.typ == libc::F_RDLCK);
                }
            }
        }
    }
}
