//! The mesh commands: `node`, `invite`, `members`, `peers`, `status`,
//! `repair`, `scrub`. The last three run in the daemon when one holds the
//! volume (see [`crate::volume`]); this module parses, dispatches and prints.

use super::output::{chunk_bar, human};
use crate::data::Redundancy;
use crate::home::Home;
use crate::net::node::NodeOptions;
use crate::volume::{Ask, Report};
use anyhow::{Context, anyhow, bail};
use indicatif::ProgressBar;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct NodeArgs {
    /// Address to listen on (repeatable) [default: /ip4/0.0.0.0/tcp/4719].
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Where this peer keeps its identity, mesh key and shards
    /// [default: $XDG_DATA_HOME/datamesh-node or ~/.local/share/datamesh-node].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9465).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Most shard bytes to hold (e.g. 500G); puts beyond it are refused and the
    /// writer places the shard elsewhere [default: the disk's free space].
    #[arg(long, value_parser = super::parse_size, value_name = "SIZE")]
    capacity: Option<u64>,
    /// Join the mesh with a token from `datamesh invite` (needed once; the mesh
    /// key is then kept in the data directory). Other users can read process
    /// arguments: prefer --join-file or the DATAMESH_JOIN environment variable.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "DATAMESH_JOIN",
        hide_env_values = true
    )]
    join: Option<String>,
    /// Read the join token from FILE (its first line).
    #[arg(long, value_name = "FILE", conflicts_with = "join")]
    join_file: Option<PathBuf>,
    /// Fault injection for tests: corrupt every shard this peer sends.
    #[arg(long, hide = true)]
    fault_flip_reads: bool,
    /// Fault injection for tests: answer every put and get this many ms late.
    #[arg(long, hide = true, default_value_t = 0)]
    fault_delay_ms: u64,
    /// Fault injection for tests: never answer an inventory request.
    #[arg(long, hide = true)]
    fault_mute_lists: bool,
    /// Fault injection for tests: an endless inventory of made-up shards.
    #[arg(long, hide = true)]
    fault_endless_lists: bool,
    /// Fault injection for tests: answer Stat with a 60 MiB text.
    #[arg(long, hide = true)]
    fault_huge_answers: bool,
    /// Fault injection for tests: acknowledge puts without storing them.
    #[arg(long, hide = true)]
    fault_lie_done: bool,
}

pub(super) fn addrs(list: &[String], what: &str) -> anyhow::Result<Vec<crate::net::Multiaddr>> {
    list.iter()
        .map(|a| a.parse().map_err(|e| anyhow!("{what} {a}: {e}")))
        .collect()
}

/// `bootstrap`: the global `--bootstrap` addresses (peers of the mesh to reach
/// first; the token's are added).
pub fn node(args: NodeArgs, bootstrap: &[String]) -> anyhow::Result<()> {
    let data = args.data.unwrap_or_else(|| {
        let home = Home::locate(None);
        home.paths().default_node_dir()
    });
    let mut listen = addrs(&args.listen, "--listen")?;
    if listen.is_empty() {
        listen.push("/ip4/0.0.0.0/tcp/4719".parse().expect("valid address"));
    }
    let join = match (&args.join_file, args.join) {
        (Some(f), _) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| anyhow!("--join-file {}: {e}", f.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        ),
        (None, j) => j,
    };
    crate::net::node::run(NodeOptions {
        data,
        listen,
        metrics: args.metrics,
        capacity: args.capacity,
        bootstrap: addrs(bootstrap, "--bootstrap")?,
        join,
        flip_reads: args.fault_flip_reads,
        delay: std::time::Duration::from_millis(args.fault_delay_ms),
        mute_lists: args.fault_mute_lists,
        endless_lists: args.fault_endless_lists,
        huge_answers: args.fault_huge_answers,
        lie_done: args.fault_lie_done,
    })?;
    Ok(())
}

