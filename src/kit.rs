//! The recovery kit: the text a person keeps, away from the volume's
//! machines, to rebuild the volume when the home node's disk is gone (the
//! volume secret, the authority key, the mesh key, the volume id, the home's
//! peer id and a few storage peers' addresses), as one checksummed,
//! versioned token with comment lines around it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The prefix, and so the version, of a kit's token: `dmkit2` carries the
/// authority key; `dmkit1` (from before it) is still read.
const PREFIX: &str = "dmkit2";
const PREFIX_V1: &str = "dmkit1";
/// Storage peer addresses a kit carries at most.
pub const MAX_PEERS: usize = 4;

/// What a kit holds.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kit {
    pub volume_id: [u8; 16],
    pub volume_secret: [u8; 32],
    pub mesh_key: [u8; 32],
    /// The home node's peer id (bytes) when the kit was made.
    pub home: Vec<u8>,
    /// Storage peers, as multiaddrs ending in `/p2p/ID`.
    pub peers: Vec<String>,
    /// Unix seconds.
    pub made: u64,
    /// The seed of the volume's authority key; `None` in a `dmkit1` kit.
    pub authority: Option<[u8; 32]>,
}

/// A `dmkit1` kit's body: [`Kit`] without the authority key.
#[derive(Serialize, Deserialize)]
struct KitV1 {
    volume_id: [u8; 16],
    volume_secret: [u8; 32],
    mesh_key: [u8; 32],
    home: Vec<u8>,
    peers: Vec<String>,
    made: u64,
}

/// Never the secrets.
impl fmt::Debug for Kit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kit")
            .field("volume_id", &hex::encode(self.volume_id))
            .field("peers", &self.peers)
            .field("made", &self.made)
            .finish_non_exhaustive()
    }
}

/// Why a text is not a kit.
#[derive(Debug, PartialEq, Eq)]
pub struct BadKit(pub String);

impl fmt::Display for BadKit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a usable recovery kit: {}", self.0)
    }
}

impl std::error::Error for BadKit {}

impl Kit {
    /// The token alone (`dmkit2…`; `dmkit1…` for a kit without the
    /// authority key, as kits were before it).
    pub fn token(&self) -> String {
        let (prefix, body) = match self.authority {
            Some(_) => (PREFIX, postcard::to_allocvec(self)),
            None => (
                PREFIX_V1,
                postcard::to_allocvec(&KitV1 {
                    volume_id: self.volume_id,
                    volume_secret: self.volume_secret,
                    mesh_key: self.mesh_key,
                    home: self.home.clone(),
                    peers: self.peers.clone(),
                    made: self.made,
                }),
            ),
        };
        let body = body.expect("kits serialize");
        format!("{prefix}{}", crate::util::hex_checked(&body))
    }

    /// The whole text to keep: comment lines saying what it is, then the token.
    pub fn text(&self, home: &str, made: &str) -> String {
        format!(
            "# datamesh recovery kit: volume {}, home {home}, made {made}\n\
             # THIS IS THE MASTER KEY OF THE VOLUME: whoever holds it can read every\n\
             # file and rebuild the volume. Keep it on paper or in a password manager,\n\
             # away from the volume's machines. `datamesh kit check FILE` tests a copy.\n\
             {}\n",
            hex::encode(self.volume_id),
            self.token()
        )
    }

