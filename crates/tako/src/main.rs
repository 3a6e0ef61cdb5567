use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tako::cli::{Remote, RemoteCommand, RemoteServer};
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
    #[command(flatten)]
    server: RemoteServer,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Copy the SQLite database (DATABASE_URL) to FILE, consistently, while the server runs.
    /// For PostgreSQL use pg_dump.
    Backup {
        /// Where to write the copy; must not exist yet.
        file: PathBuf,
    },
    #[command(flatten)]
    Remote(RemoteCommand),
}

impl Cli {
    /// Every flag is accepted before or after the subcommand (`tako migrate --database-url …`
    /// as well as `tako --database-url … migrate`).
    fn parse_anywhere() -> Cli {
        let command = Cli::command().mut_args(|arg| {
            if arg.get_long().is_some() && !matches!(arg.get_id().as_str(), "help" | "version") {
                arg.global(true)
            } else {
                arg
            }
        });
        let mut matches = match command.clone().try_get_matches() {
            Ok(matches) => matches,
            Err(error) => exit_naming_the_variable(&command, error),
        };
        Cli::from_arg_matches_mut(&mut matches).unwrap_or_else(|error| error.exit())
    }
}

/// clap names the flag of a bad value (`--heartbeat-timeout-secs`) even when the value came
/// from the environment; an operator who set `TAKO_HEARTBEAT_TIMEOUT=-1` needs to read that name.
fn exit_naming_the_variable(command: &clap::Command, error: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if matches!(error.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation) {
        let flag = match error.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(arg)) => arg.split_whitespace().next().unwrap_or_default(),
            _ => "",
        };
        let long = flag.trim_start_matches("--");
        let on_command_line =
            std::env::args().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
        let variable = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(long))
            .and_then(|arg| arg.get_env())
            .and_then(|name| Some((name.to_str()?.to_owned(), std::env::var_os(name)?)));
        if let (Some((name, value)), false) = (variable, on_command_line) {
            let reason = match (error.get(ContextKind::ValidValue), error.source()) {
                (Some(ContextValue::Strings(valid)), _) => {
                    format!("expected one of {}", valid.join(", "))
                }
                (_, Some(source)) => source.to_string(),
                _ => "not a valid value".into(),
            };
            eprintln!(
                "tako: invalid setting {name}={}: {reason} (see `tako --help`)",
                value.to_string_lossy()
            );
            std::process::exit(2);
        }
    }
    error.exit()
}

#[tokio::main]
async fn main() -> ExitCode {
    tako::telemetry::init();
    let cli = Cli::parse_anywhere();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => match cli.config.normalize() {
            Ok(config) => serve(config).await,
            Err(error) => return config_error(error),
        },
        Command::Migrate => match cli.config.normalize() {
            Ok(config) => migrate(config).await,
            Err(error) => return config_error(error),
        },
        Command::Backup { file } => backup(cli.config.database_url.as_deref(), &file).await,
        Command::Remote(command) => {
            match Remote::new(&cli.server, cli.config.admin_token.clone()) {
                Ok(remote) => remote.run(command).await,
                Err(error) => Err(error),
            }
        }
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

async fn backup(database_url: Option<&str>, file: &Path) -> anyhow::Result<()> {
    let url = database_url.filter(|u| !u.is_empty()).unwrap_or(tako::config::DEFAULT_DATABASE_URL);
    let backup = tako::storage::backup::backup(url, file).await?;
    println!(
        "backed up {} to {} ({} bytes: {} users, {} messages)",
        backup.source.display(),
        file.display(),
        backup.bytes,
        backup.users,
        backup.messages
    );
    Ok(())
}
