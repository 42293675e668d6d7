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
    /// Compare the database with the object store: objects no row points at (older than
    /// reconcile_grace_secs), rows whose objects are gone, stuck notifications. One run at a time across the
    /// fleet; another exits at once. Exit status: 0 consistent (or another run holds the lock), 3 findings,
    /// 1 the check could not run.
    Reconcile {
        /// One JSON document on stdout instead of text.
        #[arg(long)]
        json: bool,
        /// Remove the orphaned objects found, and mark images whose original is gone as missing (410).
        #[arg(long)]
        repair: bool,
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

/// The service's own database role for `upshot migrate` to provision: `UPSHOT_DB_APP_ROLE`, with its password
/// in `UPSHOT_DB_APP_PASSWORD` (an environment variable, never an argument others can read in the process list).
fn app_role_from_env() -> Result<Option<(String, String)>, String> {
    let Ok(role) = std::env::var("UPSHOT_DB_APP_ROLE") else {
        return Ok(None);
    };
    match std::env::var("UPSHOT_DB_APP_PASSWORD") {
        Ok(password) if !password.is_empty() => Ok(Some((role, password))),
        _ => Err("UPSHOT_DB_APP_ROLE is set without UPSHOT_DB_APP_PASSWORD".to_owned()),
    }
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
    // The built-in libpq starts OpenSSL itself, and OpenSSL then frees its state at exit while a pool thread
    // may still be closing a TLS connection to the database: a SIGSEGV after the work is done (seen from
    // `upshot reconcile` under systemd). Started here first, OpenSSL leaves that cleanup to the OS.
    openssl_sys::init();
    upshot::telemetry::init_logging();
    let tracing = upshot::traces::init();
    let config = match load_config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    let code = match run(Cli::parse().command.unwrap_or(Command::Serve), config).await {
        Ok(code) => code,
        Err(error) => {
            log::error!("{error}");
            ExitCode::FAILURE
        }
    };
    // The spans still buffered go out before the process ends.
    let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
    code
}

/// Runs one command; an error is logged by `main` and exits 1.
async fn run(command: Command, config: AppConfig) -> Result<ExitCode, String> {
    let database = config.database.clone();
    match command {
        Command::Serve => {
            let server = upshot::Server::bind(config).await.map_err(|e| format!("start-up failed: {e}"))?;
            server.run().await.map_err(|e| format!("server stopped: {e}"))?;
        }
        Command::Migrate => {
            let app_role = match app_role_from_env() {
                Ok(role) => role,
                Err(error) => {
                    log::error!("{error}");
                    return Ok(ExitCode::from(2));
                }
            };
            let applied = blocking(move || {
                let applied = upshot::db::migrate(&database)?;
                if let Some((role, password)) = &app_role {
                    upshot::db::provision_app_role(&database, role, password)?;
                    log::info!("role {role} may read and write the tables, and change nothing else");
                }
                Ok::<_, upshot::db::DbError>(applied)
            })
            .await
            .map_err(|e| format!("migration failed: {e}"))?;
            log::info!("{applied} migration(s) applied to the {} database", config.database.backend_name());
        }
        Command::Outbox { command } => blocking(move || outbox_command(&database, command)).await?,
        Command::Reconcile { json, repair } => return reconcile(config, json, repair).await,
        Command::CheckConfig => {
            let settings = &config.settings;
            let database = match &config.database {
                DatabaseUrl::Postgres(url) => redact_url(url),
                DatabaseUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
            };
            println!("configuration is valid");
            println!("database: {database}");
            println!("store: {:?}", settings.store.kind);
            println!("max_upload_bytes: {}", settings.uploads.max_upload_bytes);
            println!("admin routes: {}", if settings.keys.admin_api_key.is_some() { "enabled" } else { "disabled" });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs blocking work (the database's synchronous calls) off the async threads.
async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(error) => Err(format!("task failed: {error}")),
    }
}

async fn reconcile(config: AppConfig, json: bool, repair: bool) -> Result<ExitCode, String> {
    let settings = &config.settings;
    let policy =
        upshot::ingest::IngestPolicy::of_config(&config).map_err(|e| format!("reconcile could not run: {e}"))?;
    let options = upshot::reconcile::Options {
        grace: std::time::Duration::from_secs(settings.reconcile.reconcile_grace_secs),
        page: 1000,
        stuck_after: std::time::Duration::from_secs(settings.outbox.outbox_degraded_after_secs),
        repair,
        policy: std::sync::Arc::new(policy),
    };
    let database = config.database.clone();
    let lock = blocking(move || upshot::db::try_fleet_lock(&database, upshot::reconcile::FLEET_LOCK_ID))
        .await
        .map_err(|e| format!("reconcile could not run: database: {e}"))?;
    let Some(_lock) = lock else {
        println!("another reconcile is running (it holds the lock); nothing done");
        log::info!("reconcile: skipped, another run holds the lock");
        return Ok(ExitCode::SUCCESS);
    };
    let timeout = std::time::Duration::from_secs(settings.database.database_timeout_secs);
    let checked = async {
        let db = upshot::db::Db::open(config.database.clone(), 2, timeout).await.map_err(|e| e.to_string())?;
        let store = upshot::store::from_settings(&settings.store, config.local_store_dir(), &Default::default())
            .await
            .map_err(|e| e.to_string())?;
        upshot::reconcile::check(&db, store, &options).await.map_err(|e| e.to_string())
    };
    let report = checked.await.map_err(|e| format!("reconcile could not run: {e}"))?;
    if json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        println!(
            "objects scanned: {}, rows scanned: {}, in {} ms",
            report.objects_scanned, report.rows_scanned, report.elapsed_ms
        );
        println!(
            "orphaned objects: {} ({} removed; {} more within the grace period)",
            report.orphan_count, report.orphans_removed, report.recent_unreferenced
        );
        for orphan in &report.orphans {
            println!("  {} ({} s old)", orphan.key, orphan.age_secs);
        }
        println!(
            "images missing their original: {} ({} marked missing)",
            report.missing_original_count, report.marked_missing
        );
        for id in &report.missing_originals {
            println!("  {id}");
        }
        println!(
            "images missing their thumbnail: {} ({} made again)",
            report.missing_thumbnail_count, report.thumbnails_regenerated
        );
        for id in &report.missing_thumbnails {
            println!("  {id}");
        }
        println!("notifications failed: {}, stuck: {}", report.outbox_failed, report.outbox_stuck);
    }
    log::info!(
        "reconcile: objects={} rows={} orphans={} orphans_removed={} recent_unreferenced={} missing_originals={} marked_missing={} missing_thumbnails={} thumbnails_regenerated={} outbox_failed={} outbox_stuck={} elapsed_ms={} peak_rss_kib={}",
        report.objects_scanned,
        report.rows_scanned,
        report.orphan_count,
        report.orphans_removed,
        report.recent_unreferenced,
        report.missing_original_count,
        report.marked_missing,
        report.missing_thumbnail_count,
        report.thumbnails_regenerated,
        report.outbox_failed,
        report.outbox_stuck,
        report.elapsed_ms,
        peak_rss_kib().map_or_else(|| "-".to_owned(), |kib| kib.to_string()),
    );
    if let Some(addr) = settings.reconcile.statsd_addr {
        if let Err(error) = upshot::metrics::send_statsd(addr, &report.statsd_datagram()) {
            log::warn!("reconcile figures not sent to StatsD at {addr}: {error}");
        }
    }
    Ok(if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// This process's peak resident memory (VmHWM), where /proc says it.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
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
            for row in outbox::all(&mut conn)?.into_iter().filter(|r| r.status == outbox::OutboxStatus::Failed) {
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
