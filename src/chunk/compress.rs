//! LZ4 compression, kept only where it pays.

use super::ChunkError;

/// Bytes sampled to decide whether a chunk is worth compressing at all, so that
/// incompressible data (media, archives, encrypted backups) costs almost nothing.
const SAMPLE: usize = 64 * 1024;

/// Compressed bytes, or `None` when compression would not save at least 1/16.
pub fn maybe_compress(plain: &[u8]) -> Option<Vec<u8>> {
    if !worth_trying(plain) {
        return None;
    }
    compress_if_pays(plain)
}

/// Whether compressing `plain` may pay: not under 256 bytes, and for large
/// buffers only if a 64 KiB sample shrinks by 1/16.
pub fn worth_trying(plain: &[u8]) -> bool {
    if plain.len() < 256 {
        return false;
    }
    if plain.len() > SAMPLE * 2 {
        let sample = &plain[..SAMPLE];
        if lz4_flex::compress(sample).len() > SAMPLE - SAMPLE / 16 {
            return false;
        }
    }
    true
}

/// Compressed bytes if they save at least 1/16 (and a short buffer is never
/// compressed).
pub fn compress_if_pays(plain: &[u8]) -> Option<Vec<u8>> {
    if plain.len() < 256 {
        return None;
    }
    let out = lz4_flex::compress(plain);
    (out.len() < plain.len() - plain.len() / 16).then_some(out)
}

pub fn decompress(blob: &[u8], plain_len: usize) -> Result<Vec<u8>, ChunkError> {
    lz4_flex::decompress(blob, plain_len).map_err(|_| ChunkError::Length {
        got: 0,
        want: plain_len,
    })
}
