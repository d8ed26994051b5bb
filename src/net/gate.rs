//! A storage peer's gate: what each caller may ask, by its authenticated
//! peer id and the roles the home gave this peer (docs/DESIGN.md, "Roles"),
//! and the home-only requests that change those roles, the root record and
//! the mesh key ring.

use super::proto::{Request, Response};
use super::root::{RootState, Taken};
use super::{LiveKeys, MeshKeys, Roles};

/// Lets through only what the caller's role allows (docs/DESIGN.md, "Roles").
pub(super) struct Gate {
    /// `None`: a data dir from before roles, open to every mesh-key holder.
    roles: Option<Roles>,
    /// Where the roles are kept (`DIR/roles`).
    path: std::path::PathBuf,
    /// (caller, right) pairs refused already: each is logged once.
    logged: std::collections::HashSet<(libp2p::PeerId, &'static str)>,
    /// The volume's newest root record (`DIR/root`), once a home sent one.
    root: Option<RootState>,
    root_path: std::path::PathBuf,
    /// Where the mesh key ring is kept (`DIR/mesh.key`).
    keys_path: std::path::PathBuf,
    /// Whether the home sent the member list since this peer started: until
    /// then members are refused, so that a revocation made while this peer
    /// was down is never missed (docs/DESIGN.md, "Mesh key rotation").
    heard_members: bool,
}

impl Gate {
    pub(super) fn new(
        roles: Option<Roles>,
        path: std::path::PathBuf,
        root: Option<RootState>,
        root_path: std::path::PathBuf,
        keys_path: std::path::PathBuf,
    ) -> Gate {
        Gate {
            roles,
            path,
            logged: std::collections::HashSet::new(),
            root,
            root_path,
            keys_path,
            heard_members: false,
        }
    }

    /// `MeshKeys`: keeps the home's ring when it is newer, hands it to the
    /// transport, and cuts off every connected peer it does not allow.
    pub(super) fn take_keys(
        &mut self,
        live: &LiveKeys,
        ring: &[u8],
        swarm: &mut libp2p::Swarm<super::Behaviour>,
    ) -> Response {
        let ring = match MeshKeys::decode(ring, "the home's mesh key ring") {
            Ok(r) => r,
            Err(e) => return Response::Failed(e.to_string()),
        };
        if ring.generation() <= live.generation() {
            return Response::Done;
        }
        if let Err(e) = ring.save(&self.keys_path) {
            return Response::Failed(format!("keeping the mesh key ring: {e}"));
        }
        let generation = ring.generation();
        let allowed: std::collections::HashSet<libp2p::PeerId> =
            ring.allowed().iter().copied().collect();
        live.take_newer(ring);
        let home = self.roles.as_ref().and_then(Roles::home);
        let cut: Vec<libp2p::PeerId> = swarm
            .connected_peers()
            .filter(|p| !allowed.contains(p) && Some(**p) != home)
            .copied()
            .collect();
        for p in &cut {
            let _ = swarm.disconnect_peer_id(*p);
        }
        tracing::warn!(
            "the mesh key was rotated (generation {generation}): older keys are taken \
             only from the {} peers the home allows; cut off {}",
            allowed.len(),
            cut.len()
        );
        Response::Done
    }

    /// `PutRoot`: keeps the record if it is the newest, and follows a
    /// recovery to its new home (docs/DESIGN.md, "Namespace protection").
    pub(super) fn put_root(&mut self, from: &libp2p::PeerId, record: &[u8]) -> Response {
        let Some(roles) = self.roles.as_mut() else {
            return Response::Failed("this peer has no roles (an older token)".into());
        };
        let is_home = roles.role_of(from) == super::Role::Home;
        let (next, taken) = match RootState::take(self.root.as_ref(), from, is_home, record) {
            Ok(t) => t,
            Err(why) => {
                tracing::warn!("refused a root record from {from}: {why}");
                return Response::Refused(why);
            }
        };
        if taken == Taken::Older {
            return Response::Done;
        }
        if let Taken::Rehomed { from: old, to } = &taken {
            roles.set_home(to);
            if let Err(e) = roles.save(&self.path) {
                return Response::Failed(format!("keeping the new home: {e}"));
            }
            let name = |b: &[u8]| {
                libp2p::PeerId::from_bytes(b).map_or_else(|_| "?".into(), |p| p.to_string())
            };
            tracing::warn!(
                "the volume was recovered: its home is now {} (epoch {}); {} is fenced",
                name(to),
                next.epoch,
                name(old)
            );
        }
        if let Err(e) = next.save(&self.root_path) {
            return Response::Failed(format!("keeping the root record: {e}"));
        }
        if self.root.as_ref().is_some_and(|r| r.key != next.key) {
            tracing::info!(
                "the volume's root records are signed by its authority key from now on \
                 (handed over by the home, {from}); the key before is refused"
            );
        }
        self.root = Some(next);
        Response::Done
    }

    pub(super) fn get_root(&self) -> Response {
        Response::Root(
            self.root
                .as_ref()
                .map(|r| serde_bytes::ByteBuf::from(r.record.clone())),
        )
    }

    /// The answer to the home's `Hello`: proof of the token this peer joined with.
    pub(super) fn hello(&self, me: &libp2p::PeerId) -> Response {
        match self.roles.as_ref().and_then(Roles::admit) {
            Some(secret) => Response::Hello {
                proof: super::trust::admission_proof(secret, me),
            },
            None => Response::Failed(
                "this peer joined without an admission secret (an older token): \
                 join it again with a token from `datamesh invite`"
                    .into(),
            ),
        }
    }

    /// The home's list of member devices, kept from now on (and on disk).
    pub(super) fn set_members(&mut self, ids: Vec<Vec<u8>>) -> Response {
        let Some(roles) = self.roles.as_mut() else {
            return Response::Failed("this peer has no roles (an older token)".into());
        };
        self.heard_members = true;
        if roles.members() == ids.as_slice() {
            return Response::Done;
        }
        roles.set_members(ids);
        match roles.save(&self.path) {
            Ok(()) => {
                tracing::info!("member devices: {}", roles.members().len());
                Response::Done
            }
            Err(e) => Response::Failed(format!("keeping the member list: {e}")),
        }
    }

    /// The refusal to send, when `from` may not ask `req`.
    pub(super) fn check(&mut self, from: &libp2p::PeerId, req: &Request) -> Option<Response> {
        let role = self.roles.as_ref()?.role_of(from);
        if role == super::Role::Member && !self.heard_members && !req.is_root() {
            return Some(Response::Refused(format!(
                "{from} is a member device, and this storage peer has not heard from the \
                 home node since it started (it serves members once the home has told it \
                 who they are)"
            )));
        }
        if role.may(req) {
            return None;
        }
        let right = req.right();
        if let Some(fenced) = self.root.as_ref().and_then(|r| r.fenced(from)) {
            if self.logged.len() < 4096 && self.logged.insert((*from, "fenced")) {
                tracing::warn!("refused {right} from {from}: {fenced}");
            }
            return Some(Response::Refused(fenced));
        }
        if self.logged.len() < 4096 && self.logged.insert((*from, right)) {
            tracing::warn!("refused {right} from {from}: it is {}", role.name());
        }
        Some(Response::Refused(format!(
            "{from} may not {right} on this peer: it is {}",
            role.name()
        )))
    }
}
