//! The web dashboard: a page at `/` of the daemon's HTTP listeners (WebDAV,
//! metrics) showing the volume, its peers, chunk health, the passes running,
//! the workers, recent errors and throughput. [`Board`] holds what the page
//! shows and is fed by the workers `dashboard` (a sample of the counters each
//! second) and `dashboard-figures` (usage, peers and a survey, only while
//! someone looks); [`page`] renders it; [`router`] serves it. See
//! docs/DESIGN.md, "Web dashboard".

pub mod page;
pub mod recent;

use crate::data::{Engine, Pass, Redundancy, Usage};
use crate::store::PeerStatus;
use crate::util::lock;
use crate::workers::{Runner, WorkerInfo};
use serde::Serialize;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Samples kept: one a second, ten minutes.
const SAMPLES: usize = 600;
/// The expensive figures are refreshed only this long after a page was asked.
const VIEWED: Duration = Duration::from_secs(120);
/// And at most this often: the usage walks every inode and chunk, the peers
/// answer a `Stat` each, a survey asks every peer for its inventory.
const USAGE_EVERY: Duration = Duration::from_secs(15);
const PEERS_EVERY: Duration = Duration::from_secs(3);
const SURVEY_EVERY: Duration = Duration::from_secs(60);

/// The counters, at one moment.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Unix milliseconds.
    at: u64,
    read: u64,
    written: u64,
    ops: u64,
}

