//! A member device's side: [`join`] makes its home directory from a member
//! token, and [`MemberVolume`] is the volume as its commands see it — every
//! namespace operation asked of the home node over `/datamesh/meta/1`, file
//! bytes sealed or opened here and moved straight to or from the storage
//! peers. A member's mount stands on [`super::namespace`].

use super::link::{HOME_WAIT, MemberFile, bad, call_home, learn, reach};
use super::wire::{MetaCall, MetaReply, VolumeInfo, decode_answer, encode_request};
use crate::Result;
use crate::chunk::{ChunkRef, Codec, DeviceKey, VolumeKey};
use crate::home::Home;
use crate::net::{MeshClient, MeshStore, Multiaddr, PeerId};
use crate::store::ShardStore;
use crate::types::*;
use crate::volume::calls::Caller;
use crate::volume::proto::{Reply, Request};
use crate::volume::{NewFile, Progress, Volume};
use serde_bytes::ByteBuf;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

/// How long a whole operation run at home (fsck, repair, gc) may take.
const LONG_WAIT: Duration = Duration::from_secs(3600);

/// Makes a member device's home directory at `home` from `token` (from
/// `datamesh invite --member`): proves the token to the home node, and keeps
/// the volume secret it sends back sealed to this device's key. Returns the
/// home node's id.
pub fn join(home: &Home, token: &str, name: &str) -> Result<String> {
    let fresh = !home.dir.exists();
    let res = join_inner(home, token, name);
    if res.is_err() {
        // Nothing half-made stays behind: a failed join can be run again.
        let paths = home.paths();
        for f in [
            paths.mesh_key(),
            paths.peer_key(),
            paths.device_key(),
            paths.peers(),
        ] {
            let _ = std::fs::remove_file(f);
        }
        if fresh {
            let _ = std::fs::remove_dir(&home.dir);
        }
    }
    res
}

fn join_inner(home: &Home, token: &str, name: &str) -> Result<String> {
    let paths = home.paths();
    if home.exists() || paths.meta().exists() || home.is_member() {
        return Err(bad(format!(
            "{}: a volume or a member device is here already (use another --home)",
            home.dir.display()
        )));
    }
    let t =
        crate::net::JoinToken::decode_member(token, crate::net::trust::now_secs()).map_err(bad)?;
    let (Some(home_id), Some(secret)) = (t.home, t.admit) else {
        return Err(bad("member token: no home node in it"));
    };
    // The home's addresses, with its id: what this device dials it by.
    let home_addrs: Vec<Multiaddr> = t
        .bootstrap
        .iter()
        .map(|a| a.clone().with_p2p(home_id).unwrap_or_else(|a| a))
        .collect();
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&home.dir)?;
    }
    t.key.save(&paths.mesh_key()).map_err(bad)?;
    let identity = crate::net::load_identity(&paths.peer_key()).map_err(bad)?;
    let me = identity.public().to_peer_id();
    let device = DeviceKey::generate();
    crate::util::write_secret(&paths.device_key(), &device.to_bytes())
        .map_err(|(p, e)| bad(format!("{}: {e}", p.display())))?;
    let ring = crate::net::LiveKeys::new(crate::net::MeshKeys::single(t.key.clone()));
    let client = MeshClient::start(identity, &ring, home_addrs.clone(), None, None).map_err(bad)?;
    let call = MetaCall::Join {
        proof: super::server::join_proof(&secret, &me),
        device: ByteBuf::from(device.public()),
        name: name.to_string(),
    };
    let answer = client
        .meta_call(home_id, encode_request(call), HOME_WAIT)
        .map_err(bad)?;
    let MetaReply::Joined {
        sealed_key,
        info,
        peers,
    } = decode_answer(&answer)?
    else {
        return Err(bad("the home node answered the join with something else"));
    };
    let key = crate::chunk::unwrap_volume_key(&device, &sealed_key)?;
    let file = MemberFile {
        version: 1,
        home: home_id.to_string(),
        addrs: home_addrs.iter().map(|a| a.to_string()).collect(),
        name: name.to_string(),
        info,
    };
    std::fs::write(paths.peers(), peers.join("\n") + "\n")?;
    let json = serde_json::to_vec_pretty(&file).map_err(bad)?;
    crate::util::write_secret(&paths.member(), &json)
        .map_err(|(p, e)| bad(format!("{}: {e}", p.display())))?;
    // The key last: its presence marks a complete member home.
    crate::util::write_secret(&paths.volume_key(), key.as_bytes())
        .map_err(|(p, e)| bad(format!("{}: {e}", p.display())))?;
    Ok(home_id.to_string())
}

/// The volume as a member device's commands see it.
pub struct MemberVolume {
    home: PeerId,
    store: Arc<MeshStore>,
    key: VolumeKey,
    codec: Codec,
    info: VolumeInfo,
    /// The storage peers were waited for (once, by the first command that
    /// moves file bytes; a listing does not wait on them).
    peers_waited: std::sync::Once,
}

impl MemberVolume {
    pub fn open(home: &Home) -> Result<MemberVolume> {
        let r = reach(home)?;
        let codec = Codec::new(
            r.file.info.data_shards as usize,
            r.file.info.parity_shards as usize,
        )?;
        Ok(MemberVolume {
            home: r.home,
            store: r.store,
            key: r.key,
            codec,
            info: r.file.info,
            peers_waited: std::sync::Once::new(),
        })
    }

