//! The database: one connection type over PostgreSQL and SQLite, a pool, embedded migrations, and a handle
//! that runs blocking Diesel work off the async workers.

mod ids;
pub mod image_rows;
pub mod json;
pub mod outbox;
pub mod pending;
pub mod reconcile_runs;
pub mod schema;
pub mod status;
pub mod upload_sessions;

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{self, ManageConnection, R2D2Connection};
use diesel::sqlite::SqliteConnection;
use diesel::PgConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::config::DatabaseUrl;
use crate::error::{AppError, ErrorCode};

const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Any two instances starting at once take turns on this lock instead of racing the migrations.
const MIGRATION_LOCK_ID: i64 = 0x7570_7368_6f74; // "upshot"

#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgresql(PgConnection),
    Sqlite(SqliteConnection),
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("no connection available: {0}")]
    Pool(#[from] r2d2::PoolError),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
    #[error("migrations failed: {0}")]
    Migration(String),
    #[error("database task failed: {0}")]
    Task(String),
}

impl DbError {
    /// The database could not be reached or dropped the connection, or (SQLite) stayed locked past the busy
    /// timeout: the request may succeed if retried shortly, so it is a 503, not our bug.
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Pool(_) | DbError::Connect(_) => true,
            DbError::Query(error) => query_error_is_unavailable(error),
            DbError::Migration(_) | DbError::Task(_) => false,
        }
    }

    pub fn is_unique_violation(&self) -> bool {
        matches!(
            self,
            DbError::Query(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _))
        )
    }
}

fn query_error_is_unavailable(error: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match error {
        Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => true,
        // SQLite's SQLITE_BUSY / SQLITE_LOCKED after busy_timeout; diesel reports them by message only.
        Error::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            let message = info.message();
            message.starts_with("database is locked") || message.starts_with("database table is locked")
        }
        // A connection that died mid-transaction cannot roll back either.
        Error::BrokenTransactionManager => true,
        Error::RollbackErrorOnCommit { commit_error, .. } => query_error_is_unavailable(commit_error),
        _ => false,
    }
}

impl From<DbError> for AppError {
    fn from(error: DbError) -> Self {
        if error.is_unavailable() {
            AppError::new(ErrorCode::DatabaseUnavailable, "The database is unavailable; try again shortly.")
                .with_detail(error)
                .retry_after(2)
        } else {
            AppError::internal(error)
        }
    }
}

/// Opens connections for the pool; connects by the configured backend, never by guessing from the URL.
#[derive(Debug, Clone)]
struct Manager {
    url: DatabaseUrl,
    /// SQLite's busy timeout: how long a writer queues behind another before giving up.
    busy_timeout: Duration,
}

impl Manager {
    fn connect(&self) -> Result<DbConnection, DbError> {
        match &self.url {
            DatabaseUrl::Postgres(url) => Ok(DbConnection::Postgresql(PgConnection::establish(url)?)),
            DatabaseUrl::Sqlite(path) => {
                let mut conn = SqliteConnection::establish(&path.to_string_lossy())?;
                // WAL lets readers run beside the one writer; busy_timeout makes writers queue, not fail,
                // for as long as a request would wait for a pooled connection.
                conn.batch_execute(&format!(
                    "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = {}; \
                     PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
                    self.busy_timeout.as_millis()
                ))?;
                Ok(DbConnection::Sqlite(conn))
            }
        }
    }
}

impl ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = DbError;

    fn connect(&self) -> Result<DbConnection, DbError> {
        Manager::connect(self)
    }

    /// Run on every checkout: a connection the server closed (restart, failover) fails here and is replaced,
    /// instead of failing the request that drew it. One loopback round trip.
    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), DbError> {
        conn.ping().map_err(DbError::from)
    }

    /// Run on every return: a connection whose transaction could not be closed is never handed out again.
    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        std::thread::panicking() || conn.is_broken()
    }
}

/// A cloneable handle on the pool.
#[derive(Clone)]
pub struct Db {
    pool: r2d2::Pool<Manager>,
    backend: &'static str,
}

impl Db {
    /// Connects, applies pending migrations, and only then hands out the pool.
    pub async fn open(url: DatabaseUrl, pool_size: u32, timeout: Duration) -> Result<Db, DbError> {
        let backend = url.backend_name();
        tokio::task::spawn_blocking(move || {
            if let DatabaseUrl::Sqlite(path) = &url {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| DbError::Migration(format!("cannot create {}: {e}", parent.display())))?;
                }
            }
            let manager = Manager { url, busy_timeout: timeout };
            run_migrations(&mut manager.connect()?)?;
            let pool = r2d2::Pool::builder()
                .max_size(pool_size)
                .min_idle(Some(1))
                .connection_timeout(timeout)
                .test_on_check_out(true)
                .build(manager)?;
            Ok(Db { pool, backend })
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Runs blocking database work on Tokio's blocking pool with a pooled connection.
    pub async fn run<T, F>(&self, work: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || work(&mut *pool.get()?)).await.map_err(|e| DbError::Task(e.to_string()))?
    }

    pub async fn ping(&self) -> Result<(), DbError> {
        self.run(|conn| conn.batch_execute("SELECT 1").map_err(DbError::from)).await
    }
}

