//! The mount's control socket, `HOME/mount.sock`. While a volume is mounted the
//! mount process holds it (RocksDB allows one process), so `status`, `repair`
//! and `scrub` are asked of that process instead. One request per connection:
//! a JSON [`Ask`] line; the answer is one JSON line, `{"Ok": Report}` or
//! `{"Err": "cause"}`. The socket is 0600 inside the 0700 home directory.

use super::mesh::{self, Ask, Report};
use crate::data::Engine;
use crate::home::Home;
use anyhow::{Context, anyhow};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Weak};

/// Longest request line read.
const MAX_REQUEST: u64 = 4096;

pub fn socket_path(home: &Home) -> PathBuf {
    home.dir.join("mount.sock")
}

/// Starts answering on the socket; a failure to bind is logged, not fatal (the
/// mount works without it).
pub fn serve(home: &Home, engine: &Arc<Engine>) {
    let path = socket_path(home);
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(
                "{}: {e}: status/repair/scrub need the volume unmounted",
                path.display()
            );
            return;
        }
    };
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    let weak = Arc::downgrade(engine);
    let spawned = std::thread::Builder::new()
        .name("datamesh-control".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let weak = weak.clone();
                // Its own thread: a repair may run for long; status stays answerable.
                let _ = std::thread::Builder::new()
                    .name("datamesh-control".into())
                    .spawn(move || handle(conn, &weak));
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("control socket: {e}");
    }
}

fn handle(conn: UnixStream, engine: &Weak<Engine>) {
    let mut line = String::new();
    let read = BufReader::new(&conn).take(MAX_REQUEST).read_line(&mut line);
    let answer: Result<Report, String> = (|| {
        read.map_err(|e| e.to_string())?;
        let ask: Ask =
            serde_json::from_str(line.trim()).map_err(|e| format!("bad request: {e}"))?;
        let engine = engine.upgrade().ok_or("the volume is being unmounted")?;
        mesh::answer(&engine, ask, &|_, _| {}).map_err(|e| format!("{e:#}"))
    })();
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    out.push(b'\n');
    let _ = (&conn).write_all(&out);
}

/// Asks the mount serving `home`, if there is one; `None` when none answers.
pub fn ask_mount(home: &Home, ask: Ask) -> anyhow::Result<Option<Report>> {
    let path = socket_path(home);
    let Ok(mut conn) = UnixStream::connect(&path) else {
        return Ok(None);
    };
    let mut req = serde_json::to_vec(&ask)?;
    req.push(b'\n');
    conn.write_all(&req)
        .with_context(|| path.display().to_string())?;
    let mut line = String::new();
    BufReader::new(conn)
        .read_line(&mut line)
        .with_context(|| path.display().to_string())?;
    let answer: Result<Report, String> = serde_json::from_str(&line)
        .with_context(|| format!("{}: unreadable answer from the mount", path.display()))?;
    answer
        .map(Some)
        .map_err(|e| anyhow!("the mount process: {e}"))
}
