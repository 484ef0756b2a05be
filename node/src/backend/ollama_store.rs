//! Models from the local Ollama store, served by the embedded engine without Ollama
//! running and without copying the file (`--serve NAME=ollama-model:MODEL[:TAG]`).
//!
//! Ollama keeps each pulled model as a manifest naming content-addressed blobs:
//! `<store>/manifests/<registry>/<namespace>/<model>/<tag>` is JSON whose layer of
//! media type `application/vnd.ollama.image.model` is the GGUF file, stored as
//! `<store>/blobs/sha256-<hex>` (`sha256:<hex>` in older stores). The store is
//! `$OLLAMA_MODELS` when set, else `~/.ollama/models`, else the system service's
//! `/usr/share/ollama/.ollama/models`.

use std::path::{Path, PathBuf};

/// Ollama's default registry and namespace: `llama3.2:1b` is
/// `registry.ollama.ai/library/llama3.2:1b`.
const DEFAULT_REGISTRY: &str = "registry.ollama.ai";
const DEFAULT_NAMESPACE: &str = "library";
const DEFAULT_TAG: &str = "latest";
/// The media type of a manifest's GGUF layer.
const MODEL_LAYER: &str = "application/vnd.ollama.image.model";
/// Manifests are small JSON files; a larger one is not a manifest.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Why a model could not be found in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No store where one is looked for.
    #[error("no Ollama model store found (looked in {looked}); set OLLAMA_MODELS to its folder")]
    NoStore {
        /// The folders tried.
        looked: String,
    },
    /// The name is not one Ollama would accept.
    #[error("{name:?} is not an Ollama model name (expected MODEL[:TAG], e.g. llama3.2:1b)")]
    BadName {
        /// The name given.
        name: String,
    },
    /// The store has no such model.
    #[error("model {name} is not in the Ollama store at {store} (pulled there: {available}); pull it with `ollama pull {name}` first")]
    NotFound {
        /// The name given.
        name: String,
        /// The store searched.
        store: PathBuf,
        /// What the store holds, comma-separated.
        available: String,
    },
    /// The manifest could not be read or is not one.
    #[error("{path}: {why}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The manifest names a model blob that is not there.
    #[error("{name}: its model blob {digest} is missing from {store}/blobs (a partial pull? run `ollama pull {name}` again)")]
    MissingBlob {
        /// The name given.
        name: String,
        /// The layer's digest.
        digest: String,
        /// The store.
        store: PathBuf,
    },
}

/// The Ollama store to read: `$OLLAMA_MODELS`, `~/.ollama/models`, or the system
/// service's, whichever exists first.
pub fn default_store() -> Result<PathBuf, StoreError> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("OLLAMA_MODELS").filter(|d| !d.is_empty()) {
        candidates.push(PathBuf::from(dir));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        candidates.push(Path::new(&home).join(".ollama/models"));
    }
    candidates.push(PathBuf::from("/usr/share/ollama/.ollama/models"));
    candidates
        .iter()
        .find(|dir| dir.join("manifests").is_dir())
        .cloned()
        .ok_or_else(|| StoreError::NoStore {
            looked: candidates
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The manifest's path components for `name`: registry, namespace, model, tag.
fn parts(name: &str) -> Result<[String; 4], StoreError> {
    let bad = || StoreError::BadName {
        name: name.to_owned(),
    };
    // A tag follows the last ':' after the last '/' (a registry may carry a port).
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match name[slash..].rfind(':') {
        Some(i) => (&name[..slash + i], &name[slash + i + 1..]),
        None => (name, DEFAULT_TAG),
    };
    let segments: Vec<&str> = path.split('/').collect();
    let [registry, namespace, model] = match segments.as_slice() {
        [model] => [DEFAULT_REGISTRY, DEFAULT_NAMESPACE, model],
        [namespace, model] => [DEFAULT_REGISTRY, namespace, model],
        [registry, namespace, model] => [*registry, namespace, model],
        _ => return Err(bad()),
    };
    let fine = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    };
    // Only a registry may hold a ':' (its port).
    if ![registry, namespace, model, tag].iter().all(|s| fine(s))
        || [namespace, model, tag].iter().any(|s| s.contains(':'))
    {
        return Err(bad());
    }
    Ok([registry, namespace, model, tag].map(str::to_owned))
}

/// The GGUF file of model `name` in `store`.
pub fn resolve(store: &Path, name: &str) -> Result<PathBuf, StoreError> {
    let [registry, namespace, model, tag] = parts(name)?;
    let path = store
        .join("manifests")
        .join(&registry)
        .join(&namespace)
        .join(&model)
        .join(&tag);
    if !path.is_file() {
        return Err(StoreError::NotFound {
            name: name.to_owned(),
            store: store.to_owned(),
            available: available(store).join(", "),
        });
    }
    let manifest_error = |why: String| StoreError::Manifest {
        path: path.clone(),
        why,
    };
    // One handle, read to one byte past the bound: a file that grows between a size
    // check and the read cannot get past it.
    let file = std::fs::File::open(&path).map_err(|e| manifest_error(e.to_string()))?;
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, MAX_MANIFEST_BYTES + 1),
        &mut text,
    )
    .map_err(|e| manifest_error(e.to_string()))?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(manifest_error(format!(
            "more than {MAX_MANIFEST_BYTES} bytes is too large for a manifest"
        )));
    }
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| manifest_error(format!("not a manifest: {e}")))?;
    let layer = manifest
        .layers
        .iter()
        .find(|l| l.media_type == MODEL_LAYER)
        .ok_or_else(|| manifest_error(format!("no {MODEL_LAYER} layer")))?;
    let hex = layer
        .digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| manifest_error(format!("layer digest {:?} is not sha256", layer.digest)))?;
    let blobs = store.join("blobs");
    [format!("sha256-{hex}"), format!("sha256:{hex}")]
        .into_iter()
        .map(|file| blobs.join(file))
        .find(|p| p.is_file())
        .ok_or_else(|| StoreError::MissingBlob {
            name: name.to_owned(),
            digest: layer.digest.clone(),
            store: store.to_owned(),
        })
}

