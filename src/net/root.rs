//! Root records: the signed pointer, kept by every storage peer, to the
//! newest protected copy of a volume's namespace; and the rules by which a
//! storage peer keeps one, re-homes a recovered volume and fences the old
//! home. See docs/DESIGN.md, "Namespace protection".
//!
//! The record's payload is sealed by the home (the peer never reads it); the
//! peer checks only the envelope: volume, epoch, sequence, home and the
//! ed25519 signature of the volume's authority key. A record may carry a
//! *handover*: the signature of the key a peer pinned before over the new
//! one, which moves the pin once, and only when the home sends it.

use libp2p::PeerId;
use libp2p::identity::ed25519;
use serde::{Deserialize, Serialize};

/// A record without a handover is written as version 1, so peers from
/// before handovers keep reading it; one with a handover is version 2.
const BODY_V1: u8 = 1;
const BODY_V2: u8 = 2;
const STATE_VERSION: u8 = 1;
/// What the old key signs to hand a volume's records over to a new one.
const HANDOVER_CONTEXT: &[u8] = b"datamesh 2026 root handover v1";
/// Largest record a peer takes.
pub const MAX_RECORD: usize = 64 << 10;

/// What a root record says, signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootBody {
    pub version: u8,
    pub volume: [u8; 16],
    /// Raised by each recovery: a home of a lower epoch is fenced.
    pub epoch: u64,
    /// Raised by one with each record of an epoch.
    pub sequence: u64,
    /// The home node's peer id (bytes).
    pub home: Vec<u8>,
    /// The ed25519 public key the signature verifies under.
    pub key: [u8; 32],
    /// Unix seconds.
    pub made: u64,
    /// The home's sealed payload (opaque here).
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
    /// Present in version 2 only.
    pub handover: Option<Handover>,
}

/// The key a volume's records were signed with before, vouching for `key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    pub old_key: [u8; 32],
    /// ed25519 by `old_key` over [`handover_message`].
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// A version 1 body: [`RootBody`] without the handover.
#[derive(Serialize, Deserialize)]
struct BodyV1 {
    version: u8,
    volume: [u8; 16],
    epoch: u64,
    sequence: u64,
    home: Vec<u8>,
    key: [u8; 32],
    made: u64,
    #[serde(with = "serde_bytes")]
    sealed: Vec<u8>,
}

impl RootBody {
    fn encode(&self) -> Vec<u8> {
        if self.handover.is_some() {
            let body = RootBody {
                version: BODY_V2,
                ..self.clone()
            };
            return postcard::to_allocvec(&body).expect("root body serializes");
        }
        let b = self.clone();
        postcard::to_allocvec(&BodyV1 {
            version: BODY_V1,
            volume: b.volume,
            epoch: b.epoch,
            sequence: b.sequence,
            home: b.home,
            key: b.key,
            made: b.made,
            sealed: b.sealed,
        })
        .expect("root body serializes")
    }

    fn decode(bytes: &[u8]) -> Result<RootBody, String> {
        let damaged = |_| "a damaged root record".to_string();
        match bytes.first() {
            Some(&BODY_V1) => {
                let b: BodyV1 = postcard::from_bytes(bytes).map_err(damaged)?;
                Ok(RootBody {
                    version: b.version,
                    volume: b.volume,
                    epoch: b.epoch,
                    sequence: b.sequence,
                    home: b.home,
                    key: b.key,
                    made: b.made,
                    sealed: b.sealed,
                    handover: None,
                })
            }
            Some(&BODY_V2) => {
                let b: RootBody = postcard::from_bytes(bytes).map_err(damaged)?;
                match b.handover {
                    Some(_) => Ok(b),
                    None => Err("a damaged root record (version 2 without a handover)".into()),
                }
            }
            Some(v) => Err(format!(
                "a root record of version {v} (this datamesh reads {BODY_V1} and {BODY_V2})"
            )),
            None => Err("an empty root record".into()),
        }
    }
}

