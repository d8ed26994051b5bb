//! The Files view: a GET of a collection answers an HTML page listing it
//! (folders first, sorted by name, size or time; breadcrumbs), in the
//! dashboard's style, so a person with only a browser can browse and
//! download without JavaScript. With it (`assets/files.js`), a user who may
//! change the volume uploads (picker, drag and drop, streamed, with
//! progress), makes folders, renames, moves and deletes, all through the
//! gateway's own WebDAV methods, so the page has no write path of its own:
//! every change meets the same checks, locks and read-only rules as any
//! client. Changes are guarded against other sites by `guard::same_origin`.

use super::{PREFIX, blocking, names};
use crate::data::Engine;
use crate::types::{Attr, FileKind};
use crate::util::human;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use std::sync::Arc;

/// The page's stylesheet: the dashboard's, then the Files view's own.
pub const CSS: &str = concat!(
    include_str!("../dashboard/assets/dashboard.css"),
    include_str!("assets/files.css")
);
pub const JS: &str = include_str!("assets/files.js");
/// Where the page finds them (outside `/dav/`: no file of the volume can
/// take their place).
pub const CSS_PATH: &str = "/files.css";
pub const JS_PATH: &str = "/files.js";

/// What a name may show unescaped in a URL path (RFC 3986 unreserved).
const PATH_NAME: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A name as one URL path segment (any bytes: a name need not be UTF-8).
pub fn encode(name: &[u8]) -> String {
    percent_encoding::percent_encode(name, PATH_NAME).to_string()
}

/// How the listing is ordered (`?sort=`, `&desc`); folders come first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Sort {
    #[default]
    Name,
    Size,
    Modified,
}

struct Order {
    by: Sort,
    desc: bool,
}

impl Order {
    fn parse(query: Option<&str>) -> Order {
        let mut o = Order {
            by: Sort::Name,
            desc: false,
        };
        for pair in query.unwrap_or("").split('&') {
            match pair {
                "sort=size" => o.by = Sort::Size,
                "sort=modified" => o.by = Sort::Modified,
                "desc" | "desc=1" => o.desc = true,
                _ => {}
            }
        }
        o
    }

    fn sort(&self, entries: &mut [(Vec<u8>, Attr)]) {
        entries.sort_by(|(an, a), (bn, b)| {
            let dirs_first = (b.kind == FileKind::Dir).cmp(&(a.kind == FileKind::Dir));
            let by_name = || {
                let (x, y) = (String::from_utf8_lossy(an), String::from_utf8_lossy(bn));
                x.to_lowercase().cmp(&y.to_lowercase()).then(an.cmp(bn))
            };
            let key = match self.by {
                Sort::Name => by_name(),
                Sort::Size => a.size.cmp(&b.size).then_with(by_name),
                Sort::Modified => (a.mtime.secs, a.mtime.nanos)
                    .cmp(&(b.mtime.secs, b.mtime.nanos))
                    .then_with(by_name),
            };
            dirs_first.then(if self.desc { key.reverse() } else { key })
        });
    }

    /// The link of a column's heading: by it ascending, or descending when
    /// it is already the order.
    fn link(&self, by: Sort) -> String {
        let name = match by {
            Sort::Name => "name",
            Sort::Size => "size",
            Sort::Modified => "modified",
        };
        let desc = if self.by == by && !self.desc {
            "&desc"
        } else {
            ""
        };
        format!("?sort={name}{desc}")
    }
}

/// What the page shows the visitor (`Caller`'s access and the place).
pub struct Viewer {
    /// May change the volume (not a read-only user).
    pub writes: bool,
}

