//! Length-prefixed `InferFrame`s on a libp2p stream: a 4-byte big-endian length, then
//! the frame's canonical CBOR. Lengths over `InferFrame::MAX_SIZE` are refused before
//! anything is read or allocated.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use relaymesh_protocol::messages::infer::{FrameBody, InferFrame};
use relaymesh_protocol::WireMessage;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or closed.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// A length over the limit.
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Bytes that are not a valid frame.
    #[error("invalid frame: {0}")]
    Invalid(String),
}

/// Reads one frame.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<InferFrame, FrameError> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > InferFrame::MAX_SIZE {
        return Err(FrameError::TooLarge(len));
    }
    let mut bytes = vec![0u8; len];
    reader.read_exact(&mut bytes).await?;
    InferFrame::decode(&bytes).map_err(|e| FrameError::Invalid(e.to_string()))
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    body: FrameBody,
) -> Result<(), FrameError> {
    let bytes = InferFrame::new(body)
        .encode()
        .map_err(|e| FrameError::Invalid(e.to_string()))?;
    writer
        .write_all(&(bytes.len() as u32).to_be_bytes())
        .await?;
    writer.write_all(&bytes).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaymesh_protocol::BoundedString;

    #[tokio::test]
    async fn frames_round_trip_and_garbage_is_refused() {
        let mut buf = Vec::new();
        write_frame(
            &mut buf,
            FrameBody::Token(BoundedString::new(" Paris").unwrap()),
        )
        .await
        .unwrap();
        let frame = read_frame(&mut buf.as_slice()).await.unwrap();
        assert_eq!(
            frame.body,
            FrameBody::Token(BoundedString::new(" Paris").unwrap())
        );
        // A length over the limit is refused without reading on.
        let huge = (u32::MAX).to_be_bytes();
        assert!(matches!(
            read_frame(&mut &huge[..]).await,
            Err(FrameError::TooLarge(_))
        ));
        // Garbage of a plausible length is an error, not a panic.
        let mut garbage = 5u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xff; 5]);
        assert!(matches!(
            read_frame(&mut garbage.as_slice()).await,
            Err(FrameError::Invalid(_))
        ));
        // A stream that ends mid-frame.
        assert!(matches!(
            read_frame(&mut &buf[..buf.len() - 1]).await,
            Err(FrameError::Io(_))
        ));
    }
}
