//! The chunk pipeline, pure code with no I/O: a chunk of plaintext becomes an
//! optionally compressed, AEAD-encrypted blob, split by Reed-Solomon into k data and
//! m parity shards, each addressed by its BLAKE3 hash; and back again.
//!
//! Invariants: the key of a chunk is a keyed BLAKE3 hash (under a subkey of the
//! volume key) of exactly the bytes it encrypts, so one key never encrypts two
//! messages, equal chunks of one volume seal to equal shards (dedup) and nothing
//! is comparable across volumes. A reader either gets the exact plaintext or an error:
//! every shard is checked against its id by the store, and the AEAD tag checks the
//! reassembled blob.

mod compress;
pub mod crypto;
mod erasure;
mod id;
pub mod segment;

pub use crypto::{
    DeviceKey, VolumeKey, open_sealed, seal_to_device, unwrap_volume_key, wrap_volume_key,
};
pub use erasure::Codec;
pub use id::ShardId;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("only {have} of the {need} shards needed to rebuild the chunk are intact")]
    TooFewShards { have: usize, need: usize },
    #[error("chunk failed authentication (wrong key or altered data)")]
    Auth,
    #[error("chunk decompressed to {got} bytes, expected {want}")]
    Length { got: usize, want: usize },
    #[error("invalid erasure parameters {k}+{m}: {why}")]
    Params { k: usize, m: usize, why: String },
    #[error("key material: {0}")]
    Key(String),
}

/// The chunk map entry: everything needed to find, check and decrypt one chunk.
/// Small chunks are kept whole ("inline") in the metadata instead of as shards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkRef {
    Inline {
        key: [u8; 32],
        compressed: bool,
        plain_len: u32,
        /// As bytes, not a sequence of u8: the same encoding in postcard,
        /// decoded in one copy instead of byte by byte.
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
    },
    Sharded {
        key: [u8; 32],
        compressed: bool,
        plain_len: u32,
        sealed_len: u32,
        /// Data shards; `shards.len() - k` are parity.
        k: u8,
        shards: Vec<ShardId>,
    },
    /// A chunk sealed in segments (chunk format 2, `segment`): what every
    /// chunk too large to be inline is sealed as now.
    Segmented {
        key: [u8; 32],
        plain_len: u32,
        /// Each segment's sealed length (ciphertext and tag), in order.
        segments: Vec<u32>,
        /// Data shards; `shards.len() - k` are parity.
        k: u8,
        shards: Vec<ShardId>,
    },
    /// A chunk overwritten in place in small pieces (metadata format 2): the base
    /// (zeros where there is none) with each slice laid over it, oldest first.
    Layered {
        /// The furthest end of the base and the slices.
        len: u32,
        /// A plain chunk (`Inline` or `Sharded`), never layered itself.
        base: Option<Box<ChunkRef>>,
        slices: Vec<Slice>,
    },
}

/// Bytes written over part of a layered chunk: an inline chunk of their own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    /// Where in the chunk the slice's bytes start.
    pub offset: u32,
    /// Always `ChunkRef::Inline`.
    pub chunk: ChunkRef,
}

impl Slice {
    pub fn end(&self) -> usize {
        self.offset as usize + self.chunk.plain_len()
    }
}

impl ChunkRef {
    pub fn plain_len(&self) -> usize {
        match self {
            ChunkRef::Inline { plain_len, .. }
            | ChunkRef::Sharded { plain_len, .. }
            | ChunkRef::Segmented { plain_len, .. } => *plain_len as usize,
            ChunkRef::Layered { len, .. } => *len as usize,
        }
    }

    /// The shard ids this chunk references (none when inline; a layered
    /// chunk's are its base's: slices are inline).
    pub fn shard_ids(&self) -> &[ShardId] {
        match self {
            ChunkRef::Inline { .. } => &[],
            ChunkRef::Sharded { shards, .. } | ChunkRef::Segmented { shards, .. } => shards,
            ChunkRef::Layered { base, .. } => base.as_deref().map_or(&[], ChunkRef::shard_ids),
        }
    }

    /// The part of this chunk kept as shards: itself when sharded, a layered
    /// chunk's base when that is sharded.
    pub fn sharded(&self) -> Option<&ChunkRef> {
        match self {
            ChunkRef::Sharded { .. } | ChunkRef::Segmented { .. } => Some(self),
            ChunkRef::Inline { .. } => None,
            ChunkRef::Layered { base, .. } => base.as_deref().and_then(ChunkRef::sharded),
        }
    }

