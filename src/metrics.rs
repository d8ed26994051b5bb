//! Prometheus metrics of this process (one registry, [`get`]), and the HTTP
//! listener that serves them at `/metrics` in the text exposition format
//! (worker `metrics`). Counters are bumped where the work happens (the FUSE
//! adapter, the engine); gauges of state the engine keeps anyway are read at
//! each scrape ([`serve`]'s `refresh`).

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

/// This process's metrics.
pub struct Metrics {
    registry: Registry,
    /// FUSE requests answered, by operation.
    pub fuse_ops: Family<OpLabel, Counter>,
    /// Seconds from a FUSE request's arrival to its answer, by operation.
    pub fuse_seconds: Family<OpLabel, Histogram, fn() -> Histogram>,
    /// FUSE requests answered with an error.
    pub fuse_errors: Counter,
    /// File bytes read and written through the engine's file calls (the
    /// mount; the CLI's put and get stream past them).
    pub bytes_read: Counter,
    pub bytes_written: Counter,
    /// Chunk loads answered by the decoded-chunk cache, and not.
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    /// Written bytes not yet sealed (read at each scrape).
    pub dirty_bytes: Gauge,
    /// Storage peers known, reachable, and their capacity and use.
    pub peers: Gauge,
    pub peers_reachable: Gauge,
    pub peer_capacity_bytes: Gauge,
    pub peer_used_bytes: Gauge,
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
        bytes_read: Counter::default(),
        bytes_written: Counter::default(),
        cache_hits: Counter::default(),
        cache_misses: Counter::default(),
        dirty_bytes: Gauge::default(),
        peers: Gauge::default(),
        peers_reachable: Gauge::default(),
        peer_capacity_bytes: Gauge::default(),
        peer_used_bytes: Gauge::default(),
    };
    r.register("fuse_ops", "FUSE requests answered", m.fuse_ops.clone());
    r.register(
        "fuse_op_seconds",
        "Seconds to answer a FUSE request",
        m.fuse_seconds.clone(),
    );
    r.register(
        "fuse_errors",
        "FUSE requests answered with an error",
        m.fuse_errors.clone(),
    );
    enum One<'a> {
        C(&'a Counter),
        G(&'a Gauge),
    }
    use One::{C, G};
    #[rustfmt::skip]
    let plain = [
        ("read_bytes", "File bytes read through the mount", C(&m.bytes_read)),
        ("written_bytes", "File bytes written through the mount", C(&m.bytes_written)),
        ("chunk_cache_hits", "Chunk loads the cache answered", C(&m.cache_hits)),
        ("chunk_cache_misses", "Chunk loads that decoded shards", C(&m.cache_misses)),
        ("dirty_bytes", "Written bytes not yet sealed", G(&m.dirty_bytes)),
        ("peers", "Storage peers admitted", G(&m.peers)),
        ("peers_reachable", "Storage peers connected now", G(&m.peers_reachable)),
        ("peer_capacity_bytes", "Reachable peers' capacity", G(&m.peer_capacity_bytes)),
        ("peer_used_bytes", "Bytes reachable peers hold", G(&m.peer_used_bytes)),
    ];
    for (name, help, metric) in plain {
        match metric {
            C(c) => r.register(name, help, c.clone()),
            G(g) => r.register(name, help, g.clone()),
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
        m.fuse_seconds
            .get_or_create(&label)
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// The metrics in Prometheus' text format.
pub fn text() -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &get().registry)
        .expect("writing to a String does not fail");
    out
}

/// Serves `/metrics` on `addr` from the worker `metrics` until `runner`
/// stops; `refresh` sets the gauges before each scrape.
pub fn serve(
    addr: std::net::SocketAddr,
    refresh: impl Fn() + Send + Sync + 'static,
    runner: &crate::workers::Runner,
) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("--metrics {addr}: {e}")))?;
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    runner.on_stop(move || {
        let _ = stop.send(true);
    });
    let refresh = std::sync::Arc::new(refresh);
    tracing::info!("metrics at http://{addr}/metrics");
    runner.spawn("metrics", move |w| {
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let refresh = refresh.clone();
                async move {
                    refresh();
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text(),
                    )
                }
            }),
        );
        let res = rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let mut stopped = stopped;
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        });
        if let Err(e) = res {
            w.round(Err(format!("serving metrics: {e}")));
        }
    })
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
}
