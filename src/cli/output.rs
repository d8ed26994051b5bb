//! How the command line shows things: sizes, modes, times and progress bars.
//! Progress bars are drawn only when standard error is a terminal.

use crate::types::*;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

pub fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .expect("valid template"),
    );
    pb
}

/// A bar of `what` over chunks (repair, scrub).
pub fn chunk_bar(what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(&format!("{what} {{bar:40}} {{pos}}/{{len}} chunks {{eta}}"))
            .expect("valid template"),
    );
    pb
}

/// A plain counting bar (fsck).
pub fn count_bar() -> ProgressBar {
    if std::io::stderr().is_terminal() {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    }
}

pub fn mode_string(a: &Attr) -> String {
    let t = match a.kind {
        FileKind::File => '-',
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::Fifo => 'p',
        FileKind::Socket => 's',
        FileKind::CharDev => 'c',
        FileKind::BlockDev => 'b',
    };
    let mut s = String::from(t);
    let p = a.perm;
    for (shift, special, ch) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (p >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (p & special != 0, x) {
            (true, true) => ch,
            (true, false) => ch.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

pub fn time_string(t: Timestamp) -> String {
    let st: std::time::SystemTime = t.into();
    humantime::format_rfc3339_seconds(st).to_string()
}

pub use crate::util::human;
