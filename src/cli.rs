//! Command line and settings: the one place that reads the environment.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// CloudPods: Proxmox VE virtual machines for hosting customers, driven by Kubernetes resources.
#[derive(Parser, Debug)]
#[command(name = "cloudpods", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "cloudpods=debug,kube=warn".
    #[arg(long, env = "CLOUDPODS_LOG", default_value = "info", global = true)]
    pub log: String,

    /// Log format: "text" for people, "json" for log pipelines.
    #[arg(long, env = "CLOUDPODS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    pub log_format: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write the CustomResourceDefinitions generated from the Rust types as YAML files.
    Crdgen(CrdgenArgs),
    /// Apply the database migrations and upsert the plan and blueprint catalog (safe to re-run).
    Migrate(MigrateArgs),
    /// Measure `qm status` throughput over one pooled SSH connection vs a connection per command.
    BenchSsh(BenchSshArgs),
}

/// Arguments of `cloudpods crdgen`.
#[derive(Args, Debug)]
pub struct CrdgenArgs {
    /// Directory the CRD files are written to.
    #[arg(long, env = "CLOUDPODS_CRD_DIR", default_value = "crds")]
    pub out_dir: PathBuf,

    /// Do not write; exit non-zero if any file in the directory differs from a fresh generation.
    #[arg(long)]
    pub check: bool,
}

/// Postgres connection settings shared by every subcommand that needs the database.
#[derive(Args, Debug, Clone)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://cloudpods@db:5432/cloudpods. Never logged.
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub url: String,

    /// Maximum connections in the pool.
    #[arg(
        long = "database-max-connections",
        env = "CLOUDPODS_DATABASE_MAX_CONNECTIONS",
        default_value_t = 10
    )]
    pub max_connections: u32,
}

/// Arguments of `cloudpods migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Database settings.
    #[command(flatten)]
    pub db: DatabaseArgs,

    /// Plan and blueprint catalog (YAML, the CLOUD_POD_PLANS equivalent). Defaults to the built-in catalog.
    #[arg(long, env = "CLOUDPODS_CATALOG")]
    pub catalog: Option<PathBuf>,
}

/// Arguments of `cloudpods bench-ssh`.
#[derive(Args, Debug)]
pub struct BenchSshArgs {
    /// SSH host of the Proxmox node (or the test sshd).
    #[arg(long, env = "CLOUDPODS_BENCH_SSH_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// SSH port.
    #[arg(long, env = "CLOUDPODS_BENCH_SSH_PORT", default_value_t = 22)]
    pub port: u16,

    /// SSH user.
    #[arg(long, env = "CLOUDPODS_BENCH_SSH_USER")]
    pub user: String,

    /// Private key file (ed25519, unencrypted). Only the path is ever printed.
    #[arg(long, env = "CLOUDPODS_BENCH_SSH_KEY")]
    pub key: PathBuf,

    /// known_hosts file that lists the node's host key.
    #[arg(long, env = "CLOUDPODS_BENCH_SSH_KNOWN_HOSTS")]
    pub known_hosts: PathBuf,

    /// VMID passed to `qm status`.
    #[arg(long, env = "CLOUDPODS_BENCH_VMID", default_value_t = 9000)]
    pub vmid: u32,

    /// Length of each run, e.g. `5s`, `500ms`, `1m`.
    #[arg(long, env = "CLOUDPODS_BENCH_DURATION", default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Concurrent callers per run (comma-separated).
    #[arg(
        long,
        env = "CLOUDPODS_BENCH_CONCURRENCY",
        value_delimiter = ',',
        default_value = "1,8,32"
    )]
    pub concurrency: Vec<usize>,

    /// Channels open at once on the pooled connection (sshd `MaxSessions`).
    #[arg(long, env = "CLOUDPODS_BENCH_MAX_SESSIONS", default_value_t = 10)]
    pub max_sessions: usize,
}

/// Parses `5s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try 5s, 500ms, 1m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in {s:?} (use ms, s or m)")),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("duration must be positive: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("x").is_err());
    }
}
