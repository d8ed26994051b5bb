//! A patch: the ranges written into one chunk over its committed contents,
//! which were not read. Sealed as slices of a layered chunk (see DESIGN,
//! "Slices").

use std::collections::BTreeMap;

/// Written ranges of one chunk: offset → bytes, disjoint and not touching
/// (a write that meets or overlaps ranges merges them into one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Patch {
    ranges: BTreeMap<usize, Vec<u8>>,
}

impl Patch {
    /// Lays `data` over the patch at `at`.
    pub fn write(&mut self, at: usize, data: &[u8]) {
        let end = at + data.len();
        // The ranges that overlap or touch [at, end): the one starting at or
        // before `at` (if it reaches `at`), and every one starting in (at, end].
        let first = self
            .ranges
            .range(..=at)
            .next_back()
            .filter(|(s, b)| *s + b.len() >= at)
            .map(|(s, _)| *s)
            .unwrap_or(at);
        let meeting: Vec<usize> = self.ranges.range(first..=end).map(|(s, _)| *s).collect();
        if meeting.is_empty() {
            self.ranges.insert(at, data.to_vec());
            return;
        }
        let last_end = meeting
            .iter()
            .map(|s| s + self.ranges[s].len())
            .max()
            .unwrap_or(end)
            .max(end);
        let mut merged = vec![0u8; last_end - first];
        for s in meeting {
            let b = self.ranges.remove(&s).expect("listed above");
            merged[s - first..s - first + b.len()].copy_from_slice(&b);
        }
        merged[at - first..end - first].copy_from_slice(data);
        self.ranges.insert(first, merged);
    }

    /// Bytes held (what the dirty budget counts).
    pub fn bytes(&self) -> usize {
        self.ranges.values().map(Vec::capacity).sum()
    }

    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// The end of the last range.
    pub fn end(&self) -> usize {
        self.ranges
            .iter()
            .next_back()
            .map_or(0, |(s, b)| s + b.len())
    }

    pub fn ranges(&self) -> impl Iterator<Item = (usize, &[u8])> {
        self.ranges.iter().map(|(s, b)| (*s, b.as_slice()))
    }

    /// Whether the patch alone gives every byte of `[at, at + len)`.
    pub fn covers(&self, at: usize, len: usize) -> bool {
        self.ranges
            .range(..=at)
            .next_back()
            .is_some_and(|(s, b)| s + b.len() >= at + len)
    }

    /// Lays the patch over `dst`, which holds the chunk's bytes from `within`.
    pub fn overlay(&self, dst: &mut [u8], within: usize) {
        for (s, b) in self.ranges_meeting(within, dst.len()) {
            lay_over(dst, within, s, b);
        }
    }

    /// The parts of the patch within `[at, at + len)`, as (offset, bytes):
    /// what a reader copies out before letting the file's lock go.
    pub fn cut(&self, at: usize, len: usize) -> Patch {
        let mut out = Patch::default();
        for (s, b) in self.ranges_meeting(at, len) {
            let from = s.max(at);
            let to = (s + b.len()).min(at + len);
            out.ranges.insert(from, b[from - s..to - s].to_vec());
        }
        out
    }

    /// Lays the patch over a whole chunk buffer, growing it as needed.
    pub fn apply(&self, buf: &mut Vec<u8>) {
        let end = self.end();
        if buf.len() < end {
            buf.resize(end, 0);
        }
        self.overlay(buf, 0);
    }

    fn ranges_meeting(&self, at: usize, len: usize) -> impl Iterator<Item = (usize, &Vec<u8>)> {
        let start = self.ranges.range(..=at).next_back().map_or(at, |(s, _)| *s);
        self.ranges
            .range(start..at + len)
            .filter(move |(s, b)| *s + b.len() > at)
            .map(|(s, b)| (*s, b))
    }
}

/// Copies what of `src` (a chunk's bytes from offset `at`) falls within
/// `dst` (the chunk's bytes from offset `within`) over it.
pub fn lay_over(dst: &mut [u8], within: usize, at: usize, src: &[u8]) {
    let from = at.max(within);
    let to = (at + src.len()).min(within + dst.len());
    if from < to {
        dst[from - within..to - within].copy_from_slice(&src[from - at..to - at]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A patch laid over any base reads as the writes done on a flat copy
        /// of that base, and its ranges stay disjoint and apart.
        #[test]
        fn patch_matches_flat_writes(
            writes in proptest::collection::vec((0usize..300, 1usize..60, any::<u8>()), 1..40),
            probe in (0usize..360, 0usize..80),
        ) {
            let base: Vec<u8> = (0..200).map(|i| (i % 251) as u8 + 1).collect();
            let mut flat = base.clone();
            let mut p = Patch::default();
            for (at, len, v) in writes {
                let data = vec![v; len];
                p.write(at, &data);
                if flat.len() < at + len {
                    flat.resize(at + len, 0);
                }
                flat[at..at + len].copy_from_slice(&data);
            }
            let mut got = base.clone();
            p.apply(&mut got);
            prop_assert_eq!(&got, &flat);
            let mut prev_end = None;
            for (s, b) in p.ranges() {
                prop_assert!(!b.is_empty());
                if let Some(e) = prev_end {
                    prop_assert!(s > e, "ranges {} and {} touch", e, s);
                }
                prev_end = Some(s + b.len());
            }
            // A window: overlay and cut agree with the flat copy where the patch is.
            let (at, len) = probe;
            let mut window = vec![0xEEu8; len];
            for (i, w) in window.iter_mut().enumerate() {
                if let Some(b) = base.get(at + i) {
                    *w = *b;
                }
            }
            let mut via_cut = window.clone();
            p.overlay(&mut window, at);
            p.cut(at, len).overlay(&mut via_cut, at);
            prop_assert_eq!(&window, &via_cut);
            for (i, w) in window.iter().enumerate() {
                if at + i < flat.len() && (at + i < base.len() || *w != 0xEE) {
                    prop_assert_eq!(*w, flat[at + i]);
                }
            }
            if p.covers(at, len) {
                prop_assert!(p.cut(at, len).ranges().map(|(_, b)| b.len()).sum::<usize>() == len);
            }
        }
    }
}
