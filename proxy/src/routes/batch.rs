//! The batch route of the main listener: `POST {batch_path}` with
//! `{"ids": [...]}`, answered from the tiers in one lookup (one coalesced
//! origin batch for whatever is missing), with batch-level cache headers.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use serde::Deserialize;

use super::profile::{id_error, set_cache_headers};
use crate::http::body::{full, read_limited, Body};
use crate::http::error::ProxyError;
use crate::lookup::{CacheStatus, IdRules, Profiles};
use crate::metrics::Metrics;
use crate::tier::TierKind;
use crate::warm_up::WarmUp;

#[derive(Deserialize)]
struct BatchRequest {
    ids: Vec<String>,
}

/// The ids of a batch body, duplicates folded, each checked: 400 for a
/// malformed body or a bad id (naming `ids[i]`), 413 for too many.
pub fn parse_body(bytes: &[u8], rules: &IdRules) -> Result<Vec<String>, ProxyError> {
    // serde_json does not check the UTF-8 of strings it skips (unknown
    // fields); a body must be JSON text all the way through.
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ProxyError::BadRequest(format!(
            "body is not UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    let parsed: BatchRequest = serde_json::from_str(text).map_err(|e| {
        ProxyError::BadRequest(format!("body must be {{\"ids\": [\"<id>\", ...]}}: {e}"))
    })?;
    rules.check_list("ids", parsed.ids).map_err(id_error)
}

/// `POST /api/users/batch`: `{"ids": [...]}` -> `{"users": [...]}`; each
/// known id once, in the order asked, unknown ids absent. Each distinct id
/// counts once for the periodic warm-up.
pub async fn batch(
    req: Request<Incoming>,
    profiles: &Arc<Profiles>,
    metrics: &Metrics,
    warm_up: &WarmUp,
    max_body: usize,
    body_timeout: Duration,
) -> Result<Response<Body>, ProxyError> {
    let bytes = read_limited(req, max_body, body_timeout).await?;
    let ids = parse_body(&bytes, &profiles.ids())?;
    warm_up.track_all(&ids);

    let results = profiles.get_many(&ids).await;
    let mut failed = 0;
    let mut first_error = None;
    let mut status = CacheStatus::Hit;
    let mut deepest = TierKind::Memory;
    let mut out = BytesMut::with_capacity(64 + results.len() * 400);
    out.put_slice(b"{\"users\":[");
    let mut n = 0;
    for r in results {
        match r {
            Ok(loaded) => {
                if loaded.stale {
                    metrics.stale_served.inc();
                }
                status = status.max(loaded.status());
                if (loaded.tier as usize) > (deepest as usize) {
                    deepest = loaded.tier;
                }
                if let Some(body) = &loaded.entry.body {
                    if n > 0 {
                        out.put_u8(b',');
                    }
                    out.put_slice(body);
                    n += 1;
                }
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        // Absent means "unknown" in this contract, so an id that could not
        // be loaded must not be silently left out.
        let e = e.into_proxy_error();
        return Err(match e {
            ProxyError::BadGateway { upstream, detail } => ProxyError::BadGateway {
                upstream,
                detail: format!(
                    "{failed} of {} ids could not be loaded: {detail}",
                    ids.len()
                ),
            },
            other => other,
        });
    }
    out.put_slice(b"]}");
    let mut resp = Response::new(full(out.freeze()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    set_cache_headers(&mut resp, status, deepest);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;

    /// Found by the `batch_body` fuzz target: serde_json accepted invalid
    /// UTF-8 inside a field it skipped.
    #[test]
    fn a_body_with_invalid_utf8_anywhere_is_refused() {
        let rules = IdRules::new(Regex::new("^[a-z]{1,8}$").expect("regex"), 10);
        let e = parse_body(b"{\"ids\":[],\"\":\"\xf3\"}", &rules).expect_err("refused");
        assert!(
            matches!(&e, ProxyError::BadRequest(d) if d.contains("UTF-8")),
            "{e:?}"
        );
        assert_eq!(
            parse_body(br#"{"ids":["b","a","b"]}"#, &rules).expect("ok"),
            vec!["b", "a"]
        );
    }
}
