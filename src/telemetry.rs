//! Logging set-up: one subscriber, text or JSON.

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
