//! `cloudpods`: start-up, subcommand dispatch, telemetry.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use cloudpods::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let logging = match &cli.command {
        // The sandbox's terminal shows its table; its operator and API log to a file.
        Command::Dev(_) => cloudpods::dev::init_logging(&cli.log, &cli.log_format),
        _ => cloudpods::telemetry::init(&cli.log, &cli.log_format),
    };
    if let Err(e) = logging {
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
        Command::Api(args) => cloudpods::api::run(&args).await,
        Command::Operator(args) => cloudpods::operator::run(&args).await,
        Command::BenchApi(args) => {
            let settings = cloudpods::bench_api::BenchSettings {
                base_url: args.url.clone(),
                token: args.token.clone(),
                rates: args.rates.clone(),
                duration: args.duration,
                scenarios: args.scenarios.clone(),
                max_in_flight: args.max_in_flight,
                timeout: args.timeout,
            };
            if args.json {
                let reports =
                    cloudpods::bench_api::run_with_output(settings, &mut std::io::stderr()).await?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&cloudpods::bench_api::to_json(&reports))?
                );
            } else {
                cloudpods::bench_api::run(settings).await?;
            }
            Ok(())
        }
        Command::BenchOperator(args) => cloudpods::bench_operator::run(&args).await.map(drop),
        Command::Dev(args) => cloudpods::dev::run(&args).await,
        Command::Token(args) => {
            println!("{}", cloudpods::api::mint_token(&args)?);
            Ok(())
        }
    }
}
