//! The built binary, driven as a user would.

use crate::common::{BIN, Vol, noise, scratch};
use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn put_get_round_trip_and_listing() {
    let v = Vol::new();
    let local = v.dir.path().join("big");
    let data = noise(9 << 20 | 12345, 1);
    fs::write(&local, &data).unwrap();
    fs::write(v.dir.path().join("small"), b"hello\n").unwrap();
    v.ok(&["mkdir", "-p", "/docs/deep"]);
    v.ok(&[
        "put",
        local.to_str().unwrap(),
        v.dir.path().join("small").to_str().unwrap(),
        "/docs",
    ]);
    let ls = v.ok(&["ls", "-l", "/docs"]);
    assert!(
        ls.contains(" big") && ls.contains(" small") && ls.contains(" deep"),
        "{ls}"
    );
    assert!(ls.contains(&format!(" {} ", data.len())), "{ls}");
    let back = v.dir.path().join("back");
    v.ok(&["get", "/docs/big", back.to_str().unwrap()]);
    assert!(
        fs::read(&back).unwrap() == data,
        "get returned different bytes"
    );
    assert_eq!(v.ok(&["cat", "/docs/small"]), "hello\n");
    let df = v.ok(&["df"]);
    assert!(df.contains("4+2"), "{df}");
    assert!(v.ok(&["fsck"]).contains("clean"));
    // Overwrite with shorter content: no stale tail.
    fs::write(&local, b"short").unwrap();
    v.ok(&["put", local.to_str().unwrap(), "/docs/big"]);
    assert_eq!(v.ok(&["cat", "/docs/big"]), "short");
    v.ok(&["mv", "/docs/big", "/docs/deep"]);
    v.ok(&["rm", "-r", "/docs"]);
    assert_eq!(v.ok(&["ls", "/"]), "");
    assert!(v.ok(&["gc", "--grace", "0"]).contains("deleted"));
    assert!(v.ok(&["fsck"]).contains("clean"));
}

