//! Access ACLs kept in step with the mode (stored as the xattr
//! `system.posix_acl_access`, as the kernel sees them).

use super::{DatameshFs, acl};
use crate::Error;
use crate::types::{Ino, SetAttr};

impl DatameshFs {
    /// Keeps a stored access ACL in step with a chmod.
    pub(super) fn chmod_acl(&self, i: Ino, perm: u16) -> crate::Result<()> {
        let value = match self.engine.getxattr(i, acl::ACCESS) {
            Ok(v) => v,
            Err(Error::NoXattr) => return Ok(()),
            Err(e) => return Err(e),
        };
        match acl::Acl::parse(&value) {
            Some(a) => {
                let new = a.chmod(perm).to_bytes();
                self.engine.setxattr(i, acl::ACCESS, &new, false, true)
            }
            None => Ok(()),
        }
    }

    /// Sets an access ACL: the mode follows it, and an ACL that says no more than
    /// the mode is not stored (as `posix_acl_update_mode` does).
    pub(super) fn set_access_acl(
        &self,
        i: Ino,
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> crate::Result<()> {
        let a = acl::Acl::parse(value).ok_or(Error::Invalid("malformed POSIX ACL"))?;
        let old = self.engine.getattr(i)?;
        let exists = match self.engine.getxattr(i, acl::ACCESS) {
            Ok(_) => true,
            Err(Error::NoXattr) => false,
            Err(e) => return Err(e),
        };
        if create && exists {
            return Err(Error::Exists);
        }
        if replace && !exists {
            return Err(Error::NoXattr);
        }
        let perm = a.mode(old.perm);
        if perm != old.perm {
            let set = SetAttr {
                perm: Some(perm),
                ..Default::default()
            };
            self.engine.setattr(i, &set)?;
        }
        if a.is_minimal() {
            if exists {
                self.engine.removexattr(i, acl::ACCESS)?;
            }
            Ok(())
        } else {
            self.engine.setxattr(i, acl::ACCESS, value, false, false)
        }
    }
}
