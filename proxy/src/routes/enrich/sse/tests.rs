//! Cutting an event stream into events and writing enriched events back:
//! every chunk boundary, every line ending, comments, multi-line data,
//! events cut off by the stream's end and events over the limit; then the
//! relay itself over a live body with a real `State`.

use std::collections::VecDeque;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::Value;

use super::{event_data, is_event_stream, relay, with_data, Piece, Splitter};
use crate::http::body::{Body, BoxError};
use crate::plugin::bindings::CallInfo;
use crate::state::State;

/// A stand-in policy: wraps JSON data as `{"enriched": <data>}`.
fn fake_enrich(data: &[u8]) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(data).ok()?;
    serde_json::to_vec(&serde_json::json!({ "enriched": v })).ok()
}

/// Runs chunks through a splitter and the writer with `fake_enrich`, as
/// the relay does: what goes out, and each event's outcome.
fn run(chunks: &[&[u8]], limit: usize) -> (Vec<u8>, Vec<&'static str>) {
    let mut s = Splitter::new(limit);
    let mut pieces = VecDeque::new();
    let mut out = Vec::new();
    let mut outcomes = Vec::new();
    let mut drain = |pieces: &mut VecDeque<Piece>| {
        while let Some(p) = pieces.pop_front() {
            match p {
                Piece::Event(raw) => match event_data(&raw).and_then(|d| fake_enrich(&d)) {
                    Some(new) => {
                        outcomes.push("enriched");
                        out.extend_from_slice(&with_data(&raw, &new));
                    }
                    None => {
                        outcomes.push("passed");
                        out.extend_from_slice(&raw);
                    }
                },
                Piece::Oversize(raw) => {
                    outcomes.push("oversize");
                    out.extend_from_slice(&raw);
                }
                Piece::Raw(raw) => out.extend_from_slice(&raw),
            }
        }
    };
    for c in chunks {
        s.feed(&Bytes::copy_from_slice(c), &mut pieces);
        assert!(s.buf.len() <= limit, "buffered {} > {limit}", s.buf.len());
        drain(&mut pieces);
    }
    if let Some(rest) = s.finish() {
        outcomes.push("unterminated");
        out.extend_from_slice(&rest);
    }
    (out, outcomes)
}

fn whole(input: &[u8]) -> (String, Vec<&'static str>) {
    let (out, outcomes) = run(&[input], 1 << 20);
    (String::from_utf8(out).unwrap_or_default(), outcomes)
}

/// Every line ending, a comment block, a comment and an unknown field
/// inside an event, multi-line data, data that is not JSON, an event
/// without data, a CRLF cut between its CR and LF at an event's end.
const SAMPLE: &[u8] = b": hello\n\n\
id: 1\nevent: post\ndata: {\"a\":1}\n\n\
id: 2\r\n: note\r\ndata: {\"b\":\r\ndata: 2}\r\nfoo: bar\r\n\r\n\
id: 3\rdata:not json\r\r\
retry: 100\n\n\
data: [3]\r\n\r\n\
event: x\ndata:\"s\"\n\n";

const SAMPLE_OUT: &str = ": hello\n\n\
id: 1\nevent: post\ndata: {\"enriched\":{\"a\":1}}\n\n\
id: 2\r\n: note\r\ndata: {\"enriched\":{\"b\":2}}\r\nfoo: bar\r\n\r\n\
id: 3\rdata:not json\r\r\
retry: 100\n\n\
data: {\"enriched\":[3]}\r\n\r\n\
event: x\ndata: {\"enriched\":\"s\"}\n\n";

const SAMPLE_OUTCOMES: [&str; 7] = [
    "passed", "enriched", "enriched", "passed", "passed", "enriched", "enriched",
];

#[test]
fn a_whole_sample_is_enriched_event_by_event() {
    let (out, outcomes) = whole(SAMPLE);
    assert_eq!(out, SAMPLE_OUT);
    assert_eq!(outcomes, SAMPLE_OUTCOMES);
}

#[test]
fn every_split_point_gives_the_same_stream() {
    for a in 0..=SAMPLE.len() {
        for b in a..=SAMPLE.len() {
            let (out, outcomes) = run(&[&SAMPLE[..a], &SAMPLE[a..b], &SAMPLE[b..]], 1 << 20);
            assert_eq!(
                String::from_utf8_lossy(&out),
                SAMPLE_OUT,
                "cut at {a} and {b}"
            );
            assert_eq!(outcomes, SAMPLE_OUTCOMES, "cut at {a} and {b}");
        }
    }
}

#[test]
fn byte_by_byte_gives_the_same_stream() {
    let bytes: Vec<&[u8]> = SAMPLE.chunks(1).collect();
    let (out, outcomes) = run(&bytes, 1 << 20);
    assert_eq!(String::from_utf8_lossy(&out), SAMPLE_OUT);
    assert_eq!(outcomes, SAMPLE_OUTCOMES);
}

