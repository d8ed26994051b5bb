//! Snapshots: read-only, point-in-time copies of the namespace. Each is a
//! RocksDB checkpoint in `HOME/snapshots/ID/` (hard links of the table files:
//! no copy of file data, and almost none of metadata), listed in the `meta`
//! cf, and seen read-only at `/.snapshots/NAME/` by giving its inodes numbers
//! of their own: snapshot `ID`'s inode `i` is `ID << 48 | i`. See
//! docs/DESIGN.md, "Snapshots".

use super::*;
use crate::chunk::ShardId;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;

const LOCAL_BITS: u32 = 48;
const LOCAL_MASK: u64 = (1 << LOCAL_BITS) - 1;
/// The `/.snapshots` directory.
pub const SNAPSHOTS_DIR: Ino = Ino(0xFFFF << LOCAL_BITS);
/// Its name in the root (not listed there: backups of the mount do not copy
/// every snapshot).
pub const SNAPSHOTS_NAME: &[u8] = b".snapshots";
const MAX_ID: u16 = 0xFFFE;

/// One snapshot, as the `meta` cf lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapRec {
    pub id: u16,
    pub name: Vec<u8>,
    pub created: Timestamp,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SnapList {
    /// Ids are never reused (a kernel may still cache an old one's inodes).
    next: u16,
    list: Vec<SnapRec>,
}

/// Where an inode number lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Main(Ino),
    /// `/.snapshots` itself.
    Dir,
    /// Snapshot `id`'s inode.
    Snap(u16, Ino),
}

pub fn route(ino: Ino) -> Route {
    match (ino.0 >> LOCAL_BITS) as u16 {
        0 => Route::Main(ino),
        0xFFFF => Route::Dir,
        id => Route::Snap(id, Ino(ino.0 & LOCAL_MASK)),
    }
}

/// Whether `ino` is in a snapshot (or is `/.snapshots`): read-only.
pub fn is_snapshot(ino: Ino) -> bool {
    ino.0 >> LOCAL_BITS != 0
}

fn outer(id: u16, local: Ino) -> Ino {
    Ino(((id as u64) << LOCAL_BITS) | local.0)
}

/// Snapshot databases opened so far (read-only), by id.
#[derive(Default)]
pub(super) struct Opened(Mutex<HashMap<u16, Arc<MetaStore>>>);

impl MetaStore {
    /// Where snapshot `id`'s database is: beside this one's.
    fn snap_path(&self, id: u16) -> std::path::PathBuf {
        self.path.with_file_name("snapshots").join(id.to_string())
    }

    fn snap_list(&self) -> Result<SnapList> {
        match self.db.get(CF_META, KEY_SNAPSHOTS)? {
            Some((v, _)) => decode("snapshot list", &v),
            None => Ok(SnapList {
                next: 1,
                list: Vec::new(),
            }),
        }
    }