/// What `old_key` signs to vouch for `new_key` as volume `volume`'s.
fn handover_message(volume: &[u8; 16], new_key: &[u8; 32]) -> Vec<u8> {
    [HANDOVER_CONTEXT, volume, new_key].concat()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SignedRoot {
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
}

/// A key that signs a volume's root records: its authority key (a random
/// seed kept by the home and the kit), or the key the volume secret derives
/// (volumes from before the authority key; see docs/DESIGN.md).
pub struct RootSigner(ed25519::Keypair);

impl RootSigner {
    pub fn from_seed(seed: [u8; 32]) -> RootSigner {
        let mut seed = seed;
        let secret = ed25519::SecretKey::try_from_bytes(&mut seed).expect("32 bytes");
        RootSigner(ed25519::Keypair::from(secret))
    }

    pub fn public(&self) -> [u8; 32] {
        self.0.public().to_bytes()
    }

    /// What the mesh key's rotations derive from (docs/DESIGN.md, "Mesh key
    /// rotation"): only this key's holders can make the next mesh key.
    pub fn rotation_seed(&self) -> [u8; 32] {
        blake3::derive_key("datamesh 2026 mesh rotation seed", self.0.secret().as_ref())
    }

    /// A record of `body` (its `key` set to this signer's), signed.
    pub fn sign(&self, mut body: RootBody) -> Vec<u8> {
        body.key = self.public();
        let body = body.encode();
        let signature = self.0.sign(&body);
        postcard::to_allocvec(&SignedRoot { body, signature }).expect("root serializes")
    }

    /// This (old) key's word that `new_key` signs volume `volume`'s records.
    pub fn hand_over(&self, volume: &[u8; 16], new_key: &[u8; 32]) -> Handover {
        Handover {
            old_key: self.public(),
            signature: self.0.sign(&handover_message(volume, new_key)),
        }
    }
}

/// A record's body, once its signature verifies under the key it names.
/// The error says what is wrong with it.
pub fn verify(record: &[u8]) -> Result<RootBody, String> {
    if record.len() > MAX_RECORD {
        return Err(format!("a root record over {MAX_RECORD} bytes"));
    }
    let signed: SignedRoot =
        postcard::from_bytes(record).map_err(|_| "a damaged root record".to_string())?;
    let body = RootBody::decode(&signed.body)?;
    let key = ed25519::PublicKey::try_from_bytes(&body.key)
        .map_err(|_| "a root record with a malformed key".to_string())?;
    if !key.verify(&signed.body, &signed.signature) {
        return Err("a root record whose signature does not verify".into());
    }
    if let Some(h) = &body.handover {
        let old = ed25519::PublicKey::try_from_bytes(&h.old_key)
            .map_err(|_| "a root record whose handover has a malformed key".to_string())?;
        if !old.verify(&handover_message(&body.volume, &body.key), &h.signature) {
            return Err("a root record whose handover signature does not verify".into());
        }
    }
    if body.epoch > MAX_COUNT || body.sequence > MAX_COUNT {
        return Err(format!(
            "a root record numbered past {MAX_COUNT} (epoch {}, sequence {}): no volume \
             counts that far; it would outnumber every later record",
            body.epoch, body.sequence
        ));
    }
    Ok(body)
}

/// The highest epoch and sequence a record may carry: one record every
/// second would take 8 million years to reach it, and below it `+ 1` never
/// overflows (a record at `u64::MAX` would make every later one "older", and
/// a recovery's epoch + 1 overflow).
pub const MAX_COUNT: u64 = 1 << 48;

/// What a storage peer keeps of the volume's root (`DIR/root`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootState {
    version: u8,
    pub volume: [u8; 16],
    /// Pinned by the first record.
    pub key: [u8; 32],
    pub epoch: u64,
    pub sequence: u64,
    pub home: Vec<u8>,
    /// The newest record, as received.
    #[serde(with = "serde_bytes")]
    pub record: Vec<u8>,
    /// Homes replaced by a recovery, and the epoch that replaced each.
    pub fenced: Vec<(Vec<u8>, u64)>,
}

