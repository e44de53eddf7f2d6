//! Decoding the Officer's answers: what is cached, what is refused.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;

use super::{decode_batch, decode_single, LoadError};
use crate::http::error::ProxyError;

#[test]
fn a_batch_answer_maps_profiles_by_id_and_skips_users_without_one() {
    let body = br#"{"users":[{"id":"a","n":1},{"name":"no id"},{"id":"b","x":[1,2]}]}"#;
    let m = decode_batch(body).expect("decodes");
    assert_eq!(m.len(), 2);
    // Each profile is kept byte for byte as the origin sent it.
    assert_eq!(m["a"], Bytes::from_static(br#"{"id":"a","n":1}"#));
    assert_eq!(m["b"], Bytes::from_static(br#"{"id":"b","x":[1,2]}"#));
}

#[test]
fn a_batch_answer_of_the_wrong_shape_is_an_error() {
    for body in [&b"[]"[..], b"{\"users\": 3}", b"not json", b""] {
        match decode_batch(body) {
            Err(LoadError::BadAnswer(m)) => assert!(m.contains("users"), "{m}"),
            other => panic!("{:?} decoded as {other:?}", String::from_utf8_lossy(body)),
        }
    }
}

#[test]
fn a_single_answer_must_be_the_profile_asked_for() {
    let ok = Bytes::from_static(br#"{"id":"a"}"#);
    assert_eq!(
        decode_single("a", StatusCode::OK, ok.clone()),
        Ok(Some(ok.clone()))
    );
    assert_eq!(
        decode_single("a", StatusCode::NOT_FOUND, Bytes::new()),
        Ok(None)
    );
    assert!(matches!(
        decode_single("b", StatusCode::OK, ok),
        Err(LoadError::BadAnswer(m)) if m.contains("asked for b")
    ));
    assert!(matches!(
        decode_single("a", StatusCode::OK, Bytes::from_static(b"[1]")),
        Err(LoadError::BadAnswer(_))
    ));
    assert_eq!(
        decode_single("a", StatusCode::SERVICE_UNAVAILABLE, Bytes::new()),
        Err(LoadError::Status {
            call: "single",
            status: 503
        })
    );
}

#[test]
fn load_errors_map_to_gateway_statuses() {
    let t = LoadError::Timeout(Duration::from_secs(2)).into_proxy_error();
    assert!(matches!(&t, ProxyError::GatewayTimeout { timeout, .. } if timeout == "2s"));
    let b = LoadError::Status {
        call: "batch",
        status: 500,
    }
    .into_proxy_error();
    assert!(
        matches!(&b, ProxyError::BadGateway { detail, .. } if detail == "batch call answered 500")
    );
    assert_eq!(LoadError::Timeout(Duration::ZERO).label(), "timeout");
    assert_eq!(LoadError::Unreachable("x".into()).label(), "error");
}

#[test]
fn an_id_stays_one_path_segment_at_the_origin() {
    let escaped =
        percent_encoding::utf8_percent_encode("a b/c?d#e%f", super::ID_SEGMENT).to_string();
    assert_eq!(escaped, "a%20b%2Fc%3Fd%23e%25f");
    assert_eq!(
        percent_encoding::utf8_percent_encode("5a0c3e-0000", super::ID_SEGMENT).to_string(),
        "5a0c3e-0000"
    );
}
