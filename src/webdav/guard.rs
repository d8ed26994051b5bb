//! What a WebDAV request must be before any parser or lock table sees it.
//! dav-server and `times` parse XML bodies recursively (`xmltree`), so a
//! body of a few thousand nested elements overflows the stack and ends the
//! whole daemon, with the unsealed writes it holds. Here the body of a
//! method that carries XML is read whole up to [`MAX_XML_BODY`] and its
//! nesting counted by xml-rs's streaming reader, which does not recurse;
//! deeper than [`MAX_DEPTH`] is answered 400 and goes no further. A Range of
//! more than [`MAX_RANGES`] ranges is ignored. A LOCK of
//! the volume's root is refused (it would shut every other client out), and
//! so is a new lock past the caps of the lock table (`locks`).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};

/// The largest XML body taken (a PROPFIND, PROPPATCH or LOCK).
pub const MAX_XML_BODY: usize = 1 << 20;
/// The deepest nesting of elements taken in an XML body.
pub const MAX_DEPTH: usize = 64;
/// The largest LOCK body taken: its owner element is kept with the lock.
pub const MAX_LOCK_BODY: usize = 8 << 10;
/// The most ranges one GET is answered with.
pub const MAX_RANGES: usize = 16;

/// The methods whose bodies dav-server reads as XML.
fn carries_xml(m: &Method) -> bool {
    matches!(m.as_str(), "PROPFIND" | "PROPPATCH" | "LOCK")
}

/// `req` as it may go on (its body read, when it carries XML), or the
/// answer that ends it.
pub(super) async fn check(
    mut req: Request,
    prefix: &str,
    locks: &super::locks::Locks,
    principal: Option<&str>,
) -> Result<Request, Response> {
    // A Range header of many ranges (or overlapping ones) made a 1 MiB file
    // answer 2 GB: past [`MAX_RANGES`] it is ignored, as RFC 9110 allows,
    // and the file is sent once, whole.
    let many = req
        .headers()
        .get(axum::http::header::RANGE)
        .is_some_and(|r| {
            r.len() > 1024 || r.as_bytes().iter().filter(|&&b| b == b',').count() >= MAX_RANGES
        });
    if many {
        req.headers_mut().remove(axum::http::header::RANGE);
    }
    if req
        .headers()
        .get_all("if")
        .iter()
        .any(|v| !if_header_safe(v.as_bytes()))
    {
        return Err((
            StatusCode::BAD_REQUEST,
            "an If header with an unclosed <…> or […]\n",
        )
            .into_response());
    }
    if let Some(why) = cross_site(&req) {
        return Err((StatusCode::FORBIDDEN, format!("{why}\n")).into_response());
    }
    // The root is never locked (it would shut every other client out), nor
    // copied, moved, deleted or written as a file; and nothing is copied or
    // moved onto it. dav-server took the root's parent for a COPY of it, a
    // path shorter than its own prefix, and panicked (found by the fuzz).
    let onto_root = req.headers().get("destination").is_some_and(|d| {
        is_root(
            destination_path(&String::from_utf8_lossy(d.as_bytes())),
            prefix,
        )
    });
    if is_root(req.uri().path(), prefix)
        && matches!(
            req.method().as_str(),
            "LOCK" | "COPY" | "MOVE" | "DELETE" | "PUT" | "MKCOL"
        )
        || onto_root
    {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "the root of the volume cannot be {}\n",
                match req.method().as_str() {
                    "LOCK" => "locked",
                    _ if onto_root => "replaced",
                    "DELETE" => "deleted",
                    "COPY" | "MOVE" => "copied or moved",
                    _ => "written as a file",
                }
            ),
        )
            .into_response());
    }
    if !carries_xml(req.method()) {
        return Ok(req);
    }
    let most = if req.method().as_str() == "LOCK" {
        MAX_LOCK_BODY
    } else {
        MAX_XML_BODY
    };
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, most).await else {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a {} body over {most} bytes\n", parts.method),
        )
            .into_response());
    };
    // A new lock (a LOCK with a body; a refresh has none) past the caps.
    if parts.method.as_str() == "LOCK"
        && !bytes.is_empty()
        && let Some(why) = locks.refusal(principal)
    {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{why}: unlock some, or wait for them to expire\n"),
        )
            .into_response());
    }
    if let Err(why) = shallow(&bytes) {
        return Err((StatusCode::BAD_REQUEST, format!("{why}\n")).into_response());
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// A user's file, as served: in the dashboard's origin, a page or an image
/// that runs script would act as the dashboard. So it may run nothing
/// (`Content-Security-Policy: sandbox`), its type is taken as sent
/// (`nosniff`), and the types a browser would run are downloaded, not shown.
pub(super) fn inert(res: &mut Response) {
    use axum::http::{HeaderValue, header};
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let active = h
        .get(header::CONTENT_TYPE)
        .and_then(|t| t.to_str().ok())
        .map(|t| t.to_ascii_lowercase())
        .is_some_and(|t| {
            ["html", "xml", "svg", "javascript", "ecmascript", "xsl"]
                .iter()
                .any(|a| t.contains(a))
        });
    if active {
        h.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment"),
        );
    }
}