/// What taking a record changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Kept as the newest.
    Newer,
    /// Not newer than the one kept: nothing changed.
    Older,
    /// Kept, and the volume's home moved to the record's (a recovery).
    Rehomed { from: Vec<u8>, to: Vec<u8> },
}

impl RootState {
    /// The state after `record` arrives from `caller`, whom the peer's roles
    /// name as the home or not (`caller_is_home`). The error is the refusal.
    pub fn take(
        state: Option<&RootState>,
        caller: &PeerId,
        caller_is_home: bool,
        record: &[u8],
    ) -> Result<(RootState, Taken), String> {
        let body = verify(record)?;
        let mut next = RootState {
            version: STATE_VERSION,
            volume: body.volume,
            key: body.key,
            epoch: body.epoch,
            sequence: body.sequence,
            home: body.home.clone(),
            record: record.to_vec(),
            fenced: Vec::new(),
        };
        let Some(st) = state else {
            // The first record pins the volume and its key: only the home
            // this peer was joined to may set it, naming itself.
            if !caller_is_home || body.home != caller.to_bytes() {
                return Err(format!(
                    "{caller} may not set this peer's first root record: only the home \
                     node it joined may"
                ));
            }
            return Ok((next, Taken::Newer));
        };
        if body.volume != st.volume {
            return Err(format!(
                "this peer keeps the root of volume {}, not {}",
                hex::encode(st.volume),
                hex::encode(body.volume)
            ));
        }
        if body.key != st.key {
            // A new key is taken once the key pinned vouches for it, and only
            // from the home, naming itself: a holder of the old key (a member
            // device of an upgraded volume) cannot move the pin.
            let vouched = body.handover.as_ref().is_some_and(|h| h.old_key == st.key);
            if !vouched {
                return Err(
                    "a root record signed by another key than the one this peer keeps for the \
                     volume (its authority key)"
                        .into(),
                );
            }
            if !caller_is_home || body.home != caller.to_bytes() || body.home != st.home {
                return Err(format!(
                    "{caller} may not move this peer to another authority key: only the \
                     volume's home may"
                ));
            }
        }
        next.fenced = st.fenced.clone();
        if body.epoch < st.epoch {
            return Err(fenced_text(&body.home, st));
        }
        if body.epoch == st.epoch {
            if body.home != st.home {
                return Err(format!(
                    "two homes in epoch {}: this peer's is {}",
                    st.epoch,
                    peer_text(&st.home)
                ));
            }
            if body.sequence <= st.sequence {
                return Ok((st.clone(), Taken::Older));
            }
            return Ok((next, Taken::Newer));
        }
        if body.home == st.home {
            return Ok((next, Taken::Newer));
        }
        next.fenced.push((st.home.clone(), body.epoch));
        let taken = Taken::Rehomed {
            from: st.home.clone(),
            to: body.home,
        };
        Ok((next, taken))
    }

    /// The refusal for a fenced old home, when `peer` is one.
    pub fn fenced(&self, peer: &PeerId) -> Option<String> {
        let id = peer.to_bytes();
        self.fenced
            .iter()
            .any(|(h, _)| *h == id)
            .then(|| fenced_text(&id, self))
    }

    pub fn load(path: &std::path::Path) -> Result<Option<RootState>, super::NetError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(super::NetError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        match postcard::from_bytes::<RootState>(&bytes) {
            Ok(st) if st.version == STATE_VERSION => Ok(Some(st)),
            _ => Err(super::NetError::Bad(format!(
                "{}: damaged root file, or one from a newer datamesh",
                path.display()
            ))),
        }
    }

    pub fn save(&self, path: &std::path::Path) -> Result<(), super::NetError> {
        super::write_secret(
            path,
            &postcard::to_allocvec(self).expect("root state serializes"),
        )
    }
}

