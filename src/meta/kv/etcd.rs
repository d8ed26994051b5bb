//! The namespace in etcd (v3 API): every key under `<prefix><table byte>`,
//! guards as etcd compares, a transaction per commit. Calls block their
//! thread on this engine's own runtime, so it is called the same way from
//! FUSE threads and from blocking tasks. See docs/DESIGN.md, "The namespace
//! over a transactional key-value engine".

use super::{Committed, Got, Guard, Kv, Limits, Rev, Table, Txn, Visit, copy_into_rocks};
use crate::error::{Error, Result};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, TxnOp, TxnOpResponse,
};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a call waits for etcd (a lost quorum) before it fails.
const CALL_LIMIT: Duration = Duration::from_secs(10);
/// Keys a scan reads per request.
const PAGE: i64 = 512;

pub struct EtcdKv {
    client: Client,
    rt: tokio::runtime::Runtime,
    /// Every key of this volume starts with it.
    prefix: Vec<u8>,
    /// The endpoints, for messages.
    at: String,
    /// The highest revision this engine has seen.
    rev: AtomicU64,
}

/// `etcd://HOST:PORT,HOST:PORT` → the endpoints' URLs.
pub fn endpoints(url: &str) -> Result<Vec<String>> {
    let hosts = url.strip_prefix("etcd://").ok_or(Error::Invalid(
        "a metadata engine address starts with etcd://",
    ))?;
    let list: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("http://{h}"))
        .collect();
    if list.is_empty() {
        return Err(Error::Invalid("etcd:// names no host"));
    }
    Ok(list)
}

impl EtcdKv {
    /// Connects to the etcd cluster at `url` (`etcd://HOST:PORT,…`); this
    /// engine's keys all start with `prefix`.
    pub fn connect(url: &str, prefix: &[u8]) -> Result<EtcdKv> {
        let list = endpoints(url)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("datamesh-etcd")
            .enable_all()
            .build()
            .map_err(Error::Io)?;
        let at = url.to_string();
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(CALL_LIMIT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let client = rt
            .block_on(async {
                tokio::time::timeout(CALL_LIMIT, Client::connect(&list, Some(options))).await
            })
            .map_err(|_| Error::Db(format!("{at}: no etcd answered within {CALL_LIMIT:?}")))?
            .map_err(|e| Error::Db(format!("{at}: {e}")))?;
        let kv = EtcdKv {
            client,
            rt,
            prefix: prefix.to_vec(),
            at,
            rev: AtomicU64::new(0),
        };
        // Reached for real (a connect is lazy): the cluster answers a read.
        kv.get(Table::Meta, b"format")?;
        Ok(kv)
    }

    /// Runs `f` on this engine's runtime and waits for it, trying again
    /// while etcd answers that it cannot now (a leader election, a member
    /// gone) for at most [`CALL_LIMIT`] in all. Every call this engine makes
    /// may be made twice: reads, and transactions of whole values written
    /// under the namespace's writer lock, which write the same again.
    fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(KvClient) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>> + Send,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let client = self.client.kv_client();
        self.rt.spawn(async move {
            let deadline = tokio::time::Instant::now() + CALL_LIMIT;
            let mut pause = Duration::from_millis(50);
            let r = loop {
                match tokio::time::timeout_at(deadline, f(client.clone())).await {
                    Ok(Err(e)) if passing(&e) && tokio::time::Instant::now() + pause < deadline => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                    r => break r,
                }
            };
            let _ = tx.send(r);
        });
        match rx.recv_timeout(CALL_LIMIT + Duration::from_secs(1)) {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(Error::Db(format!("etcd {}: {e}", self.at))),
            Ok(Err(_)) | Err(_) => Err(Error::Db(format!(
                "etcd {}: no answer within {}s (is a majority of its members up?)",
                self.at,
                CALL_LIMIT.as_secs()
            ))),
        }
    }

    fn key(&self, table: Table, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + 1 + key.len());
        k.extend_from_slice(&self.prefix);
        k.push(table as u8);
        k.extend_from_slice(key);
        k
    }

    fn saw(&self, rev: i64) {
        self.rev.fetch_max(rev.max(0) as u64, Ordering::Relaxed);
    }

    /// Whether guard `g` holds now (to name the one that failed).
    fn holds(&self, g: &Guard) -> Result<bool> {
        Ok(match g {
            Guard::Key { table, key, rev } => self.get(*table, key)?.map(|(_, r)| r) == *rev,
            Guard::Range {
                table,
                start,
                end,
                since,
            } => {
                let (s, e) = (self.key(*table, start), self.key(*table, end));
                let opts = GetOptions::new()
                    .with_range(e)
                    .with_keys_only()
                    .with_min_mod_revision(*since as i64 + 1)
                    .with_limit(1);
                let r = self.call(move |mut c| {
                    let (s, opts) = (s.clone(), opts.clone());
                    async move { c.get(s, Some(opts)).await }
                })?;
                r.kvs().is_empty()
            }
        })
    }

    /// A scan at revision `at` (`None`: the first page's).
    fn scan_at(
        &self,
        table: Table,
        start: &[u8],
        prefix: &[u8],
        at: Option<i64>,
        f: &mut Visit<'_>,
    ) -> Result<()> {
        let strip = self.prefix.len() + 1;
        let end = prefix_end(&self.key(table, prefix));
        let mut from = self.key(table, start);
        if from >= end {
            return Ok(());
        }
        // Every page at the first one's revision: one consistent view.
        let mut at = at;
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if let Some(rev) = at {
                opts = opts.with_revision(rev);
            }
            let k = from.clone();
            let mut r = self.call(move |mut c| {
                let (k, opts) = (k.clone(), opts.clone());
                async move { c.get(k, Some(opts)).await }
            })?;
            if at.is_none() {
                let rev = r.header().map(|h| h.revision()).unwrap_or(0);
                self.saw(rev);
                at = Some(rev);
            }
            let more = r.more();
            let kvs = r.take_kvs();
            for kv in &kvs {
                // Keys from `start` up to the prefix's (a start before it)
                // end the scan, as in every engine.
                let key = &kv.key()[strip..];
                if !key.starts_with(prefix) || !f(key, kv.value())? {
                    return Ok(());
                }
            }
            match kvs.last() {
                Some(last) if more => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(()),
            }
        }
    }
}

