//! Profile loads from the Officer origin: the batch route (`POST
//! {batch_path}` with `{"ids": [...]}`) and the single-id route, used only
//! when batching is off. Responses are checked before anything is cached: a
//! profile must be a JSON object whose `id` is the id asked for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::http::body;
use crate::http::error::ProxyError;
use crate::http::upstream::Upstream;
use crate::metrics::Metrics;

/// Largest origin answer read for profile loads (50 profiles of a few KiB
/// fit many times over).
const MAX_ORIGIN_BODY: usize = 16 * 1024 * 1024;

/// What an id must escape to stay one path segment: controls, space and
/// the characters that end or restructure a path (`/`, `?`, `#`, `%`, ...).
pub(crate) const ID_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'^')
    .add(b'|');

/// Why a load from the origin failed; shared by every id of a batch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// No whole answer within the upstream's `timeout`.
    #[error("no answer from the origin within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The request did not get an answer (refused, reset, TLS).
    #[error("{0}")]
    Unreachable(String),
    /// An answer other than the contract's (200, or 404 for one id).
    #[error("{call} call answered {status}")]
    Status { call: &'static str, status: u16 },
    /// A 200 whose body breaks the contract.
    #[error("{0}")]
    BadAnswer(String),
    /// The load was dropped before it finished (shutdown, a stopped task).
    #[error("the load was abandoned: {0}")]
    Abandoned(&'static str),
    /// Invalidations kept superseding the load.
    #[error("the profile kept being invalidated while it loaded")]
    Superseded,
}

impl LoadError {
    pub fn into_proxy_error(self) -> ProxyError {
        match self {
            LoadError::Timeout(after) => ProxyError::GatewayTimeout {
                upstream: "officer".into(),
                timeout: humantime::format_duration(after).to_string(),
            },
            other => ProxyError::BadGateway {
                upstream: "officer".into(),
                detail: other.to_string(),
            },
        }
    }

    /// The `status` label of `profile_edge_origin_requests_total` for a
    /// call that got no usable answer.
    fn label(&self) -> &'static str {
        match self {
            LoadError::Timeout(_) => "timeout",
            _ => "error",
        }
    }

    fn from_proxy(e: ProxyError, timeout: Duration) -> LoadError {
        match e {
            ProxyError::GatewayTimeout { .. } => LoadError::Timeout(timeout),
            other => LoadError::Unreachable(other.to_string()),
        }
    }
}

/// What lookups and the batcher call: the Officer (`Origin`) in the
/// product, a fake in unit tests.
#[async_trait::async_trait]
pub trait OriginSource: Send + Sync + 'static {
    /// One batch call: the profiles the origin knows among `ids`.
    async fn fetch_batch(&self, ids: &[String]) -> Result<HashMap<String, Bytes>, LoadError>;
    /// One single-id call: `None` when the origin does not know the id.
    async fn fetch_one(&self, id: &str) -> Result<Option<Bytes>, LoadError>;
    /// Calls made so far, for `/admin/stats`.
    fn calls(&self) -> OriginCalls;
    /// Points later calls at a reloaded Officer upstream.
    fn retarget(&self, target: OriginTarget);
}

#[async_trait::async_trait]
impl OriginSource for Origin {
    async fn fetch_batch(&self, ids: &[String]) -> Result<HashMap<String, Bytes>, LoadError> {
        Origin::fetch_batch(self, ids).await
    }
    async fn fetch_one(&self, id: &str) -> Result<Option<Bytes>, LoadError> {
        Origin::fetch_one(self, id).await
    }
    fn calls(&self) -> OriginCalls {
        Origin::calls(self)
    }
    fn retarget(&self, target: OriginTarget) {
        Origin::retarget(self, target)
    }
}

/// Where loads go; swapped on config reload.
pub struct OriginTarget {
    pub upstream: Arc<Upstream>,
    pub user_prefix: String,
    pub batch_path: String,
}

pub struct Origin {
    target: ArcSwap<OriginTarget>,
    metrics: Arc<Metrics>,
    single: AtomicU64,
    batch: AtomicU64,
    batch_ids: AtomicU64,
}

/// Origin calls made so far, for `/admin/stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginCalls {
    pub single: u64,
    pub batch: u64,
    pub batch_ids: u64,
}

#[derive(Deserialize)]
struct BatchAnswer<'a> {
    #[serde(borrow)]
    users: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

impl Origin {
    pub fn new(target: OriginTarget, metrics: Arc<Metrics>) -> Origin {
        Origin {
            target: ArcSwap::from_pointee(target),
            metrics,
            single: AtomicU64::new(0),
            batch: AtomicU64::new(0),
            batch_ids: AtomicU64::new(0),
        }
    }

    pub fn calls(&self) -> OriginCalls {
        OriginCalls {
            single: self.single.load(Ordering::Relaxed),
            batch: self.batch.load(Ordering::Relaxed),
            batch_ids: self.batch_ids.load(Ordering::Relaxed),
        }
    }

