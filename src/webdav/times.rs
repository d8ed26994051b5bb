//! Modification times as clients send them. dav-server answers a PROPPATCH
//! of Windows' `Win32LastModifiedTime` with 200 and sets nothing, refuses
//! RFC 4918's `getlastmodified` (403, failing the whole PROPPATCH), and
//! knows nothing of the `X-OC-Mtime` header on PUT (ownCloud's, which
//! rclone's owncloud and nextcloud vendors send). Here the time is taken from
//! the request, dav-server answers the rest, and the mtime is set once its
//! answer says the request succeeded.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::time::{Duration, SystemTime};
use xmltree::{Element, XMLNode};

const NS_DAV: &str = "DAV:";
const NS_MS: &str = "urn:schemas-microsoft-com:";
const OC_MTIME: &str = "x-oc-mtime";
/// A PROPPATCH body larger than this is refused (413).
const MAX_PROPPATCH: usize = 1 << 20;

/// The mtime a request asks for, and how its success shows.
pub(super) struct Wanted {
    pub(super) mtime: SystemTime,
    /// PUT with X-OC-Mtime: the answer says `X-OC-Mtime: accepted`.
    header: bool,
}

/// Takes the mtime `req` asks for; the request to hand to dav-server (a
/// PROPPATCH without its `getlastmodified`), or the answer when it is bad.
pub(super) async fn take(req: Request) -> Result<(Request, Option<Wanted>), Response> {
    if req.method() == Method::PUT {
        let Some(v) = req.headers().get(OC_MTIME) else {
            return Ok((req, None));
        };
        // Checked: `1e300` is a number, but no time (it would overflow).
        let mtime = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d));
        let Some(mtime) = mtime else {
            return Err((StatusCode::BAD_REQUEST, "X-OC-Mtime: not unix seconds\n").into_response());
        };
        return Ok((
            req,
            Some(Wanted {
                mtime,
                header: true,
            }),
        ));
    }
    if req.method().as_str() != "PROPPATCH" {
        return Ok((req, None));
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_PROPPATCH).await else {
        return Err(StatusCode::PAYLOAD_TOO_LARGE.into_response());
    };
    let rebuild = |b: Vec<u8>| Request::from_parts(parts.clone(), Body::from(b));
    // Not XML: dav-server says so.
    let Ok(mut tree) = Element::parse(&bytes[..]) else {
        return Ok((rebuild(bytes.to_vec()), None));
    };
    let (mtime, removed) = times_in(&mut tree);
    let body = if removed {
        let mut out = Vec::new();
        if tree.write(&mut out).is_err() {
            return Err(StatusCode::BAD_REQUEST.into_response());
        }
        out
    } else {
        bytes.to_vec()
    };
    match mtime {
        Some(Err(())) => Err((StatusCode::BAD_REQUEST, "not an HTTP date\n").into_response()),
        Some(Ok(mtime)) => Ok((
            rebuild(body),
            Some(Wanted {
                mtime,
                header: false,
            }),
        )),
        None => Ok((rebuild(body), None)),
    }
}

/// The modification time a `propertyupdate` sets (`Err`: not a date), and
/// whether a `getlastmodified` was taken out of it.
fn times_in(tree: &mut Element) -> (Option<Result<SystemTime, ()>>, bool) {
    let mut mtime = None;
    let mut removed = false;
    for set in children(tree).filter(|e| is(e, NS_DAV, "set")) {
        for prop in children(set).filter(|e| is(e, NS_DAV, "prop")) {
            for p in children(prop) {
                if is(p, NS_MS, "Win32LastModifiedTime") || is(p, NS_DAV, "getlastmodified") {
                    let text = p.get_text().unwrap_or_default();
                    mtime = Some(httpdate::parse_http_date(text.trim()).map_err(drop));
                }
            }
            let before = prop.children.len();
            prop.children
                .retain(|n| !matches!(n, XMLNode::Element(e) if is(e, NS_DAV, "getlastmodified")));
            removed |= prop.children.len() != before;
        }
    }
    (mtime, removed)
}

fn children(e: &mut Element) -> impl Iterator<Item = &mut Element> {
    e.children.iter_mut().filter_map(|n| match n {
        XMLNode::Element(e) => Some(e),
        _ => None,
    })
}

fn is(e: &Element, ns: &str, name: &str) -> bool {
    e.name == name && e.namespace.as_deref() == Some(ns)
}

/// Whether dav-server's answer to the request says it succeeded.
pub(super) fn succeeded(method: &Method, status: StatusCode) -> bool {
    if method.as_str() == "PROPPATCH" {
        status == StatusCode::MULTI_STATUS
    } else {
        status.is_success()
    }
}

/// Marks an answer whose X-OC-Mtime was applied.
pub(super) fn accepted(w: &Wanted, res: &mut Response) {
    if w.header {
        res.headers_mut()
            .insert(OC_MTIME, HeaderValue::from_static("accepted"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> (Option<Result<SystemTime, ()>>, bool, String) {
        let mut tree = Element::parse(xml.as_bytes()).unwrap();
        let (t, removed) = times_in(&mut tree);
        let mut out = Vec::new();
        tree.write(&mut out).unwrap();
        (t, removed, String::from_utf8(out).unwrap())
    }

    #[test]
    fn windows_and_rfc_times_are_taken_and_getlastmodified_left_out() {
        let (t, removed, _) = parse(
            r#"<?xml version="1.0"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:schemas-microsoft-com:">
            <D:set><D:prop><Z:Win32LastModifiedTime>Tue, 01 Jan 2019 10:00:00 GMT</Z:Win32LastModifiedTime>
            <Z:Win32FileAttributes>00000020</Z:Win32FileAttributes></D:prop></D:set></D:propertyupdate>"#,
        );
        assert_eq!(
            t,
            Some(Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(1546336800)))
        );
        assert!(!removed);
        let (t, removed, out) = parse(
            r#"<propertyupdate xmlns="DAV:"><set><prop><getlastmodified>Sun, 13 Sep 2020 12:26:40 GMT</getlastmodified>
            <x:color xmlns:x="urn:x">red</x:color></prop></set></propertyupdate>"#,
        );
        assert_eq!(
            t,
            Some(Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(1600000000)))
        );
        assert!(removed && !out.contains("getlastmodified") && out.contains("red"));
        let (t, _, _) = parse(
            r#"<propertyupdate xmlns="DAV:"><set><prop><getlastmodified>yesterday</getlastmodified></prop></set></propertyupdate>"#,
        );
        assert_eq!(t, Some(Err(())));
        let (t, removed, _) = parse(
            r#"<propertyupdate xmlns="DAV:"><remove><prop><getlastmodified/></prop></remove></propertyupdate>"#,
        );
        assert_eq!((t, removed), (None, false));
    }
}
