//! Who may use the WebDAV gateway: users kept in config.toml
//! (`[[webdav.users]]`: a name, an argon2id hash of the password, and
//! whether the user may only read), asked with HTTP Basic authentication.

use axum::http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// The password's argon2id hash (a PHC string).
    pub hash: String,
    #[serde(default)]
    pub read_only: bool,
}

/// A new argon2id hash of `password` (random salt).
pub fn hash_password(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
        .expect("argon2 hashes any password")
        .to_string()
}

/// A user name as config.toml keeps it: letters, digits, `.`, `_`, `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?}: a user name is 1 to 64 letters, digits, '.', '_' or '-'"
        ))
    }
}

/// What a request may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No or wrong credentials: 401.
    Denied,
    ReadOnly,
    ReadWrite,
}

/// The users, and the credentials already verified (argon2 is slow on
/// purpose, and a client sends them with every request). Verified pairs
/// are kept as a keyed hash, never in clear. The list follows config.toml:
/// a user added or removed there is served or refused within a second,
/// without a restart.
pub struct Users {
    known: Mutex<Known>,
    key: [u8; 32],
    /// With no users: everyone may (a loopback listener) or no one may.
    open_when_none: bool,
    source: Option<Source>,
}

/// The users and the pairs verified against this very list (one lock: a
/// reload clears them together, so a verified index always means the user
/// it was verified as).
struct Known {
    users: Vec<User>,
    verified: HashMap<[u8; 32], usize>,
    /// Bumped at each reload: a verification that raced one is not kept.
    generation: u64,
}

/// Reads the users from their file.
pub type ReadUsers = dyn Fn(&std::path::Path) -> Result<Vec<User>, String> + Send + Sync;

/// Where the list is read again from when the file changes.
pub struct Source {
    pub path: std::path::PathBuf,
    pub read: Box<ReadUsers>,
    /// The file's modification time and length when last read, and when it
    /// was last looked at.
    seen: Mutex<(Option<Stamp>, Option<std::time::Instant>)>,
}

impl Source {
    pub fn new(
        path: std::path::PathBuf,
        read: impl Fn(&std::path::Path) -> Result<Vec<User>, String> + Send + Sync + 'static,
    ) -> Source {
        let seen = stamp(&path);
        Source {
            path,
            read: Box::new(read),
            seen: Mutex::new((seen, Some(std::time::Instant::now()))),
        }
    }
}

/// A file's modification time and length.
type Stamp = (std::time::SystemTime, u64);

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())))
}

impl Users {
    pub fn new(list: Vec<User>, open_when_none: bool, source: Option<Source>) -> Users {
        Users {
            known: Mutex::new(Known {
                users: list,
                verified: HashMap::new(),
                generation: 0,
            }),
            key: rand::random(),
            open_when_none,
            source,
        }
    }

    /// Reads the list again if its file changed (looked at once a second).
    fn follow(&self) {
        let Some(src) = &self.source else { return };
        {
            let mut seen = crate::util::lock(&src.seen);
            if seen
                .1
                .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1))
            {
                return;
            }
            seen.1 = Some(std::time::Instant::now());
            let now = stamp(&src.path);
            if seen.0 == now {
                return;
            }
            seen.0 = now;
        }
        match (src.read)(&src.path) {
            Ok(list) => {
                tracing::info!("webdav: {} users from {}", list.len(), src.path.display());
                let mut known = crate::util::lock(&self.known);
                known.users = list;
                known.verified.clear();
                known.generation += 1;
            }
            Err(e) => tracing::warn!(
                "webdav: {} changed but cannot be read ({e}); the users stay as they were",
                src.path.display()
            ),
        }
    }

    /// What the request's `Authorization` header lets it do.
    pub fn access(&self, headers: &HeaderMap) -> Access {
        use base64::Engine as _;
        self.follow();
        let access = |u: &User| {
            if u.read_only {
                Access::ReadOnly
            } else {
                Access::ReadWrite
            }
        };
        if crate::util::lock(&self.known).users.is_empty() {
            return if self.open_when_none {
                Access::ReadWrite
            } else {
                Access::Denied
            };
        }
        let Some((name, password)) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(n, p)| (n.to_string(), p.to_string()))
            })
        else {
            return Access::Denied;
        };
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(name.as_bytes());
        h.update(&[0]);
        h.update(password.as_bytes());
        let seen = *h.finalize().as_bytes();
        let (index, user, generation) = {
            let known = crate::util::lock(&self.known);
            if let Some(&i) = known.verified.get(&seen) {
                return access(&known.users[i]);
            }
            let Some(i) = known.users.iter().position(|u| u.name == name) else {
                return Access::Denied;
            };
            (i, known.users[i].clone(), known.generation)
        };
        // Off the lock: argon2 takes a while on purpose.
        if !verify(&user.hash, &password) {
            tracing::warn!("webdav: wrong password for {name}");
            return Access::Denied;
        }
        let mut known = crate::util::lock(&self.known);
        if known.generation == generation {
            if known.verified.len() > 4096 {
                known.verified.clear();
            }
            known.verified.insert(seen, index);
        }
        access(&user)
    }
}

fn verify(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Methods that change nothing (all a read-only user may send).
pub fn reads_only(m: &Method) -> bool {
    matches!(m.as_str(), "GET" | "HEAD" | "OPTIONS" | "PROPFIND")
}

/// In front of everything a listener with users serves (WebDAV, the
/// dashboard, metrics): 401 asking for Basic credentials without valid ones,
/// 403 for a read-only user's change.
pub async fn require(
    axum::extract::State(users): axum::extract::State<std::sync::Arc<Users>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let access = {
        let (users, headers) = (users.clone(), req.headers().clone());
        // argon2 is slow on purpose: off the async threads.
        tokio::task::spawn_blocking(move || users.access(&headers))
            .await
            .unwrap_or(Access::Denied)
    };
    match access {
        Access::Denied => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"datamesh\"")],
        )
            .into_response(),
        Access::ReadOnly if !reads_only(req.method()) => {
            (StatusCode::FORBIDDEN, "read-only user\n").into_response()
        }
        _ => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn basic(name: &str, pw: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{name}:{pw}"));
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Basic {v}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn users_are_told_apart_by_password_and_read_only_ones_marked() {
        let users = Users::new(
            vec![
                User {
                    name: "alice".into(),
                    hash: hash_password("s3cret"),
                    read_only: false,
                },
                User {
                    name: "bob".into(),
                    hash: hash_password("pw"),
                    read_only: true,
                },
            ],
            false,
            None,
        );
        assert_eq!(users.access(&basic("alice", "s3cret")), Access::ReadWrite);
        // Again: this answer comes from the verified pairs.
        assert_eq!(users.access(&basic("alice", "s3cret")), Access::ReadWrite);
        assert_eq!(users.access(&basic("alice", "wrong")), Access::Denied);
        assert_eq!(users.access(&basic("bob", "pw")), Access::ReadOnly);
        assert_eq!(users.access(&basic("carol", "pw")), Access::Denied);
        assert_eq!(users.access(&HeaderMap::new()), Access::Denied);
        assert!(check_name("a-b.c_d").is_ok() && check_name("a b").is_err());
    }
}