pub fn invite(
    home: &Home,
    extra: &[String],
    ttl: std::time::Duration,
    uses: u32,
) -> anyhow::Result<()> {
    if !home.exists() {
        home.init(&Default::default())?;
    }
    let key = home.mesh_key()?;
    let me = home.peer_id()?;
    let now = crate::net::trust::now_secs();
    let expires = now.saturating_add(ttl.as_secs());
    let mut addrs = addrs(extra, "--address")?;
    for a in home.peer_addrs()? {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    let within = match ttl.as_secs() {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{} day(s)", s / 86_400),
        s if s >= 3600 && s % 3600 == 0 => format!("{} hour(s)", s / 3600),
        _ => humantime::format_duration(ttl).to_string(),
    };
    println!(
        "Start a storage peer with this token within {within} (it holds the mesh key, not the volume key):"
    );
    println!("  datamesh node --listen /ip4/0.0.0.0/tcp/4719 --join TOKEN");
    if addrs.is_empty() {
        println!("No peers known yet: the first node listens, then mount or run commands with");
        println!("  --bootstrap /ip4/ADDRESS/tcp/4719/p2p/PEER_ID  (as that node prints it).");
    }
    let token = crate::net::JoinToken {
        key,
        home: None,
        bootstrap: addrs,
        expires: None,
        admit: None,
    };
    let (token, secret) = token.encode(me, expires);
    // The home admits the peers that prove they hold this token, `uses` of them.
    crate::net::trust::Invites::add(&home.paths().invites(), secret, expires, uses, now)?;
    if uses > 1 {
        println!("It admits up to {uses} storage peers.");
    }
    println!("{token}");
    Ok(())
}

/// `invite --member`: a single-use token for a member device. It names this
/// home node and where it listens (`--address`, else config.toml's `listen`).
pub fn invite_member(
    home: &Home,
    extra: &[String],
    ttl: std::time::Duration,
) -> anyhow::Result<()> {
    if home.is_member() {
        bail!("only the home node invites member devices");
    }
    if !home.exists() {
        home.init(&Default::default())?;
    }
    let mut addrs = addrs(extra, "--address")?;
    for a in home.listen_addrs(&[])? {
        if !crate::net::is_unspecified(&a) && !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    if addrs.is_empty() {
        bail!(
            "--address MULTIADDR is needed: where member devices reach this home node \
             (the address its mount or `datamesh serve` listens on with --listen, \
             e.g. /ip4/192.0.2.7/tcp/4720)"
        );
    }
    let now = crate::net::trust::now_secs();
    let expires = now.saturating_add(ttl.as_secs());
    let token = crate::net::JoinToken {
        key: home.mesh_key()?,
        home: None,
        bootstrap: addrs,
        expires: None,
        admit: None,
    };
    let (token, secret) = token.encode_member(home.peer_id()?, expires);
    crate::net::trust::Invites::add(&home.paths().member_invites(), secret, expires, 1, now)?;
    println!(
        "On the new device, within {} (the token admits one device; it carries the mesh key, \
         not the volume key, which the device receives sealed to its own key):",
        humantime::format_duration(ttl)
    );
    println!("  datamesh join TOKEN");
    println!("{token}");
    Ok(())
}

/// `members`: the member devices; `members revoke ID`.
pub fn members(home: &Home, action: Option<super::MembersAction>) -> anyhow::Result<bool> {
    use crate::net::trust::Members;
    if home.is_member() {
        bail!("this is a member device: list the members on the home node");
    }
    let path = home.paths().members();
    let list = Members::load(&path)?;
    match action {
        None => {
            if list.list.is_empty() {
                println!("no member devices (add one with `datamesh invite --member`)");
            }
            let when = |t: Option<u64>| {
                t.map_or("never".to_string(), |t| {
                    super::output::time_string(crate::types::Timestamp {
                        secs: t as i64,
                        nanos: 0,
                    })
                })
            };
            for m in &list.list {
                let state = match m.revoked {
                    Some(t) => format!("revoked {}", when(Some(t))),
                    None => format!("last seen {}", when(m.last_seen)),
                };
                println!("{} {:<16} {state}", m.id, m.name);
            }
            Ok(true)
        }
        Some(super::MembersAction::Revoke { id }) => {
            let peer: crate::net::PeerId = id
                .parse()
                .map_err(|_| anyhow!("{id}: not a device id (see `datamesh members`)"))?;
            // Read afresh and saved under the list's lock: the daemon's own
            // saves (a member's last sighting) cannot undo it.
            let (_, name) = Members::update(&path, |list| {
                let Some(m) = list.get_mut(&peer) else {
                    return Err(crate::net::NetError::Bad(format!(
                        "{id}: no such member device (see `datamesh members`)"
                    )));
                };
                let newly = m.revoked.is_none();
                if newly {
                    m.revoked = Some(crate::net::trust::now_secs());
                }
                Ok((m.name.clone(), newly))
            })?;
            let (name, newly) = name;
            println!(
                "datamesh: revoked member device {id} ({name}): a running home daemon refuses it \
                 within 2 s, and tells the storage peers to"
            );
            if newly {
                rotate_mesh_key(home)?;
            }
            Ok(true)
        }
    }
}

/// `status`, `repair` or `scrub`, in the daemon when one holds the volume,
/// else here. Exit 1 when a chunk is unreadable, unknown, or a repair failed.
pub fn run(home: &Home, ask: Ask, json: bool) -> anyhow::Result<bool> {
    let opened = super::commands::Opened::open(home)?;
    let vol = opened.volume();
    let (pb, what) = match ask {
        Ask::Status => (ProgressBar::hidden(), "status"),
        Ask::Repair => (chunk_bar("repair"), "repair"),
        Ask::Scrub => (chunk_bar("scrub"), "scrub"),
    };
    let report = vol
        .mesh(ask, &|done, total| {
            pb.set_length(total.max(done));
            pb.set_position(done);
        })
        .context(what)?;
    pb.finish_and_clear();
    if ask != Ask::Status || matches!(opened, super::commands::Opened::Here(_)) {
        vol.barrier().context("flushing the volume")?;
    }
    let r = &report.redundancy;
    let ok = r.lost == 0 && r.unknown == 0 && r.failures.is_empty();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ok);
    }
    match ask {
        Ask::Status => {
            print_peers(&report);
            print_running(&report.running);
            print_workers(&report.workers);
            if !home.is_member() {
                print_protection(home, report.peers.is_some());
            }
        }
        Ask::Repair => {
            for f in &r.failures {
                println!("could not repair {f}");
            }
            println!(
                "datamesh: repair: rebuilt {} shards; moved or dropped {} extra copies to spread chunks",
                r.rebuilt, r.moved
            );
            print_traffic(r);
        }
        Ask::Scrub => {
            for id in &report.corrupt {
                println!("corrupt shard {id} dropped and rebuilt");
            }
            for p in &report.unverified {
                println!("not scrubbed: peer {} {}: {}", p.id, p.address, p.why);
            }
            println!(
                "datamesh: scrub: {} corrupt shards found; repair rebuilt {} shards",
                report.corrupt.len(),
                r.rebuilt
            );
        }
    }
    print_redundancy(r, report.data_shards);
    Ok(ok)
}

