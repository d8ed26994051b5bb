//! The real binary mounted, with real tools on the mountpoint.

use fs_tests::{Volume, require, sh};
use std::fs;

#[test]
fn copy_a_tree_in_and_diff_it_then_remount_and_diff_again() {
    require!();
    let v = Volume::new();
    let m = v.mount();
    let at = m.at.clone();
    sh(
        &at,
        "cp -a /usr/share/doc copy && diff -r --no-dereference /usr/share/doc copy",
    );
    sh(
        &at,
        "head -c 9000000 /dev/urandom > big && cp big big2 && cmp big big2",
    );
    sh(
        &at,
        "echo hello > a && ln a hard && ln -s a soft && cat soft | grep -q hello",
    );
    assert!(m.unmount(), "unmount flushes and exits 0");
    let m = v.mount();
    sh(
        &m.at,
        "diff -r --no-dereference /usr/share/doc copy && cmp big big2",
    );
    let st = fs::metadata(m.at.join("a")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::nlink(&st), 2);
    assert_eq!(
        fs::read_link(m.at.join("soft")).unwrap().to_str(),
        Some("a")
    );
    drop(m);
    // fsck sees a clean volume after the mount wrote it.
    v.assert_fsck_clean();
}

#[test]
fn posix_errors_reach_the_tools() {
    require!();
    let v = Volume::new();
    let m = v.mount();
    let at = &m.at;
    sh(
        at,
        "mkdir -p d1/x d2 && echo 1 > f1 && echo 2 > f2 && mv f1 f2 && test \"$(cat f2)\" = 1",
    );
    let out = std::process::Command::new("mv")
        .args(["d2", "d1"])
        .current_dir(at)
        .output()
        .unwrap();
    assert!(out.status.success(), "moving a dir into a dir");
    let out = std::process::Command::new("rmdir")
        .arg("d1")
        .current_dir(at)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("Directory not empty"));
    let long = "n".repeat(256);
    let out = std::process::Command::new("touch")
        .arg(&long)
        .current_dir(at)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("File name too long"));
    sh(
        at,
        "echo keep > open && exec 3<open && rm open && cat <&3 | grep -q keep",
    );
}

#[test]
fn kill_9_then_mount_again_keeps_what_was_fsynced() {
    require!();
    let v = Volume::new();
    let m = v.mount();
    // dd's conv=fsync makes fsync(2) the barrier; the later file is left unsynced.
    sh(
        &m.at,
        "head -c 6000000 /dev/urandom > /var/tmp/src.$$ && dd if=/var/tmp/src.$$ of=synced bs=1M conv=fsync status=none && cp /var/tmp/src.$$ ../expected && rm /var/tmp/src.$$",
    );
    sh(&m.at, "head -c 3000000 /dev/urandom > unsynced");
    m.kill();
    // The next mount finds the stale one, removes it and serves the volume again.
    let m = v.mount();
    sh(&m.at, "cmp synced ../expected");
    drop(m);
    v.assert_fsck_clean();
}

/// The mount's CLI socket was woken at stop by a connection to its path; with
/// the home moved away meanwhile (or another mount's socket bound there), the
/// process never ended after the unmount.
#[test]
fn a_mount_whose_home_was_moved_still_ends_when_unmounted() {
    require!();
    let v = Volume::new();
    let m = v.mount();
    sh(&m.at, "echo kept > f");
    let moved = v.home().with_extension("moved");
    std::fs::rename(v.home(), &moved).unwrap();
    let start = std::time::Instant::now();
    m.unmount();
    let took = start.elapsed();
    std::fs::rename(&moved, v.home()).unwrap();
    assert!(
        took < std::time::Duration::from_secs(20),
        "the mount took {took:?} to end"
    );
    assert_eq!(v.ok(&["cat", "/f"]), "kept\n");
}

#[test]
fn read_only_mount_options_and_a_non_empty_mountpoint() {
    require!();
    let v = Volume::new();
    let m = v.mount();
    sh(&m.at, "echo kept > f");
    assert!(m.unmount());
    // mount.datamesh passes fstab's options through -o.
    let helper = fs_tests::repo().join("packaging/mount.datamesh");
    let out = std::process::Command::new("sh")
        .arg(helper)
        .arg(v.home())
        .arg(v.mountpoint())
        .args(["-o", "ro,_netdev,attr_ttl=2,entry_ttl=0.5"])
        .env("DATAMESH_BIN", fs_tests::datamesh_bin())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let at = v.mountpoint();
    let touch = std::process::Command::new("touch")
        .arg(at.join("new"))
        .output()
        .unwrap();
    let umount = || v.datamesh().arg("umount").arg(&at).status().unwrap();
    let read = fs::read_to_string(at.join("f"));
    assert!(umount().success());
    assert!(String::from_utf8_lossy(&touch.stderr).contains("Read-only file system"));
    assert_eq!(read.unwrap(), "kept\n");
    // A non-empty directory is refused, naming it.
    fs::write(at.join("stray"), "x").unwrap();
    let out = v.datamesh().arg("mount").arg(&at).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not empty") && err.contains(&*at.to_string_lossy()),
        "{err}"
    );
}

