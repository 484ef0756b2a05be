//! What a node keeps on disk: its identity key and a sled database, in one data dir.

pub mod app;
mod identity;

pub use identity::{
    export_key, import_key, load_or_create_identity, read_key_file, write_key_file,
    write_private_file, IDENTITY_FILE,
};

use std::path::{Path, PathBuf};

/// Why the data dir could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the database.
    #[error(
        "data dir {0} is in use by another relaymesh process; stop it or choose another --data-dir"
    )]
    InUse(PathBuf),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A key given to import is not a key.
    #[error(
        "not a relaymesh identity key (expected the 64 hex digits `relaymesh key export` prints)"
    )]
    BadImport,
    /// The identity file is not a key.
    #[error("{0}: not a relaymesh identity key (expected 64 hex digits); restore it with `relaymesh key import`")]
    BadKey(PathBuf),
    /// sled failed.
    #[error("database in {path}: {source}")]
    Database {
        /// The database folder.
        path: PathBuf,
        /// What sled said.
        #[source]
        source: sled::Error,
    },
}

/// How often the database is flushed to disk: a node killed with SIGKILL keeps every
/// write (receipts among them) older than this.
pub const COMMIT_INTERVAL_MS: u64 = 500;

/// How long opening a locked database is retried: sled releases its file lock from a
/// background thread shortly after the last handle of a closed database is dropped,
/// so a database closed and reopened in one process may find it still held.
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_secs(3);

fn is_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io)
        if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock"))
}

/// Opens `config`'s database, waiting up to [`LOCK_RETRY`] while its lock is held
/// (by another process, or by this one's previous handle still closing).
pub fn open_db(config: &sled::Config) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + LOCK_RETRY;
    loop {
        match config.open() {
            Err(e) if is_locked(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

/// An opened data dir: the database, held open (and locked) for the node's life.
#[derive(Clone, Debug)]
pub struct DataDir {
    path: PathBuf,
    db: sled::Db,
}

impl DataDir {
    /// Opens (creating) `path`. A second process on the same dir gets `InUse`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path).map_err(|source| StoreError::Io {
            path: path.into(),
            source,
        })?;
        let db_path = path.join("db");
        let db = open_db(
            &sled::Config::new()
                .path(&db_path)
                .flush_every_ms(Some(COMMIT_INTERVAL_MS)),
        )
        .map_err(|source| {
            if is_locked(&source) {
                StoreError::InUse(path.into())
            } else {
                StoreError::Database {
                    path: db_path.clone(),
                    source,
                }
            }
        })?;
        Ok(Self {
            path: path.into(),
            db,
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }
}
