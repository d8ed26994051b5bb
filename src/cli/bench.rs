//! `datamesh bench`: throughput of the pipeline's parts on one core (hashing,
//! encryption, erasure coding, writing shard files), then the whole
//! write pipeline (plaintext → stored shards) and read pipeline (stored shards →
//! plaintext) on one core and on all cores, in one run on a scratch volume.

use crate::chunk::{Codec, ShardId, crypto};
use crate::home::{Home, InitOptions};
use crate::store::{LocalStore, ShardStore};
use crate::types::Ino;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

const CHUNK: usize = 4 << 20;

/// MB/s of `f` run over `bytes` per call, repeated for about half a second.
fn rate(bytes: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_millis(600) {
        f();
        n += 1;
    }
    (n as f64 * bytes as f64) / start.elapsed().as_secs_f64() / 1e6
}

/// Incompressible, never-repeating chunks (each stamped with its index) without
/// spending the benchmark's CPU on a random generator.
struct Source {
    pool: Vec<u8>,
    /// Differs per run, so one run's chunks never dedupe against another's.
    salt: u64,
    pos: u64,
    left: u64,
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        let mut done = 0;
        while done < n {
            let at = (self.pos % self.pool.len() as u64) as usize;
            let m = (n - done).min(self.pool.len() - at);
            buf[done..done + m].copy_from_slice(&self.pool[at..at + m]);
            if self.pos.is_multiple_of(CHUNK as u64) && m >= 8 {
                let stamp = ((self.pos / CHUNK as u64) ^ (self.salt << 32)).to_le_bytes();
                for (b, s) in buf[done..done + 8].iter_mut().zip(stamp) {
                    *b ^= s;
                }
            }
            done += m;
            self.pos += m as u64;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

struct Sink;
impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn run(size: u64, dir: &Path) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut pool = vec![0u8; 64 << 20];
    rand::Rng::fill(&mut rand::thread_rng(), &mut pool[..]);
    let buf = pool[..CHUNK].to_vec();
    let codec = Codec::new(4, 2)?;

    let b3 = rate(CHUNK, || {
        std::hint::black_box(blake3::hash(&buf));
    });
    let mut ct = buf.clone();
    let aead = rate(CHUNK, || {
        ct.truncate(CHUNK);
        crypto::encrypt(&[7; 32], &mut ct);
    });
    let rs = rate(CHUNK, || {
        std::hint::black_box(codec.encode(&buf));
    });
    // Per plaintext byte the write path hashes it once (chunk key), encrypts it,
    // encodes it, hashes 1.5× as many shard bytes and writes those to files.
    let n = codec.total_shards() as f64 / codec.data_shards() as f64;
    let compute = 1.0 / (1.0 / b3 + 1.0 / aead + 1.0 / rs + n / b3);

    let scratch = dir.join(format!("datamesh-bench-{}", std::process::id()));
    let home = Home::locate(Some(scratch.clone()));
    home.init(&InitOptions::default())?;
    let result = (|| -> anyhow::Result<(f64, Vec<(String, f64)>)> {
        // Shard files: 256 distinct 1 MiB shards through the store, into the page cache.
        let store = LocalStore::open(&scratch.join("store-bench"))?;
        let shards: Vec<Vec<u8>> = (0..256u32)
            .map(|i| {
                let mut s = pool[(i as usize * 4096)..][..1 << 20].to_vec();
                s[..4].copy_from_slice(&i.to_le_bytes());
                s
            })
            .collect();
        let t = Instant::now();
        for s in &shards {
            store.put(&ShardId::of(s), s)?;
        }
        let store_rate = (256 << 20) as f64 / t.elapsed().as_secs_f64() / 1e6;
        store.sync()?;
        let engine = crate::protect::open_engine(&home)?;
        let mut rows = Vec::new();
        for (label, workers) in [("1 core", 1), ("all cores", cores)] {
            let name = format!("f{workers}");
            let attr = engine.create(Ino::ROOT, name.as_bytes(), 0o644, 0, 0)?;
            let mut src = Source {
                pool: pool.clone(),
                salt: workers as u64,
                pos: 0,
                left: size,
            };
            let t = Instant::now();
            engine.write_stream(attr.ino, &mut src, workers, &mut |_| {})?;
            rows.push((
                format!("write pipeline, {label}"),
                size as f64 / t.elapsed().as_secs_f64() / 1e6,
            ));
            // Write-back of one run must not slow the next one down.
            engine.fsync(attr.ino)?;
        }
        for (label, workers) in [("1 core", 1), ("all cores", cores)] {
            let ino = engine
                .lookup(Ino::ROOT, format!("f{workers}").as_bytes())?
                .ino;
            let t = Instant::now();
            engine.read_stream(ino, &mut Sink, workers, &mut |_| {})?;
            rows.push((
                format!("read pipeline, {label}"),
                size as f64 / t.elapsed().as_secs_f64() / 1e6,
            ));
        }
        Ok((store_rate, rows))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let (store_rate, rows) = result?;
    let limit = 1.0 / (1.0 / compute + n / store_rate);

    println!(
        "datamesh bench: {} MiB stream, 4 MiB chunks, RS 4+2, {cores} cores",
        size >> 20
    );
    println!("{:<34} {:>10}", "measure", "MB/s");
    println!("{:<34} {:>10.0}", "BLAKE3, 1 core", b3);
    println!("{:<34} {:>10.0}", "AES-256-GCM, 1 core", aead);
    println!("{:<34} {:>10.0}", "Reed-Solomon 4+2 encode, 1 core", rs);
    println!("{:<34} {:>10.0}", "shard file writes, 1 core", store_rate);
    println!("{:<34} {:>10.0}", "limit set by compute, 1 core", compute);
    println!("{:<34} {:>10.0}", "limit set by all parts, 1 core", limit);
    for (label, v) in &rows {
        println!("{label:<34} {v:>10.0}");
    }
    let w1 = rows[0].1;
    let wn = rows[1].1;
    println!(
        "{:<34} {:>9.0}%",
        "write 1 core / limit",
        100.0 * w1 / limit
    );
    println!("{:<34} {:>9.2}x", "write all cores / 1 core", wn / w1);
    Ok(())
}

/// `datamesh bench-meta`: namespace calls timed inside one process, through
/// whatever reaches the volume here (the embedded engine, the daemon's socket,
/// or the home node from a member device). `stats` getattr calls (median and
/// 99th percentile, µs), then `creates` 4 KiB files put into volume dir `dir`
/// (per second). Used by scripts/bench-members.sh.
pub fn meta(
    vol: &dyn crate::volume::Volume,
    dir: &str,
    stats: usize,
    creates: usize,
) -> anyhow::Result<()> {
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let mut ino = Ino::ROOT;
    for c in super::paths::components(dir)? {
        ino = match vol.lookup(ino, c) {
            Ok(a) => a.ino,
            Err(crate::Error::NotFound) => vol.mkdir(ino, c, 0o755, uid, gid)?.ino,
            Err(e) => return Err(e.into()),
        };
    }
    if stats > 0 {
        let mut times: Vec<Duration> = (0..stats)
            .map(|_| {
                let t = Instant::now();
                vol.getattr(ino).map(|_| t.elapsed())
            })
            .collect::<crate::Result<_>>()?;
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
        println!("stat_median_us {:.1}", at(0.5));
        println!("stat_p99_us {:.1}", at(0.99));
    }
    if creates > 0 {
        let body = vec![0x5a; 4096];
        let t = Instant::now();
        for i in 0..creates {
            let file = crate::volume::NewFile {
                dir: ino,
                name: format!("f{i:06}").into_bytes(),
                perm: 0o644,
                uid,
                gid,
            };
            vol.put_file(&file, &mut &body[..], &mut |_| {})?;
        }
        println!(
            "creates_per_s {:.1}",
            creates as f64 / t.elapsed().as_secs_f64()
        );
    }
    vol.barrier()?;
    Ok(())
}
