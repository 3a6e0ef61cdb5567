use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tako::cli::{Remote, UsersCommand};
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
    /// Send a message to one user of a running server (delivered now, or when they next join).
    Send {
        user_id: String,
        message: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Broadcast an event to a topic of a running server.
    Broadcast {
        topic: String,
        event: String,
        /// A JSON object; `{}` when omitted.
        payload: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// The server-wide ping of a running server.
    Ping {
        #[command(flatten)]
        remote: Remote,
    },
    /// Manage users of a running server.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
        #[command(flatten)]
        remote: Remote,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tako::telemetry::init();
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => match cli.config.normalize() {
            Ok(config) => serve(config).await,
            Err(error) => return config_error(error),
        },
        Command::Migrate => match cli.config.normalize() {
            Ok(config) => migrate(config).await,
            Err(error) => return config_error(error),
        },
        Command::Send { user_id, message, remote } => remote.send(&user_id, &message).await,
        Command::Broadcast { topic, event, payload, remote } => {
            remote.broadcast(&topic, &event, payload.as_deref()).await
        }
        Command::Ping { remote } => remote.ping().await,
        Command::Users { command, remote } => remote.users(command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tako: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_error(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("tako: {error}");
    ExitCode::from(2)
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
