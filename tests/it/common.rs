use std::path::Path;

pub const BIN: &str = env!("CARGO_BIN_EXE_datamesh");

/// A volume home in a temp dir, and the binary pointed at it: the fs-tests'
/// helper, shared by both suites.
pub use fs_tests::Volume as Vol;

/// Test files go under /var/tmp (a real disk) rather than a RAM-backed /tmp.
pub fn scratch() -> &'static Path {
    Path::new("/var/tmp")
}

/// Deterministic incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
