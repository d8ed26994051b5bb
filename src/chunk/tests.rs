use super::*;
use proptest::prelude::*;

fn key() -> VolumeKey {
    VolumeKey::from_bytes([7; 32])
}

/// Data that compresses (runs) or not (noise), so both paths are exercised.
fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..20_000),
        (any::<u8>(), 0usize..50_000).prop_map(|(b, n)| vec![b; n]),
    ]
}

fn shards_of(sealed: &Sealed) -> Vec<Option<Vec<u8>>> {
    sealed.shards().map(|s| Some(s.to_vec())).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn lose_up_to_m_shards_reads_back_identical(
        plain in data(), k in 1usize..7, m in 1usize..4, lose in any::<u64>(),
    ) {
        let codec = Codec::new(k, m).unwrap();
        let sealed = seal(&key(), &codec, &plain, 0);
        let mut shards = shards_of(&sealed);
        // Lose a pseudo-random set of at most m shards.
        let n = k + m;
        let count = (lose % (m as u64 + 1)) as usize;
        for j in 0..count {
            shards[((lose >> (8 * j)) as usize + j) % n] = None;
        }
        let back = open_sharded(&sealed.chunk, &codec, &mut shards, true).unwrap();
        prop_assert_eq!(&back, &plain);
        // Healing rebuilt every shard exactly.
        for (i, s) in shards.iter().enumerate() {
            prop_assert_eq!(ShardId::of(s.as_ref().unwrap()), sealed.chunk.shard_ids()[i]);
        }
        // The owned shards a store is handed are the same bytes.
        let borrowed: Vec<Vec<u8>> = sealed.shards().map(<[u8]>::to_vec).collect();
        let chunk = sealed.chunk.clone();
        let (c, owned) = sealed.into_parts();
        prop_assert_eq!(c, chunk);
        prop_assert_eq!(owned.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), borrowed);
    }

    #[test]
    fn more_than_m_losses_is_an_error_never_wrong_bytes(
        plain in data(), k in 1usize..7, m in 1usize..4, start in 0usize..10,
    ) {
        let codec = Codec::new(k, m).unwrap();
        let sealed = seal(&key(), &codec, &plain, 0);
        let mut shards = shards_of(&sealed);
        // An empty chunk has no shards to lose.
        prop_assume!(!shards.is_empty());
        let n = k + m;
        for j in 0..=m {
            shards[(start + j) % n] = None;
        }
        let err = open_sharded(&sealed.chunk, &codec, &mut shards, false).unwrap_err();
        prop_assert!(matches!(err, ChunkError::TooFewShards { .. }), "{err}");
    }

    #[test]
    fn a_corrupted_shard_that_slips_past_the_store_fails_authentication(
        plain in proptest::collection::vec(any::<u8>(), 1..20_000), flip in any::<usize>(),
    ) {
        let codec = Codec::new(4, 2).unwrap();
        let sealed = seal(&key(), &codec, &plain, 0);
        let mut shards = shards_of(&sealed);
        let s = shards[0].as_mut().unwrap();
        let at = flip % s.len();
        s[at] ^= 0x5a;
        // Any byte of a data shard within the sealed length is covered by the tag;
        // a flip in zero padding changes nothing that is read.
        match open_sharded(&sealed.chunk, &codec, &mut shards, false) {
            Ok(back) => prop_assert_eq!(back, plain),
            Err(e) => prop_assert!(matches!(e, ChunkError::Auth), "{e}"),
        }
    }

    #[test]
    fn inline_round_trip(plain in data()) {
        let codec = Codec::new(4, 2).unwrap();
        let sealed = seal(&key(), &codec, &plain, usize::MAX);
        prop_assert!(sealed.shards().next().is_none());
        prop_assert_eq!(open_inline(&sealed.chunk).unwrap(), plain);
        prop_assert!(sealed.into_parts().1.is_empty());
    }

    /// Chunk map entries (every kind, layered ones of any shape) survive
    /// their record encoding; plain entries encode exactly as format 1 did
    /// (`sealed` as a sequence of u8), so old records read unchanged.
    #[test]
    fn chunk_refs_round_trip_and_plain_ones_keep_the_format_1_encoding(
        base in proptest::option::of(data()),
        slices in proptest::collection::vec((0u32..1 << 20, proptest::collection::vec(any::<u8>(), 0..600)), 0..6),
        len in any::<u32>(),
    ) {
        #[derive(Serialize)]
        enum Format1 {
            Inline { key: [u8; 32], compressed: bool, plain_len: u32, sealed: Vec<u8> },
            Sharded { key: [u8; 32], compressed: bool, plain_len: u32, sealed_len: u32, k: u8, shards: Vec<ShardId> },
        }
        let codec = Codec::new(4, 2).unwrap();
        let base = base.map(|b| seal(&key(), &codec, &b, 4096).chunk);
        if let Some(b) = &base {
            let old = match b.clone() {
                ChunkRef::Inline { key, compressed, plain_len, sealed } =>
                    Some(Format1::Inline { key, compressed, plain_len, sealed }),
                ChunkRef::Sharded { key, compressed, plain_len, sealed_len, k, shards } =>
                    Some(Format1::Sharded { key, compressed, plain_len, sealed_len, k, shards }),
                _ => None,
            };
            let bytes = postcard::to_allocvec(b).unwrap();
            if let Some(old) = old {
                prop_assert_eq!(&bytes, &postcard::to_allocvec(&old).unwrap());
            }
            prop_assert_eq!(&postcard::from_bytes::<ChunkRef>(&bytes).unwrap(), b);
        }
        let layered = ChunkRef::Layered {
            len,
            base: base.map(Box::new),
            slices: slices
                .iter()
                .map(|(offset, b)| Slice { offset: *offset, chunk: seal(&key(), &codec, b, 4096).chunk })
                .collect(),
        };
        let bytes = postcard::to_allocvec(&layered).unwrap();
        prop_assert_eq!(postcard::from_bytes::<ChunkRef>(&bytes).unwrap(), layered);
    }
}

