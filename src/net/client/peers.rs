//! The table of peers this client knows, and the file that remembers them.

use super::*;

impl PeerTable {
    pub(super) fn entry(&mut self, id: PeerId) -> Option<&mut PeerEntry> {
        if let Some(&i) = self.by_id.get(&id) {
            return Some(&mut self.list[i]);
        }
        if self.list.len() >= TABLE_LIMIT {
            tracing::warn!(
                "peer {id} ignored: this home already knows {TABLE_LIMIT} peers (a key holder making up identities?)"
            );
            return None;
        }
        self.by_id.insert(id, self.list.len());
        self.list.push(PeerEntry {
            id,
            addrs: Vec::new(),
            connected: false,
            storage: false,
            down_since: Some(Instant::now()),
            dial_failed: false,
            identified: false,
            dial_failures: 0,
            last_dial_error: String::new(),
            admitted: self.admitted.as_ref().is_none_or(|a| a.peers.contains(&id)),
            admitting: false,
            capacity: 0,
        });
        self.list.last_mut()
    }
}

impl Shared {
    pub(super) fn save_peers(&self) {
        let Some(path) = &self.remember else { return };
        let text: String = lock(&self.peers)
            .list
            .iter()
            .filter(|p| p.usable())
            .flat_map(|p| p.addrs.first().map(|a| format!("{a}/p2p/{}\n", p.id)))
            .collect();
        if std::fs::read_to_string(path).ok().as_deref() != Some(text.as_str()) {
            // Its own temp name: a mount and a command may both be saving.
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            if let Err(e) = std::fs::write(&tmp, &text).and_then(|_| std::fs::rename(&tmp, path)) {
                tracing::warn!("{}: {e}", path.display());
            }
        }
    }
}

impl Shared {
    /// Re-reads the admitted file when it changed (`datamesh peers remove`
    /// while a mount runs), and marks the table's entries from it.
    pub(super) fn reload_admitted(&self) {
        let Some(adm) = &self.admission else { return };
        let mtime = std::fs::metadata(&adm.admitted)
            .and_then(|m| m.modified())
            .ok();
        {
            let mut last = lock(&self.admitted_read);
            if *last == mtime && mtime.is_some() {
                return;
            }
            *last = mtime;
        }
        match super::super::trust::Admitted::load(&adm.admitted) {
            Ok(list) => {
                let list = list.unwrap_or_default();
                let mut t = lock(&self.peers);
                for e in &mut t.list {
                    e.admitted = list.peers.contains(&e.id);
                }
                t.admitted = Some(list);
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }

    /// Takes up the home's ring file when a command rotated it; whether the
    /// transport now uses a newer ring.
    pub(super) fn reload_keys(&self) -> bool {
        let Some(adm) = &self.admission else {
            return false;
        };
        let mtime = std::fs::metadata(&adm.keys).and_then(|m| m.modified()).ok();
        {
            let mut last = lock(&self.keys_read);
            if *last == mtime {
                return false;
            }
            *last = mtime;
        }
        match MeshKeys::load(&adm.keys, false) {
            Ok(ring) => {
                let generation = ring.generation();
                let newer = self.keys.take_newer(ring);
                if newer {
                    tracing::warn!("the mesh key was rotated: generation {generation}");
                }
                newer
            }
            Err(e) => {
                tracing::warn!("{e}");
                false
            }
        }
    }

    /// Keeps what a peer's answer to `Stat` says it can hold (placement's
    /// weight).
    pub(super) fn take_stat(&self, peer: PeerId, answer: Result<Response, String>) {
        if let Ok(Response::Stat { capacity, .. }) = answer
            && let Some(e) = lock(&self.peers).entry(peer)
        {
            e.capacity = capacity;
        }
    }

    /// Checks a peer's answer to `Hello` against the invitations; admits it
    /// (and remembers that) when one matches.
    pub(super) fn take_hello(&self, peer: PeerId, answer: Result<Response, String>) {
        let Some(adm) = &self.admission else { return };
        let now = super::super::trust::now_secs();
        let verdict = match answer {
            Ok(Response::Hello { proof }) => {
                super::super::trust::Invites::redeem(&adm.invites, &peer, &proof, now)
                    .map_err(|e| e.to_string())
                    .and_then(|ok| {
                        ok.then_some(())
                            .ok_or_else(|| "its proof matches no open invitation".to_string())
                    })
            }
            Ok(other) => Err(other.to_string()),
            Err(e) => Err(e),
        };
        let mut t = lock(&self.peers);
        if let Some(e) = t.entry(peer) {
            e.admitting = false;
        }
        match verdict {
            Ok(()) => {
                if let Some(e) = t.entry(peer) {
                    e.admitted = true;
                }
                let list = t.admitted.get_or_insert_with(Default::default);
                list.peers.insert(peer);
                let list = list.clone();
                drop(t);
                match list.save(&adm.admitted) {
                    Ok(()) => tracing::info!("admitted storage peer {peer}"),
                    Err(e) => tracing::warn!("admitted storage peer {peer}, but: {e}"),
                }
                *lock(&self.admitted_read) = None;
                self.save_peers();
            }
            Err(why) => tracing::warn!(
                "storage peer {peer} is not admitted ({why}): no shards go to it; \
                 give it a token from `datamesh invite`, or `datamesh peers add {peer}`"
            ),
        }
    }
}
