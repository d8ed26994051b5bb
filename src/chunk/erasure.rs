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

    /// Split `blob` into k zero-padded data shards and compute m parity shards.
    pub fn encode(&self, blob: &[u8]) -> Vec<Vec<u8>> {
        let k = self.data_shards();
        let len = shard_len(blob.len(), k);
        let mut shards: Vec<Vec<u8>> = (0..self.total_shards())
            .map(|i| {
                let mut s = vec![0u8; len];
                if i < k {
                    let start = (i * len).min(blob.len());
                    let end = ((i + 1) * len).min(blob.len());
                    s[..end - start].copy_from_slice(&blob[start..end]);
                }
                s
            })
            .collect();
        self.rs
            .encode(&mut shards)
            .expect("shards are equal length by construction");
        shards
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
