//! Reading an app's frames, each within its time and size bounds, and a generation's
//! next event.

use std::time::Duration;

use relaymesh_protocol::messages::infer::FrameBody;

use super::super::codec::{read_frame, FrameError};
use super::super::stream_slots::{StreamSlot, FIRST_FRAME_TIMEOUT};
use super::{SupplierContext, FRAME_TIMEOUT};
use crate::backend::GenEvent;

/// The app's next frame; an oversized or late one is counted in `limited`.
pub(super) async fn next_frame<R: futures::AsyncRead + Unpin>(
    r: &mut R,
    ctx: &SupplierContext,
) -> Result<FrameBody, String> {
    next_frame_within(r, ctx, FRAME_TIMEOUT).await
}

/// The stream's first frame, within [`FIRST_FRAME_TIMEOUT`] and unless its slot is
/// given to another stream first (see `stream_slots`).
pub(super) async fn first_frame<R: futures::AsyncRead + Unpin>(
    r: &mut R,
    slot: &mut StreamSlot,
    ctx: &SupplierContext,
) -> Result<FrameBody, String> {
    let frame = tokio::select! {
        frame = next_frame_within(r, ctx, FIRST_FRAME_TIMEOUT) => Some(frame?),
        () = slot.evicted() => None,
    };
    match frame {
        Some(frame) if slot.started() => Ok(frame),
        _ => {
            ctx.metrics.limited("streams_evicted");
            Err(
                "the stream sent nothing while every slot was held; its slot went to another"
                    .into(),
            )
        }
    }
}

pub(super) async fn next_frame_within<R: futures::AsyncRead + Unpin>(
    r: &mut R,
    ctx: &SupplierContext,
    timeout: Duration,
) -> Result<FrameBody, String> {
    match tokio::time::timeout(timeout, read_frame(r)).await {
        Ok(Ok(frame)) => Ok(frame.body),
        Ok(Err(e)) => {
            if matches!(e, FrameError::TooLarge(_)) {
                ctx.metrics.limited("frame_size");
            }
            Err(e.to_string())
        }
        Err(_) => {
            ctx.metrics.limited("frame_timeout");
            Err("the app sent nothing in time".into())
        }
    }
}

/// The next event of a generation still running; never, once it was dropped.
pub(super) async fn next_event(
    generation: &mut Option<crate::backend::Measured>,
) -> Option<GenEvent> {
    match generation {
        Some(g) => g.next().await,
        None => std::future::pending().await,
    }
}