#[test]
fn recursive_put_and_get_keep_tree_and_symlinks() {
    let v = Vol::new();
    let src = v.dir.path().join("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::write(src.join("a/b/f"), noise(100_000, 2)).unwrap();
    fs::write(src.join("top"), b"x").unwrap();
    std::os::unix::fs::symlink("a/b/f", src.join("link")).unwrap();
    v.ok(&["put", "-r", src.to_str().unwrap(), "/"]);
    let out = v.dir.path().join("out");
    v.ok(&["get", "-r", "/src", out.to_str().unwrap()]);
    let diff = Command::new("diff")
        .arg("-r")
        .arg(&src)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    assert_eq!(
        fs::read_link(out.join("link")).unwrap().to_str(),
        Some("a/b/f")
    );
}

#[test]
fn stdin_and_stdout_streams() {
    let v = Vol::new();
    let data = noise(5 << 20, 3);
    let mut child = v
        .cmd(&["put", "-", "/s"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    assert!(child.wait().unwrap().success());
    let out = v.cmd(&["get", "/s", "-"]).output().unwrap();
    assert!(out.status.success());
    assert!(out.stdout == data);
}

#[test]
fn errors_name_the_path_and_the_cause() {
    let v = Vol::new();
    let out = v.run(&["mkdir", "/a/b"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "datamesh: mkdir: /a/b: No such file or directory"
    );
    let long = format!("/{}", "n".repeat(256));
    let out = v.run(&["mkdir", &long]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("File name too long"));
    v.ok(&["mkdir", "/d"]);
    v.ok(&["put", "/etc/hostname", "/d/f"]);
    let out = v.run(&["rm", "/d"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/d: Is a directory"));
    let out = v.run(&["mkdir", "/d"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/d: File exists"));
    let out = v.run(&["ls", "relative"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("relative"));
    let out = v.run(&["get", "/missing", "/tmp/x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/missing: No such file or directory"));
    // Usage errors exit 2.
    assert_eq!(v.run(&["mv", "/only-one"]).status.code(), Some(2));
    assert_eq!(v.run(&["frobnicate"]).status.code(), Some(2));
    // rm -f of a missing path is quiet and succeeds.
    v.ok(&["rm", "-f", "/nope"]);
    // init refuses to overwrite the volume that first use created.
    let out = v.run(&["init"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    // Everything listed still reads.
    assert_eq!(
        v.ok(&["cat", "/d/f"]),
        fs::read_to_string("/etc/hostname").unwrap()
    );
}

#[test]
fn lost_and_corrupt_shards_are_rebuilt_on_read_and_fsck_reports_real_loss() {
    let v = Vol::new();
    let local = v.dir.path().join("f");
    let data = noise(10 << 20, 4);
    fs::write(&local, &data).unwrap();
    v.ok(&["put", local.to_str().unwrap(), "/f"]);
    // Any 2 of chunk 1's 6 shards: one deleted, one overwritten with garbage.
    let ids = v.shards_of("/f", 1);
    assert_eq!(ids.len(), 6);
    fs::remove_file(v.shard_path(&ids[0])).unwrap();
    fs::write(v.shard_path(&ids[4]), b"garbage").unwrap();
    let fsck = v.run(&["fsck"]);
    assert_eq!(fsck.status.code(), Some(1), "fsck must report lost shards");
    let back = v.dir.path().join("back");
    v.ok(&["get", "/f", back.to_str().unwrap()]);
    assert!(fs::read(&back).unwrap() == data);
    // The read rewrote both.
    assert!(v.shard_path(&ids[0]).exists());
    assert!(v.ok(&["fsck"]).contains("clean"));
    // Degrade again, this time let fsck --repair rebuild (parity shards included).
    fs::remove_file(v.shard_path(&ids[5])).unwrap();
    assert!(v.ok(&["fsck", "--repair"]).contains("1 repaired"));
    assert!(v.ok(&["fsck"]).contains("clean"));
    // Three gone: the chunk is lost, and both fsck and a read say so.
    for i in [1, 2, 3] {
        fs::remove_file(v.shard_path(&ids[i])).unwrap();
    }
    let fsck = v.run(&["fsck"]);
    assert_eq!(fsck.status.code(), Some(1));
    let text = String::from_utf8_lossy(&fsck.stdout);
    assert!(
        text.contains("/f: chunk 1") && text.contains("data lost"),
        "{text}"
    );
    let cat = v.run(&["cat", "/f"]);
    assert_eq!(cat.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&cat.stderr).contains("/f:"));
}

#[test]
fn a_2_gib_put_stays_within_its_memory_bound() {
    let v = Vol::new();
    v.ok(&["init"]);
    // /usr/bin/time reports the child's peak RSS in KiB.
    let mut child = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(BIN)
        .arg("--home")
        .arg(v.home())
        .args(["put", "-", "/big"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/time (Debian package time) is installed by scripts/setup.sh");
    let mut stdin = child.stdin.take().unwrap();
    let block = noise(1 << 20, 5);
    for i in 0u64..2048 {
        let mut b = block.clone();
        b[..8].copy_from_slice(&i.to_le_bytes());
        stdin.write_all(&b).unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let kib: u64 = err.lines().last().unwrap().trim().parse().unwrap();
    eprintln!("peak RSS of a 2 GiB put: {} MiB", kib / 1024);
    assert!(kib < 300 * 1024, "peak RSS {kib} KiB over 300 MiB");
    assert!(
        v.ok(&["stat", "/big"])
            .contains(&format!("Size: {}", 2u64 << 30))
    );
}

/// A full disk: the write fails with ENOSPC naming the path, and what was stored
/// before still reads. Needs root to mount a small tmpfs.
#[test]
fn full_disk_fails_cleanly_and_loses_nothing() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("datamesh-full")
        .tempdir_in(scratch())
        .unwrap();
    let mnt = dir.path().join("m");
    fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=80m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let home = mnt.join("home");
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("--home")
            .arg(&home)
            .args(args)
            .output()
            .unwrap()
    };
    let keep = dir.path().join("keep");
    fs::write(&keep, noise(3 << 20, 6)).unwrap();
    assert!(
        run(&["put", keep.to_str().unwrap(), "/keep"])
            .status
            .success()
    );
    let big = dir.path().join("big");
    fs::write(&big, noise(100 << 20, 7)).unwrap();
    let out = run(&["put", big.to_str().unwrap(), "/big"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/big: No space left on device"), "{err}");
    let cat = run(&["cat", "/keep"]);
    assert!(cat.status.success());
    assert!(cat.stdout == fs::read(&keep).unwrap());
    let fsck = run(&["fsck"]);
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
fn invite_and_node_refuse_bad_input_with_clear_errors() {
    let v = Vol::new();
    let out = v.ok(&["invite"]);
    let token = out.lines().last().unwrap();
    assert!(token.starts_with("dmjoin2"), "{out}");
    assert!(
        fs::read(v.home().join("mesh.key")).unwrap().len() == 32,
        "init makes a mesh key"
    );
    let data = v.dir.path().join("node");
    let node = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("node")
            .arg("--data")
            .arg(&data)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    };
    assert!(node(&[]).contains("no mesh key yet: start with --join TOKEN"));
    assert!(node(&["--join", "dmjoin1zz"]).contains("join token: not hex"));
    assert!(node(&["--join", &token[..token.len() - 4]]).contains("join token"));
    let err = node(&["--join", token, "--listen", "/ip4/1.2.3/tcp/1"]);
    assert!(err.contains("--listen /ip4/1.2.3/tcp/1"), "{err}");
    // Another volume's token, after joining this one: refused, naming the dir.
    let other = Vol::new();
    let theirs = other.ok(&["invite"]);
    fs::create_dir_all(&data).unwrap();
    fs::copy(v.home().join("mesh.key"), data.join("mesh.key")).unwrap();
    let err = node(&["--join", theirs.lines().last().unwrap()]);
    assert!(err.contains("already belongs to another mesh"), "{err}");
    // A bad bootstrap address names itself.
    let err = v.run(&["--bootstrap", "nonsense", "ls"]);
    assert_eq!(err.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&err.stderr).contains("bootstrap address nonsense"));
}

#[test]
fn a_widened_home_is_made_private_again_and_another_users_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let v = Vol::new();
    v.ok(&["mkdir", "/d"]);
    fs::set_permissions(v.home(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(v.home().join("meta"), fs::Permissions::from_mode(0o755)).unwrap();
    let out = v.run(&["ls"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("set to 0700"));
    for d in [v.home(), v.home().join("meta")] {
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
    // A volume owned by another user is refused (root excepted), even when
    // its modes would let the caller in.
    let as_uid = |uid: u32, home: &std::path::Path, bin: &std::path::Path| {
        Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
            ])
            .arg(bin)
            .arg("--home")
            .arg(home)
            .arg("ls")
            .output()
            .unwrap()
    };
    let can_setpriv = Command::new("setpriv")
        .args(["--reuid=65534", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nix::unistd::geteuid().is_root() || !can_setpriv {
        eprintln!("skipped the other-user half: needs root and setpriv");
        return;
    }
    fs::set_permissions(v.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bin = v.dir.path().join("datamesh");
    fs::copy(BIN, &bin).unwrap();
    let theirs = v.dir.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let made = as_uid(65534, &theirs, &bin);
    assert!(made.status.success(), "{made:?}");
    for d in [theirs.clone(), theirs.join("meta")] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = as_uid(65533, &theirs, &bin);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("owned by uid 65534, not by this user"),
        "{err}"
    );
}

/// `get` leaves holes where a file has whole blocks of zeros: a sparse file
/// copied out takes the space of its data, not of its size.
#[test]
fn get_writes_runs_of_zeros_as_holes() {
    use std::os::unix::fs::MetadataExt;
    let v = Vol::new();
    let local = v.dir.path().join("sparse");
    let mut data = vec![0u8; 16 << 20];
    data[5_000_000..5_000_010].copy_from_slice(b"0123456789");
    fs::write(&local, &data).unwrap();
    v.ok(&["put", local.to_str().unwrap(), "/sparse"]);
    let back = v.dir.path().join("back");
    v.ok(&["get", "/sparse", back.to_str().unwrap()]);
    assert!(fs::read(&back).unwrap() == data);
    let m = fs::metadata(&back).unwrap();
    assert_eq!(m.len(), 16 << 20);
    assert!(m.blocks() * 512 < 1 << 20, "{} blocks", m.blocks());
}