/// The kernel enforces modes and ownership (default_permissions) for users other
/// than the one who mounted: run as root, the test acts as `nobody` too.
#[test]
fn permissions_hold_for_another_user() {
    require!("setpriv");
    if !is_root() {
        eprintln!("skipped: needs root (to act as another user)");
        return;
    }
    let v = Volume::new();
    // The temp dir is 0700; the other user must be able to reach the mountpoint.
    sh(v.dir.path(), "chmod 755 .");
    let m = v.mount_with(&["--allow-other"]);
    let as_nobody = |script: &str| {
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
            ])
            .arg(script)
            .current_dir(&m.at)
            .output()
            .unwrap()
    };
    sh(
        &m.at,
        "mkdir shut open && chmod 755 shut && chmod 1777 open && echo root > open/mine && chmod 644 open/mine",
    );
    let out = as_nobody("touch shut/x");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    let out = as_nobody("echo more >> open/mine");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    let out = as_nobody("chmod 777 open/mine");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{out:?}"
    );
    // Sticky directory: nobody may not remove root's file there.
    let out = as_nobody("rm -f open/mine");
    assert!(!out.status.success(), "{out:?}");
    let out = as_nobody("echo theirs > open/theirs && cat open/mine && stat -c %u:%g open/theirs");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "root\n65534:65534\n");
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
}

/// A file left open after a partial-chunk write is sealed once idle, so a crash
/// of the mount process after that loses nothing even without fsync.
#[test]
fn idle_open_file_is_sealed_before_a_crash() {
    require!();
    let v = Volume::new();
    let m = v.mount();
    // perl writes and keeps the file open: no close, so no FUSE flush.
    let mut holder = std::process::Command::new("perl")
        .arg("-e")
        .arg("open(my $f, '>', 'held') or die $!; syswrite($f, 'idle-data'); sleep 60")
        .current_dir(&m.at)
        .spawn()
        .unwrap();
    // The idle sealer runs every second and seals after 5 s without writes.
    std::thread::sleep(std::time::Duration::from_secs(10));
    m.kill();
    let _ = holder.kill();
    let _ = holder.wait();
    let m = v.mount();
    assert_eq!(fs::read_to_string(m.at.join("held")).unwrap(), "idle-data");
    drop(m);
    v.assert_fsck_clean();
}

#[test]
fn umount_without_home_finds_the_mount_and_waits_for_it_to_finish() {
    require!();
    let v = Volume::new();
    let ok = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cmd:?}: {err}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(v.datamesh().arg("mount").arg(v.mountpoint()));
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    let src = format!("datamesh:{} ", v.home().display());
    assert!(mounts.contains(&src), "{mounts}");
    sh(&v.mountpoint(), "head -c 30000000 /dev/urandom > f");
    // A process working in the mount: umount says so, soon, and the mount
    // goes on; the next umount (the mount no longer busy) ends it.
    let mut busy = std::process::Command::new("sleep")
        .arg("60")
        .current_dir(v.mountpoint())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    let out = v
        .datamesh()
        .arg("umount")
        .arg(v.mountpoint())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not unmounted") && err.contains("busy"),
        "{err}"
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(30));
    assert!(fs::read_dir(v.mountpoint()).unwrap().count() == 1);
    busy.kill().unwrap();
    busy.wait().unwrap();
    // Another home by default: umount must go by what /proc/mounts says.
    ok(std::process::Command::new(fs_tests::datamesh_bin())
        .env("DATAMESH_HOME", v.dir.path().join("elsewhere"))
        .arg("umount")
        .arg(v.mountpoint()));
    // The mount process has finished: the volume is free at once, data stored.
    let ls = ok(v.datamesh().args(["ls", "-l", "/"]));
    assert!(ls.contains(" 30000000 "), "{ls}");
}

#[test]
fn the_volume_socket_answers_its_owner_and_refuses_another_user() {
    require!("setpriv");
    if !is_root() {
        eprintln!("skipped: needs root (to act as another user)");
        return;
    }
    let v = Volume::new();
    let m = v.mount();
    let sock = v.home().join("volume.sock");
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&sock), 0o600, "the socket is owner-only");
    assert_eq!(mode(&v.home()), 0o700, "the home is owner-only");
    // The owner is answered, with the mount's workers.
    let status = v.ok(&["status"]);
    assert!(status.contains("workers of the daemon"), "{status}");
    // Open every door but the socket's own check: the binary, the path and the
    // socket made reachable for nobody, who must still be refused.
    let bin = v.dir.path().join("datamesh");
    fs::copy(fs_tests::datamesh_bin(), &bin).unwrap();
    sh(
        v.dir.path(),
        "chmod 755 . home datamesh && chmod 666 home/volume.sock",
    );
    for args in [
        &["status"][..],
        &["ls", "/"],
        &["put", "/etc/hostname", "/x"],
    ] {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .arg("--home")
            .arg(v.home())
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("refused: uid 65534 is neither root nor the owner"),
            "{args:?}: {err}"
        );
    }
    assert!(!v.ok(&["ls", "/"]).contains('x'), "nothing was put");
    assert!(m.unmount());
}

