//! Opening the home's volume: the engine over its store (the storage peers,
//! or the local store), after the checks namespace protection makes at open
//! (a home a recovery replaced changes nothing; a volume from before the
//! authority key gets one) and with the chunks of the namespace's copies
//! kept from gc and repair.

use crate::data::Engine;
use crate::home::{Home, HomeError, InitOptions};
use crate::store::LocalStore;
use std::sync::Arc;

/// Open the volume, creating it with defaults on first use.
pub fn open_engine(home: &Home) -> Result<Engine, HomeError> {
    open_engine_with(home, None, None)
}

/// Like [`open_engine`], with the cache and dirty budgets (MiB) overridden.
pub fn open_engine_with(
    home: &Home,
    cache_mb: Option<usize>,
    dirty_mb: Option<usize>,
) -> Result<Engine, HomeError> {
    open_daemon(home, cache_mb, dirty_mb).map(|(e, _)| e)
}

/// The volume as a daemon opens it: the engine, and the mesh client when
/// there are storage peers (to listen for members on).
pub fn open_daemon(
    home: &Home,
    cache_mb: Option<usize>,
    dirty_mb: Option<usize>,
) -> Result<(Engine, Option<crate::net::MeshClient>), HomeError> {
    if home.is_member() {
        return Err(HomeError::Bad {
            path: home.dir.clone(),
            why: "this is a member device: the volume is the home node's, reached \
                  through it (this command cannot run here)"
                .into(),
        });
    }
    if !home.exists() {
        home.init(&InitOptions::default())?;
        tracing::info!("created a new volume in {}", home.dir.display());
    }
    home.check_private()?;
    let ecfg = home.engine_config(cache_mb, dirty_mb)?;
    let key = home.volume_key()?;
    let meta = home.open_meta()?;
    let n = meta.params().data_shards as usize + meta.params().parity_shards as usize;
    let mut client = None;
    let authority = crate::home::load_authority(&home.paths().authority_key())?;
    let authority_new = authority.is_none();
    let store: Arc<dyn crate::store::ShardStore> = match home.mesh_store(n)? {
        Some(mesh) => {
            // A home replaced by a recovery changes nothing.
            super::check_not_replaced(
                mesh.client(),
                &super::RootKeys::of(&key, authority),
                meta.params().volume_id,
                meta.epoch()?,
                &home.dir,
                authority_new,
            )?;
            client = Some(mesh.client().clone());
            mesh
        }
        None => Arc::new(LocalStore::open(&home.paths().store()).map_err(crate::Error::from)?),
    };
    // A volume from before the authority key: its root records were
    // signed by a key every member device can derive. From now on they
    // are the authority's, and the peers move to it.
    if authority_new && crate::home::authority_or_make(&home.paths().authority_key())?.1 {
        tracing::warn!(
            "made the volume's authority key ({}): storage peers now obey only it. A \
             recovery kit exported before now cannot recover the volume any more: \
             export a new one (`datamesh kit export`)",
            home.paths().authority_key().display()
        );
    }
    let engine = Engine::new(meta, store, key, ecfg)?;
    // gc and repair keep and mend the namespace's copies on the peers.
    let kept = super::ProtectState::load(&home.paths().protect())?;
    engine.set_protected(kept.chunks());
    Ok((engine, client))
}
