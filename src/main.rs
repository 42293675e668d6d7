use std::process::ExitCode;

use clap::{Parser, Subcommand};
use upshot::config::{redact_url, AppConfig, DatabaseUrl};

/// Upshot: self-hosted image intake.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Load and validate the configuration, print it without secrets, and exit.
    CheckConfig,
}

fn load_config() -> Result<AppConfig, ExitCode> {
    AppConfig::load().map_err(|error| {
        log::error!("{error}");
        ExitCode::from(2)
    })
}

#[rocket::main]
async fn main() -> ExitCode {
    upshot::telemetry::init_logging();
    let config = match load_config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    match Cli::parse().command.unwrap_or(Command::Serve) {
        Command::Serve => match upshot::rocket(config).launch().await {
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                log::error!("server stopped: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Migrate => {
            let database = config.database.clone();
            match tokio::task::spawn_blocking(move || upshot::db::migrate(&database)).await {
                Ok(Ok(applied)) => {
                    log::info!("{applied} migration(s) applied to the {} database", config.database.backend_name());
                    ExitCode::SUCCESS
                }
                Ok(Err(error)) => {
                    log::error!("migration failed: {error}");
                    ExitCode::FAILURE
                }
                Err(error) => {
                    log::error!("migration task failed: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig => {
            let settings = &config.settings;
            let database = match &config.database {
                DatabaseUrl::Postgres(url) => redact_url(url),
                DatabaseUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
            };
            println!("configuration is valid");
            println!("database: {database}");
            println!("store: {:?}", settings.store);
            println!("max_upload_bytes: {}", settings.max_upload_bytes);
            println!("admin routes: {}", if settings.admin_api_key.is_some() { "enabled" } else { "disabled" });
            ExitCode::SUCCESS
        }
    }
}