    fn ask(&self, call: MetaCall, wait: Duration) -> Result<MetaReply> {
        call_home(self.store.client(), self.home, call, wait)
    }

    /// The shard store, once enough storage peers are connected to spread a
    /// chunk over (or 10 s went by).
    fn shards(&self) -> Arc<dyn ShardStore> {
        self.peers_waited.call_once(|| {
            let n = self.codec.data_shards() + self.codec.parity_shards();
            self.store
                .client()
                .wait_for_peers(n, Duration::from_secs(10));
        });
        self.store.clone()
    }

    /// Seals and stores a batch of chunks at once, a thread each (their
    /// time is mostly waiting on the peers: k+1 shards of each acknowledged);
    /// holes are left out.
    fn store_chunks(&self, batch: Vec<(u64, Vec<u8>)>) -> Result<Vec<(u64, ChunkRef)>> {
        let store = self.shards();
        let store = &*store;
        each_on_a_thread(
            batch
                .into_iter()
                .filter(|(_, plain)| plain.iter().any(|&b| b != 0))
                .collect(),
            |(idx, plain)| {
                let sealed = crate::chunk::seal_owned(
                    &self.key,
                    &self.codec,
                    plain,
                    self.info.inline_max as usize,
                );
                crate::data::store_sealed(store, &self.codec, sealed).map(|c| (idx, c))
            },
        )
    }
}

impl Caller for MemberVolume {
    fn call(&self, req: Request, _progress: Progress) -> Result<Reply> {
        let wait = match req {
            Request::Check { .. } | Request::Gc { .. } | Request::Mesh(_) => LONG_WAIT,
            _ => HOME_WAIT,
        };
        match self.ask(MetaCall::Volume(req), wait)? {
            MetaReply::Volume(r) => Ok(r),
            other => Err(bad(format!("the home node answered {other:?}"))),
        }
    }

    fn send_file(
        &self,
        file: &NewFile,
        src: &mut (dyn Read + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let cs = self.info.chunk_size as usize;
        let window = crate::volume::workers() * 2;
        let (mut chunks, mut size, mut idx, mut done) = (Vec::new(), 0u64, 0u64, false);
        while !done {
            let mut batch = Vec::new();
            while batch.len() < window {
                let mut plain = vec![0u8; cs];
                let n = crate::util::read_up_to(src, &mut plain)?;
                plain.truncate(n);
                if n > 0 {
                    size += n as u64;
                    batch.push((idx, plain));
                    idx += 1;
                }
                if n < cs {
                    done = true;
                    break;
                }
            }
            if idx == batch.len() as u64 && !done {
                // A large file: its target is checked before gigabytes are
                // stored for nothing (the home checks again at commit; a
                // small file is only checked there, one call fewer).
                crate::data::put_target(Volume::lookup(self, file.dir, &file.name))?;
            }
            chunks.extend(self.store_chunks(batch)?);
            progress(size);
        }
        // Nothing is in the namespace until this one commit: a put that
        // fails or is killed before it leaves only unreferenced shards.
        let hints = chunks
            .iter()
            .map(|(_, c)| self.store.holders_of(c.shard_ids()))
            .collect();
        self.ask(
            MetaCall::CommitFile {
                file: file.clone(),
                size,
                chunks,
                hints,
            },
            HOME_WAIT,
        )
        .map(drop)
    }

    fn fetch_file(
        &self,
        ino: Ino,
        dst: &mut (dyn Write + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        let MetaReply::ChunkMap {
            size,
            chunks,
            hints,
        } = self.ask(MetaCall::ChunkMap(ino), HOME_WAIT)?
        else {
            return Err(bad(
                "the home node answered a chunk map request with something else",
            ));
        };
        let cs = self.info.chunk_size as u64;
        for ((_, c), h) in chunks.iter().zip(&hints) {
            learn(&*self.store, c, h);
        }
        let map: std::collections::BTreeMap<u64, ChunkRef> = chunks.into_iter().collect();
        let store = self.shards();
        let n = size.div_ceil(cs);
        let window = crate::volume::workers() as u64 * 2;
        let mut at = 0u64;
        while at < n {
            let idxs: Vec<u64> = (at..n.min(at + window)).collect();
            let count = idxs.len() as u64;
            let plains = each_on_a_thread(idxs, |i| {
                let want = (size - i * cs).min(cs) as usize;
                let mut plain = match map.get(&i) {
                    Some(c) => crate::data::decode_chunk(&store, &self.codec, c)?,
                    None => Vec::new(),
                };
                // A chunk shorter than its share of the file ends in zeros.
                plain.resize(want, 0);
                Ok(plain)
            })?;
            for p in plains {
                dst.write_all(&p)?;
            }
            at += count;
            progress((at * cs).min(size));
        }
        dst.flush()?;
        Ok(size)
    }

    fn sync(&self) -> Result<()> {
        // This device's shards: every one stored, not only k+1 of each chunk.
        self.store.sync()?;
        self.call(Request::Barrier, &|_, _| {}).map(drop)
    }
}

/// `f` over each item on a thread of its own (the work waits on the network
/// more than it computes); the results in the items' order.
fn each_on_a_thread<T: Send, R: Send>(
    items: Vec<T>,
    f: impl Fn(T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .into_iter()
            .map(|item| {
                let f = &f;
                s.spawn(move || f(item))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(bad("a worker thread panicked")))
            })
            .collect()
    })
}
