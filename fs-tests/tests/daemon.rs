//! The volume daemon: on a host where a mount or `datamesh serve` holds the
//! volume, every CLI command goes through its socket, with the same output
//! and exit codes as when the CLI opens the volume itself.

use fs_tests::{Volume, require, sh};
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn fails(v: &Volume, args: &[&str], says: &str) {
    let out = v.run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.contains(says), "{args:?} should say {says:?}: {err}");
}

#[test]
fn every_command_works_while_the_volume_is_mounted() {
    require!();
    let v = Volume::new();
    let m = v.mount();
    let top = v.dir.path();
    sh(
        top,
        "mkdir -p src/a/b && head -c 9000000 /dev/urandom > src/a/big && echo hi > src/a/b/small \
         && : > src/empty && ln -s a/big src/link && cp -a /usr/share/doc/bash src/doc",
    );
    v.ok(&["mkdir", "-p", "/in/x"]);
    v.ok(&["put", "-r", top.join("src").to_str().unwrap(), "/in/tree"]);
    // The mount sees the CLI's files at once, and the CLI the mount's.
    sh(&m.at, "diff -r --no-dereference ../src in/tree");
    sh(&m.at, "head -c 5000000 /dev/urandom > in/viafuse");
    v.ok(&["get", "-r", "/in", top.join("got").to_str().unwrap()]);
    sh(
        top,
        "diff -r --no-dereference src got/tree && cmp mnt/in/viafuse got/viafuse",
    );
    assert_eq!(v.ok(&["cat", "/in/tree/a/b/small"]), "hi\n");
    let ls = v.ok(&["ls", "-l", "/in/tree"]);
    assert!(ls.contains("link -> a/big"), "{ls}");
    let stat = v.ok(&["stat", "--chunks", "/in/tree/a/big"]);
    assert!(
        stat.contains("Size: 9000000") && stat.contains("Chunk: 2"),
        "{stat}"
    );
    v.ok(&["mv", "/in/tree/a/b", "/in/moved"]);
    assert!(m.at.join("in/moved/small").exists());
    v.ok(&["rm", "-r", "/in/tree"]);
    assert!(!m.at.join("in/tree").exists());
    // Errors name the path and the cause, and exit 1, as without a daemon.
    fails(
        &v,
        &["ls", "/nope"],
        "datamesh: ls: /nope: No such file or directory",
    );
    fails(&v, &["rm", "/in"], "datamesh: rm: /in: Is a directory");
    fails(
        &v,
        &["mkdir", "/in/x"],
        "datamesh: mkdir: /in/x: File exists",
    );
    fails(
        &v,
        &["put", "/etc/hostname", "/in/moved/small/x"],
        "Not a directory",
    );
    fails(&v, &["cat", "/in"], "datamesh: cat: /in: Is a directory");
    assert!(v.ok(&["df"]).contains("files"));
    let fsck = v.ok(&["fsck"]);
    assert!(fsck.contains("fsck: clean"), "{fsck}");
    v.ok(&["gc"]);
    let status = v.ok(&["status"]);
    assert!(status.contains("workers of the daemon"), "{status}");
    assert!(status.contains("volume-socket"), "{status}");
    v.ok(&["repair"]);
    v.ok(&["scrub"]);
    assert!(m.unmount());
    // Without the daemon the CLI opens the volume itself: all of it is there.
    v.assert_fsck_clean();
    assert_eq!(v.ok(&["cat", "/in/moved/small"]), "hi\n");
}

