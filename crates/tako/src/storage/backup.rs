//! `tako backup FILE`: a consistent copy of the SQLite database, taken while the server runs.
//!
//! SQLite's `VACUUM INTO` reads the database inside one read transaction (in WAL mode writers go
//! on meanwhile) and writes a compact, self-contained database file: a snapshot of one moment.
//! It is written beside the destination under a temporary name, checked, synced and only then
//! renamed, so `FILE` is either absent or a whole backup. PostgreSQL has `pg_dump` for this.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::StoreError;

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub source: PathBuf,
    pub bytes: u64,
    pub users: i64,
    pub messages: i64,
}

/// Copies the database of `database_url` to `destination`, which must not exist yet.
pub async fn backup(database_url: &str, destination: &Path) -> Result<Backup, StoreError> {
    if database_url.starts_with("postgres:") || database_url.starts_with("postgresql:") {
        return Err(StoreError::Backup(
            "DATABASE_URL is PostgreSQL: back it up with pg_dump (see the README, Backups)".into(),
        ));
    }
    if !database_url.starts_with("sqlite:") {
        let scheme = database_url.split(':').next().unwrap_or_default().to_owned();
        return Err(StoreError::UnsupportedUrl(scheme));
    }
    let options = SqliteConnectOptions::from_str(database_url)
        .map_err(|error| StoreError::Backup(format!("invalid DATABASE_URL: {error}")))?;
    let source = options.get_filename().to_owned();
    if !source.is_file() {
        return Err(StoreError::Backup(format!(
            "no SQLite database at {} (DATABASE_URL)",
            source.display()
        )));
    }
    if destination.exists() {
        return Err(StoreError::Backup(format!(
            "{} already exists; a backup never overwrites: choose a new file name",
            destination.display()
        )));
    }
    let name = destination.file_name().ok_or_else(|| {
        StoreError::Backup(format!("{} is not a file name", destination.display()))
    })?;
    let dir = match destination.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(StoreError::Backup(format!("the directory {} does not exist", dir.display())));
    }
    let partial = dir.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
    let result = write(options, &source, &partial).await;
    let result = match result {
        Ok(mut backup) => {
            backup.bytes = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
            std::fs::rename(&partial, destination)
                .map_err(|e| fail(format!("renaming to {}", destination.display()), e))?;
            // The rename itself reaches the disk with the directory.
            if let Ok(dir) = std::fs::File::open(&dir) {
                let _ = dir.sync_all();
            }
            Ok(backup)
        }
        Err(error) => Err(error),
    };
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

async fn write(
    options: SqliteConnectOptions,
    source: &Path,
    partial: &Path,
) -> Result<Backup, StoreError> {
    let _ = std::fs::remove_file(partial);
    let target = partial
        .to_str()
        .ok_or_else(|| StoreError::Backup(format!("{} is not UTF-8", partial.display())))?;
    // The server may hold the write lock for a moment: wait, as the server's own queries do.
    let mut conn = options
        .busy_timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| StoreError::Backup(format!("cannot open {}: {e}", source.display())))?;
    sqlx::query("VACUUM INTO ?")
        .bind(target)
        .execute(&mut conn)
        .await
        .map_err(|e| StoreError::Backup(format!("copying {}: {e}", source.display())))?;
    let _ = conn.close().await;

    // Check what was written before it takes the destination's name.
    let mut copy = SqliteConnectOptions::new()
        .filename(partial)
        .connect()
        .await
        .map_err(|e| StoreError::Backup(format!("reopening the copy: {e}")))?;
    let check: String = sqlx::query_scalar("PRAGMA quick_check")
        .fetch_one(&mut copy)
        .await
        .map_err(|e| StoreError::Backup(format!("checking the copy: {e}")))?;
    if check != "ok" {
        return Err(StoreError::Backup(format!("the copy failed its check: {check}")));
    }
    let (users, messages): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM messages)")
            .fetch_one(&mut copy)
            .await
            .map_err(|e| StoreError::Backup(format!("counting the rows of the copy: {e}")))?;
    let _ = copy.close().await;
    std::fs::File::open(partial)
        .and_then(|file| file.sync_all())
        .map_err(|e| fail(format!("syncing {}", partial.display()), e))?;
    Ok(Backup { source: source.to_owned(), bytes: 0, users, messages })
}

fn fail(what: String, error: std::io::Error) -> StoreError {
    StoreError::Backup(format!("{what}: {error}"))
}
