//! The WebDAV gateway's request path fuzzed: random raw bytes, and requests
//! built from the protocol's own parts (every method, hostile paths, the
//! headers dav-server and our guard read, XML bodies of its vocabulary,
//! nested and cut), sent over TCP to the whole stack a listener serves
//! (`listen::guarded` over `webdav::app`: the gate, the guard, the Files
//! view, dav-server, the lock table) on a real engine. After each request
//! the gateway must have answered or closed within seconds; at the end no
//! handler may have panicked, a normal PUT and GET must work, and the
//! volume must check clean.
//!
//! `DATAMESH_FUZZ_CASES` sets the number of requests of each kind (CI runs
//! a few hundred; `scripts/fuzz-webdav.sh` runs for hours).

use datamesh::webdav;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Panics anywhere in the process while the fuzz runs.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// The gateway on a fresh volume, served on loopback by a runtime of its
/// own (kept alive by the returned handle).
fn gateway(
    dir: &std::path::Path,
) -> (
    SocketAddr,
    Arc<datamesh::data::Engine>,
    tokio::runtime::Runtime,
) {
    let engine = Arc::new(crate::model::open(dir, true));
    let kept = engine.clone();
    let users = webdav::auth::Users::new(Vec::new(), true, None);
    let gate = Arc::new(webdav::auth::Gate::new().unwrap());
    let app = webdav::app(
        engine,
        users,
        gate,
        webdav::locks::Locks::new(),
        axum::Router::new(),
    );
    let app = datamesh::listen::guarded(app);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    (addr, kept, rt)
}

/// Sends `raw` and returns what came back until the gateway closed (the
/// built requests say `Connection: close`). A whole request (`whole`) must
/// be answered within 20 s; anything else may be waited on for more bytes,
/// and is dropped after a second.
fn exchange(addr: SocketAddr, raw: &[u8], whole: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    let wait = if whole { 20 } else { 1 };
    s.set_read_timeout(Some(Duration::from_secs(wait))).unwrap();
    let _ = s.write_all(raw);
    let start = Instant::now();
    let mut out = Vec::new();
    let r = s.read_to_end(&mut out);
    assert!(
        !whole || r.is_ok() || !out.is_empty(),
        "no answer in {:?} to {:?}",
        start.elapsed(),
        String::from_utf8_lossy(&raw[..raw.len().min(300)])
    );
    out
}

fn status(answer: &[u8]) -> u16 {
    std::str::from_utf8(answer.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

const METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "PUT",
    "DELETE",
    "MKCOL",
    "COPY",
    "MOVE",
    "PROPFIND",
    "PROPPATCH",
    "LOCK",
    "UNLOCK",
    "OPTIONS",
    "POST",
    "PATCH",
    "TRACE",
    "get",
    "X",
];

/// A path under the gateway: a few names, some hostile.
fn path() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("dir".to_string()),
        Just("..".to_string()),
        Just("%2e%2e".to_string()),
        Just(".".to_string()),
        Just("".to_string()),
        Just("%00".to_string()),
        Just(".snapshots".to_string()),
        Just("x".repeat(300)),
        Just("%ff%fe".to_string()),
        Just("a%2fb".to_string()),
        "[a-z%0-9]{1,12}",
    ];
    (
        prop_oneof![
            Just("/dav"),
            Just("/dav/"),
            Just("/"),
            Just("/files.js"),
            Just("//dav")
        ],
        proptest::collection::vec(name, 0..5),
        any::<bool>(),
        prop_oneof![Just(""), Just("?sort=size&desc"), Just("?%zz")],
    )
        .prop_map(|(top, names, slash, q)| {
            let mut p = top.trim_end_matches('/').to_string();
            for n in names {
                p.push('/');
                p.push_str(&n);
            }
            if slash {
                p.push('/');
            }
            if p.is_empty() {
                p.push('/');
            }
            p + q
        })
}

/// XML of WebDAV's vocabulary: nested elements, attributes, namespaces,
/// text; sometimes deep, sometimes cut short.
fn xml() -> impl Strategy<Value = String> {
    let names = prop_oneof![
        Just("D:propfind"),
        Just("D:prop"),
        Just("D:allprop"),
        Just("D:propname"),
        Just("D:lockinfo"),
        Just("D:lockscope"),
        Just("D:exclusive"),
        Just("D:shared"),
        Just("D:locktype"),
        Just("D:write"),
        Just("D:owner"),
        Just("D:href"),
        Just("D:propertyupdate"),
        Just("D:set"),
        Just("D:remove"),
        Just("D:getlastmodified"),
        Just("Z:Win32LastModifiedTime"),
        Just("x:custom"),
        Just("a"),
    ];
    let leaf = prop_oneof![
        Just(String::new()),
        "[ -~]{0,40}".prop_map(|t| t.replace('<', "&lt;")),
        Just("Thu, 01 Jan 1970 00:00:00 GMT".to_string()),
        Just("&amp;&#x0;&unknown;".to_string()),
        Just("<![CDATA[x]]>".to_string()),
    ];
    let tree = leaf.prop_recursive(8, 64, 4, move |inner| {
        (names.clone(), proptest::collection::vec(inner, 0..4))
            .prop_map(|(n, kids)| format!("<{n}>{}</{n}>", kids.concat()))
    });
    (
        tree,
        0usize..200,
        any::<bool>(),
        any::<u16>(),
        prop_oneof![
            Just("xmlns:D=\"DAV:\" xmlns:Z=\"urn:schemas-microsoft-com:\""),
            Just(""),
            Just("xmlns:D=\"other\""),
        ],
    )
        .prop_map(|(t, deep, cut, at, ns)| {
            let mut s = format!(
                "<?xml version=\"1.0\"?><D:propfind {ns}>{}{t}{}</D:propfind>",
                "<a>".repeat(deep),
                "</a>".repeat(deep)
            );
            // All ASCII: any byte is a place to cut.
            if cut && !s.is_empty() {
                s.truncate(at as usize % s.len());
            }
            s
        })
}

