//! Keys: the volume key (root of confidentiality), per-chunk keys derived from it,
//! AES-256-GCM for chunks, and ECIES (secp256k1) to hand the volume key to devices.

use super::ChunkError;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The 32-byte volume secret.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct VolumeKey([u8; 32]);

impl VolumeKey {
    pub fn generate() -> VolumeKey {
        VolumeKey(rand::random())
    }
    pub fn from_bytes(b: [u8; 32]) -> VolumeKey {
        VolumeKey(b)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// The convergent chunk key: keyed BLAKE3, under a subkey of its own, of
    /// exactly the bytes it will encrypt and how to read them (`compressed`),
    /// so one key never encrypts two different messages (docs/DESIGN.md,
    /// "Keys").
    pub fn chunk_key(&self, compressed: bool, blob: &[u8]) -> [u8; 32] {
        let root = self.derive("datamesh 2026 chunk key v2");
        let mut h = blake3::Hasher::new_keyed(&root);
        h.update(&[compressed as u8]);
        h.update(blob);
        *h.finalize().as_bytes()
    }
    /// The convergent key of a segmented chunk: keyed BLAKE3 of its
    /// plaintext, marked apart from [`VolumeKey::chunk_key`]'s inputs (whose
    /// first byte is 0 or 1), so no key seals both a whole blob and segments.
    /// The plaintext fixes every segment and whether it is compressed.
    pub fn segmented_key(&self, plain: &[u8]) -> [u8; 32] {
        let root = self.derive("datamesh 2026 chunk key v2");
        let mut h = blake3::Hasher::new_keyed(&root);
        h.update(&[2]);
        h.update(plain);
        *h.finalize().as_bytes()
    }
    /// A subkey for another purpose (the mesh key, ...), so one secret never serves two.
    pub fn derive(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.0)
    }
}

/// A device's secp256k1 key pair: what the volume key is wrapped to.
pub struct DeviceKey {
    secret: ecies::SecretKey,
}

impl DeviceKey {
    pub fn generate() -> DeviceKey {
        DeviceKey {
            secret: ecies::utils::generate_keypair().0,
        }
    }
    pub fn from_bytes(b: &[u8; 32]) -> Result<DeviceKey, ChunkError> {
        let secret = ecies::SecretKey::parse(b)
            .map_err(|e| ChunkError::Key(format!("device key: {e:?}")))?;
        Ok(DeviceKey { secret })
    }
    pub fn to_bytes(&self) -> [u8; 32] {
        self.secret.serialize()
    }
    /// The uncompressed public key (65 bytes).
    pub fn public(&self) -> Vec<u8> {
        ecies::PublicKey::from_secret_key(&self.secret)
            .serialize()
            .to_vec()
    }
}

/// Seal the volume key to a device's public key.
pub fn wrap_volume_key(device_public: &[u8], key: &VolumeKey) -> Result<Vec<u8>, ChunkError> {
    seal_to_device(device_public, key.as_bytes())
}

/// Seal `secret` to a device's public key (ECIES): only that device opens it.
pub fn seal_to_device(device_public: &[u8], secret: &[u8]) -> Result<Vec<u8>, ChunkError> {
    ecies::encrypt(device_public, secret).map_err(|e| ChunkError::Key(format!("{e:?}")))
}

/// Open what [`seal_to_device`] sealed to this device.
pub fn open_sealed(device: &DeviceKey, sealed: &[u8]) -> Result<Vec<u8>, ChunkError> {
    ecies::decrypt(&device.to_bytes(), sealed).map_err(|_| ChunkError::Auth)
}

/// Open a volume key sealed to this device.
pub fn unwrap_volume_key(device: &DeviceKey, sealed: &[u8]) -> Result<VolumeKey, ChunkError> {
    let plain = open_sealed(device, sealed)?;
    let bytes: [u8; 32] = plain
        .as_slice()
        .try_into()
        .map_err(|_| ChunkError::Key("wrapped key length".into()))?;
    Ok(VolumeKey(bytes))
}

// Each chunk key encrypts exactly one message (it is a hash of it), so a fixed
// nonce never repeats under one key.
const NONCE: [u8; 12] = [0; 12];

pub fn encrypt(key: &[u8; 32], blob: &mut Vec<u8>) {
    cipher(key)
        .seal_in_place_append_tag(nonce(), Aad::empty(), blob)
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
}

pub fn decrypt(key: &[u8; 32], blob: &mut Vec<u8>) -> Result<(), ChunkError> {
    let plain = cipher(key)
        .open_in_place(nonce(), Aad::empty(), blob)
        .map_err(|_| ChunkError::Auth)?
        .len();
    blob.truncate(plain);
    Ok(())
}

/// Encrypts `buf[from..]` in place as segment `n` of a chunk (nonce = `n`)
/// and appends its tag.
pub fn encrypt_segment(key: &[u8; 32], n: u32, buf: &mut Vec<u8>, from: usize) {
    let tag = cipher(key)
        .seal_in_place_separate_tag(segment_nonce(n), Aad::empty(), &mut buf[from..])
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    buf.extend_from_slice(tag.as_ref());
}

/// Opens segment `n` (ciphertext ‖ tag) in place; returns its plaintext.
pub fn decrypt_segment<'a>(
    key: &[u8; 32],
    n: u32,
    sealed: &'a mut [u8],
) -> Result<&'a mut [u8], ChunkError> {
    cipher(key)
        .open_in_place(segment_nonce(n), Aad::empty(), sealed)
        .map_err(|_| ChunkError::Auth)
}

// One segmented chunk key seals its segments, each under its own nonce: the
// key is a hash of the chunk's plaintext, so segment n's message under it is
// always the same.
fn segment_nonce(n: u32) -> Nonce {
    let mut b = [0u8; 12];
    b[8..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(b)
}

/// Seals `plain` under a key that seals many messages (a root record's):
/// a random nonce, then the ciphertext and its tag.
pub fn seal_random(key: &[u8; 32], plain: &[u8]) -> Vec<u8> {
    let n: [u8; 12] = rand::random();
    let mut blob = plain.to_vec();
    cipher(key)
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(n), Aad::empty(), &mut blob)
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    let mut out = n.to_vec();
    out.extend_from_slice(&blob);
    out
}

/// Opens what [`seal_random`] sealed.
pub fn open_random(key: &[u8; 32], sealed: &[u8]) -> Result<Vec<u8>, ChunkError> {
    if sealed.len() < 12 + 16 {
        return Err(ChunkError::Auth);
    }
    let (n, rest) = sealed.split_at(12);
    let mut blob = rest.to_vec();
    let n = Nonce::try_assume_unique_for_key(n).map_err(|_| ChunkError::Auth)?;
    let plain = cipher(key)
        .open_in_place(n, Aad::empty(), &mut blob)
        .map_err(|_| ChunkError::Auth)?
        .len();
    blob.truncate(plain);
    Ok(blob)
}

// ring's AES-256-GCM (standard GCM: ciphertext ‖ 16-byte tag) uses VAES and
// carry-less multiply where the CPU has them: several times the aes-gcm crate.
fn cipher(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES-256 key"))
}

fn nonce() -> Nonce {
    Nonce::assume_unique_for_key(NONCE)
}
