//! The profile route of the main listener (README "Main listener"): `GET
//! {user_path}`, answered from the tiers with `x-cache` and `x-cache-tier`
//! headers, plus what the batch route shares with it (cache headers, id
//! errors). Ids are checked before anything else
//! happens, so a bad id never reaches a tier or the origin.

use std::sync::Arc;

use http::{header, HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::http::body::{full, json_response, Body};
use crate::http::error::ProxyError;
use crate::lookup::{CacheStatus, IdError, Profiles};
use crate::metrics::Metrics;
use crate::tier::TierKind;
use crate::warm_up::WarmUp;

static X_CACHE: header::HeaderName = header::HeaderName::from_static("x-cache");
static X_CACHE_TIER: header::HeaderName = header::HeaderName::from_static("x-cache-tier");

/// `GET /api/users/{id}`. The id counts for the periodic warm-up once it
/// has passed the check.
pub async fn get_profile(
    profiles: &Arc<Profiles>,
    metrics: &Metrics,
    warm_up: &WarmUp,
    raw_id: &str,
) -> Result<Response<Body>, ProxyError> {
    let id = profiles.check_path_id("id", raw_id).map_err(id_error)?;
    let id = id.as_ref();
    warm_up.track(id);
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

/// A refused id is the client's mistake (400); too many ids is 413.
pub fn id_error(e: IdError) -> ProxyError {
    match e {
        IdError::Invalid { .. } => ProxyError::BadRequest(e.to_string()),
        IdError::TooMany { .. } => ProxyError::PayloadTooLarge(e.to_string()),
    }
}

pub(crate) fn set_cache_headers(resp: &mut Response<Body>, status: CacheStatus, tier: TierKind) {
    let h = resp.headers_mut();
    h.insert(X_CACHE.clone(), HeaderValue::from_static(status.as_str()));
    h.insert(
        X_CACHE_TIER.clone(),
        HeaderValue::from_static(tier.as_str()),
    );
}