#[test]
fn an_event_goes_out_as_soon_as_its_blank_line_arrives() {
    let mut s = Splitter::new(1024);
    let mut out = VecDeque::new();
    s.feed(&Bytes::from_static(b"data: 1\n"), &mut out);
    assert!(out.is_empty(), "not complete yet");
    s.feed(&Bytes::from_static(b"\ndata: 2"), &mut out);
    assert_eq!(
        out.pop_front(),
        Some(Piece::Event(Bytes::from_static(b"data: 1\n\n")))
    );
    assert!(out.is_empty());
    // A CR may end an event: it goes out then, its LF (if any) after.
    s.feed(&Bytes::from_static(b"\r\r"), &mut out);
    assert_eq!(
        out.pop_front(),
        Some(Piece::Event(Bytes::from_static(b"data: 2\r\r")))
    );
    s.feed(&Bytes::from_static(b"\ndata: 3\n\n"), &mut out);
    assert_eq!(out.pop_front(), Some(Piece::Raw(Bytes::from_static(b"\n"))));
    assert_eq!(
        out.pop_front(),
        Some(Piece::Event(Bytes::from_static(b"data: 3\n\n")))
    );
}

#[test]
fn crlf_and_cr_line_endings_are_kept() {
    let (out, _) = whole(b"id: 7\r\ndata: {\"a\":1}\r\n\r\n");
    assert_eq!(out, "id: 7\r\ndata: {\"enriched\":{\"a\":1}}\r\n\r\n");
    let (out, _) = whole(b"id: 7\rdata: {\"a\":1}\r\r");
    assert_eq!(out, "id: 7\rdata: {\"enriched\":{\"a\":1}}\r\r");
}

#[test]
fn comments_and_other_fields_stay_in_their_place() {
    let input = b": first\nid: 9\ndata: {\"a\":\n: between\nevent: post\ndata: 1}\nretry: 5\n\n";
    let (out, outcomes) = whole(input);
    assert_eq!(
        out,
        ": first\nid: 9\ndata: {\"enriched\":{\"a\":1}}\n: between\nevent: post\nretry: 5\n\n"
    );
    assert_eq!(outcomes, ["enriched"]);
    let (out, outcomes) = whole(b": just a comment\n: and another\n\n");
    assert_eq!(out, ": just a comment\n: and another\n\n");
    assert_eq!(outcomes, ["passed"]);
}

#[test]
fn data_values_are_joined_as_the_spec_says() {
    let d = |raw: &[u8]| event_data(raw).map(|d| String::from_utf8_lossy(&d).into_owned());
    assert_eq!(
        d(b"data: a\ndata:b\ndata:  c\n\n").as_deref(),
        Some("a\nb\n c")
    );
    assert_eq!(
        d(b"data\ndata: x\n\n").as_deref(),
        Some("\nx"),
        "`data` alone"
    );
    assert_eq!(d(b"database: x\nid: 1\n\n"), None, "not a data field");
    assert_eq!(d(b"data:\n\n"), None, "empty data dispatches nothing");
    assert_eq!(d(b"event: x\n\n"), None);
}

#[test]
fn policy_output_on_several_lines_gets_a_data_line_each() {
    let out = with_data(b"id: 1\r\ndata: x\r\n\r\n", b"{\n\"a\": 1\r\n}");
    assert_eq!(
        &out[..],
        b"id: 1\r\ndata: {\r\ndata: \"a\": 1\r\ndata: }\r\n\r\n"
    );
}

#[test]
fn an_event_cut_off_by_the_end_of_the_stream_passes_as_it_came() {
    let (out, outcomes) = whole(b"data: {\"a\":1}\n\nid: 2\ndata: {\"b\":2}\n");
    assert_eq!(
        out,
        "data: {\"enriched\":{\"a\":1}}\n\nid: 2\ndata: {\"b\":2}\n"
    );
    assert_eq!(outcomes, ["enriched", "unterminated"]);
}

#[test]
fn an_event_over_the_limit_passes_untouched_and_the_next_is_enriched() {
    let big = format!("id: 1\ndata: {{\"x\":\"{}\"}}\n\n", "y".repeat(100));
    let input = format!("{big}data: {{\"a\":1}}\n\n");
    let expect = format!("{big}data: {{\"enriched\":{{\"a\":1}}}}\n\n");
    let bytes = input.as_bytes();
    // Whole, in small chunks, and cut at every point: the same stream,
    // never more than the limit buffered (`run` checks).
    for size in [1, 7, 40, bytes.len()] {
        let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
        let (out, outcomes) = run(&chunks, 40);
        assert_eq!(String::from_utf8_lossy(&out), expect, "chunks of {size}");
        assert_eq!(outcomes, ["oversize", "enriched"], "chunks of {size}");
    }
    for cut in 0..=bytes.len() {
        let (out, outcomes) = run(&[&bytes[..cut], &bytes[cut..]], 40);
        assert_eq!(String::from_utf8_lossy(&out), expect, "cut at {cut}");
        assert_eq!(outcomes, ["oversize", "enriched"], "cut at {cut}");
    }
    // Exactly at the limit is not over it.
    let (_, outcomes) = run(&[b"data: {\"a\":1}\n\n"], 15);
    assert_eq!(outcomes, ["enriched"]);
    let (_, outcomes) = run(&[b"data: {\"a\":1}\n\n"], 14);
    assert_eq!(outcomes, ["oversize"]);
}

