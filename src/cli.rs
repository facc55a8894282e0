//! Command line and settings: the one place that reads the environment.

use std::path::PathBuf;

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
