//! What a member does itself in a directory delegated to it: makes,
//! removes and renames entries, sets the directory's attributes, and lists
//! it (docs/DESIGN.md, "Delegated directories"). Each change is handed to
//! the queue under `Held`'s lock, the lock a recall's break takes too.

use super::{Dir, Held};
use crate::member::defer::file_rec;
use crate::member::wire::NsCall;
use crate::meta::promises::MAX_HELD;
use crate::meta::schema::name_cookie;
use crate::meta::{NewNode, apply_setattr, to_attr};
use crate::types::{Attr, DirEntry, FileKind, Ino, RenameFlags, SetAttr, SetTime, Timestamp};
use crate::util::lock;
use serde_bytes::ByteBuf;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

impl Held {
    /// Makes the regular file (or symlink) `name` in `parent` here, if `parent` is
    /// delegated to this mount and trusted, `name` is not there and a
    /// number is left: its attributes as the home will make them, and the
    /// `Made` call, handed to `hold` (which queues it) under the lock that
    /// a watch's break takes too, so that a break either comes first (and
    /// nothing is made here) or finds the call queued. `None`: make it at
    /// home. With the file's attributes, the directory's after, if known.
    pub fn make_here(
        &self,
        parent: Ino,
        name: &[u8],
        node: &NewNode,
        hold: impl FnOnce(&Attr, NsCall) -> bool,
    ) -> Option<(Attr, Option<Attr>)> {
        // Symlinks and directories only when the home said it makes them.
        let size = match (node.kind, &node.target) {
            (FileKind::File, None) => 0,
            (FileKind::Symlink, Some(t)) if self.links.load(Ordering::Relaxed) => t.len() as u64,
            (FileKind::Dir, None) if self.dirs.load(Ordering::Relaxed) => 0,
            _ => return None,
        };
        let is_dir = node.kind == FileKind::Dir;
        let mut g = lock(&self.inner);
        if !Self::trusted(&g) || (is_dir && g.dirs.len() >= MAX_HELD) {
            return None;
        }
        let d = g.dirs.get(&parent)?;
        if !d.delegated || d.names.contains_key(name) {
            return None;
        }
        // A setgid directory passes on its group, and to directories its
        // setgid bit (as the home's create).
        let setgid = d.perm & libc::S_ISGID as u16 != 0;
        let gid = if setgid { d.gid } else { node.gid };
        let perm = (node.perm
            | if setgid && is_dir {
                libc::S_ISGID as u16
            } else {
                0
            })
            & 0o7777;
        let (next, end) = g.pool.first_mut()?;
        let ino = Ino(*next);
        *next += 1;
        if next == end {
            g.pool.remove(0);
        }
        let time = Timestamp::now();
        let made = Attr {
            ino,
            kind: node.kind,
            perm,
            uid: node.uid,
            gid,
            size,
            blocks: 0,
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            nlink: if is_dir { 2 } else { 1 },
            rdev: node.rdev,
        };
        let call = NsCall::Made {
            parent,
            name: ByteBuf::from(name.to_vec()),
            node: node.clone(),
            ino,
            time,
        };
        if !hold(&made, call) {
            return None;
        }
        let d = g.dirs.get_mut(&parent).expect("checked above");
        d.names.insert(name.to_vec(), Some(ino));
        if let Some(a) = &mut d.attr {
            a.mtime = time;
            a.ctime = time;
            if is_dir {
                a.nlink += 1;
            }
        }
        let dir = d.attr.clone();
        if is_dir {
            // Only this mount knows it: granted and delegated, empty.
            g.dirs.insert(
                ino,
                Dir {
                    names: HashMap::new(),
                    granted: true,
                    delegated: true,
                    perm,
                    gid,
                    attr: Some(made.clone()),
                    parent: Some(parent),
                },
            );
        }
        Some((made, dir))
    }

    /// Removes `name` from `parent` here (an rmdir when `dir`), if
    /// `parent` is delegated to this mount and trusted and this mount made
    /// the entry, and, for an rmdir, the directory is held, delegated and
    /// empty: the `Unmade` call handed to `hold` under the lock a break
    /// takes too (as [`Held::make_here`]). The victim's inode and the
    /// directory's attributes after, if known; `None`: remove it at home.
    pub fn unmake_here(
        &self,
        parent: Ino,
        name: &[u8],
        dir: bool,
        hold: impl FnOnce(Ino, NsCall) -> bool,
    ) -> Option<(Ino, Option<Attr>)> {
        let mut g = lock(&self.inner);
        if !Self::trusted(&g) {
            return None;
        }
        let d = g.dirs.get(&parent).filter(|d| d.delegated)?;
        let ino = (*d.names.get(name)?)?;
        if dir {
            // Granted, only this mount changed it since: its names are all.
            let v = g.dirs.get(&ino).filter(|v| v.granted && v.delegated)?;
            if !v.names.is_empty() {
                return None;
            }
        }
        let call = NsCall::Unmade {
            parent,
            name: ByteBuf::from(name.to_vec()),
            ino,
            dir,
        };
        if !hold(ino, call) {
            return None;
        }
        if dir {
            g.dirs.remove(&ino);
        }
        let d = g.dirs.get_mut(&parent).expect("checked above");
        d.names.remove(name);
        let time = Timestamp::now();
        if let Some(a) = &mut d.attr {
            a.mtime = time;
            a.ctime = time;
            if dir {
                a.nlink = a.nlink.saturating_sub(1);
            }
        }
        Some((ino, d.attr.clone()))
    }

