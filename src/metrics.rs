//! Prometheus metrics of this process (one registry, [`get`]), their route
//! `/metrics` in the text exposition format, and the daemon's HTTP
//! listeners ([`serve_router`]: one worker each, plain or TLS). Counters are bumped where the work happens (the FUSE
//! adapter, the engine); gauges of state the engine keeps anyway are read at
//! each scrape ([`router`]'s `refresh`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub request: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabel {
    pub health: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
    pub request: &'static str,
}

/// This process's metrics.
pub struct Metrics {
    registry: Registry,
    /// FUSE requests answered, by operation.
    pub fuse_ops: Family<OpLabel, Counter>,
    /// Seconds from a FUSE request's arrival to its answer, by operation.
    pub fuse_seconds: Family<OpLabel, Histogram, fn() -> Histogram>,
    /// FUSE requests answered with an error.
    pub fuse_errors: Counter,
    /// Shard requests sent, by storage peer and request; their time to the
    /// answer; and those that failed (no answer, or an answer of failure).
    pub shard_requests: Family<PeerLabel, Counter>,
    pub shard_seconds: Family<PeerLabel, Histogram, fn() -> Histogram>,
    pub shard_errors: Family<PeerLabel, Counter>,
    /// On a storage peer (`datamesh node`): requests received by kind, those
    /// refused, and what it holds (set at each scrape; capacity -1: the
    /// disk's free space).
    pub node_requests: Family<RequestLabel, Counter>,
    pub node_refusals: Family<RequestLabel, Counter>,
    pub node_shards: Gauge,
    pub node_used_bytes: Gauge,
    pub node_capacity_bytes: Gauge,
    /// The last survey's sharded chunks by health (full, reduced, critical,
    /// unreadable, unknown), peer losses every chunk survives (-1: no
    /// peers), shards rebuilt by repairs, and when (unix seconds).
    pub chunks: Family<HealthLabel, Gauge>,
    pub losses_survivable: Gauge,
    pub rebuilt_shards: Counter,
    pub last_survey: Gauge,
    /// File bytes read and written through the engine's file calls (the
    /// mount; the CLI's put and get stream past them).
    pub bytes_read: Counter,
    pub bytes_written: Counter,
    /// Chunk loads answered by the decoded-chunk cache, and not.
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    /// Written bytes not yet sealed (read at each scrape).
    pub dirty_bytes: Gauge,
    /// The namespace database's block cache and memtables (read at each scrape).
    pub meta_cache_bytes: Gauge,
    pub meta_memtable_bytes: Gauge,
    /// Decoded chunks cached, and inode records and entries cached.
    pub chunk_cache_bytes: Gauge,
    pub meta_cache_entries: Gauge,
    /// Storage peers known, reachable, and their capacity and use.
    pub peers: Gauge,
    pub peers_reachable: Gauge,
    pub peer_capacity_bytes: Gauge,
    pub peer_used_bytes: Gauge,
    /// Calls a member device made to its home node, by kind, and their
    /// round-trip times: what each FUSE operation costs over the link.
    pub home_calls: Family<RequestLabel, Counter>,
    pub home_call_seconds: Family<RequestLabel, Histogram, fn() -> Histogram>,
    pub home_call_errors: Family<RequestLabel, Counter>,
    /// WebDAV requests answered.
    pub webdav_requests: Counter,
    /// FUSE and WebDAV requests answered, for the dashboard's graph (not
    /// exported: the two above are).
    pub file_ops: Counter,
    /// Delegations recalled (home side).
    pub recalls: Counter,
}

