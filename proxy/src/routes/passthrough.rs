//! Passthrough: a request no cache route claims goes to its upstream as it
//! came, minus hop-by-hop headers, plus X-Forwarded-*. Bodies stream both
//! ways; nothing here buffers a whole body.

use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::Incoming;

use crate::http::body::{self, Body};
use crate::http::error::ProxyError;
use crate::http::headers;
use crate::http::server::ConnInfo;
use crate::http::upstream::Upstream;
use crate::metrics::Metrics;

/// Forwards `req` to `upstream` and returns the upstream's answer, status
/// and headers as they are (5xx included). `kind` labels the Officer origin
/// metric; `None` for other upstreams. `body_idle` bounds the pauses of
/// the request body (`server.body_read_timeout`).
pub async fn forward(
    req: Request<Incoming>,
    conn: ConnInfo,
    upstream: &Upstream,
    metrics: &Metrics,
    kind: Option<&str>,
    body_idle: Duration,
) -> Result<Response<Body>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    // An absolute-form target (or HTTP/2's :authority) names the host the
    // client meant; Host only counts when the target has no authority
    // (RFC 9112 section 3.2.2).
    let host = parts.uri.authority().map(|a| a.to_string()).or_else(|| {
        parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    });
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::set_forwarded(
        &mut parts.headers,
        conn.peer.ip(),
        conn.tls,
        host.as_deref(),
    );
    parts.uri = upstream.uri_for(&target)?;
    // The upstream connection picks its own protocol (ALPN or h2c); hyper's
    // client wants HTTP/1.1 on the request and upgrades it for h2 itself.
    parts.version = Version::HTTP_11;

    let out = Request::from_parts(parts, body::stream(body));
    let resp = match upstream.send(out, body_idle).await {
        Ok(resp) => resp,
        Err(e) => {
            let status = if matches!(e, ProxyError::GatewayTimeout { .. }) {
                "timeout"
            } else {
                "error"
            };
            if let Some(kind) = kind {
                metrics
                    .origin_requests
                    .with_label_values(&[kind, status])
                    .inc();
            }
            return Err(e);
        }
    };
    if let Some(kind) = kind {
        metrics
            .origin_requests
            .with_label_values(&[kind, resp.status().as_str()])
            .inc();
    }
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::default();
    Ok(Response::from_parts(parts, body::stream(body)))
}