/// The models in `store`, as Ollama names them (`llama3.2:1b`, `user/model:tag`), sorted;
/// at most 32.
pub fn available(store: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let root = store.join("manifests");
    let dirs = |p: &Path| -> Vec<(String, PathBuf)> {
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect()
    };
    for (registry, r) in dirs(&root) {
        for (namespace, n) in dirs(&r) {
            for (model, m) in dirs(&n) {
                for (tag, _) in dirs(&m) {
                    names.push(match (registry.as_str(), namespace.as_str()) {
                        (DEFAULT_REGISTRY, DEFAULT_NAMESPACE) => format!("{model}:{tag}"),
                        (DEFAULT_REGISTRY, _) => format!("{namespace}/{model}:{tag}"),
                        _ => format!("{registry}/{namespace}/{model}:{tag}"),
                    });
                }
            }
        }
    }
    names.sort();
    names.truncate(32);
    if names.is_empty() {
        names.push("nothing".into());
    }
    names
}

#[derive(serde::Deserialize)]
struct Manifest {
    layers: Vec<Layer>,
}

#[derive(serde::Deserialize)]
struct Layer {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
}

/// Lays out a store as Ollama writes one, for tests: `name`'s manifest naming `blob`
/// (hard-linked, or copied across file systems) as its model layer, beside a template
/// layer. Returns the blob's path in the store.
pub fn lay_out_for_tests(store: &Path, name: &str, gguf: &Path) -> std::io::Result<PathBuf> {
    use std::io::Read;
    let [registry, namespace, model, tag] = parts(name).map_err(std::io::Error::other)?;
    // Ollama names blobs by sha256; any 64 hex digits do for a test store.
    let mut file = std::fs::File::open(gguf)?;
    let mut head = vec![0u8; 1 << 16];
    let n = file.read(&mut head)?;
    let hex = blake3::hash(&head[..n]).to_hex().to_string();
    let blobs = store.join("blobs");
    std::fs::create_dir_all(&blobs)?;
    let blob = blobs.join(format!("sha256-{hex}"));
    if !blob.exists() && std::fs::hard_link(gguf, &blob).is_err() {
        std::fs::copy(gguf, &blob)?;
    }
    let dir = store
        .join("manifests")
        .join(registry)
        .join(namespace)
        .join(model);
    std::fs::create_dir_all(&dir)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": format!("sha256:{}", "0".repeat(64)),
            "size": 2
        },
        "layers": [
            { "mediaType": MODEL_LAYER, "digest": format!("sha256:{hex}"),
              "size": std::fs::metadata(gguf)?.len() },
            { "mediaType": "application/vnd.ollama.image.template",
              "digest": format!("sha256:{}", "1".repeat(64)), "size": 1 }
        ]
    });
    std::fs::write(dir.join(tag), manifest.to_string())?;
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_manifest_paths_as_ollama_lays_them_out() {
        let p = |n: &str| parts(n).unwrap().join("/");
        assert_eq!(p("llama3.2:1b"), "registry.ollama.ai/library/llama3.2/1b");
        assert_eq!(p("smollm2"), "registry.ollama.ai/library/smollm2/latest");
        assert_eq!(p("me/tiny:q4"), "registry.ollama.ai/me/tiny/q4");
        assert_eq!(p("hf.co/org/m:Q4_K_M"), "hf.co/org/m/Q4_K_M");
        for bad in ["", "a/b/c/d", "../x", "x:", "x:y:z", "a b", "x/../../etc"] {
            assert!(parts(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_laid_out_model_resolves_to_its_blob_and_a_missing_one_says_what_is_there() {
        let store = tempfile::tempdir().unwrap();
        let gguf = store.path().join("source.gguf");
        std::fs::write(&gguf, b"GGUF test bytes").unwrap();
        let blob = lay_out_for_tests(store.path(), "tiny:1b", &gguf).unwrap();
        assert_eq!(resolve(store.path(), "tiny:1b").unwrap(), blob);
        assert_eq!(std::fs::read(&blob).unwrap(), b"GGUF test bytes");
        let err = resolve(store.path(), "llama3.2:1b")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not in the Ollama store"), "{err}");
        assert!(err.contains("tiny:1b"), "lists what is there: {err}");
        // A manifest whose blob is gone, and one that is not JSON.
        std::fs::remove_file(&blob).unwrap();
        let err = resolve(store.path(), "tiny:1b").unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
        let manifest = store
            .path()
            .join("manifests/registry.ollama.ai/library/tiny/1b");
        std::fs::write(&manifest, b"not json").unwrap();
        let err = resolve(store.path(), "tiny:1b").unwrap_err().to_string();
        assert!(err.contains("not a manifest"), "{err}");
    }
}