#[test]
fn serve_holds_the_volume_for_several_commands_at_once_and_a_signal_ends_it() {
    let v = Volume::new();
    let d = v.serve();
    let big = v.dir.path().join("big");
    sh(v.dir.path(), "head -c 120000000 /dev/urandom > big");
    let mut put = v
        .cmd(&["put", big.to_str().unwrap(), "/big"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Other commands are answered while the put streams, gc among them: with
    // no grace it would take the put's shards, stored but not yet committed,
    // if it ran between a store and its commit.
    let mut answered = 0;
    while put.try_wait().unwrap().is_none() {
        v.ok(&["mkdir", "-p", &format!("/d{answered}")]);
        assert!(v.ok(&["ls", "/"]).contains("d0"));
        v.ok(&["gc", "--grace", "0"]);
        answered += 1;
    }
    assert!(put.wait().unwrap().success());
    assert!(answered > 0, "the put ended before any other command ran");
    let got = v.dir.path().join("got");
    v.ok(&["get", "/big", got.to_str().unwrap()]);
    sh(v.dir.path(), "cmp big got");
    // Standard output streams too.
    let out = v.cmd(&["cat", "/big"]).output().unwrap();
    assert_eq!(out.stdout.len(), 120_000_000);
    assert!(d.stop(), "serve exits 0 on SIGTERM");
    assert!(!v.home().join("volume.sock").exists());
    v.assert_fsck_clean();
    assert!(v.ok(&["ls", "/"]).contains("big"));
}

#[test]
fn a_put_cut_off_midway_leaves_the_old_file_and_no_temporary_name() {
    let v = Volume::new();
    let _d = v.serve();
    v.ok(&["put", "/etc/hostname", "/f"]);
    let old = v.ok(&["cat", "/f"]);
    let mut put = v
        .datamesh()
        .args(["put", "-", "/f"])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = put.stdin.take().unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..20 {
        input.write_all(&chunk).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    put.kill().unwrap();
    put.wait().unwrap();
    drop(input);
    // The daemon undoes the put: the old contents, and no temporary file.
    let start = Instant::now();
    loop {
        let ls = v.ok(&["ls", "/"]);
        if !ls.contains(".put-") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a temporary name stayed: {ls}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(v.ok(&["cat", "/f"]), old);
    // A put from a source that fails is refused and undone the same way.
    fails(&v, &["put", "/proc/self/mem", "/g"], "datamesh: put: /g:");
    assert!(!v.ok(&["ls", "/"]).contains('g'));
}

#[test]
fn a_caller_of_another_protocol_version_is_told_both_versions() {
    let v = Volume::new();
    let d = v.serve();
    let ask = |hello: &[u8]| -> Vec<u8> {
        let mut s = std::os::unix::net::UnixStream::connect(&d.sock).unwrap();
        s.write_all(&(hello.len() as u32).to_be_bytes()).unwrap();
        s.write_all(hello).unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        answer
    };
    let mut hello = b"dmvolume".to_vec();
    hello.extend(7u32.to_be_bytes());
    let answer = String::from_utf8_lossy(&ask(&hello)).into_owned();
    assert!(
        answer.contains("version 5") && answer.contains("version 7"),
        "{answer}"
    );
    // Something that is not datamesh at all is refused too.
    let answer = String::from_utf8_lossy(&ask(b"GET / HTTP/1.1")).into_owned();
    assert!(answer.contains("not a datamesh"), "{answer}");
    // And the daemon goes on serving.
    v.ok(&["mkdir", "/still"]);
    assert!(d.stop());
}

#[test]
fn the_recovery_kit_is_exported_through_the_daemon_and_checked() {
    let v = Volume::new();
    v.ok(&["put", "/etc/hostname", "/h"]);
    let _d = v.serve();
    let out = v.run(&["kit", "export"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("master key"), "{err}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("MASTER KEY") && text.contains("\ndmkit2"),
        "{text}"
    );
    let kit = v.dir.path().join("kit.txt");
    std::fs::write(&kit, &text).unwrap();
    let kit = kit.to_str().unwrap();
    let said = v.ok(&["kit", "check", kit]);
    assert!(said.contains("it is this home's volume"), "{said}");
    assert!(
        !said.contains("dmkit2"),
        "check never prints the secrets: {said}"
    );
    // Copied by hand over two lines: still reads.
    let token = text.lines().find(|l| l.starts_with("dmkit2")).unwrap();
    let (a, b) = token.split_at(50);
    let copy = v.dir.path().join("copy.txt");
    std::fs::write(&copy, format!("{a}\n  {b}\n")).unwrap();
    assert!(
        v.ok(&["kit", "check", copy.to_str().unwrap()])
            .contains("this home's volume")
    );
    // One character mistyped, or the token cut: refused, saying why.
    let i = token.len() / 2;
    let typo = if &token[i..=i] == "0" { "1" } else { "0" };
    std::fs::write(&copy, format!("{}{typo}{}", &token[..i], &token[i + 1..])).unwrap();
    fails(
        &v,
        &["kit", "check", copy.to_str().unwrap()],
        "checksum does not match",
    );
    std::fs::write(&copy, &token[..token.len() - 3]).unwrap();
    fails(
        &v,
        &["kit", "check", copy.to_str().unwrap()],
        "not a usable recovery kit",
    );
    // Another volume's home: the kit is not its own.
    let other = Volume::new();
    other.ok(&["mkdir", "/x"]);
    fails(&other, &["kit", "check", kit], "another volume");
    // A kit file that is not there: the error names it.
    fails(
        &Volume::new(),
        &["kit", "check", "/nonexistent"],
        "/nonexistent",
    );
}
