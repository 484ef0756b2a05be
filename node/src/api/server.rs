//! The local API's HTTP server: hyper's HTTP/1.1 with the bounds a server facing
//! untrusted clients needs, which `axum::serve` does not set.
//!
//! - At most [`MAX_CONNECTIONS`] connections at once; more are closed as they come.
//! - A client has [`HEADER_TIMEOUT`] to send a request's headers (a client that
//!   trickles them, or opens connections and sends nothing, would otherwise hold each
//!   connection forever).
//! - A response write that makes no progress for [`WRITE_STALL`] ends the connection: a
//!   client that stops reading a streamed answer would otherwise hold its model slot
//!   (the generation waits for room in the stream) for as long as it likes.
//!
//! Each cut-off is counted in `relaymesh_limited_total` (`http_connections`,
//! `http_header_timeout`, `http_write_stall`). Stopping waits for requests in flight
//! (graceful shutdown), up to the grace the caller gives.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;

use super::{router, ApiState};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 512;
/// Time a client has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a response write may wait for the client to read.
pub const WRITE_STALL: Duration = Duration::from_secs(60);

/// Binds `addr` and serves the API until stopped; returns the bound address (port 0
/// picks one).
pub async fn serve(
    addr: SocketAddr,
    state: ApiState,
    limits: &crate::config::Limits,
) -> io::Result<(SocketAddr, ApiServer)> {
    let (max_connections, header_timeout, write_stall) = (
        limits.http_connections,
        Duration::from_secs(limits.http_header_timeout_secs),
        Duration::from_secs(limits.http_write_stall_secs),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(api = %bound, "local API listening");
    let metrics = state.metrics.clone();
    let service = TowerToHyperService::new(router(state));
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(max_connections));
        // Connections end with this task (aborted after the grace, they go too).
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        // Out of file descriptors, mostly: wait rather than spin.
                        tracing::warn!(%err, "local API cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = &mut stopped => break,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics.limited("http_connections");
                continue;
            };
            let io = TokioIo::new(Stalling::new(stream, write_stall));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(io, service.clone());
            let connection = graceful.watch(connection);
            let metrics = metrics.clone();
            connections.spawn(async move {
                let _slot = slot;
                if let Err(err) = connection.await {
                    if err.is_timeout() {
                        metrics.limited("http_header_timeout");
                    } else if stalled(&err) {
                        metrics.limited("http_write_stall");
                    }
                    tracing::debug!(%err, "local API connection ended");
                }
            });
        }
        drop(listener);
        graceful.shutdown().await;
        while connections.join_next().await.is_some() {}
    });
    Ok((
        bound,
        ApiServer {
            stop: Some(stop),
            task,
        },
    ))
}

/// Whether a connection ended because a write stalled (`Stalling`).
fn stalled(err: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// A running local API.
pub struct ApiServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Stops accepting connections (idle ones close); requests in flight go on.
    pub fn stop_accepting(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops at once: no grace for requests in flight.
    pub fn abort(&mut self) {
        self.stop_accepting();
        self.task.abort();
    }

    /// Stops accepting, closes idle connections, and gives requests in flight `grace`
    /// to finish before the server is dropped. Dropping this future part way (an
    /// embedder's timeout around `Node::shutdown`) drops the server, which aborts it.
    pub async fn stop(mut self, grace: Duration) {
        self.stop_accepting();
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

impl Drop for ApiServer {
    /// A server dropped while it runs stops at once, its connections with it: no task
    /// outlives its owner (found by review: a `shutdown` dropped during the API's
    /// grace left the server running detached).
    fn drop(&mut self) {
        self.abort();
    }
}

/// A stream whose writes fail with `TimedOut` once one has waited `limit` for the
/// peer to read.
struct Stalling<S> {
    inner: S,
    limit: Duration,
    /// Armed when a write found no room; cleared when one makes progress.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Stalling<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            waiting: None,
        }
    }

    /// `Pending` from a write: arms the clock, or fails once it ran out.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let sleep = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {} s", limit.as_secs()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stalling<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stalling<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.waiting = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.waiting = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.waiting = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Found by review: `stop` moved the server's task into its timeout, so a `stop`
    /// dropped during the grace (a `Node::shutdown` under an embedder's timeout) left
    /// the task running detached with its connections. Now the server is dropped with
    /// the future, and that aborts it.
    #[tokio::test]
    async fn a_stop_dropped_during_the_grace_stops_the_server() {
        struct Alive(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Alive {
            fn drop(&mut self) {
                self.0.store(false, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let guard = Alive(alive.clone());
        let server = ApiServer {
            stop: None,
            task: tokio::spawn(async move {
                let _guard = guard;
                std::future::pending::<()>().await;
            }),
        };
        let stopping = server.stop(Duration::from_secs(3600));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), stopping)
                .await
                .is_err(),
            "the grace had not passed"
        );
        for _ in 0..100 {
            if !alive.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the server's task outlived the dropped stop");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_reads_fails_after_the_stall_limit() {
        let (near, _far) = tokio::io::duplex(64);
        let mut s = Stalling::new(near, Duration::from_secs(60));
        let started = tokio::time::Instant::now();
        let err = s.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(64);
        let mut s = Stalling::new(near, Duration::from_secs(60));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut total = 0;
            while total < 4096 {
                tokio::time::sleep(Duration::from_secs(30)).await;
                total += far.read(&mut buf).await.unwrap();
            }
        });
        s.write_all(&[0u8; 4096]).await.unwrap();
        reader.await.unwrap();
    }
}
