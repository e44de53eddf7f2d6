//! Server-Sent Events on `[[enrich]]` routes (SPEC 9.3): an upstream
//! answer of type `text/event-stream` is relayed event by event as it
//! streams. `Splitter` cuts the byte stream into events (blocks ending at a
//! blank line) holding at most the route's `max_body_size` of one event;
//! each complete event whose `data` is JSON goes through the route's policy
//! and is written back with its other lines (`id`, `event`, `retry`,
//! comments, unknown fields) where they were. Everything else goes out
//! byte for byte as it came. Nothing waits for the whole body.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream;
use http::{header, HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::Instrument;

use super::enrich_body;
use crate::http::body::{Body, BoxError};
use crate::plugin::bindings::CallInfo;
use crate::state::State;

/// Whether an upstream answer is an event stream to relay event by event:
/// a 2xx `text/event-stream` without a content encoding (a compressed
/// stream cannot be cut into events, so it passes through untouched).
pub(super) fn is_event_stream(status: StatusCode, h: &HeaderMap) -> bool {
    let sse = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"));
    status.is_success() && sse && super::plain_encoding(h)
}

/// The upstream's event stream, each event enriched as it completes.
///
/// Whatever the policy's `on_error`: the stream's head has already gone
/// out, so an event whose enrichment fails (policy missing, error, trap,
/// deadline, output that is not JSON) is written as it came and counted
/// as `failed`; `closed` cannot turn a stream that has started into a 502.
/// An event over `limit` bytes is forwarded untouched as it arrives
/// (`oversize`). The body ends when the upstream's ends, or at shutdown
/// (`Notifications::closing`) after the event being written, so a drain
/// does not wait on a stream that never ends. Every event's policy call is
/// told `call` (the stream's request).
pub(super) fn relay(
    resp: Response<Body>,
    plugin: &str,
    call: CallInfo,
    limit: usize,
    state: &Arc<State>,
) -> Response<Body> {
    let (mut parts, upstream) = resp.into_parts();
    // The body changes: its length and validators of the old one go.
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::ETAG);
    parts.headers.remove("content-md5");
    let relay = Relay {
        upstream,
        splitter: Splitter::new(limit),
        ready: VecDeque::new(),
        state: state.clone(),
        plugin: plugin.to_string(),
        call,
        closing: Box::pin(state.notifications.closing().cancelled_owned()),
        ended: false,
        span: tracing::debug_span!("sse_enrich", plugin = %plugin, limit),
    };
    let body = StreamBody::new(stream::unfold(relay, |mut r| async move {
        let span = r.span.clone();
        let out = r.next().instrument(span).await?;
        Some((out.map(Frame::data), r))
    }));
    Response::from_parts(parts, body.boxed_unsync())
}

/// One relayed stream.
struct Relay {
    upstream: Body,
    splitter: Splitter,
    /// Cut from the upstream, not yet written; in order.
    ready: VecDeque<Piece>,
    state: Arc<State>,
    plugin: String,
    call: CallInfo,
    closing: Pin<Box<WaitForCancellationFutureOwned>>,
    ended: bool,
    span: tracing::Span,
}

impl Relay {
    /// The next bytes to write; `None` ends the body.
    async fn next(&mut self) -> Option<Result<Bytes, BoxError>> {
        loop {
            if let Some(piece) = self.ready.pop_front() {
                let bytes = match piece {
                    Piece::Event(raw) => self.enrich(raw).await,
                    Piece::Oversize(raw) => {
                        self.count("oversize");
                        raw
                    }
                    Piece::Raw(raw) => raw,
                };
                return Some(Ok(bytes));
            }
            if self.ended {
                return None;
            }
            tokio::select! {
                biased;
                () = &mut self.closing => {
                    // Shutdown: what is written ends at an event's end; a
                    // partial event still buffered is not sent.
                    tracing::debug!("stream ended by shutdown");
                    self.ended = true;
                }
                frame = self.upstream.frame() => match frame {
                    None => {
                        self.ended = true;
                        if let Some(rest) = self.splitter.finish() {
                            // An event without its blank line: as it came.
                            self.count("passed");
                            self.ready.push_back(Piece::Raw(rest));
                        }
                    }
                    Some(Err(e)) => {
                        self.ended = true;
                        return Some(Err(e));
                    }
                    Some(Ok(frame)) => {
                        // Trailers: an event stream has nothing in them to enrich.
                        if let Ok(data) = frame.into_data() {
                            self.splitter.feed(&data, &mut self.ready);
                        }
                    }
                },
            }
        }
    }

    /// One complete event, enriched, or as it came when there is nothing
    /// to enrich (no data, data that is not JSON) or the policy failed.
    /// `&mut self`: the body is not `Sync`, so a `&Relay` held across the
    /// policy call would make the stream not `Send`.
    async fn enrich(&mut self, raw: Bytes) -> Bytes {
        let json =
            event_data(&raw).filter(|d| serde_json::from_slice::<serde::de::IgnoredAny>(d).is_ok());
        let Some(data) = json else {
            self.count("passed");
            return raw;
        };
        let plugin = self.state.plugins.get(&self.plugin);
        let data = Bytes::from(data);
        match enrich_body(plugin, &self.plugin, &self.call, &data, &self.state).await {
            Ok(new) => {
                self.count("enriched");
                with_data(&raw, &new)
            }
            Err(reason) => {
                self.count("failed");
                tracing::debug!(%reason, "event sent unenriched");
                raw
            }
        }
    }

    fn count(&self, outcome: &str) {
        self.state
            .metrics
            .sse_events
            .with_label_values(&[outcome])
            .inc();
    }
}