    /// Every snapshot, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapRec>> {
        Ok(self.snap_list()?.list)
    }

    /// Takes a snapshot named `name` of the namespace as it is now.
    pub fn snapshot_create(&self, name: &[u8]) -> Result<SnapRec> {
        check_name(name)?;
        // What members closed in their delegated directories is in it.
        self.changes().recall_all();
        let _g = self.lock();
        let mut l = self.snap_list()?;
        if l.list.iter().any(|s| s.name == name) {
            return Err(Error::Exists);
        }
        if l.next > MAX_ID {
            return Err(Error::NoSpace);
        }
        let rec = SnapRec {
            id: l.next,
            name: name.to_vec(),
            created: Timestamp::now(),
        };
        let path = self.snap_path(rec.id);
        let tmp = path.with_extension("tmp");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_dir_all(&tmp);
        self.checkpoint(&tmp)?;
        std::fs::rename(&tmp, &path)?;
        l.next += 1;
        l.list.push(rec.clone());
        self.put_snap_list(&l)?;
        self.note_snapshot(name);
        Ok(rec)
    }

    /// Deletes snapshot `name`: what only it held is gc's from now on.
    pub fn snapshot_delete(&self, name: &[u8]) -> Result<SnapRec> {
        let _g = self.lock();
        let mut l = self.snap_list()?;
        let at = l
            .list
            .iter()
            .position(|s| s.name == name)
            .ok_or(Error::NotFound)?;
        let rec = l.list.remove(at);
        self.put_snap_list(&l)?;
        self.note_snapshot(name);
        crate::util::lock(&self.snaps.0).remove(&rec.id);
        let path = self.snap_path(rec.id);
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        Ok(rec)
    }

    /// Tells the mounts' kernels that `/.snapshots/NAME` changed.
    fn note_snapshot(&self, name: &[u8]) {
        self.changes.note(&cache::Changes {
            inodes: vec![(SNAPSHOTS_DIR, None)],
            dentries: vec![(SNAPSHOTS_DIR, name.to_vec(), None)],
        });
    }

    fn put_snap_list(&self, l: &SnapList) -> Result<()> {
        let mut t = Txn {
            durable: true,
            ..Default::default()
        };
        t.put(CF_META, KEY_SNAPSHOTS, encode(l));
        self.write(t)
    }

    /// Snapshot `id`'s database (opened read-only on first use).
    fn snap_db(&self, id: u16) -> Result<Arc<MetaStore>> {
        if let Some(db) = crate::util::lock(&self.snaps.0).get(&id) {
            return Ok(db.clone());
        }
        if !self.snap_list()?.list.iter().any(|s| s.id == id) {
            return Err(Error::NotFound);
        }
        let db = Arc::new(MetaStore::open_read_only(&self.snap_path(id))?);
        crate::util::lock(&self.snaps.0).insert(id, db.clone());
        Ok(db)
    }

    fn snap_named(&self, name: &[u8]) -> Result<SnapRec> {
        self.snap_list()?
            .list
            .into_iter()
            .find(|s| s.name == name)
            .ok_or(Error::NotFound)
    }

    /// Every snapshot's database with its record.
    pub fn snapshot_dbs(&self) -> Result<Vec<(SnapRec, Arc<MetaStore>)>> {
        self.snapshots()?
            .into_iter()
            .map(|s| Ok((s.clone(), self.snap_db(s.id)?)))
            .collect()
    }

    /// The shards some snapshot references: gc keeps them.
    pub fn snapshot_pins(&self) -> Result<HashSet<ShardId>> {
        let mut out = HashSet::new();
        for (_, db) in self.snapshot_dbs()? {
            out.extend(
                db.refs()?
                    .into_iter()
                    .filter(|(_, r)| r.count > 0)
                    .map(|(id, _)| id),
            );
        }
        Ok(out)
    }

    /// Bytes stored for chunks snapshot `db` holds that the live namespace
    /// does not: what deleting it (and gc) would free, less what other
    /// snapshots hold too.
    pub fn snapshot_pinned_bytes(&self, db: &MetaStore) -> Result<u64> {
        let live = self.refs()?;
        let mut seen = HashSet::new();
        let mut bytes = 0;
        db.for_each_chunk(|_, _, c| {
            if let Some(first) = c.shard_ids().first()
                && live.get(first).is_none_or(|r| r.count == 0)
                && seen.insert(*first)
            {
                // Slices live in the snapshot's records, not in shards.
                bytes += c.sharded().map_or(0, ChunkRef::stored_len);
            }
            Ok(())
        })?;
        Ok(bytes)
    }

    // ---- the read-only tree under /.snapshots -----------------------------------

    fn snapshots_dir_attr(&self) -> Result<Attr> {
        let root = self.inode(Ino::ROOT)?;
        let n = self.snap_list()?.list.len() as u32;
        Ok(Attr {
            perm: 0o555,
            nlink: 2 + n,
            ..to_attr(SNAPSHOTS_DIR, &root)
        })
    }

    /// A snapshot inode's attributes, its number made the outer one.
    fn snap_attr(id: u16, mut a: Attr) -> Attr {
        a.ino = outer(id, a.ino);
        a
    }

    /// `attr` of any inode, main or in a snapshot.
    pub(super) fn routed_attr(&self, ino: Ino) -> Result<Attr> {
        match route(ino) {
            Route::Main(i) => self.attr(i),
            Route::Dir => self.snapshots_dir_attr(),
            Route::Snap(id, i) => Ok(Self::snap_attr(id, self.snap_db(id)?.attr(i)?)),
        }
    }

    pub(super) fn routed_inode(&self, ino: Ino) -> Result<InodeRec> {
        match route(ino) {
            Route::Main(i) => self.inode(i),
            Route::Dir => {
                let mut root = self.inode(Ino::ROOT)?;
                root.perm = 0o555;
                Ok(root)
            }
            Route::Snap(id, i) => {
                let mut rec = self.snap_db(id)?.inode(i)?;
                rec.parent = if i == Ino::ROOT {
                    SNAPSHOTS_DIR.0
                } else {
                    outer(id, Ino(rec.parent)).0
                };
                Ok(rec)
            }
        }
    }

    pub(super) fn routed_lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        match route(parent) {
            Route::Main(Ino::ROOT) if name == SNAPSHOTS_NAME => self.snapshots_dir_attr(),
            Route::Main(p) => self.lookup(p, name),
            Route::Dir => match name {
                b"." => self.snapshots_dir_attr(),
                b".." => self.attr(Ino::ROOT),
                _ => {
                    let s = self.snap_named(name)?;
                    self.routed_attr(outer(s.id, Ino::ROOT))
                }
            },
            Route::Snap(_, Ino::ROOT) if name == b".." => self.snapshots_dir_attr(),
            Route::Snap(id, p) => Ok(Self::snap_attr(id, self.snap_db(id)?.lookup(p, name)?)),
        }
    }

    pub(super) fn routed_readdir(
        &self,
        ino: Ino,
        offset: u64,
        max: usize,
    ) -> Result<Vec<DirEntry>> {
        match route(ino) {
            Route::Main(i) => self.readdir(i, offset, max),
            Route::Dir => {
                let mut out = Vec::new();
                let dots = [(SNAPSHOTS_DIR, b".".as_slice()), (Ino::ROOT, b"..")];
                for (n, (ino, name)) in dots.into_iter().enumerate() {
                    out.push(DirEntry {
                        ino,
                        offset: n as u64 + 1,
                        kind: FileKind::Dir,
                        name: name.to_vec(),
                    });
                }
                for s in self.snap_list()?.list {
                    out.push(DirEntry {
                        ino: outer(s.id, Ino::ROOT),
                        offset: s.id as u64 + 2,
                        kind: FileKind::Dir,
                        name: s.name,
                    });
                }
                out.retain(|e| e.offset > offset);
                out.truncate(max);
                Ok(out)
            }
            Route::Snap(id, i) => {
                let mut out = self.snap_db(id)?.readdir(i, offset, max)?;
                for e in &mut out {
                    e.ino = if i == Ino::ROOT && e.name == b".." {
                        SNAPSHOTS_DIR
                    } else {
                        outer(id, e.ino)
                    };
                }
                Ok(out)
            }
        }
    }

    /// The snapshot database and local inode of `ino`, or `None` for the
    /// main namespace (`/.snapshots` itself has no chunks or xattrs).
    pub(super) fn snap_of(&self, ino: Ino) -> Result<Option<(Arc<MetaStore>, Ino)>> {
        match route(ino) {
            Route::Main(_) => Ok(None),
            Route::Dir => Err(Error::IsDir),
            Route::Snap(id, i) => Ok(Some((self.snap_db(id)?, i))),
        }
    }
}

