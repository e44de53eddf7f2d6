//! The one body type every response of the proxy carries, so that streamed
//! upstream bodies and bodies the proxy writes itself share a route signature.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;

use crate::http::error::ProxyError;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response or upstream-request body: streamed or in memory.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Wraps a hyper `Incoming` (or any body) for streaming without buffering.
pub fn stream<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A JSON response with a correct content type and length.
pub fn json_response(status: http::StatusCode, value: &serde_json::Value) -> http::Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = http::Response::new(full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Reads a whole request body: more than `limit` bytes is 413; a body not
/// complete within `timeout` (stalled or dripped) is 408, so a slow client
/// cannot hold a connection and a task with half a body.
pub async fn read_limited(
    req: Request<Incoming>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ProxyError> {
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
    let collect = Limited::new(req.into_body(), limit).collect();
    match tokio::time::timeout(timeout, collect).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large(limit))
        }
        Ok(Err(e)) => Err(ProxyError::BadRequest(format!(
            "reading the request body failed: {}",
            crate::http::upstream::client_facing(&*e)
        ))),
        Err(_) => Err(ProxyError::RequestTimeout(format!(
            "the request body did not arrive in full within server.body_read_timeout ({})",
            humantime::format_duration(timeout)
        ))),
    }
}

fn too_large(limit: usize) -> ProxyError {
    ProxyError::PayloadTooLarge(format!(
        "request body is over server.max_body_size ({limit} bytes)"
    ))
}