    /// Renames `name` to `new_name` in `dir` here, if `dir` is delegated to
    /// this mount and trusted, `name` is an entry this mount made, and
    /// `new_name` is absent or too (`movable` says which inodes may be
    /// moved or replaced here: young files and symlinks made in `dir`):
    /// the `Rename`, in a `Held` naming `dir`, handed to `hold` under the
    /// lock a break takes too (as [`Held::make_here`]). The directory's
    /// times become `time`. The inode moved, the one replaced, and the
    /// directory's attributes after; `None`: rename at home.
    pub fn rename_here(
        &self,
        dir: Ino,
        (name, new_name): (&[u8], &[u8]),
        noreplace: bool,
        time: Timestamp,
        movable: impl Fn(Ino) -> bool,
        hold: impl FnOnce(Ino, NsCall) -> bool,
    ) -> Option<(Ino, Option<Ino>, Option<Attr>)> {
        let mut g = lock(&self.inner);
        if !Self::trusted(&g) {
            return None;
        }
        let d = g.dirs.get(&dir).filter(|d| d.delegated)?;
        let ino = (*d.names.get(name)?)?;
        let victim = match d.names.get(new_name) {
            None => None,
            Some(Some(v)) if !noreplace && *v != ino => Some(*v),
            // Unknown, kept by RENAME_NOREPLACE, or the same entry.
            Some(_) => return None,
        };
        if !movable(ino) || victim.is_some_and(|v| !movable(v)) {
            return None;
        }
        let call = NsCall::Held {
            dir,
            call: Box::new(NsCall::Rename {
                parent: dir,
                name: ByteBuf::from(name.to_vec()),
                new_parent: dir,
                new_name: ByteBuf::from(new_name.to_vec()),
                flags: RenameFlags {
                    noreplace,
                    exchange: false,
                },
            }),
        };
        if !hold(ino, call) {
            return None;
        }
        let d = g.dirs.get_mut(&dir).expect("checked above");
        d.names.remove(name);
        d.names.insert(new_name.to_vec(), Some(ino));
        if let Some(a) = &mut d.attr {
            a.mtime = time;
            a.ctime = time;
        }
        Some((ino, victim, d.attr.clone()))
    }

    /// Sets directory `dir`'s attributes here (no size), if it is
    /// delegated to this mount, trusted, and its attributes are known: the
    /// `Setattr`, in a `Held` naming `dir`, handed to `hold` under the
    /// lock a break takes too (as [`Held::make_here`]). Times set to now
    /// are sent as this mount's now. Its attributes after; `None`: set
    /// them at home.
    pub fn set_here(
        &self,
        dir: Ino,
        set: &SetAttr,
        hold: impl FnOnce(Ino, NsCall) -> bool,
    ) -> Option<Attr> {
        if set.size.is_some() {
            return None;
        }
        let mut g = lock(&self.inner);
        if !Self::trusted(&g) {
            return None;
        }
        let d = g.dirs.get(&dir).filter(|d| d.delegated)?;
        let mut rec = file_rec(d.attr.as_ref()?);
        let now = Timestamp::now();
        let at = |t: Option<SetTime>| {
            t.map(|t| match t {
                SetTime::Now => SetTime::At(now),
                at => at,
            })
        };
        let set = SetAttr {
            atime: at(set.atime),
            mtime: at(set.mtime),
            ..set.clone()
        };
        apply_setattr(&mut rec, &set, now);
        let call = NsCall::Held {
            dir,
            call: Box::new(NsCall::Setattr { ino: dir, set }),
        };
        if !hold(dir, call) {
            return None;
        }
        let a = to_attr(dir, &rec);
        let d = g.dirs.get_mut(&dir).expect("checked above");
        d.perm = a.perm;
        d.gid = a.gid;
        d.attr = Some(a.clone());
        Some(a)
    }

    /// A page of `dir`'s listing after cookie `offset`, at most `max`
    /// entries, as the home would give it (the same cookies, in the same
    /// order: a listing may go on at home), when `dir` is delegated here,
    /// trusted, and every name in it is one this mount made and keeps the
    /// attributes of (`attr_of`, asked with no lock held; a directory held
    /// here answers from its own). `None`: ask the home.
    pub fn listing(
        &self,
        dir: Ino,
        offset: u64,
        max: usize,
        attr_of: impl Fn(Ino) -> Option<Attr>,
    ) -> Option<Vec<(DirEntry, Attr)>> {
        let (own, dotdot, mut names) = {
            let g = lock(&self.inner);
            if !Self::trusted(&g) {
                return None;
            }
            let d = g.dirs.get(&dir).filter(|d| d.granted && d.delegated)?;
            let own = d.attr.clone()?;
            let names = d
                .names
                .iter()
                .map(|(name, ino)| {
                    let ino = (*ino)?;
                    let held = g.dirs.get(&ino).and_then(|c| c.attr.clone());
                    Some((name_cookie(name), name.clone(), ino, held))
                })
                .collect::<Option<Vec<_>>>()?;
            (own, d.parent?, names)
        };
        names.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut out = Vec::new();
        let entry = |ino, offset, name: &[u8], a: &Attr| DirEntry {
            ino,
            offset,
            kind: a.kind,
            name: name.to_vec(),
        };
        if offset < 1 {
            out.push((entry(dir, 1, b".", &own), own.clone()));
        }
        if offset < 2 {
            // The kernel takes no attributes from `..`: its own stand in.
            out.push((entry(dotdot, 2, b"..", &own), own.clone()));
        }
        for (cookie, name, ino, held) in names {
            if out.len() >= max {
                break;
            }
            if cookie <= offset.max(2) {
                continue;
            }
            let a = held.or_else(|| attr_of(ino))?;
            out.push((entry(ino, cookie, &name, &a), a));
        }
        out.truncate(max);
        Some(out)
    }
}
