//! Namespace protection with real processes: a mounted home ships its
//! namespace to six storage peers; its disk is lost; `datamesh recover --kit`
//! on a new home brings every file back with two peers dead, and the old home
//! is fenced when it comes back.

use fs_tests::{Cluster, Volume, require, sh};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A volume whose daemon protects its namespace every 2 s.
fn protected_volume() -> Volume {
    let v = Volume::new();
    v.ok(&["init"]);
    v.config("protect_secs = 2");
    v
}

/// Waits until `status` says the copy on the peers holds every change made
/// before `after` (unix seconds).
fn wait_protected_after(v: &Volume, after: u64) {
    let start = Instant::now();
    loop {
        let out = v.run(&["status"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let made = text
            .lines()
            .find_map(|l| l.strip_prefix("namespace protection: copy on the peers current as of "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .map(|t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs());
        if made.is_some_and(|m| m > after) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no protected copy after {after}: {text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The kit of `v`, written to a file beside it.
fn export_kit(v: &Volume) -> std::path::PathBuf {
    let kit = v.dir.path().join("kit.txt");
    std::fs::write(&kit, v.ok(&["kit", "export"])).unwrap();
    kit
}

fn recover(into: &Volume, kit: &Path, extra: &[String]) -> std::process::Output {
    into.cmd(&strs(extra))
        .arg("recover")
        .arg("--kit")
        .arg(kit)
        .output()
        .unwrap()
}

#[test]
fn a_lost_home_disk_is_recovered_from_the_peers_and_the_old_home_is_fenced() {
    require!();
    let v = protected_volume();
    let mut c = Cluster::start(&v, 6);
    let m = v.mount_with(&strs(&c.bootstrap_flags()));
    let kit = export_kit(&v);
    sh(
        &m.at,
        "cp -a /usr/share/doc/coreutils doc && mkdir -p d/e && \
         for i in $(seq 1 150); do echo \"file $i\" > d/e/f$i; done && \
         ln -s e/f1 d/link && mv d/e/f2 d/renamed && chmod 600 d/e/f3 && \
         setfattr -n user.note -v kept d/e/f4 && \
         head -c 9000000 /dev/urandom > big && \
         dd if=/dev/urandom of=synced bs=64k count=3 conv=fsync status=none",
    );
    sh(v.dir.path(), "cp -a mnt ref");
    std::thread::sleep(Duration::from_millis(1100));
    wait_protected_after(&v, now_secs());

    // The home's disk is lost (a copy of it kept, to come back later), and
    // two storage peers die with it.
    m.kill();
    sh(v.dir.path(), "cp -a home home.old && rm -rf home");
    c.kill(1);
    c.kill(4);

    let v2 = Volume::new();
    let out = recover(&v2, &kit, &c.bootstrap_flags());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "recover: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("recovered volume"), "{text}");
    // A second recovery into a home that has a volume is refused.
    let again = recover(&v2, &kit, &[]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let m2 = v2.mount();
    let at = m2.at.display().to_string();
    sh(
        v.dir.path(),
        &format!(
            "diff -r --no-dereference ref/doc {at}/doc && diff -r --no-dereference ref/d {at}/d && cmp ref/big {at}/big && cmp ref/synced {at}/synced"
        ),
    );
    assert_eq!(
        sh(&m2.at, "getfattr --only-values -n user.note d/e/f4"),
        "kept"
    );
    assert_eq!(sh(&m2.at, "stat -c %a d/e/f3").trim(), "600");
    // The recovered home writes, and protects, as the home now.
    sh(&m2.at, "echo after > after && sync");
    assert!(m2.unmount());

    // The peers that were down learn the new home when it reaches them.
    c.restart(1);
    c.restart(4);
    let m2 = v2.mount();
    sh(&m2.at, "head -c 3000000 /dev/urandom > more && sync");
    drop(m2);
    v2.ok(&["repair"]);
    v2.assert_fsck_clean();

    // The old home, restored from its copy, is refused: it must not change
    // the volume any more.
    sh(v.dir.path(), "mv home.old home");
    let out = v.run(
        &[
            &strs(&c.bootstrap_flags())[..],
            &["put", "/etc/hostname", "/x"],
        ]
        .concat(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("this home node was replaced"), "{err}");
    // (Under `timeout`: a mount that wrongly starts would never end.)
    let out = std::process::Command::new("timeout")
        .arg("60")
        .arg(fs_tests::datamesh_bin())
        .arg("--home")
        .arg(v.home())
        .args(["mount", "--foreground"])
        .arg(v.mountpoint())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("recovered onto home"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_one_before_and_a_wrong_kit_is_named() {
    require!();
    let v = protected_volume();
    let c = Cluster::start(&v, 6);
    let m = v.mount_with(&strs(&c.bootstrap_flags()));
    let kit = export_kit(&v);
    sh(&m.at, "echo first > a && sync");
    std::thread::sleep(Duration::from_millis(1100));
    wait_protected_after(&v, now_secs());
    std::thread::sleep(Duration::from_millis(1100));
    let cut = SystemTime::now();
    sh(&m.at, "echo second > b && sync");
    std::thread::sleep(Duration::from_millis(1100));
    wait_protected_after(&v, now_secs());
    m.kill();
    // Every shard stored since `cut` is lost: the newest checkpoint cannot
    // be read.
    let mut dropped = 0;
    for i in 0..6 {
        for f in c.shard_files(i) {
            if std::fs::metadata(&f).unwrap().modified().unwrap() > cut {
                std::fs::remove_file(f).unwrap();
                dropped += 1;
            }
        }
    }
    assert!(dropped > 0);

    // A kit mistyped, and one of another volume (another mesh), are refused
    // before anything is written.
    let v2 = Volume::new();
    let text = std::fs::read_to_string(&kit).unwrap();
    let typo = v.dir.path().join("typo.txt");
    std::fs::write(&typo, text.replacen("dmkit2", "dmkit2f", 1)).unwrap();
    let out = recover(&v2, &typo, &[]);
    assert!(!out.status.success());
    assert!(!v2.home().join("volume.key").exists());
    let other = Volume::new();
    other.ok(&["init"]);
    let out = recover(&v2, &export_kit(&other), &c.bootstrap_flags());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong kit"), "{err}");

    let v3 = Volume::new();
    let out = recover(&v3, &kit, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("skipped the newer checkpoint"), "{text}");
    let m3 = v3.mount();
    assert_eq!(sh(&m3.at, "cat a"), "first\n");
    assert!(!m3.at.join("b").exists());
}

#[test]
fn snapshots_keep_the_past_read_only_through_gc_and_recovery() {
    require!();
    let v = protected_volume();
    let c = Cluster::start(&v, 6);
    let m = v.mount_with(&strs(&c.bootstrap_flags()));
    let kit = export_kit(&v);
    sh(
        &m.at,
        "echo v1 > keep.txt && echo gone > del.txt && mkdir dir && echo a > dir/a && \
         head -c 5000000 /dev/urandom > big && cp big ../big.old && sync",
    );
    let out = v.ok(&["snapshot", "create", "s1"]);
    assert!(out.contains("/.snapshots/s1"), "{out}");
    // A second snapshot of the same name is refused.
    assert!(!v.run(&["snapshot", "create", "s1"]).status.success());
    sh(
        &m.at,
        "echo v2 > keep.txt && rm del.txt && mv dir dir2 && \
         head -c 5000000 /dev/urandom > big && sync",
    );

    // Inside the snapshot, everything reads as it was.
    let s1 = m.at.join(".snapshots/s1");
    assert_eq!(sh(&s1, "cat keep.txt"), "v1\n");
    assert_eq!(sh(&s1, "cat del.txt dir/a"), "gone\na\n");
    assert!(!s1.join("dir2").exists());
    sh(&s1, "cmp big ../../../big.old");
    assert_eq!(sh(&m.at, "cat keep.txt"), "v2\n");
    // /.snapshots is reached by name, not listed (a backup of the mount does
    // not copy every snapshot).
    assert!(!sh(&m.at, "ls -a").contains(".snapshots"));
    assert_eq!(sh(&m.at, "ls .snapshots"), "s1\n");
    // Read-only: writes, removals and renames there get EROFS.
    for script in [
        "echo x > new",
        "echo x >> keep.txt",
        "rm keep.txt",
        "mv keep.txt k2",
        "touch keep.txt",
        "mkdir d",
        "setfattr -n user.x -v 1 keep.txt",
    ] {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&s1)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{script} succeeded in a snapshot");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Read-only file system"), "{script}: {err}");
    }
    // The CLI sees the same tree, and refuses the same writes.
    assert_eq!(v.ok(&["cat", "/.snapshots/s1/keep.txt"]), "v1\n");
    let out = v.run(&["put", "/etc/hostname", "/.snapshots/s1/x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only"));
    let list = v.ok(&["snapshot", "list"]);
    assert!(list.starts_with("s1 "), "{list}");
    assert!(
        !list.contains(" 0 B only here"),
        "the old big file is pinned: {list}"
    );

    // gc keeps what only the snapshot holds; fsck checks it.
    v.ok(&["gc", "--grace", "0"]);
    sh(&s1, "cmp big ../../../big.old");
    v.ok(&["fsck"]);

    // The snapshot is protected and recovered with the namespace.
    std::thread::sleep(Duration::from_millis(1100));
    wait_protected_after(&v, now_secs());
    m.kill();
    sh(v.dir.path(), "rm -rf home");
    let v2 = Volume::new();
    let out = recover(&v2, &kit, &c.bootstrap_flags());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m2 = v2.mount();
    let s1 = m2.at.join(".snapshots/s1");
    assert_eq!(sh(&s1, "cat keep.txt"), "v1\n");
    sh(
        &s1,
        &format!("cmp big {}", v.dir.path().join("big.old").display()),
    );
    assert_eq!(sh(&m2.at, "cat keep.txt"), "v2\n");

    // Deleting it and running gc frees what only it held.
    let old: Vec<String> = (0..2)
        .flat_map(|i| v2.shards_of("/.snapshots/s1/big", i))
        .collect();
    let held = |c: &Cluster| {
        (0..6)
            .flat_map(|i| c.shard_files(i))
            .filter(|f| {
                let name = f.file_name().unwrap().to_string_lossy().into_owned();
                old.iter().any(|id| name.starts_with(id.as_str()))
            })
            .count()
    };
    v2.ok(&["gc", "--grace", "0"]);
    assert_eq!(held(&c), 12, "gc kept the snapshot's 12 shards");
    v2.ok(&["snapshot", "delete", "s1"]);
    assert!(!m2.at.join(".snapshots/s1").exists());
    v2.ok(&["gc", "--grace", "0"]);
    assert_eq!(held(&c), 0, "deleting it and gc freed them");
    v2.ok(&["fsck"]);
}

#[test]
fn scheduled_snapshots_are_taken_and_only_the_last_ones_kept() {
    require!();
    let v = Volume::new();
    v.ok(&["init"]);
    v.config("snapshot_every_secs = 1");
    v.config("snapshot_keep = 2");
    let m = v.mount();
    v.ok(&["snapshot", "create", "mine"]);
    std::thread::sleep(Duration::from_millis(4500));
    let list = v.ok(&["snapshot", "list"]);
    let autos: Vec<&str> = list.lines().filter(|l| l.starts_with("auto-")).collect();
    assert_eq!(autos.len(), 2, "{list}");
    assert!(list.lines().any(|l| l.starts_with("mine ")), "{list}");
    let first = autos[0].split_whitespace().next().unwrap();
    assert!(m.at.join(".snapshots").join(first).is_dir());
    drop(m);
}

/// `tests/fixtures/volume-root1.tar.xz` was made by the datamesh from before
/// the authority key (`tests/fixtures/make-root1.sh`): a home
/// (`init --chunk-size 64K --data-shards 2 --parity-shards 1`, protected),
/// its three storage peers' data dirs, whose root records are signed by the
/// key the volume secret derives, and the kit it exported (`kit-old.txt`).
/// The upgraded home makes its authority key and moves every peer to it,
/// one that was down when it comes back; from then on the old kit, which
/// any member device could have assembled, recovers nothing, and a new kit
/// does.
#[test]
fn a_volume_from_before_the_authority_key_moves_its_peers_to_it_and_the_old_kit_stops_working() {
    let v = Volume::new();
    let fixture = fs_tests::repo().join("tests/fixtures/volume-root1.tar.xz");
    sh(v.dir.path(), &format!("tar -xJf {}", fixture.display()));
    let dirs: Vec<_> = (0..3)
        .map(|i| v.dir.path().join(format!("node{i}")))
        .collect();
    let mut c = Cluster::adopt(&dirs);
    let flags = c.bootstrap_flags();
    let old_kit = v.dir.path().join("kit-old.txt");

    // Node 2 is down when the upgraded home first opens the volume.
    c.kill(2);
    let out = v.run(&[&strs(&flags)[..], &["cat", "/small.txt"]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "a file from before the authority key\n"
    );
    assert!(err.contains("made the volume's authority key"), "{err}");
    assert!(v.home().join("authority.key").exists());
    let daemon = v.serve_with(&flags, &[]);
    let moved = |i: usize| {
        std::fs::read_to_string(v.dir.path().join(format!("nodes/node{i}.log")))
            .unwrap_or_default()
            .contains("signed by its authority key from now on")
    };
    fs_tests::within("peers 0 and 1 handed over", 20, &|| moved(0) && moved(1));
    c.restart(2);
    fs_tests::within("peer 2 handed over when it came back", 30, &|| moved(2));
    let big = v.ok(&["cat", "/dir/big.txt"]);
    assert!(big.len() == 300_000 && big.bytes().all(|b| b == b'q'));

    // The old kit: `kit check` says it is spent, and a recovery with it is
    // refused before anything is sent to a peer.
    let out = v.run(&["kit", "check", old_kit.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("from before the volume's authority key"),
        "{err}"
    );
    let thief = Volume::new();
    let out = recover(&thief, &old_kit, &flags);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("which this kit does not hold"), "{err}");
    assert!(!thief.home().join("volume.key").exists());
    v.ok(&["put", "/etc/hostname", "/after-upgrade"]);

    // The new kit recovers the volume when the home is lost.
    let kit = export_kit(&v);
    assert!(std::fs::read_to_string(&kit).unwrap().contains("dmkit2"));
    v.ok(&["kit", "check", kit.to_str().unwrap()]);
    assert!(daemon.stop());
    sh(v.dir.path(), "rm -rf home");
    let v2 = Volume::new();
    let out = recover(&v2, &kit, &flags);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        v2.ok(&["cat", "/small.txt"]),
        "a file from before the authority key\n"
    );
    assert_eq!(
        v2.ok(&["cat", "/after-upgrade"]),
        std::fs::read_to_string("/etc/hostname").unwrap()
    );
    v2.assert_fsck_clean();
}
