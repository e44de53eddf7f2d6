//! Enriched routes (`[[enrich]]`): the request is proxied to its upstream;
//! a 2xx JSON answer under the route's size limit goes to the enrichment
//! policy, which names the profile ids it needs; those are looked up through
//! the tiers and the coalescer at once; the policy writes the new body, and
//! it goes out with a correct length. A 2xx `text/event-stream` answer is
//! enriched event by event as it streams (`sse`). Non-2xx, non-JSON,
//! compressed or over-size answers pass through untouched, streamed.

mod sse;

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::{Frame, Incoming};

use crate::config::{EnrichRoute, OnError};
use crate::http::body::{self, Body, BoxError};
use crate::http::error::ProxyError;
use crate::http::server::ConnInfo;
use crate::plugin::bindings::{CallInfo, ProfileRef};
use crate::plugin::registry::LoadedPlugin;
use crate::routes::passthrough;
use crate::state::{Runtime, State};

pub async fn handle(
    req: Request<Incoming>,
    conn: ConnInfo,
    rt: &Runtime,
    route: &EnrichRoute,
    state: &Arc<State>,
) -> Result<Response<Body>, ProxyError> {
    let upstream = rt.upstreams.get(&route.upstream).ok_or_else(|| {
        ProxyError::Internal(format!(
            "enrich route upstream {} is not configured",
            route.upstream
        ))
    })?;
    let head = req.method() == Method::HEAD;
    // What the policy is told about its call (`host.request()`).
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let call = CallInfo::response(path, &route.path_prefix);
    let idle = rt.config.server.body_read_timeout.get();
    let resp = passthrough::forward(req, conn, upstream, &state.metrics, None, idle).await?;
    let limit = route.max_body_size.as_usize();
    if head {
        return Ok(resp);
    }
    if sse::is_event_stream(resp.status(), resp.headers()) {
        return Ok(sse::relay(resp, &route.plugin, call, limit, state));
    }
    if !enrichable(resp.status(), resp.headers(), limit) {
        return Ok(marked(resp, Enrichment::Skipped, state));
    }
    let (mut parts, body) = resp.into_parts();
    // The upstream timeout covers the head; reading the body to enrich it
    // gets the same budget again, so a stalled body cannot hold the request.
    let read = tokio::time::timeout(upstream.timeout(), read_up_to(body, limit))
        .await
        .map_err(|_| ProxyError::GatewayTimeout {
            upstream: route.upstream.clone(),
            timeout: humantime::format_duration(upstream.timeout()).to_string(),
        })?;
    let bytes = match read {
        Read::Whole(b) => b,
        Read::TooBig(body) => {
            let resp = Response::from_parts(parts, body);
            return Ok(marked(resp, Enrichment::Skipped, state));
        }
        Read::Failed(e) => {
            return Err(ProxyError::BadGateway {
                upstream: route.upstream.clone(),
                detail: format!(
                    "reading the answer to enrich failed: {}",
                    crate::http::upstream::client_facing(&*e)
                ),
            })
        }
    };
    let plugin = state.plugins.get(&route.plugin);
    // From the config, so a plugin that never loaded still fails the way
    // its operator chose.
    let on_error = rt
        .config
        .plugins
        .get(&route.plugin)
        .map_or(OnError::Open, |p| p.on_error);
    match enrich_body(plugin, &route.plugin, &call, &bytes, state).await {
        Ok(new) => {
            // The body changed: validators of the old one must not survive.
            parts.headers.remove(header::ETAG);
            parts.headers.remove("content-md5");
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(new.len()));
            let resp = Response::from_parts(parts, body::full(new));
            Ok(marked(resp, Enrichment::Ok, state))
        }
        Err(reason) => {
            let resp = match on_error {
                OnError::Open => Response::from_parts(parts, body::full(bytes)),
                OnError::Closed => ProxyError::BadGateway {
                    upstream: format!("policy {}", route.plugin),
                    detail: reason,
                }
                .into_response(),
            };
            Ok(marked(resp, Enrichment::Failed, state))
        }
    }
}

/// What happened to an answer of an enriched route: the `x-enrichment`
/// header's value and the `outcome` of `profile_edge_enriched_responses_total`.
/// Without it a client could not tell a body the policy failed on (served
/// unenriched under `on_error = "open"`) from an enriched one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Enrichment {
    Ok,
    /// The policy failed (error, trap, timeout, not JSON, not loaded).
    Failed,
    /// Not for the policy: non-2xx, not JSON, compressed or over size.
    Skipped,
}

impl Enrichment {
    fn as_str(self) -> &'static str {
        match self {
            Enrichment::Ok => "ok",
            Enrichment::Failed => "failed",
            Enrichment::Skipped => "skipped",
        }
    }
}

static X_ENRICHMENT: header::HeaderName = header::HeaderName::from_static("x-enrichment");

