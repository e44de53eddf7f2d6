//! Reading Redis's replies to the stream commands both readers of the
//! backplane use (invalidations, and posts for notifications): `XREAD`
//! entries, `XINFO STREAM` and the server's `run_id`, in RESP2 or RESP3
//! shapes. Anything unexpected reads as absent, never as an error that
//! could stop a reader.

use redis::Value;

use super::gap::{LogInfo, Observed, StreamId};
use crate::redis_link::Link;

/// An entry's fields as Redis holds them (bytes, in order).
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// `INFO server`'s run_id (of the node holding the log, on a cluster) and
/// `XINFO STREAM` of the log.
pub async fn observe(conn: &mut Link, key: &str) -> Result<Observed, String> {
    let mut info_cmd = redis::cmd("INFO");
    info_cmd.arg("server");
    let info: String = conn
        .on_node_of(&info_cmd, key)
        .await
        .map_err(|e| e.to_string())?;
    let run_id = info
        .lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|s| s.trim().to_string())
        .ok_or("INFO server has no run_id")?;
    let log = match redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query_async::<Value>(conn)
        .await
    {
        Ok(v) => Some(log_info(&v).ok_or("unexpected XINFO STREAM reply")?),
        Err(e) if e.to_string().contains("no such key") => None,
        Err(e) => return Err(e.to_string()),
    };
    Ok(Observed { run_id, log })
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// Key/value pairs of a RESP2 flat array or a RESP3 map.
fn pairs(v: &Value) -> Vec<(&Value, &Value)> {
    match v {
        Value::Array(items) => items.chunks_exact(2).map(|c| (&c[0], &c[1])).collect(),
        Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        _ => Vec::new(),
    }
}

pub fn log_info(v: &Value) -> Option<LogInfo> {
    let mut last_generated = None;
    let mut entries_added = None;
    let mut length = 0;
    let mut first = None;
    for (k, val) in pairs(v) {
        match text(k).as_deref() {
            Some("last-generated-id") => {
                last_generated = text(val).and_then(|t| StreamId::parse(&t))
            }
            Some("entries-added") => entries_added = int(val),
            Some("length") => length = int(val).unwrap_or(0),
            Some("first-entry") => {
                first = match val {
                    Value::Array(e) => e.first().and_then(text).and_then(|t| StreamId::parse(&t)),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    Some(LogInfo {
        last_generated: last_generated?,
        entries_added,
        length,
        first,
    })
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// The entries of an `XREAD` reply (nil when the block timed out). An entry
/// whose id cannot be read is skipped; its fields are kept as bytes for
/// `Message::parse` to judge.
pub fn entries_of(v: Value) -> Vec<(StreamId, Fields)> {
    let streams: Vec<Value> = match v {
        Value::Array(s) => s,
        Value::Map(m) => m
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(mut parts) = stream else {
            continue;
        };
        if parts.len() != 2 {
            continue;
        }
        let Value::Array(entries) = parts.swap_remove(1) else {
            continue;
        };
        for entry in entries {
            let Value::Array(e) = entry else { continue };
            let (Some(id), Some(fields)) = (
                e.first().and_then(text).and_then(|t| StreamId::parse(&t)),
                e.get(1),
            ) else {
                continue;
            };
            let fields = match fields {
                Value::Array(f) => f
                    .chunks_exact(2)
                    .map(|c| (bytes(&c[0]), bytes(&c[1])))
                    .collect(),
                Value::Map(m) => m.iter().map(|(k, v)| (bytes(k), bytes(v))).collect(),
                _ => Vec::new(),
            };
            out.push((id, fields));
        }
    }
    out
}

fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        other => text(other).unwrap_or_default().into_bytes(),
    }
}
