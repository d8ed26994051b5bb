//! The admin protocol: what a process serving the volume (a mount) answers on
//! its Unix socket, `HOME/mount.sock`, and the client side that asks it. While
//! a volume is served, RocksDB belongs to that process, so `status`, `repair`
//! and `scrub` are asked of it instead of opening the volume.
//!
//! Wire format, version 1: one request per connection, one JSON line each way.
//! The request is `{"version":1,"ask":"Status"}`; the answer
//! `{"version":1,"answer":{"Ok":REPORT}}` or `{"version":1,"answer":{"Err":"cause"}}`.
//! A request of another version is answered with an error that names both
//! versions. Lines are capped ([`MAX_REQUEST`], [`MAX_ANSWER`]) and at most
//! [`MAX_CONNECTIONS`] requests are answered at once; more are told to retry.
//! The socket is made 0600 (the umask is set before it is bound, so it never
//! exists with a wider mode) inside the 0700 home directory, and each caller is
//! checked by its kernel credentials (SO_PEERCRED): root, or the user who owns
//! the home directory. Reads and writes on a connection time out
//! ([`IO_TIMEOUT`]), so a caller that connects and says nothing holds no slot.

use crate::data::{Engine, Redundancy};
use crate::store::{PeerNote, PeerStatus, Scrubbed};
use crate::workers::{Runner, WorkerInfo};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;
/// Longest request line read.
pub const MAX_REQUEST: u64 = 4096;
/// Longest answer line read (a status of many peers is a few hundred KiB).
pub const MAX_ANSWER: u64 = 64 << 20;
/// Requests answered at once; a repair may run long, status stays answerable.
pub const MAX_CONNECTIONS: usize = 8;
/// How long a read of a request, or a write of an answer, may take.
pub const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The operations a serving process answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ask {
    Status,
    Repair,
    Scrub,
}

/// What `status`, `repair` and `scrub` report.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub peers: Option<Vec<PeerStatus>>,
    pub redundancy: Redundancy,
    pub data_shards: usize,
    pub parity_shards: usize,
    /// Corrupt shards found (scrub only), as hex ids.
    #[serde(default)]
    pub corrupt: Vec<String>,
    /// Peers scrub could not verify (scrub only).
    #[serde(default)]
    pub unverified: Vec<PeerNote>,
    /// The background workers of the process that answered (none when the
    /// command opened the volume itself).
    #[serde(default)]
    pub workers: Vec<WorkerInfo>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Request {
    version: u32,
    ask: Ask,
}

#[derive(Serialize, Deserialize)]
struct Answer {
    version: u32,
    answer: Result<Report, String>,
}

