//! The home's answers to what a member asks of the volume: a namespace
//! call of a member's mount ([`ns_answer`]), and the checks and shard
//! hints around the chunk maps members commit and read. Who may ask is
//! [`super::server`]'s.

use super::wire::{FirstPage, LOCK_HOLD, MAP_PAGE, NsCall, NsReply, PlusEntry};
use crate::chunk::ChunkRef;
use crate::data::Engine;
use crate::types::FileKind;
use crate::volume::proto::Request;
use crate::volume::{Ask, SnapshotOp};
use crate::{Error, Result};
use serde_bytes::ByteBuf;
use std::time::Duration;

/// A member engine's namespace call, answered by the home's engine: names
/// through the engine (so that its open handles, the member's among them,
/// decide what becomes an orphan), the rest by the namespace itself. Chunk
/// maps the member stored are committed with gc kept out.
pub(super) fn ns_answer(engine: &Engine, host: &str, call: NsCall) -> Result<NsReply> {
    let ns = engine.meta();
    let attr = NsReply::Attr;
    let unit = |()| NsReply::Unit;
    Ok(match call {
        NsCall::Params => NsReply::Params(ns.params().clone()),
        NsCall::Inode(ino) => NsReply::Inode(ns.inode(ino)?),
        NsCall::Attr(ino) => attr(ns.attr(ino)?),
        NsCall::Lookup { parent, name } => attr(ns.lookup(parent, &name)?),
        NsCall::Readdir { ino, offset, max } => {
            NsReply::Entries(ns.readdir(ino, offset, (max as usize).min(4096))?)
        }
        NsCall::Chunk { ino, idx } => {
            let chunk = ns.chunk(ino, idx)?;
            let hints = chunk
                .as_ref()
                .map(|c| engine.store().holders_of(c.shard_ids()))
                .unwrap_or_default();
            NsReply::Chunk { chunk, hints }
        }
        NsCall::ChunksFrom { ino, from } => {
            let mut chunks = ns.chunks_from(ino, from)?;
            chunks.truncate(MAP_PAGE);
            let hints = hints(engine, chunks.iter().map(|(_, c)| c));
            NsReply::Chunks { chunks, hints }
        }
        NsCall::Getxattr { ino, name } => NsReply::Bytes(ByteBuf::from(ns.getxattr(ino, &name)?)),
        NsCall::Listxattr(ino) => {
            NsReply::Names(ns.listxattr(ino)?.into_iter().map(ByteBuf::from).collect())
        }
        NsCall::CreateNode { parent, name, node } => attr(ns.create_node(parent, &name, node)?),
        NsCall::Link { ino, parent, name } => attr(ns.link(ino, parent, &name)?),
        NsCall::Unlink { parent, name } => unit(engine.unlink(parent, &name)?),
        NsCall::Rmdir { parent, name } => unit(engine.rmdir(parent, &name)?),
        NsCall::Rename {
            parent,
            name,
            new_parent,
            new_name,
            flags,
        } => unit(engine.rename(parent, &name, new_parent, &new_name, flags)?),
        NsCall::Setattr { ino, set } => attr(ns.setattr(ino, &set)?),
        NsCall::CommitChunks {
            ino,
            chunks,
            size,
            mtime,
            hints,
        } => {
            let refs: Vec<ChunkRef> = chunks.iter().filter_map(|(_, c)| c.clone()).collect();
            check_chunks(engine, refs.iter())?;
            take_hints(engine, refs.iter(), &hints);
            attr(engine.commit_stored(&refs, || ns.commit_chunks(ino, chunks, size, mtime))?)
        }
        NsCall::Truncate {
            ino,
            size,
            tail,
            set,
        } => {
            let refs: Vec<ChunkRef> = tail.iter().filter_map(|(_, c)| c.clone()).collect();
            check_chunks(engine, refs.iter())?;
            attr(engine.commit_stored(&refs, || ns.truncate(ino, size, tail, &set))?)
        }
        NsCall::Setxattr {
            ino,
            name,
            value,
            create,
            replace,
        } => unit(ns.setxattr(ino, &name, &value, create, replace)?),
        NsCall::Removexattr { ino, name } => unit(ns.removexattr(ino, &name)?),
        NsCall::Sync => unit(ns.sync()?),
        NsCall::Open(ino) => attr(engine.open(ino)?),
        NsCall::OpenRead(ino) => {
            let attr = engine.open(ino)?;
            // Opened now: a map that cannot be read is the member's to ask
            // for, not an error that would leave this open uncounted there.
            let map = (attr.kind == FileKind::File)
                .then(|| ns.chunks_from(ino, 0).ok())
                .flatten()
                .map(|mut chunks| {
                    chunks.truncate(MAP_PAGE);
                    let hints = hints(engine, chunks.iter().map(|(_, c)| c));
                    FirstPage { chunks, hints }
                });
            NsReply::Opened { attr, map }
        }
        NsCall::Getlk { ino, owner, want } => NsReply::Lock(ns.getlk(host, ino, owner, want)?),
        NsCall::Setlk { ino, owner, want } => unit(ns.setlk(host, ino, owner, want)?),
        NsCall::SetlkWait {
            ino,
            owner,
            want,
            hold_ms,
        } => {
            let hold = Duration::from_millis(hold_ms.into()).min(LOCK_HOLD);
            NsReply::Locked(ns.setlk_wait(host, ino, owner, want, hold)?)
        }
        NsCall::Unlock { ino, owner } => unit(ns.unlock(host, ino, owner)?),
        NsCall::ResetLocks => unit(ns.reset_locks(host)?),
        NsCall::CreateOpen { parent, name, node } => {
            let made = ns.create_node(parent, &name, node)?;
            NsReply::Created {
                attr: engine.open(made.ino)?,
                parent: ns.attr(parent)?,
            }
        }
        NsCall::ReaddirPlus { ino, offset, max } => NsReply::EntriesPlus(
            ns.readdir_plus(ino, offset, (max as usize).min(1024))?
                .into_iter()
                .map(|(entry, attr)| {
                    let xattrs = !ns.listxattr(entry.ino)?.is_empty();
                    Ok(PlusEntry {
                        entry,
                        attr,
                        xattrs,
                    })
                })
                .collect::<Result<_>>()?,
        ),
        NsCall::Watch { .. }
        | NsCall::Batch(_)
        | NsCall::Promise { .. }
        | NsCall::Delegate { .. }
        | NsCall::Inodes
        | NsCall::Made { .. }
        | NsCall::Features
        | NsCall::Unmade { .. }
        | NsCall::Held { .. } => {
            return Err(Error::Invalid(
                "a watch, a batch or a promise is the member server's",
            ));
        }
        // Kept in step with the member's handles by the member server.
        NsCall::Release(_) | NsCall::Releases(_) => {
            return Err(Error::Invalid("a release is the member server's"));
        }
    })
}