/// An error that may pass: the cluster between leaders, a member or a
/// connection gone.
fn passing(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Unknown
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// A one-key read's answer: its value and the revision that wrote it.
fn got(r: &etcd_client::GetResponse) -> Option<Got> {
    r.kvs()
        .first()
        .map(|kv| (kv.value().to_vec(), kv.mod_revision() as Rev))
}

/// The first key after every key that starts with `p` (empty: none).
fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Kv for EtcdKv {
    fn engine(&self) -> &'static str {
        "etcd"
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Got>> {
        let k = self.key(table, key);
        let r = self.call(move |mut c| {
            let k = k.clone();
            async move { c.get(k, None).await }
        })?;
        if let Some(h) = r.header() {
            self.saw(h.revision());
        }
        Ok(got(&r))
    }

    fn get_many(&self, table: Table, keys: &[Vec<u8>]) -> Result<Vec<Option<Got>>> {
        let mut out = Vec::with_capacity(keys.len());
        // One transaction of reads per 128 keys (etcd's operation limit).
        for part in keys.chunks(Limits::ETCD.ops) {
            let ops: Vec<TxnOp> = part
                .iter()
                .map(|k| TxnOp::get(self.key(table, k), None))
                .collect();
            let t = etcd_client::Txn::new().and_then(ops);
            let r = self.call(move |mut c| {
                let t = t.clone();
                async move { c.txn(t).await }
            })?;
            if let Some(h) = r.header() {
                self.saw(h.revision());
            }
            for resp in r.op_responses() {
                match resp {
                    TxnOpResponse::Get(g) => out.push(got(&g)),
                    _ => {
                        return Err(Error::Db(format!(
                            "etcd {}: a read answered as something else",
                            self.at
                        )));
                    }
                }
            }
        }
        if out.len() != keys.len() {
            return Err(Error::Db(format!(
                "etcd {}: {} answers to {} reads",
                self.at,
                out.len(),
                keys.len()
            )));
        }
        Ok(out)
    }

    fn scan(&self, table: Table, start: &[u8], prefix: &[u8], f: &mut Visit<'_>) -> Result<()> {
        self.scan_at(table, start, prefix, None, f)
    }

    fn limits(&self) -> Option<Limits> {
        Some(Limits::ETCD)
    }

    fn commit(&self, txn: Txn) -> Result<Committed> {
        // Refused here, with the numbers, rather than by the cluster.
        Limits::ETCD.check(&format!("etcd {}", self.at), &txn)?;
        let compares: Vec<Compare> = txn
            .guards
            .iter()
            .map(|g| match g {
                Guard::Key { table, key, rev } => match rev {
                    Some(r) => {
                        Compare::mod_revision(self.key(*table, key), CompareOp::Equal, *r as i64)
                    }
                    None => Compare::version(self.key(*table, key), CompareOp::Equal, 0),
                },
                Guard::Range {
                    table,
                    start,
                    end,
                    since,
                } => Compare::mod_revision(
                    self.key(*table, start),
                    CompareOp::Less,
                    *since as i64 + 1,
                )
                .with_range(self.key(*table, end)),
            })
            .collect();
        // etcd refuses a key written twice in one transaction: the last
        // write of each key is the one that counts.
        let mut seen = std::collections::HashSet::new();
        let mut ops: Vec<TxnOp> = Vec::with_capacity(txn.writes.len());
        for w in txn.writes.iter().rev() {
            let k = self.key(w.table, &w.key);
            if !seen.insert(k.clone()) {
                continue;
            }
            ops.push(match &w.value {
                Some(v) => TxnOp::put(k, v.clone(), None),
                None => TxnOp::delete(k, None),
            });
        }
        ops.reverse();
        let t = etcd_client::Txn::new().when(compares).and_then(ops);
        let r = self.call(move |mut c| {
            let t = t.clone();
            async move { c.txn(t).await }
        })?;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        self.saw(rev);
        if r.succeeded() {
            return Ok(Committed::Done(rev as Rev));
        }
        for (i, g) in txn.guards.iter().enumerate() {
            if !self.holds(g)? {
                return Ok(Committed::Conflict(i));
            }
        }
        // It failed, then held when asked again: name the first.
        Ok(Committed::Conflict(0))
    }

    fn revision(&self) -> Rev {
        self.rev.load(Ordering::Relaxed)
    }

    fn sync(&self) -> Result<()> {
        // An answered transaction is on a majority's disks already.
        Ok(())
    }

    /// Every table read at one revision, into a RocksDB database.
    fn checkpoint(&self, dir: &Path) -> Result<()> {
        self.get(Table::Meta, b"format")?;
        let at = self.revision() as i64;
        copy_into_rocks(dir, &mut |t, f| self.scan_at(t, b"", b"", Some(at), f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_prefix_ends() {
        assert_eq!(
            endpoints("etcd://a:1, b:2").unwrap(),
            vec!["http://a:1".to_string(), "http://b:2".to_string()]
        );
        assert!(endpoints("http://a:1").is_err());
        assert!(endpoints("etcd://").is_err());
        assert_eq!(prefix_end(b"ab"), b"ac");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
