//! Connections: the accept loop and the bounds every connection lives within
//! — how many at once, how long and how large the request headers may be —
//! and the lingering close that lets an answer given before the body was read
//! (403, 413, 404, 405, 431, 408) reach a client that writes its whole request
//! before it reads (Python's `http.client`, reqwest under load).
//!
//! Why a lingering close: a socket closed while unread request bytes wait in
//! its receive buffer makes the kernel send a reset, and a reset makes the
//! client's kernel throw away the answer it has received but not yet read. So
//! after the answer the connection is half-closed (the client reads the answer,
//! then end of file) and what the client still sends is read and discarded, up
//! to [`LINGER_MAX_BYTES`] or [`LINGER_MAX_TIME`], before the socket is closed.
//! Such an answer says `Connection: close`, so a client that pools
//! connections does not send its next request on this one.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, header};
use hyper::body::{Body as _, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt;

/// The HTTP parser's own bound on the request line and headers together.
/// Requests past [`crate::checks::headers::MAX_REQUEST_HEADER_BYTES`] but
/// within this one get our 431 with a JSON body; past this one the parser
/// answers 431 itself, without a body, before any handler runs. Twice the
/// contract's bound, so every request a real client could mean to send gets
/// the JSON answer, while a connection never buffers more than this for its
/// headers (1,000 connections: 64 MiB at most).
pub const HEADER_PARSE_LIMIT: usize = 64 * 1024;

/// After an answer, at most this much of the rest of the request is read and
/// discarded before the connection is closed. 64 times the default
/// `maxBodyBytes`: a provider whose body is over the limit sends a few MiB at
/// most, and discarding costs bandwidth only, never memory (one 8 KiB buffer).
pub const LINGER_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// After an answer, the longest the rest of the request is read and discarded.
/// At the tens of MB/s between data centres that is more than
/// [`LINGER_MAX_BYTES`]; it is also the longest a client that keeps sending can
/// hold a connection slot after its answer, half the header-read bound.
pub const LINGER_MAX_TIME: Duration = Duration::from_secs(5);

/// Size of the buffer the lingering read discards into.
const LINGER_BUFFER: usize = 8 * 1024;

/// How long accepting pauses after an error that is not the peer's (such as
/// running out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// At most one warning per this interval while the connection limit is reached.
const FULL_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// The bounds of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once; past it, new ones wait in the listen backlog.
    pub max_connections: usize,
    /// How long a connection may take to deliver a request's line and headers
    /// (and how long a kept-alive connection may stay idle).
    pub header_read_timeout: Duration,
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes,
/// then stops accepting, lets every open connection finish its request in
/// flight (and its lingering close), and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(HEADER_PARSE_LIMIT);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a receiver; `closed()` below waits for all of them.
    let (open_tx, open_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    let mut last_full_warning: Option<Instant> = None;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_full) => {
                if last_full_warning.is_none_or(|at| at.elapsed() >= FULL_WARNING_INTERVAL) {
                    last_full_warning = Some(Instant::now());
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached; new connections wait until one closes"
                    );
                }
                tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_closed) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    if !is_peer_error(&err) {
                        tracing::warn!(cause = %err, "cannot accept connections; pausing");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small answers must not wait for Nagle.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(cause = %err, "cannot set TCP_NODELAY");
        }
        tokio::spawn(connection(
            stream,
            peer,
            router.clone(),
            http.clone(),
            stop_rx.clone(),
            open_rx.clone(),
            permit,
        ));
    }
    drop(listener);
    // Receivers may all be gone already; then there is nobody to tell.
    let _ = stop_tx.send(true);
    drop(open_rx);
    open_tx.closed().await;
}

/// Errors of one connection attempt (the peer gave up), not of the listener.
fn is_peer_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One connection: HTTP/1.1 until either side closes it, then the lingering
/// close. The permit and `_open` are released when it is over.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    http: http1::Builder,
    stop: watch::Receiver<bool>,
    _open: watch::Receiver<()>,
    _permit: OwnedSemaphorePermit,
) {
    let slot = Arc::new(Mutex::new(None));
    let io = Tracked {
        stream: Some(stream),
        wrote: false,
        peer_closed: false,
        slot: slot.clone(),
    };
    serve_http(io, peer, router, http, stop).await;
    let closed = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(closed) = closed {
        linger(closed).await;
    }
}