/// Why a change comes from a web page of another site, if it does (CSRF:
/// a form posted across sites, or a script elsewhere riding the browser's
/// login). A browser names the page's origin (`Origin`) on every request
/// that may change something, and says where it came from
/// (`Sec-Fetch-Site`); the Files view's own requests are same-origin.
/// WebDAV clients send neither, and pass.
fn cross_site(req: &Request) -> Option<String> {
    use axum::http::header;
    if super::auth::reads_only(req.method()) {
        return None;
    }
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site")
        && site != "same-origin"
        && site != "none"
    {
        return Some(format!(
            "a change sent by a page of another site ({}) is refused",
            String::from_utf8_lossy(site.as_bytes())
        ));
    }
    let origin = h.get(header::ORIGIN)?;
    let origin = String::from_utf8_lossy(origin.as_bytes());
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            h.get(header::HOST)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        })
        .unwrap_or_default();
    let same = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| !host.is_empty() && o.eq_ignore_ascii_case(&host));
    (!same)
        .then(|| format!("a change sent by a page of another site (Origin: {origin}) is refused"))
}

/// Whether dav-server can read an `If` header without panicking. Its
/// tokenizer looks for the `>` or `]` that closes a `<` or `[` (skipping
/// quoted parts) without checking the end of the header, so `If: (<x`
/// indexed past it (found by `tests/it/webdav_fuzz.rs`). Here every `<`
/// and `[` is scanned the same way, bounded: one that reaches the end
/// unclosed makes the header unsafe (400). One that meets whitespace first
/// is refused by dav-server itself.
fn if_header_safe(value: &[u8]) -> bool {
    let closed = |from: usize, close: u8| {
        let mut quote = false;
        for &b in &value[from + 1..] {
            if !quote && b == close {
                return true;
            }
            if b" \t\r\n".contains(&b) {
                return true;
            }
            if b == b'"' {
                quote = !quote;
            }
        }
        false
    };
    value.iter().enumerate().all(|(i, &b)| match b {
        b'<' => closed(i, b'>'),
        b'[' => closed(i, b']'),
        _ => true,
    })
}

/// The path of a `Destination` header: the header itself when it is a
/// path, else what follows the scheme and authority of its URL.
fn destination_path(d: &str) -> &str {
    match d.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i..]),
        None => d,
    }
}

fn is_root(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.trim_matches('/').is_empty())
}