    /// The plain chunks this one is made of: itself, or a layered chunk's base
    /// and slices.
    pub fn parts(&self) -> Vec<&ChunkRef> {
        match self {
            ChunkRef::Layered { base, slices, .. } => base
                .as_deref()
                .into_iter()
                .chain(slices.iter().map(|s| &s.chunk))
                .collect(),
            _ => vec![self],
        }
    }

    /// The cache key of a plain chunk's plaintext (its key, derived from it).
    /// A layered chunk has none of its own: its parts are cached.
    pub fn plain_key(&self) -> Option<[u8; 32]> {
        match self {
            ChunkRef::Inline { key, .. }
            | ChunkRef::Sharded { key, .. }
            | ChunkRef::Segmented { key, .. } => Some(*key),
            ChunkRef::Layered { .. } => None,
        }
    }

    /// Bytes this chunk occupies in storage (all shards, or the inline blob).
    pub fn stored_len(&self) -> u64 {
        match self {
            ChunkRef::Inline { sealed, .. } => sealed.len() as u64,
            ChunkRef::Sharded {
                sealed_len,
                k,
                shards,
                ..
            } => erasure::shard_len(*sealed_len as usize, *k as usize) as u64 * shards.len() as u64,
            ChunkRef::Segmented { k, shards, .. } => {
                erasure::shard_len(self.sealed_len(), *k as usize) as u64 * shards.len() as u64
            }
            ChunkRef::Layered { .. } => self.parts().iter().map(|c| c.stored_len()).sum(),
        }
    }
}

/// What a volume's chunks may be: checked of every chunk reference a member
/// sends, before the home keeps it where every host will read it.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub chunk_size: usize,
    pub data_shards: usize,
    pub total_shards: usize,
}

/// Slices a layered chunk may hold as sent by a member (a seal compacts it
/// past 32).
pub const MAX_SLICES_SENT: usize = 64;

impl ChunkRef {
    /// Whether this reference is one the volume's code could have made: the
    /// volume's stripe, lengths within a chunk, a segment table that covers
    /// the plaintext, slices inside their chunk. Every reader trusts these
    /// (a `k` of 0 divides by zero, a slice past its chunk panics), so a
    /// member's reference that breaks one is refused, naming what.
    pub fn check(&self, limits: &Limits) -> Result<(), &'static str> {
        let stripe = |k: u8, shards: &[ShardId]| {
            if k as usize != limits.data_shards || shards.len() != limits.total_shards {
                return Err("a chunk with another stripe than the volume's");
            }
            Ok(())
        };
        let sealed_max = limits.chunk_size + SEAL_HEADROOM;
        if self.plain_len() > limits.chunk_size {
            return Err("a chunk longer than the volume's chunk size");
        }
        match self {
            ChunkRef::Inline { sealed, .. } => {
                if sealed.len() > sealed_max {
                    return Err("an inline chunk sealed longer than a chunk");
                }
            }
            ChunkRef::Sharded {
                sealed_len,
                k,
                shards,
                ..
            } => {
                stripe(*k, shards)?;
                if *sealed_len == 0 || *sealed_len as usize > sealed_max {
                    return Err("a sharded chunk of no sealed bytes, or more than a chunk");
                }
            }
            ChunkRef::Segmented {
                plain_len,
                segments,
                k,
                shards,
                ..
            } => {
                stripe(*k, shards)?;
                let plain = *plain_len as usize;
                if plain == 0 || segments.len() != plain.div_ceil(segment::SEGMENT) {
                    return Err("a segment table that does not cover the chunk");
                }
                let fits = segments.iter().enumerate().all(|(i, l)| {
                    let seg_plain = (plain - i * segment::SEGMENT).min(segment::SEGMENT);
                    (segment::TAG + 1..=seg_plain + segment::TAG).contains(&(*l as usize))
                });
                if !fits {
                    return Err("a segment sealed shorter than its tag or longer than it can be");
                }
            }
            ChunkRef::Layered { len, base, slices } => {
                if let Some(b) = base {
                    if matches!(**b, ChunkRef::Layered { .. }) {
                        return Err("a layered chunk's base is layered itself");
                    }
                    b.check(limits)?;
                }
                if slices.len() > MAX_SLICES_SENT {
                    return Err("a layered chunk of too many slices");
                }
                for s in slices {
                    if !matches!(s.chunk, ChunkRef::Inline { .. }) {
                        return Err("a slice that is not inline");
                    }
                    s.chunk.check(limits)?;
                    if s.end() > *len as usize {
                        return Err("a slice past the end of its chunk");
                    }
                }
            }
        }
        Ok(())
    }
}