/// The listing of the collection at `path` (a `/dav/…` path ending in `/`),
/// or `None` when it is not a directory (the request then goes on to
/// dav-server). A folder named without its final `/` is redirected.
pub async fn page(
    engine: Arc<Engine>,
    path: &dav_server::davpath::DavPath,
    uri: &axum::http::Uri,
    viewer: Viewer,
) -> Option<Response> {
    let names = names(path).ok()?;
    let n = names.clone();
    let listed = blocking(move || super::list(&engine, &n)).await;
    let (dir, mut entries) = listed.ok()?;
    if dir.kind != FileKind::Dir {
        return None;
    }
    // The page's links are relative to the folder: its address ends in `/`.
    if !uri.path().ends_with('/') {
        let to = format!("{}/", uri.path());
        return Some(
            (
                StatusCode::MOVED_PERMANENTLY,
                [(header::LOCATION, to)],
                "a folder's address ends in /\n",
            )
                .into_response(),
        );
    }
    let order = Order::parse(uri.query());
    order.sort(&mut entries);
    let snapshot = names
        .first()
        .is_some_and(|n| n == crate::meta::snapshots::SNAPSHOTS_NAME);
    let writes = viewer.writes && !snapshot;
    let body = render(&names, &entries, &order, writes, snapshot);
    let mut res = axum::response::Html(body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(res)
}

fn when(a: &Attr) -> (String, String) {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::new(a.mtime.secs.max(0) as u64, a.mtime.nanos);
    let full = humantime::format_rfc3339_seconds(t).to_string();
    let short = full.get(..16).unwrap_or(&full).replace('T', " ");
    (full, short)
}

fn kind(name: &[u8], a: &Attr) -> String {
    match a.kind {
        FileKind::Dir => "folder".into(),
        _ => mime_guess::from_path(String::from_utf8_lossy(name).as_ref())
            .first()
            .map_or_else(|| "file".to_string(), |m| m.essence_str().to_string()),
    }
}

fn render(
    names: &[Vec<u8>],
    entries: &[(Vec<u8>, Attr)],
    order: &Order,
    writes: bool,
    snapshot: bool,
) -> String {
    let title = names.last().map_or("volume".to_string(), |n| {
        String::from_utf8_lossy(n).into_owned()
    });
    let heading = |label: &str, by: Sort, class: &str| -> Markup {
        let mark = match (order.by == by, order.desc) {
            (true, false) => " ↑",
            (true, true) => " ↓",
            _ => "",
        };
        html! { th class=(class) { a href=(order.link(by)) { (label) (mark) } } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · datamesh files" }
                link rel="stylesheet" href=(CSS_PATH);
                script src=(JS_PATH) defer {}
            }
            body.files data-writes=(if writes { "yes" } else { "no" }) {
                header.top {
                    a.logo href="/" { "datamesh" }
                    nav.crumbs aria-label="folder" {
                        (crumbs(names))
                    }
                    @if names.is_empty() {
                        a.dav href={ (PREFIX) "/.snapshots/" } { "Snapshots" }
                    }
                }
                main {
                    @if snapshot {
                        p.note { "A snapshot: read-only. Copy a file out by downloading it." }
                    }
                    @if writes {
                        section.panel.tools #tools {
                            form #mkdir {
                                input name="name" placeholder="New folder name" required
                                    maxlength="255" aria-label="new folder name";
                                button type="submit" { "Create folder" }
                            }
                            label.pick {
                                "Upload files…"
                                input #pick type="file" multiple;
                            }
                            div #drop { "or drop files anywhere on this page" }
                            ul #uploads {}
                            p #status role="status" {}
                        }
                    }
                    section.panel {
                        table.list {
                            thead {
                                tr {
                                    (heading("Name", Sort::Name, "name"))
                                    (heading("Size", Sort::Size, "size"))
                                    (heading("Modified", Sort::Modified, "when"))
                                    th.kind { "Type" }
                                    th.act { span.hidden { "Actions" } }
                                }
                            }
                            tbody {
                                @if !names.is_empty() {
                                    tr.up { td.name colspan="5" { a href="../" { "↑ up" } } }
                                }
                                @for (name, a) in entries {
                                    (row(name, a, writes))
                                }
                                @if entries.is_empty() {
                                    tr { td.muted colspan="5" { "Empty folder." } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    .into_string()
}

fn crumbs(names: &[Vec<u8>]) -> Markup {
    let mut href = format!("{PREFIX}/");
    let steps: Vec<(String, String)> = names
        .iter()
        .map(|n| {
            href.push_str(&encode(n));
            href.push('/');
            (href.clone(), String::from_utf8_lossy(n).into_owned())
        })
        .collect();
    html! {
        a href={ (PREFIX) "/" } { "volume" }
        @for (href, name) in &steps {
            " / "
            a href=(href) { (name) }
        }
    }
}

fn row(name: &[u8], a: &Attr, writes: bool) -> Markup {
    let dir = a.kind == FileKind::Dir;
    let seg = encode(name);
    let href = if dir { format!("{seg}/") } else { seg.clone() };
    let shown = String::from_utf8_lossy(name);
    let (full, short) = when(a);
    html! {
        tr class=(if dir { "dir" } else { "file" }) data-name=(seg) {
            td.name {
                a href=(href) { (shown) @if dir { "/" } }
            }
            td.size { @if dir { "—" } @else { (human(a.size)) } }
            td.when { time datetime=(full) { (short) } }
            td.kind { (kind(name, a)) }
            td.act {
                @if !dir {
                    a.get href=(seg) download=(shown) title="Download" { "Download" }
                }
                @if writes {
                    button.mv type="button" { "Rename" }
                    button.rm type="button" { "Delete" }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Ino, Timestamp};

    fn attr(kind: FileKind, size: u64, secs: i64) -> Attr {
        let t = Timestamp { secs, nanos: 0 };
        Attr {
            ino: Ino(5),
            kind,
            perm: 0o644,
            uid: 0,
            gid: 0,
            size,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            nlink: 1,
            rdev: 0,
            blocks: 0,
        }
    }

    #[test]
    fn folders_come_first_and_each_column_sorts_both_ways() {
        let mut e = vec![
            (b"b.txt".to_vec(), attr(FileKind::File, 10, 3)),
            (b"Zed".to_vec(), attr(FileKind::Dir, 0, 1)),
            (b"a.txt".to_vec(), attr(FileKind::File, 30, 2)),
            (b"alpha".to_vec(), attr(FileKind::Dir, 0, 9)),
        ];
        let names = |e: &[(Vec<u8>, Attr)]| {
            e.iter()
                .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        Order::parse(None).sort(&mut e);
        assert_eq!(names(&e), "alpha Zed a.txt b.txt");
        Order::parse(Some("sort=size&desc")).sort(&mut e);
        assert_eq!(names(&e), "Zed alpha a.txt b.txt");
        Order::parse(Some("sort=modified")).sort(&mut e);
        assert_eq!(names(&e), "Zed alpha a.txt b.txt");
        assert_eq!(Order::parse(None).link(Sort::Name), "?sort=name&desc");
        assert_eq!(Order::parse(None).link(Sort::Size), "?sort=size");
    }

    #[test]
    fn names_are_escaped_in_links_and_in_text() {
        let e = vec![(b"<b>&\"x y\xff".to_vec(), attr(FileKind::File, 1, 0))];
        let page = render(&[b"d i r".to_vec()], &e, &Order::parse(None), true, false);
        assert!(page.contains("href=\"%3Cb%3E%26%22x%20y%FF\""), "{page}");
        assert!(page.contains("&lt;b&gt;&amp;&quot;x y\u{fffd}"), "{page}");
        assert!(page.contains("href=\"/dav/d%20i%20r/\""), "{page}");
        assert!(!page.contains("<b>"));
        assert!(page.contains("button class=\"rm\""));
        let read_only = render(&[], &e, &Order::parse(None), false, false);
        assert!(!read_only.contains("<button") && !read_only.contains("id=\"tools\""));
    }
}
