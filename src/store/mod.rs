//! Postgres access for the canonical tables: connecting, migrations, the catalog seed.
//!
//! The schema lives in `migrations/` (embedded with `sqlx::migrate!`). Queries are runtime
//! queries (`sqlx::query`), so building needs no database.

pub mod leader;
pub mod pods;
pub mod reconcile;
mod seed;

use std::str::FromStr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::cli::DatabaseArgs;

pub use seed::{SeedReport, UpsertCounts, seed_catalog};

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// How long to wait for a pooled connection before giving up.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the Postgres layer. None of them carries the database URL or password.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL could not be parsed (the URL itself is not repeated).
    #[error("the database URL is not a valid PostgreSQL URL")]
    InvalidUrl(#[source] sqlx::Error),
    /// The server could not be reached or refused the login.
    #[error("cannot connect to PostgreSQL at {target}")]
    Connect {
        /// `user@host:port/database`, without the password.
        target: String,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the migrations failed.
    #[error("applying database migrations failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The database lacks migrations this binary needs.
    #[error(
        "the database schema is behind ({applied} of {known} migrations applied): run `cloudpods migrate` first"
    )]
    SchemaBehind {
        /// Applied migrations.
        applied: usize,
        /// Migrations this binary carries.
        known: usize,
    },
    /// A statement failed.
    #[error("database error while trying to {context}")]
    Query {
        /// What was being done, e.g. "upsert plan `starter`".
        context: String,
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
}

impl StoreError {
    /// A [`StoreError::Query`] for `context`.
    pub fn query(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Query { context, source }
    }

    /// The SQLSTATE of the underlying database error, if the server reported one.
    pub fn sqlstate(&self) -> Option<String> {
        self.database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned())
    }

    /// Whether a statement failed on a unique constraint (SQLSTATE 23505).
    pub fn is_unique_violation(&self) -> bool {
        self.database_error()
            .is_some_and(|e| e.is_unique_violation())
    }

    /// The error the server reported, if any.
    fn database_error(&self) -> Option<&(dyn sqlx::error::DatabaseError + 'static)> {
        match self {
            StoreError::Query { source, .. } | StoreError::Connect { source, .. } => source,
            StoreError::InvalidUrl(source) => source,
            StoreError::Migrate(_) | StoreError::SchemaBehind { .. } => return None,
        }
        .as_database_error()
    }
}

/// Fails unless every migration this binary knows is applied (run `cloudpods migrate`).
pub async fn check_schema(pool: &PgPool) -> Result<(), StoreError> {
    let applied = applied_migrations(pool).await?;
    let known = MIGRATOR.iter().count();
    if applied < known {
        return Err(StoreError::SchemaBehind { applied, known });
    }
    Ok(())
}

/// Opens a connection pool (and checks it with one connection).
pub async fn connect(db: &DatabaseArgs) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(&db.url)
        .map_err(StoreError::InvalidUrl)?
        // Server NOTICEs (e.g. "relation already exists, skipping" on re-migration) are noise.
        .options([("client_min_messages", "warning")]);
    let target = describe(&options);
    PgPoolOptions::new()
        .max_connections(db.max_connections.max(1))
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Connect { target, source })
}

/// `user@host:port/database`: enough to tell which server, never the password.
fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(default database)")
    )
}

/// Applies the pending migrations; returns how many were newly applied.
pub async fn migrate(pool: &PgPool) -> Result<usize, StoreError> {
    let before = applied_migrations(pool).await?;
    MIGRATOR.run(pool).await.map_err(StoreError::Migrate)?;
    let after = applied_migrations(pool).await?;
    Ok(after.saturating_sub(before))
}

/// Number of successfully applied migrations (0 before the first run).
async fn applied_migrations(pool: &PgPool) -> Result<usize, StoreError> {
    const CONTEXT: &str = "count applied migrations";
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(StoreError::query(CONTEXT))?;
    if !exists {
        return Ok(0);
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .map_err(StoreError::query(CONTEXT))?;
    Ok(usize::try_from(n).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_target_never_contains_the_password() {
        let options =
            PgConnectOptions::from_str("postgres://app:hunter2@db.example:6543/cloudpods").unwrap();
        assert_eq!(describe(&options), "app@db.example:6543/cloudpods");
    }

    #[tokio::test]
    async fn errors_never_contain_the_url_or_password() {
        for url in [
            "postgres://app:hunter2@[::1",
            "postgres://app:hunter2@127.0.0.1:1/db?sslmode=bogus",
        ] {
            let db = DatabaseArgs {
                url: url.into(),
                max_connections: 1,
            };
            let err = connect(&db).await.unwrap_err();
            let mut text = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                text.push_str(&s.to_string());
                source = s.source();
            }
            assert!(!text.contains("hunter2"), "{text}");
        }
    }
}