#[test]
fn the_mount_serves_prometheus_metrics_that_move_with_the_work() {
    require!();
    let v = Volume::new();
    let addr = format!("127.0.0.1:{}", fs_tests::free_ports(1));
    let m = v.mount_with(&["--metrics", &addr]);
    let before = fs_tests::scrape(&addr);
    sh(
        &m.at,
        "head -c 6000000 /dev/urandom > f && sync f && cat f > /dev/null && ls -l >/dev/null",
    );
    // Cold reads: drop the kernel's pages so the read reaches the volume.
    sh(
        &m.at,
        "echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; cat f > /dev/null",
    );
    let after = fs_tests::scrape(&addr);
    let moved = |name: &str| fs_tests::metric(&after, name) - fs_tests::metric(&before, name);
    assert!(
        moved("datamesh_written_bytes_total") >= 6_000_000.0,
        "{after}"
    );
    assert!(
        moved("datamesh_fuse_ops_total{op=\"write\"}") > 0.0,
        "{after}"
    );
    assert!(
        moved("datamesh_fuse_ops_total{op=\"lookup\"}") > 0.0,
        "{after}"
    );
    assert!(
        moved("datamesh_fuse_op_seconds_count{op=\"write\"}") > 0.0,
        "{after}"
    );
    assert!(after.contains("datamesh_dirty_bytes "), "{after}");
    if is_root() {
        assert!(moved("datamesh_read_bytes_total") > 0.0, "{after}");
        assert!(
            moved("datamesh_chunk_cache_hits_total") + moved("datamesh_chunk_cache_misses_total")
                > 0.0,
            "{after}"
        );
    }
    assert!(m.unmount());
    // The listener ended with the mount.
    assert!(std::net::TcpStream::connect(&addr).is_err());
}