/// Runs `ask` on an open engine; `progress(done, total)`.
pub fn answer(
    engine: &Engine,
    ask: Ask,
    workers: Vec<WorkerInfo>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> crate::Result<Report> {
    let (scrubbed, redundancy) = match ask {
        Ask::Status => (Scrubbed::default(), engine.redundancy(false, progress)?),
        Ask::Repair => (Scrubbed::default(), engine.redundancy(true, progress)?),
        Ask::Scrub => engine.scrub(progress)?,
    };
    Ok(Report {
        peers: engine.store().peers(),
        redundancy,
        data_shards: engine.codec().data_shards(),
        parity_shards: engine.codec().parity_shards(),
        corrupt: scrubbed.bad.iter().map(|id| id.to_hex()).collect(),
        unverified: scrubbed.skipped,
        workers,
    })
}

/// The request line for `ask`.
fn encode_request(ask: Ask) -> Vec<u8> {
    let mut line = serde_json::to_vec(&Request {
        version: VERSION,
        ask,
    })
    .expect("requests serialize");
    line.push(b'\n');
    line
}

/// Reads a request line; the error is what the asker is told.
fn decode_request(line: &str) -> Result<Ask, String> {
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let v: Versioned =
        serde_json::from_str(line.trim()).map_err(|e| format!("bad request: {e}"))?;
    if v.version != VERSION {
        return Err(format!(
            "this process speaks admin protocol version {VERSION}, the request is version {}: \
             use the same datamesh for both (unmount and mount again after an upgrade)",
            v.version
        ));
    }
    let r: Request = serde_json::from_str(line.trim()).map_err(|e| format!("bad request: {e}"))?;
    Ok(r.ask)
}

fn encode_answer(answer: Result<Report, String>) -> Vec<u8> {
    let mut out = serde_json::to_vec(&Answer {
        version: VERSION,
        answer,
    })
    .unwrap_or_else(|e| {
        serde_json::to_vec(&Answer {
            version: VERSION,
            answer: Err(format!("the answer could not be written: {e}")),
        })
        .expect("an error answer serializes")
    });
    out.push(b'\n');
    out
}

/// Reads an answer line: the report, or the serving process's error.
fn decode_answer(line: &str) -> Result<Result<Report, String>, String> {
    match serde_json::from_str::<Answer>(line.trim()) {
        Ok(a) if a.version == VERSION => Ok(a.answer),
        Ok(a) => Err(format!(
            "the serving process speaks admin protocol version {}, this datamesh {VERSION}",
            a.version
        )),
        // Before versions: a bare {"Ok":…} or {"Err":…}, from an older mount
        // (which cannot read a versioned request either).
        Err(_)
            if serde_json::from_str::<Result<serde_json::Value, String>>(line.trim()).is_ok() =>
        {
            Err("the mount runs an older datamesh: unmount and mount again to use this one".into())
        }
        Err(e) => Err(format!("unreadable answer: {e}")),
    }
}

/// Starts answering on the socket at `path` under `runner` (the worker
/// `admin`, stopped with the runner). A socket that cannot be bound is logged,
/// not fatal: the volume is served without it.
pub fn serve(path: &Path, engine: &Arc<Engine>, runner: &Runner) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let _ = std::fs::remove_file(path);
    // Whoever owns the home directory may ask, and root.
    let owner = path
        .parent()
        .and_then(|d| std::fs::metadata(d).ok())
        .map_or(0, |m| m.uid());
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(
                "{}: {e}: status/repair/scrub need the volume unmounted",
                path.display()
            );
            return Ok(());
        }
    };
    // Also for a umask that another thread changed meanwhile.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let weak = Arc::downgrade(engine);
    let workers = runner.clone();
    runner.spawn("admin", move |w| {
        let busy = Arc::new(AtomicUsize::new(0));
        let mut handlers = Vec::new();
        for conn in listener.incoming() {
            if w.stopping() {
                break;
            }
            let Ok(conn) = conn else { continue };
            handlers.retain(|h: &std::thread::JoinHandle<()>| !h.is_finished());
            if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                busy.fetch_sub(1, Ordering::SeqCst);
                let why = format!("busy: {MAX_CONNECTIONS} requests are being answered; try again");
                let _ = (&conn).write_all(&encode_answer(Err(why)));
                continue;
            }
            let (weak, workers, done) = (weak.clone(), workers.clone(), busy.clone());
            let spawned = std::thread::Builder::new()
                .name("datamesh-admin-conn".into())
                .spawn(move || {
                    handle(conn, owner, &weak, &workers);
                    done.fetch_sub(1, Ordering::SeqCst);
                });
            match spawned {
                Ok(h) => handlers.push(h),
                Err(e) => {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    w.round(Err(format!("answering a request: {e}")));
                }
            }
        }
        // Requests being answered finish before the volume is flushed.
        for h in handlers {
            let _ = h.join();
        }
    })?;
    // The accept loop blocks in accept: a connection of its own wakes it.
    let wake = path.to_path_buf();
    runner.on_stop(move || {
        let _ = UnixStream::connect(&wake);
    });
    Ok(())
}

/// Whether the process at the other end of `conn` may ask: root, or `owner`.
fn check_caller(conn: &UnixStream, owner: u32) -> Result<(), String> {
    let cred = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("reading the caller's credentials: {e}"))?;
    if cred.uid() == 0 || cred.uid() == owner {
        return Ok(());
    }
    tracing::warn!(
        "admin socket: refused uid {} (pid {})",
        cred.uid(),
        cred.pid()
    );
    Err(format!(
        "refused: uid {} is neither root nor the owner (uid {owner}) of this volume",
        cred.uid()
    ))
}

fn handle(conn: UnixStream, owner: u32, engine: &Weak<Engine>, runner: &Runner) {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    if let Err(why) = check_caller(&conn, owner) {
        let _ = (&conn).write_all(&encode_answer(Err(why)));
        return;
    }
    let mut line = String::new();
    let read = BufReader::new(&conn).take(MAX_REQUEST).read_line(&mut line);
    let answer: Result<Report, String> = (|| {
        read.map_err(|e| e.to_string())?;
        let ask = decode_request(&line)?;
        let engine = engine.upgrade().ok_or("the volume is being unmounted")?;
        self::answer(&engine, ask, runner.list(), &|_, _| {}).map_err(|e| e.to_string())
    })();
    let _ = (&conn).write_all(&encode_answer(answer));
}

