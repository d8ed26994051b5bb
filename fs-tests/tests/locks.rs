//! Locks on a mounted volume at its home (the embedded default): stress-ng's
//! lock stressors, waits ended by signals, two processes that come to wait
//! for each other, sqlite writers, and a mount whose connection is aborted
//! while a process waits. The same on a member mount is in `members.rs`.

use fs_tests::{Volume, locks};
use std::process::Command;
use std::time::Duration;

#[test]
fn the_lock_stressors_end_on_time_with_no_failures() {
    fs_tests::require!("stress-ng");
    let v = Volume::new();
    let m = v.mount();
    locks::stress_ng_locks(&m.at, &[1, 4, 8], 10);
    assert!(m.unmount(), "the unmount flushes and exits 0");
}

#[test]
fn waiting_locks_end_on_signals_and_crossed_waits_are_refused() {
    fs_tests::require!("flock", "python3");
    let v = Volume::new();
    let m = v.mount();
    let f = m.at.join("lockfile");
    std::fs::write(&f, b"").unwrap();
    locks::waits_end_on_signals(&f);
    let pair = m.at.join("pair");
    for _ in 0..3 {
        locks::crossed_locks(&pair, &pair);
    }
    assert!(m.unmount(), "the unmount flushes and exits 0");
}

#[test]
fn eight_sqlite_writers_share_one_database_for_thirty_seconds() {
    fs_tests::require!("python3");
    let v = Volume::new();
    let m = v.mount();
    let rows = locks::sqlite_writers(&m.at, 8, 30);
    eprintln!("{rows} one-row transactions from 8 processes in 30 s");
    assert!(rows > 0);
    assert!(m.unmount(), "the unmount flushes and exits 0");
}

/// The FUSE connection of a mount is aborted (as `fusectl` or a crashed
/// kernel session would) while a process waits for a lock: the waiter is
/// answered and the mount process ends on SIGTERM within seconds.
#[test]
fn an_aborted_mount_answers_its_waiters_and_ends_on_sigterm() {
    fs_tests::require!("flock");
    let conns = std::path::Path::new("/sys/fs/fuse/connections");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts.lines().any(|l| l.starts_with("fusectl ")) {
        let _ = Command::new("mount")
            .args(["-t", "fusectl", "fusectl"])
            .arg(conns)
            .status();
    }
    let v = Volume::new();
    let mut m = v.mount();
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(&m.at).unwrap().dev();
    let abort = conns.join(libc::minor(dev).to_string()).join("abort");
    if !abort.exists() {
        eprintln!(
            "skipped: no {} (fusectl not mounted, or not root)",
            abort.display()
        );
        return;
    }
    let f = m.at.join("lockfile");
    std::fs::write(&f, b"").unwrap();
    let holder = locks::Holder::take(&f);
    let waiter = locks::waiter(&f, Duration::from_millis(500));
    std::fs::write(&abort, "1").unwrap();
    locks::answered(
        waiter,
        "the waiter is answered once the connection is aborted",
    );
    let _ = Command::new("kill")
        .args(["-TERM", &m.pid().to_string()])
        .status();
    let ended = m.exits_within(Duration::from_secs(10));
    drop(holder);
    assert!(
        ended,
        "the mount process did not end on SIGTERM after its connection was aborted"
    );
}
