//! Member devices: other hosts of the same volume, each with a home directory
//! of its own, using the namespace through the home node's daemon and moving
//! file bytes straight to and from the storage peers (real processes: six
//! storage peers, the home node's `datamesh serve`, two member devices).

use fs_tests::{Cluster, Volume, sh};
use std::time::{Duration, Instant};

fn fails(v: &Volume, args: &[&str], says: &str) -> String {
    let out = v.run(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.contains(says), "{args:?} should say {says:?}: {err}");
    err
}

/// The device id `datamesh members` lists for the member named `name`.
fn member_id(home: &Volume, name: &str) -> String {
    let members = home.ok(&["members"]);
    members
        .lines()
        .find(|l| l.contains(name))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{name} is not listed: {members}"))
        .to_string()
}

/// Whether the mesh key at `path` is a rotated ring (not the first key).
fn rotated_ring(path: &std::path::Path) -> bool {
    std::fs::read(path).unwrap().starts_with(b"dmmesh2\n")
}

fn last_line(text: &str) -> String {
    text.lines().last().unwrap_or_default().trim().to_string()
}

/// One sqlite3 process inserting 150 rows into `db.sqlite` in `dir`, one
/// transaction each (its locks go through the home).
fn sqlite_writer(dir: &std::path::Path, host: &str, rows: usize) -> std::process::Child {
    let script: String = (0..rows)
        .map(|i| format!("INSERT INTO t VALUES('{host}', {i});\n"))
        .collect();
    let script_path = dir.parent().unwrap().join(format!("{host}.sql"));
    std::fs::write(&script_path, script).unwrap();
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "sqlite3 -cmd '.timeout 60000' db.sqlite < {}",
            script_path.display()
        ))
        .current_dir(dir)
        .spawn()
        .unwrap()
}

/// A home node with 6 storage peers, its daemon listening for members,
/// who reach it directly or through a slow link.
struct Home {
    home: Volume,
    cluster: Cluster,
    listen: String,
    /// The slow link members are invited through, if any.
    far: Option<fs_tests::proxy::DelayProxy>,
}

/// A member device's mount and where its metrics are; the mount goes
/// before the device's directory.
struct Measured {
    ma: fs_tests::Mount,
    metrics: String,
    _device: Volume,
}

impl Home {
    fn start() -> (Home, fs_tests::Daemon) {
        let h = Home::new();
        let daemon = h.serve();
        (h, daemon)
    }

    /// The volume and its peers, with no daemon yet.
    fn new() -> Home {
        let home = Volume::new();
        let cluster = Cluster::start(&home, 6);
        let listen = format!("/ip4/127.0.0.1/tcp/{}", fs_tests::free_ports(1));
        Home {
            home,
            cluster,
            listen,
            far: None,
        }
    }

    /// As `start`, but members are invited through a link with a round
    /// trip of `rtt` to the home (storage peers are reached directly).
    fn start_far(rtt: Duration) -> (Home, fs_tests::Daemon) {
        let h = Home::new_far(rtt);
        let daemon = h.serve();
        (h, daemon)
    }

    /// As `new`, with members invited through a link of round trip `rtt`.
    fn new_far(rtt: Duration) -> Home {
        let mut h = Home::new();
        let port: u16 = h.listen.rsplit('/').next().unwrap().parse().unwrap();
        h.far = Some(fs_tests::proxy::DelayProxy::start(
            ([127, 0, 0, 1], port).into(),
            rtt / 2,
        ));
        h
    }

    fn serve(&self) -> fs_tests::Daemon {
        self.home
            .serve_with(&self.cluster.bootstrap_flags(), &["--listen", &self.listen])
    }

    /// The home's own mount, its daemon listening for members.
    fn mount_listening(&self) -> fs_tests::Mount {
        self.mount_listening_with(&[])
    }

    fn mount_listening_with(&self, extra: &[&str]) -> fs_tests::Mount {
        let mut flags = self.cluster.bootstrap_flags();
        flags.extend(["--listen".to_string(), self.listen.clone()]);
        let mut flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        flags.extend(extra);
        self.home.mount_with(&flags)
    }

    /// How many one-row transactions each host's sqlite writer runs: a
    /// far member's cost some 30 round trips each (its locks, its journal).
    fn sqlite_rows(&self) -> usize {
        if self.far.is_some() { 25 } else { 150 }
    }

    /// A token for one member device, naming the address members dial.
    fn invite(&self) -> String {
        let address = match &self.far {
            Some(p) => format!("/ip4/127.0.0.1/tcp/{}", p.port),
            None => self.listen.clone(),
        };
        last_line(&self.home.ok(&["invite", "--member", "--address", &address]))
    }

    /// Member device "a", joined and mounted with its metrics served.
    fn measured_member(&self) -> Measured {
        let device = self.member("a");
        let metrics = format!("127.0.0.1:{}", fs_tests::free_ports(1));
        let ma = device.mount_with(&["--metrics", &metrics]);
        Measured {
            ma,
            metrics,
            _device: device,
        }
    }

    /// A new member device, joined.
    fn member(&self, name: &str) -> Volume {
        let v = Volume::new();
        v.ok(&["join", &self.invite(), "--name", name]);
        v
    }
}

