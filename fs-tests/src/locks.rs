//! Lock workloads shared by the home-mount and member-mount tests: stress-ng's
//! lock stressors, two processes that come to wait for each other, a waiter
//! ended by a signal, and sqlite writers under locks.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// stress-ng's four lock stressors, `instances` workers each for `secs`
/// seconds with `--verify`, in a fresh directory under `dir`: each must
/// report a successful run and end within `secs` + 15 s.
pub fn stress_ng_locks(dir: &Path, instances: &[u32], secs: u64) {
    for stressor in ["lockf", "fcntl", "flock", "lockofd"] {
        for n in instances {
            let tmp = dir.join(format!("sng-{stressor}-{n}"));
            std::fs::create_dir_all(&tmp).unwrap();
            let start = Instant::now();
            let out = Command::new("timeout")
                .args(["-s", "KILL", &(secs + 60).to_string(), "stress-ng"])
                .arg("--temp-path")
                .arg(&tmp)
                .args([&format!("--{stressor}"), &n.to_string()])
                .args(["--timeout", &format!("{secs}s"), "--verify"])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let took = start.elapsed();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && text.contains("successful run completed"),
                "stress-ng --{stressor} {n} on {}: {}\n{text}",
                dir.display(),
                out.status
            );
            assert!(
                took < Duration::from_secs(secs + 15),
                "stress-ng --{stressor} {n} took {took:?} for a {secs} s run"
            );
            eprintln!("stress-ng --{stressor} {n}: {took:.1?}");
            std::fs::remove_dir_all(&tmp).unwrap();
        }
    }
}

/// Two processes each take one byte of the file (a parent through `a`, a
/// child through `b`: the same file, by one mount or two), then each waits
/// for the other's byte. Exactly one must be refused with EDEADLK and the
/// other granted once the refused one has gone. Returns what each got.
pub fn crossed_locks(a: &Path, b: &Path) -> String {
    const SCRIPT: &str = r#"
import errno, fcntl, os, sys, time
a, b = sys.argv[1], sys.argv[2]
fa = os.open(a, os.O_RDWR | os.O_CREAT, 0o644)
ready, go = os.pipe(), os.pipe()
def take(fd, byte):
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, byte)
        return "granted"
    except OSError as e:
        return "EDEADLK" if e.errno == errno.EDEADLK else "error " + str(e)
pid = os.fork()
if pid == 0:
    fb = os.open(b, os.O_RDWR)
    fcntl.lockf(fb, fcntl.LOCK_EX, 1, 1)
    os.write(ready[1], b"x")
    os.read(go[0], 1)
    time.sleep(0.5)
    got = take(fb, 0)
    os._exit(3 if got == "EDEADLK" else 0 if got == "granted" else 4)
fcntl.lockf(fa, fcntl.LOCK_EX, 1, 0)
os.read(ready[0], 1)
os.write(go[1], b"x")
mine = take(fa, 1)
if mine != "granted":
    fcntl.lockf(fa, fcntl.LOCK_UN, 0, 0)
_, st = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(st)
print(mine, {0: "granted", 3: "EDEADLK"}.get(code, "error %d" % code))
"#;
    let out = Command::new("timeout")
        .args(["-s", "KILL", "60", "python3", "-c", SCRIPT])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "crossed locks: {} {got} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut parts: Vec<&str> = got.split(' ').collect();
    parts.sort();
    assert_eq!(parts, ["EDEADLK", "granted"], "crossed locks: {got}");
    got
}

/// A process holding an exclusive flock on a file until released (or
/// dropped): `flock -o` runs a shell that waits on its standard input, so
/// closing that ends it and nothing inherits the lock.
pub struct Holder(std::process::Child);