fn print_redundancy(r: &Redundancy, k: usize) {
    if !r.silent.is_empty() {
        println!(
            "{} storage peer(s) did not answer: counts below exclude them, and a chunk that may have shards there is counted unknown:",
            r.silent.len()
        );
        for p in &r.silent {
            println!("  {} {}: {}", p.id, p.address, p.why);
        }
    }
    let unknown = if r.unknown > 0 || !r.silent.is_empty() {
        format!(", {} unknown", r.unknown)
    } else {
        String::new()
    };
    println!(
        "chunks: {} sharded; {} full, {} reduced, {} critical (exactly {k} shards left), {} unreadable{unknown}",
        r.chunks, r.full, r.reduced, r.critical, r.lost
    );
    match r.survives {
        _ if r.chunks == 0 => println!("no chunk is stored as shards yet"),
        _ if r.unknown > 0 => println!(
            "peer losses survivable: unknown until every storage peer answers ({} chunks depend on the peers that did not)",
            r.unknown
        ),
        Some(n) => println!("the volume survives the loss of any {n} storage peer(s) right now"),
        None => println!("no storage peers: every shard is on this host (the embedded store)"),
    }
}

fn print_peers(report: &Report) {
    let Some(peers) = &report.peers else { return };
    let n = report.data_shards + report.parity_shards;
    let live = peers.iter().filter(|p| p.reachable && p.admitted).count();
    println!("{} storage peers, {live} reachable:", peers.len());
    let r = &report.redundancy;
    let why = |list: &[crate::store::PeerNote], id: &str| {
        list.iter()
            .find(|n| n.id == id)
            .map(|n| format!(" ({})", n.why))
    };
    for p in peers {
        if !p.admitted {
            println!(
                "  {} NOT ADMITTED {} (gets no shards; `datamesh peers add` admits it)",
                p.id, p.address
            );
            continue;
        }
        if let Some(w) = why(&r.silent, &p.id) {
            println!("  {} NO ANSWER   {}{w}", p.id, p.address);
            continue;
        }
        if !p.reachable {
            let w = why(&r.unreachable, &p.id).unwrap_or_default();
            println!("  {} UNREACHABLE {}{w}", p.id, p.address);
            continue;
        }
        let frac = if p.capacity > 0 {
            p.bytes as f64 / p.capacity as f64
        } else {
            0.0
        };
        let filled = (frac * 20.0).round().clamp(0.0, 20.0) as usize;
        println!(
            "  {} reachable   {:>7} shards {:>10} of {:>10} [{}{}] {}",
            p.id,
            p.shards,
            human(p.bytes),
            human(p.capacity),
            "#".repeat(filled),
            ".".repeat(20 - filled),
            p.address
        );
    }
    if live == 0 {
        println!("no storage peer is reachable: chunks stored on peers cannot be read or written");
    } else if live < n {
        println!(
            "fewer reachable peers ({live}) than shards per chunk ({n}): new chunks put several shards on some peers"
        );
    }
}

