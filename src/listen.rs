//! What one HTTP listener (WebDAV, dashboard, metrics) lets clients hold:
//! at most [`MAX_CONNECTIONS`] connections, [`MAX_PER_SOURCE`] of them from
//! one address (past either, a new connection is closed at once, so its
//! descriptor is freed), and a first request that must arrive whole within
//! [`FIRST_REQUEST`] and each later one's head within [`HEADER_READ`] (set
//! on the server by `metrics::serve_router`). A body
//! that sends nothing for [`BODY_IDLE`] ends its request, and a handler that
//! panics answers 500 (its request ends; nothing else does): see
//! [`guarded`]. Before,
//! 1 128 half-sent requests took every descriptor of the daemon, and the
//! owner's own CLI failed on the volume socket.

use axum_server::accept::Accept;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Connections one listener holds at once.
pub const MAX_CONNECTIONS: u32 = 512;
/// Connections one address holds at once on a listener.
pub const MAX_PER_SOURCE: u32 = 64;
/// How long a new connection has to send its first request whole.
pub const FIRST_REQUEST: Duration = Duration::from_secs(10);

/// How long a kept-alive connection has to send each later request's
/// head whole, counted from when it may send one.
pub const HEADER_READ: Duration = Duration::from_secs(30);
/// How long a request body may send nothing before the request ends (as a
/// web server's client body timeout: between two reads, not in all).
pub const BODY_IDLE: Duration = Duration::from_secs(30);

/// `app` with the limits every listener's requests have: a body idle for
/// [`BODY_IDLE`] ends its request (a PUT's hidden file is then removed),
/// and a panic in a handler is answered 500 and logged, not a reset.
pub fn guarded(app: axum::Router) -> axum::Router {
    app.layer(tower_http::catch_panic::CatchPanicLayer::custom(
        |panic: Box<dyn std::any::Any + Send>| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!("http: a request's handler panicked: {why}");
            let mut res = axum::response::Response::new(axum::body::Body::from(
                "the server failed on this request; it is logged\n",
            ));
            *res.status_mut() = axum::http::StatusCode::INTERNAL_SERVER_ERROR;
            res
        },
    ))
    .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(BODY_IDLE))
}

#[derive(Default)]
struct Counts {
    total: u32,
    by_source: HashMap<IpAddr, u32>,
}

/// An acceptor that counts connections, in front of `inner`.
#[derive(Clone)]
pub struct Capped<A> {
    inner: A,
    counts: Arc<Mutex<Counts>>,
}

impl<A> Capped<A> {
    pub fn new(inner: A) -> Capped<A> {
        Capped {
            inner,
            counts: Arc::default(),
        }
    }

    /// A place for a connection from `source`, or why there is none.
    fn take(&self, source: IpAddr) -> io::Result<Slot> {
        let mut c = crate::util::lock(&self.counts);
        let from = c.by_source.get(&source).copied().unwrap_or(0);
        if c.total >= MAX_CONNECTIONS || from >= MAX_PER_SOURCE {
            return Err(io::Error::other(format!(
                "{source}: refused a connection ({} open, {from} from it)",
                c.total
            )));
        }
        c.total += 1;
        *c.by_source.entry(source).or_default() += 1;
        Ok(Slot {
            counts: self.counts.clone(),
            source,
        })
    }
}

/// A counted connection's place, given back when it closes.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    source: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = crate::util::lock(&self.counts);
        c.total -= 1;
        if let Some(n) = c.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&self.source);
            }
        }
    }
}

/// A stream that holds its place until it is dropped.
pub struct Counted<S> {
    inner: S,
    _slot: Slot,
}

impl<A, S> Accept<TcpStream, S> for Capped<A>
where
    A: Accept<TcpStream, S> + Clone + Send + Sync + 'static,
    A::Future: Send,
    A::Stream: Send,
    S: Send + 'static,
{
    type Stream = Counted<A::Stream>;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, A::Service)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let slot = stream.peer_addr().and_then(|a| self.take(a.ip()));
        let inner = self.inner.clone();
        Box::pin(async move {
            // Refused: the stream is dropped here, and closed.
            let slot = slot?;
            let (inner, service) = inner.accept(stream, service).await?;
            Ok((Counted { inner, _slot: slot }, service))
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handler that panics is answered 500 and the server goes on.
    #[tokio::test]
    async fn a_panicking_handler_is_answered_500_and_the_next_request_served() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        async fn boom() -> &'static str {
            panic!("on purpose")
        }
        let app = guarded(
            axum::Router::new()
                .route("/boom", axum::routing::get(boom))
                .route("/ok", axum::routing::get(|| async { "fine" })),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut s = TcpStream::connect(addr).await.unwrap();
        let ask = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut answer = [0u8; 512];
        for (path, want) in [("/boom", "500"), ("/ok", "200"), ("/boom", "500")] {
            s.write_all(ask(path).as_bytes()).await.unwrap();
            let n = s.read(&mut answer).await.unwrap();
            let head = String::from_utf8_lossy(&answer[..n]);
            assert!(
                head.starts_with(&format!("HTTP/1.1 {want}")),
                "{path}: {head}"
            );
        }
    }

    #[test]
    fn places_are_bounded_per_source_and_in_all_and_given_back() {
        let c = Capped::new(());
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let held: Vec<Slot> = (0..MAX_PER_SOURCE).map(|_| c.take(a).unwrap()).collect();
        assert!(c.take(a).is_err(), "past the bound per source");
        let other = c.take(b).unwrap();
        drop(held);
        assert!(c.take(a).is_ok());
        drop(other);
        let mut all = Vec::new();
        for i in 0..MAX_CONNECTIONS {
            let ip = IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
            all.push(c.take(ip).unwrap());
        }
        assert!(c.take(b).is_err(), "past the bound in all");
        drop(all);
        let counts = crate::util::lock(&c.counts);
        assert_eq!((counts.total, counts.by_source.len()), (0, 0));
    }
}