    pub fn retarget(&self, target: OriginTarget) {
        self.target.store(Arc::new(target));
    }

    /// One batch call; the map holds the profiles the origin knows (unknown
    /// ids are simply absent, as the Officer contract says).
    pub async fn fetch_batch(&self, ids: &[String]) -> Result<HashMap<String, Bytes>, LoadError> {
        let t = self.target.load_full();
        self.metrics.origin_batch_size.observe(ids.len() as f64);
        self.batch.fetch_add(1, Ordering::Relaxed);
        self.batch_ids
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        let payload = serde_json::to_vec(&serde_json::json!({ "ids": ids }))
            .map_err(|e| LoadError::BadAnswer(format!("encoding batch request: {e}")))?;
        let result = self
            .call(&t, Method::POST, &t.batch_path, Some(payload))
            .await;
        let (status, bytes) = self.count("batch", result)?;
        if status != StatusCode::OK {
            return Err(LoadError::Status {
                call: "batch",
                status: status.as_u16(),
            });
        }
        decode_batch(&bytes)
    }

    /// One single-id call: `Some(profile)`, `None` for 404.
    pub async fn fetch_one(&self, id: &str) -> Result<Option<Bytes>, LoadError> {
        let t = self.target.load_full();
        // Ids are checked but may hold characters a path must escape.
        let segment = percent_encoding::utf8_percent_encode(id, ID_SEGMENT);
        let path = format!("{}/{segment}", t.user_prefix);
        self.single.fetch_add(1, Ordering::Relaxed);
        let result = self.call(&t, Method::GET, &path, None).await;
        let (status, bytes) = self.count("single", result)?;
        decode_single(id, status, bytes)
    }

    fn count(
        &self,
        kind: &str,
        result: Result<(StatusCode, Bytes), LoadError>,
    ) -> Result<(StatusCode, Bytes), LoadError> {
        let status = match &result {
            Ok((s, _)) => s.as_str(),
            Err(e) => e.label(),
        };
        self.metrics
            .origin_requests
            .with_label_values(&[kind, status])
            .inc();
        result
    }

    /// Sends a request and reads the whole answer, all within the upstream's timeout.
    async fn call(
        &self,
        t: &OriginTarget,
        method: Method,
        path: &str,
        payload: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), LoadError> {
        let timeout = t.upstream.timeout();
        let uri = t
            .upstream
            .uri_for(path)
            .map_err(|e| LoadError::from_proxy(e, timeout))?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::ACCEPT, "application/json");
        if payload.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(payload.map_or_else(body::empty, body::full))
            .map_err(|e| LoadError::Unreachable(format!("building origin request: {e}")))?;
        let whole = async {
            let resp = t
                .upstream
                // The payload is in memory: it never pauses.
                .send(req, timeout)
                .await
                .map_err(|e| LoadError::from_proxy(e, timeout))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_ORIGIN_BODY)
                .collect()
                .await
                .map_err(|e| {
                    LoadError::Unreachable(format!(
                        "reading origin answer: {}",
                        crate::http::upstream::client_facing(&*e)
                    ))
                })?
                .to_bytes();
            Ok((status, bytes))
        };
        match tokio::time::timeout(timeout, whole).await {
            Ok(r) => r,
            Err(_) => Err(LoadError::Timeout(timeout)),
        }
    }
}

/// Reads a batch answer: the profiles the origin knows, by id (unknown ids
/// are simply absent, as the Officer contract says). A user without an id
/// is skipped and logged; anything but `{"users": [...]}` is an error.
fn decode_batch(bytes: &[u8]) -> Result<HashMap<String, Bytes>, LoadError> {
    let answer: BatchAnswer = serde_json::from_slice(bytes).map_err(|e| {
        LoadError::BadAnswer(format!("batch answer is not {{\"users\": [...]}}: {e}"))
    })?;
    let mut out = HashMap::with_capacity(answer.users.len());
    for raw in answer.users {
        match serde_json::from_str::<IdOnly>(raw.get()) {
            Ok(p) => {
                out.insert(p.id, Bytes::copy_from_slice(raw.get().as_bytes()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "origin batch answer holds a user without an id; skipped")
            }
        }
    }
    Ok(out)
}

/// Reads a single-id answer: `Some(profile)` for a 200 that is the profile
/// asked for, `None` for 404.
fn decode_single(id: &str, status: StatusCode, bytes: Bytes) -> Result<Option<Bytes>, LoadError> {
    match status {
        StatusCode::OK => match serde_json::from_slice::<IdOnly>(&bytes) {
            Ok(p) if p.id == id => Ok(Some(bytes)),
            Ok(p) => Err(LoadError::BadAnswer(format!(
                "asked for {id}, origin answered {}",
                p.id
            ))),
            Err(e) => Err(LoadError::BadAnswer(format!(
                "profile is not a JSON object with an id: {e}"
            ))),
        },
        StatusCode::NOT_FOUND => Ok(None),
        other => Err(LoadError::Status {
            call: "single",
            status: other.as_u16(),
        }),
    }
}

#[cfg(test)]
mod tests;
