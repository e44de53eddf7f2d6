//! The profile route of the main listener (README "Main listener"): `GET
//! {user_path}`, answered from the tiers with `x-cache` and `x-cache-tier`
//! headers, plus what the batch route shares with it (cache headers, id
//! errors). Ids are checked before anything else
//! happens, so a bad id never reaches a tier or the origin.

use std::sync::{Arc, OnceLock};

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::http::body::{full, json_response, Body};
use crate::http::error::ProxyError;
use crate::lookup::{CacheStatus, IdError, Profiles};
use crate::metrics::Metrics;
use crate::tier::TierKind;
use crate::warm_up::WarmUp;

static X_CACHE: header::HeaderName = header::HeaderName::from_static("x-cache");
static X_CACHE_TIER: header::HeaderName = header::HeaderName::from_static("x-cache-tier");
static JSON: HeaderValue = HeaderValue::from_static("application/json");

const STATUSES: [CacheStatus; 3] = [CacheStatus::Hit, CacheStatus::Miss, CacheStatus::Stale];
const TIERS: [TierKind; 4] = [
    TierKind::Memory,
    TierKind::Redis,
    TierKind::Mongo,
    TierKind::Origin,
];

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
    let status = loaded.status();
    match &loaded.entry.body {
        Some(body) => {
            let mut r = Response::new(full(body.clone()));
            *r.headers_mut() = found_headers(status, loaded.tier);
            Ok(r)
        }
        None => {
            let mut r = json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": "not_found", "detail": format!("no user with id {id}")}),
            );
            set_cache_headers(&mut r, status, loaded.tier);
            Ok(r)
        }
    }
}

/// The headers of a found profile (content type, `x-cache`,
/// `x-cache-tier`), built once for every status and tier: a clone copies
/// two small arrays, where inserting three headers hashes each name and
/// grows the map.
fn found_headers(status: CacheStatus, tier: TierKind) -> HeaderMap {
    static BUILT: OnceLock<Vec<HeaderMap>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let mut all = Vec::with_capacity(STATUSES.len() * TIERS.len());
        for s in STATUSES {
            for t in TIERS {
                let mut h = HeaderMap::with_capacity(3);
                h.insert(header::CONTENT_TYPE, JSON.clone());
                h.insert(X_CACHE.clone(), status_value(s).clone());
                h.insert(X_CACHE_TIER.clone(), tier_value(t).clone());
                all.push(h);
            }
        }
        all
    });
    let i = status_index(status) * TIERS.len() + tier_index(tier);
    built[i].clone()
}

fn status_index(s: CacheStatus) -> usize {
    match s {
        CacheStatus::Hit => 0,
        CacheStatus::Miss => 1,
        CacheStatus::Stale => 2,
    }
}

fn tier_index(t: TierKind) -> usize {
    match t {
        TierKind::Memory => 0,
        TierKind::Redis => 1,
        TierKind::Mongo => 2,
        TierKind::Origin => 3,
    }
}

/// The header values, validated at compile time rather than per response.
fn status_value(s: CacheStatus) -> &'static HeaderValue {
    static V: [HeaderValue; 3] = [
        HeaderValue::from_static("hit"),
        HeaderValue::from_static("miss"),
        HeaderValue::from_static("stale"),
    ];
    &V[status_index(s)]
}

fn tier_value(t: TierKind) -> &'static HeaderValue {
    static V: [HeaderValue; 4] = [
        HeaderValue::from_static("memory"),
        HeaderValue::from_static("redis"),
        HeaderValue::from_static("mongo"),
        HeaderValue::from_static("origin"),
    ];
    &V[tier_index(t)]
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
    h.insert(X_CACHE.clone(), status_value(status).clone());
    h.insert(X_CACHE_TIER.clone(), tier_value(tier).clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prebuilt headers say what the per-response inserts said.
    #[test]
    fn prebuilt_headers_match_the_status_and_tier() {
        for s in STATUSES {
            for t in TIERS {
                let h = found_headers(s, t);
                assert_eq!(h.len(), 3);
                assert_eq!(h[header::CONTENT_TYPE], "application/json");
                assert_eq!(h[&X_CACHE], s.as_str());
                assert_eq!(h[&X_CACHE_TIER], t.as_str());
            }
        }
    }
}