/// The contents `tests/fixtures/volume-format1.tar.xz` was made with: a volume
/// made by the format-1 code (`init --chunk-size 64K`; `put` of /small.txt,
/// /dir/lines.txt (three chunks of text) and /dir/noise.bin (one sharded
/// chunk of noise from this generator)).
fn format1_contents() -> [(&'static str, Vec<u8>); 3] {
    let lines: String = (0..6000)
        .map(|i| format!("datamesh format 1 line {i}\n"))
        .collect();
    let mut x: u64 = 1;
    let noise = (0..40 * 1024 + 123)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect();
    [
        (
            "small.txt",
            b"a small file, inline in the chunk map\n".to_vec(),
        ),
        ("dir/lines.txt", lines.into_bytes()),
        ("dir/noise.bin", noise),
    ]
}

/// A volume made by the previous format mounts and reads back; small
/// overwrites in place (layered chunks, format 2) read back after a remount
/// and fsck stays clean.
#[test]
fn a_format_1_volume_mounts_reads_and_takes_overwrites_in_place() {
    require!();
    use std::io::{Seek, SeekFrom, Write};
    let v = Volume::new();
    let fixture = fs_tests::repo().join("tests/fixtures/volume-format1.tar.xz");
    sh(v.dir.path(), &format!("tar -xJf {}", fixture.display()));
    let mut files = format1_contents();
    let m = v.mount();
    for (name, want) in &files {
        assert!(
            fs::read(m.at.join(name)).unwrap() == *want,
            "{name} reads back"
        );
    }
    // Overwrites inside stored chunks (inline, compressed-sharded, noise) and
    // one across a chunk boundary, each fsynced.
    for (i, (name, want)) in files.iter_mut().enumerate() {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(m.at.join(*name))
            .unwrap();
        for at in [3usize, want.len() / 2, (64 << 10) - 2] {
            if at + 5 > want.len() {
                continue;
            }
            let patch = format!("#{i}{at:05}#");
            let patch = &patch.as_bytes()[..5];
            f.seek(SeekFrom::Start(at as u64)).unwrap();
            f.write_all(patch).unwrap();
            f.sync_all().unwrap();
            want[at..at + 5].copy_from_slice(patch);
        }
    }
    for (name, want) in &files {
        assert!(
            fs::read(m.at.join(name)).unwrap() == *want,
            "{name} after overwrites"
        );
    }
    assert!(m.unmount(), "unmount flushes and exits 0");
    v.assert_fsck_clean();
    let m = v.mount();
    for (name, want) in &files {
        assert!(
            fs::read(m.at.join(name)).unwrap() == *want,
            "{name} after a remount"
        );
    }
    drop(m);
    v.assert_fsck_clean();
}

/// A volume whose namespace is in etcd (three members on loopback): made
/// with `init --meta`, it keeps nothing in `meta/`, takes a copied tree and
/// files of more chunks than one etcd transaction holds, reads them back
/// after a remount, frees them (fsck clean all along), goes on with one of
/// the three members killed, and fails, naming etcd, with a majority down.
#[test]
fn a_volume_with_its_namespace_in_etcd() {
    use std::os::unix::fs::PermissionsExt;
    require!();
    let mut etcd = fs_tests::Etcd::start(3);
    let v = Volume::new();
    let url = etcd.url();
    let out = v.ok(&["init", "--chunk-size", "64K", "--meta", &url]);
    assert!(out.contains("namespace in etcd://"), "{out}");
    assert!(!v.home().join("meta").exists());
    let engine = fs::metadata(v.home().join("meta-engine.toml")).unwrap();
    assert_eq!(engine.permissions().mode() & 0o777, 0o600);
    let m = v.mount();
    sh(
        &m.at,
        "cp -a /usr/share/doc/git copy && diff -r --no-dereference /usr/share/doc/git copy",
    );
    // 10 MiB in 64 KiB chunks: 160 of them, more than one transaction holds.
    sh(
        &m.at,
        "head -c 10485760 /dev/urandom > big && cp big big2 && cmp big big2",
    );
    assert!(m.unmount());
    v.assert_fsck_clean();
    let m = v.mount();
    sh(
        &m.at,
        "diff -r --no-dereference /usr/share/doc/git copy && cmp big big2 \
         && truncate -s 100 big && rm big2 && rm -r copy",
    );
    etcd.kill(0);
    sh(&m.at, "echo after > one-down && grep -q after one-down");
    assert!(m.unmount());
    v.assert_fsck_clean();
    etcd.kill(1);
    let t = std::time::Instant::now();
    let out = v.run(&["ls", "/"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("etcd"), "{err}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(40),
        "{:?}",
        t.elapsed()
    );
}

/// `meta migrate` moves a volume's namespace into etcd and back: refused
/// while a mount holds the volume, every key compared, the files the same
/// through a mount on each side, fsck clean on each side; a second move to
/// where a copy already is, is refused and changes nothing.
#[test]
fn a_volume_moves_its_namespace_to_etcd_and_back() {
    require!();
    let etcd = fs_tests::Etcd::start(1);
    let url = etcd.url();
    let v = Volume::new();
    let m = v.mount();
    sh(&m.at, "cp -a /usr/share/doc/git copy && echo one > one");
    let held = v.run(&["meta", "migrate", "--to", &url]);
    let err = String::from_utf8_lossy(&held.stderr);
    assert!(
        !held.status.success() && err.contains("stop it first"),
        "{err}"
    );
    assert!(m.unmount());
    let out = v.ok(&["meta", "migrate", "--to", &url]);
    assert!(out.contains("keys copied and compared"), "{out}");
    assert!(!v.home().join("meta").exists() && v.home().join("meta.before-etcd").is_dir());
    v.assert_fsck_clean();
    let m = v.mount();
    sh(
        &m.at,
        "diff -r --no-dereference /usr/share/doc/git copy && grep -q one one && echo two > two",
    );
    assert!(m.unmount());
    let again = v.run(&["meta", "migrate", "--to", &url]);
    assert!(!again.status.success(), "a second move to etcd");
    v.ok(&["meta", "migrate", "--to", "rocksdb"]);
    assert!(v.home().join("meta").is_dir() && !v.home().join("meta-engine.toml").exists());
    v.assert_fsck_clean();
    let m = v.mount();
    sh(
        &m.at,
        "diff -r --no-dereference /usr/share/doc/git copy && grep -q two two",
    );
    assert!(m.unmount());
    // The earlier copy is in the way of a new one until moved; then the
    // keys left in etcd are, and the refusal names them.
    let back = v.run(&["meta", "migrate", "--to", &url]);
    let err = String::from_utf8_lossy(&back.stderr);
    assert!(
        !back.status.success() && err.contains("meta.before-etcd"),
        "{err}"
    );
    fs::remove_dir_all(v.home().join("meta.before-etcd")).unwrap();
    let back = v.run(&["meta", "migrate", "--to", &url]);
    let err = String::from_utf8_lossy(&back.stderr);
    assert!(
        !back.status.success() && err.contains("etcdctl del --prefix dm/"),
        "{err}"
    );
    v.assert_fsck_clean();
}
