//! Reed-Solomon k+m over GF(2^8).

use super::ChunkError;
use reed_solomon_erasure::galois_8::ReedSolomon;

pub fn shard_len(sealed_len: usize, k: usize) -> usize {
    sealed_len.div_ceil(k).max(1)
}

/// A Reed-Solomon codec for one k+m; build once, share everywhere.
pub struct Codec {
    rs: ReedSolomon,
}

impl Codec {
    pub fn new(k: usize, m: usize) -> Result<Codec, ChunkError> {
        let bad = |why: &str| ChunkError::Params {
            k,
            m,
            why: why.into(),
        };
        if k == 0 || m == 0 {
            return Err(bad("both must be at least 1"));
        }
        if k + m > 32 {
            return Err(bad("at most 32 shards in all"));
        }
        let rs = ReedSolomon::new(k, m).map_err(|e| bad(&format!("{e:?}")))?;
        Ok(Codec { rs })
    }
    pub fn data_shards(&self) -> usize {
        self.rs.data_shard_count()
    }
    pub fn parity_shards(&self) -> usize {
        self.rs.parity_shard_count()
    }
    pub fn total_shards(&self) -> usize {
        self.rs.total_shard_count()
    }

    /// Pad `blob` to k equal data shards (in place, no copy) and compute the m
    /// parity shards. Returns the shard length and the parity shards.
    pub fn encode_in_place(&self, blob: &mut Vec<u8>) -> (usize, Vec<Vec<u8>>) {
        let k = self.data_shards();
        let len = shard_len(blob.len(), k);
        blob.resize(len * k, 0);
        let data: Vec<&[u8]> = blob.chunks(len).collect();
        let mut parity = vec![vec![0u8; len]; self.parity_shards()];
        self.rs
            .encode_sep(&data, &mut parity)
            .expect("shards are equal length by construction");
        (len, parity)
    }

    /// Split `blob` into k zero-padded data shards and compute m parity shards.
    pub fn encode(&self, blob: &[u8]) -> Vec<Vec<u8>> {
        let mut padded = blob.to_vec();
        let (len, parity) = self.encode_in_place(&mut padded);
        padded
            .chunks(len)
            .map(<[u8]>::to_vec)
            .chain(parity)
            .collect()
    }

    /// Fill in missing shards from any k present ones: all of them, or only the data.
    pub fn reconstruct(&self, shards: &mut [Option<Vec<u8>>], all: bool) -> Result<(), ChunkError> {
        let k = self.data_shards();
        let have = shards.iter().filter(|s| s.is_some()).count();
        let data_complete = shards[..k].iter().all(Option::is_some);
        if (!all && data_complete) || have == shards.len() {
            return Ok(());
        }
        if have < k {
            return Err(ChunkError::TooFewShards { have, need: k });
        }
        let res = if all {
            self.rs.reconstruct(shards)
        } else {
            self.rs.reconstruct_data(shards)
        };
        res.map_err(|_| ChunkError::TooFewShards { have, need: k })
    }
}
