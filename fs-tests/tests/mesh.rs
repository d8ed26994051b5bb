//! The mesh with real processes on loopback: storage peers (`datamesh node`) and
//! a mounted home node, killed, restarted, filled up and visited by a stranger.

use fs_tests::{Cluster, Volume, datamesh_bin, require, sh};
use std::path::Path;
use std::process::Command;

/// Written into the test files; must never appear in a shard.
const MARKER: &str = "DATAMESH-PLAINTEXT-MARKER-5b1e";

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// About 200 MiB of mixed files under `dir`: large and medium random files, a
/// compressible text file and many small ones, all carrying the marker.
fn make_files(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    sh(
        dir,
        &format!(
            "head -c 100000000 /dev/urandom > big.bin && \
             for i in $(seq 1 12); do head -c $((4000000 + i * 417000)) /dev/urandom > mid$i.bin; done && \
             yes '{MARKER} some very compressible text' | head -c 30000000 > text.log && \
             mkdir small && for i in $(seq 1 300); do printf '{MARKER} file %s\\n' $i > small/f$i.txt; \
               head -c $((i * 37)) /dev/urandom >> small/f$i.txt; done"
        ),
    );
}

fn status_json(v: &Volume, extra: &[&str]) -> String {
    let out = v
        .datamesh()
        .args(extra)
        .args(["status", "--json"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// The number after `"key": ` in a JSON text (enough for these flat fields).
fn json_num(json: &str, key: &str) -> i64 {
    let pat = format!("\"{key}\": ");
    let at = json.find(&pat).unwrap_or_else(|| panic!("{key} in {json}")) + pat.len();
    let end = json[at..].find(|c: char| !c.is_ascii_digit()).unwrap() + at;
    json[at..end]
        .parse()
        .unwrap_or_else(|_| panic!("{key} in {json}"))
}

/// A file of `len` random bytes put as /f.bin through the CLI with the
/// cluster's addresses; returns the local copy.
fn put_random(v: &Volume, c: &Cluster, len: usize) -> std::path::PathBuf {
    let src = v.dir.path().join("src.bin");
    sh(
        v.dir.path(),
        &format!("head -c {len} /dev/urandom > {}", src.display()),
    );
    put_via_peers(v, c, &[src.as_os_str(), "/f.bin".as_ref()]);
    src
}

/// `datamesh --bootstrap … put ARGS` naming every peer of `c`; must succeed.
fn put_via_peers(v: &Volume, c: &Cluster, args: &[&std::ffi::OsStr]) {
    let put = v
        .datamesh()
        .args(strs(&c.bootstrap_flags()))
        .arg("put")
        .args(args)
        .output()
        .unwrap();
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn six_peers_survive_two_kills_and_repair_restores_redundancy() {
    require!();
    let v = Volume::new();
    let mut c = Cluster::start(&v, 6);
    // Counts below are of file chunks and their shards only.
    v.config("protect_secs = 0");
    let src = v.dir.path().join("src");
    make_files(&src);
    let m = v.mount_with(&strs(&c.bootstrap_flags()));
    sh(&m.at, &format!("cp -a {} data", src.display()));
    assert!(m.unmount());

    // Every node holds shards, and none holds a byte of plaintext.
    for i in 0..6 {
        let files = c.shard_files(i);
        assert!(
            files.len() > 20,
            "node {i} holds only {} shards",
            files.len()
        );
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            assert!(
                !contains(&bytes, MARKER.as_bytes()),
                "plaintext in {}",
                f.display()
            );
        }
    }
    let json = status_json(&v, &[]);
    assert_eq!(json_num(&json, "survives"), 2, "{json}");

    // Any two peers die: everything reads back, from a fresh mount (no caches)
    // that finds its peers from what the home remembered.
    c.kill(1);
    c.kill(4);
    let m = v.mount();
    sh(&m.at, &format!("diff -r {} data", src.display()));
    // Writes go on with four peers.
    sh(
        &m.at,
        "head -c 9000000 /dev/urandom > degraded.bin && cp degraded.bin /var/tmp/dm-degraded.$$ && cmp degraded.bin /var/tmp/dm-degraded.$$ && rm /var/tmp/dm-degraded.$$",
    );
    assert!(m.unmount());
    let json = status_json(&v, &[]);
    assert!(
        json_num(&json, "critical") > 0,
        "two losses leave critical chunks: {json}"
    );

    // A new peer, then repair: every chunk whole again on the five live peers.
    let new = c.add(&[]);
    let boot = ["--bootstrap".to_string(), c.nodes[new].addr.clone()];
    let out = v.datamesh().args(&boot).arg("repair").output().unwrap();
    assert!(
        out.status.success(),
        "repair: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let json = status_json(&v, &[]);
    let chunks = json_num(&json, "chunks");
    assert_eq!(json_num(&json, "full"), chunks, "{json}");
    assert_eq!(
        json_num(&json, "survives"),
        1,
        "five peers for six shards: {json}"
    );
    assert!(
        !c.shard_files(new).is_empty(),
        "the new peer got rebuilt shards"
    );
    let m = v.mount();
    sh(&m.at, &format!("diff -r {} data", src.display()));
    drop(m);
    v.assert_fsck_clean();

    // A killed peer comes back with the shards that were rebuilt elsewhere:
    // repair drops the extra copies, every chunk spread over six peers again.
    c.restart(1);
    let out = v.datamesh().arg("repair").output().unwrap();
    assert!(out.status.success());
    let json = status_json(&v, &[]);
    assert_eq!(json_num(&json, "survives"), 2, "{json}");
    let live = [0, 1, 2, 3, 5, new];
    let total: usize = live.iter().map(|&i| c.shard_files(i).len()).sum();
    assert_eq!(total, 6 * chunks as usize, "extra copies left behind");
}

#[test]
fn strangers_full_peers_and_restarted_peers() {
    require!();
    let v = Volume::new();
    let other = Volume::new();
    let mut c = Cluster::start(&v, 5);
    let full = c.add(&["--capacity", "1M"]);
    let stranger = c.add_stranger(&other);
    let m = v.mount_with(&strs(&c.bootstrap_flags()));
    // A full peer makes writes go elsewhere, not fail.
    sh(
        &m.at,
        "head -c 40000000 /dev/urandom > one.bin && cp one.bin /var/tmp/dm-one.$$ && cmp one.bin /var/tmp/dm-one.$$ && rm /var/tmp/dm-one.$$",
    );
    let held: u64 = c
        .shard_files(full)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert!(
        held <= 1 << 20,
        "the full peer holds {held} bytes, over its capacity"
    );
    // The stranger (another mesh's key) was never let in.
    assert!(
        c.shard_files(stranger).is_empty(),
        "the stranger received shards"
    );
    // And a client holding the other mesh's key reaches nobody.
    let probe = v.dir.path().join("probe");
    // Larger than the inline limit, so that it needs shards.
    std::fs::write(&probe, vec![7u8; 200_000]).unwrap();
    let out = other
        .datamesh()
        .args(["--bootstrap", &c.nodes[0].addr, "put"])
        .arg(&probe)
        .arg("/probe")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a write with the wrong mesh key succeeded"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no storage peer is reachable"), "{err}");

    // A restarted peer keeps its shards and is used again.
    let before = c.shard_files(2).len();
    assert!(before > 0);
    c.kill(2);
    c.restart(2);
    assert_eq!(
        c.shard_files(2).len(),
        before,
        "node 2 lost shards across a restart"
    );
    // The mount redials it within seconds; from then on new chunks use it.
    let start = std::time::Instant::now();
    let mut n = 0;
    while c.shard_files(2).len() == before {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the restarted node got no new shards"
        );
        n += 1;
        sh(
            &m.at,
            &format!("head -c 5000000 /dev/urandom > two.{n} && sync"),
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(m.unmount());
    let json = status_json(&v, &[]);
    assert_eq!(json_num(&json, "lost"), 0, "{json}");
    let stranger_id = c.nodes[stranger]
        .addr
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert!(
        !json.contains(&stranger_id),
        "the stranger is listed as a peer: {json}"
    );
    assert_eq!(json.matches("\"reachable\": true").count(), 6, "{json}");
    v.assert_fsck_clean();
}

#[test]
fn cluster_script_starts_kills_restarts_and_stops_nodes() {
    require!();
    let v = Volume::new();
    let dir = v.dir.path().join("cluster");
    let port = fs_tests::free_ports(3);
    let script = fs_tests::repo().join("scripts/cluster.sh");
    let run = |args: &[&str]| {
        let out = Command::new("bash")
            .arg(&script)
            .args(args)
            .env("DATAMESH_CLUSTER", &dir)
            .env("DATAMESH_CLUSTER_PORT", port.to_string())
            .env("DATAMESH_BIN", datamesh_bin())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = run(&["start", "3"]);
    let stop = scopeguard(|| {
        run(&["stop"]);
    });
    assert!(ok, "{text}");
    assert!(text.contains("token: dmjoin2"), "{text}");
    assert!(text.matches("/p2p/").count() >= 3, "{text}");
    let (ok, text) = run(&["kill", "1"]);
    assert!(ok, "{text}");
    let (_, text) = run(&["status"]);
    assert!(text.contains("node 1: down"), "{text}");
    let (ok, text) = run(&["restart", "1"]);
    assert!(ok, "{text}");
    // A client with the cluster's home reaches all three.
    let out = Command::new(datamesh_bin())
        .arg("--home")
        .arg(dir.join("home"))
        .args(
            std::fs::read_to_string(dir.join("bootstrap"))
                .unwrap()
                .split_whitespace(),
        )
        .args(["status", "--json"])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert_eq!(json.matches("\"reachable\": true").count(), 3, "{json}");
    drop(stop);
    let (_, text) = run(&["status"]);
    assert!(!text.contains("running"), "{text}");
}

/// Runs `f` when dropped (so the cluster stops even when an assert fails).
fn scopeguard(f: impl FnMut()) -> impl Drop {
    struct G<F: FnMut()>(F);
    impl<F: FnMut()> Drop for G<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    G(f)
}

#[test]
fn lying_peers_rotting_shards_and_garbage_are_caught() {
    require!();
    let v = Volume::new();
    let mut c = Cluster::start(&v, 5);
    let liar = c.add(&["--fault-flip-reads"]);
    let src = put_random(&v, &c, 30_000_000);
    assert!(!c.shard_files(liar).is_empty());

    // Garbage on a node's port: the handshake fails, the node carries on.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", c.nodes[0].port)).unwrap();
        let junk: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let _ = s.write_all(&junk);
    }

    // Every byte the liar sends is caught by the hash; the read still succeeds.
    let back = v.dir.path().join("back.bin");
    let err = v.get_same("/f.bin", &back, &src);
    assert!(err.contains("sent bytes that do not match shard"), "{err}");

    // A shard rotting on a peer's disk is found by scrub and rebuilt.
    let victim = c.shard_files(1)[0].clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();
    let scrub = v.datamesh().arg("scrub").output().unwrap();
    let out = String::from_utf8_lossy(&scrub.stdout);
    assert!(scrub.status.success(), "{out}");
    assert!(out.contains("1 corrupt shards found"), "{out}");
    let json = status_json(&v, &[]);
    assert_eq!(json_num(&json, "full"), json_num(&json, "chunks"), "{json}");
    v.get_same("/f.bin", &back, &src);
    assert!(c.is_running(0), "garbage on its port stopped node 0");
}

#[test]
fn a_mount_rebuilds_the_shards_of_a_peer_gone_past_the_grace_time() {
    require!();
    let v = Volume::new();
    let mut c = Cluster::start(&v, 7);
    // The peers come from config.toml this time, not from flags.
    let cfg = v.home().join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let peers: Vec<String> = c.nodes.iter().map(|n| format!("{:?}", n.addr)).collect();
    std::fs::write(
        &cfg,
        format!(
            "{text}\nrepair_grace_secs = 2\nbootstrap = [{}]\n",
            peers.join(", ")
        ),
    )
    .unwrap();
    let m = v.mount();
    sh(&m.at, "head -c 24000000 /dev/urandom > f.bin && sync");
    let total = |c: &Cluster, skip: usize| -> usize {
        (0..c.nodes.len())
            .filter(|&i| i != skip)
            .map(|i| c.shard_files(i).len())
            .sum()
    };
    let whole = total(&c, usize::MAX);
    let lost = c.shard_files(3).len();
    assert!(lost > 0);
    c.kill(3);
    // The worker notices within a few seconds past the grace time and puts the
    // lost shards on the six others.
    let start = std::time::Instant::now();
    while total(&c, 3) < whole {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(40),
            "{} of {lost} lost shards rebuilt",
            total(&c, 3) + lost - whole
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Asked while mounted, status and repair are answered by the mount process.
    let json = status_json(&v, &[]);
    assert_eq!(json_num(&json, "full"), json_num(&json, "chunks"), "{json}");
    assert_eq!(json_num(&json, "survives"), 2, "{json}");
    let out = v.datamesh().arg("repair").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("rebuilt 0 shards"), "{text}");
    assert!(m.unmount());
    assert!(!v.home().join("volume.sock").exists());
}

#[test]
fn a_volume_written_before_it_had_peers_moves_onto_them_with_repair() {
    let v = Volume::new();
    let src = v.dir.path().join("src.bin");
    sh(
        v.dir.path(),
        &format!("head -c 20000000 /dev/urandom > {}", src.display()),
    );
    let put = v.datamesh().arg("put").arg(&src).arg("/early.bin").status();
    assert!(put.unwrap().success());
    let local = v.home().join("store/shards");
    let count_local = || {
        std::fs::read_dir(&local)
            .unwrap()
            .flatten()
            .map(|d| std::fs::read_dir(d.path()).unwrap().count())
            .sum::<usize>()
    };
    assert!(count_local() > 0);

    let c = Cluster::start(&v, 6);
    let back = v.dir.path().join("back.bin");
    // With peers configured, the shards on this host are still read.
    let status = v
        .datamesh()
        .args(strs(&c.bootstrap_flags()))
        .args(["status", "--json"])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&status.stdout);
    assert_eq!(json_num(&json, "survives"), 0, "all on this host: {json}");
    v.get_same("/early.bin", &back, &src);
    let out = v.datamesh().arg("repair").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(count_local(), 0, "repair left shards on this host");
    let json = status_json(&v, &[]);
    assert_eq!(json_num(&json, "survives"), 2, "{json}");
    v.get_same("/early.bin", &back, &src);
}

#[test]
fn repair_spreads_chunks_written_to_few_peers_over_peers_that_joined_later() {
    let v = Volume::new();
    let mut c = Cluster::start(&v, 3);
    let src = put_random(&v, &c, 20_000_000);
    // Two shards of every chunk on each of three peers: one loss survivable.
    let json = status_json(&v, &[]);
    assert_eq!(json_num(&json, "survives"), 1, "{json}");
    for _ in 0..3 {
        c.add(&[]);
    }
    let out = v
        .datamesh()
        .args(strs(&c.bootstrap_flags()))
        .arg("repair")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let json = status_json(&v, &[]);
    assert_eq!(json_num(&json, "survives"), 2, "{json}");
    let total: usize = (0..6).map(|i| c.shard_files(i).len()).sum();
    assert_eq!(
        total,
        6 * json_num(&json, "chunks") as usize,
        "moved shards were not dropped where they came from"
    );
    v.get_same("/f.bin", &v.dir.path().join("back.bin"), &src);

    // Deleted and collected: gc removes the shards from the peers too.
    let rm = v.datamesh().args(["rm", "/f.bin"]).status().unwrap();
    assert!(rm.success());
    let gc = v.datamesh().args(["gc", "--grace", "0"]).output().unwrap();
    assert!(gc.status.success());
    let left: usize = (0..6).map(|i| c.shard_files(i).len()).sum();
    assert_eq!(left, 0, "{}", String::from_utf8_lossy(&gc.stdout));
}

#[test]
fn a_stalled_peer_sets_the_pace_of_neither_writes_nor_reads() {
    let v = Volume::new();
    let mut c = Cluster::start(&v, 5);
    // Answers every put and get 25 s late: without shards sent elsewhere after a
    // few seconds and hedged reads, every chunk touching it would wait that long.
    c.add(&["--fault-delay-ms", "25000"]);
    let start = std::time::Instant::now();
    let src = put_random(&v, &c, 40_000_000);
    let took = start.elapsed();
    assert!(
        took < std::time::Duration::from_secs(20),
        "a put of 40 MB took {took:?} with one stalled peer"
    );
    let start = std::time::Instant::now();
    v.get_same("/f.bin", &v.dir.path().join("back.bin"), &src);
    let took = start.elapsed();
    assert!(
        took < std::time::Duration::from_secs(12),
        "a read of 40 MB took {took:?} with one stalled peer"
    );
}

#[test]
fn a_shard_found_rotten_by_a_read_is_replaced_not_kept() {
    let v = Volume::new();
    let c = Cluster::start(&v, 6);
    let src = put_random(&v, &c, 9_000_000);
    // Rot every shard on the peer that holds the first data shard of the first
    // chunk, so a read is sure to meet one.
    let first = v.shards_of("/f.bin", 0)[0].clone();
    let holder = (0..c.nodes.len())
        .find(|&i| c.shard_files(i).iter().any(|f| f.ends_with(&first)))
        .expect("some peer holds the first shard");
    let victims = c.shard_files(holder);
    for f in &victims {
        let mut b = std::fs::read(f).unwrap();
        b[0] ^= 0xff;
        std::fs::write(f, &b).unwrap();
    }
    let back = v.dir.path().join("back.bin");
    let err = v.get_same("/f.bin", &back, &src);
    assert!(err.contains("do not match shard"), "{err}");
    // Healed: a second read (a fresh process, asking the peers afresh) meets
    // no rotten copy. (Parity shards a read never touched are scrub's job.)
    let err = v.get_same("/f.bin", &back, &src);
    assert!(!err.contains("do not match shard"), "{err}");
}

#[test]
fn kill_9_of_the_mount_and_two_peers_keeps_what_was_fsynced() {
    require!();
    let v = Volume::new();
    let mut c = Cluster::start(&v, 6);
    let m = v.mount_with(&strs(&c.bootstrap_flags()));
    // fsync(2) (dd's conv=fsync) is the barrier: every shard stored and synced
    // on its peer, the chunk map in the WAL. The later file is left unsynced.
    sh(
        &m.at,
        "head -c 14000000 /dev/urandom > ../expected && dd if=../expected of=synced bs=1M conv=fsync status=none",
    );
    sh(&m.at, "head -c 5000000 /dev/urandom > unsynced");
    m.kill();
    c.kill(0);
    c.kill(3);
    let m = v.mount();
    sh(&m.at, "cmp synced ../expected");
    drop(m);
    // With the two peers back, every shard of the synced file is where it
    // was. The unsynced file's last shards may have been in flight at the kill
    // (a chunk commits once k+1 landed): at most degraded, never lost, and
    // repair makes it whole.
    c.restart(0);
    c.restart(3);
    let out = v.run(&["fsck"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 0 lost"), "{text}");
    assert!(!text.contains("/synced"), "{text}");
    v.ok(&["repair"]);
    v.assert_fsck_clean();
}

/// The redundancy counts of a `status --json`, as one comparable line.
fn counts(json: &str) -> String {
    ["chunks", "full", "reduced", "critical", "lost", "unknown"]
        .iter()
        .map(|k| format!("{k}={}", json_num(json, k)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `status --json` five times in a row: the same counts every time; returns them.
fn steady_status(v: &Volume) -> String {
    let first = status_json(v, &[]);
    let want = counts(&first);
    for run in 1..5 {
        let json = status_json(v, &[]);
        assert_eq!(counts(&json), want, "status run {run} differs:\n{json}");
    }
    first
}

#[test]
fn status_and_repair_hear_from_every_one_of_twenty_peers() {
    require!();
    let v = Volume::new();
    // Small chunks: many chunks (and so many placements) from little data.
    let init = v
        .datamesh()
        .args(["init", "--chunk-size", "64K"])
        .output()
        .unwrap();
    assert!(init.status.success());
    let mut c = Cluster::start(&v, 20);
    let src = v.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    sh(
        &src,
        "for i in $(seq 1 40); do head -c $((100000 + i * 7919)) /dev/urandom > f$i.bin; done",
    );
    // Peers are given once; later commands find them in the home's peers file.
    put_via_peers(&v, &c, &["-r".as_ref(), src.as_os_str(), "/".as_ref()]);
    let json = steady_status(&v);
    let chunks = json_num(&json, "chunks");
    assert!(chunks >= 80, "{json}");
    assert_eq!(json_num(&json, "full"), chunks, "{json}");
    assert_eq!(json_num(&json, "survives"), 2, "{json}");
    v.assert_fsck_clean();

    // Two peers die; repair rebuilds their shards, and its last line and exit
    // code come from a survey taken after the rebuild.
    c.kill(3);
    c.kill(11);
    let json = steady_status(&v);
    assert!(json_num(&json, "reduced") > 0, "{json}");
    assert_eq!(json_num(&json, "lost"), 0, "{json}");
    let out = v.datamesh().arg("repair").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "repair: {text}");
    assert!(
        text.contains(&format!("{chunks} full, 0 reduced, 0 critical")),
        "{text}"
    );
    assert!(text.contains("survives the loss of any 2"), "{text}");
    let json = steady_status(&v);
    assert_eq!(json_num(&json, "full"), chunks, "{json}");
    assert_eq!(json_num(&json, "unknown"), 0, "{json}");
    assert!(json.contains("\"unreachable\": ["), "{json}");
    for dead in [3, 11] {
        let id = c.nodes[dead].addr.rsplit('/').next().unwrap().to_string();
        assert!(json.contains(&id), "dead peer {id} is listed: {json}");
    }
    v.assert_fsck_clean();

    // A peer holding shards that connects but never sends its inventory is
    // named, the chunks that may depend on it are unknown (not critical), and
    // status ends within its per-peer bound, exiting 1.
    let mute = 5;
    c.kill(mute);
    c.restart_with(mute, &["--fault-mute-lists"]);
    let mute_id = c.nodes[mute].addr.rsplit('/').next().unwrap().to_string();
    let started = std::time::Instant::now();
    let out = v.datamesh().arg("status").output().unwrap();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{text}");
    assert!(
        took < std::time::Duration::from_secs(45),
        "status took {took:?}"
    );
    assert!(
        text.contains("1 storage peer(s) did not answer") && text.contains(&mute_id),
        "{text}"
    );
    assert!(
        text.contains("0 critical") && text.contains("0 unreadable"),
        "{text}"
    );
    assert!(
        !text.contains(", 0 unknown"),
        "chunks on the mute peer: {text}"
    );
    assert!(text.contains(&format!("{mute_id} NO ANSWER")), "{text}");
    // gc refuses to act on a survey that misses a peer, and deletes nothing.
    let gc = v.datamesh().args(["gc", "--grace", "0"]).output().unwrap();
    assert!(!gc.status.success());
    let err = String::from_utf8_lossy(&gc.stderr);
    assert!(
        err.contains(&mute_id) && err.contains("nothing was deleted"),
        "{err}"
    );
}

/// The shard files every node of `c` holds, in all.
fn all_shards(c: &Cluster) -> usize {
    (0..c.nodes.len()).map(|i| c.shard_files(i).len()).sum()
}

#[test]
fn a_copied_mesh_key_can_neither_delete_nor_list_nor_store() {
    require!();
    let v = Volume::new();
    let c = Cluster::start(&v, 6);
    let src = put_random(&v, &c, 3_000_000);
    let before = all_shards(&c);
    assert!(before >= 6);
    // What a peer keeps is its own: data dir 0700, shard files 0600.
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&c.nodes[0].data), 0o700);
    assert_eq!(mode(&c.shard_files(0)[0]), 0o600);

    // The attack: a fresh home directory holding a storage peer's mesh key.
    let thief = Volume::new();
    thief.ok(&["init"]);
    std::fs::copy(
        c.nodes[0].data.join("mesh.key"),
        thief.home().join("mesh.key"),
    )
    .unwrap();
    // It controls its own home, so it "admits" every peer: the peers refuse it.
    for i in 0..c.nodes.len() {
        thief.ok(&["peers", "add", &peer_id(&c, i)]);
    }
    let boot = c.bootstrap_flags();
    let gc = thief
        .cmd(&strs(&boot))
        .args(["gc", "--grace", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&gc.stderr);
    assert!(!gc.status.success(), "the thief's gc succeeded: {err}");
    assert!(
        err.contains("refused") && err.contains("nothing was deleted"),
        "{err}"
    );
    // Its status hears nothing: every peer refuses the inventory.
    let status = thief.cmd(&strs(&boot)).arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("6 storage peer(s) did not answer"), "{text}");
    assert!(text.contains("may not Stat on this peer"), "{text}");
    // Nor can it fill the peers' disks.
    let junk = thief.dir.path().join("junk");
    std::fs::write(&junk, vec![9u8; 300_000]).unwrap();
    let put = thief
        .cmd(&strs(&boot))
        .arg("put")
        .arg(&junk)
        .arg("/junk")
        .output()
        .unwrap();
    assert!(!put.status.success(), "the thief stored shards");
    assert!(String::from_utf8_lossy(&put.stderr).contains("refused"));

    // Nor verify (scrub) anything.
    let scrub = thief.cmd(&strs(&boot)).arg("scrub").output().unwrap();
    let text = String::from_utf8_lossy(&scrub.stdout);
    assert!(
        text.contains("not scrubbed") && text.contains("refused"),
        "{text}"
    );
    // Nothing was lost or added: the real home reads everything, fsck clean.
    assert_eq!(all_shards(&c), before);
    v.assert_fsck_clean();
    v.get_same("/f.bin", &v.dir.path().join("back.bin"), &src);
    // Each node logged the refusals, naming the caller.
    let log = std::fs::read_to_string(v.dir.path().join("nodes/node0.log")).unwrap();
    assert!(log.contains("refused Stat from"), "{log}");
}

#[test]
fn bad_tokens_are_refused_before_anything_is_written_and_old_ones_still_join() {
    require!();
    let v = Volume::new();
    let mut c = Cluster::start(&v, 1);
    let good = c.token().to_string();
    // One character mistyped, and a token cut short.
    let mut typo: Vec<char> = good.chars().collect();
    let at = typo.len() / 2;
    typo[at] = if typo[at] == '0' { '1' } else { '0' };
    let typo: String = typo.into_iter().collect();
    for (bad, why) in [
        (&typo, "checksum"),
        (&good[..good.len() - 9].to_string(), ""),
    ] {
        let err = c.try_add_with_token(bad).unwrap_err();
        assert!(err.contains("join token") && err.contains(why), "{err}");
        let data = &c.nodes.last().unwrap().data;
        assert!(!data.join("mesh.key").exists(), "a bad token wrote a key");
    }
    // An expired token.
    let out = v.run(&["invite", "--ttl", "1s"]);
    let expired = String::from_utf8(out.stdout).unwrap();
    let expired = expired.lines().last().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let err = c.try_add_with_token(&expired).unwrap_err();
    assert!(err.contains("expired"), "{err}");

    // A token from before roles (dmjoin1: the key, no home) still joins; the
    // node serves the home as before and says how to bind it to its home.
    let key = std::fs::read(v.home().join("mesh.key")).unwrap();
    let mut body = key.clone();
    body.push(0); // no bootstrap addresses
    let old = format!("dmjoin1{}", fs_tests::hex(&body));
    let i = c.try_add_with_token(&old).unwrap();
    let log = std::fs::read_to_string(v.dir.path().join(format!("nodes/node{i}.log"))).unwrap();
    assert!(log.contains("predates roles"), "{log}");
    // It carries no invitation: the home uses it once told to (an upgraded
    // home admits the peers it knew already by itself).
    v.ok(&["peers", "add", &peer_id(&c, i)]);
    let src = put_random(&v, &c, 1_000_000);
    v.get_same("/f.bin", &v.dir.path().join("back.bin"), &src);
    assert!(!c.shard_files(i).is_empty(), "the old peer got no shards");
}

/// Node `i`'s peer id, from the address it printed.
fn peer_id(c: &Cluster, i: usize) -> String {
    c.nodes[i].addr.rsplit('/').next().unwrap().to_string()
}

#[test]
fn only_invited_peers_get_shards_and_a_removed_one_gets_nothing_new() {
    require!();
    let v = Volume::new();
    let mut c = Cluster::start(&v, 6);
    // One invitation, two peers joining with it: the second is not admitted.
    let out = v.ok(&["invite"]);
    let once = out.lines().last().unwrap().to_string();
    let first = c.try_add_with_token(&once).unwrap();
    let put1 = put_random(&v, &c, 200_000);
    let second = c.try_add_with_token(&once).unwrap();
    let src = put_random(&v, &c, 20_000_000);
    v.get_same("/f.bin", &v.dir.path().join("back.bin"), &src);
    drop(put1);
    assert!(
        c.shard_files(second).is_empty(),
        "an uninvited peer got shards"
    );
    let status = String::from_utf8(
        v.cmd(&strs(&c.bootstrap_flags()))
            .arg("status")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        status.contains(&format!("{} NOT ADMITTED", peer_id(&c, second))),
        "{status}"
    );
    let peers = v.ok(&["peers"]);
    assert!(peers.contains(&peer_id(&c, first)), "{peers}");
    assert!(!peers.contains(&peer_id(&c, second)), "{peers}");

    // A removed peer gets nothing new, and repair rebuilds what it held.
    let gone = peer_id(&c, 0);
    v.ok(&["peers", "remove", &gone]);
    let held = c.shard_files(0).len();
    let src = put_random(&v, &c, 20_000_000);
    assert_eq!(
        c.shard_files(0).len(),
        held,
        "a removed peer got new shards"
    );
    // The removal rotated the mesh key: the peers still admitted took the
    // new one from the home; the removed one was never handed it.
    let log = |i: usize| {
        std::fs::read_to_string(v.dir.path().join(format!("nodes/node{i}.log"))).unwrap()
    };
    assert!(
        log(1).contains("the mesh key was rotated (generation 1)"),
        "{}",
        log(1)
    );
    assert!(!log(0).contains("the mesh key was rotated"), "{}", log(0));
    let repair = v.run(&["repair"]);
    assert!(repair.status.success(), "{repair:?}");
    let json = status_json(&v, &[]);
    assert_eq!(json_num(&json, "full"), json_num(&json, "chunks"), "{json}");
    v.get_same("/f.bin", &v.dir.path().join("back.bin"), &src);
    v.assert_fsck_clean();
}

#[test]
fn a_thousand_connections_to_a_peer_neither_stop_it_nor_grow_it() {
    require!();
    let v = Volume::new();
    let mut c = Cluster::start(&v, 6);
    let before = c.rss_kib(0);
    // 1 000 connections that never finish a handshake, all held open.
    let held: Vec<std::net::TcpStream> = (0..1000)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", c.nodes[0].port)).ok())
        .collect();
    assert!(held.len() > 100, "only {} connections", held.len());
    // The mesh goes on: a write and a read through every peer, node 0 included.
    let src = put_random(&v, &c, 2_000_000);
    v.get_same("/f.bin", &v.dir.path().join("back.bin"), &src);
    assert!(c.is_running(0));
    let after = c.rss_kib(0);
    assert!(
        after < before + 64 * 1024,
        "node RSS grew from {before} to {after} KiB"
    );
    drop(held);
    v.assert_fsck_clean();
}

#[test]
fn hostile_peers_with_endless_inventories_or_huge_answers_are_cut_off() {
    require!();
    let v = Volume::new();
    let mut c = Cluster::start(&v, 6);
    let endless = c.add(&["--fault-endless-lists"]);
    let huge = c.add(&["--fault-huge-answers"]);
    let src = put_random(&v, &c, 9_000_000);
    // The home's peak memory while two peers try to drown it.
    let started = std::time::Instant::now();
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "peak-kib %M"])
        .arg(fs_tests::datamesh_bin())
        .arg("--home")
        .arg(v.home())
        .arg("status")
        .output()
        .unwrap();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        took < std::time::Duration::from_secs(30),
        "status took {took:?}"
    );
    assert!(
        text.contains("2 storage peer(s) did not answer"),
        "{text}\n{err}"
    );
    assert!(
        text.contains(&format!("{} NO ANSWER", peer_id(&c, endless))),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} NO ANSWER", peer_id(&c, huge))),
        "{text}"
    );
    assert!(text.contains("more shards than"), "{text}");
    let peak: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("peak-kib "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    eprintln!("status with two hostile peers: {took:?}, home peak {peak} KiB");
    assert!(peak < 200 * 1024, "the home peaked at {peak} KiB");
    // The data is whole, from the honest peers.
    v.get_same("/f.bin", &v.dir.path().join("back.bin"), &src);
}

#[test]
fn a_peer_that_acknowledges_puts_it_does_not_keep_is_counted_honestly_and_repaired_around() {
    require!();
    let v = Volume::new();
    let mut c = Cluster::start(&v, 6);
    let liar = c.add(&["--fault-lie-done"]);
    let src = put_random(&v, &c, 20_000_000);
    // Counts come from what the peers hold, not from what they said.
    let json = status_json(&v, &[]);
    assert!(
        json_num(&json, "full") < json_num(&json, "chunks"),
        "shards the liar dropped count as present: {json}"
    );
    let out = v.run(&["repair"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("does not hold it"), "{err}");
    let json = status_json(&v, &[]);
    assert_eq!(json_num(&json, "full"), json_num(&json, "chunks"), "{json}");
    assert_eq!(json_num(&json, "survives"), 2, "{json}");
    assert!(c.shard_files(liar).is_empty());
    v.get_same("/f.bin", &v.dir.path().join("back.bin"), &src);
    v.assert_fsck_clean();
}

#[test]
fn the_home_and_a_storage_peer_serve_metrics() {
    let v = Volume::new();
    let mut c = Cluster::start(&v, 5);
    // The chunk counts below are of the file's chunks only.
    v.config("protect_secs = 0");
    let node_addr = format!("127.0.0.1:{}", fs_tests::free_ports(1));
    c.add(&["--metrics", &node_addr]);
    let home_addr = format!("127.0.0.1:{}", fs_tests::free_ports(1));
    let _d = v.serve_with(&c.bootstrap_flags(), &["--metrics", &home_addr]);
    let src = v.dir.path().join("src");
    sh(v.dir.path(), "head -c 9000000 /dev/urandom > src");
    v.ok(&["put", src.to_str().unwrap(), "/f"]);
    let home = fs_tests::scrape(&home_addr);
    let puts: f64 = home
        .lines()
        .filter(|l| {
            l.starts_with("datamesh_shard_requests_total{") && l.contains("request=\"Put\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(puts >= 18.0, "3 chunks of 6 shards were stored: {home}");
    assert_eq!(
        fs_tests::metric(&home, "datamesh_peers_reachable"),
        6.0,
        "{home}"
    );
    assert!(
        fs_tests::metric(&home, "datamesh_peer_capacity_bytes") > 0.0,
        "{home}"
    );
    // The home's scrape asked every peer for its figures.
    let node = fs_tests::scrape(&node_addr);
    assert!(
        fs_tests::metric(&node, "datamesh_node_requests_total{request=\"Stat\"}") > 0.0,
        "{node}"
    );
    assert!(node.contains("datamesh_node_shards "), "{node}");
    // A survey (status here; repair, scrub and the repair worker too) is
    // published: every chunk whole, two peer losses survivable.
    v.ok(&["status"]);
    let home = fs_tests::scrape(&home_addr);
    assert_eq!(
        fs_tests::metric(&home, "datamesh_chunks{health=\"full\"}"),
        3.0,
        "{home}"
    );
    assert_eq!(
        fs_tests::metric(&home, "datamesh_losses_survivable"),
        2.0,
        "{home}"
    );
    assert!(
        fs_tests::metric(&home, "datamesh_last_survey_seconds") > 0.0,
        "{home}"
    );
}

#[test]
fn repair_keeps_to_its_bandwidth_and_status_shows_it_running() {
    require!();
    let v = Volume::new();
    let mut c = Cluster::start(&v, 6);
    v.config("protect_secs = 0");
    // 8 chunks of 4 MiB: one shard each (about 1 MiB) on every peer.
    let src = v.dir.path().join("src");
    sh(v.dir.path(), "head -c 33554432 /dev/urandom > src");
    let d = v.serve_with(&c.bootstrap_flags(), &[]);
    v.ok(&["put", src.to_str().unwrap(), "/f"]);
    assert!(d.stop());
    // Losing one peer loses one shard of each chunk: a repair fetches 4 and
    // places 1 per chunk, about 40 MiB in all, at 5 MB/s.
    v.config("repair_mbps = 5");
    c.kill(2);
    c.add(&[]);
    let d = v.serve_with(&c.bootstrap_flags(), &[]);
    let start = std::time::Instant::now();
    let repair = v
        .cmd(&["repair"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Meanwhile status shows it, with its progress.
    let mut seen = String::new();
    while start.elapsed() < std::time::Duration::from_secs(30) {
        let out = v.ok(&["status"]);
        // (First it surveys the peers; then it counts chunks.)
        if let Some(line) = out.lines().find(|l| l.starts_with("repair running for")) {
            seen = line.to_string();
            if seen.contains(" of 8 chunks (") {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let out = repair.wait_with_output().unwrap();
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        seen.contains(" of 8 chunks ("),
        "status during the repair: {seen:?}"
    );
    // 42 MB at 5 MB/s, less the first burst (4 MiB): over 6 s.
    assert!(
        took.as_secs_f64() > 6.0,
        "repair took {took:?} at 5 MB/s: {text}"
    );
    let traffic = text
        .lines()
        .find(|l| l.starts_with("repair traffic:"))
        .unwrap_or_else(|| panic!("no traffic line: {text}"));
    assert!(
        traffic.contains("(5.00 bytes moved per byte placed)"),
        "4 fetched and 1 placed per chunk: {traffic}"
    );
    eprintln!("repair at 5 MB/s took {took:?}; {traffic}; status said: {seen}");
    let json = status_json(&v, &[]);
    assert_eq!(json_num(&json, "full"), 8, "{json}");
    assert!(d.stop());
}

/// Wide stripes on 20 peers: 10+4 survives any 4 peers lost at once and
/// repairs back to full on the 16 left; 16+4 puts one shard on each peer and
/// reads back with 4 of them gone.
#[test]
fn wide_stripes_on_twenty_peers_survive_four_lost_at_once() {
    require!();
    for (k, m) in [(10, 4), (16, 4)] {
        let v = Volume::new();
        v.ok(&[
            "init",
            "--data-shards",
            &k.to_string(),
            "--parity-shards",
            &m.to_string(),
        ]);
        let mut c = Cluster::start(&v, 20);
        v.config("protect_secs = 0");
        // 11 chunks of 4 MiB and a partial one.
        let src = put_random(&v, &c, 50_000_000);
        let json = status_json(&v, &strs(&c.bootstrap_flags()));
        assert_eq!(json_num(&json, "chunks"), 12, "{k}+{m}: {json}");
        assert_eq!(json_num(&json, "full"), 12, "{k}+{m}: {json}");
        assert_eq!(json_num(&json, "survives"), m, "{k}+{m}: {json}");
        // Every chunk's k+m shards on k+m different peers: each peer holds
        // at most one shard of a chunk, and 12 chunks' shards are all there.
        let held: Vec<usize> = (0..20).map(|i| c.shard_files(i).len()).collect();
        assert_eq!(
            held.iter().sum::<usize>(),
            12 * (k + m) as usize,
            "{held:?}"
        );
        assert!(held.iter().all(|&n| n <= 12), "{held:?}");
        if k + m == 20 {
            assert!(
                held.iter().all(|&n| n == 12),
                "one shard of each chunk per peer: {held:?}"
            );
        }

        for i in [3, 7, 11, 19] {
            c.kill(i);
        }
        let back = v.dir.path().join("back.bin");
        v.get_same("/f.bin", &back, &src);
        if k + m > 16 {
            // 16 peers left cannot hold 20 shards apart: no repair to full.
            continue;
        }
        v.ok(&["repair"]);
        let json = status_json(&v, &[]);
        assert_eq!(json_num(&json, "full"), 12, "{k}+{m} after repair: {json}");
        assert_eq!(
            json_num(&json, "survives"),
            m,
            "{k}+{m} after repair: {json}"
        );
        v.get_same("/f.bin", &back, &src);
        v.assert_fsck_clean();
    }
}

/// Past the old 63-peer ceiling: 70 storage peers, every one of them given
/// shards; 10 % lost in waves of m = 2 with a repair after each (what the
/// first wave took is rebuilt across many peers), then 2 more
/// at once; the file reads back whole, nothing is unreadable, and fsck is
/// clean after a last repair. (scripts/scale-test.sh is the full-size version.)
#[test]
fn seventy_peers_lose_ten_percent_in_waves_and_two_more_at_once() {
    require!();
    let v = Volume::new();
    // Small chunks: enough shards that all 70 peers get some.
    v.ok(&["init", "--chunk-size", "64K"]);
    let mut c = Cluster::start(&v, 70);
    v.config("protect_secs = 0");
    let src = put_random(&v, &c, 16_000_000);
    let holding = (0..70).filter(|&i| !c.shard_files(i).is_empty()).count();
    assert!(holding > 63, "only {holding} of 70 peers hold shards");
    let back = v.dir.path().join("back.bin");
    let mut victims = (0..70).rev().step_by(3);
    for (n, wave) in [2, 2, 2, 1].into_iter().enumerate() {
        let dead: Vec<usize> = victims.by_ref().take(wave).collect();
        let held: Vec<usize> = (0..70).map(|i| c.shard_files(i).len()).collect();
        let lost: usize = dead.iter().map(|&i| held[i]).sum();
        for &i in &dead {
            c.kill(i);
        }
        v.ok(&["repair"]);
        if n == 0 {
            // The lost shards are rebuilt across the survivors (each chunk's
            // next peers in its ranking), not poured onto one of them.
            let gained: Vec<usize> = (0..70)
                .filter(|i| !dead.contains(i))
                .map(|i| c.shard_files(i).len().saturating_sub(held[i]))
                .collect();
            let receivers = gained.iter().filter(|&&g| g > 0).count();
            let most = gained.iter().max().copied().unwrap_or(0);
            assert_eq!(gained.iter().sum::<usize>(), lost, "{gained:?}");
            assert!(
                receivers >= 15 && most * 5 <= lost,
                "{lost} shards rebuilt onto {receivers} peers, {most} onto one"
            );
        }
        let json = status_json(&v, &[]);
        assert_eq!(json_num(&json, "lost"), 0, "{json}");
        assert_eq!(json_num(&json, "survives"), 2, "after repair: {json}");
    }
    for i in victims.take(2) {
        c.kill(i);
    }
    v.get_same("/f.bin", &back, &src);
    let json = status_json(&v, &[]);
    assert_eq!(json_num(&json, "lost"), 0, "{json}");
    // fsck reports the shards the last two took with them until a repair.
    v.ok(&["repair"]);
    v.assert_fsck_clean();
}

/// Given one bootstrap address, the home finds every storage peer (the
/// peers' Kademlia tables), and a peer that comes back on another address is
/// found again without a restart of the home.
#[test]
fn one_bootstrap_address_finds_every_peer_and_a_moved_peer_is_found_again() {
    require!();
    let v = Volume::new();
    let mut c = Cluster::start(&v, 6);
    v.config("protect_secs = 0");
    let one = ["--bootstrap".to_string(), c.nodes[0].addr.clone()];
    let d = v.serve_with(&one, &[]);
    let reachable = |v: &Volume| {
        let json = status_json(v, &[]);
        json.matches("\"reachable\": true").count()
    };
    let within = |what: &str, ok: &dyn Fn() -> bool| {
        eprintln!("{what}: {:?}", fs_tests::within(what, 60, ok));
    };
    within("all 6 peers found from one address", &|| reachable(&v) == 6);
    c.kill(3);
    within("the dead peer seen gone", &|| reachable(&v) == 5);
    let old = c.nodes[3].addr.clone();
    c.restart_elsewhere(3);
    assert_ne!(old, c.nodes[3].addr);
    within("the moved peer found again", &|| reachable(&v) == 6);
    assert!(d.stop());
}

/// Placement follows capacity: on 20 peers of which half are twice as large,
/// every peer is filled to within 1.25× of the mean fill (shards held per
/// byte of capacity), and the large ones hold more.
#[test]
fn placement_fills_peers_in_proportion_to_their_capacity() {
    require!();
    let v = Volume::new();
    // Small chunks: many of them, so the counts below are not noise.
    v.ok(&["init", "--chunk-size", "64K"]);
    let mut c = Cluster::start(&v, 0);
    let caps: Vec<u64> = (0..20).map(|i| if i % 2 == 0 { 2 } else { 4 }).collect();
    for cap in &caps {
        c.add(&["--capacity", &format!("{cap}G")]);
    }
    v.config("protect_secs = 0");
    put_random(&v, &c, 64 << 20);
    let held: Vec<f64> = (0..20).map(|i| c.shard_files(i).len() as f64).collect();
    let fill: Vec<f64> = held
        .iter()
        .zip(&caps)
        .map(|(h, &cap)| h / cap as f64)
        .collect();
    let mean = fill.iter().sum::<f64>() / fill.len() as f64;
    let fullest = fill.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "shards held: {held:?}; fullest fill {:.2}× the mean",
        fullest / mean
    );
    assert!(fullest <= 1.25 * mean, "fills {fill:?}, mean {mean}");
    let small: f64 = held.iter().step_by(2).sum();
    let large: f64 = held.iter().skip(1).step_by(2).sum();
    assert!(
        large > 1.4 * small,
        "large peers hold {large}, small ones {small}"
    );
}

/// The thread that kills and restarts peers, holding the cluster: stopped
/// and joined when dropped, so a failed test leaves no node running.
struct Churn {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(Cluster, u32)>>,
}

impl Churn {
    /// Stops the churn (every peer running again); the cluster, and the
    /// steps taken.
    fn end(mut self) -> (Cluster, u32) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Churn: storage peers die and come back while files are written (never
/// more than m = 2 down at once, so k+1 = 5 of 8 are always up). Every write
/// succeeds, nothing is lost, and once churn stops a repair brings every
/// chunk back to full spread.
#[test]
fn writes_go_on_while_peers_come_and_go_and_nothing_is_lost() {
    require!();
    let v = Volume::new();
    let c = Cluster::start(&v, 8);
    v.config("protect_secs = 0");
    let boot = c.bootstrap_flags();
    let d = v.serve_with(&boot, &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = Churn {
        stop: stop.clone(),
        thread: Some(std::thread::spawn(move || {
            let mut c = c;
            let mut down: Vec<usize> = Vec::new();
            let mut rounds = 0;
            let mut step = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                step += 1;
                // A fixed walk over the peers: kill one, later bring it back.
                let i = (step * 3) % 8;
                if down.len() < 2 && !down.contains(&i) {
                    c.kill(i);
                    down.push(i);
                } else if let Some(j) = down.first().copied() {
                    c.restart(j);
                    down.remove(0);
                }
                rounds += 1;
                std::thread::sleep(std::time::Duration::from_millis(150));
            }
            for j in down {
                c.restart(j);
            }
            (c, rounds)
        })),
    };
    let dir = v.dir.path();
    for n in 0..40 {
        let name = format!("f{n}");
        std::thread::sleep(std::time::Duration::from_millis(50));
        sh(
            dir,
            &format!("head -c {} /dev/urandom > {name}", 300_000 + n * 100_000),
        );
        let out = v
            .cmd(&[
                "put",
                dir.join(&name).to_str().unwrap(),
                &format!("/{name}"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "put {name} during churn: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (_c, rounds) = churn.end();
    assert!(rounds >= 8, "only {rounds} churn steps");
    eprintln!("{rounds} churn steps during 40 puts");
    // Churn over, every peer back: a repair, then every chunk whole.
    v.ok(&["repair"]);
    let json = status_json(&v, &[]);
    assert_eq!(json_num(&json, "full"), json_num(&json, "chunks"), "{json}");
    assert_eq!(json_num(&json, "survives"), 2, "{json}");
    for n in 0..40 {
        let name = format!("f{n}");
        v.get_same(&format!("/{name}"), &dir.join("back"), &dir.join(&name));
    }
    v.assert_fsck_clean();
    assert!(d.stop());
}
