//! Admission to a private mesh, on every connection, before the swarm sees it.
//!
//! Once the connection's own handshake (Noise over TCP, TLS in QUIC, either over a
//! relay circuit) has proven the peer's key and the streams are multiplexed, each side
//! opens one stream and sends its [`Hello`] (its invite and the revocation lists it
//! holds), reads the other's hello from the first stream the other opens, judges it
//! and answers with a [`Verdict`]. Only when both verdicts say "admitted" is the
//! connection handed to the swarm; otherwise the transport reports an error with the
//! reason, and the swarm (identify, gossip, Kademlia, inference, the ledger, the relay)
//! never learns of it. This works the same over QUIC, TCP and relayed circuits, which
//! libp2p's `pnet` (TCP only) does not.
//!
//! Framing: a 4-byte big-endian length, then the canonical CBOR message; a hello is
//! at most [`Hello::MAX_SIZE`] bytes, a verdict [`Verdict::MAX_SIZE`]. The whole
//! exchange must end within [`HANDSHAKE_TIMEOUT`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt};
use libp2p::core::muxing::{StreamMuxerBox, StreamMuxerExt, SubstreamBox};
use libp2p::core::ConnectedPoint;
use libp2p::PeerId;
use relaymesh_protocol::membership::Admitted;
use relaymesh_protocol::messages::membership::{Hello, Verdict};
use relaymesh_protocol::wire::WireMessage;
use tracing::{debug, info};

use super::membership::Membership;

/// Longest a connection may take to be admitted.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refusing side waits for its verdict to reach the peer before closing.
const LINGER: Duration = Duration::from_secs(2);

/// Why a connection was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// We refused the peer.
    #[error("peer {peer} is not a member of this private mesh: {reason}")]
    Refused {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The peer refused us.
    #[error("peer {peer} refused this node's membership: {reason}")]
    RefusedByPeer {
        /// The peer.
        peer: PeerId,
        /// What it said.
        reason: String,
    },
    /// The exchange failed (closed, garbage, too slow).
    #[error("membership handshake with {peer} failed: {reason}")]
    Handshake {
        /// The peer.
        peer: PeerId,
        /// What went wrong.
        reason: String,
    },
}

/// Admits the connection to `peer` or fails with the reason; see the module comment.
pub async fn admit(
    membership: Arc<Membership>,
    peer: PeerId,
    muxer: StreamMuxerBox,
    endpoint: ConnectedPoint,
) -> Result<(PeerId, StreamMuxerBox), AdmissionError> {
    let handshake = Handshake::new(membership.clone(), peer, muxer);
    let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(result) => result,
        Err(_) => Err(AdmissionError::Handshake {
            peer,
            reason: format!("no answer within {} s", HANDSHAKE_TIMEOUT.as_secs()),
        }),
    };
    match &result {
        Ok(_) => debug!(%peer, "admitted to the private mesh"),
        Err(e @ AdmissionError::RefusedByPeer { .. }) => {
            membership.count_refusal("by_peer");
            info!(address = %endpoint.get_remote_address(), "{e}");
        }
        Err(e) => {
            if matches!(e, AdmissionError::Handshake { .. }) {
                membership.count_refusal("handshake");
            }
            debug!(address = %endpoint.get_remote_address(), "{e}");
        }
    }
    result.map(|muxer| (peer, muxer))
}

type Outbound = BoxFuture<'static, Result<(), AdmissionError>>;
type Inbound = BoxFuture<'static, Result<Admitted, AdmissionError>>;

/// Drives the connection while the two streams of the exchange run: ours (send our
/// hello, read their verdict) and theirs (read their hello, judge, answer).
struct Handshake {
    membership: Arc<Membership>,
    peer: PeerId,
    muxer: Option<StreamMuxerBox>,
    ours: Option<Outbound>,
    ours_done: bool,
    theirs: Option<Inbound>,
    theirs_done: bool,
    /// Our stream failed (or the peer refused us); reported once theirs is judged.
    broken: Option<AdmissionError>,
    /// Whether our verdict on their hello has gone out, and which.
    answered: Arc<AtomicU8>,
}

/// `Handshake::answered`: no verdict sent yet, "admitted" sent, "refused" sent.
const UNANSWERED: u8 = 0;
const ADMITTED: u8 = 1;
const REFUSED: u8 = 2;

impl Handshake {
    fn new(membership: Arc<Membership>, peer: PeerId, muxer: StreamMuxerBox) -> Self {
        Self {
            membership,
            peer,
            muxer: Some(muxer),
            ours: None,
            ours_done: false,
            theirs: None,
            theirs_done: false,
            broken: None,
            answered: Arc::new(AtomicU8::new(UNANSWERED)),
        }
    }

    fn failed(&self, reason: impl std::fmt::Display) -> AdmissionError {
        AdmissionError::Handshake {
            peer: self.peer,
            reason: reason.to_string(),
        }
    }
}

