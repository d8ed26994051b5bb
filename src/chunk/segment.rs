//! Segmented sealing (chunk format 2): a chunk's plaintext is sealed in
//! 64 KiB segments, each compressed when it pays and AES-GCM-sealed on its
//! own (nonce = segment number), laid end to end before erasure coding. A
//! small read then opens only the segments it covers, and each segment's tag
//! checks the bytes read for it.

use super::{ChunkError, VolumeKey, compress, crypto};

/// Plaintext bytes per segment (the last one may be shorter).
pub const SEGMENT: usize = 64 * 1024;
/// An AES-GCM tag, after each sealed segment.
pub const TAG: usize = 16;

/// Seals `plain` segment by segment: (chunk key, sealed blob, each segment's
/// sealed length). `spare` bytes of capacity are left for erasure padding.
pub(super) fn seal(key: &VolumeKey, plain: &[u8], spare: usize) -> ([u8; 32], Vec<u8>, Vec<u32>) {
    let chunk_key = key.segmented_key(plain);
    let try_lz4 = compress::worth_trying(plain);
    let n = plain.len().div_ceil(SEGMENT);
    let mut blob = Vec::with_capacity(plain.len() + n * TAG + spare);
    let mut lens = Vec::with_capacity(n);
    for (i, seg) in plain.chunks(SEGMENT).enumerate() {
        let from = blob.len();
        match try_lz4.then(|| compress::compress_if_pays(seg)).flatten() {
            Some(c) => blob.extend_from_slice(&c),
            None => blob.extend_from_slice(seg),
        }
        crypto::encrypt_segment(&chunk_key, i as u32, &mut blob, from);
        lens.push((blob.len() - from) as u32);
    }
    (chunk_key, blob, lens)
}

/// The segments `[at, at + len)` of a `plain_len`-byte chunk meets, as
/// (first, last); None when the range is empty or past the end.
pub fn covering(plain_len: usize, at: usize, len: usize) -> Option<(usize, usize)> {
    if len == 0 || at >= plain_len {
        return None;
    }
    let end = (at + len).min(plain_len);
    Some((at / SEGMENT, (end - 1) / SEGMENT))
}

/// Where segments `first..=last` lie in the sealed blob: (offset, length).
pub fn span(lens: &[u32], first: usize, last: usize) -> (usize, usize) {
    let off = lens[..first].iter().map(|l| *l as usize).sum();
    let len = lens[first..=last].iter().map(|l| *l as usize).sum();
    (off, len)
}

/// Opens the segments laid end to end in `sealed` (given in pieces: the
/// data shards, or one range read), the first being segment `first`,
/// appending their plaintext to `out`. Every segment must be whole. A
/// segment stored plain is copied once, into `out`, and opened there.
pub(super) fn open(
    key: &[u8; 32],
    plain_len: usize,
    lens: &[u32],
    first: usize,
    sealed: &[&[u8]],
    out: &mut Vec<u8>,
) -> Result<(), ChunkError> {
    let mut pieces = sealed.iter().copied().filter(|p| !p.is_empty());
    let mut piece: &[u8] = pieces.next().unwrap_or_default();
    let mut scratch = Vec::new();
    let mut i = first;
    while !piece.is_empty() {
        let short = |got| ChunkError::Length {
            got,
            want: plain_len,
        };
        let (Some(&l), Some(seg_plain)) = (
            lens.get(i),
            plain_len
                .checked_sub(i * SEGMENT)
                .filter(|left| *left > 0)
                .map(|left| left.min(SEGMENT)),
        ) else {
            return Err(short(out.len()));
        };
        let l = l as usize;
        // Sealed shorter than plaintext + tag: compressed (only kept when it
        // saves 1/16, so never exactly that length). Opened aside, then
        // inflated into `out`.
        let plain = l == seg_plain + TAG;
        let dst = if plain { &mut *out } else { &mut scratch };
        if !plain {
            dst.clear();
        }
        let from = dst.len();
        while dst.len() - from < l {
            if piece.is_empty() {
                match pieces.next() {
                    Some(p) => piece = p,
                    None => return Err(short(dst.len())),
                }
            }
            let take = piece.len().min(l - (dst.len() - from));
            dst.extend_from_slice(&piece[..take]);
            piece = &piece[take..];
        }
        let p = crypto::decrypt_segment(key, i as u32, &mut dst[from..])?.len();
        if plain {
            dst.truncate(from + p);
        } else {
            let d = compress::decompress(&scratch[..p], seg_plain)?;
            if d.len() != seg_plain {
                return Err(ChunkError::Length {
                    got: d.len(),
                    want: seg_plain,
                });
            }
            out.extend_from_slice(&d);
        }
        if piece.is_empty() {
            piece = pieces.next().unwrap_or_default();
        }
        i += 1;
    }
    Ok(())
}
