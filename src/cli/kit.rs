//! The recovery kit's commands: `kit export`, `kit check`, and `recover`
//! (a lost home rebuilt from the kit and the storage peers).

use crate::home::Home;
use anyhow::{Context, bail};

/// `datamesh kit export`: the recovery kit on standard output (the warning
/// on standard error too, where a redirect does not hide it).
pub fn kit_export(home: &Home, volume_id: [u8; 16], qr: bool) -> anyhow::Result<()> {
    let peers: Vec<String> = home
        .peer_addrs()?
        .into_iter()
        .map(|a| a.to_string())
        .filter(|a| a.contains("/p2p/"))
        .take(crate::kit::MAX_PEERS)
        .collect();
    let home_id = home.peer_id()?;
    let now = crate::net::trust::now_secs();
    let authority = authority_seed(home)?.with_context(|| {
        format!(
            "{}: missing: the volume's authority key is made when this datamesh first opens \
             the volume (`datamesh mount` or `serve`); a kit without it cannot recover the volume",
            home.paths().authority_key().display()
        )
    })?;
    let kit = crate::kit::Kit {
        volume_id,
        volume_secret: *home.volume_key()?.as_bytes(),
        mesh_key: *home.mesh_key()?.as_bytes(),
        home: home_id.to_bytes(),
        peers,
        made: now,
        authority: Some(authority),
    };
    let made = super::output::time_string(crate::types::Timestamp {
        secs: now as i64,
        nanos: 0,
    });
    eprintln!(
        "datamesh: kit export: this is the master key of the volume; keep it away from its machines"
    );
    print!("{}", kit.text(&home_id.to_string(), &made));
    if qr {
        let code = qrcode::QrCode::with_error_correction_level(kit.token(), qrcode::EcLevel::L)
            .map_err(|e| anyhow::anyhow!("the kit does not fit a QR code: {e}"))?;
        let art = code
            .render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build();
        println!("{art}");
    }
    Ok(())
}

/// The seed in `HOME/authority.key`, when there is one.
fn authority_seed(home: &Home) -> anyhow::Result<Option<[u8; 32]>> {
    let path = home.paths().authority_key();
    match std::fs::read(&path) {
        Ok(b) => {
            Ok(Some(b.try_into().map_err(|_| {
                anyhow::anyhow!("{}: not 32 bytes", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| path.display().to_string()),
    }
}

fn read_kit(file: &std::path::Path) -> anyhow::Result<crate::kit::Kit> {
    let text = if file == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading the kit from standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    crate::kit::Kit::parse(&text).with_context(|| file.display().to_string())
}

/// `datamesh recover --kit FILE`.
pub fn recover(home: &Home, file: &std::path::Path) -> anyhow::Result<()> {
    let kit = read_kit(file)?;
    let bootstrap = super::mesh::addrs(&home.bootstrap, "--bootstrap")?;
    let r = crate::protect::recover(home, &kit, bootstrap, &mut |s| eprintln!("datamesh: {s}"))
        .with_context(|| {
            format!(
                "recovering volume {} into {}",
                hex::encode(kit.volume_id),
                home.dir.display()
            )
        })?;
    let made = super::output::time_string(crate::types::Timestamp {
        secs: r.made as i64,
        nanos: 0,
    });
    println!(
        "recovered volume {} into {}: {} files, {} directories, {} as of {made} (epoch {}, {} storage peers)",
        hex::encode(kit.volume_id),
        home.dir.display(),
        r.files,
        r.dirs,
        super::output::human(r.bytes),
        r.epoch,
        r.peers
    );
    for s in &r.skipped {
        println!("skipped the newer {s}");
    }
    println!(
        "`datamesh mount DIR` serves it; member devices join again (`datamesh invite --member`)"
    );
    Ok(())
}

/// `datamesh kit check FILE`: what a kit holds (never its secrets), and
/// whether it is this home's volume.
pub fn kit_check(
    home: &Home,
    file: &std::path::Path,
    here: Option<[u8; 16]>,
) -> anyhow::Result<()> {
    let kit = read_kit(file)?;
    let home_id = crate::net::PeerId::from_bytes(&kit.home)
        .map_or_else(|_| "(unreadable)".to_string(), |p| p.to_string());
    let made = super::output::time_string(crate::types::Timestamp {
        secs: kit.made as i64,
        nanos: 0,
    });
    println!("volume {}", hex::encode(kit.volume_id));
    println!("home   {home_id}");
    println!("made   {made}");
    for p in &kit.peers {
        println!("peer   {p}");
    }
    if let Some(id) = here {
        if id != kit.volume_id {
            bail!(
                "this kit is of another volume than this home's ({})",
                hex::encode(id)
            );
        }
        if *home.volume_key()?.as_bytes() != kit.volume_secret {
            bail!("this kit names this home's volume but holds another secret: it cannot open it");
        }
        match (kit.authority, authority_seed(home)?) {
            (None, Some(_)) => bail!(
                "this kit is from before the volume's authority key (dmkit1): the storage \
                 peers no longer obey it, so it cannot recover the volume. Export a new one \
                 with `datamesh kit export`"
            ),
            (Some(a), Some(b)) if a != b => bail!(
                "this kit holds another authority key than this home's: it cannot recover \
                 the volume. Export a new one with `datamesh kit export`"
            ),
            _ => {}
        }
        println!("it is this home's volume, and its secret opens it");
    }
    Ok(())
}
