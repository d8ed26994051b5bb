//! The table of peers this client knows, and the file that remembers them.

use super::*;

impl PeerTable {
    pub(super) fn entry(&mut self, id: PeerId) -> Option<&mut PeerEntry> {
        if let Some(&i) = self.by_id.get(&id) {
            return Some(&mut self.list[i]);
        }
        if self.list.len() >= MAX_PEERS {
            tracing::warn!("peer {id} ignored: a mesh holds at most {MAX_PEERS} storage peers");
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
            .filter(|p| p.storage)
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
