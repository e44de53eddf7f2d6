//! Listeners: accept loop, connection limit, optional TLS, and hyper's
//! HTTP/1.1 + HTTP/2 connection driver under the deadlines a hostile or
//! broken client must not escape (head from accept, idle, blocked writes;
//! see `conn_watch` and `write_timeout`) and the header limits. Every
//! connection is registered for graceful drain. The request itself is
//! handed to a `Handler` (the main router or the admin router).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::http::body::Body;
use crate::http::conn_watch::{ConnWatch, Expired, Tracked};
use crate::http::write_timeout::WriteTimeout;
use crate::metrics::Metrics;

/// What the handler knows about the connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Serves one request. Errors are answered inside: a handler always returns
/// a response, so hyper never sees a service error.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// Per-connection protocol limits and deadlines, read from the live config
/// at accept time so that a reload applies to new connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// From accept to the first complete request head (TLS handshake and
    /// protocol detection included); HTTP/1 also applies it to each later
    /// head, from the end of the previous request. Enforced by `conn_watch`.
    pub header_read_timeout: Duration,
    pub max_header_size: usize,
    pub max_headers: usize,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub http2: bool,
    pub max_concurrent_streams: u32,
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
}

/// Supplies the current TLS config (it follows config reloads); `None` means
/// the listener is plaintext.
pub type TlsSource = Arc<dyn Fn() -> Option<Arc<rustls::ServerConfig>> + Send + Sync>;
pub type LimitsSource = Arc<dyn Fn() -> ConnLimits + Send + Sync>;

pub struct Listener<H> {
    pub name: &'static str,
    pub listener: TcpListener,
    pub handler: Arc<H>,
    pub tls: Option<TlsSource>,
    pub limits: LimitsSource,
    pub connections: Arc<Semaphore>,
    /// The main listener's meters; `None` on the admin listener.
    pub metrics: Option<Arc<Metrics>>,
}

