//! Who may ask a storage peer what, and how a peer learns it: join tokens
//! (what `datamesh invite` hands a new peer) and the roles a peer keeps in its
//! data directory. See docs/DESIGN.md, "Roles".
//!
//! The mesh key only lets a process complete a handshake; a request is then
//! allowed by the caller's authenticated peer id. The home's id comes from the
//! token, never from what a peer says about itself.

use super::proto::Request;
use super::{MeshKey, Multiaddr, NetError};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;

/// What a caller is to a storage peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The home node: every request.
    Home,
    /// A member device: reads and writes of shards, never deletes or listings.
    Member,
    /// Anyone else holding the mesh key (another storage peer, a copied key).
    Other,
}

impl Role {
    pub fn may(self, req: &Request) -> bool {
        if req.is_root() {
            // A root record is sealed, and a new one is authorized by its
            // signature (a recovered home is no role's yet).
            return true;
        }
        match self {
            Role::Home => true,
            Role::Member => matches!(
                req,
                Request::Put { .. }
                    | Request::Get { .. }
                    | Request::GetRange { .. }
                    | Request::Has { .. }
                    | Request::Stat
                    | Request::Sync
            ),
            Role::Other => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Home => "the home node",
            Role::Member => "a member device",
            Role::Other => "neither the home node nor a member",
        }
    }
}

const ROLES_VERSION: u8 = 1;

/// A file's bytes; `None` when there is no such file (any other error is one).
fn read_if_there(path: &Path) -> Result<Option<Vec<u8>>, NetError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(NetError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The roles a storage peer knows, kept in `DIR/roles` (postcard, 0600).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    version: u8,
    home: Vec<u8>,
    members: Vec<Vec<u8>>,
    /// The admission secret of the token this peer joined with.
    admit: Option<[u8; 32]>,
}

impl Roles {
    pub fn new(home: PeerId, admit: Option<[u8; 32]>) -> Roles {
        Roles {
            version: ROLES_VERSION,
            home: home.to_bytes(),
            members: Vec::new(),
            admit,
        }
    }

    pub fn members(&self) -> &[Vec<u8>] {
        &self.members
    }

    pub fn set_members(&mut self, ids: Vec<Vec<u8>>) {
        self.members = ids;
    }

    pub fn admit(&self) -> Option<&[u8; 32]> {
        self.admit.as_ref()
    }

    pub fn home(&self) -> Option<PeerId> {
        PeerId::from_bytes(&self.home).ok()
    }

    /// A recovery moved the volume's home to `home`.
    pub fn set_home(&mut self, home: &[u8]) {
        self.home = home.to_vec();
    }

    pub fn role_of(&self, peer: &PeerId) -> Role {
        let id = peer.to_bytes();
        if id == self.home {
            Role::Home
        } else if self.members.contains(&id) {
            Role::Member
        } else {
            Role::Other
        }
    }

    /// The roles at `path`; `None` when there is no such file (a data dir from
    /// before roles). A damaged file is an error, never taken as "none".
    pub fn load(path: &Path) -> Result<Option<Roles>, NetError> {
        let Some(bytes) = read_if_there(path)? else {
            return Ok(None);
        };
        let bad = |why: &str| NetError::Bad(format!("{}: {why}", path.display()));
        let (roles, rest): (Roles, _) =
            postcard::take_from_bytes(&bytes).map_err(|_| bad("damaged roles file"))?;
        if !rest.is_empty() || roles.version != ROLES_VERSION || roles.home().is_none() {
            return Err(bad("damaged roles file, or one from a newer datamesh"));
        }
        Ok(Some(roles))
    }

    pub fn save(&self, path: &Path) -> Result<(), NetError> {
        super::write_secret(path, &postcard::to_allocvec(self).expect("roles serialize"))
    }
}

/// What a join token carries.
pub struct JoinToken {
    pub key: MeshKey,
    /// The home node's peer id (`None` in a `dmjoin1` token).
    pub home: Option<PeerId>,
    pub bootstrap: Vec<Multiaddr>,
    /// Unix seconds after which the token is refused (`None` in `dmjoin1`).
    pub expires: Option<u64>,
    /// The admission secret (`None` in `dmjoin1`).
    pub admit: Option<[u8; 32]>,
}