fn marked(mut resp: Response<Body>, e: Enrichment, state: &State) -> Response<Body> {
    state
        .metrics
        .enriched_responses
        .with_label_values(&[e.as_str()])
        .inc();
    resp.headers_mut()
        .insert(X_ENRICHMENT.clone(), HeaderValue::from_static(e.as_str()));
    resp
}

/// Whether an answer is one the policy should see.
fn enrichable(status: http::StatusCode, h: &HeaderMap, limit: usize) -> bool {
    let json = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.to_ascii_lowercase();
            ct.starts_with("application/json") || ct.contains("+json")
        });
    let small = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_none_or(|n| n <= limit as u64);
    status.is_success() && json && plain_encoding(h) && small
}

/// No content encoding (or `identity`): the bytes are the content.
fn plain_encoding(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|e| e.eq_ignore_ascii_case("identity"))
}

enum Read {
    Whole(Bytes),
    /// Over the limit: what was read, followed by the rest, untouched.
    TooBig(Body),
    Failed(BoxError),
}

/// Reads a body of unknown length up to `limit` bytes.
async fn read_up_to(body: Body, limit: usize) -> Read {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    let mut stream = BodyStream::new(body);
    while let Some(frame) = stream.next().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return Read::Failed(e),
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers: nothing to enrich
        };
        total += data.len();
        chunks.push(data);
        if total > limit {
            let head = futures_util::stream::iter(
                chunks
                    .into_iter()
                    .map(|c| Ok::<_, BoxError>(Frame::data(c))),
            );
            let rest = head.chain(stream);
            return Read::TooBig(StreamBody::new(rest).boxed_unsync());
        }
    }
    let mut out = bytes::BytesMut::with_capacity(total);
    for c in chunks {
        out.extend_from_slice(&c);
    }
    Read::Whole(out.freeze())
}

/// Runs the policy over a body; any failure is a reason string for the
/// `on_error` decision (the outcome is already counted by the plugin).
/// `call` is what the policy is told it is called for. `needed-ids` and
/// `enrich` run on one instance when the profiles are at hand at once
/// (all in memory, the usual case); when the lookup has to wait on
/// another tier or the origin, the instance is dropped for the wait and
/// `enrich` gets a fresh one. The body is checked to be UTF-8 once, and
/// neither it nor the profiles are copied on their way to the guest.
pub(crate) async fn enrich_body(
    plugin: Option<Arc<LoadedPlugin>>,
    name: &str,
    call: &CallInfo,
    bytes: &Bytes,
    state: &State,
) -> Result<Bytes, String> {
    let plugin = plugin.ok_or_else(|| format!("policy {name} is not loaded"))?;
    let text = std::str::from_utf8(bytes).map_err(|e| format!("answer is not UTF-8: {e}"))?;
    let mut calls = plugin.enrich_calls(call);
    let wanted = calls.needed_ids(text).map_err(|e| e.to_string())?;
    let found = {
        let mut lookup = std::pin::pin!(lookup(state, wanted));
        match std::future::poll_fn(|cx| Poll::Ready(lookup.as_mut().poll(cx))).await {
            Poll::Ready(found) => found,
            Poll::Pending => {
                calls.release();
                lookup.await
            }
        }
    };
    let texts: Vec<Cow<'_, str>> = found.iter().map(|(_, body)| utf8(body)).collect();
    let profiles: Vec<ProfileRef<'_>> = found
        .iter()
        .zip(&texts)
        .map(|((id, _), json)| ProfileRef { id, json })
        .collect();
    let out = calls.enrich(text, &profiles).map_err(|e| e.to_string())?;
    serde_json::from_str::<serde::de::IgnoredAny>(&out)
        .map_err(|e| format!("policy {name} returned a body that is not JSON: {e}"))?;
    Ok(Bytes::from(out))
}

/// A profile's JSON text as the tiers hold it, borrowed: the Officer's
/// JSON is UTF-8, and only a body that is not (which no tier should hold)
/// is copied, with its bad bytes replaced.
fn utf8(body: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(body) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(String::from_utf8_lossy(body).into_owned()),
    }
}

/// Looks up the ids a policy asked for, all at once (one coalesced batch
/// for what is missing). Ids that fail the id pattern are skipped; ids that
/// cannot be loaded are left out, like unknown ones. The authors of a feed
/// are active users: each id counts for the periodic warm-up. Answers each
/// id found with its profile's bytes as cached (no copy).
async fn lookup(state: &State, wanted: Vec<String>) -> Vec<(String, Bytes)> {
    let profiles = &state.profiles;
    let ids = profiles.ids().filter_list(wanted);
    state.warm_up.track_all(&ids);
    let results = profiles.get_many(&ids).await;
    ids.into_iter()
        .zip(results)
        .filter_map(|(id, r)| {
            let loaded = r.ok()?;
            if loaded.stale {
                state.metrics.stale_served.inc();
            }
            Some((id, loaded.entry.body?))
        })
        .collect()
}

#[cfg(test)]
mod tests;