/// What the splitter cut from the stream, in stream order.
#[derive(Debug, PartialEq)]
pub(super) enum Piece {
    /// A complete event, its blank line included.
    Event(Bytes),
    /// What was buffered of an event that turned out over the limit,
    /// forwarded as it came; the rest follows as `Raw`.
    Oversize(Bytes),
    /// Bytes forwarded untouched: the rest of an oversize event, the LF of
    /// a CRLF whose CR ended an event, an event cut off by the stream's end.
    Raw(Bytes),
}

/// Cuts a byte stream into events at blank lines (line ends CRLF, LF or
/// CR, as the SSE spec allows), keeping every byte, holding at most
/// `limit` bytes of one event.
pub(super) struct Splitter {
    limit: usize,
    /// The current event so far.
    buf: BytesMut,
    /// At the start of a line: a line end here is a blank line, the end of
    /// the event.
    line_start: bool,
    /// The last byte was a CR ending a line: an LF next is the rest of that
    /// line end (CRLF), not an empty line. Chunks may cut a CRLF in two.
    after_cr: bool,
    /// Inside an event over `limit`: its bytes go out as they come.
    oversize: bool,
}

impl Splitter {
    pub(super) fn new(limit: usize) -> Splitter {
        Splitter {
            limit,
            buf: BytesMut::new(),
            line_start: true,
            after_cr: false,
            oversize: false,
        }
    }

    /// Cuts `chunk`; whatever can go out now is pushed to `out`.
    pub(super) fn feed(&mut self, chunk: &Bytes, out: &mut VecDeque<Piece>) {
        let mut i = 0;
        while i < chunk.len() {
            let between_events = self.buf.is_empty() && !self.oversize;
            if between_events && self.after_cr && chunk[i] == b'\n' {
                // The event went out at its CR, at once; its LF follows.
                self.after_cr = false;
                out.push_back(Piece::Raw(chunk.slice(i..i + 1)));
                i += 1;
                continue;
            }
            let end = self.scan(chunk, i);
            let stop = end.unwrap_or(chunk.len());
            let part = chunk.slice(i..stop);
            i = stop;
            if self.oversize {
                out.push_back(Piece::Raw(part));
            } else if self.buf.len() + part.len() > self.limit {
                if self.buf.is_empty() {
                    out.push_back(Piece::Oversize(part));
                } else {
                    out.push_back(Piece::Oversize(self.buf.split().freeze()));
                    out.push_back(Piece::Raw(part));
                }
                self.oversize = true;
            } else {
                self.buf.extend_from_slice(&part);
                if end.is_some() {
                    out.push_back(Piece::Event(self.buf.split().freeze()));
                }
            }
            if end.is_some() {
                self.oversize = false;
            }
        }
    }

    /// The stream ended: an event it left without a blank line, if any.
    pub(super) fn finish(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }

    /// Where the current event ends in `chunk` from `from` (the index past
    /// its blank line), or `None` when it goes on past the chunk.
    fn scan(&mut self, chunk: &[u8], from: usize) -> Option<usize> {
        for (i, &b) in chunk.iter().enumerate().skip(from) {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    if self.line_start {
                        if self.after_cr && chunk.get(i + 1) == Some(&b'\n') {
                            self.after_cr = false;
                            return Some(i + 2);
                        }
                        return Some(i + 1);
                    }
                    self.line_start = true;
                }
                _ => self.line_start = false,
            }
        }
        None
    }
}

/// One line of an event: `content` and `end` (past its line end) are
/// offsets into the event's bytes.
struct Line {
    start: usize,
    content: usize,
    end: usize,
}

/// The lines of a complete event (or of policy output), line ends CRLF,
/// LF or CR; a last line without a line end counts too.
fn lines(raw: &[u8]) -> Vec<Line> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' | b'\n' => {
                let content = i;
                i += if raw[i] == b'\r' && raw.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                out.push(Line {
                    start,
                    content,
                    end: i,
                });
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < raw.len() {
        out.push(Line {
            start,
            content: raw.len(),
            end: raw.len(),
        });
    }
    out
}

/// The value of a `data` line (one leading space dropped, as the spec
/// says), or `None` for any other line.
fn data_value(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"data")?;
    match rest.split_first() {
        // `data` alone is a data line with an empty value.
        None => Some(rest),
        Some((b':', value)) => Some(value.strip_prefix(b" ").unwrap_or(value)),
        Some(_) => None, // another field, e.g. `database`
    }
}

/// An event's data: its `data` values joined with LF; `None` when it has
/// none, or only empty ones (a client dispatches nothing for it).
pub(super) fn event_data(raw: &[u8]) -> Option<Vec<u8>> {
    let mut data: Option<Vec<u8>> = None;
    for l in lines(raw) {
        if let Some(value) = data_value(&raw[l.start..l.content]) {
            match &mut data {
                None => data = Some(value.to_vec()),
                Some(d) => {
                    d.push(b'\n');
                    d.extend_from_slice(value);
                }
            }
        }
    }
    data.filter(|d| !d.is_empty())
}

/// The event with its data lines replaced by `new`, one `data:` line per
/// line of it, where the first data line was and with its line end; every
/// other line stays as it came, in its place.
pub(super) fn with_data(raw: &[u8], new: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(raw.len() + new.len());
    let mut written = false;
    for l in lines(raw) {
        if data_value(&raw[l.start..l.content]).is_none() {
            out.put_slice(&raw[l.start..l.end]);
            continue;
        }
        if std::mem::replace(&mut written, true) {
            continue;
        }
        let line_end = &raw[l.content..l.end];
        for n in lines(new) {
            out.put_slice(b"data: ");
            out.put_slice(&new[n.start..n.content]);
            out.put_slice(line_end);
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests;