/// Now, in the unix seconds that token and invitation expiries are kept in.
pub fn now_secs() -> u64 {
    crate::types::Timestamp::now().secs.max(0) as u64
}

fn admission_secret(token_body: &[u8]) -> [u8; 32] {
    blake3::derive_key("datamesh 2026 admission secret", token_body)
}

/// What a storage peer answers the home's `Hello`: proof that it joined with
/// a token the home issued, bound to the peer's own id (a proof cannot be
/// replayed by another peer).
pub fn admission_proof(secret: &[u8; 32], peer: &PeerId) -> [u8; 32] {
    *blake3::keyed_hash(secret, &peer.to_bytes()).as_bytes()
}

/// One invitation the home has handed out.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Invite {
    secret: [u8; 32],
    expires: u64,
    uses: u32,
}

#[derive(Default, Serialize, Deserialize)]
struct InvitesFile {
    version: u8,
    list: Vec<Invite>,
}

/// The home's outstanding invitations (`HOME/invites`, 0600): a token admits
/// at most `uses` storage peers before it expires.
pub struct Invites;

impl Invites {
    fn load(path: &Path) -> Result<InvitesFile, NetError> {
        match read_if_there(path)? {
            Some(b) => postcard::from_bytes(&b)
                .map_err(|_| NetError::Bad(format!("{}: damaged invitations", path.display()))),
            None => Ok(InvitesFile::default()),
        }
    }

    fn save(path: &Path, f: &InvitesFile) -> Result<(), NetError> {
        super::write_secret(path, &postcard::to_allocvec(f).expect("invites serialize"))
    }

    /// Records a new invitation; expired and used-up ones are dropped.
    pub fn add(
        path: &Path,
        secret: [u8; 32],
        expires: u64,
        uses: u32,
        now: u64,
    ) -> Result<(), NetError> {
        let mut f = Invites::load(path)?;
        f.version = 1;
        f.list.retain(|i| i.expires > now && i.uses > 0);
        f.list.push(Invite {
            secret,
            expires,
            uses,
        });
        Invites::save(path, &f)
    }

    /// Whether `proof` from `peer` matches an invitation that is still good;
    /// if so, one use of it is spent.
    pub fn redeem(
        path: &Path,
        peer: &PeerId,
        proof: &[u8; 32],
        now: u64,
    ) -> Result<bool, NetError> {
        let mut f = Invites::load(path)?;
        let Some(i) = f
            .list
            .iter_mut()
            .find(|i| i.expires > now && i.uses > 0 && admission_proof(&i.secret, peer) == *proof)
        else {
            return Ok(false);
        };
        i.uses -= 1;
        f.list.retain(|i| i.expires > now && i.uses > 0);
        Invites::save(path, &f)?;
        Ok(true)
    }
}

/// The storage peers a home admitted (`HOME/admitted`, one peer id a line),
/// the only ones it places shards on and counts; and those it retired
/// (`retired ID` lines), which no invitation admits again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    pub peers: HashSet<PeerId>,
    pub retired: HashSet<PeerId>,
}

impl Admitted {
    /// `None` when there is no such file (a home from before admission).
    pub fn load(path: &Path) -> Result<Option<Admitted>, NetError> {
        let Some(bytes) = read_if_there(path)? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&bytes);
        let mut out = Admitted::default();
        for l in text.lines().map(str::trim) {
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (retired, id) = match l.strip_prefix("retired ") {
                Some(id) => (true, id.trim()),
                None => (false, l),
            };
            let id: PeerId = id
                .parse()
                .map_err(|_| NetError::Bad(format!("{}: not a peer id: {l}", path.display())))?;
            if retired {
                out.retired.insert(id);
            } else {
                out.peers.insert(id);
            }
        }
        Ok(Some(out))
    }

    pub fn save(&self, path: &Path) -> Result<(), NetError> {
        let mut lines: Vec<String> = self.peers.iter().map(|p| p.to_string()).collect();
        lines.sort();
        let mut retired: Vec<String> = self
            .retired
            .iter()
            .map(|p| format!("retired {p}"))
            .collect();
        retired.sort();
        lines.extend(retired);
        let text = format!(
            "# storage peers this home node places shards on (datamesh peers)\n{}",
            lines.iter().map(|l| format!("{l}\n")).collect::<String>()
        );
        super::write_secret(path, text.as_bytes())
    }
}

