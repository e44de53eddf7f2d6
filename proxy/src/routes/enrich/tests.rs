//! The glue around enrichment policies: which answers a policy sees, and
//! reading a body up to the route's limit without losing a byte.

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::Frame;

use super::{enrichable, read_up_to, Read};
use crate::http::body::{self, Body, BoxError};

fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(k.clone(), HeaderValue::from_static(v));
    }
    h
}

#[test]
fn only_plain_json_successes_within_the_limit_are_enriched() {
    let json = headers(&[(header::CONTENT_TYPE, "application/json; charset=utf-8")]);
    assert!(enrichable(StatusCode::OK, &json, 100));
    assert!(enrichable(
        StatusCode::OK,
        &headers(&[(header::CONTENT_TYPE, "application/vnd.posts+json")]),
        100
    ));
    assert!(!enrichable(StatusCode::NOT_FOUND, &json, 100), "not 2xx");
    assert!(!enrichable(
        StatusCode::OK,
        &headers(&[(header::CONTENT_TYPE, "text/html")]),
        100
    ));
    assert!(
        !enrichable(StatusCode::OK, &HeaderMap::new(), 100),
        "no type"
    );
    let gzip = headers(&[
        (header::CONTENT_TYPE, "application/json"),
        (header::CONTENT_ENCODING, "gzip"),
    ]);
    assert!(!enrichable(StatusCode::OK, &gzip, 100), "compressed");
    let big = headers(&[
        (header::CONTENT_TYPE, "application/json"),
        (header::CONTENT_LENGTH, "101"),
    ]);
    assert!(!enrichable(StatusCode::OK, &big, 100), "over the limit");
    assert!(enrichable(StatusCode::OK, &big, 101));
}

fn chunked(chunks: &[&'static str]) -> Body {
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

async fn collect(b: Body) -> Bytes {
    b.collect().await.expect("body").to_bytes()
}

#[tokio::test]
async fn a_body_within_the_limit_is_read_whole() {
    match read_up_to(chunked(&["{\"a\":", "1}"]), 7).await {
        Read::Whole(b) => assert_eq!(b, Bytes::from_static(b"{\"a\":1}")),
        _ => panic!("not read whole"),
    }
}

#[tokio::test]
async fn a_body_over_the_limit_passes_through_with_every_byte() {
    match read_up_to(chunked(&["aaaa", "bbbb", "cccc"]), 5).await {
        Read::TooBig(rest) => assert_eq!(collect(rest).await, "aaaabbbbcccc"),
        _ => panic!("an over-size body was read whole"),
    }
}

#[tokio::test]
async fn a_broken_body_is_a_failure_not_a_short_read() {
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
        Ok(Frame::data(Bytes::from_static(b"{\"a\""))),
        Err("connection reset".into()),
    ];
    let b = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
    match read_up_to(b, 100).await {
        Read::Failed(e) => assert!(e.to_string().contains("reset")),
        _ => panic!("a broken body was not reported"),
    }
    // An empty body is a whole (empty) read.
    assert!(matches!(read_up_to(body::empty(), 10).await, Read::Whole(b) if b.is_empty()));
    let _ = BodyStream::new(body::empty()).next().await;
}
