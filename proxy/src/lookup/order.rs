//! The origin's own order of a profile's values, when it publishes one
//! (`profiles.version_field`, off by default): a number (a version) or an
//! RFC 3339 timestamp (`updatedAt`). Tiers compare it so that a fill never
//! replaces a newer value with an older one, say when two loads of the same
//! id race and the slower one read a lagging origin replica.

use serde_json::Value;

/// The order of `body` by `field` (a top-level field), 0 when the body has
/// no usable value there: numbers as they are (non-negative integers),
/// timestamps as Unix milliseconds. Unordered values are written as if the
/// feature were off.
pub fn origin_order(body: &[u8], field: &str) -> u64 {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    match map.get(field) {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(s)) => timestamp_ms(s).unwrap_or(0),
        _ => 0,
    }
}

fn timestamp_ms(text: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(text.trim()).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(d.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_timestamps_order_values() {
        assert_eq!(origin_order(br#"{"version": 7}"#, "version"), 7);
        let a = origin_order(br#"{"updatedAt": "2026-01-01T00:01:00Z"}"#, "updatedAt");
        let b = origin_order(br#"{"updatedAt": "2026-01-01T00:02:00.5Z"}"#, "updatedAt");
        assert!(a > 0 && b > a, "{a} {b}");
    }

    #[test]
    fn anything_else_is_unordered() {
        for body in [
            &br#"{"version": -1}"#[..],
            br#"{"version": 1.5}"#,
            br#"{"version": "soon"}"#,
            br#"{"other": 3}"#,
            br#"[1]"#,
            b"not json",
        ] {
            assert_eq!(
                origin_order(body, "version"),
                0,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