/// A member device the home knows (`HOME/members`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its peer id: what it is known by on the mesh.
    pub id: String,
    pub name: String,
    /// Its device public key (hex), which the volume secret was sealed to.
    pub device: String,
    /// Unix seconds.
    pub joined: u64,
    pub last_seen: Option<u64>,
    /// When it was revoked; a revoked device is refused everything.
    pub revoked: Option<u64>,
}

/// The home's member devices (`HOME/members`: JSON, 0600).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    pub version: u32,
    pub list: Vec<Member>,
}

impl Members {
    /// The members at `path`; none when there is no such file.
    pub fn load(path: &Path) -> Result<Members, NetError> {
        match read_if_there(path)? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| {
                NetError::Bad(format!("{}: damaged member list: {e}", path.display()))
            }),
            None => Ok(Members {
                version: 1,
                list: Vec::new(),
            }),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), NetError> {
        let mut text = serde_json::to_vec_pretty(self).expect("members serialize");
        text.push(b'\n');
        super::write_secret(path, &text)
    }

    /// Changes the list at `path` with `f`, read afresh and saved under an
    /// exclusive lock (`PATH.lock`): the daemon noting a member's last
    /// sighting and the CLI revoking one cannot undo each other's change.
    /// The list as saved, and what `f` returned.
    pub fn update<R>(
        path: &Path,
        f: impl FnOnce(&mut Members) -> Result<R, NetError>,
    ) -> Result<(Members, R), NetError> {
        use nix::fcntl::{Flock, FlockArg};
        use std::os::unix::fs::OpenOptionsExt;
        let lock_path = path.with_extension("lock");
        let io = |source: std::io::Error| NetError::Io {
            path: lock_path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io)?;
        let _held = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| io(std::io::Error::from(e)))?;
        let mut list = Members::load(path)?;
        let out = f(&mut list)?;
        list.save(path)?;
        Ok((list, out))
    }

    /// The devices not revoked.
    pub fn active(&self) -> Vec<PeerId> {
        self.list
            .iter()
            .filter(|m| m.revoked.is_none())
            .filter_map(|m| m.id.parse().ok())
            .collect()
    }

    pub fn get_mut(&mut self, id: &PeerId) -> Option<&mut Member> {
        let id = id.to_string();
        self.list.iter_mut().find(|m| m.id == id)
    }
}

#[derive(Serialize, Deserialize)]
struct TokenV1 {
    mesh_key: [u8; 32],
    bootstrap: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct TokenV2 {
    mesh_key: [u8; 32],
    home: Vec<u8>,
    bootstrap: Vec<String>,
    expires: u64,
    /// Makes every token, and so its admission secret, its own.
    nonce: [u8; 16],
}

const V1: &str = "dmjoin1";
const V2: &str = "dmjoin2";
/// A member device's token: a `dmjoin2` body with its own prefix and its own
/// secret, so that neither kind of token admits the other kind of peer.
const MEMBER: &str = "dmmember1";

fn member_secret(token_body: &[u8]) -> [u8; 32] {
    blake3::derive_key("datamesh 2026 member secret", token_body)
}

impl JoinToken {
    /// A `dmjoin2` token, and its admission secret (what the home keeps in
    /// its invitations, and the peer proves it holds).
    pub fn encode(&self, home: PeerId, expires: u64) -> (String, [u8; 32]) {
        let (body, token) = self.encode_as(V2, home, expires);
        (token, admission_secret(&body))
    }

    /// A member device's token (`dmmember1`), and the secret the device
    /// proves it holds when it joins.
    pub fn encode_member(&self, home: PeerId, expires: u64) -> (String, [u8; 32]) {
        let (body, token) = self.encode_as(MEMBER, home, expires);
        (token, member_secret(&body))
    }

    /// Reads a member device's token; refused once expired.
    pub fn decode_member(s: &str, now: u64) -> Result<JoinToken, NetError> {
        let bad = |why: &str| NetError::Bad(format!("member token: {why}"));
        let s = s.trim();
        let Some(hexed) = s.strip_prefix(MEMBER) else {
            return Err(bad(if s.starts_with("dmjoin") {
                "this is a storage peer's token (for `datamesh node --join`); \
                 ask for a member's: `datamesh invite --member` on the home node"
            } else {
                "does not start with dmmember1 (copy the last line of `datamesh invite --member`)"
            }));
        };
        let (t, body) = check_body(hexed, &bad)?;
        let mut t = JoinToken::from_v2(t, &bad)?;
        t.admit = Some(member_secret(&body));
        if t.expires.is_some_and(|e| e <= now) {
            return Err(bad(
                "it has expired: ask for a new one (`datamesh invite --member` on the home node)",
            ));
        }
        Ok(t)
    }

