//! The dashboard's HTML: every number in the markup and the graphs as inline
//! SVG, so the page works without JavaScript; the stylesheet and script are
//! `assets/`. Bars are SVG too: the page's CSP allows no inline styles.

use super::{Dated, Rate, View};
use crate::data::Redundancy;
use crate::store::PeerStatus;
use crate::util::human;
use crate::workers::WorkerState;
use maud::{DOCTYPE, Markup, PreEscaped, html};

/// The whole page.
pub fn page(v: &View, dav: bool) -> String {
    let short = v.volume_id.get(..8).unwrap_or("");
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "datamesh " (short) }
                link rel="stylesheet" href="dashboard.css";
                script src="dashboard.js" defer {}
            }
            body {
                header.top {
                    span.logo { "datamesh" }
                    span.vol title=(v.volume_id) { "volume " (short) }
                    span.role { (v.role) " node" }
                    @if dav {
                        a.dav href="dav/" title="Browse, download and upload in the browser; or mount this address with a WebDAV client" { "Files" }
                    }
                    span.live {}
                }
                main #main { (PreEscaped(main(v, dav))) }
            }
        }
    }
    .into_string()
}

/// The part the script refreshes.
pub fn main(v: &View, _dav: bool) -> String {
    html! {
        section.cards {
            (files_card(v))
            (stored_card(v))
            (health_card(v))
            (peers_card(v))
        }
        section.graphs {
            (graph(
                "Throughput",
                &v.rates,
                &[
                    ("read", "read", |r: &Rate| r.read_bytes_per_sec),
                    ("write", "write", |r: &Rate| r.written_bytes_per_sec),
                ],
                (1 << 20) as f64,
                rate_bytes,
            ))
            (graph(
                "Operations",
                &v.rates,
                &[("ops", "ops", |r: &Rate| r.ops_per_sec)],
                1.0,
                |x| format!("{}/s", round(x)),
            ))
        }
        (peers_panel(v))
        section.panel.activity {
            h2 { "Repair and scrub" }
            @if v.running.is_empty() {
                p.muted { "No pass running now." }
            }
            @for p in &v.running {
                div.pass {
                    div.passline {
                        strong { (p.what) }
                        span { " started " (ago(v.now, p.started)) }
                        span.count {
                            @if p.total > 0 {
                                (thousands(p.done)) " of " (thousands(p.total)) " chunks"
                                @if let Some(left) = p.left_secs(v.now) {
                                    ", about " (span_words(left * 1000).trim_end_matches(" ago")) " left"
                                }
                            } @else if p.done == 0 {
                                "surveying the peers"
                            } @else {
                                (thousands(p.done)) " so far"
                            }
                        }
                    }
                    (bar(p.done as f64 / p.total.max(p.done).max(1) as f64, "pass"))
                }
            }
            @match &v.survey {
                Some(Dated { at, value: Ok(_) }) => p.muted { "Last survey of every peer's shards " (ago(v.now, *at)) "." },
                Some(Dated { at, value: Err(e) }) => p.bad { "The survey " (ago(v.now, *at)) " failed: " (e) },
                None => {}
            }
            @if let Some(line) = &v.protection {
                p { strong { "Namespace protection: " } (line) }
            }
        }
        section.panel {
            h2 { "Workers" }
            div.scroll {
                table.workers {
                    thead { tr { th { "worker" } th { "state" } th.num { "rounds" } th { "last error" } } }
                    tbody {
                        @for w in &v.workers {
                            tr {
                                td { (w.name) }
                                td { span class=(format!("state {}", state(w.state))) { (state(w.state)) } }
                                td.num { (thousands(w.rounds)) }
                                td.err {
                                    @if let Some(e) = &w.last_error {
                                        (e)
                                        @if let Some(at) = &w.last_error_at { span.muted { " (" (at) ")" } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section.panel {
            h2 { "Recent warnings and errors" }
            @if v.errors.is_empty() {
                p.muted { "None since this process started." }
            } @else {
                ul.errors {
                    @for e in &v.errors {
                        li {
                            span class=(format!("level {}", e.level)) { (e.level) }
                            span.when { (ago(v.now, e.at)) }
                            span.msg { (e.message) }
                        }
                    }
                }
            }
        }
        p.updated { "Updated " (crate::protect::when(v.now)) }
    }
    .into_string()
}

fn files_card(v: &View) -> Markup {
    html! {
        div.card {
            h2 { "Files" }
            @match &v.usage {
                Some(Dated { value: Ok(u), .. }) => {
                    p.big { (thousands(u.files)) }
                    p.sub { (thousands(u.dirs)) (if u.dirs == 1 { " directory" } else { " directories" }) }
                }
                Some(Dated { value: Err(e), .. }) => p.bad { (e) },
                None => (pending(v))
            }
        }
    }
}

fn stored_card(v: &View) -> Markup {
    html! {
        div.card {
            h2 { "Stored" }
            @match &v.usage {
                Some(Dated { value: Ok(u), .. }) => {
                    p.big { (human(u.stored_bytes + u.inline_bytes)) }
                    p.sub {
                        (human(u.logical_bytes)) " of files, as "
                        (v.data_shards) "+" (v.parity_shards) " shards"
                    }
                }
                Some(Dated { value: Err(_), .. }) => p.muted { "—" },
                None => (pending(v))
            }
        }
    }
}

fn health_card(v: &View) -> Markup {
    html! {
        @match &v.survey {
            Some(Dated { value: Ok(r), .. }) => {
                @let (class, big, line) = verdict(r);
                div class=(format!("card health {class}")) {
                    h2 { "Health" }
                    p.big { (big) }
                    p.sub { (line) }
                    (health_bar(r))
                    p.sub.legend {
                        span.full { (thousands(r.full)) " full" }
                        " · " span.reduced { (thousands(r.reduced)) " reduced" }
                        " · " span.critical { (thousands(r.critical)) " critical" }
                        " · " span.unreadable { (thousands(r.lost)) " unreadable" }
                        @if r.unknown > 0 { " · " span.unknown { (thousands(r.unknown)) " unknown" } }
                    }
                }
            }
            Some(Dated { value: Err(e), .. }) => div.card.health.bad { h2 { "Health" } p.bad { (e) } },
            None => div.card.health { h2 { "Health" } (pending(v)) },
        }
    }
}

/// How the volume stands: the class that colours it, a word or two, a line.
fn verdict(r: &Redundancy) -> (&'static str, String, String) {
    if r.lost > 0 {
        return (
            "bad",
            format!("{} unreadable", thousands(r.lost)),
            "chunks with fewer shards left than it takes to read them".into(),
        );
    }
    if r.unknown > 0 {
        return (
            "warn",
            "unknown".into(),
            "some storage peers did not answer the survey".into(),
        );
    }
    match r.survives {
        _ if r.chunks == 0 => ("ok", "empty".into(), "no chunks on the peers yet".into()),
        None => (
            "ok",
            "one host".into(),
            "every shard is on this host".into(),
        ),
        Some(0) => (
            "warn",
            "no margin".into(),
            "one more peer lost makes chunks unreadable".into(),
        ),
        Some(n) => (
            "ok",
            format!("{n} to spare"),
            format!(
                "survives any {n} storage peer{} lost",
                if n == 1 { "" } else { "s" }
            ),
        ),
    }
}

fn peers_card(v: &View) -> Markup {
    html! {
        div.card {
            h2 { "Peers" }
            @match &v.peers {
                Some(Dated { value: Ok(Some(peers)), .. }) => {
                    @let admitted: Vec<&PeerStatus> = peers.iter().filter(|p| p.admitted).collect();
                    @let up: Vec<&&PeerStatus> = admitted.iter().filter(|p| p.reachable).collect();
                    @let cap: u64 = up.iter().map(|p| p.capacity).sum();
                    @let used: u64 = up.iter().map(|p| p.bytes).sum();
                    p.big { (up.len()) " of " (admitted.len()) " reachable" }
                    p.sub { (human(used)) " used of " (human(cap)) }
                }
                Some(Dated { value: Ok(None), .. }) => {
                    p.big { "none" }
                    p.sub { "every shard is on this host" }
                }
                Some(Dated { value: Err(e), .. }) => p.bad { (e) },
                None => (pending(v))
            }
        }
    }
}

fn peers_panel(v: &View) -> Markup {
    let Some(Dated {
        value: Ok(Some(peers)),
        ..
    }) = &v.peers
    else {
        return html! {};
    };
    html! {
        section.panel {
            h2 { "Storage peers" }
            @if peers.is_empty() {
                p.muted { "No storage peer has joined yet (see `datamesh invite`)." }
            }
            ul.peers {
                @for p in peers {
                    @let (class, label) = match (p.admitted, p.reachable) {
                        (false, _) => ("off", "not admitted"),
                        (true, true) => ("ok", "reachable"),
                        (true, false) => ("bad", "unreachable"),
                    };
                    li.peer data-peer=(p.id) {
                        div.peerline {
                            span.id title=(p.id) { (short_id(&p.id)) }
                            span class=(format!("badge {class}")) { (label) }
                        }
                        @if p.reachable && p.capacity > 0 {
                            (bar(p.bytes as f64 / p.capacity as f64, "capacity"))
                        }
                        div.peerfacts {
                            @if p.reachable {
                                span { (human(p.bytes)) " of " (human(p.capacity)) }
                                span { (thousands(p.shards)) " shards" }
                            }
                            span.addr { (p.address) }
                        }
                    }
                }
            }
        }
    }
}

/// A horizontal bar filled to `frac`.
fn bar(frac: f64, class: &str) -> Markup {
    let w = (frac.clamp(0.0, 1.0) * 100.0 * 10.0).round() / 10.0;
    html! {
        svg class=(format!("bar {class}")) viewBox="0 0 100 6" preserveAspectRatio="none" role="img" aria-label=(format!("{w}%")) {
            rect.track width="100" height="6" rx="1" {}
            rect.fill width=(w) height="6" rx="1" {}
        }
    }
}

/// Chunks by health as one stacked bar.
fn health_bar(r: &Redundancy) -> Markup {
    let total = (r.full + r.reduced + r.critical + r.lost + r.unknown).max(1) as f64;
    let mut x = 0.0;
    let parts: Vec<(&str, f64, f64)> = [
        ("full", r.full),
        ("reduced", r.reduced),
        ("critical", r.critical),
        ("unreadable", r.lost),
        ("unknown", r.unknown),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(class, n)| {
        let w = n as f64 / total * 100.0;
        let at = x;
        x += w;
        (class, at, w)
    })
    .collect();
    html! {
        svg.bar.healthbar viewBox="0 0 100 6" preserveAspectRatio="none" role="img" aria-label="chunks by health" {
            rect.track width="100" height="6" rx="1" {}
            @for (class, at, w) in parts {
                rect class=(class) x=(format!("{at:.2}")) width=(format!("{w:.2}")) height="6" {}
            }
        }
    }
}

type Series<'a> = (&'a str, &'a str, fn(&Rate) -> f64);

/// A line graph of the last ten minutes, scaled on the server.
/// `unit`: the scale's steps are 1, 2 or 5 of it times a power of ten.
fn graph(
    title: &str,
    rates: &[Rate],
    series: &[Series],
    unit: f64,
    label: fn(f64) -> String,
) -> Markup {
    const W: f64 = 600.0;
    const H: f64 = 150.0;
    // The last ten minutes, or since the daemon started (a minute at least).
    let end = rates.last().map_or(0, |r| r.at);
    let first = rates.first().map_or(end, |r| r.at);
    let span = (end - first).clamp(60_000, super::SAMPLES as u64 * 1000);
    let start = end.saturating_sub(span);
    let max = rates
        .iter()
        .flat_map(|r| series.iter().map(move |s| (s.2)(r)))
        .fold(0.0, f64::max);
    let top = nice_ceiling(max / unit) * unit;
    let points = |f: fn(&Rate) -> f64| -> String {
        rates
            .iter()
            .map(|r| {
                let x = (r.at - start) as f64 / (end - start).max(1) as f64 * W;
                let y = H - f(r) / top * (H - 4.0);
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    html! {
        div.panel.graph {
            div.graphhead {
                h2 { (title) }
                span.legend {
                    @for (name, class, f) in series {
                        span class=(format!("key {class}")) {
                            (name) " " strong { (label(rates.last().map_or(0.0, f))) }
                        }
                    }
                }
            }
            div.plot {
                span.ymax { (label(top)) }
                svg.chart viewBox=(format!("0 0 {W} {H}")) preserveAspectRatio="none" role="img" aria-label=(format!("{title}, {} to now", span_words(span))) {
                    @for i in 1..4 {
                        line.grid x1="0" x2=(W) y1=(H * i as f64 / 4.0) y2=(H * i as f64 / 4.0) {}
                    }
                    @for (_, class, f) in series {
                        @if rates.len() > 1 {
                            polyline class=(format!("series {class}")) points=(points(*f)) {}
                        }
                    }
                }
                div.xaxis { span { (span_words(span)) } span { "now" } }
            }
        }
    }
}

/// How far back a graph reaches: `90 s ago`, `10 min ago`.
fn span_words(ms: u64) -> String {
    let s = ms.div_ceil(1000);
    if s < 120 {
        format!("{s} s ago")
    } else {
        format!("{} min ago", s / 60)
    }
}

/// 1, 2 or 5 times a power of ten at or above `x` (at least 1).
fn nice_ceiling(x: f64) -> f64 {
    if x <= 1.0 {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|v| *v >= x)
        .unwrap_or(10.0 * p)
}

fn rate_bytes(x: f64) -> String {
    format!("{}/s", human(x as u64))
}

fn round(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.1}")
    } else {
        thousands(x.round() as u64)
    }
}

fn pending(v: &View) -> Markup {
    html! {
        @if v.role == "member" {
            p.muted { "counted on the home node's dashboard" }
        } @else {
            p.muted { "counting…" }
        }
    }
}

fn state(s: WorkerState) -> &'static str {
    match s {
        WorkerState::Busy => "busy",
        WorkerState::Idle => "idle",
        WorkerState::Stopped => "stopped",
    }
}

/// `12D3KooW…last6`.
fn short_id(id: &str) -> String {
    match (id.get(..8), id.get(id.len().saturating_sub(6)..)) {
        (Some(a), Some(b)) if id.len() > 16 => format!("{a}…{b}"),
        _ => id.to_string(),
    }
}

/// `1 234 567`.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

fn ago(now: u64, at: u64) -> String {
    match now.saturating_sub(at) {
        0..=1 => "just now".into(),
        s @ 2..=119 => format!("{s} s ago"),
        s @ 120..=7199 => format!("{} min ago", s / 60),
        s => format!("{} h ago", s / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_and_numbers_read_well() {
        assert_eq!(nice_ceiling(0.3), 1.0);
        assert_eq!(nice_ceiling(1.5), 2.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
        assert_eq!(thousands(1234567), "1\u{202f}234\u{202f}567");
        assert_eq!(thousands(123), "123");
        assert_eq!(short_id("12D3KooWAbCdEfGhIjKlMn"), "12D3KooW…IjKlMn");
        assert_eq!(ago(100, 40), "60 s ago");
    }

    #[test]
    fn names_from_peers_and_errors_are_escaped() {
        let view = View {
            version: 1,
            now: 0,
            volume_id: "00".into(),
            role: "home",
            data_shards: 4,
            parity_shards: 2,
            usage: None,
            peers: Some(Dated {
                at: 0,
                value: Ok(Some(vec![PeerStatus {
                    tag: 0,
                    id: "<script>alert(1)</script>".into(),
                    address: "/ip4/1.2.3.4/tcp/1".into(),
                    reachable: false,
                    shards: 0,
                    bytes: 0,
                    capacity: 0,
                    admitted: true,
                }])),
            }),
            survey: None,
            running: vec![],
            protection: None,
            workers: vec![],
            errors: vec![super::super::recent::Logged {
                at: 0,
                level: "error",
                message: "<img src=x onerror=alert(1)>".into(),
            }],
            rates: vec![],
        };
        let html = page(&view, true);
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;img src=x"), "{html}");
        assert!(html.contains("unreachable"));
    }
}