fn latency_buckets() -> Histogram {
    // 10 µs to ~40 s.
    Histogram::new(exponential_buckets(1e-5, 4.0, 12))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut r = Registry::with_prefix("datamesh");
    let m = Metrics {
        registry: Registry::default(),
        fuse_ops: Family::default(),
        fuse_seconds: Family::new_with_constructor(latency_buckets as fn() -> Histogram),
        fuse_errors: Counter::default(),
        shard_requests: Family::default(),
        shard_seconds: Family::new_with_constructor(latency_buckets as fn() -> Histogram),
        shard_errors: Family::default(),
        node_requests: Family::default(),
        node_refusals: Family::default(),
        node_shards: Gauge::default(),
        node_used_bytes: Gauge::default(),
        node_capacity_bytes: Gauge::default(),
        chunks: Family::default(),
        losses_survivable: Gauge::default(),
        rebuilt_shards: Counter::default(),
        last_survey: Gauge::default(),
        bytes_read: Counter::default(),
        bytes_written: Counter::default(),
        cache_hits: Counter::default(),
        cache_misses: Counter::default(),
        dirty_bytes: Gauge::default(),
        meta_cache_bytes: Gauge::default(),
        meta_memtable_bytes: Gauge::default(),
        chunk_cache_bytes: Gauge::default(),
        meta_cache_entries: Gauge::default(),
        peers: Gauge::default(),
        peers_reachable: Gauge::default(),
        peer_capacity_bytes: Gauge::default(),
        peer_used_bytes: Gauge::default(),
        home_calls: Family::default(),
        home_call_seconds: Family::new_with_constructor(latency_buckets as fn() -> Histogram),
        home_call_errors: Family::default(),
        webdav_requests: Counter::default(),
        file_ops: Counter::default(),
        recalls: Counter::default(),
    };
    type Timed<L> = Family<L, Histogram, fn() -> Histogram>;
    enum One<'a> {
        C(&'a Counter),
        G(&'a Gauge),
        Ops(&'a Family<OpLabel, Counter>),
        OpTimes(&'a Timed<OpLabel>),
        Peers(&'a Family<PeerLabel, Counter>),
        PeerTimes(&'a Timed<PeerLabel>),
        Requests(&'a Family<RequestLabel, Counter>),
        RequestTimes(&'a Timed<RequestLabel>),
        Health(&'a Family<HealthLabel, Gauge>),
    }
    use One::*;
    #[rustfmt::skip]
    let all = [
        ("fuse_ops", "FUSE requests answered", Ops(&m.fuse_ops)),
        ("fuse_op_seconds", "Seconds to answer a FUSE request", OpTimes(&m.fuse_seconds)),
        ("fuse_errors", "FUSE requests answered with an error", C(&m.fuse_errors)),
        ("shard_requests", "Shard requests sent, by storage peer", Peers(&m.shard_requests)),
        ("shard_request_seconds", "Seconds to a storage peer's answer", PeerTimes(&m.shard_seconds)),
        ("shard_request_errors", "Shard requests failed or unanswered", Peers(&m.shard_errors)),
        ("node_requests", "Shard requests this storage peer received", Requests(&m.node_requests)),
        ("node_refusals", "Shard requests this storage peer refused", Requests(&m.node_refusals)),
        ("read_bytes", "File bytes read through the mount", C(&m.bytes_read)),
        ("written_bytes", "File bytes written through the mount", C(&m.bytes_written)),
        ("chunk_cache_hits", "Chunk loads the cache answered", C(&m.cache_hits)),
        ("chunk_cache_misses", "Chunk loads that decoded shards", C(&m.cache_misses)),
        ("dirty_bytes", "Written bytes not yet sealed", G(&m.dirty_bytes)),
        ("meta_cache_bytes", "Namespace database block cache in use", G(&m.meta_cache_bytes)),
        ("meta_memtable_bytes", "Namespace database memtables in use", G(&m.meta_memtable_bytes)),
        ("chunk_cache_bytes", "Decoded chunks cached", G(&m.chunk_cache_bytes)),
        ("meta_cache_entries", "Inode records and directory entries cached", G(&m.meta_cache_entries)),
        ("peers", "Storage peers admitted", G(&m.peers)),
        ("peers_reachable", "Storage peers connected now", G(&m.peers_reachable)),
        ("peer_capacity_bytes", "Reachable peers' capacity", G(&m.peer_capacity_bytes)),
        ("peer_used_bytes", "Bytes reachable peers hold", G(&m.peer_used_bytes)),
        ("node_shards", "Shards this storage peer holds", G(&m.node_shards)),
        ("node_used_bytes", "Shard bytes this storage peer holds", G(&m.node_used_bytes)),
        ("node_capacity_bytes", "This storage peer's capacity", G(&m.node_capacity_bytes)),
        ("chunks", "Sharded chunks by health, at the last survey", Health(&m.chunks)),
        ("losses_survivable", "Peer losses every chunk survives (last survey)", G(&m.losses_survivable)),
        ("rebuilt_shards", "Shards rebuilt and placed by repairs", C(&m.rebuilt_shards)),
        ("last_survey_seconds", "When the last survey ran (unix seconds)", G(&m.last_survey)),
        ("webdav_requests", "WebDAV requests answered", C(&m.webdav_requests)),
        ("home_calls", "Calls this member device made to its home node", Requests(&m.home_calls)),
        ("home_call_seconds", "Seconds to the home node's answer", RequestTimes(&m.home_call_seconds)),
        ("home_call_errors", "Calls to the home node failed or refused", Requests(&m.home_call_errors)),
        ("recalls", "Directories delegated to a member recalled before another origin's call", C(&m.recalls)),
    ];
    for (name, help, metric) in all {
        match metric {
            C(c) => r.register(name, help, c.clone()),
            G(g) => r.register(name, help, g.clone()),
            Ops(f) => r.register(name, help, f.clone()),
            OpTimes(f) => r.register(name, help, f.clone()),
            Peers(f) => r.register(name, help, f.clone()),
            PeerTimes(f) => r.register(name, help, f.clone()),
            Requests(f) => r.register(name, help, f.clone()),
            RequestTimes(f) => r.register(name, help, f.clone()),
            Health(f) => r.register(name, help, f.clone()),
        }
    }
    Metrics { registry: r, ..m }
});

/// This process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// Counts one FUSE request of `op`, and its time when dropped.
pub struct OpTimer {
    op: &'static str,
    start: Instant,
}

pub fn op(op: &'static str) -> OpTimer {
    OpTimer {
        op,
        start: Instant::now(),
    }
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        let m = get();
        let label = OpLabel { op: self.op };
        m.fuse_ops.get_or_create(&label).inc();
        m.file_ops.inc();
        m.fuse_seconds
            .get_or_create(&label)
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// One shard request to a storage peer, counted and timed at [`PeerTimer::done`].
pub struct PeerTimer {
    label: PeerLabel,
    start: Instant,
}

pub fn shard_request(peer: String, request: &'static str) -> PeerTimer {
    PeerTimer {
        label: PeerLabel { peer, request },
        start: Instant::now(),
    }
}

impl PeerTimer {
    pub fn done(self, failed: bool) {
        let m = get();
        m.shard_requests.get_or_create(&self.label).inc();
        m.shard_seconds
            .get_or_create(&self.label)
            .observe(self.start.elapsed().as_secs_f64());
        if failed {
            m.shard_errors.get_or_create(&self.label).inc();
        }
    }
}

/// One call of a member device to its home node, counted and timed at
/// [`HomeCall::done`].
pub struct HomeCall {
    label: RequestLabel,
    start: Instant,
}

pub fn home_call(request: &'static str) -> HomeCall {
    HomeCall {
        label: RequestLabel { request },
        start: Instant::now(),
    }
}

impl HomeCall {
    pub fn done(self, failed: bool) {
        let m = get();
        m.home_calls.get_or_create(&self.label).inc();
        m.home_call_seconds
            .get_or_create(&self.label)
            .observe(self.start.elapsed().as_secs_f64());
        if failed {
            m.home_call_errors.get_or_create(&self.label).inc();
        }
    }
}

/// The metrics in Prometheus' text format.
pub fn text() -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &get().registry)
        .expect("writing to a String does not fail");
    out
}

/// Serves `app` on `addr` as the worker `name` (its own small runtime),
/// over TLS with `tls`, until the runner stops. The address is bound here,
/// so a port in use is an error of the command that asked for it.
pub fn serve_router(
    addr: std::net::SocketAddr,
    name: &str,
    app: axum::Router,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    runner: &crate::workers::Runner,
) -> std::io::Result<()> {
    let listener = bind(addr, name)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    runner.on_stop(move || {
        let _ = stop.send(true);
    });
    let what = name.to_string();
    runner.spawn(name, move |w| {
        let ends = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let served = rt.block_on(async move {
            // axum-server runs each handshake in the connection's own task
            // (10 s at most), so a slow client does not hold up the others;
            // a connection must send its first request whole within
            // `listen::FIRST_REQUEST`, and the listener holds at most
            // `listen::MAX_CONNECTIONS` (`MAX_PER_SOURCE` from one address).
            let handle = axum_server::Handle::new();
            let h = handle.clone();
            tokio::spawn(async move {
                ends.await;
                h.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
            });
            // Small answers go out at once (a client waiting on a delayed
            // ACK would make each small request cost 40 ms).
            let capped = crate::listen::Capped::new(axum_server::accept::NoDelayAcceptor::new());
            // The caller's address reaches the handlers (logins are bounded
            // per address).
            let app = crate::listen::guarded(app)
                .into_make_service_with_connect_info::<std::net::SocketAddr>();
            let mut server = axum_server::from_tcp(listener)?
                .first_request_timeout(crate::listen::FIRST_REQUEST)
                .handle(handle);
            // Every later request's head too (axum-server leaves hyper's
            // header read timeout off): a kept-alive connection that sends
            // half a head, or nothing, is closed.
            server
                .http_builder()
                .http1()
                .header_read_timeout(Some(crate::listen::HEADER_READ));
            match tls {
                None => server.acceptor(capped).serve(app).await,
                Some(tls) => {
                    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(
                        axum_server::tls_rustls::RustlsConfig::from_config(tls),
                    )
                    .acceptor(capped);
                    server.acceptor(acceptor).serve(app).await
                }
            }
        });
        if let Err(e) = served {
            w.round(Err(format!("serving {what}: {e}")));
        }
    })
}

/// The listening socket for `--NAME ADDR`, or why not.
pub fn bind(addr: std::net::SocketAddr, name: &str) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("--{name} {addr}: {e}")))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// How long a scrape waits for `refresh` before it answers with the figures
/// last gathered.
const REFRESH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /metrics`: the registry's text, after `refresh`. The refresh (which
/// asks every storage peer) runs off the listener's thread, one at a time,
/// and is waited for at most [`REFRESH_WAIT`]: a peer that does not answer
/// (stopped, say) held the listener, and every WebDAV request on it, for
/// 10 s per scrape.
pub fn router(refresh: impl Fn() + Send + Sync + 'static) -> axum::Router {
    let refresh = std::sync::Arc::new(refresh);
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (refresh, busy) = (refresh.clone(), busy.clone());
            async move {
                use std::sync::atomic::Ordering;
                if !busy.swap(true, Ordering::AcqRel) {
                    let b = busy.clone();
                    let job = tokio::task::spawn_blocking(move || {
                        refresh();
                        b.store(false, Ordering::Release);
                    });
                    // Late: it goes on, and the next scrape has its figures.
                    let _ = tokio::time::timeout(REFRESH_WAIT, job).await;
                }
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text(),
                )
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_counted_and_timed_in_the_text() {
        drop(op("lookup"));
        drop(op("lookup"));
        get().bytes_written.inc_by(4096);
        let text = text();
        assert!(
            text.contains("datamesh_fuse_ops_total{op=\"lookup\"} 2"),
            "{text}"
        );
        assert!(text.contains("datamesh_fuse_op_seconds_bucket{"), "{text}");
        assert!(text.contains("datamesh_written_bytes_total 4096"), "{text}");
    }

    #[test]
    fn the_grafana_dashboard_asks_only_for_metrics_that_exist() {
        let dash: serde_json::Value =
            serde_json::from_str(include_str!("../packaging/grafana/datamesh.json")).unwrap();
        // A family with no sample yet is not in the text: one of each.
        drop(op("getattr"));
        shard_request("12D3KooWPeer".into(), "Get").done(true);
        let label = RequestLabel { request: "Get" };
        get().node_requests.get_or_create(&label).inc();
        get().node_refusals.get_or_create(&label).inc();
        get()
            .chunks
            .get_or_create(&HealthLabel { health: "full" })
            .set(0);
        let text = text();
        let mut asked = 0;
        for panel in dash["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for name in expr
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("datamesh_"))
                {
                    asked += 1;
                    // A histogram's series end in _bucket, _sum, _count.
                    let family = name.trim_end_matches("_bucket");
                    assert!(
                        text.contains(&format!("# TYPE {family} "))
                            || text.contains(&format!(
                                "# TYPE {} ",
                                family.trim_end_matches("_total")
                            )),
                        "{name} (panel {:?}) is not a metric of datamesh",
                        panel["title"]
                    );
                }
            }
        }
        assert!(asked > 10);
    }
}