#[test]
fn member_devices_share_the_volume_and_a_revoked_one_is_cut_off() {
    let (h, daemon) = Home::start();
    let (home, c) = (&h.home, &h.cluster);
    let invite = || h.invite();

    // Two devices join, each with a token of its own: a token admits one.
    let (a, b) = (Volume::new(), Volume::new());
    let token = invite();
    a.ok(&["join", &token, "--name", "laptop-a"]);
    fails(&b, &["join", &token], "no open member invitation");
    assert!(!b.home().exists(), "a failed join leaves nothing behind");
    fails(&b, &["join", c.token()], "a storage peer's token");
    b.ok(&["join", &invite(), "--name", "host-b"]);
    for m in [&a, &b] {
        assert!(!m.home().join("meta").exists(), "a member has no namespace");
    }

    // A puts a tree; B lists it and gets it back identical; the home has it.
    let top = a.dir.path();
    sh(
        top,
        "mkdir -p src/deep && head -c 9000000 /dev/urandom > src/big && echo hi > src/deep/small \
         && : > src/empty && ln -s deep/small src/link && cp -a /usr/share/doc/bash src/doc",
    );
    a.ok(&["put", "-r", top.join("src").to_str().unwrap(), "/t"]);
    let listing = b.ok(&["ls", "-R", "/t"]);
    assert!(
        listing.contains("small") && listing.contains("big"),
        "{listing}"
    );
    let got = b.dir.path().join("got");
    b.ok(&["get", "-r", "/t", got.to_str().unwrap()]);
    sh(
        top,
        &format!("diff -r --no-dereference src {}", got.display()),
    );
    assert_eq!(b.ok(&["cat", "/t/deep/small"]), "hi\n");
    assert!(home.ok(&["ls", "-l", "/t"]).contains(" 9000000 "));

    // A member takes and lists snapshots, but the upkeep that deletes or
    // rewrites stored data is the home's: each is refused, naming it.
    a.ok(&["snapshot", "create", "s1"]);
    assert!(a.ok(&["snapshot", "list"]).contains("s1"));
    for (args, says) in [
        (
            &["snapshot", "delete", "s1"][..],
            "may not delete snapshots",
        ),
        (&["gc", "--grace", "0"][..], "may not collect garbage"),
        (&["repair"][..], "may not run a repair"),
        (&["scrub"][..], "may not run a scrub"),
        (&["fsck", "--repair"][..], "may not repair with fsck"),
    ] {
        fails(&a, args, says);
    }
    assert!(home.ok(&["snapshot", "list"]).contains("s1"));
    home.ok(&["snapshot", "delete", "s1"]);
    // The file bytes went to the storage peers, never through the home: its
    // own store holds nothing.
    assert!(
        !home.home().join("store/shards").exists() || {
            let n = sh(&home.home(), "find store/shards -type f | wc -l");
            n.trim() == "0"
        }
    );
    // Changes from one device are seen by the other at once.
    b.ok(&["mv", "/t/deep", "/t/moved"]);
    assert!(a.ok(&["ls", "/t"]).contains("moved"));
    fails(
        &a,
        &["ls", "/t/deep"],
        "datamesh: ls: /t/deep: No such file or directory",
    );
    fails(&a, &["mkdir", "/t/moved"], "File exists");
    a.assert_fsck_clean();

    // The members, and a revocation that takes effect at once.
    let b_id = member_id(home, "host-b");
    member_id(home, "laptop-a");
    home.ok(&["members", "revoke", &b_id]);
    fails(&b, &["ls", "/"], "not a member device");
    assert!(home.ok(&["members"]).contains("revoked"));
    // The storage peers are told: one member left.
    let start = Instant::now();
    let logs = || {
        (0..6)
            .map(|i| {
                std::fs::read_to_string(home.dir.path().join(format!("nodes/node{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
    };
    let told = |l: &String| {
        l.lines()
            .rev()
            .find(|l| l.contains("member devices:"))
            .map(|l| l.trim_end().to_string())
    };
    loop {
        let last: Vec<Option<String>> = logs().iter().map(told).collect();
        if last.iter().all(|l| {
            l.as_deref()
                .is_some_and(|l| l.ends_with("member devices: 1"))
        }) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the storage peers were not told of the revocation: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(a.ok(&["cat", "/t/moved/small"]), "hi\n");

    // A device with another mesh's key cannot even reach the home.
    std::fs::write(a.home().join("mesh.key"), [9u8; 32]).unwrap();
    let t = Instant::now();
    let out = a.run(&["ls", "/"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(t.elapsed() < Duration::from_secs(30), "it must not hang");
    drop(daemon);
}

#[test]
fn a_member_waits_a_bounded_time_for_a_home_that_is_down_and_goes_on_when_it_returns() {
    let (h, daemon) = Home::start();
    let a = h.member("a");
    a.ok(&["put", "/etc/hostname", "/h"]);
    assert!(daemon.stop());
    let t = Instant::now();
    let err = fails(&a, &["ls", "/"], "home node");
    assert!(t.elapsed() < Duration::from_secs(30), "{err}");
    // The daemon comes back: the member goes on.
    let _daemon = h.serve();
    let start = Instant::now();
    loop {
        let out = a.run(&["cat", "/h"]);
        if out.status.success() {
            assert_eq!(out.stdout, std::fs::read("/etc/hostname").unwrap());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_member_killed_mid_put_leaves_the_old_file_and_a_home_killed_mid_copy_loses_nothing() {
    let (h, daemon) = Home::start();
    let home = &h.home;
    let a = h.member("a");
    a.ok(&["put", "/etc/hostname", "/f"]);
    let old = a.ok(&["cat", "/f"]);

    // The member is killed while it streams a new version in.
    let mut put = a
        .datamesh()
        .args(["put", "-", "/f"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut input = put.stdin.take().unwrap();
    let block = vec![3u8; 1 << 20];
    for _ in 0..24 {
        use std::io::Write;
        if input.write_all(&block).is_err() {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    put.kill().unwrap();
    put.wait().unwrap();
    drop(input);
    assert_eq!(a.ok(&["cat", "/f"]), old, "the old version, whole");
    assert!(
        !home.ok(&["ls", "/"]).contains(".put-"),
        "no half-made name"
    );

    // The home node is killed while the member copies a file in: the copy
    // ends (no hang), and once the home is back the copy works and nothing
    // in the volume is damaged.
    let big = a.dir.path().join("big");
    sh(a.dir.path(), "head -c 150000000 /dev/urandom > big");
    let mut copy = a
        .cmd(&["put", big.to_str().unwrap(), "/big"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    daemon.kill();
    let t = Instant::now();
    while copy.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(60), "the copy hangs");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _daemon = h.serve();
    let start = Instant::now();
    while !a.run(&["ls", "/"]).status.success() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the member did not get back in"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    a.ok(&["put", big.to_str().unwrap(), "/big"]);
    let back = a.dir.path().join("back");
    a.ok(&["get", "/big", back.to_str().unwrap()]);
    sh(a.dir.path(), "cmp big back");
    assert_eq!(a.ok(&["cat", "/f"]), old);
    let fsck = home.ok(&["fsck"]);
    assert!(
        fsck.contains("fsck: clean") || fsck.contains("0 lost"),
        "{fsck}"
    );
}

#[test]
fn member_devices_mount_the_volume_and_see_each_others_changes() {
    fs_tests::require!("restic", "vim", "sqlite3");
    see_each_others_changes(Home::start(), "/usr/share/doc");
}

/// The same, every member's link to the home a 20 ms round trip, with a
/// smaller tree (each file another host reads costs a round trip to open).
#[test]
fn member_devices_mount_the_volume_and_see_each_others_changes_over_a_20_ms_link() {
    fs_tests::require!("restic", "vim", "sqlite3");
    see_each_others_changes(
        Home::start_far(Duration::from_millis(20)),
        "/usr/share/doc/git",
    );
}

fn see_each_others_changes((h, _daemon): (Home, fs_tests::Daemon), tree: &str) {
    let home = &h.home;
    let (a, b, cli) = (h.member("a"), h.member("b"), h.member("c"));
    let ma = a.mount();
    sh(
        &ma.at,
        &format!(
            "cp -a {tree} copy && head -c 9000000 /dev/urandom > big \
             && diff -r --no-dereference {tree} copy"
        ),
    );
    // Another host with the CLI only gets exactly that.
    let listing = cli.ok(&["ls", "-R", "/copy"]);
    assert!(listing.contains("copyright"), "{listing}");
    let got = cli.dir.path().join("got");
    cli.ok(&["get", "-r", "/copy", got.to_str().unwrap()]);
    sh(
        cli.dir.path(),
        &format!("diff -r --no-dereference {tree} got"),
    );
    // Another host mounts it and reads it. Its kernel may cache names and
    // attributes for a minute: only the home's pushes tell it of changes.
    let mb = b.mount_with(&["--entry-ttl", "60", "--attr-ttl", "60"]);
    sh(&mb.at, &format!("diff -r --no-dereference {tree} copy"));
    sh(&mb.at, &format!("cmp big {}", ma.at.join("big").display()));
    let soon = |what: &str, done: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !done() {
            assert!(t.elapsed() < Duration::from_secs(3), "B: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // A renames a directory: B sees it at once, though its cache says otherwise.
    sh(&mb.at, "ls -l copy >/dev/null && ls -l >/dev/null");
    sh(&ma.at, "mv copy moved");
    soon("still sees the old name", &|| {
        mb.at.join("moved").exists() && !mb.at.join("copy").exists()
    });
    // A changes a file's size: B's cached attributes are dropped.
    sh(&ma.at, "head -c 5000 /dev/zero >> big");
    soon("still sees the old size", &|| {
        std::fs::metadata(mb.at.join("big")).unwrap().len() == 9_005_000
    });
    // A edits a file with vim and closes it; B's next open reads the new text.
    sh(&ma.at, "echo first > note");
    assert_eq!(
        std::fs::read_to_string(mb.at.join("note")).unwrap(),
        "first\n"
    );
    sh(
        &ma.at,
        "vim -u NONE -i NONE -es -c '%s/first/the second, longer text/' -c wq note",
    );
    assert_eq!(
        std::fs::read_to_string(mb.at.join("note")).unwrap(),
        "the second, longer text\n"
    );
    // restic backs up into B's mount while A reads the tree.
    let reader = std::process::Command::new("sh")
        .arg("-c")
        .arg("for i in 1 2; do tar cf - moved | cksum; done")
        .current_dir(&ma.at)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let restic = |args: &str| {
        sh(
            &mb.at,
            &format!("RESTIC_PASSWORD=pw restic --no-cache -q -r repo {args}"),
        )
    };
    restic("init");
    restic("backup /usr/share/doc/bash /etc/hostname");
    restic("check --read-data");
    let restored = b.dir.path().join("restored");
    restic(&format!("restore latest --target {}", restored.display()));
    sh(
        b.dir.path(),
        "diff -r --no-dereference /usr/share/doc/bash restored/usr/share/doc/bash",
    );
    let sums = reader.wait_with_output().unwrap();
    assert!(sums.status.success());
    let sums = String::from_utf8_lossy(&sums.stdout).into_owned();
    let lines: Vec<&str> = sums.lines().collect();
    assert!(lines.len() == 2 && lines[0] == lines[1], "{sums}");
    // A file removed on A while B holds it open stays readable on B.
    sh(&ma.at, "echo kept > open-file");
    let held = std::fs::File::open(mb.at.join("open-file")).unwrap();
    sh(&ma.at, "rm open-file");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut &held, &mut text).unwrap();
    assert_eq!(text, "kept\n");
    drop(held);
    // flock from two hosts: the home node keeps one lock table for both.
    sh(&ma.at, "touch lockfile");
    let mut holder = std::process::Command::new("flock")
        .args(["-x", "lockfile", "-c", "sleep 2"])
        .current_dir(&ma.at)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let busy = std::process::Command::new("flock")
        .args(["-n", "-x", "lockfile", "-c", "true"])
        .current_dir(&mb.at)
        .status()
        .unwrap();
    assert!(!busy.success(), "B took a lock A holds");
    let t = Instant::now();
    sh(&mb.at, "flock -x -w 20 lockfile -c true");
    assert!(
        t.elapsed() > Duration::from_millis(500),
        "B's waiting lock was granted while A held it"
    );
    assert!(holder.wait().unwrap().success());
    // sqlite from both hosts at once, each one process running many
    // transactions: its locks go through the home, and a host that takes a
    // lock reads what the other wrote before letting go.
    sh(
        &ma.at,
        "sqlite3 db.sqlite 'PRAGMA journal_mode=DELETE; CREATE TABLE t(host TEXT, n INTEGER);'",
    );
    let rows = h.sqlite_rows();
    let (mut wa, mut wb) = (
        sqlite_writer(&ma.at, "a", rows),
        sqlite_writer(&mb.at, "b", rows),
    );
    assert!(wa.wait().unwrap().success() && wb.wait().unwrap().success());
    let check = sh(
        &mb.at,
        "sqlite3 db.sqlite 'PRAGMA integrity_check; SELECT count(*), count(DISTINCT host) FROM t;'",
    );
    assert_eq!(check.trim(), format!("ok\n{}|2", 2 * rows), "{check}");
    assert!(ma.unmount() && mb.unmount(), "unmounts flush and exit 0");
    home.assert_fsck_clean();
}

#[test]
fn a_dead_member_mount_loses_its_locks_and_a_home_killed_mid_copy_into_a_mount_loses_nothing() {
    fs_tests::require!();
    dead_member_and_killed_home(Home::start());
}

/// The same, every member's link to the home a 20 ms round trip.
#[test]
fn a_dead_member_mount_loses_its_locks_and_a_home_killed_mid_copy_into_a_mount_loses_nothing_over_a_20_ms_link()
 {
    fs_tests::require!();
    dead_member_and_killed_home(Home::start_far(Duration::from_millis(20)));
}

fn dead_member_and_killed_home((h, daemon): (Home, fs_tests::Daemon)) {
    let (a, b) = (h.member("a"), h.member("b"));
    // B's mount dies holding a lock: the home drops it once B's lease (its
    // asks for changes) runs out, and A gets it.
    let mb = b.mount();
    sh(&mb.at, "touch lockfile");
    // Each in a process group of its own, killed whole: no `sleep` is left.
    use std::os::unix::process::CommandExt;
    let mut holder = std::process::Command::new("flock")
        .args(["-x", "lockfile", "-c", "sleep 600"])
        .current_dir(&mb.at)
        .process_group(0)
        .spawn()
        .unwrap();
    // B also holds a file open that the home then removes: kept while open,
    // and freed once B's lease is over (B's opens go with it).
    sh(&mb.at, "head -c 3000000 /dev/urandom > held");
    let held_shards = h.home.shards_of("/held", 0);
    let mut reader = std::process::Command::new("sh")
        .args(["-c", "exec 3<held; sleep 600"])
        .current_dir(&mb.at)
        .process_group(0)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    h.home.ok(&["rm", "/held"]);
    let stored =
        |id: &String| (0..6).any(|i| h.cluster.shard_files(i).iter().any(|f| f.ends_with(id)));
    h.home.ok(&["gc", "--grace", "0"]);
    assert!(
        held_shards.iter().all(stored),
        "gc freed a removed file that B still has open"
    );
    let ma = a.mount();
    let try_lock = || {
        std::process::Command::new("flock")
            .args(["-n", "-x", "lockfile", "-c", "true"])
            .current_dir(&ma.at)
            .status()
            .unwrap()
            .success()
    };
    assert!(!try_lock(), "A took the lock B holds");
    let b_at = mb.at.clone();
    mb.kill();
    for p in [&mut holder, &mut reader] {
        // SAFETY: a plain signal to the group this test made.
        unsafe { libc::kill(-(p.id() as i32), libc::SIGKILL) };
        let _ = p.wait();
    }
    let _ = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(&b_at)
        .status();
    let t = Instant::now();
    while !try_lock() {
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "the dead mount's lock outlived its lease"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    h.home.ok(&["gc", "--grace", "0"]);
    assert!(
        !held_shards.iter().any(stored),
        "the removed file B held open was not freed after B's lease"
    );

    // The home node is killed while A copies a file into its mount: the copy
    // ends with an error (no hang); once the home is back the mount goes on
    // by itself and nothing in the volume is damaged.
    let big = a.dir.path().join("big");
    sh(a.dir.path(), "head -c 150000000 /dev/urandom > big");
    let mut copy = std::process::Command::new("cp")
        .arg(&big)
        .arg(ma.at.join("big"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    daemon.kill();
    let t = Instant::now();
    while copy.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(90), "the copy hangs");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _daemon = h.serve();
    let start = Instant::now();
    // A listing the home answers (an opendir alone may be answered from
    // the attributes the mount still has).
    let answers = || {
        std::fs::read_dir(&ma.at)
            .and_then(|d| d.collect::<std::io::Result<Vec<_>>>())
            .is_ok()
    };
    while !answers() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the mount did not come back"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    sh(
        &ma.at,
        &format!("cp {} big && cmp big {}", big.display(), big.display()),
    );
    assert!(ma.unmount(), "the unmount flushes and exits 0");
    let fsck = h.home.ok(&["fsck"]);
    assert!(
        fsck.contains("fsck: clean") || fsck.contains("0 lost"),
        "{fsck}"
    );
}

/// The home's own mount and a member's mount run sqlite on one database at
/// once. The home keeps its kernel's cache of a file across its own locks
/// unless another host changed the file since; every row from both hosts
/// must be there, and the database intact, seen from either side.
#[test]
fn the_home_mount_and_a_member_mount_share_sqlite_under_locks() {
    fs_tests::require!("sqlite3");
    share_sqlite(Home::new());
}

/// The same, every member's link to the home a 20 ms round trip.
#[test]
fn the_home_mount_and_a_member_mount_share_sqlite_under_locks_over_a_20_ms_link() {
    fs_tests::require!("sqlite3");
    share_sqlite(Home::new_far(Duration::from_millis(20)));
}

fn share_sqlite(h: Home) {
    let mh = h.mount_listening();
    let b = h.member("b");
    let mb = b.mount();
    sh(
        &mh.at,
        "sqlite3 db.sqlite 'PRAGMA journal_mode=DELETE; CREATE TABLE t(host TEXT, n INTEGER);'",
    );
    let rows = h.sqlite_rows();
    let (mut wh, mut wb) = (
        sqlite_writer(&mh.at, "home", rows),
        sqlite_writer(&mb.at, "b", rows),
    );
    assert!(wh.wait().unwrap().success() && wb.wait().unwrap().success());
    for m in [&mh, &mb] {
        let check = sh(
            &m.at,
            "sqlite3 db.sqlite 'PRAGMA integrity_check; SELECT count(*), count(DISTINCT host) FROM t;'",
        );
        assert_eq!(check.trim(), format!("ok\n{}|2", 2 * rows), "{check}");
    }
    // The home writes alone, then the member reads: and the other way round.
    sh(
        &mh.at,
        "sqlite3 db.sqlite \"INSERT INTO t VALUES('home', 1000);\"",
    );
    let got = sh(&mb.at, "sqlite3 db.sqlite 'SELECT count(*) FROM t;'");
    assert_eq!(got.trim(), (2 * rows + 1).to_string());
    sh(
        &mb.at,
        "sqlite3 db.sqlite \"INSERT INTO t VALUES('b', 1000);\"",
    );
    let got = sh(&mh.at, "sqlite3 db.sqlite 'SELECT count(*) FROM t;'");
    assert_eq!(got.trim(), (2 * rows + 2).to_string());
    assert!(mb.unmount() && mh.unmount(), "unmounts flush and exit 0");
    h.home.assert_fsck_clean();
}

/// Locks on a member mount are the home's: stress-ng's lock stressors there,
/// waits ended by signals, a process on the home and one on the member that
/// come to wait for each other (one is refused with EDEADLK), and a member
/// mount killed while its process waits for the home's lock (the waiter is
/// answered; the home takes the lock, at the latest once B's lease ends).
#[test]
fn locks_on_a_member_mount_are_the_homes_and_survive_its_death() {
    fs_tests::require!("stress-ng", "flock", "python3");
    member_locks(Home::new());
}

/// The same, every member's link to the home a 20 ms round trip.
#[test]
fn locks_on_a_member_mount_are_the_homes_and_survive_its_death_over_a_20_ms_link() {
    fs_tests::require!("stress-ng", "flock", "python3");
    member_locks(Home::new_far(Duration::from_millis(20)));
}

fn member_locks(h: Home) {
    let mh = h.mount_listening();
    let b = h.member("b");
    let mb = b.mount();
    fs_tests::locks::stress_ng_locks(&mb.at, &[1, 4, 8], 10);
    std::fs::write(mb.at.join("lockfile"), b"").unwrap();
    fs_tests::locks::waits_end_on_signals(&mb.at.join("lockfile"));
    for _ in 0..3 {
        fs_tests::locks::crossed_locks(&mh.at.join("pair"), &mb.at.join("pair"));
    }

    let f = mh.at.join("lockfile");
    let fs = f.to_str().unwrap();
    let holder = fs_tests::locks::Holder::take(&f);
    let waiter = fs_tests::locks::waiter(&mb.at.join("lockfile"), Duration::from_millis(1000));
    mb.kill();
    fs_tests::locks::answered(waiter, "the waiter on the dead mount is answered");
    // B's last wait may still be held at the home when the holder lets go,
    // and be granted to B's dead mount: such a lock goes with B's lease, as
    // one B held when it died does.
    holder.release();
    let took = std::process::Command::new("flock")
        .args(["-w", "25", "-x", fs, "-c", "true"])
        .status()
        .unwrap();
    assert!(
        took.success(),
        "the home could not take its lock after B's lease ended"
    );
    assert!(mh.unmount(), "the unmount flushes and exits 0");
    h.home.assert_fsck_clean();
}

/// The hijack a revoked member could do before the authority key: a
/// recovery kit assembled from the files it kept (`volume.key`, `mesh.key`)
/// and the volume id (public: every root record names it), then `recover`.
/// Now the storage peers obey only the home's authority key, which no member
/// holds: the forged kit, and one with a made-up authority key, take
/// nothing, and the real home goes on protecting and serving every file.
#[test]
fn a_revoked_member_cannot_take_the_volume_with_a_kit_forged_from_its_files() {
    let (h, daemon) = Home::start();
    let (home, c) = (&h.home, &h.cluster);
    let thief = h.member("thief");
    let top = home.dir.path();
    sh(top, "head -c 3000000 /dev/urandom > data");
    home.ok(&["put", top.join("data").to_str().unwrap(), "/data"]);
    let protected = || {
        home.ok(&["status"])
            .contains("namespace protection: copy on the peers current")
    };
    fs_tests::within("the namespace protected", 60, &protected);
    let got = thief.dir.path().join("got");
    thief.ok(&["get", "/data", got.to_str().unwrap()]);
    let id = member_id(home, "thief");

    // The volume id, as any root record (or the home's kit header) shows it.
    let kit = home.ok(&["kit", "export"]);
    let vid = kit
        .lines()
        .next()
        .and_then(|l| l.split("volume ").nth(1))
        .and_then(|l| l.split(',').next())
        .unwrap()
        .to_string();
    let vid: [u8; 16] = (0..16)
        .map(|i| u8::from_str_radix(&vid[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let secret = fs_tests::key_file(&thief.home().join("volume.key"));
    let mesh = fs_tests::key_file(&thief.home().join("mesh.key"));
    let peers: Vec<String> = c.nodes.iter().map(|n| n.addr.clone()).collect();
    // While still a member, its handshakes work and the peers' root rule
    // refuses the kit; once revoked, the rotated mesh key keeps it from
    // reaching any peer at all.
    let attempts = [
        (None, "it is a kit from before the volume had one"),
        (Some([7u8; 32]), "it holds another one"),
        (None, "a wrong kit's mesh key fails every handshake"),
        (
            Some([7u8; 32]),
            "a wrong kit's mesh key fails every handshake",
        ),
    ];
    for (n, (authority, says)) in attempts.into_iter().enumerate() {
        if n == 2 {
            home.ok(&["members", "revoke", &id]);
            fs_tests::within("every peer took the rotated key", 30, &|| {
                (0..6).all(|i| {
                    std::fs::read_to_string(top.join(format!("nodes/node{i}.log")))
                        .is_ok_and(|l| l.contains("the mesh key was rotated"))
                })
            });
        }
        let forged = thief.dir.path().join("forged.txt");
        std::fs::write(
            &forged,
            fs_tests::forge_kit(vid, secret, mesh, &peers[..4], authority),
        )
        .unwrap();
        let evil = Volume::new();
        let out = evil
            .cmd(&["recover", "--kit", forged.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(says), "{err}");
        assert!(!evil.home().join("volume.key").exists());
    }

    // Nothing moved: no peer was re-homed, the home protects again, and
    // every file reads back.
    for i in 0..6 {
        let log = std::fs::read_to_string(top.join(format!("nodes/node{i}.log"))).unwrap();
        assert!(!log.contains("the volume was recovered"), "node {i}: {log}");
    }
    let record = || {
        let status = home.ok(&["status"]);
        status
            .split("root record ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = record();
    home.ok(&["put", "/etc/hostname", "/after"]);
    fs_tests::within("a new root record taken", 60, &|| record() > before);
    for i in 0..6 {
        let log = std::fs::read_to_string(top.join(format!("nodes/node{i}.log"))).unwrap();
        assert!(!log.contains("refused a root record"), "node {i}: {log}");
    }
    let back = top.join("back");
    home.ok(&["get", "/data", back.to_str().unwrap()]);
    sh(top, "cmp data back");
    home.assert_fsck_clean();
    drop(daemon);
}

/// `members revoke` rotates the mesh key: the revoked device, with every
/// file it kept, completes no handshake with the home or any storage peer
/// that has the new key, under its own peer id or a new one; the other
/// member takes the new key up by itself; a peer that was down through the
/// revocation is brought up to date when it comes back; and a recovery kit
/// made before the rotation still recovers the volume.
#[test]
fn a_revoked_member_can_no_longer_complete_a_handshake_with_any_peer() {
    let (mut h, daemon) = Home::start();
    let top = h.home.dir.path().to_path_buf();
    sh(&top, "head -c 3000000 /dev/urandom > data");
    h.home
        .ok(&["put", top.join("data").to_str().unwrap(), "/data"]);
    let old_kit = top.join("old-kit.txt");
    std::fs::write(&old_kit, h.home.ok(&["kit", "export"])).unwrap();
    let (thief, friend) = (h.member("thief"), h.member("friend"));
    let got = thief.dir.path().join("got");
    thief.ok(&["get", "/data", got.to_str().unwrap()]);
    let node_log = |i: usize| {
        std::fs::read_to_string(top.join(format!("nodes/node{i}.log"))).unwrap_or_default()
    };

    // Node 5 is down through the revocation.
    h.cluster.kill(5);
    let id = member_id(&h.home, "thief");
    let said = h.home.ok(&["members", "revoke", &id]);
    assert!(
        said.contains("rotated the mesh key (generation 1)"),
        "{said}"
    );
    let rotated = |i: usize| node_log(i).contains("the mesh key was rotated (generation 1)");
    fs_tests::within("the running peers took the new key", 30, &|| {
        (0..5).all(rotated)
    });

    // The revoked device: refused at the handshake by the home and by every
    // peer, under its own id and under a new one.
    let out = thief.run(&["get", "/data", got.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    std::fs::remove_file(thief.home().join("peer.key")).unwrap();
    let out = thief.run(&["ls", "/"]);
    assert_eq!(out.status.code(), Some(1));
    fs_tests::within(
        "the peers refused the revoked device's handshakes",
        30,
        &|| (0..5).any(|i| node_log(i).contains("did not allow")),
    );

    // The friend takes the new key up at its next command, and goes on.
    let back = friend.dir.path().join("back");
    friend.ok(&["get", "/data", back.to_str().unwrap()]);
    sh(&top, &format!("cmp data {}", back.display()));
    assert!(
        rotated_ring(&friend.home().join("mesh.key")),
        "the friend kept the old key"
    );

    // Node 5 comes back with the old key; the home reaches it and hands it
    // the new one.
    h.cluster.restart(5);
    fs_tests::within("the peer that was down took the new key", 60, &|| {
        rotated(5)
    });
    h.home.ok(&["put", "/etc/hostname", "/after"]);
    friend.ok(&["cat", "/after"]);

    // A kit made before the rotation still recovers the volume.
    assert!(daemon.stop());
    let moved = Volume::new();
    let out = moved
        .cmd(&["recover", "--kit", old_kit.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let again = moved.dir.path().join("again");
    moved.ok(&["get", "/data", again.to_str().unwrap()]);
    sh(&top, &format!("cmp data {}", again.display()));
    assert!(
        rotated_ring(&moved.home().join("mesh.key")),
        "recover kept the kit's older key"
    );
}

/// A member's calls to its home of one kind so far (`home_calls`).
fn home_calls(metrics: &str, kind: &str) -> u64 {
    let text = fs_tests::scrape(metrics);
    fs_tests::metric(
        &text,
        &format!("datamesh_home_calls_total{{request=\"{kind}\"}}"),
    ) as u64
}

#[test]
fn a_member_sends_the_changes_to_a_file_it_made_with_the_close_in_one_call() {
    let h = Home::new();
    let hm = h.mount_listening();
    let home = &h.home;
    let Measured {
        ma,
        metrics,
        _device,
    } = h.measured_member();
    // The home's engine, not a kernel's cache of it.
    let stat = |p: &str| home.ok(&["stat", p]);
    // Made, written, its times, owner and mode set on the open handle (as
    // tar does), and held open: the home has the file, not the changes.
    let mut writer = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import os, sys\n\
             fd = os.open('f', os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)\n\
             os.write(fd, b'hello')\n\
             os.utime(fd, (1000000000, 1000000000))\n\
             os.fchown(fd, 1234, 1234)\n\
             os.fchmod(fd, 0o640)\n\
             print('open', flush=True)\n\
             sys.stdin.readline()\n\
             os.fsync(fd)\n\
             print('synced', flush=True)\n\
             sys.stdin.readline()\n\
             os.close(fd)\n\
             print('closed', flush=True)\n",
        )
        .current_dir(&ma.at)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(writer.stdout.take().unwrap());
    let mut input = writer.stdin.take().unwrap();
    let mut step = |say: bool, want: &str| {
        use std::io::{BufRead, Write};
        if say {
            input.write_all(b"go\n").unwrap();
            input.flush().unwrap();
        }
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), want);
    };
    step(false, "open");
    let before = stat("/f");
    assert!(
        before.contains("Access: (0600/") && before.contains("Size: 0 "),
        "{before}"
    );
    for kind in ["setattr", "batch", "commit_chunks"] {
        assert_eq!(
            home_calls(&metrics, kind),
            0,
            "{kind} sent before the close"
        );
    }
    // fsync sends them all, in one call.
    step(true, "synced");
    let synced = stat("/f");
    assert!(
        synced.contains("Access: (0640/")
            && synced.contains("Uid: 1234")
            && synced.contains("Size: 5 ")
            && synced.contains("Modify: 2001-09-09"),
        "{synced}"
    );
    assert_eq!(home_calls(&metrics, "batch"), 1);
    step(true, "closed");
    assert!(writer.wait().unwrap().success());
    assert_eq!(home.ok(&["cat", "/f"]), "hello");

    // tar into the member: each file's commit, times, owner and mode go in
    // one call at its close, and the home has every one of them after.
    let tar = Instant::now();
    sh(
        &ma.at,
        "mkdir t && tar -C /usr/share/doc -cf - bash | tar -C t -xf -",
    );
    let ticks = tar.elapsed().as_secs() + 1;
    let count = |what: &str| -> u64 {
        sh(&ma.at, &format!("find t {what} | wc -l"))
            .trim()
            .parse()
            .unwrap()
    };
    let (files, others) = (count("-type f"), count("! -type f"));
    // A batch at each file's close, one carrying the ask for each
    // directory's promise, the call after each close carrying its release,
    // and each second one with the releases no call took; no commit of a
    // file alone.
    let batches = home_calls(&metrics, "batch") - 1;
    assert!(
        batches <= 2 * files + others + ticks,
        "{batches} batches for {files} files and {others} others in {ticks} s"
    );
    assert_eq!(home_calls(&metrics, "commit_chunks"), 0);
    // What tar sets by path after the close: directories' and symlinks'.
    let setattrs = home_calls(&metrics, "setattr");
    assert!(
        setattrs <= 3 * others,
        "{setattrs} setattrs for {others} others"
    );
    // The home's own mount shows the tree as it was archived.
    let listing = |root: &std::path::Path| {
        sh(
            root,
            "find . \\( -type d -printf '%p %m %U %G %T@\\n' \\) \
             -o \\( -type l -printf '%p -> %l\\n' \\) \
             -o -printf '%p %m %U %G %T@ %s\\n' | sort",
        )
    };
    assert_eq!(
        listing(&hm.at.join("t/bash")),
        listing(std::path::Path::new("/usr/share/doc/bash"))
    );
    sh(
        &hm.at,
        "diff -r --no-dereference /usr/share/doc/bash t/bash",
    );
    assert!(ma.unmount() && hm.unmount(), "unmounts flush and exit 0");
    home.assert_fsck_clean();
}

/// A member mount is promised the directories it makes: a name missing
/// from one is answered without a round trip; another host's create there
/// is seen by the member as soon as that create returned; a member that
/// dies holding promises holds another host's change up for a lease (10 s)
/// at most.
#[test]
fn a_member_knows_what_is_missing_from_a_directory_it_made_until_another_host_changes_it() {
    let h = Home::new();
    let hm = h.mount_listening();
    let Measured {
        ma,
        metrics,
        _device,
    } = h.measured_member();
    let lookups = || home_calls(&metrics, "lookup");
    let missing = |dir: &str| {
        for i in 0..20 {
            assert!(!ma.at.join(format!("{dir}/missing{i}")).exists());
        }
    };
    sh(&hm.at, "mkdir theirs");
    // The touch's lookup carries the ask for the promise.
    sh(&ma.at, "mkdir mine && touch mine/first");
    let before = lookups();
    missing("theirs");
    assert!(
        lookups() >= before + 20,
        "names missing from the home's directory are asked of the home"
    );
    let before = lookups();
    missing("mine");
    assert_eq!(lookups(), before, "asked the home about its own directory");
    // What the member does there itself is known.
    sh(
        &ma.at,
        "echo x > mine/f && mv mine/f mine/g && test ! -e mine/f && test -e mine/g \
         && mkdir mine/sub && rmdir mine/sub && test ! -e mine/sub \
         && ln -s g mine/s && test -L mine/s && rm mine/g mine/s && test ! -e mine/g",
    );
    assert_eq!(lookups(), before, "asked the home about its own changes");
    // Another host's create (the home's mount, then its CLI) is seen at once.
    for (i, by) in ["mount", "cli"].iter().enumerate() {
        let dir = format!("new{i}");
        sh(&ma.at, &format!("mkdir {dir} && touch {dir}/first"));
        let before = lookups();
        assert!(!ma.at.join(format!("{dir}/x")).exists());
        assert_eq!(lookups(), before, "the promise of {dir} was not granted");
        let t = Instant::now();
        if *by == "mount" {
            sh(&hm.at, &format!("echo {by} > {dir}/x"));
        } else {
            let src = h.home.dir.path().join("x");
            std::fs::write(&src, format!("{by}\n")).unwrap();
            h.home
                .ok(&["put", src.to_str().unwrap(), &format!("/{dir}/x")]);
        }
        eprintln!(
            "the {by}'s create in a promised directory took {:?}",
            t.elapsed()
        );
        assert_eq!(
            std::fs::read_to_string(ma.at.join(format!("{dir}/x"))).unwrap(),
            format!("{by}\n"),
            "the member missed the {by}'s create"
        );
    }
    // The member dies holding a promise: the home's create there waits
    // for it a lease at most.
    sh(&ma.at, "mkdir last && touch last/first && test ! -e last/x");
    let at = ma.at.clone();
    ma.kill();
    let _ = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(&at)
        .status();
    let t = Instant::now();
    sh(&hm.at, "echo late > last/x");
    let took = t.elapsed();
    eprintln!("a create in a directory a dead member held took {took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert!(hm.unmount());
}

/// Every call a member made to its home so far, of any kind.
fn all_home_calls(metrics: &str) -> u64 {
    fs_tests::scrape(metrics)
        .lines()
        .filter(|l| l.starts_with("datamesh_home_calls_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A home with its own mount, and member device "a" measured, whose
/// directory `d` the home granted it.
fn delegated_d() -> (Home, fs_tests::Mount, Measured) {
    let h = Home::new();
    let hm = h.mount_listening();
    let m = h.measured_member();
    make_delegated(&m.ma.at, &m.metrics, "d");
    (h, hm, m)
}

/// Makes `dir` on the member mount at `at` (whose metrics are at
/// `metrics`) and waits until the home granted it: a missing name there
/// costs no lookup.
fn make_delegated(at: &std::path::Path, metrics: &str, dir: &str) {
    sh(at, &format!("mkdir {dir} && touch {dir}/first"));
    let t = Instant::now();
    loop {
        let before = home_calls(metrics, "lookup");
        assert!(!at.join(format!("{dir}/probe")).exists());
        if home_calls(metrics, "lookup") == before {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{dir} never promised"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Makes `d/one` on the member mount at `at`: made at home, it brings the
/// mount its inode numbers, so what it makes in `d` next is made there.
/// Waits for the batch that carries it.
fn bring_numbers(at: &std::path::Path) {
    sh(at, "echo one > d/one");
    std::thread::sleep(Duration::from_millis(1500));
}

/// A member cut off past its lease while it held back a file it made in a
/// delegated directory, and the remove of another: another host's read
/// there waits a lease at most and goes on without them, and when the
/// member is back the home refuses both rather than apply them after what
/// others did meanwhile.
#[test]
fn a_member_cut_off_past_its_lease_has_the_files_it_held_back_refused() {
    let (h, hm, Measured { ma, _device, .. }) = delegated_d();
    // The first file is made at home and brings inode numbers; the next
    // is made on the member, and held back.
    bring_numbers(&ma.at);
    // A remove of what it made there is held back too, and a chmod of it.
    let mode = sh(&hm.at, "stat -c %a d");
    sh(&ma.at, "echo late > d/late && rm d/one && chmod 700 d");
    let pid = ma.pid().to_string();
    sh(&hm.at, &format!("kill -STOP {pid}"));
    let t = Instant::now();
    let listed = h.home.ok(&["ls", "/d"]);
    let waited = t.elapsed();
    eprintln!("a read in a directory a stopped member held took {waited:?}");
    assert!(waited < Duration::from_secs(16), "{waited:?}");
    let inconclusive = listed.contains("late");
    if !inconclusive {
        assert!(
            waited >= Duration::from_secs(9),
            "went on at once: {waited:?}"
        );
        // Another host works there meanwhile.
        sh(&hm.at, "echo home > d/other");
    }
    sh(&hm.at, &format!("kill -CONT {pid}"));
    // The member's queue goes with its next call or second.
    std::thread::sleep(Duration::from_secs(3));
    let _ = std::fs::read_dir(&ma.at);
    std::thread::sleep(Duration::from_secs(1));
    let listed = h.home.ok(&["ls", "/d"]);
    if inconclusive {
        eprintln!("the file was sent before the member stopped: nothing held back to refuse");
    } else {
        assert!(
            !listed.contains("late"),
            "a late create was applied: {listed}"
        );
        assert!(
            listed.contains("other") && listed.contains("one"),
            "{listed}"
        );
        assert_eq!(sh(&hm.at, "stat -c %a d"), mode, "a late chmod was applied");
    }
    ma.unmount();
    assert!(hm.unmount());
    h.home.assert_fsck_clean();
}

/// A directory a member made is delegated to it: it makes files there
/// itself, with inode numbers the home handed it, and their closes send
/// nothing (the creates and changes ride with the next call or second);
/// another host's read of the directory recalls it first, so that host
/// sees every file closed before it asked, and the member's closes there
/// go at the close again.
#[test]
fn a_member_holds_back_its_closes_in_a_delegated_directory_until_another_host_looks() {
    let h = Home::new();
    let home_metrics = format!("127.0.0.1:{}", fs_tests::free_ports(1));
    let hm = h.mount_listening_with(&["--metrics", &home_metrics]);
    let Measured {
        ma,
        metrics,
        _device,
    } = h.measured_member();
    let recalls = || fs_tests::metric(&fs_tests::scrape(&home_metrics), "datamesh_recalls_total");
    let granted = |dir: &str| make_delegated(&ma.at, &metrics, dir);
    for (round, by) in ["cli", "mount"].iter().enumerate() {
        let dir = format!("d{round}");
        granted(&dir);
        let (_, c) = counted(
            &metrics,
            &ma.at,
            &format!("for i in $(seq 20); do echo file $i > {dir}/f$i; done"),
        );
        // Made here with numbers the home handed out (the first file, made
        // at home, asks for them): what each second sends, and no call a
        // file.
        assert!(
            c.all <= 2 * c.ticks + 4,
            "{} calls to make 20 files in {} s: {}",
            c.all,
            c.ticks,
            c.kinds
        );
        let (recalled, t) = (recalls(), Instant::now());
        let got = if *by == "cli" {
            h.home.ok(&["cat", &format!("/{dir}/f20")])
        } else {
            sh(&hm.at, &format!("cat {dir}/f20"))
        };
        eprintln!(
            "the {by}'s read in a delegated directory took {:?}",
            t.elapsed()
        );
        assert_eq!(got, "file 20\n", "the {by} read before the member's close");
        assert!(recalls() > recalled, "the {by}'s read recalled nothing");
        let listed = sh(&hm.at, &format!("cat {dir}/f*"));
        assert_eq!(listed.lines().count(), 20, "{listed}");
        // Recalled: the member's closes there go at the close again.
        let before = all_home_calls(&metrics);
        sh(
            &ma.at,
            &format!("for i in $(seq 5); do echo again $i > {dir}/g$i; done"),
        );
        let calls = all_home_calls(&metrics) - before;
        assert!(calls >= 10, "{calls} calls for 5 files after a recall");
        assert_eq!(h.home.ok(&["cat", &format!("/{dir}/g5")]), "again 5\n");
    }
    assert!(ma.unmount() && hm.unmount());
    h.home.assert_fsck_clean();
}

/// A member's open of a file brings the first page of its chunk map with
/// its attributes: reading a file written elsewhere costs the open alone.
#[test]
fn a_member_reads_a_file_written_elsewhere_with_one_call_to_open_it() {
    let h = Home::new();
    let hm = h.mount_listening();
    let Measured {
        ma,
        metrics,
        _device,
    } = h.measured_member();
    // Small files (inline) and one of several chunks.
    sh(
        &hm.at,
        "mkdir r && for i in 1 2 3 4 5; do echo file $i > r/s$i; done \
         && head -c 9000000 /dev/urandom > r/big",
    );
    // An open goes alone, or in a batch with the releases of the files
    // closed before it; those releases may also go alone, in front of the
    // mount's next watch or from the releases worker.
    let calls = || home_calls(&metrics, "open") + home_calls(&metrics, "batch");
    let before = (calls(), home_calls(&metrics, "chunks_from"));
    let t = Instant::now();
    for name in ["s1", "s2", "s3", "s4", "s5", "big"] {
        let here = std::fs::read(hm.at.join("r").join(name)).unwrap();
        let there = std::fs::read(ma.at.join("r").join(name)).unwrap();
        assert!(here == there, "{name} differs on the member");
    }
    let ticks = t.elapsed().as_secs() + 1;
    let opens = calls() - before.0;
    let maps = home_calls(&metrics, "chunks_from") - before.1;
    assert!(
        (6..=12 + ticks).contains(&opens),
        "{opens} calls to open 6 files in {ticks} s: {}",
        fs_tests::scrape(&metrics)
            .lines()
            .filter(|l| l.starts_with("datamesh_home_calls_total"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(maps, 0, "the maps came with the opens");
    assert!(hm.unmount());
}

/// The home is killed and started again at once: a member mount's calls
/// made meanwhile wait for it (3 s at most) instead of failing.
#[test]
fn a_member_mount_rides_through_a_quick_restart_of_its_home() {
    let (h, daemon) = Home::start();
    let a = h.member("a");
    let ma = a.mount();
    sh(&ma.at, "echo x > f");
    daemon.kill();
    let killed = Instant::now();
    // A listing: always asked of the home.
    let at = ma.at.clone();
    let lister = std::thread::spawn(move || {
        std::fs::read_dir(&at).and_then(|d| d.collect::<std::io::Result<Vec<_>>>())
    });
    std::thread::sleep(Duration::from_millis(200));
    let _daemon = h.serve();
    let back = killed.elapsed();
    let listed = lister.join().unwrap();
    eprintln!("the home was back {back:?} after it was killed");
    if back < Duration::from_millis(2500) {
        let names: Vec<_> = listed
            .expect("the listing made while the home restarted")
            .iter()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f")]);
    } else {
        eprintln!("the home took longer than a member waits for a dial: not judged");
    }
    assert_eq!(sh(&ma.at, "cat f"), "x\n");
}

/// A home killed and started again honours the delegations it granted:
/// what a member made in a delegated directory and had not yet sent (its
/// closes returned) is taken when the member comes back, not refused as
/// if the member had been cut off.
#[test]
fn a_home_restarted_takes_what_a_member_held_back_in_its_delegated_directory() {
    let (h, daemon) = Home::start();
    let Measured {
        ma,
        metrics,
        _device,
    } = h.measured_member();
    make_delegated(&ma.at, &metrics, "d");
    bring_numbers(&ma.at);
    // Held back (the member sends within a second), then the home killed.
    sh(
        &ma.at,
        "for i in $(seq 10); do echo file $i > d/f$i; done; mkdir d/sub; echo deep > d/sub/g",
    );
    daemon.kill();
    let _daemon = h.serve();
    let t = Instant::now();
    let want = "file 10\ndeep\n";
    loop {
        // The member's next call sends what it held back first.
        let here = sh(&ma.at, "ls d | wc -l");
        let there = h.home.run(&["cat", "/d/f10", "/d/sub/g"]);
        if there.status.success() {
            assert_eq!(String::from_utf8_lossy(&there.stdout), want);
            assert_eq!(here.trim(), "13");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the home never took what the member held back: {}",
            String::from_utf8_lossy(&there.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let listed = h.home.ok(&["ls", "/d"]);
    for i in 1..=10 {
        assert!(listed.contains(&format!("f{i}")), "f{i} lost: {listed}");
    }
    assert!(ma.unmount());
}

/// What a member made in a directory delegated to it, it removes there
/// with no call, and it sets the directory's mode and times with none
/// (they ride with the next call or second, and the directory's
/// attributes after each are the member's own); another host's look
/// there recalls them first.
#[test]
fn a_member_removes_what_it_made_in_a_delegated_directory_with_no_call() {
    let (
        h,
        hm,
        Measured {
            ma,
            metrics,
            _device,
        },
    ) = delegated_d();
    make_delegated(&ma.at, &metrics, "d/sub");
    sh(
        &ma.at,
        "for i in $(seq 20); do echo $i > d/f$i; echo $i > d/sub/g$i; done",
    );
    // Let the creates go, and the kernel's cached attributes expire.
    std::thread::sleep(Duration::from_millis(2500));
    let count = |kinds: &[&str]| kinds.iter().map(|k| home_calls(&metrics, k)).sum::<u64>();
    let (removes, looks) = (["unlink", "rmdir", "setattr"], ["attr", "lookup"]);
    let before = (count(&removes), count(&looks), all_home_calls(&metrics));
    let (kinds_before, t) = (fs_tests::scrape(&metrics), Instant::now());
    sh(
        &ma.at,
        "rm d/f1* && rm -rf d/sub && chmod 750 d && TZ=UTC touch -d 2001-02-03T04:05:06 d",
    );
    let ticks = t.elapsed().as_secs() + 1;
    let calls = (
        count(&removes) - before.0,
        count(&looks) - before.1,
        all_home_calls(&metrics) - before.2,
    );
    // Before, a remove and the directory's attributes each: 66 calls, and
    // a call for each of the chmod and touch.
    // Now: the listings (the shell's glob; rm's of d/sub, a page or two
    // and the end), the kernel's getattr of each directory once, the
    // lookup of d, a batch a second, the watch.
    assert!(
        calls.0 == 0 && calls.1 <= 6 && calls.2 <= 12 + 2 * ticks,
        "{calls:?} calls to remove or set, to look, in all, to remove 33 entries: {}",
        calls_since(&kinds_before, &fs_tests::scrape(&metrics))
    );
    let mut want: Vec<String> = (2..=9).chain([20]).map(|i| format!("f{i}")).collect();
    want.push("first".into());
    want.sort();
    let listed = h.home.ok(&["ls", "/d"]);
    let mut names: Vec<&str> = listed.split_whitespace().collect();
    names.sort();
    assert_eq!(names, want, "the home's listing");
    assert_eq!(sh(&hm.at, "ls d | wc -l").trim(), "10");
    assert_eq!(
        sh(&hm.at, "TZ=UTC stat -c '%a %y' d").trim(),
        "750 2001-02-03 04:05:06.000000000 +0000"
    );
    assert_eq!(sh(&ma.at, "ls d | wc -l").trim(), "10");
    assert!(ma.unmount() && hm.unmount());
    h.home.assert_fsck_clean();
}

/// The member's calls to its home by kind between two scrapes.
fn calls_since(before: &str, after: &str) -> String {
    let family = "datamesh_home_calls_total{";
    let value = |text: &str, key: &str| fs_tests::metric(text, key);
    after
        .lines()
        .filter(|l| l.starts_with(family))
        .filter_map(|l| {
            let key = l.rsplit_once(' ')?.0;
            let n = value(after, key) - value(before, key);
            (n > 0.0).then(|| format!("{} {n}", &key[family.len()..]))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The calls a member made to its home while a script ran on its mount.
struct Counted {
    /// Every call, batches of held-back changes included.
    all: u64,
    /// Those batches, sent beside the work.
    batches: u64,
    /// Listings (readdir and readdirplus).
    lists: u64,
    /// The seconds the script took, rounded up.
    ticks: u64,
    /// The calls by kind, for a failure's message.
    kinds: String,
}

/// Runs `script` in `at` (a member mount whose metrics are at `metrics`):
/// its output, and the calls the mount made meanwhile.
fn counted(metrics: &str, at: &std::path::Path, script: &str) -> (String, Counted) {
    let kind = |text: &str, kind: &str| {
        fs_tests::metric(
            text,
            &format!("datamesh_home_calls_total{{request=\"{kind}\"}}"),
        ) as u64
    };
    let batch = |text: &str| kind(text, "batch");
    let lists = |text: &str| kind(text, "readdir") + kind(text, "readdir_plus");
    let (before, t) = (fs_tests::scrape(metrics), Instant::now());
    let (calls_before, out) = (all_home_calls(metrics), sh(at, script));
    let ticks = t.elapsed().as_secs() + 1;
    let after = fs_tests::scrape(metrics);
    let counted = Counted {
        all: all_home_calls(metrics) - calls_before,
        batches: batch(&after) - batch(&before),
        lists: lists(&after) - lists(&before),
        ticks,
        kinds: calls_since(&before, &after),
    };
    (out, counted)
}

/// A member makes symlinks in a directory delegated to it with no call,
/// and reads and sets their times there too (tar's lutimes); another
/// host's look recalls them first and finds each as made.
#[test]
fn a_member_makes_symlinks_in_a_delegated_directory_with_no_call() {
    let (
        h,
        hm,
        Measured {
            ma,
            metrics,
            _device,
        },
    ) = delegated_d();
    // The first brings inode numbers.
    sh(&ma.at, "ln -s first d/l0");
    std::thread::sleep(Duration::from_millis(1500));
    let (_, c) = counted(
        &metrics,
        &ma.at,
        "for i in $(seq 20); do ln -s target-$i d/l$i; \
         TZ=UTC touch -h -d 2001-02-03T04:05:06 d/l$i; \
         test \"$(readlink d/l$i)\" = target-$i; done",
    );
    assert!(
        c.all <= 2 * c.ticks + 2,
        "{} calls in {} s to make 20 symlinks: {}",
        c.all,
        c.ticks,
        c.kinds
    );
    for i in [1, 20] {
        assert_eq!(
            sh(&hm.at, &format!("readlink d/l{i}")).trim(),
            format!("target-{i}")
        );
        assert_eq!(
            sh(&hm.at, &format!("TZ=UTC stat -c %y d/l{i}")).trim(),
            "2001-02-03 04:05:06.000000000 +0000"
        );
    }
    assert_eq!(sh(&hm.at, "ls d | wc -l").trim(), "22");
    assert!(ma.unmount() && hm.unmount());
    h.home.assert_fsck_clean();
}

/// Directories a member makes in a directory delegated to it are made there
/// with no call, delegated to it at once (what it makes in them too); the
/// home's mount then sees the whole tree with its modes and times, and a
/// setgid directory passes its group and bit on as a home mkdir does.
#[test]
fn a_member_makes_directories_in_a_delegated_directory_with_no_call() {
    let (
        h,
        hm,
        Measured {
            ma,
            metrics,
            _device,
        },
    ) = delegated_d();
    // The first brings inode numbers.
    sh(&ma.at, "echo x > d/first && chmod 2775 d && chgrp 50 d");
    std::thread::sleep(Duration::from_millis(1500));
    let (_, c) = counted(
        &metrics,
        &ma.at,
        "for i in $(seq 10); do mkdir -p d/a$i/b/c && echo $i > d/a$i/b/c/f \
         && ln -s f d/a$i/b/c/l && chmod 700 d/a$i/b \
         && TZ=UTC touch -d 2001-02-03T04:05:06 d/a$i/b/c; done",
    );
    // Only batches of what was held back, sent beside the work (at most
    // one a directory tree here): no call a mkdir waits for.
    let calls = c.all - c.batches;
    assert!(
        calls <= 2 * c.ticks + 2 && c.batches <= 10 + 2 * c.ticks,
        "{calls} calls and {} batches in {} s to make 30 directories: {}",
        c.batches,
        c.ticks,
        c.kinds
    );
    // Listed, walked and removed here too: the listings in the order the
    // home gives them.
    let (_, c) = counted(
        &metrics,
        &ma.at,
        "ls -lR d/a1 d/a10 >/dev/null && rm -r d/a10",
    );
    let calls = c.all - c.batches;
    assert!(
        calls <= 2 * c.ticks,
        "{calls} calls in {} s to list and remove 3 directories: {}",
        c.ticks,
        c.kinds
    );
    // A name the home's mount made in d (d is recalled), removed here at
    // home, leaves what this mount made in the directories below its own.
    sh(&hm.at, "touch d/other");
    let (_, c) = counted(
        &metrics,
        &ma.at,
        "rm d/other && ls -lR d/a9 >/dev/null && rm -r d/a9/b",
    );
    assert!(c.lists == 0, "{} listings at home: {}", c.lists, c.kinds);
    // The home's kernel may keep what it read of d for its attribute time.
    std::thread::sleep(Duration::from_millis(1500));
    let stat = "find d -path d/first -o -printf '%p %M %G %n %s\\n' | sort; \
                TZ=UTC stat -c %y d/a3/b/c; cat d/a*/b/c/l | sort -n | tr '\\n' ' '; \
                ls -f d/a1/b/c d/a2 d/a3/b";
    let there = sh(&hm.at, stat);
    assert_eq!(there, sh(&ma.at, stat), "the home sees another tree");
    assert!(there.contains("d/a3/b drwx--S--- 50 3"), "{there}");
    assert!(
        there.contains("2001-02-03 04:05:06.000000000 +0000"),
        "{there}"
    );
    assert!(there.contains("1 2 3 4 5 6 7 8 "), "{there}");
    assert!(!there.contains("a10") && !there.contains("a9/b"), "{there}");
    assert!(ma.unmount() && hm.unmount());
    h.home.assert_fsck_clean();
}

/// Another host lists, again and again over a 20 ms link, a directory a
/// member keeps making files in: each listing shows every file the member
/// closed before it, and none of the member's writes fails (a file made
/// just as the directory was recalled once became the member's alone
/// again, and its data was refused at home: EINVAL at its close).
#[test]
fn another_host_lists_a_directory_a_member_writes_in_over_a_20_ms_link() {
    let h = Home::new_far(Duration::from_millis(20));
    let hm = h.mount_listening();
    let Measured {
        ma,
        metrics,
        _device,
    } = h.measured_member();
    for round in 0..2 {
        let dir = format!("w{round}");
        make_delegated(&ma.at, &metrics, &dir);
        let (member, other) = (ma.at.join(&dir), hm.at.join(&dir));
        let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (closed, stop) = (closed.clone(), stop.clone());
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let path = member.join(format!("f{i}"));
                    let mut f = std::fs::File::create(&path)?;
                    std::io::Write::write_all(&mut f, &[b'x'; 100])?;
                    // The close's own answer (a drop ignores it).
                    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
                    if unsafe { libc::close(fd) } != 0 {
                        let e = std::io::Error::last_os_error();
                        return Err(std::io::Error::new(e.kind(), format!("closing f{i}: {e}")));
                    }
                    i += 1;
                    closed.store(i, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(())
            })
        };
        for _ in 0..15 {
            std::thread::sleep(Duration::from_millis(300));
            let before = closed.load(std::sync::atomic::Ordering::Relaxed);
            let names: std::collections::HashSet<String> = std::fs::read_dir(&other)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            let missing: Vec<usize> = (0..before)
                .filter(|i| !names.contains(&format!("f{i}")))
                .collect();
            assert!(
                missing.is_empty(),
                "{dir}: closed before the listing, not in it: {missing:?}"
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{dir}: the member's writes: {e}"));
    }
    assert!(ma.unmount() && hm.unmount());
    h.home.assert_fsck_clean();
}

/// A member renames files it made in a directory delegated to it with no
/// call, over others it made too (git's `config.lock` to `config`), and
/// reads them again there; the home's mount then sees the same names,
/// inodes and bytes, and a file replaced while open stays readable.
#[test]
fn a_member_renames_what_it_made_in_a_delegated_directory_with_no_call() {
    let (
        h,
        hm,
        Measured {
            ma,
            metrics,
            _device,
        },
    ) = delegated_d();
    bring_numbers(&ma.at);
    let (out, c) = counted(
        &metrics,
        &ma.at,
        "for i in $(seq 20); do echo v$i > d/config.lock && mv d/config.lock d/config \
         && cat d/config >/dev/null; done; echo h > d/HEAD.lock && mv -T d/HEAD.lock d/HEAD; \
         echo a > d/a; mv -n d/a d/HEAD; cat d/HEAD d/config",
    );
    assert_eq!(out, "h\nv20\n", "read back here");
    // Only batches of what was held back, sent beside the work, and the
    // walk to d from the root (not delegated).
    let calls = c.all - c.batches;
    assert!(
        calls <= 2 && c.batches <= 2 * c.ticks,
        "{calls} calls and {} batches in {} s to make and rename 22 files: {}",
        c.batches,
        c.ticks,
        c.kinds
    );
    // Replaced while open here: read at home through the handle.
    let kept = sh(
        &ma.at,
        "exec 3<d/config; echo new > d/n.lock; mv d/n.lock d/config; sleep 2; cat <&3",
    );
    assert_eq!(kept, "v20\n");
    let stat =
        "ls -f d | sort | tr '\\n' ' '; stat -c '%n %i %s %h' d/* d; cat d/config d/HEAD d/a";
    let there = sh(&hm.at, stat);
    assert_eq!(there, sh(&ma.at, stat), "the home sees another directory");
    assert!(
        there.starts_with(". .. HEAD a config first one "),
        "{there}"
    );
    assert!(there.ends_with("new\nh\na\n"), "{there}");
    assert!(ma.unmount() && hm.unmount());
    h.home.assert_fsck_clean();
}

/// Files a member made in a directory delegated to it are opened and read
/// again there with no call (their opens ride with the next call or
/// second, for the home to count); the home's mount reads the same bytes.
#[test]
fn a_member_reads_again_what_it_made_in_a_delegated_directory_with_no_call() {
    let (
        h,
        hm,
        Measured {
            ma,
            metrics,
            _device,
        },
    ) = delegated_d();
    bring_numbers(&ma.at);
    sh(
        &ma.at,
        "for i in $(seq 20); do seq $i > d/f$i; done; head -c 3000000 /dev/urandom > d/big",
    );
    // A rename elsewhere (a lock file put in place, as git's) leaves them
    // this mount's.
    sh(&ma.at, "mkdir e && echo x > e/f.lock && mv e/f.lock e/f");
    std::thread::sleep(Duration::from_millis(1500));
    let (read, c) = counted(
        &metrics,
        &ma.at,
        "cat d/f* | md5sum; md5sum < d/big; stat -c %s d",
    );
    // The shell's glob lists d (a page and the end) after a lookup of it
    // and a getattr of the root; before, an open a file too.
    assert!(
        c.all <= 2 * c.ticks + 4,
        "{} calls in {} s to read 21 files: {}",
        c.all,
        c.ticks,
        c.kinds
    );
    assert_eq!(
        read,
        sh(&hm.at, "cat d/f* | md5sum; md5sum < d/big; stat -c %s d")
    );
    // A file removed while open here stays readable through its handle.
    let kept = sh(&ma.at, "exec 3<d/f20; rm d/f20; sleep 2; md5sum <&3");
    assert_eq!(kept, sh(&hm.at, "seq 20 | md5sum"));
    assert!(ma.unmount() && hm.unmount());
    h.home.assert_fsck_clean();
}
