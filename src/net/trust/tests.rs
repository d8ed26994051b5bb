//! Tests of tokens, invitations, admission and the member list.

use super::*;
use proptest::prelude::*;

/// Writers changing the member list at once (the daemon noting
/// sightings, the CLI revoking) each keep their change.
#[test]
fn concurrent_updates_of_the_member_list_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("members");
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let path = path.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    Members::update(&path, |l| {
                        l.list.push(Member {
                            id: format!("{w}-{i}"),
                            name: String::new(),
                            device: String::new(),
                            joined: 0,
                            last_seen: None,
                            revoked: None,
                        });
                        Ok(())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(Members::load(&path).unwrap().list.len(), 200);
}

fn token() -> (JoinToken, PeerId) {
    let t = JoinToken {
        key: MeshKey::generate(),
        home: None,
        bootstrap: vec!["/ip4/127.0.0.1/tcp/4100".parse().unwrap()],
        expires: None,
        admit: None,
    };
    (t, PeerId::random())
}

#[test]
fn tokens_round_trip_and_carry_the_home() {
    let (t, home) = token();
    let (s, secret) = t.encode(home, 2000);
    let back = JoinToken::decode(&s, 1000).unwrap();
    assert!(back.key == t.key);
    assert_eq!(back.home, Some(home));
    assert_eq!(back.bootstrap, t.bootstrap);
    assert_eq!(back.expires, Some(2000));
    assert_eq!(back.admit, Some(secret));
    // Two tokens with the same contents still have their own secrets.
    assert_ne!(t.encode(home, 2000).1, secret);
    let err = JoinToken::decode(&s, 2000).err().unwrap().to_string();
    assert!(err.contains("expired"), "{err}");
    assert!(JoinToken::decode("hello", 0).is_err());
    assert!(JoinToken::decode(&format!("{s}00"), 1000).is_err());
}

#[test]
fn old_tokens_are_still_read_without_a_home() {
    let (t, _) = token();
    let body = postcard::to_allocvec(&TokenV1 {
        mesh_key: t.key.0,
        bootstrap: vec!["/ip4/127.0.0.1/tcp/4100".into()],
    })
    .unwrap();
    let back = JoinToken::decode(&format!("dmjoin1{}", hex::encode(body)), 0).unwrap();
    assert!(back.key == t.key);
    assert_eq!(back.home, None);
}

proptest! {
    /// Any one character changed, or the token cut anywhere: refused.
    #[test]
    fn a_mistyped_or_cut_token_is_refused(at in 7usize..200, c in "[0-9a-f]", cut in 8usize..200) {
        let (t, home) = token();
        let (s, _) = t.encode(home, u64::MAX);
        let at = at % s.len();
        let mut typo: Vec<char> = s.chars().collect();
        prop_assume!(at >= 7 && typo[at] != c.chars().next().unwrap());
        typo[at] = c.chars().next().unwrap();
        let typo: String = typo.into_iter().collect();
        prop_assert!(JoinToken::decode(&typo, 0).is_err());
        let cut = cut % s.len();
        prop_assert!(JoinToken::decode(&s[..cut], 0).is_err());
    }
}

#[test]
fn an_invitation_admits_as_many_peers_as_it_allows_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("invites");
    let (t, home) = token();
    let (_, secret) = t.encode(home, 100);
    Invites::add(&path, secret, 100, 2, 10).unwrap();
    let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
    // A proof made for another peer does not admit this one.
    assert!(!Invites::redeem(&path, &b, &admission_proof(&secret, &a), 10).unwrap());
    assert!(Invites::redeem(&path, &a, &admission_proof(&secret, &a), 10).unwrap());
    // Expired: refused even with uses left.
    assert!(!Invites::redeem(&path, &b, &admission_proof(&secret, &b), 100).unwrap());
    assert!(Invites::redeem(&path, &b, &admission_proof(&secret, &b), 11).unwrap());
    // Used up.
    assert!(!Invites::redeem(&path, &c, &admission_proof(&secret, &c), 12).unwrap());
    let adm = dir.path().join("admitted");
    assert_eq!(Admitted::load(&adm).unwrap(), None);
    let list = Admitted {
        peers: [a, b].into(),
        retired: [c].into(),
    };
    list.save(&adm).unwrap();
    assert_eq!(Admitted::load(&adm).unwrap(), Some(list));
}

#[test]
fn only_the_home_may_delete_or_list() {
    let home = PeerId::random();
    let roles = Roles::new(home, None);
    let del = Request::Delete { ids: vec![] };
    let list = Request::List {
        after: None,
        max: 1,
    };
    assert!(roles.role_of(&home).may(&del) && roles.role_of(&home).may(&list));
    let other = roles.role_of(&PeerId::random());
    assert_eq!(other, Role::Other);
    assert!(!other.may(&del) && !other.may(&list) && !other.may(&Request::Stat));
    let get = Request::Get {
        id: crate::chunk::ShardId([1; 32]),
    };
    let verify = Request::Verify {
        after: None,
        max: 1,
    };
    assert!(!other.may(&get) && !other.may(&verify) && !other.may(&Request::Hello));
    assert!(Role::Member.may(&get) && !Role::Member.may(&verify));
    assert!(Role::Member.may(&Request::Stat) && !Role::Member.may(&del));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("roles");
    assert_eq!(Roles::load(&path).unwrap(), None);
    roles.save(&path).unwrap();
    assert_eq!(Roles::load(&path).unwrap(), Some(roles));
    std::fs::write(&path, b"junk").unwrap();
    assert!(Roles::load(&path).is_err());
}