/// A header the gateway or dav-server reads, with a value that may be bad.
fn header() -> impl Strategy<Value = String> {
    prop_oneof![
        prop_oneof![Just("0"), Just("1"), Just("infinity"), Just("x")]
            .prop_map(|v| format!("Depth: {v}")),
        path().prop_map(|p| format!("Destination: http://127.0.0.1{p}")),
        path().prop_map(|p| format!("Destination: {p}")),
        prop_oneof![Just("T"), Just("F"), Just("?")].prop_map(|v| format!("Overwrite: {v}")),
        "[ -~]{0,60}".prop_map(|v| format!("If: ({v})")),
        Just("If: (<urn:uuid:0>) (Not <DAV:no-lock>)".to_string()),
        "[ -~]{0,40}".prop_map(|v| format!("Lock-Token: <{v}>")),
        prop_oneof![
            Just("Infinite"),
            Just("Second-1"),
            Just("Second-99999999999999"),
            Just("x")
        ]
        .prop_map(|v| format!("Timeout: {v}")),
        "[0-9,=-]{0,60}".prop_map(|v| format!("Range: bytes={v}")),
        "[0-9/*-]{0,30}".prop_map(|v| format!("Content-Range: bytes {v}")),
        prop_oneof![
            Just("1e300"),
            Just("-1"),
            Just("nan"),
            Just("1700000000"),
            Just("")
        ]
        .prop_map(|v| format!("X-OC-Mtime: {v}")),
        prop_oneof![
            Just("http://evil.example"),
            Just("null"),
            Just("http://127.0.0.1")
        ]
        .prop_map(|v| format!("Origin: {v}")),
        Just("Authorization: Basic !!!".to_string()),
        Just("Content-Type: application/xml".to_string()),
        Just("Expect: 100-continue".to_string()),
        Just("If-None-Match: *".to_string()),
        Just("If-Match: *".to_string()),
    ]
}

/// A request built of the protocol's parts, its framing sometimes wrong.
fn request() -> impl Strategy<Value = (Vec<u8>, bool)> {
    (
        proptest::sample::select(METHODS),
        path(),
        proptest::collection::vec(header(), 0..6),
        prop_oneof![xml(), "[ -~]{0,100}", Just(String::new())],
        0u8..4,
    )
        .prop_map(|(m, p, hs, body, framing)| {
            let mut r = format!("{m} {p} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
            for h in hs {
                r.push_str(&h);
                r.push_str("\r\n");
            }
            match framing {
                0 => r.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len())),
                // Promises more than it sends.
                1 => r.push_str(&format!(
                    "Content-Length: {}\r\n\r\n{body}",
                    body.len() + 10
                )),
                2 => r.push_str(&format!(
                    "Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                    body.len()
                )),
                _ => r.push_str(&format!("Transfer-Encoding: chunked\r\n\r\nzz\r\n{body}")),
            }
            (r.into_bytes(), framing != 1)
        })
}

fn cases() -> u32 {
    std::env::var("DATAMESH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

#[test]
fn fuzzed_requests_never_panic_hang_or_harm_the_volume() {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        hook(info);
    }));
    let dir = tempfile::tempdir().unwrap();
    let (addr, engine, _rt) = gateway(dir.path());
    let put = |path: &str, body: &str| {
        let raw = format!(
            "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        status(&exchange(addr, raw.as_bytes(), true))
    };
    // Something for the requests to find.
    assert_eq!(
        status(&exchange(
            addr,
            b"MKCOL /dav/dir/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            true
        )),
        201
    );
    assert_eq!(put("/dav/a", "kept"), 201);
    assert_eq!(put("/dav/dir/b", "also kept"), 201);

    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    let served: [AtomicU64; 6] = Default::default();
    let mut runner = TestRunner::new(config.clone());
    runner
        .run(&request(), |(raw, whole)| {
            let answer = exchange(addr, &raw, whole);
            let s = status(&answer) as usize;
            served[s / 100 % 6].fetch_add(1, Ordering::Relaxed);
            // A 500 is a handler that failed or panicked: never for these.
            prop_assert!(s != 500, "500 for {:?}", String::from_utf8_lossy(&raw));
            Ok(())
        })
        .unwrap();
    let mut runner = TestRunner::new(config);
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..2000), |raw| {
            exchange(addr, &raw, false);
            Ok(())
        })
        .unwrap();
    eprintln!("answers by class (0xx = none/closed, 1xx..5xx): {served:?}");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a handler panicked");

    // The gateway still serves, and the volume is whole.
    assert!(matches!(put("/dav/after", "after the fuzz"), 201 | 204));
    let got = exchange(
        addr,
        b"GET /dav/after HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        true,
    );
    assert!(
        got.ends_with(b"after the fuzz"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let report = engine.check(false, &|_, _| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