    /// Reads a kit from its text: `#` lines are comments and whitespace is
    /// ignored, so a token copied by hand over several lines reads back.
    pub fn parse(text: &str) -> Result<Kit, BadKit> {
        let bad = |why: &str| BadKit(why.to_string());
        let joined: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
            .collect();
        let v1 = joined.strip_prefix(PREFIX_V1);
        let Some(hexed) = joined.strip_prefix(PREFIX).or(v1) else {
            return Err(bad(
                if joined.starts_with("dmjoin") || joined.starts_with("dmmember") {
                    "this is a join token, not a kit (make one with `datamesh kit export` on the home node)"
                } else if joined.starts_with("dmkit") {
                    "a kit of another version: use the datamesh that made it"
                } else if joined.is_empty() {
                    "it is empty"
                } else {
                    "it does not start with dmkit2 (copy the whole output of `datamesh kit export`)"
                },
            ));
        };
        let body = crate::util::unhex_checked(hexed).map_err(bad)?;
        let (kit, rest) = if v1.is_some() {
            let (k, rest): (KitV1, _) =
                postcard::take_from_bytes(&body).map_err(|_| bad("damaged"))?;
            let kit = Kit {
                volume_id: k.volume_id,
                volume_secret: k.volume_secret,
                mesh_key: k.mesh_key,
                home: k.home,
                peers: k.peers,
                made: k.made,
                authority: None,
            };
            (kit, rest)
        } else {
            let (kit, rest): (Kit, _) =
                postcard::take_from_bytes(&body).map_err(|_| bad("damaged"))?;
            if kit.authority.is_none() {
                return Err(bad("damaged (a dmkit2 kit without its authority key)"));
            }
            (kit, rest)
        };
        if !rest.is_empty() {
            return Err(bad("damaged (bytes after its end)"));
        }
        Ok(kit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kit() -> Kit {
        Kit {
            volume_id: [3; 16],
            volume_secret: [5; 32],
            mesh_key: [7; 32],
            home: vec![0, 36, 8, 1],
            peers: vec!["/ip4/192.0.2.7/tcp/4719/p2p/12D3KooWExample".into()],
            made: 1_800_000_000,
            authority: Some([9; 32]),
        }
    }

    #[test]
    fn a_kit_reads_back_from_its_text_and_from_a_hand_copy() {
        let k = kit();
        let text = k.text("12D3KooWHome", "2026-11-29 19:50 UTC");
        assert!(text.contains("MASTER KEY"));
        assert_eq!(Kit::parse(&text).unwrap(), k);
        // Copied by hand: broken over lines, indented.
        let token = k.token();
        let (a, b) = token.split_at(40);
        assert_eq!(Kit::parse(&format!("  {a}\n\t{b}  \n")).unwrap(), k);
        // The secrets never show in debug output.
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&hex::encode([5u8; 32])) && !dbg.contains("secret"));
        assert!(!dbg.contains(&hex::encode([9u8; 32])) && !dbg.contains("authority"));
    }

    #[test]
    fn a_kit_from_before_the_authority_key_still_reads() {
        let old = Kit {
            authority: None,
            ..kit()
        };
        let token = old.token();
        assert!(token.starts_with("dmkit1"), "{token}");
        assert_eq!(Kit::parse(&token).unwrap(), old);
        assert!(kit().token().starts_with("dmkit2"));
        // A v1 body under the v2 prefix is not taken for a kit.
        let forged = format!("dmkit2{}", &token["dmkit1".len()..]);
        assert!(Kit::parse(&forged).is_err());
    }

    #[test]
    fn other_texts_are_refused_naming_why() {
        let why = |t: &str| Kit::parse(t).unwrap_err().0;
        assert!(why("").contains("empty"));
        assert!(why("# only a comment\n").contains("empty"));
        assert!(why("dmjoin2abcdef").contains("join token"));
        assert!(why("dmmember1abcdef").contains("join token"));
        assert!(why("dmkit9abcdef").contains("another version"));
        assert!(why("hello").contains("dmkit2"));
        let token = kit().token();
        assert!(why(&format!("{token}00")).contains("checksum"));
        assert!(why(&token[..token.len() - 1]).contains("not hex"));
    }

    proptest! {
        #[test]
        fn any_one_changed_character_or_cut_is_refused(
            at in 0usize..10_000,
            to in proptest::sample::select(b"0123456789abcdef".to_vec()),
            cut in 1usize..10_000,
        ) {
            let token = kit().token();
            let at = PREFIX.len() + at % (token.len() - PREFIX.len());
            let mut changed = token.clone().into_bytes();
            prop_assume!(changed[at] != to);
            changed[at] = to;
            prop_assert!(Kit::parse(std::str::from_utf8(&changed).unwrap()).is_err());
            let cut = cut % token.len();
            prop_assert!(Kit::parse(&token[..cut]).is_err());
        }
    }
}
