//! `cloudpods`: start-up, subcommand dispatch, telemetry.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use cloudpods::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cloudpods::telemetry::init(&cli.log, &cli.log_format) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crdgen(args) => {
            let report = cloudpods::crdgen::run(&args.out_dir, args.check)
                .with_context(|| format!("crdgen into {}", args.out_dir.display()))?;
            for line in report {
                println!("{line}");
            }
            Ok(())
        }
        Command::Migrate(args) => {
            let catalog = match &args.catalog {
                Some(path) => cloudpods::catalog::Catalog::load(path)?,
                None => cloudpods::catalog::Catalog::builtin()?,
            };
            let pool = cloudpods::store::connect(&args.db).await?;
            let applied = cloudpods::store::migrate(&pool).await?;
            let report = cloudpods::store::seed_catalog(&pool, &catalog).await?;
            println!("migrations: {applied} newly applied");
            println!("{report}");
            Ok(())
        }
        Command::BenchSsh(args) => cloudpods::bench_ssh::run(&args).await.map(drop),
    }
}