#[test]
fn only_plain_event_stream_successes_are_relayed() {
    let h = |pairs: &[(header::HeaderName, &'static str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_static(v));
        }
        h
    };
    let sse = h(&[(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")]);
    assert!(is_event_stream(StatusCode::OK, &sse));
    assert!(is_event_stream(
        StatusCode::OK,
        &h(&[(header::CONTENT_TYPE, "Text/Event-Stream")])
    ));
    assert!(!is_event_stream(StatusCode::BAD_GATEWAY, &sse), "not 2xx");
    assert!(!is_event_stream(
        StatusCode::OK,
        &h(&[(header::CONTENT_TYPE, "application/json")])
    ));
    assert!(!is_event_stream(
        StatusCode::OK,
        &h(&[
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CONTENT_ENCODING, "gzip")
        ])
    ));
    assert!(is_event_stream(
        StatusCode::OK,
        &h(&[
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CONTENT_ENCODING, "identity")
        ])
    ));
}

type Chunks = tokio::sync::mpsc::UnboundedSender<Result<Bytes, BoxError>>;

/// An upstream answer whose body the test writes chunk by chunk.
fn upstream() -> (Chunks, Response<Body>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, BoxError>>();
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let next = rx.recv().await?;
        Some((next.map(Frame::data), rx))
    });
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (tx, resp)
}

/// The next bytes the relay writes.
async fn next_data(body: &mut Body) -> Bytes {
    let frame = body.frame().await.expect("a frame");
    frame.expect("no body error").into_data().expect("data")
}

fn outcome(state: &State, outcome: &str) -> u64 {
    state.metrics.sse_events.with_label_values(&[outcome]).get()
}

#[tokio::test]
async fn the_relay_writes_each_event_before_the_next_arrives_and_ends_at_shutdown() {
    // No policy loaded: every event with JSON data fails enrichment and
    // goes out as it came.
    let state = State::minimal();
    let (tx, resp) = upstream();
    let (parts, mut body) = relay(
        resp,
        "feed",
        CallInfo::response("/feed", "/feed"),
        1024,
        &state,
    )
    .into_parts();
    assert!(parts.headers.get(header::ETAG).is_none(), "old validator");
    assert_eq!(parts.headers[header::CACHE_CONTROL], "no-cache");

    tx.send(Ok(Bytes::from_static(b": hi\n\nid: 1\ndata: {\"a\"")))
        .expect("the relay reads");
    assert_eq!(next_data(&mut body).await, ": hi\n\n");
    tx.send(Ok(Bytes::from_static(b":1}\n\n")))
        .expect("the relay reads");
    // No policy is loaded: failed, sent as it came.
    assert_eq!(next_data(&mut body).await, "id: 1\ndata: {\"a\":1}\n\n");
    assert_eq!(outcome(&state, "failed"), 1);
    assert_eq!(outcome(&state, "passed"), 1);

    // Half an event is held back; shutdown ends the body cleanly while
    // the upstream is still open.
    tx.send(Ok(Bytes::from_static(b"data: {\"b\":2}\n")))
        .expect("the relay reads");
    state.notifications.close();
    assert!(body.frame().await.is_none(), "ended cleanly at shutdown");
    drop(tx);
}

#[tokio::test]
async fn the_relay_ends_with_its_upstream_and_passes_on_its_errors() {
    let state = State::minimal();
    let (tx, resp) = upstream();
    let mut body = relay(
        resp,
        "feed",
        CallInfo::response("/feed", "/feed"),
        1024,
        &state,
    )
    .into_body();
    tx.send(Ok(Bytes::from_static(b"data: x\n\ndata: cut")))
        .expect("the relay reads");
    drop(tx);
    assert_eq!(next_data(&mut body).await, "data: x\n\n");
    assert_eq!(next_data(&mut body).await, "data: cut");
    assert!(body.frame().await.is_none());
    assert_eq!(outcome(&state, "passed"), 2);

    let (tx, resp) = upstream();
    let mut body = relay(
        resp,
        "feed",
        CallInfo::response("/feed", "/feed"),
        1024,
        &state,
    )
    .into_body();
    tx.send(Err("upstream reset".into()))
        .expect("the relay reads");
    let err = body.frame().await.expect("a frame").expect_err("an error");
    assert_eq!(err.to_string(), "upstream reset");
    assert!(body.frame().await.is_none(), "nothing after the error");
}
