//! The profile routes of the main listener (README "Main listener"): `GET
//! {user_path}` and `POST {batch_path}`, answered from the tiers with
//! `x-cache` and `x-cache-tier` headers. Ids are checked before anything
//! else happens, so a bad id never reaches a tier or the origin.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::http::body::{full, json_response, Body};
use crate::http::error::ProxyError;
use crate::lookup::{CacheStatus, IdError, Profiles};
use crate::metrics::Metrics;
use crate::tier::TierKind;

static X_CACHE: header::HeaderName = header::HeaderName::from_static("x-cache");
static X_CACHE_TIER: header::HeaderName = header::HeaderName::from_static("x-cache-tier");

/// `GET /api/users/{id}`.
pub async fn get_profile(
    profiles: &Arc<Profiles>,
    metrics: &Metrics,
    id: &str,
) -> Result<Response<Body>, ProxyError> {
    profiles.ids().check("id", id).map_err(id_error)?;
    let loaded = profiles.get(id).await.map_err(|e| e.into_proxy_error())?;
    if loaded.stale {
        metrics.stale_served.inc();
    }
    let mut resp = match &loaded.entry.body {
        Some(body) => {
            let mut r = Response::new(full(body.clone()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        None => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "not_found", "detail": format!("no user with id {id}")}),
        ),
    };
    set_cache_headers(&mut resp, loaded.status(), loaded.tier);
    Ok(resp)
}

#[derive(Deserialize)]
struct BatchRequest {
    ids: Vec<String>,
}

/// `POST /api/users/batch`: `{"ids": [...]}` -> `{"users": [...]}`; each
/// known id once, in the order asked, unknown ids absent.
pub async fn batch(
    req: Request<Incoming>,
    profiles: &Arc<Profiles>,
    metrics: &Metrics,
    max_body: usize,
) -> Result<Response<Body>, ProxyError> {
    let bytes = read_limited(req, max_body).await?;
    let parsed: BatchRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ProxyError::BadRequest(format!("body must be {{\"ids\": [\"<id>\", ...]}}: {e}"))
    })?;
    let ids = profiles
        .ids()
        .check_list("ids", parsed.ids)
        .map_err(id_error)?;

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

/// A refused id is the client's mistake (400); too many ids is 413.
pub fn id_error(e: IdError) -> ProxyError {
    match e {
        IdError::Invalid { .. } => ProxyError::BadRequest(e.to_string()),
        IdError::TooMany { .. } => ProxyError::PayloadTooLarge(e.to_string()),
    }
}

/// Reads a whole request body, refusing more than `limit` bytes with 413.
pub async fn read_limited(req: Request<Incoming>, limit: usize) -> Result<Bytes, ProxyError> {
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(too_large(limit));
        }
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large(limit))
        }
        Err(e) => Err(ProxyError::BadRequest(format!(
            "reading the request body failed: {e}"
        ))),
    }
}

fn too_large(limit: usize) -> ProxyError {
    ProxyError::PayloadTooLarge(format!(
        "request body is over server.max_body_size ({limit} bytes)"
    ))
}

fn set_cache_headers(resp: &mut Response<Body>, status: CacheStatus, tier: TierKind) {
    let h = resp.headers_mut();
    h.insert(X_CACHE.clone(), HeaderValue::from_static(status.as_str()));
    h.insert(
        X_CACHE_TIER.clone(),
        HeaderValue::from_static(tier.as_str()),
    );
}
