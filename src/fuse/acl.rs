//! POSIX access ACLs as the kernel hands them to a FUSE filesystem: the
//! `system.posix_acl_access` xattr in Linux's binary form. With `FUSE_POSIX_ACL` the
//! kernel enforces ACLs but leaves keeping the mode and the ACL in step to us, as a
//! local filesystem's `set_acl` and `chmod` do.

/// The xattr that holds an inode's access ACL.
pub const ACCESS: &[u8] = b"system.posix_acl_access";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// A parsed access ACL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<Entry>,
}

impl Acl {
    /// Parses the xattr value; `None` if it is not a well-formed access ACL.
    pub fn parse(value: &[u8]) -> Option<Acl> {
        let (head, rest) = value.split_first_chunk::<4>()?;
        if u32::from_le_bytes(*head) != VERSION || rest.len() % 8 != 0 {
            return None;
        }
        let entries: Vec<Entry> = rest
            .chunks_exact(8)
            .map(|c| Entry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        let count = |tag| entries.iter().filter(|e| e.tag == tag).count();
        let named = count(USER) + count(GROUP);
        let valid = entries
            .iter()
            .all(|e| matches!(e.tag, USER_OBJ | USER | GROUP_OBJ | GROUP | MASK | OTHER))
            && entries.iter().all(|e| e.perm & !7 == 0)
            && count(USER_OBJ) == 1
            && count(GROUP_OBJ) == 1
            && count(OTHER) == 1
            && count(MASK) <= 1
            && (named == 0 || count(MASK) == 1);
        valid.then_some(Acl { entries })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = VERSION.to_le_bytes().to_vec();
        for e in &self.entries {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    fn perm_of(&self, tag: u16) -> Option<u16> {
        self.entries.iter().find(|e| e.tag == tag).map(|e| e.perm)
    }

    /// True when the ACL says no more than the permission bits do.
    pub fn is_minimal(&self) -> bool {
        self.entries.len() == 3
    }

    /// The permission bits this ACL implies, keeping `old`'s setuid/setgid/sticky.
    /// With a mask entry the group bits are the mask, as `posix_acl_equiv_mode` has it.
    pub fn mode(&self, old: u16) -> u16 {
        let owner = self.perm_of(USER_OBJ).unwrap_or(0);
        let group = self
            .perm_of(MASK)
            .or_else(|| self.perm_of(GROUP_OBJ))
            .unwrap_or(0);
        let other = self.perm_of(OTHER).unwrap_or(0);
        (old & 0o7000) | (owner << 6) | (group << 3) | other
    }

    /// The ACL after a chmod to `perm`, as `posix_acl_chmod` makes it.
    pub fn chmod(&self, perm: u16) -> Acl {
        let has_mask = self.perm_of(MASK).is_some();
        let entries = self
            .entries
            .iter()
            .map(|e| {
                let perm = match e.tag {
                    USER_OBJ => (perm >> 6) & 7,
                    MASK => (perm >> 3) & 7,
                    GROUP_OBJ if !has_mask => (perm >> 3) & 7,
                    OTHER => perm & 7,
                    _ => e.perm,
                };
                Entry { perm, ..*e }
            })
            .collect();
        Acl { entries }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        Acl {
            entries: entries
                .iter()
                .map(|&(tag, perm, id)| Entry { tag, perm, id })
                .collect(),
        }
        .to_bytes()
    }

    #[test]
    fn minimal_acl_is_the_mode() {
        let v = acl(&[(USER_OBJ, 6, 0), (GROUP_OBJ, 4, 0), (OTHER, 4, 0)]);
        let a = Acl::parse(&v).unwrap();
        assert!(a.is_minimal());
        assert_eq!(a.mode(0o4000), 0o4644);
        assert_eq!(a.to_bytes(), v);
    }

    #[test]
    fn mask_sets_group_bits_and_chmod_updates_mask() {
        let v = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 5, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 7, 0),
            (OTHER, 0, 0),
        ]);
        let a = Acl::parse(&v).unwrap();
        assert!(!a.is_minimal());
        assert_eq!(a.mode(0), 0o770);
        let b = a.chmod(0o751);
        assert_eq!(b.mode(0), 0o751);
        assert_eq!(b.perm_of(GROUP_OBJ), Some(5));
        assert_eq!(b.perm_of(USER), Some(5));
    }

    #[test]
    fn malformed_acls_are_rejected() {
        assert!(Acl::parse(b"").is_none());
        assert!(Acl::parse(&[1, 0, 0, 0]).is_none());
        assert!(Acl::parse(&acl(&[(USER_OBJ, 7, 0), (OTHER, 0, 0)])).is_none());
        let named_without_mask = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 5, 1000),
            (GROUP_OBJ, 5, 0),
            (OTHER, 0, 0),
        ]);
        assert!(Acl::parse(&named_without_mask).is_none());
    }
}
