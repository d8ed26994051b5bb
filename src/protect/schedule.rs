//! Scheduled snapshots: the daemon's worker `snapshots` takes one named
//! `auto-TIME` every `snapshot_every_secs` and deletes the oldest beyond
//! `snapshot_keep` (snapshots taken by hand are never touched).

use crate::data::Engine;
use crate::types::Timestamp;
use crate::volume::{SnapshotOp, Volume};
use std::sync::{Arc, Weak};
use std::time::Duration;

const PREFIX: &str = "auto-";

/// Starts the worker (nothing when `every` is zero).
pub fn start(
    engine: &Arc<Engine>,
    every: Duration,
    keep: usize,
    runner: &crate::workers::Runner,
) -> std::io::Result<()> {
    if every.is_zero() {
        return Ok(());
    }
    let weak = Arc::downgrade(engine);
    // Checked each minute (or sooner for short intervals): a daemon started
    // again takes its next one when due, not an interval after its start.
    let tick = every.min(Duration::from_secs(60));
    runner.every("snapshots", tick, move || {
        round(&weak, every, keep.max(1)).map_err(|e| e.to_string())
    })
}

fn round(engine: &Weak<Engine>, every: Duration, keep: usize) -> crate::Result<()> {
    let Some(engine) = engine.upgrade() else {
        return Ok(());
    };
    // Oldest first.
    let list = engine.local_meta()?.snapshots()?;
    let auto: Vec<_> = list
        .iter()
        .filter(|s| s.name.starts_with(PREFIX.as_bytes()))
        .collect();
    let now = Timestamp::now();
    let due = auto
        .last()
        .is_none_or(|s| now.secs - s.created.secs >= every.as_secs() as i64);
    if !due {
        return Ok(());
    }
    let name = format!(
        "{PREFIX}{}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    engine.snapshot(SnapshotOp::Create(name.clone().into_bytes().into()))?;
    tracing::info!("snapshot {name} taken");
    let excess = (auto.len() + 1).saturating_sub(keep);
    for s in auto.iter().take(excess) {
        engine.snapshot(SnapshotOp::Delete(s.name.clone().into()))?;
        tracing::info!(
            "snapshot {} deleted (snapshot_keep)",
            String::from_utf8_lossy(&s.name)
        );
    }
    Ok(())
}