/// What of the volume a member device may not do (`None`: it may), as the
/// words of its refusal. A member is one of the team's devices: every file
/// operation is its right, and what it removes or overwrites is undone from
/// snapshots. So it may take and list snapshots but not delete them, and
/// may not run the upkeep that deletes or rewrites stored data (gc, repair,
/// scrub, fsck's repair). Admitting peers and members, the snapshot schedule
/// and the recovery kit are the home's files, which no call reaches.
pub(super) fn owner_only(req: &Request) -> Option<&'static str> {
    match req {
        Request::Snapshot(SnapshotOp::Delete(_)) => Some("delete snapshots"),
        Request::Gc { .. } => Some("collect garbage (gc)"),
        Request::Check { repair: true } => Some("repair with fsck"),
        Request::Mesh(Ask::Repair) => Some("run a repair"),
        Request::Mesh(Ask::Scrub) => Some("run a scrub"),
        Request::Lookup { .. }
        | Request::Getattr(_)
        | Request::Readdir { .. }
        | Request::Readlink(_)
        | Request::Mkdir { .. }
        | Request::Symlink { .. }
        | Request::Unlink { .. }
        | Request::Rmdir { .. }
        | Request::Rename { .. }
        | Request::PutFile(_)
        | Request::ReadFile(_)
        | Request::Chunks(_)
        | Request::Usage
        | Request::Check { repair: false }
        | Request::Mesh(Ask::Status)
        | Request::Barrier
        | Request::ReaddirPlus { .. }
        | Request::Params
        | Request::Snapshot(SnapshotOp::Create(_) | SnapshotOp::List) => None,
    }
}

/// Refuses chunk references the volume's code could not have made (see
/// [`ChunkRef::check`]): every host reads what the home keeps.
pub(super) fn check_chunks<'a>(
    engine: &Engine,
    mut chunks: impl Iterator<Item = &'a ChunkRef>,
) -> Result<()> {
    let p = engine.meta().params();
    let limits = crate::chunk::Limits {
        chunk_size: p.chunk_size as usize,
        data_shards: p.data_shards as usize,
        total_shards: p.data_shards as usize + p.parity_shards as usize,
    };
    chunks
        .try_for_each(|c| c.check(&limits))
        .map_err(Error::Invalid)
}

/// What a member says of where it stored the shards of `chunks`.
pub(super) fn take_hints<'a>(
    engine: &Engine,
    chunks: impl Iterator<Item = &'a ChunkRef>,
    hints: &[Vec<Vec<String>>],
) {
    for (c, h) in chunks.zip(hints) {
        for (id, peers) in c.shard_ids().iter().zip(h) {
            engine.store().learn(id, peers);
        }
    }
}

/// Where the shards of `chunks` are, as far as the home knows.
pub(super) fn hints<'a>(
    engine: &Engine,
    chunks: impl Iterator<Item = &'a ChunkRef>,
) -> Vec<Vec<Vec<String>>> {
    chunks
        .map(|c| engine.store().holders_of(c.shard_ids()))
        .collect()
}

/// The admitted storage peers, as addresses ending in `/p2p/ID`.
pub(super) fn storage_peers(engine: &Engine) -> Vec<String> {
    engine
        .store()
        .peers()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.admitted && !p.address.is_empty())
        .map(|p| format!("{}/p2p/{}", p.address, p.id))
        .collect()
}