/// How old the namespace's newest copy on the storage peers is.
fn print_protection(home: &Home, mesh: bool) {
    println!(
        "namespace protection: {}",
        crate::protect::describe(&home.paths().protect(), mesh)
    );
}

/// What a repair moved, and per byte it placed.
fn print_traffic(r: &Redundancy) {
    if r.written_bytes == 0 {
        return;
    }
    println!(
        "repair traffic: {} fetched, {} placed ({:.2} bytes moved per byte placed)",
        human(r.read_bytes),
        human(r.written_bytes),
        (r.read_bytes + r.written_bytes) as f64 / r.written_bytes as f64
    );
}

/// Passes running in the daemon, with their progress and time left.
fn print_running(running: &[crate::data::Pass]) {
    let now = crate::net::trust::now_secs();
    for p in running {
        let secs = now.saturating_sub(p.started).max(1);
        let left = p.left_secs(now).map_or(String::new(), |rest| {
            let rest = humantime::format_duration(std::time::Duration::from_secs(rest));
            format!(", about {rest} left")
        });
        let of = if p.total == 0 && p.done == 0 {
            "surveying the peers".to_string()
        } else if p.total > 0 {
            format!(
                "{} of {} chunks ({}%)",
                p.done,
                p.total,
                p.done * 100 / p.total
            )
        } else {
            format!("{} so far", p.done)
        };
        println!(
            "{} running for {}: {of}, {:.0} chunks/s{left}",
            p.what,
            humantime::format_duration(std::time::Duration::from_secs(secs)),
            p.done as f64 / secs as f64
        );
    }
}

