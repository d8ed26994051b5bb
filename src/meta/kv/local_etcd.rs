//! A one-member etcd on loopback, started from the `etcd` binary in a
//! directory of its own and killed when dropped: what the tests of the etcd
//! engine run against (scripts/setup.sh installs Debian's etcd-server).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct LocalEtcd {
    child: Child,
    /// `etcd://127.0.0.1:PORT`.
    pub url: String,
    dir: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl LocalEtcd {
    /// Starts it with its data and log in `dir` and waits until it answers.
    /// Panics, saying what to do, when the binary is missing or it does not
    /// come up in 20 s.
    pub fn start(dir: &Path) -> LocalEtcd {
        let (client, peer) = (free_port(), free_port());
        let data = dir.join("etcd-data");
        let log = std::fs::File::create(dir.join("etcd.log")).expect("etcd's log");
        let child = Command::new("etcd")
            .arg("--name=t")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=t=http://127.0.0.1:{peer}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting etcd: {e} (scripts/setup.sh installs Debian's etcd-server)")
            });
        let mut me = LocalEtcd {
            child,
            url: format!("etcd://127.0.0.1:{client}"),
            dir: dir.to_path_buf(),
        };
        let start = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", client)).is_ok()
                && super::EtcdKv::connect(&me.url, b"probe/").is_ok()
            {
                return me;
            }
            if let Ok(Some(status)) = me.child.try_wait() {
                let log = std::fs::read_to_string(me.dir.join("etcd.log")).unwrap_or_default();
                panic!("etcd exited ({status}): {log}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "etcd did not come up in 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
