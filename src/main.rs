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
    /// Inspect the notification outbox, or retry parked notifications.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Counts of unsent and failed notifications, and each failed one with its last error.
    Status,
    /// Make failed notifications due again with a fresh attempt budget (all, or the one given).
    Retry {
        /// The outbox id of one notification.
        id: Option<String>,
    },
}

fn load_config() -> Result<AppConfig, ExitCode> {
    AppConfig::load().map_err(|error| {
        log::error!("{error}");
        ExitCode::from(2)
    })
}

/// An upload's large buffers (the upload, its stripped copy, a decoder's coefficients) are megabytes that live
/// for one request. glibc would serve them from per-thread arenas and, after the first large free, raise its
/// mmap threshold, so the memory stays with the process long after the request. A fixed threshold maps every
/// buffer of 4 MiB or more on its own and unmaps it when freed; smaller ones are reused from the arenas.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_large_buffers_to_the_os() {
    // SAFETY: mallopt only sets a tuning parameter of glibc's allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_buffers_to_the_os() {}

#[rocket::main]
async fn main() -> ExitCode {
    return_large_buffers_to_the_os();
    upshot::telemetry::init_logging();
    let config = match load_config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    match Cli::parse().command.unwrap_or(Command::Serve) {
        Command::Serve => match upshot::Server::bind(config).await {
            Ok(server) => match server.run().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    log::error!("server stopped: {error}");
                    ExitCode::FAILURE
                }
            },
            Err(error) => {
                log::error!("start-up failed: {error}");
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
        Command::Outbox { command } => {
            let database = config.database.clone();
            let result = tokio::task::spawn_blocking(move || outbox_command(&database, command)).await;
            match result {
                Ok(Ok(())) => ExitCode::SUCCESS,
                Ok(Err(error)) => {
                    log::error!("{error}");
                    ExitCode::FAILURE
                }
                Err(error) => {
                    log::error!("outbox task failed: {error}");
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

fn outbox_command(database: &DatabaseUrl, command: OutboxCommand) -> Result<(), upshot::db::DbError> {
    use upshot::db::outbox;
    let mut conn = upshot::db::connect(database)?;
    match command {
        OutboxCommand::Status => {
            let backlog = outbox::backlog(&mut conn)?;
            println!("unsent: {}", backlog.unsent);
            if let Some(oldest) = backlog.oldest_unsent {
                println!("oldest unsent: {oldest} UTC");
            }
            println!("failed: {}", backlog.failed);
            for row in outbox::all(&mut conn)?.into_iter().filter(|r| r.status == outbox::FAILED) {
                println!(
                    "  {} image {} after {} attempt(s): {}",
                    row.id,
                    row.image_id,
                    row.attempts,
                    row.last_error.unwrap_or_default()
                );
            }
        }
        OutboxCommand::Retry { id } => {
            let retried = outbox::retry_failed(&mut conn, id.as_deref(), upshot::domain::now())?;
            println!("{retried} notification(s) due again; a running server publishes them shortly");
        }
    }
    Ok(())
}
