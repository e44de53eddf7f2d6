//! Header rules for a proxy hop (RFC 9110 section 7.6): hop-by-hop headers
//! never cross the proxy, and the request gains X-Forwarded-* so that the
//! upstream still sees who asked and how.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST};
use http::{Method, Request, Version};

use crate::http::error::ProxyError;

/// Refuses what a reverse proxy must not pass on (RFC 9112 section 3.2,
/// RFC 9110 section 9.3.6): CONNECT (a tunnel, which this proxy is not),
/// and an HTTP/1.1 request without exactly one Host (with none or two, the
/// proxy and the upstream could disagree on which host was meant).
pub fn check_target<B>(req: &Request<B>) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed(
            "CONNECT is not supported: profile-edge is a reverse proxy, not a tunnel".into(),
        ));
    }
    if req.version() == Version::HTTP_11 {
        match req.headers().get_all(HOST).iter().count() {
            1 => {}
            0 => {
                return Err(ProxyError::BadRequest(
                    "an HTTP/1.1 request needs a Host header".into(),
                ))
            }
            n => {
                return Err(ProxyError::BadRequest(format!(
                    "an HTTP/1.1 request needs exactly one Host header; it has {n}"
                )))
            }
        }
    }
    Ok(())
}

/// Headers that describe one connection, not the message.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

/// Removes hop-by-hop headers: the fixed set, every `Proxy-*` header, and
/// whatever the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

/// Sets X-Forwarded-For (appending the peer to any list the client sent),
/// X-Forwarded-Proto and X-Forwarded-Host, and drops the client's Host so
/// that the upstream client writes the upstream's own.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: std::net::IpAddr,
    tls: bool,
    host: Option<&str>,
) {
    static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    static XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
    let peer = peer.to_string();
    let prior: Vec<&str> = headers
        .get_all(&XFF)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let xff = if prior.is_empty() {
        peer
    } else {
        format!("{}, {peer}", prior.join(", "))
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(XFF.clone(), v);
    }
    headers.insert(
        XFP.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    match host.and_then(|h| HeaderValue::from_str(h).ok()) {
        Some(v) => {
            headers.insert(XFH.clone(), v);
        }
        None => {
            headers.remove(&XFH);
        }
    }
    headers.remove(HOST);
}

/// Bytes a request head occupies, as counted against `server.max_header_size`.
pub fn head_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn forwarded_for_appends_to_client_list() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert(HOST, HeaderValue::from_static("edge.example"));
        set_forwarded(
            &mut h,
            "127.0.0.1".parse().expect("ip"),
            true,
            Some("edge.example"),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "edge.example");
        assert!(h.get(HOST).is_none());
    }
}
