//! The identity key file: the node's secret, which is also its libp2p identity and its
//! ledger account (its wallet), so it is created with mode 0600 and never logged.

use std::io::Write;
use std::path::Path;

use relaymesh_protocol::Keypair;

use super::StoreError;

/// File name of the key inside the data dir.
pub const IDENTITY_FILE: &str = "identity.key";

/// Loads the key in `dir`, creating one from `fresh` if there is none.
pub fn load_or_create_identity(
    dir: &Path,
    fresh: impl FnOnce() -> Keypair,
) -> Result<Keypair, StoreError> {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text).ok_or(StoreError::BadKey(path)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let key = fresh();
            write_secret(&path, &key)?;
            tracing::info!(peer = %key_peer_id(&key), path = %path.display(), "created a new identity");
            Ok(key)
        }
        Err(source) => Err(StoreError::Io { path, source }),
    }
}

/// The key as hex text, for backups.
pub fn export_key(dir: &Path) -> Result<String, StoreError> {
    let path = dir.join(IDENTITY_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| StoreError::Io {
        path: path.clone(),
        source,
    })?;
    parse(&text).ok_or(StoreError::BadKey(path))?;
    Ok(text.trim().to_string())
}

/// Writes a backed-up key into `dir`; refuses to overwrite a different existing key.
pub fn import_key(dir: &Path, text: &str) -> Result<Keypair, StoreError> {
    let path = dir.join(IDENTITY_FILE);
    let key = parse(text).ok_or(StoreError::BadImport)?;
    if let Ok(existing) = std::fs::read_to_string(&path) {
        if parse(&existing).map(|k| k.secret()) != Some(key.secret()) {
            return Err(StoreError::Io {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a different identity already exists here; move it away first",
                ),
            });
        }
        return Ok(key);
    }
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
        path: dir.into(),
        source,
    })?;
    write_secret(&path, &key)?;
    Ok(key)
}

/// Writes a key to its own file (mode 0600), refusing to overwrite: a private mesh's
/// owner key.
pub fn write_key_file(path: &Path, key: &Keypair) -> Result<(), StoreError> {
    write_secret(path, key)
}

/// Reads a key file written by [`write_key_file`] (or `relaymesh key export`).
pub fn read_key_file(path: &Path) -> Result<Keypair, StoreError> {
    let text = std::fs::read_to_string(path).map_err(|source| StoreError::Io {
        path: path.into(),
        source,
    })?;
    parse(&text).ok_or_else(|| StoreError::BadKey(path.into()))
}

fn parse(text: &str) -> Option<Keypair> {
    let bytes = hex::decode(text.trim()).ok()?;
    Some(Keypair::from_secret(bytes.try_into().ok()?))
}

fn key_peer_id(key: &Keypair) -> String {
    use relaymesh_protocol::Signer;
    key.public_key().peer_id()
}

fn write_secret(path: &Path, key: &Keypair) -> Result<(), StoreError> {
    write_private_file(path, format!("{}\n", hex::encode(key.secret())).as_bytes())
}

/// Writes a secret to a new file only its owner may read (mode 0600), creating its
/// folder; refuses to overwrite.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.into(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
}
