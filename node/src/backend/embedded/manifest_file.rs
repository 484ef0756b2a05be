//! The Source's signed manifest, kept next to the GGUF file as `FILE.gguf.manifest`
//! (the canonical CBOR of a `SignedManifest`).

use std::path::{Path, PathBuf};

use relaymesh_protocol::messages::manifest::{ModelManifest, SignedManifest};
use relaymesh_protocol::{BoundedString, Digest, Ed25519Verifier, Keypair, Signer, WireMessage};

/// A manifest file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestFileError {
    /// Unreadable or unwritable.
    #[error("{path}: {source}")]
    Io {
        /// The manifest file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a manifest, or not validly signed.
    #[error("{path}: {why}")]
    Invalid {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Signed for another file.
    #[error("{path} is for a file with blake3 {expected}, but this file's is {actual}; re-sign it with `relaymesh manifest sign`")]
    WrongFile {
        /// The manifest file.
        path: PathBuf,
        /// Digest in the manifest.
        expected: String,
        /// Digest of the model file.
        actual: String,
    },
}

/// Where the manifest of `model` lives.
pub fn manifest_path(model: &Path) -> PathBuf {
    let mut name = model.as_os_str().to_owned();
    name.push(".manifest");
    PathBuf::from(name)
}

/// The manifest next to `model`, if there is one, checked against the file's digest
/// and size and the Source's signature.
pub fn read_manifest(
    model: &Path,
    digest: Digest,
    size: u64,
) -> Result<Option<SignedManifest>, ManifestFileError> {
    let path = manifest_path(model);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ManifestFileError::Io { path, source }),
    };
    let invalid = |why: String| ManifestFileError::Invalid {
        path: path.clone(),
        why,
    };
    let manifest = SignedManifest::decode(&bytes).map_err(|e| invalid(e.to_string()))?;
    manifest
        .validate(&Ed25519Verifier)
        .map_err(|e| invalid(e.to_string()))?;
    if manifest.body.gguf_digest != digest || manifest.body.size_bytes != size {
        return Err(ManifestFileError::WrongFile {
            path,
            expected: manifest.body.gguf_digest.to_hex(),
            actual: digest.to_hex(),
        });
    }
    Ok(Some(manifest))
}

/// Signs a manifest for `model` with the Source's key and writes it next to the file.
pub fn write_manifest(
    model: &Path,
    name: &str,
    licence: &str,
    royalty_ppm: u32,
    source: &Keypair,
) -> Result<(PathBuf, SignedManifest), ManifestFileError> {
    let path = manifest_path(model);
    let invalid = |why: String| ManifestFileError::Invalid {
        path: path.clone(),
        why,
    };
    let (digest, size) =
        super::digest_file(model, true).map_err(|source| ManifestFileError::Io {
            path: model.to_owned(),
            source,
        })?;
    let body = ModelManifest {
        version: relaymesh_protocol::PROTOCOL_VERSION,
        name: BoundedString::new(name).map_err(|e| invalid(format!("name: {e}")))?,
        gguf_digest: digest,
        size_bytes: size,
        licence: BoundedString::new(licence).map_err(|e| invalid(format!("licence: {e}")))?,
        royalty_ppm,
        source: source.public_key(),
    };
    let signed = SignedManifest::sign(body, source);
    signed
        .validate(&Ed25519Verifier)
        .map_err(|e| invalid(e.to_string()))?;
    let bytes = signed.encode().map_err(|e| invalid(e.to_string()))?;
    std::fs::write(&path, bytes).map_err(|source| ManifestFileError::Io {
        path: path.clone(),
        source,
    })?;
    Ok((path, signed))
}
