//! Listeners: accept loop, connection limit, optional TLS, and hyper's
//! HTTP/1.1 + HTTP/2 connection driver with the slowloris and header-size
//! limits. Every connection is registered for graceful drain. The request
//! itself is handed to a `Handler` (the main router or the admin router).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::http::body::Body;

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

/// Per-connection protocol limits, read from the live config at accept time
/// so that a reload applies to new connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub max_header_size: usize,
    pub http2: bool,
    pub max_concurrent_streams: u32,
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
    pub on_connection: Option<prometheus::IntGauge>,
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
            let gauge = self.on_connection.clone();
            let drain = drain.watcher();
            let span = tracing::debug_span!("conn", listener = name, %peer);
            tokio::spawn(
                async move {
                    if let Some(g) = &gauge {
                        g.inc();
                    }
                    serve_connection(stream, peer, tls, limits, handler, drain).await;
                    if let Some(g) = &gauge {
                        g.dec();
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

async fn serve_connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnLimits,
    handler: Arc<H>,
    drain: Watcher,
) {
    let builder = connection_builder(&limits);
    match tls {
        None => {
            let info = ConnInfo { peer, tls: false };
            drive(builder, TokioIo::new(stream), info, handler, drain).await;
        }
        Some(cfg) => {
            let acceptor = TlsAcceptor::from(cfg);
            // The handshake counts against the header read timeout: a client
            // that opens TLS and stalls is the same slowloris.
            let tls_stream =
                match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                };
            let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let builder = if h2 && limits.http2 {
                builder.http2_only()
            } else {
                builder.http1_only()
            };
            let info = ConnInfo { peer, tls: true };
            drive(builder, TokioIo::new(tls_stream), info, handler, drain).await;
        }
    }
}

fn connection_builder(limits: &ConnLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        // hyper answers a head larger than its read buffer with a bare 431;
        // the router checks the exact limit and answers with a JSON 431, so
        // the buffer leaves room above the limit (hyper's floor is 8 KiB).
        .max_buf_size((limits.max_header_size * 2).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    if limits.http2 {
        builder
    } else {
        builder.http1_only()
    }
}

async fn drive<I, H>(
    builder: auto::Builder<TokioExecutor>,
    io: TokioIo<I>,
    info: ConnInfo,
    handler: Arc<H>,
    drain: Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        async move { Ok::<_, std::convert::Infallible>(handler.handle(req, info).await) }
    });
    let conn = builder.serve_connection(io, service).into_owned();
    if let Err(e) = drain.watch(conn).await {
        // Client resets, malformed requests and header timeouts end up here;
        // they concern one client only.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