impl ChunkRef {
    /// The length of the sealed blob the shards hold (0 for inline and
    /// layered chunks, which have none of their own).
    pub fn sealed_len(&self) -> usize {
        match self {
            ChunkRef::Sharded { sealed_len, .. } => *sealed_len as usize,
            ChunkRef::Segmented { segments, .. } => segments.iter().map(|l| *l as usize).sum(),
            _ => 0,
        }
    }

    /// Where the segments covering plaintext `[at, at + len)` lie: (first
    /// segment, offset in the sealed blob, length, shard length). None when
    /// the chunk is not segmented or the range is empty.
    pub fn segment_span(&self, at: usize, len: usize) -> Option<(usize, usize, usize, usize)> {
        let ChunkRef::Segmented {
            plain_len,
            segments,
            k,
            ..
        } = self
        else {
            return None;
        };
        let (first, last) = segment::covering(*plain_len as usize, at, len)?;
        if last >= segments.len() {
            return None;
        }
        let (off, n) = segment::span(segments, first, last);
        Some((
            first,
            off,
            n,
            erasure::shard_len(self.sealed_len(), *k as usize),
        ))
    }
}

/// The plaintext of the segments of `chunk` laid end to end in `sealed`
/// (in pieces, as read), the first being segment `first` (what
/// [`ChunkRef::segment_span`] located).
pub fn open_segments(
    chunk: &ChunkRef,
    first: usize,
    sealed: &[&[u8]],
) -> Result<Vec<u8>, ChunkError> {
    let ChunkRef::Segmented {
        key,
        plain_len,
        segments,
        ..
    } = chunk
    else {
        return Err(ChunkError::Key("not a segmented chunk".into()));
    };
    let mut out = Vec::with_capacity(sealed.iter().map(|p| p.len()).sum());
    segment::open(key, *plain_len as usize, segments, first, sealed, &mut out)?;
    Ok(out)
}

/// A layered chunk's plaintext: `base` (its base's plaintext, opened by the
/// caller) with the slices opened and laid over it. `slices` are the opened
/// slices, in the chunk's order, as [`open_inline`] gives them.
pub fn lay_slices(len: usize, base: Option<&[u8]>, slices: &[(usize, &[u8])]) -> Vec<u8> {
    let mut out = vec![0u8; len];
    if let Some(b) = base {
        let n = b.len().min(len);
        out[..n].copy_from_slice(&b[..n]);
    }
    for (at, bytes) in slices {
        let n = bytes.len().min(len.saturating_sub(*at));
        out[*at..*at + n].copy_from_slice(&bytes[..n]);
    }
    out
}

/// A sealed chunk: its map entry and the shard bytes to store (shard i has id
/// `chunk.shard_ids()[i]`). No shards for inline chunks.
pub struct Sealed {
    pub chunk: ChunkRef,
    /// The k data shards, back to back (the padded ciphertext).
    data: Vec<u8>,
    parity: Vec<Vec<u8>>,
    shard_len: usize,
}

impl Sealed {
    /// The chunk and its shards, owned: the data shards are slices of one
    /// buffer, not copies, and go to each holder without another.
    pub fn into_parts(self) -> (ChunkRef, Vec<bytes::Bytes>) {
        let (data, len) = (bytes::Bytes::from(self.data), self.shard_len);
        let data_shards = (0..data.len())
            .step_by(len.max(1))
            .take_while(|_| len > 0)
            .map(|at| data.slice(at..(at + len).min(data.len())));
        let parity = self.parity.into_iter().map(bytes::Bytes::from);
        (self.chunk, data_shards.chain(parity).collect())
    }

    pub fn shards(&self) -> impl Iterator<Item = &[u8]> {
        let len = self.shard_len.max(1);
        let data = if self.shard_len == 0 {
            &self.data[..0]
        } else {
            &self.data[..]
        };
        data.chunks(len)
            .chain(self.parity.iter().map(Vec::as_slice))
    }
}

/// Bytes a plaintext buffer should have spare for [`seal_owned`] to work in place.
pub const SEAL_HEADROOM: usize = 64;

/// Seal `plain`. Chunks of at most `inline_max` plaintext bytes stay inline.
pub fn seal(key: &VolumeKey, codec: &Codec, plain: &[u8], inline_max: usize) -> Sealed {
    let mut owned = Vec::with_capacity(plain.len() + SEAL_HEADROOM);
    owned.extend_from_slice(plain);
    seal_owned(key, codec, owned, inline_max)
}