/// Asks the process serving the socket at `path`; `None` when none answers
/// (no such socket, or nobody listening on it).
pub fn ask(path: &Path, ask: Ask) -> Result<Option<Report>, String> {
    let Ok(mut conn) = UnixStream::connect(path) else {
        return Ok(None);
    };
    let at = |e: std::io::Error| format!("{}: {e}", path.display());
    conn.write_all(&encode_request(ask)).map_err(at)?;
    let mut line = String::new();
    BufReader::new(conn)
        .take(MAX_ANSWER)
        .read_line(&mut line)
        .map_err(at)?;
    match decode_answer(&line) {
        Ok(Ok(report)) => Ok(Some(report)),
        Ok(Err(e)) => Err(format!("the mount process: {e}")),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_ask() -> impl Strategy<Value = Ask> {
        prop_oneof![Just(Ask::Status), Just(Ask::Repair), Just(Ask::Scrub)]
    }

    proptest! {
        #[test]
        fn requests_round_trip(ask in any_ask()) {
            let line = String::from_utf8(encode_request(ask)).unwrap();
            prop_assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
            prop_assert_eq!(decode_request(&line), Ok(ask));
        }

        #[test]
        fn damaged_requests_are_refused_not_panicked_on(
            ask in any_ask(), cut in 0usize..40, junk in proptest::collection::vec(any::<u8>(), 0..64)
        ) {
            let line = encode_request(ask);
            let cut = cut.min(line.len() - 1);
            let mut damaged = line[..cut].to_vec();
            damaged.extend(&junk);
            let text = String::from_utf8_lossy(&damaged);
            if let Ok(got) = decode_request(&text) {
                // Junk that happens to complete a valid request must mean it.
                prop_assert!(text.contains("\"ask\""), "{} -> {:?}", text, got);
            }
            let _ = decode_answer(&text);
        }

        #[test]
        fn error_answers_round_trip(why in ".{0,200}") {
            let line = String::from_utf8(encode_answer(Err(why.clone()))).unwrap();
            prop_assert!(line.matches('\n').count() == 1);
            match decode_answer(&line) {
                Ok(Err(got)) => prop_assert_eq!(got, why),
                other => prop_assert!(false, "{:?}", other.map(|r| r.map(|_| ()))),
            }
        }
    }

    #[test]
    fn other_versions_are_named() {
        let err = decode_request(r#"{"version":7,"ask":"Status"}"#).unwrap_err();
        assert!(
            err.contains("version 1") && err.contains("version 7"),
            "{err}"
        );
        // A request from before versions.
        assert!(decode_request(r#""Status""#).is_err());
        // An answer from a mount before versions.
        let err = decode_answer(r#"{"Err":"x"}"#).map(|_| ()).unwrap_err();
        assert!(err.contains("older datamesh"), "{err}");
        let err = decode_answer(r#"{"version":2,"answer":{"Err":"x"}}"#)
            .map(|_| ())
            .unwrap_err();
        assert!(err.contains("version 2"), "{err}");
    }

    #[test]
    fn a_report_survives_the_wire() {
        let report = Report {
            peers: Some(vec![PeerStatus {
                tag: 3,
                id: "12D3KooW".into(),
                address: "/ip4/127.0.0.1/tcp/1".into(),
                reachable: true,
                shards: 5,
                bytes: 500,
                capacity: 1000,
                admitted: true,
            }]),
            redundancy: Redundancy {
                chunks: 9,
                full: 7,
                unknown: 2,
                silent: vec![PeerNote {
                    id: "p".into(),
                    address: "a".into(),
                    why: "no answer".into(),
                }],
                survives: Some(1),
                ..Default::default()
            },
            data_shards: 4,
            parity_shards: 2,
            corrupt: vec!["ab".into()],
            unverified: Vec::new(),
            workers: Vec::new(),
        };
        let line = String::from_utf8(encode_answer(Ok(report))).unwrap();
        let back = decode_answer(&line).unwrap().unwrap();
        assert_eq!(back.redundancy.unknown, 2);
        assert_eq!(back.redundancy.silent[0].why, "no answer");
        assert_eq!(back.peers.unwrap()[0].capacity, 1000);
        assert_eq!(back.corrupt, vec!["ab".to_string()]);
    }
}
