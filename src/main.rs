//! The `dals` binary: parse the command line, load settings, call into the library.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dals_registry::settings::{Overrides, Settings};
use dals_registry::{db::Db, ops, telemetry, verify};

/// DALS Registry: the worker registry on PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "dals", version, about)]
struct Cli {
    /// A TOML settings file (sections as in .env.example: [server], [database], ...).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides DALS_SERVER__HOST).
    #[arg(long, global = true)]
    host: Option<IpAddr>,
    /// Port to listen on (overrides DALS_SERVER__PORT).
    #[arg(long, global = true)]
    port: Option<u16>,
    /// PostgreSQL URL (overrides DATABASE_URL).
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the registry (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Check a running registry as the design document's verification script does.
    Verify(verify::VerifyArgs),
    /// Read the fleet of a running registry: list, get, status, events.
    Workers(ops::WorkersArgs),
    /// Read and extend the model catalog of a running registry.
    Catalog(ops::CatalogArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let migrate_only = match cli.command {
        Some(Command::Verify(args)) => return Ok(verify::run(&args).await),
        Some(Command::Workers(args)) => return Ok(ops::workers(&args).await),
        Some(Command::Catalog(args)) => return Ok(ops::catalog(&args).await),
        Some(Command::Migrate) => true,
        None | Some(Command::Serve) => false,
    };
    let overrides = Overrides {
        host: cli.host,
        port: cli.port,
        database_url: cli.database_url,
    };
    let settings = Settings::load(cli.config.as_deref(), &overrides)?;
    telemetry::init(&settings.log);
    if migrate_only {
        let db = Db::connect(&settings.database).await?;
        db.migrate().await?;
        db.close().await;
        println!("migrations applied");
    } else {
        dals_registry::serve(settings).await?;
    }
    Ok(ExitCode::SUCCESS)
}