impl<H: Handler> Listener<H> {
    /// Accepts until `shutdown` turns true; each connection is driven on its
    /// own task and registered with `drain` so that shutdown can wait for it.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>, drain: Arc<GracefulShutdown>) {
        let name = self.name;
        loop {
            // Taking the permit before accepting leaves excess clients in the
            // kernel backlog instead of accepting and dropping them.
            let permit = tokio::select! {
                p = self.connections.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = stopped(&mut shutdown) => break,
            };
            let (stream, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
                _ = stopped(&mut shutdown) => break,
            };
            let _ = stream.set_nodelay(true);
            let handler = self.handler.clone();
            let tls = self.tls.as_ref().and_then(|t| t());
            let limits = (self.limits)();
            let metrics = self.metrics.clone();
            let accepted = Instant::now();
            let conn = Conn {
                accepted,
                info: ConnInfo {
                    peer,
                    tls: tls.is_some(),
                },
                limits,
                stop: shutdown.clone(),
                _registered: drain.watcher(),
                watch: ConnWatch::new(accepted),
                write_tripped: Arc::new(AtomicBool::new(false)),
            };
            let span = tracing::debug_span!("conn", listener = name, %peer);
            tokio::spawn(
                async move {
                    if let Some(m) = &metrics {
                        m.connections.inc();
                    }
                    let end = conn.serve(stream, tls, handler).await;
                    if let Some(m) = &metrics {
                        m.connections.dec();
                        if let Some(kind) = end.timeout_kind() {
                            m.client_timeout(kind);
                        }
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
        tracing::debug!(listener = name, "stopped accepting");
    }
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// How a connection ended, for the timeout count.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The client closed, or the connection finished its last response.
    Done,
    Expired(Expired),
    /// A write stayed blocked past `server.write_timeout`.
    WriteTimeout,
}

impl End {
    fn timeout_kind(&self) -> Option<&'static str> {
        match self {
            End::Done => None,
            // hyper's later-head timeout was never counted; `head` counts
            // from accept (README "Client deadlines").
            End::Expired(Expired::NextHead) => None,
            End::Expired(e) => Some(e.label()),
            End::WriteTimeout => Some("write"),
        }
    }
}

/// One accepted connection and everything its deadlines need.
struct Conn {
    accepted: Instant,
    info: ConnInfo,
    limits: ConnLimits,
    /// The listener's stop flag: turns into a graceful close.
    stop: watch::Receiver<bool>,
    /// Keeps the app's drain waiting until this connection is gone.
    _registered: Watcher,
    watch: ConnWatch,
    write_tripped: Arc<AtomicBool>,
}

impl Conn {
    async fn serve<H: Handler>(
        self,
        stream: TcpStream,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: Arc<H>,
    ) -> End {
        let io = WriteTimeout::new(
            stream,
            self.limits.write_timeout,
            self.write_tripped.clone(),
        );
        let builder = connection_builder(&self.limits);
        let Some(cfg) = tls else {
            return self.drive(builder, TokioIo::new(io), handler).await;
        };
        // The handshake counts against the head deadline: a client that
        // opens TLS and stalls is the same slowloris.
        let head_by = self.accepted + self.limits.header_read_timeout;
        let tls_stream =
            match tokio::time::timeout_at(head_by, TlsAcceptor::from(cfg).accept(io)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return self.ended_by_write(End::Done);
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return End::Expired(Expired::Head);
                }
            };
        let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let builder = if h2 && self.limits.http2 {
            builder.http2_only()
        } else {
            builder.http1_only()
        };
        self.drive(builder, TokioIo::new(tls_stream), handler).await
    }

    /// Runs hyper's connection under the watchdog: the head deadline closes
    /// a connection outright; the idle deadline and the listener's stop ask
    /// for a graceful close (HTTP/2 GOAWAY), then allow one more head
    /// timeout for it.
    async fn drive<I, H>(
        mut self,
        builder: auto::Builder<TokioExecutor>,
        io: TokioIo<I>,
        handler: Arc<H>,
    ) -> End
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        H: Handler,
    {
        let info = self.info;
        let watch = self.watch.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let in_flight = watch.begin(req.version() < Version::HTTP_2);
            let handler = handler.clone();
            async move {
                let resp = handler.handle(req, info).await;
                Ok::<_, std::convert::Infallible>(resp.map(|b| Tracked::new(b, in_flight)))
            }
        });
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        let limits = self.limits;
        let mut expired = None;
        // Set once a graceful close was asked for: the time it may take.
        let mut close_by: Option<Instant> = None;
        let far = self.accepted + Duration::from_secs(86_400 * 365);
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        // Client resets, malformed requests and header
                        // timeouts end up here; they concern one client only.
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    break;
                }
                why = self.watch.expired(limits.header_read_timeout, limits.idle_timeout),
                    if close_by.is_none() =>
                {
                    tracing::debug!(deadline = why.label(), "closing the connection");
                    expired = Some(why);
                    // A head that is late closes outright, as hyper's own
                    // header timeout did.
                    if matches!(why, Expired::Head | Expired::NextHead) {
                        break;
                    }
                    conn.as_mut().graceful_shutdown();
                    close_by = Some(Instant::now() + limits.header_read_timeout);
                }
                _ = stopped(&mut self.stop), if close_by.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    // The app's drain bounds a draining connection.
                    close_by = Some(far);
                }
                _ = tokio::time::sleep_until(close_by.unwrap_or(far)), if close_by.is_some() => break,
            }
        }
        let end = expired.map_or(End::Done, End::Expired);
        self.ended_by_write(end)
    }

    /// A write timeout shows up as an I/O error inside hyper; the flag says
    /// which connections it ended.
    fn ended_by_write(&self, end: End) -> End {
        if end == End::Done && self.write_tripped.load(Ordering::Relaxed) {
            End::WriteTimeout
        } else {
            end
        }
    }
}

fn connection_builder(limits: &ConnLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The head deadline is the connection watcher's (`conn_watch`):
        // hyper's would drop and re-box a timer for every request. `None`
        // also turns off hyper's 30 s default.
        .header_read_timeout(None)
        .keep_alive(true)
        .max_headers(limits.max_headers)
        // hyper answers a head larger than its read buffer with a bare 431;
        // the router checks the exact limit and answers with a JSON 431, so
        // the buffer leaves room above the limit (hyper's floor is 8 KiB).
        .max_buf_size((limits.max_header_size * 2).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_timeout);
    if limits.http2 {
        builder
    } else {
        builder.http1_only()
    }
}