/// Whether an XML body nests at most [`MAX_DEPTH`] elements. A body that is
/// not XML passes: the parser after this one says so, and it stops at the
/// same place this reader does, so no deeper than it got here.
fn shallow(body: &[u8]) -> Result<(), String> {
    use xml::reader::{EventReader, XmlEvent};
    let mut depth = 0usize;
    for event in EventReader::new(body) {
        match event {
            Ok(XmlEvent::StartElement { .. }) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!(
                        "an XML body nested deeper than {MAX_DEPTH} elements"
                    ));
                }
            }
            Ok(XmlEvent::EndElement { .. }) => depth = depth.saturating_sub(1),
            Ok(XmlEvent::EndDocument) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize) -> Vec<u8> {
        let mut s = String::from("<?xml version=\"1.0\"?><D:propfind xmlns:D=\"DAV:\">");
        s.push_str(&"<a>".repeat(n));
        s.push_str(&"</a>".repeat(n));
        s.push_str("</D:propfind>");
        s.into_bytes()
    }

    #[test]
    fn deep_bodies_are_refused_and_shallow_ones_pass() {
        assert!(shallow(&nested(MAX_DEPTH - 1)).is_ok());
        assert!(shallow(&nested(MAX_DEPTH)).is_err());
        // Deep and never closed, deep and cut: refused all the same, without
        // recursion (a recursive reader overflows its stack here).
        let open: Vec<u8> = "<a>".repeat(200_000).into_bytes();
        assert!(shallow(&open).is_err());
        assert!(shallow(b"not xml at all").is_ok());
        assert!(shallow(b"").is_ok());
    }

    #[test]
    fn changes_from_other_sites_are_told_apart() {
        let req = |method: &str, headers: &[(&str, &str)]| {
            let mut b = Request::builder().method(method).uri("/dav/x");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(Body::empty()).unwrap()
        };
        let host = ("host", "127.0.0.1:8080");
        // WebDAV clients send no Origin; reads pass whatever they say.
        assert!(cross_site(&req("PUT", &[host])).is_none());
        assert!(cross_site(&req("GET", &[host, ("origin", "http://evil.example")])).is_none());
        // The Files view's own changes.
        let own = ("origin", "http://127.0.0.1:8080");
        assert!(
            cross_site(&req(
                "DELETE",
                &[host, own, ("sec-fetch-site", "same-origin")]
            ))
            .is_none()
        );
        // Another site, another port, a sandboxed or file page, a form.
        for origin in [
            "http://evil.example",
            "http://127.0.0.1:9",
            "null",
            "http://127.0.0.1:8080.evil",
        ] {
            assert!(
                cross_site(&req("PUT", &[host, ("origin", origin)])).is_some(),
                "{origin}"
            );
        }
        assert!(cross_site(&req("POST", &[host, own, ("sec-fetch-site", "cross-site")])).is_some());
        assert!(cross_site(&req("MOVE", &[host, own, ("sec-fetch-site", "same-site")])).is_some());
    }

    #[test]
    fn if_headers_dav_server_would_overrun_are_told_apart() {
        for ok in [
            "(<urn:uuid:1>)",
            "(<urn:uuid:1> [\"etag\"]) (Not <DAV:no-lock>)",
            "<http://h/dav/a> (<urn:uuid:1>)",
            "(<a b>)",
            "",
        ] {
            assert!(if_header_safe(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "(<urn:uuid:1",
            "<",
            "([\"etag\"",
            "(<a\"b>)",
            "[",
            "(<x>) [",
        ] {
            assert!(!if_header_safe(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn only_the_root_itself_is_the_root() {
        for p in ["/dav", "/dav/", "/dav//"] {
            assert!(is_root(p, "/dav"), "{p}");
        }
        for p in ["/dav/a", "/dav/a/", "/other"] {
            assert!(!is_root(p, "/dav"), "{p}");
        }
        assert_eq!(destination_path("http://h:1/dav/x"), "/dav/x");
        assert_eq!(destination_path("http://h:1"), "");
        assert_eq!(destination_path("/dav"), "/dav");
        assert!(is_root(destination_path("https://h/dav/"), "/dav"));
    }
}