/// Refuses a change that touches a snapshot, and names in the root that
/// `/.snapshots` takes.
pub(super) fn writable(inos: &[Ino]) -> Result<()> {
    if inos.iter().any(|i| is_snapshot(*i)) {
        return Err(Error::ReadOnly);
    }
    Ok(())
}

pub(super) fn not_reserved(parent: Ino, name: &[u8], err: Error) -> Result<()> {
    if parent == Ino::ROOT && name == SNAPSHOTS_NAME {
        return Err(err);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Namespace;

    use super::super::test_node as node;

    #[test]
    fn a_snapshot_reads_as_it_was_and_refuses_every_change() {
        let dir = tempfile::tempdir().unwrap();
        for m in super::test_stores(dir.path()) {
            reads_as_it_was(&m);
        }
    }

    fn reads_as_it_was(m: &MetaStore) {
        let ns: &dyn Namespace = m;
        let d = ns
            .create_node(Ino::ROOT, b"d", node(FileKind::Dir))
            .unwrap();
        let f = ns.create_node(d.ino, b"f", node(FileKind::File)).unwrap();
        m.snapshot_create(b"s1").unwrap();
        assert!(matches!(m.snapshot_create(b"s1"), Err(Error::Exists)));
        ns.unlink(d.ino, b"f", &|_| false).unwrap();
        ns.create_node(Ino::ROOT, b"later", node(FileKind::File))
            .unwrap();

        let snaps = ns.lookup(Ino::ROOT, SNAPSHOTS_NAME).unwrap();
        assert_eq!(snaps.ino, SNAPSHOTS_DIR);
        let s1 = ns.lookup(SNAPSHOTS_DIR, b"s1").unwrap();
        assert!(is_snapshot(s1.ino));
        let sd = ns.lookup(s1.ino, b"d").unwrap();
        let sf = ns.lookup(sd.ino, b"f").unwrap();
        assert_eq!(route(sf.ino), Route::Snap(1, f.ino));
        assert!(matches!(ns.lookup(s1.ino, b"later"), Err(Error::NotFound)));
        // `..` leads back out: snapshot root → /.snapshots → root.
        assert_eq!(ns.lookup(s1.ino, b"..").unwrap().ino, SNAPSHOTS_DIR);
        assert_eq!(ns.lookup(SNAPSHOTS_DIR, b"..").unwrap().ino, Ino::ROOT);
        assert_eq!(ns.inode(sd.ino).unwrap().parent, s1.ino.0);
        let names: Vec<Vec<u8>> = ns
            .readdir(SNAPSHOTS_DIR, 0, 100)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, [b".".to_vec(), b"..".to_vec(), b"s1".to_vec()]);
        let dots = ns.readdir(s1.ino, 0, 2).unwrap();
        assert_eq!((dots[0].ino, dots[1].ino), (s1.ino, SNAPSHOTS_DIR));
        // The root does not list it.
        assert!(
            !ns.readdir(Ino::ROOT, 0, 100)
                .unwrap()
                .iter()
                .any(|e| e.name == SNAPSHOTS_NAME)
        );

        let ro = |r: Result<()>| assert!(matches!(r, Err(Error::ReadOnly)), "{r:?}");
        ro(ns.create_node(sd.ino, b"x", node(FileKind::File)).map(drop));
        ro(ns.unlink(sd.ino, b"f", &|_| false));
        ro(ns.rmdir(s1.ino, b"d"));
        ro(ns.setattr(sf.ino, &SetAttr::default()).map(drop));
        ro(ns.setxattr(sf.ino, b"user.x", b"1", false, false));
        ro(ns.link(sf.ino, Ino::ROOT, b"l").map(drop));
        ro(ns.rename(
            sd.ino,
            b"f",
            Ino::ROOT,
            b"g",
            RenameFlags::default(),
            &|_| false,
        ));
        ro(ns.rmdir(Ino::ROOT, SNAPSHOTS_NAME));
        assert!(matches!(
            ns.create_node(Ino::ROOT, SNAPSHOTS_NAME, node(FileKind::Dir)),
            Err(Error::Exists)
        ));

        m.snapshot_delete(b"s1").unwrap();
        assert!(matches!(
            ns.lookup(SNAPSHOTS_DIR, b"s1"),
            Err(Error::NotFound)
        ));
        assert!(matches!(ns.attr(s1.ino), Err(Error::NotFound)));
        // Ids are not reused.
        assert_eq!(m.snapshot_create(b"s2").unwrap().id, 2);
    }
}