/// Chunk-sized data: compressible runs, noise, and a mix whose segments
/// differ (some compress, some do not).
fn big_data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 30_000..300_000),
        (any::<u8>(), 30_000usize..300_000).prop_map(|(b, n)| vec![b; n]),
        (proptest::collection::vec(any::<u8>(), 70_000), any::<u8>()).prop_map(|(mut v, b)| {
            v.extend(std::iter::repeat_n(b, 100_000));
            v
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Any range of a segmented chunk opens from just the sealed bytes of the
    /// segments covering it, read straight out of the data shards, and equals
    /// that range of the plaintext; a flipped byte in them fails its tag.
    #[test]
    fn a_range_opens_from_the_segments_covering_it(
        plain in big_data(),
        at in 0usize..320_000,
        len in 1usize..200_000,
        flip in any::<usize>(),
    ) {
        let codec = Codec::new(4, 2).unwrap();
        let sealed = seal(&key(), &codec, &plain, 4096);
        let segmented = matches!(sealed.chunk, ChunkRef::Segmented { .. });
        prop_assert!(segmented);
        let shards: Vec<Vec<u8>> = sealed.shards().map(<[u8]>::to_vec).collect();
        // Whole, with two shards lost.
        let mut some = shards_of(&sealed);
        some[1] = None;
        some[4] = None;
        prop_assert_eq!(&open_sharded(&sealed.chunk, &codec, &mut some, false).unwrap(), &plain);
        let Some((first, off, n, shard_len)) = sealed.chunk.segment_span(at, len) else {
            prop_assert!(at >= plain.len());
            return Ok(());
        };
        let mut bytes = Vec::new();
        for pos in off..off + n {
            bytes.push(shards[pos / shard_len][pos % shard_len]);
        }
        // In pieces as read: cut at each shard's end, and once more anywhere.
        let extra = off + flip % n;
        let mut cuts: Vec<usize> = (off + 1..off + n)
            .filter(|pos| pos % shard_len == 0 || *pos == extra)
            .map(|pos| pos - off)
            .collect();
        cuts.push(n);
        let pieces = |b: &[u8]| -> Vec<Vec<u8>> {
            let mut from = 0;
            cuts.iter().map(|&to| { let p = b[from..to].to_vec(); from = to; p }).collect()
        };
        let read = pieces(&bytes);
        let read: Vec<&[u8]> = read.iter().map(Vec::as_slice).collect();
        let opened = open_segments(&sealed.chunk, first, &read).unwrap();
        let from = at - first * segment::SEGMENT;
        let end = (at + len).min(plain.len());
        prop_assert_eq!(&opened[from..from + (end - at)], &plain[at..end]);
        let mut tampered = bytes.clone();
        let i = flip % tampered.len();
        tampered[i] ^= 0x40;
        let bad = pieces(&tampered);
        let bad: Vec<&[u8]> = bad.iter().map(Vec::as_slice).collect();
        prop_assert!(open_segments(&sealed.chunk, first, &bad).is_err());
    }
}

#[test]
fn equal_chunks_dedupe_within_a_volume_and_differ_across_volumes() {
    let codec = Codec::new(4, 2).unwrap();
    let plain = vec![42u8; 100_000];
    let a = seal(&key(), &codec, &plain, 0);
    let b = seal(&key(), &codec, &plain, 0);
    let other = seal(&VolumeKey::from_bytes([8; 32]), &codec, &plain, 0);
    assert_eq!(a.chunk, b.chunk);
    assert_ne!(a.chunk.shard_ids(), other.chunk.shard_ids());
}

#[test]
fn shards_do_not_contain_the_plaintext() {
    let codec = Codec::new(4, 2).unwrap();
    let marker = b"DATAMESH-PLAINTEXT-MARKER-0123456789";
    let mut plain = Vec::new();
    while plain.len() < 200_000 {
        plain.extend_from_slice(marker);
    }
    let sealed = seal(&key(), &codec, &plain, 0);
    for s in sealed.shards() {
        assert!(!s.windows(marker.len()).any(|w| w == marker));
    }
}

#[test]
fn volume_key_wraps_to_a_device_and_only_that_device() {
    let vk = VolumeKey::generate();
    let dev = DeviceKey::generate();
    let other = DeviceKey::generate();
    let wrapped = wrap_volume_key(&dev.public(), &vk).unwrap();
    assert_eq!(
        unwrap_volume_key(&dev, &wrapped).unwrap().as_bytes(),
        vk.as_bytes()
    );
    assert!(unwrap_volume_key(&other, &wrapped).is_err());
    let again = DeviceKey::from_bytes(&dev.to_bytes()).unwrap();
    assert_eq!(again.public(), dev.public());
}

/// A chunk key is a hash of the exact bytes it encrypts: the same plaintext
/// sealed as compressed and as stored bytes (a compressor that changed its
/// mind) gets two keys, never one key over two messages.
#[test]
fn a_chunk_key_encrypts_one_message_only() {
    let plain = vec![42u8; 100_000];
    let packed = compress::maybe_compress(&plain).expect("runs compress");
    let k = key();
    assert_ne!(k.chunk_key(true, &packed), k.chunk_key(false, &plain));
    let mut other = packed.clone();
    other.push(0);
    assert_ne!(k.chunk_key(true, &packed), k.chunk_key(true, &other));
    // Convergent: the same bytes, the same key (dedup within a volume).
    assert_eq!(
        k.chunk_key(true, &packed),
        k.chunk_key(true, &packed.clone())
    );
    let sealed = seal(&key(), &Codec::new(4, 2).unwrap(), &plain, 0);
    let again = seal(&key(), &Codec::new(4, 2).unwrap(), &plain, 0);
    assert_eq!(sealed.chunk, again.chunk);
}

/// Chunks written before the v2 derivation (key = keyed BLAKE3 of the
/// plaintext under the volume secret) open unchanged: the key is stored in
/// the map entry, and opening never derives it.
#[test]
fn chunks_keyed_the_old_way_still_open() {
    let codec = Codec::new(4, 2).unwrap();
    for plain in [
        vec![9u8; 50_000],
        (0..50_000u32)
            .map(|i| (i.wrapping_mul(7919) >> 5) as u8)
            .collect(),
    ] {
        let old_key = *blake3::keyed_hash(key().as_bytes(), &plain).as_bytes();
        let (mut blob, compressed) = match compress::maybe_compress(&plain) {
            Some(c) => (c, true),
            None => (plain.clone(), false),
        };
        crypto::encrypt(&old_key, &mut blob);
        let inline = ChunkRef::Inline {
            key: old_key,
            compressed,
            plain_len: plain.len() as u32,
            sealed: blob.clone(),
        };
        assert_eq!(open_inline(&inline).unwrap(), plain);
        // The same bytes as shards.
        let sealed_len = blob.len() as u32;
        let (shard_len, parity) = codec.encode_in_place(&mut blob);
        let mut shards: Vec<Option<Vec<u8>>> = blob
            .chunks(shard_len)
            .map(|s| Some(s.to_vec()))
            .chain(parity.into_iter().map(Some))
            .collect();
        let sharded = ChunkRef::Sharded {
            key: old_key,
            compressed,
            plain_len: plain.len() as u32,
            sealed_len,
            k: 4,
            shards: shards
                .iter()
                .map(|s| ShardId::of(s.as_ref().unwrap()))
                .collect(),
        };
        shards[0] = None;
        assert_eq!(
            open_sharded(&sharded, &codec, &mut shards, false).unwrap(),
            plain
        );
    }
}

fn limits(chunk_size: usize, k: usize, m: usize) -> Limits {
    Limits {
        chunk_size,
        data_shards: k,
        total_shards: k + m,
    }
}

/// Any chunk reference, well-formed or not, with small numbers.
fn any_chunk() -> impl Strategy<Value = ChunkRef> {
    let ids = |n: std::ops::Range<usize>| {
        proptest::collection::vec(any::<u8>().prop_map(|b| ShardId([b; 32])), n)
    };
    let inline = (0u32..70_000, 0usize..70_000).prop_map(|(plain_len, n)| ChunkRef::Inline {
        key: [1; 32],
        compressed: false,
        plain_len,
        sealed: vec![0; n % 2000],
    });
    let plain = prop_oneof![
        inline.clone(),
        (0u32..70_000, 0u32..70_000, 0u8..8, ids(0..10)).prop_map(
            |(plain_len, sealed_len, k, shards)| ChunkRef::Sharded {
                key: [2; 32],
                compressed: false,
                plain_len,
                sealed_len,
                k,
                shards,
            }
        ),
        (
            0u32..200_000,
            proptest::collection::vec(0u32..70_000, 0..5),
            0u8..8,
            ids(0..10)
        )
            .prop_map(|(plain_len, segments, k, shards)| ChunkRef::Segmented {
                key: [3; 32],
                plain_len,
                segments,
                k,
                shards,
            }),
    ];
    let slices = proptest::collection::vec(
        (0u32..80_000, inline).prop_map(|(offset, chunk)| Slice { offset, chunk }),
        0..4,
    );
    prop_oneof![
        plain.clone(),
        (0u32..80_000, proptest::option::of(plain), slices).prop_map(|(len, base, slices)| {
            ChunkRef::Layered {
                len,
                base: base.map(Box::new),
                slices,
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// What the volume's own code seals always passes the check a member's
    /// references must pass.
    #[test]
    fn sealed_chunks_pass_the_check(plain in data(), k in 1usize..7, m in 1usize..4) {
        let codec = Codec::new(k, m).unwrap();
        let sealed = seal(&key(), &codec, &plain, 0);
        prop_assert_eq!(sealed.chunk.check(&limits(64 << 10, k, m)), Ok(()));
        let inline = seal(&key(), &codec, &plain, usize::MAX);
        prop_assert_eq!(inline.chunk.check(&limits(64 << 10, k, m)), Ok(()));
    }

    /// A reference that passes the check breaks none of what readers
    /// compute from it (sizes, segment spans, laying slices).
    #[test]
    fn a_checked_reference_breaks_no_reader(c in any_chunk(), at in 0usize..100_000, len in 0usize..100_000) {
        if c.check(&limits(64 << 10, 4, 2)).is_err() {
            return Ok(());
        }
        let _ = c.stored_len();
        let _ = c.segment_span(at, len);
        if let ChunkRef::Layered { len, base, slices } = &c {
            let base_bytes = base.as_ref().map(|b| vec![1u8; b.plain_len()]);
            let opened: Vec<(usize, Vec<u8>)> = slices
                .iter()
                .map(|s| (s.offset as usize, vec![2u8; s.chunk.plain_len()]))
                .collect();
            let views: Vec<(usize, &[u8])> = opened.iter().map(|(o, b)| (*o, &b[..])).collect();
            let out = lay_slices(*len as usize, base_bytes.as_deref(), &views);
            prop_assert_eq!(out.len(), *len as usize);
        }
    }
}

#[test]
fn a_reference_with_no_data_shards_is_refused() {
    let zero_k = ChunkRef::Segmented {
        key: [3; 32],
        plain_len: 10,
        segments: vec![26],
        k: 0,
        shards: vec![ShardId([0; 32]); 6],
    };
    assert!(zero_k.check(&limits(64 << 10, 4, 2)).is_err());
}
