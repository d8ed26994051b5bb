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

    /// Whether anyone may use the listener unasked (loopback, no users):
    /// then only requests that name a loopback host are served.
    fn open(&self) -> bool {
        self.open_when_none && crate::util::lock(&self.known).users.is_empty()
    }

    /// What the request's `Authorization` header lets it do (the slow
    /// verification run here, on this thread: see [`Users::check`]).
    pub fn access(&self, headers: &HeaderMap) -> Access {
        match self.check(headers) {
            Checked::Known(a) => a,
            Checked::Verify(v) => self.finish(*v),
        }
    }

    /// What the request's credentials let it do when that is known without
    /// argon2 (none given, no users, a pair verified before), else the
    /// verification to run.
    fn check(&self, headers: &HeaderMap) -> Checked {
        self.follow();
        let access = |u: &User| {
            if u.read_only {
                Access::ReadOnly
            } else {
                Access::ReadWrite
            }
        };
        if crate::util::lock(&self.known).users.is_empty() {
            return Checked::Known(if self.open_when_none {
                Access::ReadWrite
            } else {
                Access::Denied
            });
        }
        let Some((name, password)) = basic(headers) else {
            return Checked::Known(Access::Denied);
        };
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(name.as_bytes());
        h.update(&[0]);
        h.update(password.as_bytes());
        let seen = *h.finalize().as_bytes();
        let known = crate::util::lock(&self.known);
        if let Some(&i) = known.verified.get(&seen) {
            return Checked::Known(access(&known.users[i]));
        }
        // An unknown name is verified too, against a hash of nothing, so the
        // answer takes as long and says no more than a wrong password.
        let user = known
            .users
            .iter()
            .position(|u| u.name == name)
            .map(|i| (i, known.users[i].clone()));
        Checked::Verify(Box::new(Pending {
            seen,
            user,
            name,
            password,
            generation: known.generation,
        }))
    }

    /// Runs a verification (slow: argon2, off the lock) and keeps the pair
    /// when it holds.
    fn finish(&self, v: Pending) -> Access {
        let hash = match &v.user {
            Some((_, u)) => u.hash.as_str(),
            None => dummy_hash(),
        };
        let good = verify(hash, &v.password);
        let Some((index, user)) = v.user.filter(|_| good) else {
            tracing::warn!("webdav: wrong name or password for {:?}", v.name);
            return Access::Denied;
        };
        let mut known = crate::util::lock(&self.known);
        if known.generation == v.generation {
            if known.verified.len() > 4096 {
                known.verified.clear();
            }
            known.verified.insert(v.seen, index);
        }
        if user.read_only {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        }
    }
}

/// The name and password of a request's Basic credentials.
fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine as _;
    headers
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
}

/// Who a request is, as the gate let it in (an extension of every request
/// it passed): the user (none on a gateway open to this host) and what it
/// may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: Option<String>,
    pub access: Access,
}

/// Either the answer, or the argon2 verification it waits for.
enum Checked {
    Known(Access),
    Verify(Box<Pending>),
}

/// A verification to run: the user named (`None`: no such user), the
/// password given, and the list's generation when it was read.
struct Pending {
    seen: [u8; 32],
    user: Option<(usize, User)>,
    name: String,
    password: String,
    generation: u64,
}

/// A hash no password is known to match, verified for unknown names.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password(&hex::encode(rand::random::<[u8; 16]>())))
}

/// argon2 verifications run at once, each on a thread of its own kept for
/// it (`datamesh-login`: each takes 19 MiB, which the allocator keeps per
/// thread, so verifications on tokio's blocking pool, up to 512 threads,
/// grew the daemon by gigabytes); at most [`MAX_WAITING`] more wait, then
/// the answer is 503.
const VERIFYING: usize = 2;
const MAX_WAITING: usize = 32;
/// Verifications a second one address may ask for (a burst of
/// [`ATTEMPT_BURST`]); past it the answer is 429 until it slows down.
const ATTEMPTS_PER_SEC: u32 = 2;
const ATTEMPT_BURST: u32 = 20;

type Job = Box<dyn FnOnce() + Send>;

/// What bounds the cost of logins: the verifications at once and waiting,
/// and those one source address asks for. Its keys are the addresses that
/// asked: [`Gate::forget_idle`] drops the quiet ones. Its threads end when
/// it is dropped.
pub struct Gate {
    jobs: crossbeam_channel::Sender<Job>,
    attempts: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
}

