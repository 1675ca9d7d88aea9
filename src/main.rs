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
    #[command(flatten)]
    server: ServerArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Where the registry itself finds its settings and listens: for `serve` and `migrate` (and
/// plain `dals`), not for the commands that talk to a running registry.
#[derive(Debug, Default, clap::Args)]
struct ServerArgs {
    /// A TOML settings file (sections as in .env.example: [server], [database], ...).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides DALS_SERVER__HOST).
    #[arg(long)]
    host: Option<IpAddr>,
    /// Port to listen on (overrides DALS_SERVER__PORT).
    #[arg(long)]
    port: Option<u16>,
    /// PostgreSQL URL (overrides DATABASE_URL).
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
}

impl ServerArgs {
    /// These flags, with those given before the subcommand filling in the rest.
    fn or(self, before: ServerArgs) -> ServerArgs {
        ServerArgs {
            config: self.config.or(before.config),
            host: self.host.or(before.host),
            port: self.port.or(before.port),
            database_url: self.database_url.or(before.database_url),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the registry (the default).
    Serve(ServerArgs),
    /// Apply database migrations and exit.
    Migrate(ServerArgs),
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
    let (server, migrate_only) = match cli.command {
        Some(Command::Verify(args)) => return Ok(verify::run(&args).await),
        Some(Command::Workers(args)) => return Ok(ops::workers(&args).await),
        Some(Command::Catalog(args)) => return Ok(ops::catalog(&args).await),
        Some(Command::Migrate(args)) => (args.or(cli.server), true),
        Some(Command::Serve(args)) => (args.or(cli.server), false),
        None => (cli.server, false),
    };
    let overrides = Overrides {
        host: server.host,
        port: server.port,
        database_url: server.database_url,
    };
    let settings = Settings::load(server.config.as_deref(), &overrides)?;
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
