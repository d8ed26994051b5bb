//! The records of which member may send held-back changes of which
//! directory, kept in the meta column family so that a restarted home
//! honours the delegations it granted (docs/DESIGN.md, "The grant table
//! outlives the home"): `deleg/<dir>` = [`GrantRec`].

use super::kv::Txn;
use super::promises::Grant;
use super::schema::{CF_META, encode};
use super::{MetaStore, decode};
use crate::error::Result;
use crate::types::Ino;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

const PREFIX: &[u8] = b"deleg/";
/// The record's version.
const GRANT_V1: u8 = 1;

/// One directory's grant as recorded.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct GrantRec {
    pub v: u8,
    /// The holder's origin (its peer id).
    pub holder: String,
    /// When its recall began (Unix ms), if it did.
    pub recalled_ms: Option<u64>,
}

fn key(dir: Ino) -> Vec<u8> {
    [PREFIX, &dir.0.to_be_bytes()].concat()
}

impl MetaStore {
    /// Gives the change journal the grants recorded by an earlier run and
    /// records every change of them from now on. Called by the process
    /// that serves member devices (the only one that grants), as it starts:
    /// a command that opens the volume by itself restores none, so its
    /// reads wait for no member.
    pub fn restore_grants(&self) -> Result<()> {
        let mut recorded = Vec::new();
        self.scan_prefix(CF_META, PREFIX, PREFIX, |k, v| {
            let dir = k[PREFIX.len()..]
                .try_into()
                .map(|b| Ino(u64::from_be_bytes(b)));
            match (dir, decode::<GrantRec>("delegation", v)) {
                (Ok(dir), Ok(rec)) if rec.v == GRANT_V1 => recorded.push((
                    dir,
                    Grant {
                        holder: Arc::from(rec.holder),
                        recalled: rec.recalled_ms,
                    },
                )),
                // A newer record, or a torn one: the holder's held-back
                // changes there are refused, as after a lease.
                _ => tracing::warn!(
                    "a delegation record this datamesh cannot read ({} bytes): ignored",
                    v.len()
                ),
            }
            Ok(true)
        })?;
        if !recorded.is_empty() {
            tracing::info!(
                "{} delegation(s) to member devices from before this start honoured \
                 for a lease",
                recorded.len()
            );
        }
        let db = self.db.clone();
        let sink = Box::new(move |grants: Vec<(Ino, Option<Grant>)>| {
            let mut batch = Txn::default();
            for (dir, grant) in grants {
                match grant {
                    Some(g) => batch.put(
                        CF_META,
                        key(dir),
                        encode(&GrantRec {
                            v: GRANT_V1,
                            holder: g.holder.to_string(),
                            recalled_ms: g.recalled,
                        }),
                    ),
                    None => batch.delete(CF_META, key(dir)),
                }
            }
            // In the write-ahead log, not synced: a killed home keeps it.
            if let Err(e) = super::kv::commit_unguarded(&*db, batch) {
                tracing::warn!(
                    "recording delegations to member devices: {e} (a restart of this \
                     home would refuse what they held back)"
                );
            }
        });
        self.changes.restore(recorded, sink);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn records_read_back_as_written(
            holder in "[a-zA-Z0-9]{0,60}",
            recalled_ms in proptest::option::of(any::<u64>()),
            dir in any::<u64>(),
        ) {
            let rec = GrantRec { v: GRANT_V1, holder, recalled_ms };
            prop_assert_eq!(decode::<GrantRec>("delegation", &encode(&rec)).unwrap(), rec);
            let k = key(Ino(dir));
            prop_assert!(k.starts_with(PREFIX));
            prop_assert_eq!(u64::from_be_bytes(k[PREFIX.len()..].try_into().unwrap()), dir);
        }
    }
}
