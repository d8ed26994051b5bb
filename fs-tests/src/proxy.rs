//! A TCP proxy that holds every byte a fixed time in each direction: a slow
//! link between two processes of one machine (the kernel's netem is not
//! available here). Bytes keep their order and the link its bandwidth; only
//! their arrival is late, as over a long wire. Used by the far-member
//! benchmark (`scripts/bench-far.sh`, through `delay-proxy`) and tests.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// A running proxy on `127.0.0.1:port`; stopped (every connection cut) when
/// dropped.
pub struct DelayProxy {
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DelayProxy {
    /// Forwards each connection to `target`, holding every byte `one_way`
    /// each way (a round trip of twice that).
    pub fn start(target: SocketAddr, one_way: Duration) -> DelayProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("delay-proxy".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).unwrap();
                    let accept = async {
                        while let Ok((client, _)) = listener.accept().await {
                            tokio::spawn(pipe(client, target, one_way));
                        }
                    };
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept => {}
                    }
                });
            })
            .unwrap();
        DelayProxy {
            port,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn pipe(client: TcpStream, target: SocketAddr, one_way: Duration) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::join!(late(cr, sw, one_way), late(sr, cw, one_way));
}

/// Copies `from` to `to`, each read written `delay` after it arrived.
async fn late(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0
                || tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    };
    let write = async move {
        while let Some((at, data)) = rx.recv().await {
            // A timer rounds up to the next millisecond: with no delay,
            // none is armed.
            if !delay.is_zero() {
                tokio::time::sleep_until(at).await;
            }
            if to.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn bytes_arrive_whole_and_late_by_the_delay_each_way() {
        let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let p = DelayProxy::start(target, Duration::from_millis(50));
        let mut s = std::net::TcpStream::connect(("127.0.0.1", p.port)).unwrap();
        for round in 0..3 {
            let start = std::time::Instant::now();
            s.write_all(b"ping").unwrap();
            let mut got = [0u8; 4];
            s.read_exact(&mut got).unwrap();
            let took = start.elapsed();
            assert_eq!(&got, b"ping");
            assert!(
                took >= Duration::from_millis(100) && took < Duration::from_millis(400),
                "round {round}: {took:?}"
            );
        }
    }
}