impl Holder {
    /// Takes the lock (waiting for it, up to 10 s, if another has it).
    pub fn take(file: &Path) -> Holder {
        let child = Command::new("flock")
            .args(["-o", "-x"])
            .arg(file)
            .args(["-c", "read x"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let h = Holder(child);
        let start = Instant::now();
        while Command::new("flock")
            .args(["-n", "-x"])
            .arg(file)
            .args(["-c", "true"])
            .status()
            .unwrap()
            .success()
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the holder never held {}",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    /// Lets go: the holder ends and its lock with it.
    pub fn release(mut self) {
        self.end();
    }

    fn end(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.end();
    }
}

/// A process waiting for an exclusive flock on `file` held by another:
/// checked, after `settle`, to be waiting still.
pub fn waiter(file: &Path, settle: Duration) -> std::process::Child {
    let mut w = Command::new("flock")
        .arg("-x")
        .arg(file)
        .args(["-c", "true"])
        .spawn()
        .unwrap();
    std::thread::sleep(settle);
    assert!(
        w.try_wait().unwrap().is_none(),
        "a waiter took the lock another holds on {}",
        file.display()
    );
    w
}

/// Waits (up to 10 s) until `w` has ended, answered by whatever ended its
/// wait, and reaps it.
pub fn answered(mut w: std::process::Child, what: &str) {
    crate::within(what, 10, &|| {
        std::fs::read_to_string(format!("/proc/{}/stat", w.id()))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    });
    let _ = w.wait();
}

/// While another process holds `file` (flock), a waiter with a 1 s alarm
/// (`flock -w 1`) is interrupted and fails in about that time, and a waiter
/// sent `kill -9` ends at once; once the holder lets go, the next waiter
/// gets the lock at once. (The bounds are loose for a busy machine: before,
/// each of these waited forever.)
pub fn waits_end_on_signals(file: &Path) {
    let f = file.to_str().unwrap();
    let holder = Holder::take(file);
    let start = Instant::now();
    let timed = Command::new("flock")
        .args(["-w", "1", "-x", f, "-c", "true"])
        .status()
        .unwrap();
    let took = start.elapsed();
    assert_eq!(timed.code(), Some(1), "flock -w 1 took a held lock");
    assert!(
        took < Duration::from_secs(10),
        "flock -w 1 ended after {took:?}"
    );
    let mut waiter = waiter(file, Duration::from_millis(300));
    let start = Instant::now();
    waiter.kill().unwrap();
    waiter.wait().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "a waiting process took {:?} to die of kill -9",
        start.elapsed()
    );
    let mut next = Command::new("flock")
        .args(["-x", f, "-c", "true"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    holder.release();
    let start = Instant::now();
    assert!(next.wait().unwrap().success());
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the lock was handed over after {:?}",
        start.elapsed()
    );
}

/// `writers` processes (python's sqlite3) each committing one-row write
/// transactions to `db` for `secs` seconds; then every row they counted is
/// there and `integrity_check` is ok. Returns the rows written.
pub fn sqlite_writers(dir: &Path, writers: u32, secs: u64) -> u64 {
    const SCRIPT: &str = r#"
import sqlite3, sys, time
db, me, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
c = sqlite3.connect(db, timeout=120, isolation_level=None)
n, end = 0, time.time() + secs
while time.time() < end:
    c.execute("BEGIN IMMEDIATE")
    c.execute("INSERT INTO t VALUES (?, ?)", (me, n))
    c.execute("COMMIT")
    n += 1
print(n)
"#;
    let db = dir.join("db.sqlite");
    let setup = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('CREATE TABLE t(w TEXT, n INTEGER)')",
        ])
        .arg(&db)
        .status()
        .unwrap();
    assert!(setup.success());
    let children: Vec<_> = (0..writers)
        .map(|w| {
            Command::new("timeout")
                .args([
                    "-s",
                    "KILL",
                    &(secs + 120).to_string(),
                    "python3",
                    "-c",
                    SCRIPT,
                ])
                .arg(&db)
                .arg(format!("w{w}"))
                .arg(secs.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut total = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a sqlite writer failed: {}",
            out.status
        );
        total += String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .unwrap();
    }
    let check = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
             print(c.execute('PRAGMA integrity_check').fetchone()[0], \
             c.execute('SELECT count(*), count(DISTINCT w) FROM t').fetchone())",
        ])
        .arg(&db)
        .output()
        .unwrap();
    let got = String::from_utf8_lossy(&check.stdout).trim().to_string();
    assert_eq!(
        got,
        format!("ok ({total}, {writers})"),
        "sqlite after the writers"
    );
    total
}