/// The background workers of the mount that answered, like `garage worker list`.
fn print_workers(workers: &[crate::workers::WorkerInfo]) {
    if workers.is_empty() {
        return;
    }
    println!("workers of the daemon:");
    for w in workers {
        let state = match w.state {
            crate::workers::WorkerState::Busy => "busy",
            crate::workers::WorkerState::Idle => "idle",
            crate::workers::WorkerState::Stopped => "stopped",
        };
        let err = match (&w.last_error, &w.last_error_at) {
            (Some(e), Some(at)) => format!("  last error at {at}: {e}"),
            (Some(e), None) => format!("  last error: {e}"),
            _ => String::new(),
        };
        println!("  {:<12} {state:<8} {:>8} rounds{err}", w.name, w.rounds);
    }
}

/// `datamesh peers [add|remove ID]`: the admitted storage peers. A running
/// mount reads the change within seconds.
pub fn peers(home: &Home, action: Option<super::PeersAction>) -> anyhow::Result<bool> {
    let path = home.paths().admitted();
    let mut list = crate::net::trust::Admitted::load(&path)?.unwrap_or_default();
    let parse = |id: &str| -> anyhow::Result<crate::net::PeerId> {
        id.parse()
            .map_err(|_| anyhow!("{id}: not a peer id (as `datamesh status` lists them)"))
    };
    match action {
        None => {
            let mut ids: Vec<String> = list.peers.iter().map(|p| p.to_string()).collect();
            ids.sort();
            println!("{} admitted storage peers:", ids.len());
            for id in ids {
                println!("  {id}");
            }
            let mut gone: Vec<String> = list.retired.iter().map(|p| p.to_string()).collect();
            gone.sort();
            for id in gone {
                println!("  {id} (removed)");
            }
            return Ok(true);
        }
        Some(super::PeersAction::Add { id }) => {
            let peer = parse(&id)?;
            list.retired.remove(&peer);
            list.peers.insert(peer);
            println!("datamesh: peers: {id} admitted");
        }
        Some(super::PeersAction::Remove { id }) => {
            let peer = parse(&id)?;
            if !list.peers.remove(&peer) {
                bail!("{id}: not an admitted peer");
            }
            list.retired.insert(peer);
            list.save(&path)?;
            println!(
                "datamesh: peers: {id} removed; run `datamesh repair` to rebuild what it held"
            );
            rotate_mesh_key(home)?;
            return Ok(true);
        }
    }
    list.save(&path)?;
    Ok(true)
}

/// After a revocation or a removal: the mesh key ring of the next
/// generation, which allows the home, its admitted storage peers and its
/// members not revoked to use the older keys (docs/DESIGN.md, "Mesh key
/// rotation"). Made under the member list's lock, so two rotations never
/// race; a running daemon takes it up within 2 s and hands it on.
fn rotate_mesh_key(home: &Home) -> anyhow::Result<()> {
    use crate::net::trust::{Admitted, Members};
    let paths = home.paths();
    let (authority, _) = crate::home::authority_or_make(&paths.authority_key())?;
    let me = home.peer_id()?;
    let (_, generation) = Members::update(&paths.members(), |members| {
        let mut allowed = vec![me];
        if let Some(admitted) = Admitted::load(&paths.admitted())? {
            allowed.extend(admitted.peers.iter().copied());
        }
        allowed.extend(members.active());
        let ring = home
            .mesh_keys()
            .map_err(|e| crate::net::NetError::Bad(e.to_string()))?
            .rotate(&authority.rotation_seed(), allowed)?;
        ring.save(&paths.mesh_key())?;
        Ok(ring.generation())
    })?;
    println!(
        "datamesh: rotated the mesh key (generation {generation}): the revoked or removed device \
         can no longer complete a handshake with any host that has the new key (a running home \
         daemon hands it to the peers and members within seconds). Invitations made before now \
         no longer work; export a new recovery kit (`datamesh kit export`): an older kit reaches \
         the peers only for the next {} rotations",
        crate::net::keys::RECOVERY_WINDOW
    );
    Ok(())
}