    fn from_v2(t: TokenV2, bad: &dyn Fn(&str) -> NetError) -> Result<JoinToken, NetError> {
        let home = PeerId::from_bytes(&t.home).map_err(|_| bad("damaged home id"))?;
        let bootstrap = t
            .bootstrap
            .iter()
            .map(|a| a.parse().map_err(|_| bad(&format!("bad address {a}"))))
            .collect::<Result<_, _>>()?;
        Ok(JoinToken {
            key: MeshKey(t.mesh_key),
            home: Some(home),
            bootstrap,
            expires: Some(t.expires),
            admit: None,
        })
    }

    /// The token's body and its text, `prefix` + hex(body ‖ checksum).
    fn encode_as(&self, prefix: &str, home: PeerId, expires: u64) -> (Vec<u8>, String) {
        let body = postcard::to_allocvec(&TokenV2 {
            mesh_key: self.key.0,
            home: home.to_bytes(),
            bootstrap: self.bootstrap.iter().map(|a| a.to_string()).collect(),
            expires,
            nonce: rand::random(),
        })
        .expect("tokens serialize");
        let token = format!("{prefix}{}", crate::util::hex_checked(&body));
        (body, token)
    }

    /// Reads a token (`dmjoin2`, or the older `dmjoin1`) and refuses it once
    /// expired; `now` in unix seconds.
    pub fn decode(s: &str, now: u64) -> Result<JoinToken, NetError> {
        let t = JoinToken::decode_any_age(s)?;
        if t.expires.is_some_and(|e| e <= now) {
            return Err(NetError::Bad(
                "join token: it has expired: ask for a new one (`datamesh invite` on the home node)"
                    .into(),
            ));
        }
        Ok(t)
    }

    /// Reads a token whatever its expiry (a peer that joined with it already
    /// may be started with it again).
    pub fn decode_any_age(s: &str) -> Result<JoinToken, NetError> {
        let bad = |why: &str| NetError::Bad(format!("join token: {why}"));
        let s = s.trim();
        let (v2, hexed) = match (s.strip_prefix(V2), s.strip_prefix(V1)) {
            (Some(h), _) => (true, h),
            (None, Some(h)) => (false, h),
            _ => {
                return Err(bad(
                    "does not start with dmjoin2 (copy the last line of `datamesh invite`)",
                ));
            }
        };
        if v2 {
            let (t, body) = check_body(hexed, &bad)?;
            let mut t = JoinToken::from_v2(t, &bad)?;
            t.admit = Some(admission_secret(&body));
            return Ok(t);
        }
        let bytes = hex::decode(hexed).map_err(|_| {
            bad("not hex after the prefix (a character was mistyped, or the token was cut)")
        })?;
        let (t, rest): (TokenV1, _) =
            postcard::take_from_bytes(&bytes).map_err(|_| bad("damaged"))?;
        if !rest.is_empty() {
            return Err(bad("damaged (bytes after its end)"));
        }
        Ok(JoinToken {
            key: MeshKey(t.mesh_key),
            home: None,
            bootstrap: t
                .bootstrap
                .iter()
                .map(|a| a.parse().map_err(|_| bad(&format!("bad address {a}"))))
                .collect::<Result<_, _>>()?,
            expires: None,
            admit: None,
        })
    }
}

/// A `dmjoin2`-style token's hex (after its prefix): the body, checked
/// against its checksum, and what it says.
fn check_body(hexed: &str, bad: &dyn Fn(&str) -> NetError) -> Result<(TokenV2, Vec<u8>), NetError> {
    let body = crate::util::unhex_checked(hexed).map_err(bad)?;
    let (t, rest): (TokenV2, _) = postcard::take_from_bytes(&body).map_err(|_| bad("damaged"))?;
    if !rest.is_empty() {
        return Err(bad("damaged (bytes after its end)"));
    }
    Ok((t, body))
}

#[cfg(test)]
mod tests;
