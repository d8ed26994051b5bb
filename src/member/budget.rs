//! What one member may make the home hold at once (docs/DESIGN.md, "What
//! one member can make the home hold"): calls a second, calls in flight,
//! watches held. Past a bound a call is not run and answered `Busy`.

use crate::error::Kind;
use crate::net::PeerId;
use crate::util::lock;
use crate::volume::proto::WireError;
use std::collections::HashMap;
use std::sync::Mutex;

/// Calls a second one member may make (a token bucket of as many).
pub(super) const MEMBER_CALLS_PER_SEC: u32 = 20_000;
/// Calls of one member the home answers at once.
const MAX_MEMBER_CALLS: u32 = 128;
/// `Watch` calls of one member the home holds at once.
const MAX_MEMBER_WATCHES: u32 = 4;

/// What one member may make the home hold at once (docs/DESIGN.md, "What
/// one member can make the home hold"). Its keys are listed members only:
/// a call is counted after the caller was found to be one.
pub(super) struct Budget {
    rate: governor::DefaultKeyedRateLimiter<PeerId>,
    /// Per member: (calls being answered, of them `Watch`es).
    busy: Mutex<HashMap<PeerId, (u32, u32)>>,
}

/// A call counted in its member's budget until dropped.
pub(super) struct InFlight<'a> {
    budget: &'a Budget,
    peer: PeerId,
    watch: bool,
}

impl Budget {
    pub(super) fn new() -> Budget {
        let per_sec = std::num::NonZeroU32::new(MEMBER_CALLS_PER_SEC).expect("not zero");
        Budget {
            rate: governor::RateLimiter::keyed(governor::Quota::per_second(per_sec)),
            busy: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a call of `peer`, or says which bound it is past (the call
    /// is then not run).
    pub(super) fn take(
        &self,
        peer: PeerId,
        watch: bool,
    ) -> std::result::Result<InFlight<'_>, WireError> {
        let busy = |text: String| WireError {
            kind: Kind::Busy,
            text,
        };
        if self.rate.check_key(&peer).is_err() {
            return Err(busy(format!(
                "busy: this device asked more than {MEMBER_CALLS_PER_SEC} calls a second"
            )));
        }
        let mut g = lock(&self.busy);
        let (calls, watches) = g.entry(peer).or_default();
        if *calls >= MAX_MEMBER_CALLS {
            return Err(busy(format!(
                "busy: {MAX_MEMBER_CALLS} calls of this device are being answered"
            )));
        }
        if watch && *watches >= MAX_MEMBER_WATCHES {
            return Err(busy(format!(
                "busy: {MAX_MEMBER_WATCHES} watches of this device are being held"
            )));
        }
        *calls += 1;
        *watches += u32::from(watch);
        Ok(InFlight {
            budget: self,
            peer,
            watch,
        })
    }

    /// Counts `n` calls more of `peer` against its rate (a batch's).
    pub(super) fn charge(&self, peer: PeerId, n: usize) -> std::result::Result<(), WireError> {
        let Some(more) = u32::try_from(n.saturating_sub(1))
            .ok()
            .and_then(std::num::NonZeroU32::new)
        else {
            return Ok(());
        };
        match self.rate.check_key_n(&peer, more) {
            Ok(Ok(())) => Ok(()),
            _ => Err(WireError {
                kind: Kind::Busy,
                text: format!(
                    "busy: this device asked more than {MEMBER_CALLS_PER_SEC} calls a second"
                ),
            }),
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut g = lock(&self.budget.busy);
        if let Some((calls, watches)) = g.get_mut(&self.peer) {
            *calls -= 1;
            *watches -= u32::from(self.watch);
            if *calls == 0 {
                g.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_past_its_budget_is_told_busy_and_its_calls_free_it_as_they_end() {
        let b = Budget::new();
        let (a, other) = (PeerId::random(), PeerId::random());
        let held: Vec<InFlight> = (0..MAX_MEMBER_CALLS)
            .map(|i| b.take(a, i < MAX_MEMBER_WATCHES).unwrap())
            .collect();
        let e = b.take(a, false).err().expect("past the calls in flight");
        assert!(
            e.kind == Kind::Busy && e.text.contains("being answered"),
            "{e:?}"
        );
        // Another member is not held up by this one.
        let o = b.take(other, true).unwrap();
        drop(held);
        drop(o);
        assert!(lock(&b.busy).is_empty(), "ended calls leave nothing behind");
        let watches: Vec<InFlight> = (0..MAX_MEMBER_WATCHES)
            .map(|_| b.take(a, true).unwrap())
            .collect();
        let e = b.take(a, true).err().expect("past the watches held");
        assert!(e.text.contains("watches"), "{e:?}");
        assert!(b.take(a, false).is_ok(), "a watch bound stops watches only");
        drop(watches);
        // The rate: a burst of a second's calls, then busy (the refusal
        // that ended the burst is the one looked at: a token comes back
        // every 50 µs, so asking again may find one).
        let mut n = 0u32;
        let e = loop {
            match b.take(other, false) {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
            assert!(n <= 2 * MEMBER_CALLS_PER_SEC, "no rate bound");
        };
        assert!(n >= MEMBER_CALLS_PER_SEC - 10, "{n}");
        assert!(e.text.contains("a second"), "{e:?}");
    }
}