impl Gate {
    pub fn new() -> std::io::Result<Gate> {
        let (jobs, todo) = crossbeam_channel::bounded::<Job>(MAX_WAITING);
        for _ in 0..VERIFYING {
            let todo = todo.clone();
            std::thread::Builder::new()
                .name("datamesh-login".into())
                .spawn(move || {
                    for job in todo {
                        job();
                    }
                })?;
        }
        let per_sec = std::num::NonZeroU32::new(ATTEMPTS_PER_SEC).expect("not zero");
        let burst = std::num::NonZeroU32::new(ATTEMPT_BURST).expect("not zero");
        Ok(Gate {
            jobs,
            attempts: governor::RateLimiter::keyed(
                governor::Quota::per_second(per_sec).allow_burst(burst),
            ),
        })
    }

    /// Drops the addresses whose bucket is full again (called by the
    /// listener's worker now and then, so many addresses take no memory).
    pub fn forget_idle(&self) {
        self.attempts.retain_recent();
        self.attempts.shrink_to_fit();
    }
}

/// Whether `password` hashes to `hash` (a PHC string). The argon2 memory
/// (19 MiB with the default cost) is kept by the thread and used again:
/// allocated afresh for each login, it was left behind by the allocator
/// (about 9 MiB a login until the next trim), so a burst of logins grew the
/// daemon by hundreds of MiB.
fn verify(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{Output, PasswordHash};
    use argon2::{Algorithm, Argon2, Block, Params, Version};
    thread_local! {
        static MEMORY: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let Ok(h) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params), Some(salt), Some(expected)) = (
        Algorithm::try_from(h.algorithm),
        Params::try_from(&h),
        h.salt,
        h.hash,
    ) else {
        return false;
    };
    let version = match h.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let blocks = params.block_count();
    let argon = Argon2::new(algorithm, version, params);
    let hashed = MEMORY.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() < blocks {
            m.resize(blocks, Block::default());
        }
        argon.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut m[..blocks])
    });
    // `Output`'s comparison takes the same time wherever they differ.
    hashed.is_ok() && Output::new(&out).is_ok_and(|o| o == expected)
}

/// Whether the request's `Host` names this host's loopback (any port).
fn names_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        // HTTP/1.0 without a Host: no browser sends that.
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Methods that change nothing (all a read-only user may send).
pub fn reads_only(m: &Method) -> bool {
    matches!(m.as_str(), "GET" | "HEAD" | "OPTIONS" | "PROPFIND")
}

/// In front of everything a listener with users serves (WebDAV, the
/// dashboard, metrics): 401 asking for Basic credentials without valid ones,
/// 403 for a read-only user's change.
pub async fn require(
    axum::extract::State((users, gate)): axum::extract::State<(
        std::sync::Arc<Users>,
        std::sync::Arc<Gate>,
    )>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    // Open to this host: a web page on another site that resolves its own
    // name to 127.0.0.1 (DNS rebinding) sends its own name as the Host.
    if users.open() && !names_loopback(req.headers()) {
        return (
            StatusCode::FORBIDDEN,
            "this gateway has no users and answers only requests to a loopback \
             host name (localhost, 127.0.0.1, [::1])\n",
        )
            .into_response();
    }
    let source = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let checked = {
        let users = users.clone();
        let headers = req.headers().clone();
        // Reading the list may read config.toml: off the async threads.
        tokio::task::spawn_blocking(move || users.check(&headers))
            .await
            .unwrap_or(Checked::Known(Access::Denied))
    };
    let access = match checked {
        Checked::Known(a) => a,
        Checked::Verify(v) => {
            // A source that asks for too many verifications waits before it
            // may try again (a client that logged in is not verified again:
            // its pair is kept).
            if let Some(ip) = source
                && gate.attempts.check_key(&ip).is_err()
            {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, "1")],
                    "too many failed logins from this address; try again later\n",
                )
                    .into_response();
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let u = users.clone();
            let job: Job = Box::new(move || {
                let _ = tx.send(u.finish(*v));
            });
            if gate.jobs.try_send(job).is_err() {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "1")],
                    "too many logins at once; try again\n",
                )
                    .into_response();
            }
            rx.await.unwrap_or(Access::Denied)
        }
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
        access => {
            let name = (!users.open())
                .then(|| basic(req.headers()).map(|(n, _)| n))
                .flatten();
            let mut req = req;
            req.extensions_mut().insert(Caller { name, access });
            next.run(req).await
        }
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

    #[test]
    fn only_loopback_host_names_are_loopback() {
        let host = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(axum::http::header::HOST, h.parse().unwrap());
            names_loopback(&m)
        };
        for h in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(host(h), "{h}");
        }
        for h in [
            "attacker.example",
            "attacker.example:8080",
            "10.0.0.1",
            "localhost.evil",
            "[::2]",
        ] {
            assert!(!host(h), "{h}");
        }
    }
}
