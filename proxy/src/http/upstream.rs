//! One pooled hyper client per configured upstream (Officer, Posts, ...).
//! Sits at the bottom of every request path: passthrough, profile loads and
//! enrichment all leave the proxy through `Upstream::send`, which applies the
//! upstream's timeout and turns transport failures into 502/504 errors.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{parse_base_url, UpstreamConfig};
use crate::http::body::Body;
use crate::http::error::ProxyError;
use crate::http::tls;
use crate::http::upload::{self, UploadEnd, UploadStalled};

/// Why an upstream client could not be built, tied to its config key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct UpstreamBuildError {
    pub key: String,
    pub reason: String,
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Body>;

/// A configured upstream: where it is, how long it may take, and a pool of
/// keep-alive connections to it.
pub struct Upstream {
    pub name: String,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    timeout: Duration,
    client: HttpsClient,
}

impl Upstream {
    pub fn build(name: &str, cfg: &UpstreamConfig) -> Result<Arc<Upstream>, UpstreamBuildError> {
        let err = |k: &str, reason: String| UpstreamBuildError {
            key: format!("upstreams.{name}.{k}"),
            reason,
        };
        let (scheme, authority, base_path) =
            parse_base_url(&cfg.url).map_err(|reason| err("url", reason))?;
        let tls_config = tls::client_config(cfg.ca_file.as_deref())
            .map_err(|e| err("ca_file", e.to_string()))?;

        let mut http = HttpConnector::new();
        // The https connector below decides the scheme; this one just dials.
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout.get()));
        http.set_nodelay(true);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls_config)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);

        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.pool_idle_timeout.get())
            .pool_max_idle_per_host(cfg.pool_max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(cfg.h2c)
            .build(connector);

        Ok(Arc::new(Upstream {
            name: name.to_string(),
            scheme,
            authority,
            base_path,
            timeout: cfg.timeout.get(),
            client,
        }))
    }

    /// The upstream URI for a request path and query, under the base path.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, ProxyError> {
        let joined = format!("{}{}", self.base_path, path_and_query);
        let pq: PathAndQuery = joined.parse().map_err(|e| {
            ProxyError::BadRequest(format!("request target {path_and_query:?}: {e}"))
        })?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| ProxyError::Internal(format!("building upstream URI: {e}")))
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends a request whose URI was made by `uri_for`. The request body
    /// streams, pausing at most `body_idle` between chunks (else 408); once
    /// it is sent, the upstream gets its `timeout` for the response head
    /// (else 504). The response body then streams.
    pub async fn send(
        &self,
        req: Request<Body>,
        body_idle: Duration,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (parts, body) = req.into_parts();
        let (body, uploaded) = upload::watch(body, body_idle);
        let answer = self.client.request(Request::from_parts(parts, body));
        tokio::pin!(answer);
        let early = tokio::select! {
            r = &mut answer => Some(r),
            end = uploaded => match end {
                // Cancelling the request drops its upstream connection.
                UploadEnd::Stalled => {
                    return Err(ProxyError::RequestTimeout(
                        UploadStalled(body_idle).to_string(),
                    ))
                }
                UploadEnd::Complete | UploadEnd::Failed => None,
            },
        };
        let result = match early {
            Some(r) => r,
            None => match tokio::time::timeout(self.timeout, answer).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(ProxyError::GatewayTimeout {
                        upstream: self.name.clone(),
                        timeout: humantime::format_duration(self.timeout).to_string(),
                    })
                }
            },
        };
        result.map_err(|e| self.transport_error(&e))
    }

    /// The full cause goes to the log; the client gets a short description
    /// without library internals.
    fn transport_error(&self, e: &hyper_util::client::legacy::Error) -> ProxyError {
        if let Some(stalled) = find_cause::<UploadStalled>(e) {
            // The watched body gave up; the request failed with its error
            // before the watcher's own signal was seen.
            return ProxyError::RequestTimeout(stalled.to_string());
        }
        if client_body_failed(e) {
            // The client's own body broke off or was malformed mid-stream:
            // its fault, not the upstream's.
            tracing::debug!(upstream = %self.name, error = %error_chain(e), "request body failed");
            return ProxyError::BadRequest(format!(
                "reading the request body failed: {}",
                client_facing(e)
            ));
        }
        tracing::warn!(upstream = %self.name, error = %error_chain(e), "upstream request failed");
        let what = if e.is_connect() {
            "connect failed"
        } else {
            "request failed"
        };
        ProxyError::BadGateway {
            upstream: self.name.clone(),
            detail: format!("{what}: {}", client_facing(e)),
        }
    }
}

/// The first error of type `T` in `e`'s chain.
fn find_cause<'e, T: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// Whether a client error was caused by the request body we were streaming.
fn client_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_user() || h.is_body_write_aborted() {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// An error and its sources on one line; hyper's top-level messages alone
/// ("client error (Connect)") do not tell an operator what went wrong.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// What a client may be told about a transport error: the kind of failure,
/// in plain words, never the library's type names or internal states.
pub fn client_facing(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut said = None;
    while let Some(err) = cur {
        if let Some(tls) = find_cause::<rustls::Error>(err) {
            // Names the certificate problem (unknown issuer, expired, wrong
            // name): what an operator needs, with nothing of the library.
            return format!("TLS handshake failed: {tls}");
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            // An OS error says enough by its kind; a custom one carries
            // its producer's message (rustls: "invalid peer certificate:
            // UnknownIssuer"), which is about the peer, not our internals.
            return match io.get_ref() {
                Some(inner) => format!("{}: {inner}", io_words(io.kind())),
                None => io_words(io.kind()).to_string(),
            };
        }
        if err
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            return "body over the size limit".into();
        }
        if err.downcast_ref::<UploadStalled>().is_some() {
            return "the request body paused for too long".into();
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            said = said.or(if h.is_timeout() {
                Some("timed out")
            } else if h.is_parse() || h.is_parse_status() {
                Some("malformed HTTP message")
            } else if h.is_incomplete_message() {
                Some("connection closed before the message was complete")
            } else if h.is_canceled() || h.is_closed() {
                Some("connection closed")
            } else if h.is_body_write_aborted() {
                Some("body not fully sent")
            } else {
                None
            });
        }
        cur = err.source();
    }
    said.unwrap_or("transport error").to_string()
}

fn io_words(kind: std::io::ErrorKind) -> &'static str {
    use std::io::ErrorKind as K;
    match kind {
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset",
        K::ConnectionAborted => "connection aborted",
        K::TimedOut => "timed out",
        K::UnexpectedEof => "connection closed early",
        K::BrokenPipe => "connection closed",
        K::NotFound => "host not found",
        K::InvalidData => "invalid data (TLS or framing)",
        _ => "I/O error",
    }
}
