//! Locks as the kernel asks for them (`setlk`): taken or dropped at once,
//! or, for a waiting lock (`F_SETLKW`, `flock` without `LOCK_NB`), waited
//! for. Each wait runs on a thread of its own, not on the I/O pool: a pool
//! full of waiters would leave no thread to answer the unlock that ends
//! their wait. A waiter asks the lock table in short slices and between them
//! checks whether its process was sent a signal, so `kill` (even `kill -9`)
//! ends a wait as it does on a local filesystem: the kernel's own way to say
//! so (`FUSE_INTERRUPT`) is answered ENOSYS by fuser, after which the kernel
//! waits for our answer uninterruptibly.

use super::DatameshFs;
use crate::Error;
use crate::data::Engine;
use crate::meta::locks::RangeLock;
use crate::types::Ino;
use crate::util::lock;
use fuser::{INodeNo, ReplyEmpty};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// How many locks may wait at once on this mount; one more is refused
/// (ENOLCK). Each is a blocked system call of a process here.
const MAX_WAITS: usize = 4096;

/// How long one ask of the home's lock table waits, at the home (a local
/// call: a free lock is handed over at once; this bounds how soon a signal
/// is seen) and on a member (one call to the home, held there).
const HOME_SLICE: Duration = Duration::from_millis(50);
const MEMBER_SLICE: Duration = crate::member::wire::LOCK_HOLD;

/// The waits of one mount, and whether it is ending.
#[derive(Default)]
pub(super) struct LockWaits {
    stopping: AtomicBool,
    count: AtomicUsize,
}

/// A place among the waits, given back when the wait ends.
pub(super) struct Slot(Arc<LockWaits>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LockWaits {
    /// A place for one more wait; `Error::TooManyLocks` past [`MAX_WAITS`].
    pub fn reserve(self: &Arc<Self>) -> crate::Result<Slot> {
        if self.count.fetch_add(1, Ordering::Relaxed) >= MAX_WAITS {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::TooManyLocks);
        }
        Ok(Slot(self.clone()))
    }

    /// Ends every wait (answered EINTR within a slice): the mount is ending.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// How many locks wait now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// A lock the kernel asks for: `want` for its lock owner `owner` on `ino`,
/// waiting for it (`sleep`) or not, asked by the thread `caller`.
pub(super) struct Ask {
    pub owner: u64,
    pub ino: Ino,
    pub want: RangeLock,
    pub sleep: bool,
    pub caller: u32,
}

/// Takes or drops the lock `ask` names and answers the kernel; a lock that
/// must be waited for is waited for on a thread of its own.
pub(super) fn set_lock(
    engine: &Arc<Engine>,
    waits: &Arc<LockWaits>,
    taken: LockTaken,
    ask: Ask,
    reply: ReplyEmpty,
) {
    let taking = ask.want.typ != libc::F_UNLCK;
    // What this owner wrote under the lock is committed before another host
    // can take it.
    if !taking && let Err(e) = engine.flush(ask.ino) {
        return reply.error(super::err(&e));
    }
    match engine.setlk(ask.owner, ask.ino, ask.want.clone()) {
        Err(Error::WouldBlock) if ask.sleep => {
            let slot = match waits.reserve() {
                Ok(s) => s,
                Err(e) => return reply.error(super::err(&e)),
            };
            let engine = engine.clone();
            let waiter = std::thread::Builder::new()
                .name("datamesh-lockwait".into())
                .spawn(move || {
                    let res = wait_for_lock(&engine, &slot, &ask);
                    if res.is_ok() {
                        taken.read_afresh(&engine, ask.ino);
                    }
                    DatameshFs::reply_empty(res, reply);
                });
            if let Err(e) = waiter {
                tracing::error!("starting a thread to wait for a lock: {e}");
            }
        }
        res => {
            if taking && res.is_ok() {
                taken.read_afresh(engine, ask.ino);
            }
            DatameshFs::reply_empty(res, reply)
        }
    }
}

/// What a mount does once it takes a lock: under a new lock the file is read
/// afresh, so what another host wrote before it let go is what this host
/// sees.
pub(super) struct LockTaken {
    pub notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    pub marks: Arc<Mutex<std::collections::HashMap<Ino, u64>>>,
}

impl LockTaken {
    /// At the home, the change journal says whether any other host (or this
    /// host's CLI) changed the file since this mount's last lock on it: its
    /// commits land there before its unlock does. A file only this mount
    /// changed keeps its cache (sqlite takes locks for every transaction).
    fn read_afresh(&self, engine: &Engine, i: Ino) {
        let since = lock(&self.marks).get(&i).copied();
        let mark = engine.change_mark();
        if engine.changed_elsewhere(i, since) {
            engine.forget_cached(i);
            if let Some(n) = self.notifier.get() {
                let _ = n.inval_inode(INodeNo(i.0), 0, 0);
            }
        }
        if let Some(m) = mark {
            lock(&self.marks).insert(i, m);
        }
    }
}

/// Waits for the lock `ask` names until taken (`Ok`), refused (a deadlock),
/// or interrupted.
fn wait_for_lock(engine: &Engine, slot: &Slot, ask: &Ask) -> crate::Result<()> {
    let slice = if engine.is_home() {
        HOME_SLICE
    } else {
        MEMBER_SLICE
    };
    loop {
        if slot.0.stopping.load(Ordering::Relaxed) || signalled(ask.caller) {
            return Err(Error::Interrupted);
        }
        if engine.setlk_wait(ask.owner, ask.ino, ask.want.clone(), slice)? {
            return Ok(());
        }
    }
}

/// Signals that stop a process instead of interrupting its system call.
const STOPS: u64 =
    bit(libc::SIGSTOP) | bit(libc::SIGTSTP) | bit(libc::SIGTTIN) | bit(libc::SIGTTOU);

const fn bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

/// Whether the thread `pid` (as the kernel gave it with the request) has a
/// signal pending that it neither blocks nor ignores, or is gone. A `pid` of
/// 0 (a caller in a PID namespace this mount cannot see) is never
/// interrupted.
pub(super) fn signalled(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => interrupts(&status),
        Err(_) => true,
    }
}