impl Future for Handshake {
    type Output = Result<StreamMuxerBox, AdmissionError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(muxer) = this.muxer.as_mut() else {
            return Poll::Pending;
        };
        // The connection itself (for yamux, the frames of every stream).
        loop {
            match muxer.poll_unpin(cx) {
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(this.failed(e))),
                Poll::Pending => break,
            }
        }
        if this.ours.is_none() && !this.ours_done {
            match muxer.poll_outbound_unpin(cx) {
                Poll::Ready(Ok(stream)) => {
                    this.ours = Some(send_hello(this.peer, this.membership.hello(), stream).boxed())
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(this.failed(e))),
                Poll::Pending => {}
            }
        }
        // The first stream the peer opens carries its hello. Until we have admitted it,
        // an honest peer cannot have finished its handshake, so it opens no other
        // stream: a second one is a stranger making us buffer, and ends the exchange.
        if !this.theirs_done && this.answered.load(Ordering::Acquire) != ADMITTED {
            match muxer.poll_inbound_unpin(cx) {
                Poll::Ready(Ok(stream)) if this.theirs.is_none() => {
                    this.theirs = Some(
                        judge_hello(
                            this.membership.clone(),
                            this.peer,
                            stream,
                            this.answered.clone(),
                        )
                        .boxed(),
                    )
                }
                Poll::Ready(Ok(_)) => {
                    return Poll::Ready(Err(this.failed("a second stream before admission")));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(this.failed(e))),
                Poll::Pending => {}
            }
        }
        if let Some(ours) = this.ours.as_mut() {
            if let Poll::Ready(result) = ours.poll_unpin(cx) {
                this.ours = None;
                this.ours_done = true;
                // A refusal is final, but the peer's hello is still judged: it
                // carries the revocation lists that may say why. A broken exchange
                // may be the peer leaving after our refusal: our own verdict, when it
                // comes, says more.
                if let Err(e) = result {
                    this.broken = Some(e);
                }
            }
        }
        if let Some(theirs) = this.theirs.as_mut() {
            if let Poll::Ready(result) = theirs.poll_unpin(cx) {
                this.theirs = None;
                this.theirs_done = true;
                if let Err(e) = result {
                    return Poll::Ready(Err(match this.broken.take() {
                        Some(refused @ AdmissionError::RefusedByPeer { .. }) => refused,
                        _ => e,
                    }));
                }
            }
        }
        if this.ours_done && this.theirs_done {
            if let Some(e) = this.broken.take() {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(this.muxer.take().expect("polled once more")));
        }
        Poll::Pending
    }
}

async fn write_frame(stream: &mut SubstreamBox, bytes: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len()).expect("messages are small");
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(bytes).await?;
    stream.flush().await
}

async fn read_frame(stream: &mut SubstreamBox, max: usize) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(format!(
            "a {len}-byte message where at most {max} belong (not a private mesh's handshake)"
        ));
    }
    let mut bytes = vec![0u8; len];
    stream
        .read_exact(&mut bytes)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    Ok(bytes)
}

/// Our stream: our hello out, their verdict back.
async fn send_hello(
    peer: PeerId,
    hello: Hello,
    mut stream: SubstreamBox,
) -> Result<(), AdmissionError> {
    let failed = |reason: String| AdmissionError::Handshake { peer, reason };
    let bytes = hello.encode().map_err(|e| failed(e.to_string()))?;
    write_frame(&mut stream, &bytes)
        .await
        .map_err(|e| failed(format!("sending our invite: {e}")))?;
    let answer = read_frame(&mut stream, Verdict::MAX_SIZE)
        .await
        .map_err(failed)?;
    let verdict = Verdict::decode(&answer).map_err(|e| failed(e.to_string()))?;
    let _ = stream.close().await;
    match verdict.refusal {
        None => Ok(()),
        Some(reason) => Err(AdmissionError::RefusedByPeer {
            peer,
            reason: reason.as_str().to_owned(),
        }),
    }
}

/// Their stream: their hello in, judged, our verdict out. A refused peer is given the
/// reason, and a moment to read it, before the connection closes.
async fn judge_hello(
    membership: Arc<Membership>,
    peer: PeerId,
    mut stream: SubstreamBox,
    answered: Arc<AtomicU8>,
) -> Result<Admitted, AdmissionError> {
    let hello = read_frame(&mut stream, Hello::MAX_SIZE)
        .await
        .and_then(|bytes| Hello::decode(&bytes).map_err(|e| e.to_string()));
    let verdict = match hello {
        Ok(hello) => membership
            .judge(&peer, hello, super::now_ms())
            .map_err(|refusal| refusal.to_string()),
        Err(garbage) => {
            membership.count_refusal("malformed");
            Err(format!("unreadable hello: {garbage}"))
        }
    };
    let answer = match &verdict {
        Ok(_) => Verdict::admitted(),
        Err(reason) => Verdict::refused(reason),
    };
    let bytes = answer.encode().expect("a verdict fits its limit");
    let sent = write_frame(&mut stream, &bytes).await;
    answered.store(
        if verdict.is_ok() { ADMITTED } else { REFUSED },
        Ordering::Release,
    );
    match verdict {
        Ok(admitted) => {
            sent.map_err(|e| AdmissionError::Handshake {
                peer,
                reason: format!("answering: {e}"),
            })?;
            let _ = stream.close().await;
            Ok(admitted)
        }
        Err(reason) => {
            // Let the verdict reach the peer: it closes once it has read it.
            let _ = stream.close().await;
            let mut rest = [0u8; 64];
            let _ = tokio::time::timeout(LINGER, stream.read(&mut rest)).await;
            Err(AdmissionError::Refused { peer, reason })
        }
    }
}