/// Runs the HTTP protocol on `io` until the connection is done; closes it
/// gracefully (after the request in flight) once `stop` turns true.
async fn serve_http(
    io: Tracked,
    peer: SocketAddr,
    router: Router,
    http: http1::Builder,
    mut stop: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let read_to_end = Arc::new(AtomicBool::new(request.body().is_end_stream()));
        let mut request = request.map(|body| {
            axum::body::Body::new(Watched {
                body,
                read_to_end: read_to_end.clone(),
            })
        });
        request.extensions_mut().insert(ConnectInfo(peer));
        let answer = router.clone().oneshot(request);
        async move {
            let mut response = answer.await?;
            // Answered before the body was read: the connection cannot carry
            // another request, and the client must know before it reuses it.
            if !read_to_end.load(Ordering::Relaxed) {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    });
    let mut conn = pin!(http.serve_connection(TokioIo::new(io), service));
    let mut stopping = pin!(async move {
        // An error means the server is gone: stop as well.
        let _ = stop.wait_for(|stopping| *stopping).await;
    });
    let mut asked_to_stop = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(err) = served {
                    // A client's timeout, reset or malformed request: theirs, not ours.
                    tracing::debug!(client = %peer, cause = %err, "connection ended");
                }
                return;
            }
            () = &mut stopping, if !asked_to_stop => {
                asked_to_stop = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A request body that notes when it has been read to its end.
struct Watched {
    body: Incoming,
    read_to_end: Arc<AtomicBool>,
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.read_to_end.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket of a finished connection, and what it went through.
struct Closed {
    stream: TcpStream,
    wrote: bool,
    peer_closed: bool,
}

/// Reads and discards what the client still sends after its answer, bounded
/// by [`LINGER_MAX_BYTES`] and [`LINGER_MAX_TIME`], then closes. Nothing to do
/// when no answer was written or the client already closed its side.
async fn linger(closed: Closed) {
    let Closed {
        mut stream,
        wrote,
        peer_closed,
    } = closed;
    if !wrote || peer_closed {
        return;
    }
    // The answer is out; the end of file after it tells the client we are done.
    if let Err(err) = stream.shutdown().await {
        tracing::debug!(cause = %err, "cannot half-close the connection");
        return;
    }
    let mut buffer = vec![0u8; LINGER_BUFFER];
    let discard = async {
        let mut discarded: u64 = 0;
        while discarded < LINGER_MAX_BYTES {
            match stream.read(&mut buffer).await {
                Ok(0) => return,
                Ok(read) => discarded += read as u64,
                Err(err) => {
                    tracing::debug!(cause = %err, "lingering read ended");
                    return;
                }
            }
        }
    };
    if tokio::time::timeout(LINGER_MAX_TIME, discard)
        .await
        .is_err()
    {
        tracing::debug!("client still sending after the lingering bound; closing");
    }
}

/// The connection's socket, noting whether an answer was written and whether
/// the client closed its side; when hyper drops it, the socket goes into
/// `slot` for [`linger`] instead of being closed with unread bytes.
struct Tracked {
    stream: Option<TcpStream>,
    wrote: bool,
    peer_closed: bool,
    slot: Arc<Mutex<Option<Closed>>>,
}

impl Tracked {
    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match self.stream.as_mut() {
            Some(stream) => Ok(Pin::new(stream)),
            None => Err(io::Error::from(io::ErrorKind::NotConnected)),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Closed {
                stream,
                wrote: self.wrote,
                peer_closed: self.peer_closed,
            });
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let asked = buf.remaining() > 0;
        let polled = self.stream()?.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && asked
            && buf.filled().len() == before
        {
            self.peer_closed = true;
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = self.stream()?.poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled
            && written > 0
        {
            self.wrote = true;
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = self.stream()?.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(written)) = polled
            && written > 0
        {
            self.wrote = true;
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream()?.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream()?.poll_shutdown(cx)
    }
}