/// Applies the pending migrations of the connection's backend. On PostgreSQL this holds an advisory lock, so
/// N instances starting together apply each migration exactly once.
/// A database that is up to date is left alone, so a role that may not create tables (the service's, in AWS,
/// where `upshot migrate` runs as the owner before the service starts) can start on it.
pub fn run_migrations(conn: &mut DbConnection) -> Result<usize, DbError> {
    let migration_error = |e: Box<dyn std::error::Error + Send + Sync>| DbError::Migration(e.to_string());
    match conn {
        DbConnection::Postgresql(pg) => {
            if postgres_up_to_date(pg) {
                return Ok(0);
            }
            diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_ID})")).execute(pg)?;
            let applied = pg.run_pending_migrations(POSTGRES_MIGRATIONS).map(|v| v.len());
            diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_ID})")).execute(pg)?;
            applied.map_err(migration_error)
        }
        DbConnection::Sqlite(sqlite) => {
            sqlite.run_pending_migrations(SQLITE_MIGRATIONS).map(|v| v.len()).map_err(migration_error)
        }
    }
}

/// Whether every embedded migration is recorded as applied. Read with a plain query: the migration harness
/// would first create its own table, which needs a right the service's role does not have.
fn postgres_up_to_date(pg: &mut diesel::PgConnection) -> bool {
    #[derive(QueryableByName)]
    struct Applied {
        #[diesel(sql_type = diesel::sql_types::Text)]
        version: String,
    }
    let Ok(applied) = diesel::sql_query("SELECT version FROM __diesel_schema_migrations").load::<Applied>(pg) else {
        return false;
    };
    let applied: std::collections::HashSet<String> = applied.into_iter().map(|a| a.version).collect();
    let embedded = diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(&POSTGRES_MIGRATIONS);
    embedded.is_ok_and(|all| all.iter().all(|m| applied.contains(&m.name().version().to_string())))
}

/// Gives the service's own database role what the service uses and nothing more: it may read and write the
/// rows of every table (those to come too), not create, alter or drop anything. Creates the role, or sets its
/// password when it exists. Run by `upshot migrate` as the tables' owner (the RDS master user).
pub fn provision_app_role(url: &DatabaseUrl, role: &str, password: &str) -> Result<(), DbError> {
    #[derive(QueryableByName)]
    struct Statement {
        #[diesel(sql_type = diesel::sql_types::Text)]
        sql: String,
    }
    use diesel::sql_types::Text;
    let DbConnection::Postgresql(mut pg) = connect(url)? else {
        return Err(DbError::Migration("a service role exists on PostgreSQL only".to_owned()));
    };
    // Identifiers and the password are quoted by the server (format's %I and %L), never spliced in here. An
    // existing role only gets its password: RDS's master may not name the superuser attribute, even to deny it.
    let templates = [
        "SELECT format(CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1) \
            THEN 'ALTER ROLE %I WITH LOGIN PASSWORD %L' \
            ELSE 'CREATE ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L' END, $1, $2) AS sql",
        "SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), $1) AS sql",
        "SELECT 'REVOKE CREATE ON SCHEMA public FROM PUBLIC' AS sql",
        "SELECT format('GRANT USAGE ON SCHEMA public TO %I', $1) AS sql",
        "SELECT format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO %I', $1) AS sql",
        "SELECT format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO %I', $1) AS sql",
        "SELECT format('ALTER DEFAULT PRIVILEGES IN SCHEMA public \
            GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I', $1) AS sql",
    ];
    pg.transaction(|pg| {
        for template in templates {
            let statements: Vec<Statement> =
                diesel::sql_query(template).bind::<Text, _>(role).bind::<Text, _>(password).load(pg)?;
            for statement in statements {
                diesel::sql_query(statement.sql).execute(pg)?;
            }
        }
        Ok(())
    })
}

/// A lock only one holder across the fleet has at a time, released when dropped (its connection closes).
pub struct FleetLock {
    _connection: Option<DbConnection>,
}

/// Takes the fleet-wide lock `id` if no one holds it: a PostgreSQL session advisory lock, held by a connection
/// of its own. `None` when another holder has it. SQLite serves one machine: the lock is always granted.
pub fn try_fleet_lock(url: &DatabaseUrl, id: i64) -> Result<Option<FleetLock>, DbError> {
    #[derive(QueryableByName)]
    struct Taken {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        taken: bool,
    }
    match connect(url)? {
        DbConnection::Postgresql(mut pg) => {
            let taken: Taken =
                diesel::sql_query(format!("SELECT pg_try_advisory_lock({id}) AS taken")).get_result(&mut pg)?;
            Ok(taken.taken.then(|| FleetLock { _connection: Some(DbConnection::Postgresql(pg)) }))
        }
        DbConnection::Sqlite(_) => Ok(Some(FleetLock { _connection: None })),
    }
}

/// `upshot migrate`: connect once and apply what is pending.
pub fn migrate(url: &DatabaseUrl) -> Result<usize, DbError> {
    run_migrations(&mut connect(url)?)
}

/// One connection outside the pool, for commands.
pub fn connect(url: &DatabaseUrl) -> Result<DbConnection, DbError> {
    Manager { url: url.clone(), busy_timeout: Duration::from_secs(10) }.connect()
}
