//! Garbage collection of unreferenced shards, and the gate that keeps it out of
//! writes in flight.

use super::*;

/// Storing a shard that is already there is a no-op (dedup), so a writer that
/// stores a chunk whose shards have no references yet, and commits its map a
/// moment later, must not have gc delete those shards in between. Every span
/// from storing shards to committing the map that refers to them holds the gate
/// shared ([`StoreGate::span`]); gc holds it alone while it deletes.
///
/// Spans nest (a bulk write truncates first, whose tail seal is a span) and a
/// span may wait on a file lock whose holder waits on another span; so a span
/// waits only while gc *holds* the gate, never while gc merely waits for it
/// (no writer preference). gc waits until no span is open.
#[derive(Default)]
pub(super) struct StoreGate {
    /// Open spans, and whether gc holds the gate.
    state: Mutex<(usize, bool)>,
    cv: Condvar,
}

pub(super) struct Span<'a>(&'a StoreGate);

pub(super) struct Held<'a>(&'a StoreGate);

impl StoreGate {
    pub(super) fn span(&self) -> Span<'_> {
        let mut st = lock(&self.state);
        while st.1 {
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.0 += 1;
        Span(self)
    }

    fn hold(&self) -> Held<'_> {
        let mut st = lock(&self.state);
        while st.0 > 0 || st.1 {
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.1 = true;
        Held(self)
    }
}

impl Drop for Span<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.0.state);
        st.0 -= 1;
        if st.0 == 0 {
            self.0.cv.notify_all();
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).1 = false;
        self.0.cv.notify_all();
    }
}

impl Engine {
    /// Delete shards unreferenced for at least `grace_secs`, and stray shard files
    /// (stored, never committed) older than that. Returns how many went.
    ///
    /// Writes go on meanwhile: those that store shards wait (their data stays
    /// buffered) while the deletes run, through the [`StoreGate`].
    pub fn collect_garbage(&self, grace_secs: u64) -> Result<u64> {
        self.flush_all()?;
        // Learn where shards are first, so deletes go to their holders only;
        // and act only when every peer that is up has told what it holds.
        let survey = self.s.store.survey()?;
        if !survey.silent.is_empty() {
            let names: Vec<String> = survey
                .silent
                .iter()
                .map(|p| format!("{} ({})", p.id, p.why))
                .collect();
            return Err(crate::Error::Store(StoreError::Peer(format!(
                "{} storage peer(s) did not send their inventory: {}; nothing was deleted",
                names.len(),
                names.join(", ")
            ))));
        }
        let _held = self.s.gate.hold();
        let cutoff = Timestamp::now().secs - grace_secs as i64;
        let (store, collected) = (&self.s.store, &self.s.collected);
        let mut n = self.s.local()?.collect_garbage(cutoff, &mut |id| {
            store.delete(id)?;
            lock(collected).insert(*id);
            Ok(())
        })?;
        let refs = self.s.local()?.refs()?;
        let mut protected = self.protected_ids();
        protected.extend(self.s.local()?.snapshot_pins()?);
        let mut stray = Vec::new();
        self.s.store.for_each(&mut |info| {
            let old = Timestamp::from(info.modified).secs <= cutoff;
            if old && !refs.contains_key(&info.id) && !protected.contains(&info.id) {
                stray.push(info.id);
            }
        })?;
        for id in stray {
            self.s.store.delete(&id)?;
            lock(collected).insert(id);
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::StoreGate;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn gc_waits_for_open_spans_and_spans_wait_for_gc_but_not_for_a_waiting_gc() {
        let gate = Arc::new(StoreGate::default());
        let outer = gate.span();
        let held = Arc::new(AtomicBool::new(false));
        let gc = {
            let (gate, held) = (gate.clone(), held.clone());
            std::thread::spawn(move || {
                let h = gate.hold();
                held.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
                drop(h);
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !held.load(Ordering::SeqCst),
            "gc went in beside an open span"
        );
        // A nested span opens while gc waits (no writer preference: no deadlock).
        let inner = gate.span();
        drop(inner);
        drop(outer);
        // Once gc holds the gate, a new span waits until it lets go.
        while !held.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let t = std::time::Instant::now();
        let _span = gate.span();
        assert!(
            t.elapsed() >= Duration::from_millis(50),
            "a span went in beside gc"
        );
        gc.join().unwrap();
    }
}