impl Sample {
    fn now() -> Sample {
        let m = crate::metrics::get();
        Sample {
            at: now_ms(),
            read: m.bytes_read.get(),
            written: m.bytes_written.get(),
            ops: m.file_ops.get(),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A figure that costs something to make, with when it was made and how
/// long that took.
struct Cached<T> {
    value: Option<(u64, Result<T, String>)>,
    made: Option<Instant>,
    took: Duration,
}

impl<T> Default for Cached<T> {
    fn default() -> Self {
        Cached {
            value: None,
            made: None,
            took: Duration::ZERO,
        }
    }
}

/// A figure is made again at most every `every`, and never more than 1/20
/// of the time: a walk of a million inodes that takes 2 s runs every 40 s.
const BUSY_SHARE: u32 = 20;

impl<T: Clone> Cached<T> {
    fn due(&self, every: Duration) -> bool {
        let every = every.max(self.took * BUSY_SHARE);
        self.made.is_none_or(|t| t.elapsed() >= every)
    }

    /// `make`'s answer, as of now.
    fn make(&mut self, make: impl FnOnce() -> Result<T, String>) {
        let start = Instant::now();
        let value = make();
        self.took = start.elapsed();
        self.made = Some(Instant::now());
        self.value = Some((crate::net::trust::now_secs(), value));
    }

    fn dated(&self) -> Option<Dated<T>> {
        self.value.as_ref().map(|(at, value)| Dated {
            at: *at,
            value: value.clone(),
        })
    }
}

#[derive(Default)]
struct State {
    samples: VecDeque<Sample>,
    viewed: Option<Instant>,
    usage: Cached<Usage>,
    peers: Cached<Option<Vec<PeerStatus>>>,
    /// When the dashboard last asked for a survey, and its error if it failed.
    survey: Cached<()>,
    /// Storage peers reachable at the last survey: when that changes, the
    /// health shown is stale and a survey is due at once.
    surveyed_reachable: Option<usize>,
}

/// What the dashboard shows, shared by its handlers and workers.
pub struct Board {
    engine: Weak<Engine>,
    runner: Runner,
    /// The home's protection state file; none on a member device.
    protect: Option<PathBuf>,
    state: Mutex<State>,
}

/// Throughput over one sampling interval.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Rate {
    /// Unix milliseconds at the interval's end.
    pub at: u64,
    pub read_bytes_per_sec: f64,
    pub written_bytes_per_sec: f64,
    pub ops_per_sec: f64,
}

/// A figure and when it was made (unix seconds), or why it could not be.
#[derive(Clone, Debug, Serialize)]
pub struct Dated<T> {
    pub at: u64,
    #[serde(flatten)]
    pub value: Result<T, String>,
}

/// Everything the page shows; also `/dashboard.json` (`version` 1; fields
/// are added, never renamed).
#[derive(Clone, Debug, Serialize)]
pub struct View {
    pub version: u32,
    /// Unix seconds.
    pub now: u64,
    pub volume_id: String,
    /// "home" or "member".
    pub role: &'static str,
    pub data_shards: usize,
    pub parity_shards: usize,
    pub usage: Option<Dated<Usage>>,
    /// None until the first answer; `Ok(None)`: no storage peers (one host).
    pub peers: Option<Dated<Option<Vec<PeerStatus>>>>,
    pub survey: Option<Dated<Redundancy>>,
    pub running: Vec<Pass>,
    pub protection: Option<String>,
    pub workers: Vec<WorkerInfo>,
    pub errors: Vec<recent::Logged>,
    pub rates: Vec<Rate>,
}

impl Board {
    /// The board of `engine`, fed by workers of `runner` from now on;
    /// `protect`: the home's protection state file (None on a member).
    pub fn start(
        engine: &Arc<Engine>,
        protect: Option<PathBuf>,
        runner: &Runner,
    ) -> std::io::Result<Arc<Board>> {
        let board = Arc::new(Board {
            engine: Arc::downgrade(engine),
            runner: runner.clone(),
            protect,
            state: Mutex::default(),
        });
        lock(&board.state).samples.push_back(Sample::now());
        let b = Arc::downgrade(&board);
        runner.every("dashboard", Duration::from_secs(1), move || {
            if let Some(b) = b.upgrade() {
                let mut st = lock(&b.state);
                if st.samples.len() == SAMPLES {
                    st.samples.pop_front();
                }
                st.samples.push_back(Sample::now());
            }
            Ok(())
        })?;
        let b = Arc::downgrade(&board);
        runner.every(
            "dashboard-figures",
            Duration::from_secs(1),
            move || match b.upgrade() {
                Some(b) => b.engine.upgrade().map_or(Ok(()), |e| b.refresh(&e)),
                None => Ok(()),
            },
        )?;
        Ok(board)
    }

    /// Makes the figures that are due, while someone looks.
    fn refresh(&self, engine: &Engine) -> Result<(), String> {
        let (viewed, usage, peers, survey, survey_allowed) = {
            let st = lock(&self.state);
            (
                st.viewed.is_some_and(|t| t.elapsed() < VIEWED),
                st.usage.due(USAGE_EVERY),
                st.peers.due(PEERS_EVERY),
                st.survey.due(SURVEY_EVERY),
                // A change of peers makes a survey due before its time,
                // never more often than its cost allows.
                st.survey.due(Duration::ZERO),
            )
        };
        if !viewed {
            return Ok(());
        }
        // Made outside the lock: pages are answered meanwhile.
        let mut reachable = None;
        if peers {
            let mut c = Cached::default();
            c.make(|| Ok(engine.store().peers()));
            if let Some((_, Ok(Some(list)))) = &c.value {
                reachable = Some(list.iter().filter(|p| p.admitted && p.reachable).count());
            }
            lock(&self.state).peers = c;
        }
        let changed = {
            let st = lock(&self.state);
            survey_allowed
                && reachable.is_some()
                && st.surveyed_reachable.is_some_and(|r| Some(r) != reachable)
        };
        // The volume's usage and chunk health are the home's to count.
        if !engine.is_home() {
            return Ok(());
        }
        if usage {
            let mut c = Cached::default();
            c.make(|| engine.usage().map_err(|e| e.to_string()));
            lock(&self.state).usage = c;
        }
        // A survey that ran anyway (status, the repair worker) is recent
        // enough.
        let now = crate::net::trust::now_secs();
        let fresh = engine
            .passes()
            .last()
            .is_some_and(|(at, _)| now.saturating_sub(at) < SURVEY_EVERY.as_secs());
        if (survey && !fresh) || changed {
            let mut c = Cached::default();
            c.make(|| {
                engine
                    .redundancy(false, &|_, _| {})
                    .map(drop)
                    .map_err(|e| e.to_string())
            });
            let failed = c.value.as_ref().and_then(|(_, r)| r.clone().err());
            let mut st = lock(&self.state);
            st.survey = c;
            st.surveyed_reachable = reachable.or(st.surveyed_reachable);
            drop(st);
            if let Some(e) = failed {
                return Err(format!("survey: {e}"));
            }
        }
        Ok(())
    }

    /// What the page shows now; counts as someone looking.
    pub fn view(&self) -> View {
        let engine = self.engine.upgrade();
        let mut st = lock(&self.state);
        st.viewed = Some(Instant::now());
        let usage = st.usage.dated();
        let peers = st.peers.dated();
        let survey_error = st
            .survey
            .value
            .as_ref()
            .and_then(|(at, r)| r.as_ref().err().map(|e| (*at, e.clone())));
        let rates = rates(&st.samples);
        drop(st);
        let (params, passes) = match &engine {
            Some(e) => (
                Some(e.meta().params().clone()),
                Some((e.passes().last(), e.passes().running())),
            ),
            None => (None, None),
        };
        let (last, running) = passes.unwrap_or_default();
        let survey = match (last, survey_error) {
            (Some((at, r)), Some((failed_at, _))) if at >= failed_at => {
                Some(Dated { at, value: Ok(r) })
            }
            (_, Some((at, e))) => Some(Dated { at, value: Err(e) }),
            (Some((at, r)), None) => Some(Dated { at, value: Ok(r) }),
            (None, None) => None,
        };
        let mesh = matches!(
            &peers,
            Some(Dated {
                value: Ok(Some(_)),
                ..
            })
        );
        View {
            version: 1,
            now: crate::net::trust::now_secs(),
            volume_id: params
                .as_ref()
                .map(|p| hex::encode(p.volume_id))
                .unwrap_or_default(),
            role: if self.protect.is_some() {
                "home"
            } else {
                "member"
            },
            data_shards: params.as_ref().map_or(0, |p| p.data_shards as usize),
            parity_shards: params.as_ref().map_or(0, |p| p.parity_shards as usize),
            usage,
            peers,
            survey,
            running,
            protection: self
                .protect
                .as_ref()
                .map(|p| crate::protect::describe(p, mesh)),
            workers: self.runner.list(),
            errors: recent::recent(),
            rates,
        }
    }
}

/// Throughput between consecutive samples.
fn rates(samples: &VecDeque<Sample>) -> Vec<Rate> {
    samples
        .iter()
        .zip(samples.iter().skip(1))
        .filter(|(a, b)| b.at > a.at)
        .map(|(a, b)| {
            let secs = (b.at - a.at) as f64 / 1000.0;
            let per = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
            Rate {
                at: b.at,
                read_bytes_per_sec: per(a.read, b.read),
                written_bytes_per_sec: per(a.written, b.written),
                ops_per_sec: per(a.ops, b.ops),
            }
        })
        .collect()
}

/// `?part=main`: only the part the page's script swaps in.
#[derive(serde::Deserialize)]
struct Query {
    part: Option<String>,
}

/// The dashboard's routes: `/`, `/dashboard.json` and its two assets.
/// `dav`: this listener serves WebDAV at `/dav/` too (the page says how to
/// mount it).
pub fn router(board: Arc<Board>, dav: bool) -> axum::Router {
    use axum::http::header;
    use axum::response::IntoResponse;
    use axum::routing::get;
    // Nothing from elsewhere, no inline script; the SVGs' presentation
    // attributes are not styles.
    const HEADERS: [(header::HeaderName, &str); 3] = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    let b = board.clone();
    let html = move |axum::extract::Query(q): axum::extract::Query<Query>| {
        let b = b.clone();
        async move {
            let view = b.view();
            let body = match q.part.as_deref() {
                Some("main") => page::main(&view, dav),
                _ => page::page(&view, dav),
            };
            (HEADERS, axum::response::Html(body)).into_response()
        }
    };
    let json = move || {
        let b = board.clone();
        async move { (HEADERS, axum::Json(b.view())).into_response() }
    };
    let asset = |body: &'static str, kind: &'static str| {
        get(move || async move { ([(header::CONTENT_TYPE, kind)], body) })
    };
    axum::Router::new()
        .route("/", get(html))
        .route("/dashboard.json", get(json))
        .route(
            "/dashboard.css",
            asset(include_str!("assets/dashboard.css"), "text/css"),
        )
        .route(
            "/dashboard.js",
            asset(include_str!("assets/dashboard.js"), "text/javascript"),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_deltas_over_the_interval() {
        let s = |at, read, written, ops| Sample {
            at,
            read,
            written,
            ops,
        };
        let samples: VecDeque<_> = [
            s(1000, 0, 0, 0),
            s(2000, 1 << 20, 0, 10),
            s(2000, 1 << 20, 0, 10), // a repeated instant is skipped
            s(4000, 3 << 20, 4 << 20, 30),
        ]
        .into();
        let r = rates(&samples);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].read_bytes_per_sec, (1 << 20) as f64);
        assert_eq!(r[0].ops_per_sec, 10.0);
        assert_eq!(r[1].read_bytes_per_sec, (1 << 20) as f64);
        assert_eq!(r[1].written_bytes_per_sec, (2 << 20) as f64);
        assert_eq!(r[1].ops_per_sec, 10.0);
    }
}
