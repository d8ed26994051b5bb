//! The last warnings and errors this process logged, for the dashboard: a
//! `tracing` layer beside the log's formatter, keeping datamesh's own WARN
//! and ERROR events in memory.

use crate::util::lock;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// How many are kept.
pub const KEEP: usize = 20;

/// One logged warning or error.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Logged {
    /// Unix seconds.
    pub at: u64,
    pub level: &'static str,
    pub message: String,
}

static RECENT: Mutex<VecDeque<Logged>> = Mutex::new(VecDeque::new());

/// The layer; add it with a WARN filter, so it costs nothing for the
/// events below.
pub struct Recent;

impl<S: Subscriber> Layer<S> for Recent {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        // More verbose than WARN, or another crate's (libp2p's chatter).
        if *meta.level() > Level::WARN || !meta.target().starts_with("datamesh") {
            return;
        }
        let mut text = Text(String::new());
        event.record(&mut text);
        note(Logged {
            at: crate::net::trust::now_secs(),
            level: if *meta.level() == Level::ERROR {
                "error"
            } else {
                "warning"
            },
            message: text.0,
        });
    }
}

fn note(logged: Logged) {
    let mut recent = lock(&RECENT);
    if recent.len() == KEEP {
        recent.pop_front();
    }
    recent.push_back(logged);
}

/// The event's message, then its other fields as `name=value`.
struct Text(String);

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

/// What was kept, newest first.
pub fn recent() -> Vec<Logged> {
    lock(&RECENT).iter().rev().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    #[test]
    fn keeps_the_last_warnings_of_datamesh_newest_first() {
        let subscriber = tracing_subscriber::registry()
            .with(Recent.with_filter(tracing_subscriber::filter::LevelFilter::WARN));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("not kept: info");
            tracing::warn!(target: "libp2p_swarm", "not kept: another crate's");
            for i in 0..KEEP + 3 {
                tracing::warn!(peer = "12D3", "peer gone {i}");
            }
            tracing::error!("disk full");
        });
        let got = recent();
        assert_eq!(got.len(), KEEP);
        assert_eq!(got[0].message, "disk full");
        assert_eq!(got[0].level, "error");
        assert_eq!(got[1].message, format!("peer gone {} peer=12D3", KEEP + 2));
        assert_eq!(got[1].level, "warning");
        assert!(got.iter().all(|l| !l.message.starts_with("not kept")));
    }
}
