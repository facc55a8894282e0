//! Logging set-up (one subscriber, text or JSON), the one-line error format of log fields,
//! and the heartbeats behind /readyz.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Installs the global tracing subscriber writing to stderr; call once at start-up.
pub fn init(filter: &str, format: &str) -> anyhow::Result<()> {
    init_with_writer(filter, format, std::io::stderr, true)
}

/// Installs the global tracing subscriber writing to `writer` (ANSI colours only if `ansi`
/// and `NO_COLOR` is unset or empty).
pub fn init_with_writer<W>(filter: &str, format: &str, writer: W, ansi: bool) -> anyhow::Result<()>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("invalid --log filter {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // Colours are on by default unless NO_COLOR is set (tracing-subscriber checks it).
    let builder = if ansi {
        builder
    } else {
        builder.with_ansi(false)
    };
    let result = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

/// `error: cause: cause` on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The time of the last success of some loop or client, shared by its clones (liveness for
/// /readyz).
#[derive(Clone, Debug, Default)]
pub struct Heartbeat(Arc<AtomicI64>);

impl Heartbeat {
    /// Records a success now.
    pub fn beat(&self) {
        self.0
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// True when the last success was within `within` (never: false).
    pub fn beat_within(&self, within: Duration) -> bool {
        let last = self.0.load(Ordering::Relaxed);
        let age = chrono::Utc::now().timestamp_millis() - last;
        last > 0 && age <= i64::try_from(within.as_millis()).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_chain_joins_the_sources() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
        assert_eq!(error_chain(&std::io::Error::other("alone")), "alone");
    }

    #[test]
    fn heartbeat_is_dead_until_it_beats_and_shared_by_clones() {
        let h = Heartbeat::default();
        assert!(!h.beat_within(Duration::from_secs(3600)));
        h.clone().beat();
        assert!(h.beat_within(Duration::from_secs(60)));
    }
}
