//! Volume paths (`/a/b`) resolved against the namespace.

use crate::types::{Attr, Ino};
use crate::volume::Volume;
use crate::{Error, Result};

/// The components of an absolute volume path, with `.` and `..` folded.
pub fn components(path: &str) -> Result<Vec<&[u8]>> {
    if !path.starts_with('/') {
        return Err(Error::Invalid("volume paths start with /"));
    }
    let mut out: Vec<&[u8]> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c if c.len() > crate::types::NAME_MAX => return Err(Error::NameTooLong),
            c => out.push(c.as_bytes()),
        }
    }
    Ok(out)
}

pub fn resolve(vol: &dyn Volume, path: &str) -> Result<Attr> {
    let mut attr = vol.getattr(Ino::ROOT)?;
    for c in components(path)? {
        attr = vol.lookup(attr.ino, c)?;
    }
    Ok(attr)
}

/// The directory that holds `path`'s last component, and that component.
pub fn resolve_parent(vol: &dyn Volume, path: &str) -> Result<(Ino, Vec<u8>)> {
    let mut comps = components(path)?;
    let name = comps
        .pop()
        .ok_or(Error::Invalid("the root has no parent"))?
        .to_vec();
    let mut ino = Ino::ROOT;
    for c in comps {
        ino = vol.lookup(ino, c)?.ino;
    }
    Ok((ino, name))
}

pub fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

pub fn base_name(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}
