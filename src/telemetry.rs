//! Logging set-up: one subscriber, text or JSON.

use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber; call once at start-up.
pub fn init(filter: &str, format: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("invalid --log filter {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}