/// Whether a `/proc/PID/status` text shows a signal that interrupts.
fn interrupts(status: &str) -> bool {
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    pending & !(mask("SigBlk:") | mask("SigIgn:") | STOPS) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(pnd: u64, shd: u64, blk: u64, ign: u64) -> String {
        format!(
            "Name:\tx\nSigQ:\t0/1\nSigPnd:\t{pnd:016x}\nShdPnd:\t{shd:016x}\n\
             SigBlk:\t{blk:016x}\nSigIgn:\t{ign:016x}\nSigCgt:\t0000000000000000\n"
        )
    }

    #[test]
    fn a_pending_signal_interrupts_unless_blocked_ignored_or_a_stop() {
        assert!(!interrupts(&status(0, 0, 0, 0)));
        assert!(interrupts(&status(bit(libc::SIGKILL), 0, 0, 0)));
        assert!(interrupts(&status(0, bit(libc::SIGALRM), 0, 0)));
        assert!(!interrupts(&status(
            0,
            bit(libc::SIGALRM),
            bit(libc::SIGALRM),
            0
        )));
        assert!(!interrupts(&status(
            bit(libc::SIGUSR1),
            0,
            0,
            bit(libc::SIGUSR1)
        )));
        assert!(!interrupts(&status(0, bit(libc::SIGTSTP), 0, 0)));
    }

    #[test]
    fn this_thread_has_nothing_pending_and_a_gone_one_is_interrupted() {
        assert!(!signalled(std::process::id()));
        assert!(!signalled(0));
        assert!(signalled(u32::MAX - 1));
    }
}
