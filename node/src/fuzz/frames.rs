//! The inference stream's framing: arbitrary bytes read as a stream of length-prefixed
//! `InferFrame`s, as a supplier or gateway reads them off a libp2p stream.

use futures::FutureExt;
use relaymesh_protocol::messages::infer::InferFrame;
use relaymesh_protocol::WireMessage;

use super::{vectors_of, FuzzTarget, Mutation};
use crate::infer::codec::{read_frame, FrameError};

/// Reads frames from `stream` until it ends or one is refused; whether it held only
/// whole, valid frames.
pub fn read_stream(mut stream: &[u8]) -> bool {
    while !stream.is_empty() {
        let declared = stream
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
        let read = read_frame(&mut stream)
            .now_or_never()
            .expect("reading from memory never waits");
        match read {
            Ok(_) => {}
            Err(FrameError::TooLarge(len)) => {
                assert_eq!(Some(len), declared);
                assert!(len > InferFrame::MAX_SIZE);
                return false;
            }
            Err(FrameError::Io(_) | FrameError::Invalid(_)) => return false,
        }
    }
    true
}

fn framed(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        out.extend_from_slice(frame);
    }
    out
}

/// Each frame alone, pairs, and all of them back to back.
pub fn target(vectors: &[(String, Vec<u8>)]) -> FuzzTarget {
    let frames = vectors_of(vectors, "InferFrame");
    let mut corpus: Vec<Vec<u8>> = frames.iter().map(|f| framed(&[f])).collect();
    for pair in frames.windows(2) {
        corpus.push(framed(&[&pair[0], &pair[1]]));
    }
    corpus.push(framed(
        &frames.iter().map(Vec::as_slice).collect::<Vec<_>>(),
    ));
    FuzzTarget::new("infer stream", corpus, Mutation::Bytes, read_stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_of_frames() {
        let vectors = super::super::read_vectors(&super::super::vectors_dir()).unwrap();
        let frames = vectors_of(&vectors, "InferFrame");
        assert!(frames.len() >= 5);
        let all = framed(&frames.iter().map(Vec::as_slice).collect::<Vec<_>>());
        assert!(read_stream(&all));
        // Cut anywhere but between frames: refused.
        assert!(!read_stream(&all[..all.len() - 1]));
        assert!(!read_stream(&all[..3]));
        // A length past the limit, with or without the bytes behind it.
        let over = (InferFrame::MAX_SIZE as u32 + 1).to_be_bytes();
        assert!(!read_stream(&over));
        assert!(!read_stream(&u32::MAX.to_be_bytes()));
        // A zero-length frame is not a frame.
        assert!(!read_stream(&[0, 0, 0, 0]));
    }
}
