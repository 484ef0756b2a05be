//! Golden vectors: fixed bytes in `tests/vectors/` that must decode, re-encode to
//! themselves, verify, and equal what the code produces today. A change to any
//! encoding or signature rule shows up here as a diff to review.
//!
//! Regenerate (only for a deliberate format change, with a version bump):
//! `RELAYMESH_WRITE_VECTORS=1 cargo test -p relaymesh-protocol --test golden`.

mod common;

use std::path::PathBuf;

#[path = "common/vectors.rs"]
mod vectors;

fn dir() -> PathBuf {
    support_dir().join("tests/vectors")
}

#[test]
fn golden_vectors_decode_reencode_and_verify() {
    let write = std::env::var_os("RELAYMESH_WRITE_VECTORS").is_some();
    let all = vectors::all();
    let names: Vec<&str> = relaymesh_protocol::messages::wire_decoders()
        .iter()
        .map(|d| d.name)
        .collect();
    for name in &names {
        assert!(
            all.iter()
                .any(|g| g.file == *name || g.file.starts_with(&format!("{name}."))),
            "no golden vector for {name}"
        );
    }
    for golden in all {
        let path = dir().join(format!("{}.hex", golden.file));
        if write {
            std::fs::write(&path, hex::encode(&golden.bytes) + "\n").unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; see this file's header to regenerate",
                path.display()
            )
        });
        let bytes = hex::decode(text.trim()).unwrap();
        (golden.decode_and_verify)(&bytes).unwrap_or_else(|e| panic!("{}: {e}", golden.file));
        assert_eq!(
            bytes, golden.bytes,
            "{}: today's encoding differs from the golden bytes",
            golden.file
        );
    }
}

/// The package's directory: at run time when cargo says (a test binary reused from a
/// build in another checkout would otherwise look in that checkout), else as built.
fn support_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