/// [`seal`], encrypting in the caller's buffer instead of a copy (with
/// [`SEAL_HEADROOM`] spare capacity it never reallocates).
pub fn seal_owned(key: &VolumeKey, codec: &Codec, plain: Vec<u8>, inline_max: usize) -> Sealed {
    if plain.len() > inline_max {
        return seal_segmented(key, codec, &plain);
    }
    // Inline: one blob, in the caller's buffer unless compressed. (Format 1
    // sealed sharded chunks this way too; `open_sharded` still reads them.)
    let plain_len = plain.len() as u32;
    let (mut blob, compressed) = match compress::maybe_compress(&plain) {
        Some(c) => (c, true),
        None => (plain, false),
    };
    let chunk_key = key.chunk_key(compressed, &blob);
    crypto::encrypt(&chunk_key, &mut blob);
    Sealed {
        chunk: ChunkRef::Inline {
            key: chunk_key,
            compressed,
            plain_len,
            sealed: blob,
        },
        data: Vec::new(),
        parity: Vec::new(),
        shard_len: 0,
    }
}

/// Seals `plain` in segments and erasure-codes the result.
fn seal_segmented(key: &VolumeKey, codec: &Codec, plain: &[u8]) -> Sealed {
    let (chunk_key, mut blob, segments) = segment::seal(key, plain, codec.data_shards());
    let (shard_len, parity) = codec.encode_in_place(&mut blob);
    let mut sealed = Sealed {
        chunk: ChunkRef::Layered {
            len: 0,
            base: None,
            slices: Vec::new(),
        },
        data: blob,
        parity,
        shard_len,
    };
    let shards = sealed.shards().map(ShardId::of).collect();
    sealed.chunk = ChunkRef::Segmented {
        key: chunk_key,
        plain_len: plain.len() as u32,
        segments,
        k: codec.data_shards() as u8,
        shards,
    };
    sealed
}

/// Open an inline chunk.
pub fn open_inline(chunk: &ChunkRef) -> Result<Vec<u8>, ChunkError> {
    match chunk {
        ChunkRef::Inline {
            key,
            compressed,
            plain_len,
            sealed,
        } => {
            let mut blob = sealed.clone();
            finish_open(key, *compressed, *plain_len, &mut blob)
        }
        _ => Err(ChunkError::Key("not an inline chunk".into())),
    }
}

/// Open a sharded chunk from its shards (`None` = missing or failed its hash check).
/// Missing shards are rebuilt in place when `rebuild_all` is set (for healing), or
/// only the data shards otherwise.
pub fn open_sharded(
    chunk: &ChunkRef,
    codec: &Codec,
    shards: &mut [Option<Vec<u8>>],
    rebuild_all: bool,
) -> Result<Vec<u8>, ChunkError> {
    if !matches!(chunk, ChunkRef::Sharded { .. } | ChunkRef::Segmented { .. }) {
        return open_inline(chunk);
    }
    codec.reconstruct(shards, rebuild_all)?;
    // The sealed blob is the data shards end to end, cut at sealed_len (the
    // rest is erasure padding).
    let want = chunk.sealed_len();
    let mut pieces = Vec::with_capacity(codec.data_shards());
    let mut got = 0;
    for s in shards[..codec.data_shards()].iter().flatten() {
        let take = s.len().min(want - got);
        pieces.push(&s[..take]);
        got += take;
    }
    if got != want {
        return Err(ChunkError::Length { got, want });
    }
    match chunk {
        ChunkRef::Sharded {
            key,
            compressed,
            plain_len,
            ..
        } => {
            // Exactly sealed_len: the plaintext is decrypted in place and kept
            // (in caches and dirty buffers), so spare capacity here would be
            // memory spent for nothing.
            let mut blob = pieces.concat();
            finish_open(key, *compressed, *plain_len, &mut blob)
        }
        ChunkRef::Segmented {
            key,
            plain_len,
            segments,
            ..
        } => {
            // Each segment is copied from the shards into its place in the
            // plaintext and opened there; room for the last one's tag.
            let mut out = Vec::with_capacity(*plain_len as usize + segment::TAG);
            segment::open(key, *plain_len as usize, segments, 0, &pieces, &mut out)?;
            if out.len() != *plain_len as usize {
                return Err(ChunkError::Length {
                    got: out.len(),
                    want: *plain_len as usize,
                });
            }
            Ok(out)
        }
        _ => unreachable!("checked above"),
    }
}

fn finish_open(
    key: &[u8; 32],
    compressed: bool,
    plain_len: u32,
    blob: &mut Vec<u8>,
) -> Result<Vec<u8>, ChunkError> {
    crypto::decrypt(key, blob)?;
    let plain = if compressed {
        compress::decompress(blob, plain_len as usize)?
    } else {
        std::mem::take(blob)
    };
    if plain.len() != plain_len as usize {
        return Err(ChunkError::Length {
            got: plain.len(),
            want: plain_len as usize,
        });
    }
    Ok(plain)
}

#[cfg(test)]
mod tests;
