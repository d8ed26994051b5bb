//! Garbage collection of unreferenced shards.

use super::*;

impl Engine {
    /// Delete shards unreferenced for at least `grace_secs`, and stray shard files
    /// (stored, never committed) older than that. Returns how many went.
    ///
    /// Takes the engine exclusively: a shard re-stored by a writer (same content as
    /// one about to be collected) must not go between its store and its commit.
    pub fn collect_garbage(&mut self, grace_secs: u64) -> Result<u64> {
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
        let cutoff = Timestamp::now().secs - grace_secs as i64;
        let store = &self.s.store;
        let mut n = self
            .s
            .meta
            .collect_garbage(cutoff, &mut |id| Ok(store.delete(id)?))?;
        let refs = self.s.meta.refs()?;
        let mut stray = Vec::new();
        self.s.store.for_each(&mut |info| {
            let old = Timestamp::from(info.modified).secs <= cutoff;
            if old && !refs.contains_key(&info.id) {
                stray.push(info.id);
            }
        })?;
        for id in stray {
            self.s.store.delete(&id)?;
            n += 1;
        }
        Ok(n)
    }
}
