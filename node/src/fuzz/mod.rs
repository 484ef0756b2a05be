//! Fuzz targets for what the node decodes beyond the protocol's own messages (those
//! are `relaymesh_protocol::messages::wire_decoders`): the inference stream's framing,
//! the ads and ledger sync codecs with what the node does with their contents, a private
//! mesh's membership handshake, and the
//! HTTP API's JSON bodies and routing headers up to the backend request they become.
//!
//! Stable Rust, deterministic from a seed: structured mutation of valid inputs (the
//! protocol's golden vectors, sample bodies). A short run is in the tests; millions of
//! inputs with `cargo run --release -p relaymesh-node --example fuzz_node`. A panic is a bug.

pub mod admission;
pub mod frames;
pub mod json;
pub mod sync;

use std::path::Path;

use relaymesh_protocol::wire::fuzz::{fuzz_bytes, FuzzStats};

/// How a target's inputs are made from its corpus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// The protocol crate's byte-level mutator (CBOR-aware edits).
    Bytes,
    /// JSON-aware edits, with byte-level ones on top now and then.
    Json,
}

/// Decodes and handles one input; whether it was accepted.
pub type Check = Box<dyn FnMut(&[u8]) -> bool>;

/// One decoder and what follows it, with valid inputs to mutate.
pub struct FuzzTarget {
    /// What is decoded.
    pub name: &'static str,
    /// Valid inputs.
    pub corpus: Vec<Vec<u8>>,
    /// How mutants are made.
    pub mutation: Mutation,
    /// Decodes and handles one input.
    pub check: Check,
}

impl FuzzTarget {
    /// A target from its parts.
    pub fn new(
        name: &'static str,
        corpus: Vec<Vec<u8>>,
        mutation: Mutation,
        check: impl FnMut(&[u8]) -> bool + 'static,
    ) -> Self {
        Self {
            name,
            corpus,
            mutation,
            check: Box::new(check),
        }
    }

    /// Throws `iterations` mutants at the target. A panic fails the caller.
    pub fn run(&mut self, iterations: u64, seed: u64) -> FuzzStats {
        let check = &mut self.check;
        match self.mutation {
            Mutation::Bytes => fuzz_bytes(&self.corpus, iterations, seed, check),
            Mutation::Json => json::fuzz_json(&self.corpus, iterations, seed, check),
        }
    }
}

/// Reads the protocol's golden vectors from `dir` (`protocol/tests/vectors`): file
/// stem and bytes, sorted by name.
pub fn read_vectors(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{name}: {e}"))?;
        let bytes = hex::decode(text.trim()).map_err(|e| format!("{name}: {e}"))?;
        out.push((name, bytes));
    }
    out.sort();
    Ok(out)
}

/// The vectors of one message type (`InferFrame` takes `InferFrame.*`).
pub(crate) fn vectors_of(vectors: &[(String, Vec<u8>)], kind: &str) -> Vec<Vec<u8>> {
    vectors
        .iter()
        .filter(|(name, _)| name.split('.').next() == Some(kind))
        .map(|(_, bytes)| bytes.clone())
        .collect()
}

/// Every node-side target, their corpora built from the golden vectors in `vectors`
/// (`protocol/tests/vectors`).
pub fn targets(vectors: &Path) -> Result<Vec<FuzzTarget>, String> {
    let vectors = read_vectors(vectors)?;
    let mut out = vec![frames::target(&vectors)];
    out.extend(sync::targets(&vectors)?);
    out.push(admission::target()?);
    out.push(admission::token_target());
    out.extend(crate::api::fuzz::targets());
    Ok(out)
}

/// Where the golden vectors are in this repository.
pub fn vectors_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/tests/vectors")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The short run the test suite does: 20,000 inputs per target.
    #[test]
    fn short_fuzz_run_of_every_node_decoder() {
        let mut names = Vec::new();
        for mut target in targets(&vectors_dir()).unwrap() {
            assert!(!target.corpus.is_empty(), "{}: empty corpus", target.name);
            // The first input is valid (else the corpus tests nothing deep); others
            // may be refused on purpose.
            let first = target.corpus[0].clone();
            assert!((target.check)(&first), "{}: corpus refused", target.name);
            let stats = target.run(20_000, 0x5eed);
            assert_eq!(stats.inputs, 20_000);
            assert!(
                stats.accepted > 0 && stats.accepted < stats.inputs,
                "{}: {stats:?}",
                target.name
            );
            names.push(target.name);
        }
        for wanted in [
            "infer stream",
            "AdsRequest",
            "AdsResponse",
            "LedgerSyncRequest",
            "LedgerSyncResponse",
            "POST /v1/chat/completions",
            "POST /api/chat",
            "POST /relaymesh/v1/transfers",
            "membership hello",
            "invite token",
        ] {
            assert!(names.contains(&wanted), "{wanted} not fuzzed: {names:?}");
        }
    }
}
