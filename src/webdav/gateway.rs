//! The gateway as a listener serves it: the options `serve` takes and the
//! refusals it makes at start, the routes (the guard, the Files view,
//! dav-server with our lock table, modification times), the users' gate in
//! front, and the workers that tend logins and locks.

use super::{DavFs, PREFIX, auth, browse, guard, locks, times, tls};
use crate::data::Engine;
use axum::http::StatusCode;
use dav_server::davpath::DavPath;
use dav_server::fs::{DavFileSystem, FsError};
use std::sync::Arc;
use std::time::Duration;

/// How the gateway is served.
pub struct Options {
    pub addr: std::net::SocketAddr,
    /// Users (config.toml's `[[webdav.users]]`); none: no authentication,
    /// which only a loopback address allows.
    pub users: Vec<auth::User>,
    /// Serve passwords over plain HTTP on a non-loopback address.
    pub insecure: bool,
    /// HTTPS with this certificate and key (PEM files).
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Where the users are read again from when it changes (config.toml).
    pub users_from: Option<auth::Source>,
}

/// Why `opts` may not be served, if so.
fn refusal(opts: &Options) -> Option<String> {
    let addr = opts.addr;
    if addr.ip().is_loopback() {
        return None;
    }
    if opts.users.is_empty() {
        return Some(format!(
            "--webdav {addr}: a non-loopback address needs users (`datamesh webdav adduser \
             NAME`): anyone on the network could read and change the volume"
        ));
    }
    if opts.tls.is_none() && !opts.insecure {
        return Some(format!(
            "--webdav {addr}: passwords would cross the network in clear over plain HTTP: \
             give a certificate (--webdav-cert and --webdav-key), use an SSH tunnel to a \
             loopback address, or --webdav-insecure on a network you trust"
        ));
    }
    None
}

/// A request's path as dav-server names it (`PREFIX` taken off).
fn dav_path(path: &str) -> Result<DavPath, dav_server::davpath::ParseError> {
    let mut p = DavPath::new(path)?;
    p.set_prefix(PREFIX)?;
    Ok(p)
}

/// The volume over WebDAV at `PREFIX`, as routes.
fn dav_routes(engine: Arc<Engine>, locks: locks::Locks) -> axum::Router {
    let handler = dav_server::DavHandler::builder()
        .filesystem(Box::new(DavFs::new(engine.clone())))
        .locksystem(Box::new(locks.clone()))
        .strip_prefix(PREFIX)
        .build_handler();
    // Routed whole (not nested): dav-server strips the prefix itself, from
    // the request path and from Destination headers alike.
    let fs = DavFs::new(engine);
    let dav = axum::routing::any(move |req: axum::extract::Request| {
        let (handler, fs, locks) = (handler.clone(), fs.clone(), locks.clone());
        async move {
            use axum::response::IntoResponse;
            let m = crate::metrics::get();
            m.webdav_requests.inc();
            m.file_ops.inc();
            let caller = req.extensions().get::<auth::Caller>().cloned();
            let writes = caller
                .as_ref()
                .is_some_and(|c| c.access == auth::Access::ReadWrite);
            let principal = caller.and_then(|c| c.name);
            let req = match guard::check(req, PREFIX, &locks, principal.as_deref()).await {
                Ok(r) => r,
                Err(answer) => return answer,
            };
            let (req, wanted) = match times::take(req).await {
                Ok(r) => r,
                Err(answer) => return answer,
            };
            let (method, uri) = (req.method().clone(), req.uri().clone());
            let is_get = method == axum::http::Method::GET || method == axum::http::Method::HEAD;
            // A folder asked for by a browser: the Files view.
            if is_get
                && let Ok(path) = dav_path(uri.path())
                && let Some(page) =
                    browse::page(fs.engine.clone(), &path, &uri, browse::Viewer { writes }).await
            {
                return page;
            }
            let mut config = dav_server::DavConfig::new();
            if let Some(p) = principal {
                config = config.principal(p);
            }
            let mut res = handler
                .handle_with(config, req)
                .await
                .map(axum::body::Body::new)
                .into_response();
            if is_get {
                guard::inert(&mut res);
            }
            if let Some(w) = wanted.filter(|_| times::succeeded(&method, res.status())) {
                let set = match dav_path(uri.path()) {
                    Ok(path) => fs.set_modified(&path, w.mtime).await,
                    Err(_) => Err(FsError::NotFound),
                };
                match set {
                    Ok(()) => times::accepted(&w, &mut res),
                    Err(e) => {
                        let status = match e {
                            FsError::NotFound => StatusCode::NOT_FOUND,
                            FsError::Forbidden => StatusCode::FORBIDDEN,
                            _ => StatusCode::INTERNAL_SERVER_ERROR,
                        };
                        return (status, "the modification time was not set\n").into_response();
                    }
                }
            }
            res
        }
    });
    let asset = |body: &'static str, kind: &'static str| {
        axum::routing::get(move || async move {
            (
                [
                    (axum::http::header::CONTENT_TYPE, kind),
                    (axum::http::header::CACHE_CONTROL, "no-cache"),
                ],
                body,
            )
        })
    };
    axum::Router::new()
        .route(browse::CSS_PATH, asset(browse::CSS, "text/css"))
        .route(browse::JS_PATH, asset(browse::JS, "text/javascript"))
        .route(PREFIX, dav.clone())
        .route(&format!("{PREFIX}/"), dav.clone())
        .route(&format!("{PREFIX}/{{*rest}}"), dav)
}

/// The gateway's requests as a listener serves them (before
/// `listen::guarded`): the users' gate in front of the WebDAV routes, the
/// Files view and `also`.
pub fn app(
    engine: Arc<Engine>,
    users: auth::Users,
    gate: Arc<auth::Gate>,
    locks: locks::Locks,
    also: axum::Router,
) -> axum::Router {
    dav_routes(engine, locks)
        .merge(also)
        .layer(axum::middleware::from_fn_with_state(
            (Arc::new(users), gate),
            auth::require,
        ))
}

/// Serves the volume over WebDAV at `opts.addr` until the runner stops,
/// with `also` (the dashboard, metrics) on the same listener, behind the
/// same users and TLS.
pub fn serve(
    opts: Options,
    engine: Arc<Engine>,
    also: axum::Router,
    runner: &crate::workers::Runner,
) -> std::io::Result<()> {
    let refused = |why: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why);
    if let Some(why) = refusal(&opts) {
        return Err(refused(why));
    }
    let tls = match &opts.tls {
        Some((cert, key)) => Some(tls::load(cert, key).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("--webdav-cert: {e}"),
            )
        })?),
        None => None,
    };
    // Always in front, even with no users yet: one added later is asked for
    // at once (and on a loopback listener no users means open to this host).
    // Open to this host only when it starts so (loopback, no users): a
    // gateway that had users never opens because the last one went.
    let open = opts.addr.ip().is_loopback() && opts.users.is_empty();
    let users = auth::Users::new(opts.users, open, opts.users_from);
    let gate = Arc::new(auth::Gate::new()?);
    let g = gate.clone();
    runner.every("webdav-logins", Duration::from_secs(60), move || {
        g.forget_idle();
        Ok(())
    })?;
    let locks = locks::Locks::new();
    let l = locks.clone();
    runner.every("webdav-locks", Duration::from_secs(30), move || {
        l.sweep();
        Ok(())
    })?;
    let app = app(engine, users, gate, locks, also);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("WebDAV at {scheme}://{}{PREFIX}/", opts.addr);
    crate::metrics::serve_router(opts.addr, "webdav", app, tls, runner)
}
