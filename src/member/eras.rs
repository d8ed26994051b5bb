//! Which answers of the home a member mount may keep. An answer asked
//! while this mount changed the same inode may be from before the change
//! (a sealing worker's commit racing a read's `Inode` call): kept, it
//! would outlive the change's forgetting, and a write after would take
//! the file's old size for its end and zero what was stored past it.
//! So each inode has an era, bumped before a change is sent and again
//! when its answer is in, and at every forget; an answer is kept only if
//! its inode's era is the one read before it was asked (docs/DESIGN.md,
//! "What a member mount keeps").

use crate::types::Ino;
use std::sync::atomic::{AtomicU64, Ordering};

/// Inodes share eras by number: a bump of another inode in the same
/// stripe costs a kept answer, never a stale one.
const STRIPES: usize = 64;

pub struct Eras([AtomicU64; STRIPES]);

impl Default for Eras {
    fn default() -> Self {
        Eras(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Eras {
    fn stripe(&self, ino: Ino) -> &AtomicU64 {
        &self.0[(ino.0 % STRIPES as u64) as usize]
    }

    /// `ino`'s era now: read before asking the home.
    pub fn of(&self, ino: Ino) -> u64 {
        self.stripe(ino).load(Ordering::SeqCst)
    }

    /// Starts a new era for `ino` (`None`: for every inode), before what
    /// is kept of it is dropped; the era after.
    pub fn bump(&self, ino: Option<Ino>) -> u64 {
        match ino {
            Some(ino) => self.stripe(ino).fetch_add(1, Ordering::SeqCst) + 1,
            None => {
                for s in &self.0 {
                    s.fetch_add(1, Ordering::SeqCst);
                }
                0
            }
        }
    }

    /// Whether an answer about `ino` asked in era `then` may be kept: no
    /// change or forget of it since. Checked under the lock of the cache
    /// it goes in, which every forget takes after its bump.
    pub fn still(&self, ino: Ino, then: u64) -> bool {
        self.of(ino) == then
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_asked_before_a_change_or_forget_is_not_kept() {
        let e = Eras::default();
        let (a, b) = (Ino(5), Ino(6));
        let then = e.of(a);
        assert!(e.still(a, then));
        e.bump(Some(b));
        assert!(e.still(a, then), "another stripe's change");
        e.bump(Some(a));
        assert!(!e.still(a, then));
        let then = e.of(a);
        e.bump(None);
        assert!(!e.still(a, then), "a forget of everything");
        let then = e.of(Ino(5 + STRIPES as u64));
        e.bump(Some(a));
        assert!(!e.still(Ino(5 + STRIPES as u64), then), "a shared stripe");
    }
}
