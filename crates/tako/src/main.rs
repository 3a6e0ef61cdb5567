use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tako::config::Config;
use tako::startup::{self, Application};

/// Tako: a realtime backend for live-event apps.
#[derive(Debug, Parser)]
#[command(name = "tako", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
}

#[tokio::main]
async fn main() -> ExitCode {
    tako::telemetry::init();
    let cli = Cli::parse();
    let config = match cli.config.normalize() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tako: {error}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => migrate(config).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tako: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    app.run(startup::shutdown_signal()).await
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    let store = startup::open_store(&config).await?;
    println!("migrations applied ({})", store.backend());
    Ok(())
}