fn peer_text(id: &[u8]) -> String {
    PeerId::from_bytes(id).map_or_else(|_| hex::encode(id), |p| p.to_string())
}

fn fenced_text(old: &[u8], st: &RootState) -> String {
    format!(
        "fenced: the volume was recovered onto home {} (epoch {}); {} is an old home \
         node and may no longer change it",
        peer_text(&st.home),
        st.epoch,
        peer_text(old)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn body(home: &PeerId, epoch: u64, sequence: u64) -> RootBody {
        RootBody {
            version: 0,
            volume: [7; 16],
            epoch,
            sequence,
            home: home.to_bytes(),
            key: [0; 32],
            made: 1,
            sealed: vec![1, 2, 3],
            handover: None,
        }
    }

    /// `body` handed over from `old` to `new`.
    fn handed(old: &RootSigner, new: &RootSigner, b: RootBody) -> Vec<u8> {
        new.sign(RootBody {
            handover: Some(old.hand_over(&b.volume, &new.public())),
            ..b
        })
    }

    #[test]
    fn only_the_home_moves_a_peer_to_a_key_the_pinned_one_vouched_for() {
        let (legacy, authority, thief_key) = (
            RootSigner::from_seed([3; 32]),
            RootSigner::from_seed([8; 32]),
            RootSigner::from_seed([9; 32]),
        );
        let (home, thief) = (PeerId::random(), PeerId::random());
        let (st, _) = RootState::take(None, &home, true, &legacy.sign(body(&home, 0, 1))).unwrap();
        // A holder of the old key vouches for its own key: refused from
        // anyone but the home, and so is a record under the new key alone.
        let forged = handed(&legacy, &thief_key, body(&thief, 0, 2));
        let err = RootState::take(Some(&st), &thief, false, &forged).unwrap_err();
        assert!(err.contains("only the volume's home"), "{err}");
        let forged = handed(&legacy, &thief_key, body(&thief, 1, 2));
        assert!(RootState::take(Some(&st), &thief, false, &forged).is_err());
        let bare = authority.sign(body(&home, 0, 2));
        let err = RootState::take(Some(&st), &home, true, &bare).unwrap_err();
        assert!(err.contains("another key"), "{err}");
        // A handover whose old key is not the pinned one is refused too.
        let wrong = handed(&thief_key, &authority, body(&home, 0, 2));
        assert!(RootState::take(Some(&st), &home, true, &wrong).is_err());
        // The home hands over: the pin moves, and the old key is refused,
        // even for a re-homing at a higher epoch (the hijack).
        let (st, t) = RootState::take(
            Some(&st),
            &home,
            true,
            &handed(&legacy, &authority, body(&home, 0, 2)),
        )
        .unwrap();
        assert_eq!((t, st.key), (Taken::Newer, authority.public()));
        for rec in [
            legacy.sign(body(&thief, 5, 1)),
            handed(&legacy, &thief_key, body(&home, 0, 3)),
        ] {
            assert!(RootState::take(Some(&st), &thief, false, &rec).is_err());
            assert!(RootState::take(Some(&st), &home, true, &rec).is_err());
        }
        // Records under the new key, with or without the handover, go on.
        let (st, _) =
            RootState::take(Some(&st), &home, true, &authority.sign(body(&home, 0, 3))).unwrap();
        let (st, t) = RootState::take(
            Some(&st),
            &home,
            true,
            &handed(&legacy, &authority, body(&home, 0, 4)),
        )
        .unwrap();
        assert_eq!((t, st.sequence), (Taken::Newer, 4));
    }

    #[test]
    fn a_record_without_a_handover_is_written_as_version_1() {
        let signer = RootSigner::from_seed([3; 32]);
        let home = PeerId::random();
        let plain = signer.sign(body(&home, 0, 1));
        let signed: SignedRoot = postcard::from_bytes(&plain).unwrap();
        // What a peer from before handovers reads: the version 1 layout.
        let v1: BodyV1 = postcard::from_bytes(&signed.body).unwrap();
        assert_eq!((v1.version, v1.sequence), (1, 1));
        let b = verify(&plain).unwrap();
        assert_eq!((b.version, b.handover), (1, None));
        let other = RootSigner::from_seed([4; 32]);
        let b = verify(&handed(&signer, &other, body(&home, 0, 1))).unwrap();
        assert_eq!(b.version, 2);
        assert_eq!(b.handover.unwrap().old_key, signer.public());
        // A handover vouching for another volume does not verify.
        let mut b2 = body(&home, 0, 1);
        b2.handover = Some(signer.hand_over(&[1; 16], &other.public()));
        assert!(verify(&other.sign(b2)).unwrap_err().contains("handover"));
    }

    #[test]
    fn a_peer_pins_the_first_root_then_keeps_the_newest_and_fences_an_old_home() {
        let signer = RootSigner::from_seed([3; 32]);
        let (home, new_home, thief) = (PeerId::random(), PeerId::random(), PeerId::random());
        let first = signer.sign(body(&home, 0, 1));
        // Only the joined home may set the first record, naming itself.
        assert!(RootState::take(None, &thief, false, &first).is_err());
        let (st, t) = RootState::take(None, &home, true, &first).unwrap();
        assert_eq!(t, Taken::Newer);
        // Newer sequence kept; an older one changes nothing.
        let (st, t) =
            RootState::take(Some(&st), &home, true, &signer.sign(body(&home, 0, 5))).unwrap();
        assert_eq!((t, st.sequence), (Taken::Newer, 5));
        let (st, t) = RootState::take(Some(&st), &home, true, &first).unwrap();
        assert_eq!((t, st.sequence), (Taken::Older, 5));
        // Another signer (a wrong kit) is refused, whoever sends it.
        let other = RootSigner::from_seed([4; 32]);
        assert!(RootState::take(Some(&st), &home, true, &other.sign(body(&home, 9, 9))).is_err());
        // A recovery: a higher epoch naming another home, sent by it.
        let (st, t) = RootState::take(
            Some(&st),
            &new_home,
            false,
            &signer.sign(body(&new_home, 1, 6)),
        )
        .unwrap();
        assert!(matches!(t, Taken::Rehomed { .. }));
        assert_eq!(st.home, new_home.to_bytes());
        // The old home is fenced: its records are refused, and it is named so.
        let err =
            RootState::take(Some(&st), &home, false, &signer.sign(body(&home, 0, 99))).unwrap_err();
        assert!(err.starts_with("fenced:"), "{err}");
        assert!(st.fenced(&home).is_some() && st.fenced(&new_home).is_none());
        // Two homes in one epoch are refused.
        assert!(
            RootState::take(Some(&st), &thief, false, &signer.sign(body(&thief, 1, 100))).is_err()
        );
    }

    #[test]
    fn a_record_numbered_past_any_real_count_is_refused() {
        let signer = RootSigner::from_seed([3; 32]);
        let home = PeerId::random();
        let ok = signer.sign(body(&home, MAX_COUNT, MAX_COUNT));
        assert!(verify(&ok).is_ok());
        for (e, s) in [(u64::MAX, 1), (1, u64::MAX), (MAX_COUNT + 1, 1)] {
            let err = verify(&signer.sign(body(&home, e, s))).unwrap_err();
            assert!(err.contains("numbered past"), "{err}");
        }
    }

    proptest! {
        #[test]
        fn an_altered_record_never_verifies(at in 0usize..400, flip in 1u8..=255) {
            let signer = RootSigner::from_seed([5; 32]);
            let rec = signer.sign(body(&PeerId::random(), 2, 3));
            prop_assert!(verify(&rec).is_ok());
            let mut bad = rec.clone();
            let i = at % bad.len();
            bad[i] ^= flip;
            prop_assert!(verify(&bad).is_err());
            prop_assert!(verify(&rec[..i]).is_err());
        }
    }
}
